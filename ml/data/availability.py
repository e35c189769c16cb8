"""When each curated batch became available, so that a run sees only the data that existed at its time.

Two times can be known for a batch:

* **ingested**: when ct curated it (written just before its manifest, the batch's commit point);
* **event**: when its producer says the data belongs, stated in the batch's ``_COMMITTED`` marker as
  JSON, ``{"event_time": "2026-01-03T00:00:00Z"}``. This is for data landed late, or a history
  landed all at once. An empty marker (or any other text) states nothing.

``history.batch_time`` picks which one counts: ``event`` (the default) uses the stated event time and
falls back to the ingest time; ``ingested`` always uses the ingest time. A stated event time later
than the ingest time (a producer's clock ahead) counts as the ingest time.

* A **backfill** run at ``T`` sees a batch when that time is at or before ``T``.
* A **live** run sees every batch curated when it plans its window, except one that its producer
  dated after ``T`` (a history landed at once, run day by day). It never holds a batch back for
  the moment ct curated it, so a batch without a stated event time reaches the run it triggered
  whatever the clocks of the ingest worker and the scheduler say.

Batches curated before ct recorded these times have neither and count as always available.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from ml import layout
from ml.storage import Lake

log = logging.getLogger(__name__)

MARKER_EXAMPLE = '{"event_time": "2026-01-03T00:00:00Z"}'


def iso(epoch: float | None) -> str | None:
    """``epoch`` as ISO 8601 UTC, to the second (None stays None)."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_time(value: Any) -> float:
    """An ISO 8601 time with a zone (``Z`` or ``+hh:mm``) as epoch seconds; ValueError says what is wrong."""
    if not isinstance(value, str):
        raise ValueError(f"event_time must be an ISO 8601 string, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise ValueError(f"event_time {value!r} is not an ISO 8601 time") from exc
    if parsed.tzinfo is None:
        raise ValueError(f"event_time {value!r} has no time zone; add Z for UTC")
    return parsed.timestamp()


def marker_event_time(raw: bytes) -> float | None:
    """The event time a ``_COMMITTED`` marker states, or None when it states none.

    Only a marker that is a JSON object states anything; a malformed one raises ValueError, so that
    the batch is quarantined with the reason instead of being placed at the wrong time.
    """
    text = raw.decode("utf-8", errors="replace").strip()
    if not text.startswith("{"):
        return None
    try:
        stated = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the marker looks like JSON but does not parse ({exc.msg} at character {exc.pos})") from exc
    if not isinstance(stated, dict):
        raise ValueError("the marker's JSON is not an object")
    if "event_time" not in stated:
        return None
    return parse_time(stated["event_time"])


@dataclass(frozen=True)
class BatchTime:
    batch_id: str
    at: float | None  # the time that counts under history.batch_time; None: always available (legacy)
    source: str  # "event_time", "ingested" or "unrecorded"
    ingested_at: float | None = None
    event_time: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "at_iso": iso(self.at)}


def record_batch(lake: Lake, batch_id: str, event_time: float | None, root: str = layout.CURATED) -> None:
    """Note when ``batch_id`` was curated (now) and the event time its producer stated; before its manifest."""
    lake.write_json(layout.batch_record(batch_id, root),
                    {"batch_id": batch_id, "ingested_at": time.time(), "event_time": event_time})  # fmt: skip


def batch_time(lake: Lake, batch_id: str, mode: str) -> BatchTime:
    record = lake.read_json_or(layout.batch_record(batch_id), None)
    if not isinstance(record, dict) or record.get("ingested_at") is None:
        return BatchTime(batch_id, None, "unrecorded")
    ingested = float(record["ingested_at"])
    event = record.get("event_time")
    if mode == "event" and event is not None:
        return BatchTime(batch_id, min(float(event), ingested), "event_time", ingested, float(event))
    return BatchTime(batch_id, ingested, "ingested", ingested, None if event is None else float(event))


@dataclass(frozen=True)
class Availability:
    """Which curated batches a run at ``as_of`` may see, and when each became available."""

    as_of: float | None
    mode: str
    available: list[str]
    later: list[str]  # curated now, but not yet at as_of
    times: dict[str, BatchTime]
    live: bool = False

    def first_time(self) -> BatchTime | None:
        known = [t for t in self.times.values() if t.at is not None]
        return min(known, key=lambda t: t.at or 0.0) if known else None

    def to_dict(self) -> dict[str, Any]:
        when = "event time (else ingest time)" if self.mode == "event" else "ingest time"
        rule = (f"every batch curated when the run planned, except those whose producer dated them after as_of "
                f"(a live run; history.batch_time: {self.mode})" if self.live else
                f"batches whose {when} is at or before as_of (a backfill; history.batch_time: {self.mode})")  # fmt: skip
        return {
            "rule": rule,
            "as_of": iso(self.as_of),
            "batch_time": self.mode,
            "available": {b: self.times[b].to_dict() for b in self.available},
            "not_yet_available": {b: self.times[b].to_dict() for b in self.later},
        }


def available_batches(
    lake: Lake, curated: list[str], as_of: float | None, mode: str, live: bool = False
) -> Availability:
    """Split ``curated`` into the batches a run at ``as_of`` sees (all, when None) and those that came later."""
    times = {b: batch_time(lake, b, mode) for b in curated}

    def seen(found: BatchTime) -> bool:
        if as_of is None or found.at is None:
            return True
        if live and found.source != "event_time":
            return True  # curated before this live run planned: it is the present
        return found.at <= as_of

    available = [b for b in curated if seen(times[b])]
    later = [b for b in curated if b not in set(available)]
    if later:
        log.info("as of %s, %d curated batches were not available yet: %s", iso(as_of), len(later), later)
    return Availability(as_of, mode, available, later, times, live)
