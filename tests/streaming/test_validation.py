"""The bulk validator agrees with the reference, message for message: the same rows with the
same values, the same rejections with the same reasons, on plain, tricky and hostile input."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming.events import Event, Rejection, parse_event
from streaming.validation import FAST_MAX_BYTES, SMALLEST_SPLIT, validate_block
from tests.streaming.test_fuzz import NOW_MS, draw_parts, stream

HEAD = b'{"user_id":"u1","item_id":"i1","ts":1650000000000'
TRICKY = [  # each is a way pyarrow.json and Python's json disagree, or a row must not be split
    HEAD + b"}",
    HEAD + b',"weight":NaN}',  # pyarrow accepts NaN, Python does not
    HEAD + b',"weight":1e400}',
    HEAD + b',"weight":0.1}',
    HEAD + b',"weight":3}',
    HEAD + b',"weight":100000000000000000000}',
    HEAD + b',"x":"a\tb"}',  # a raw tab: Python refuses
    HEAD + b',"x":' + b"[" * 200 + b"]" * 200 + b"}",
    HEAD + b',"x":' + b"[" * 3000 + b"]" * 3000 + b"}",  # deeper than Python's recursion limit
    HEAD + b"} " + HEAD + b"}",  # two objects in one message
    HEAD + b"} null",
    b"null",  # pyarrow crashes on a block that starts with null
    b"null " + HEAD + b"}",
    b"{}",
    b"",
    b"   ",
    b"[1]",
    HEAD + b',"user_id":"u2"}',  # a repeated key: Python keeps the last
    b'{"user_id":"\\u0041\\/","item_id":"i","ts":1650000000000}',
    b'{"user_id":"a\\u0000b","item_id":"i","ts":1650000000000}',
    b'{"user_id":"\\ud800","item_id":"i","ts":1650000000000}',
    b'{"user_id":"\\u00e9","item_id":"i","ts":1650000000000}',
    '{"user_id":"é","item_id":"i","ts":1650000000000}'.encode(),
    b'{"user_id":" a","item_id":"i","ts":1650000000000}',  # stripped by the reference
    b'{"user_id":5,"item_id":"i","ts":1650000000000}',
    b'{"user_id":"u","item_id":"i","ts":1650000000000.0}',
    b'{"user_id":"u","item_id":"i","ts":-0}',
    b'{"user_id":"u","item_id":"i","ts":99999999999999999999}',
    b'{"user_id":"u","item_id":"i","ts":1650000000000,"event_type":"\\u0007"}',
    b'{"user_id":"u","item_id":"i","ts":1650000000000,"event_type":null,"weight":null}',
    b'{"user_id":"u","item_id":"i","ts":1650000000000}\r',
    HEAD + b',"x":"\xff"}',  # non-UTF-8 inside an ignored field
    None,
]


def verdicts(values: list[bytes | None]) -> list[Event | Rejection]:
    """What ``validate_block`` decided for each message, as the reference would say it."""
    checked = validate_block(values, now_ms=NOW_MS)
    out: list = [None] * len(values)
    for row, values_at in zip(checked.rows.tolist(), checked.events.to_pylist(), strict=True):
        out[row] = Event(**values_at)
    for row, rejection in checked.rejected:
        assert out[row] is None, f"message {row} both valid and rejected"
        out[row] = rejection
    assert None not in out, "a message was neither valid nor rejected"
    return out


def reference(values: list[bytes | None]) -> list[Event | Rejection]:
    return [parse_event(v, now_ms=NOW_MS) for v in values]


def same(a: Event | Rejection, b: Event | Rejection) -> bool:
    if isinstance(a, Rejection) or isinstance(b, Rejection):
        return isinstance(a, Rejection) and isinstance(b, Rejection) and a.reason == b.reason
    return a == b


@pytest.mark.parametrize("position", ["alone", "first", "middle", "last"])
def test_tricky_messages_get_the_reference_verdict(position):
    plain = [HEAD + b"}"] * (2 * SMALLEST_SPLIT)
    for value in TRICKY:
        values = {
            "alone": [value],
            "first": [value, *plain],
            "middle": [*plain[:70], value, *plain[70:]],
            "last": [*plain, value],
        }[position]
        got, want = verdicts(values), reference(values)
        assert all(same(g, w) for g, w in zip(got, want, strict=True)), (value, got, want)


def test_a_generated_stream_gets_the_reference_verdicts_in_block_order():
    drawn = stream(draw_parts(examples=20), valid=1_500, defective=1_500, huge=3, seed=5)
    values = [d.value for d in drawn]
    checked = validate_block(values, now_ms=NOW_MS)
    assert checked.rows.tolist() == sorted(checked.rows.tolist())
    assert [r for r, _ in checked.rejected] == sorted(r for r, _ in checked.rejected)
    got, want = verdicts(values), reference(values)
    mismatches = [(v, g, w) for v, g, w in zip(values, got, want, strict=True) if not same(g, w)]
    assert not mismatches, mismatches[:3]


object_like = st.builds(
    lambda inner: b"{" + inner + b"}",
    st.one_of(
        st.binary(max_size=FAST_MAX_BYTES),
        st.text(max_size=80).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.dictionaries(
            st.sampled_from(["user_id", "item_id", "ts", "event_type", "weight", "x"]),
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(),
                st.floats(),
                st.text(max_size=10),
                st.lists(st.integers(), max_size=3),
            ),
        ).map(lambda d: json.dumps(d)[1:-1].encode()),
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.lists(st.one_of(object_like, st.binary(max_size=40)), min_size=1, max_size=80))
def test_random_object_shaped_messages_get_the_reference_verdicts(values):
    got, want = verdicts(values), reference(values)
    assert all(same(g, w) for g, w in zip(got, want, strict=True)), [
        (v, g, w) for v, g, w in zip(values, got, want, strict=True) if not same(g, w)
    ][:3]


def test_the_fast_path_takes_plain_events_and_the_slow_path_the_rest(monkeypatch):
    import streaming.validation as validation

    calls = []
    real = validation.parse_event
    monkeypatch.setattr(validation, "parse_event", lambda v, now: calls.append(v) or real(v, now))
    plain = [
        json.dumps({"user_id": f"u{n}", "item_id": f"i{n}", "ts": NOW_MS - n}).encode()
        for n in range(500)
    ]
    odd = [b"not json", '{"user_id": "é", "item_id": "x", "ts": 1650000000000}'.encode()]
    checked = validate_block([*plain[:250], *odd, *plain[250:]], now_ms=NOW_MS)
    assert sorted(calls) == sorted(odd)  # only the two odd ones went one by one
    assert checked.rows.tolist() == [*range(250), 251, *range(252, 502)]
    assert [r for r, _ in checked.rejected] == [250]
    assert checked.events.column("user_id").to_pylist()[249:252] == ["u249", "é", "u250"]
