"""The append-only decision history (``state/decisions/``) and what it says about any moment in the past.

Every decision (a gate, an approval, a rollback, a forced promotion) is written here once, under a
key derived from the record, so an append after a kill cannot make a second entry. Each record
carries ``as_of``, the time its run stands for (a run's logical date; the wall clock for a command
typed now), beside ``decided_at``, when it was computed. The two differ: a run decides after its
time (training takes hours), and a run may be triggered for a past date. :func:`effective_times`
reconciles them: the real order, on the runs' clock.

:func:`champion_at` and :func:`challenges_at` answer "who was champion at T, and how often had it
been challenged?" from the live records alone: what a backfill replays against.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ml import layout
from ml.data.availability import iso
from ml.errors import CorruptState
from ml.storage import Lake

log = logging.getLogger(__name__)

HISTORY = "decisions"
MOVES = ("promote", "rollback")  # decisions that move the alias (a gate's promote, or an override)


def history_key(record: dict[str, Any]) -> str:
    """One key per decision, derived from the record: an append after a kill cannot make a second entry."""
    # Microseconds in the key keep the listing in decision order.
    return layout.state(
        f"{HISTORY}/{layout.time_stamp(float(record['decided_at']))}-{record['kind']}-{record['run_key']}.json"
    )


def decision_id(record: dict[str, Any]) -> str:
    """A decision's id in URLs: its history record's name, e.g. ``20260103T040000.000000-gate-<run_key>``."""
    return history_key(record).rsplit("/", 1)[-1].removesuffix(".json")


def append_history(lake: Lake, record: dict[str, Any]) -> str:
    """Add one decision to ``state/decisions/`` (append-only: an exclusive create, never a rewrite)."""
    key = history_key(record)
    body = {k: v for k, v in record.items() if k not in ("history_key", "already_done")}
    created = lake.create_exclusive(key, (json.dumps(body, indent=2, sort_keys=True, default=str) + "\n").encode())
    if not created:
        log.info("history entry %s was already written", lake.uri(key))
    return key


def read_history(lake: Lake, limit: int | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """Decisions in the order they were made (with ``limit``, the newest), and the unreadable records.

    A corrupt record is reported (logged and returned by name) and skipped: one bad object must not
    hide every other decision.
    """
    keys = lake.list_keys(layout.state(HISTORY))
    records, problems = [], []
    for key in keys[-limit:] if limit else keys:
        try:
            record = lake.read_json(key)
        except CorruptState as exc:
            log.warning("skipping an unreadable decision record: %s", exc)
            problems.append(str(exc))
            continue
        if not isinstance(record, dict) or "decision" not in record:
            problems.append(f"{lake.uri(key)} is not a decision record")
            continue
        records.append(record)
    return records, problems


def history(lake: Lake, limit: int | None = None) -> list[dict[str, Any]]:
    return read_history(lake, limit)[0]


# -- the past, as the live records tell it ----------------------------------------------------
def effective_at(record: dict[str, Any]) -> float:
    """The time a decision says it belongs to: its run's time (``as_of``), else when it was made (older records)."""
    as_of = record.get("as_of")
    return float(as_of if as_of is not None else record["decided_at"])


def effective_times(records: list[dict[str, Any]]) -> list[tuple[float, dict[str, Any]]]:
    """Live decisions in the order they were made, each with the time it took effect.

    The alias moved in the order decisions were made (``decided_at``, taken under the lease), which is
    not always the order of their runs' times: a run triggered with a past logical date, or a 03:00 run
    whose gate comes after a 05:00 rollback. So a decision takes effect at its run's time, or at the
    previous decision's if that is later: the times never go back, and the order is the real one.
    """
    live = sorted((r for r in records if not r.get("backfill")), key=lambda r: float(r["decided_at"]))
    timed, latest = [], float("-inf")
    for record in live:
        latest = max(latest, effective_at(record))
        timed.append((latest, record))
    return timed


def champion_at(records: list[dict[str, Any]], as_of: float) -> dict[str, Any]:
    """Which version held ``@champion`` just before ``as_of``, and the decision that put it there.

    Only live moves count (promotions, approved promotions, rollbacks, forced promotions); a version
    that no move had installed by then means no champion, as for a first model.
    """
    moves = [(at, r) for at, r in effective_times(records) if at < as_of and r["decision"] in MOVES]
    if not moves:
        return {"version": None, "source": "no live move of @champion before this time in the decision history",
                "decision": None, "since": None}  # fmt: skip
    since, last = moves[-1]
    return {
        "version": str(last["candidate_version"]),
        "source": f"decision history: {last['decision']} by the {last['kind']} of run {last['run_key']}, "
        f"effective {iso(since)}",
        "decision": decision_id(last),
        "since": since,
    }


def challenges_at(records: list[dict[str, Any]], champion: dict[str, Any], as_of: float) -> int:
    """How many live gates had challenged ``champion`` (from :func:`champion_at`) in its reign before ``as_of``."""
    if champion["version"] is None:
        return 0
    timed = effective_times(records)
    installed = next((i for i, (_, r) in enumerate(timed) if decision_id(r) == champion["decision"]), None)
    if installed is None:
        return 0
    return sum(
        1 for at, r in timed[installed + 1 :]
        if at < as_of and r.get("kind") == "gate" and str(r.get("champion_version")) == champion["version"]
        and r.get("spending") is not None
    )  # fmt: skip
