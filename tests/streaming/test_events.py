"""The event contract: what parses, what is rejected and why, and that parsing never raises."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.events import (
    LOG_SCHEMA,
    MAX_FUTURE_MS,
    MAX_ID_CHARS,
    MAX_MESSAGE_BYTES,
    MIN_TS_MS,
    Event,
    InvalidEvent,
    Rejection,
    encode_event,
    parse_event,
)

NOW_MS = 1_700_000_000_000  # 2023-11-14: a fixed "now" so range checks are deterministic
TS = 1_650_000_000_000


def raw(**payload) -> bytes:
    return json.dumps(payload).encode()


def reason(value: bytes | None) -> str:
    parsed = parse_event(value, now_ms=NOW_MS)
    assert isinstance(parsed, Rejection), f"expected a rejection, got {parsed!r}"
    assert parsed.detail, "a rejection always carries a human detail"
    return parsed.reason


# --- valid events ---------------------------------------------------------------------------
def test_int_ids_are_normalised_to_strings():
    assert parse_event(raw(user_id=42, item_id=7, ts=TS), now_ms=NOW_MS) == Event("42", "7", TS)


def test_string_ids_are_stripped_and_optional_fields_kept():
    parsed = parse_event(
        raw(user_id=" u1 ", item_id="i-9", ts=TS, event_type="click", weight=2), now_ms=NOW_MS
    )
    assert parsed == Event("u1", "i-9", TS, "click", 2.0)
    assert isinstance(parsed.weight, float)


def test_negative_int_id_and_unicode_id_are_valid():
    parsed = parse_event(raw(user_id=-5, item_id="café", ts=TS), now_ms=NOW_MS)
    assert parsed == Event("-5", "café", TS)


def test_timestamp_bounds_are_inclusive():
    assert isinstance(parse_event(raw(user_id=1, item_id=2, ts=MIN_TS_MS), now_ms=NOW_MS), Event)
    latest = NOW_MS + MAX_FUTURE_MS
    assert isinstance(parse_event(raw(user_id=1, item_id=2, ts=latest), now_ms=NOW_MS), Event)


def test_id_of_exactly_max_length_is_valid():
    parsed = parse_event(raw(user_id="u" * MAX_ID_CHARS, item_id=1, ts=TS), now_ms=NOW_MS)
    assert isinstance(parsed, Event)
    assert len(parsed.user_id) == MAX_ID_CHARS


def test_unknown_fields_are_ignored():
    assert parse_event(raw(user_id=1, item_id=2, ts=TS, page="home"), now_ms=NOW_MS) == Event(
        "1", "2", TS
    )


# --- each rejection reason ------------------------------------------------------------------
def test_tombstone_is_rejected():
    assert reason(None) == "empty_message"


def test_not_utf8():
    assert reason(b'{"user_id": "\xff\xfe", "item_id": 1, "ts": 1}') == "not_utf8"


@pytest.mark.parametrize(
    "value",
    [
        b"{not json",
        b"",
        b'{"user_id": 1, "item_id": 2, "ts": 1650000000000, "weight": NaN}',
        b'{"user_id": 1, "item_id": 2, "ts": 1650000000000, "weight": Infinity}',
        b'{"user_id": 1, "item_id": 2, "ts": 1650000000000, "weight": -Infinity}',
        b"\xef\xbb\xbf" + raw(user_id=1, item_id=2, ts=TS),  # a UTF-8 BOM is not JSON
        b"[" * 30_000 + b"]" * 30_000,  # deeper than the parser recurses
    ],
    ids=["truncated", "empty", "nan", "infinity", "minus-infinity", "bom", "deep"],
)
def test_not_json(value):
    assert reason(value) == "not_json"


@pytest.mark.parametrize("value", [b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_not_object(value):
    assert reason(value) == "not_object"


@pytest.mark.parametrize("missing", ["user_id", "item_id", "ts"])
def test_missing_field(missing):
    payload = {"user_id": 1, "item_id": 2, "ts": TS}
    del payload[missing]
    parsed = parse_event(json.dumps(payload).encode(), now_ms=NOW_MS)
    assert parsed == Rejection("missing_field", f"missing {missing!r}")


@pytest.mark.parametrize(
    "payload",
    [
        {"user_id": True, "item_id": 2, "ts": TS},
        {"user_id": 1, "item_id": False, "ts": TS},
        {"user_id": 1.5, "item_id": 2, "ts": TS},
        {"user_id": None, "item_id": 2, "ts": TS},
        {"user_id": [1], "item_id": 2, "ts": TS},
        {"user_id": 1, "item_id": {"id": 2}, "ts": TS},
        {"user_id": 1, "item_id": 2, "ts": float(TS)},
        {"user_id": 1, "item_id": 2, "ts": str(TS)},
        {"user_id": 1, "item_id": 2, "ts": True},
        {"user_id": 1, "item_id": 2, "ts": TS, "event_type": 3},
        {"user_id": 1, "item_id": 2, "ts": TS, "event_type": "x" * 65},
        {"user_id": 1, "item_id": 2, "ts": TS, "weight": "1.0"},
        {"user_id": 1, "item_id": 2, "ts": TS, "weight": True},
    ],
    ids=[
        "bool-user",
        "bool-item",
        "float-user",
        "null-user",
        "list-user",
        "dict-item",
        "float-ts",
        "string-ts",
        "bool-ts",
        "int-event-type",
        "long-event-type",
        "string-weight",
        "bool-weight",
    ],
)
def test_bad_type(payload):
    assert reason(json.dumps(payload).encode()) == "bad_type"


@pytest.mark.parametrize("empty", ["", "   ", "\t"])
def test_empty_id(empty):
    assert reason(raw(user_id=empty, item_id=2, ts=TS)) == "empty_id"
    assert reason(raw(user_id=1, item_id=empty, ts=TS)) == "empty_id"


def test_id_too_long():
    parsed = parse_event(raw(user_id=1, item_id="i" * (MAX_ID_CHARS + 1), ts=TS), now_ms=NOW_MS)
    assert parsed == Rejection("id_too_long", "item_id has 257 characters > 256")


def test_int_id_too_long():
    assert reason(f'{{"user_id": {10**300}, "item_id": 2, "ts": {TS}}}'.encode()) == "id_too_long"


@pytest.mark.parametrize(
    "ts",
    [
        NOW_MS // 1000,  # seconds instead of milliseconds
        MIN_TS_MS - 1,
        0,
        -1,
        NOW_MS + MAX_FUTURE_MS + 1,  # more than a day ahead
        NOW_MS * 1000,  # microseconds: far future
    ],
    ids=["seconds", "just-before-1990", "zero", "negative", "day-ahead-plus-1ms", "micros"],
)
def test_ts_out_of_range(ts):
    assert reason(raw(user_id=1, item_id=2, ts=ts)) == "ts_out_of_range"


def test_too_large_is_checked_before_decoding():
    value = b"\xff" * (MAX_MESSAGE_BYTES + 1)  # would be not_utf8 if it were decoded
    assert parse_event(value) == Rejection("too_large", "65537 bytes > 65536")


def test_message_of_exactly_max_bytes_is_decoded():
    value = raw(user_id=1, item_id=2, ts=TS, pad="")
    value = value[:-2] + b" " * (MAX_MESSAGE_BYTES - len(value)) + value[-2:]
    assert len(value) == MAX_MESSAGE_BYTES
    assert parse_event(value, now_ms=NOW_MS) == Event("1", "2", TS)


def test_non_finite_weight_is_a_bad_value():
    # 1e400 is valid JSON that Python decodes to inf (not via NaN/Infinity constants)
    value = f'{{"user_id": 1, "item_id": 2, "ts": {TS}, "weight": 1e400}}'.encode()
    assert parse_event(value, now_ms=NOW_MS) == Rejection("bad_value", "weight must be finite")


def test_huge_integer_weight_is_rejected_not_raised():
    value = f'{{"user_id": 1, "item_id": 2, "ts": {TS}, "weight": {10**400}}}'.encode()
    assert reason(value) == "bad_value"


def test_control_characters_in_ids_are_a_bad_value():
    assert reason(raw(user_id="a\nb", item_id=2, ts=TS)) == "bad_value"
    assert reason(b'{"user_id": "\\ud800", "item_id": 2, "ts": %d}' % TS) == "bad_value"


def test_event_type_that_cannot_be_stored_is_rejected():
    value = b'{"user_id": 1, "item_id": 2, "ts": %d, "event_type": "\\ud800"}' % TS
    parsed = parse_event(value, now_ms=NOW_MS)
    if isinstance(parsed, Event):  # show why it matters: the log cannot hold it
        pa.table(
            {"event_type": [parsed.event_type]}, schema=pa.schema([LOG_SCHEMA.field("event_type")])
        )
    assert isinstance(parsed, Rejection)


# --- encoding -------------------------------------------------------------------------------
def test_encode_then_parse_round_trips():
    event = Event("u1", "i2", TS, "purchase", 0.5)
    assert encode_event(event) == (
        b'{"user_id":"u1","item_id":"i2","ts":1650000000000,"event_type":"purchase","weight":0.5}'
    )
    assert parse_event(encode_event(event), now_ms=NOW_MS) == event


def test_encode_omits_absent_optional_fields():
    assert json.loads(encode_event(Event("1", "2", TS))) == {
        "user_id": "1",
        "item_id": "2",
        "ts": TS,
    }


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (Event("", "2", TS), "empty_id"),
        (Event("1", "2", 1_650_000_000), "ts_out_of_range"),
        (Event("1", "x" * 300, TS), "id_too_long"),
        (Event("1", "2", TS, weight=float("nan")), "bad_value"),
    ],
)
def test_encode_refuses_what_would_be_dead_lettered(event, expected):
    with pytest.raises(InvalidEvent) as caught:
        encode_event(event)
    assert caught.value.rejection.reason == expected
    assert str(caught.value).startswith(f"{expected}: ")


# --- properties -----------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_parse_event_never_raises_on_arbitrary_bytes(value):
    parsed = parse_event(value, now_ms=NOW_MS)
    assert isinstance(parsed, Event | Rejection)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {"user_id": json_values, "item_id": json_values, "ts": json_values},
        optional={"event_type": json_values, "weight": json_values},
    )
)
def test_parsed_objects_are_either_rejected_or_fully_normalised(payload):
    parsed = parse_event(json.dumps(payload).encode(), now_ms=NOW_MS)
    if isinstance(parsed, Event):
        assert isinstance(parsed.user_id, str) and parsed.user_id == parsed.user_id.strip()
        assert isinstance(parsed.item_id, str) and 0 < len(parsed.item_id) <= MAX_ID_CHARS
        assert type(parsed.ts) is int and MIN_TS_MS <= parsed.ts <= NOW_MS + MAX_FUTURE_MS
        assert parsed.weight is None or type(parsed.weight) is float
    else:
        assert isinstance(parsed, Rejection)
