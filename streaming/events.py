"""The interaction event contract, and the validation every message passes before the log.

A Kafka message value is UTF-8 JSON::

    {"user_id": str|int, "item_id": str|int, "ts": int epoch ms,
     "event_type": str (optional), "weight": float (optional)}

keyed by user id. Ids are normalised to strings. ``parse_event`` never raises on bad input: it
returns a ``Rejection`` with a short machine-readable reason (the DLQ header and the metric
label) and a human detail, because one bad message must never stop a batch.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

MAX_MESSAGE_BYTES = 64 * 1024
MAX_ID_CHARS = 256
MIN_TS_MS = 631_152_000_000  # 1990-01-01: earlier values are almost always seconds, not ms
MAX_FUTURE_MS = 24 * 3600 * 1000  # clocks drift, but not by more than a day

LOG_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("ts", pa.int64()),
        ("event_type", pa.string()),
        ("weight", pa.float64()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
    ]
)


@dataclass(frozen=True, slots=True)
class Event:
    user_id: str
    item_id: str
    ts: int
    event_type: str | None = None
    weight: float | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str  # low-cardinality, e.g. "not_json"; used as a metric label
    detail: str


class InvalidEvent(ValueError):
    """Raised by producers for an event that would be dead-lettered anyway."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(f"{rejection.reason}: {rejection.detail}")
        self.rejection = rejection


def parse_event(value: bytes | None, now_ms: int | None = None) -> Event | Rejection:
    """Decode and validate one message value."""
    if value is None:
        return Rejection("empty_message", "message has no value (tombstone)")
    if len(value) > MAX_MESSAGE_BYTES:
        return Rejection("too_large", f"{len(value)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as error:
        return Rejection("not_utf8", str(error)[:200])
    try:
        payload = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:
        return Rejection("not_json", str(error)[:200])
    return validate_fields(payload, now_ms)


def validate_fields(payload: Any, now_ms: int | None = None) -> Event | Rejection:
    """Check a decoded payload against the contract and normalise its ids."""
    if not isinstance(payload, dict):
        return Rejection("not_object", f"expected a JSON object, got {type(payload).__name__}")
    for field in ("user_id", "item_id", "ts"):
        if field not in payload:
            return Rejection("missing_field", f"missing {field!r}")
    user = _normalise_id(payload["user_id"], "user_id")
    if isinstance(user, Rejection):
        return user
    item = _normalise_id(payload["item_id"], "item_id")
    if isinstance(item, Rejection):
        return item
    ts = payload["ts"]
    if not isinstance(ts, int) or isinstance(ts, bool):
        return Rejection("bad_type", f"ts must be integer epoch ms, got {type(ts).__name__}")
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    if not MIN_TS_MS <= ts <= now_ms + MAX_FUTURE_MS:
        return Rejection("ts_out_of_range", f"ts {ts} outside [1990-01-01, now + 1 day] (ms)")
    event_type = payload.get("event_type")
    if event_type is not None and (not isinstance(event_type, str) or len(event_type) > 64):
        return Rejection("bad_type", "event_type must be a string of at most 64 characters")
    if event_type is not None and not _storable(event_type):
        return Rejection("bad_value", "event_type is not valid Unicode (lone surrogate)")
    weight = payload.get("weight")
    if weight is not None:
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            return Rejection("bad_type", f"weight must be a number, got {type(weight).__name__}")
        try:
            weight = float(weight)
        except OverflowError:
            return Rejection("bad_value", "weight is too large for a float")
        if not math.isfinite(weight):
            return Rejection("bad_value", "weight must be finite")
    return Event(user, item, ts, event_type, weight)


def encode_event(event: Event) -> bytes:
    """The message value for an event; validates first so producers fail fast."""
    payload: dict[str, Any] = {"user_id": event.user_id, "item_id": event.item_id, "ts": event.ts}
    if event.event_type is not None:
        payload["event_type"] = event.event_type
    if event.weight is not None:
        payload["weight"] = event.weight
    checked = validate_fields(payload)
    if isinstance(checked, Rejection):
        raise InvalidEvent(checked)
    return json.dumps(payload, separators=(",", ":")).encode()


def _normalise_id(value: Any, field: str) -> str | Rejection:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return Rejection("bad_type", f"{field} must be a string or integer")
    text = str(value).strip()
    if not text:
        return Rejection("empty_id", f"{field} is empty")
    if len(text) > MAX_ID_CHARS:
        return Rejection("id_too_long", f"{field} has {len(text)} characters > {MAX_ID_CHARS}")
    if not text.isprintable() or not _storable(text):
        return Rejection("bad_value", f"{field} contains control characters or lone surrogates")
    return text


def _storable(text: str) -> bool:
    """Whether the string survives UTF-8 encoding (JSON escapes can carry lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")
