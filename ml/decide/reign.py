"""A champion's reign and the error budget its challengers spend.

Every champion is challenged again and again, so the family of tests to protect is the sequence of
challengers against one champion. The k-th live challenge is tested at ``α_k = α·6/(π²k²)``
(:func:`ml.decide.stats.alpha_for`); over any number of challenges they sum to at most ``gate.alpha``.

The state is one object, ``state/reign.json``: which champion reigns, which decision installed it,
and the challenges claimed so far. It follows the decisions' protocol (:mod:`ml.release.promote`):

* **Claim before deciding, under the promotion lease.** A live gate claims the next k (a fenced
  write) and only then decides at ``α_k``; its record carries k. A gate killed after its claim
  finds the claim on its rerun and decides at the same k. A claim whose gate never finishes stays
  spent: the error is only ever made smaller.
* **A move starts a new reign.** Whatever moves ``@champion`` (a promotion, a rollback, a forced
  promotion) resets the state as the last step of applying the move, so it is finished by the
  same rerun or lease recovery that finishes the alias. A reset never undoes a later reign: it
  compares the moves' decision times, which are taken under the lease.
* **Backfills and overrides spend nothing.** A backfill records the level a live challenge had at
  its run's time (:func:`replayed`, from the decision history); rollbacks and forced promotions are not tests.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ml import layout
from ml.decide import stats
from ml.storage import Lake

if TYPE_CHECKING:
    from ml.release.lease import Lease

log = logging.getLogger(__name__)

REIGN = "reign.json"


def reign_key() -> str:
    return layout.state(REIGN)


def _current(lake: Lake, champion_version: str) -> dict[str, Any]:
    """The reign of ``champion_version``: the stored one if it is that champion's, else a new one."""
    state = lake.read_json_or(reign_key(), None)
    if isinstance(state, dict) and str(state.get("champion_version")) == str(champion_version):
        return state
    return {"champion_version": str(champion_version), "started_at": None, "started_by": None, "challenges": []}


def _next_k(state: dict[str, Any]) -> int:
    return max((int(c["k"]) for c in state["challenges"]), default=0) + 1


def _spending(state: dict[str, Any], k: int, alpha: float, consumed: bool) -> dict[str, Any]:
    spent = stats.alpha_spent(alpha, k)
    return {
        "champion_version": state["champion_version"],
        "reign_started_by": state.get("started_by"),
        "k": k,
        "alpha": stats.alpha_for(alpha, k),
        "budget": alpha,
        "spent": spent,
        "left": alpha - spent,
        "rule": stats.SPENDING_RULE,
        "consumed": consumed,
    }


def claim(lake: Lake, lease: Lease, champion_version: str, run_key: str, alpha: float) -> dict[str, Any]:
    """Claim the next challenge against ``champion_version`` for ``run_key`` (under ``lease``)."""
    state = _current(lake, champion_version)
    for challenge in state["challenges"]:
        if challenge["run_key"] == run_key:
            log.info("%s already claimed challenge %d of v%s's reign", run_key, challenge["k"], champion_version)
            return _spending(state, int(challenge["k"]), alpha, consumed=True)
    k = _next_k(state)
    state["challenges"].append({"k": k, "run_key": run_key, "alpha": stats.alpha_for(alpha, k),
                                "claimed_at": time.time()})  # fmt: skip
    lease.check()
    lake.write_json(reign_key(), state)
    return _spending(state, k, alpha, consumed=True)


def replayed(champion_version: str, started_by: str | None, earlier_challenges: int, alpha: float) -> dict[str, Any]:
    """The level a live challenge had at a past moment, after ``earlier_challenges`` in that reign (a backfill's)."""
    state = {"champion_version": str(champion_version), "started_by": started_by}
    return _spending(state, earlier_challenges + 1, alpha, consumed=False)


def start(lake: Lake, lease: Lease, champion_version: str, decided_at: float, started_by: str) -> None:
    """Begin the reign a move installed, unless that was done or a later move has happened since."""
    state = lake.read_json_or(reign_key(), None)
    if isinstance(state, dict):
        if state.get("started_by") == started_by:
            return
        if state.get("started_at") is not None and float(state["started_at"]) > decided_at:
            return
    lease.check()
    lake.write_json(reign_key(), {"champion_version": str(champion_version), "started_at": decided_at,
                                  "started_by": started_by, "challenges": []})  # fmt: skip
    log.info("v%s's reign begins: its challengers share a fresh error budget", champion_version)
