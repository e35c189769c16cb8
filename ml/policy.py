"""The retrain decision: retrain or skip, always with the reasons written down.

Inputs are the pinned data window, the drift verdict and the champion's age. The decision is
stored once per run key in ``reports/ct_retrain/<run_key>/decision.json``; the policy's memory
(which batches a decision has already looked at) lives in ``state/policy.json``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from ml import layout
from ml.config import PolicyConfig
from ml.storage import Lake
from ml.window import POLICY_STATE, Window

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reasons: list[str]

    @property
    def summary(self) -> str:
        return f"{'retrain' if self.retrain else 'skip'}: {'; '.join(self.reasons)}"


def decide(
    window: Window,
    drift: dict[str, Any],
    cfg: PolicyConfig,
    champion_age_days: float | None,
    force: bool = False,
) -> RetrainDecision:
    """Pure policy: every rule that fires adds a reason; no rule firing means skip, with why."""
    if not window.train_batches:
        return RetrainDecision(False, ["no curated data yet"])
    reasons = []
    if force:
        reasons.append("forced by run parameter")
    if window.champion_version is None:
        reasons.append("no champion yet")
    if cfg.retrain_on_drift and drift.get("drift_detected"):
        reasons.append(
            f"drift on {', '.join(drift.get('drifted_features', []))} (share {drift.get('drifted_share', 0):.2f})"
        )
    if window.new_images >= cfg.min_new_images:
        reasons.append(f"{window.new_images:,} new training images >= {cfg.min_new_images:,}")
    if (
        cfg.max_model_age_days is not None
        and champion_age_days is not None
        and champion_age_days > cfg.max_model_age_days
    ):
        reasons.append(f"champion is {champion_age_days:.1f} days old > {cfg.max_model_age_days:g}")
    if reasons:
        return RetrainDecision(True, reasons)
    if not window.new_batches:
        return RetrainDecision(False, ["no new data since the last decision"])
    why = [f"{window.new_images:,} new training images < {cfg.min_new_images:,}"]
    why.append("no drift" if not drift.get("skipped") else str(drift["skipped"]))
    return RetrainDecision(False, why)


def record_decision(lake: Lake, window: Window, decision: RetrainDecision) -> dict[str, Any]:
    """Store the decision for the run and remember which batches it covered."""
    key = layout.report(layout.RETRAIN_DAG, window.run_key, "decision.json")
    record = {"run_key": window.run_key, "decided_at": time.time(), **asdict(decision), "summary": decision.summary,
              "new_batches": window.new_batches, "new_images": window.new_images}  # fmt: skip
    lake.write_json(key, record)
    state_key = layout.state(POLICY_STATE)
    state = lake.read_json_or(state_key, {})
    state["considered_batches"] = sorted(set(state.get("considered_batches", [])) | set(window.new_batches))
    if decision.retrain:
        state["last_retrain_run"] = window.run_key
        state["last_retrain_at"] = record["decided_at"]
    lake.write_json(state_key, state)
    return {**record, "decision_uri": lake.uri(key)}


def recorded_decision(lake: Lake, run_key: str) -> dict[str, Any] | None:
    key = layout.report(layout.RETRAIN_DAG, run_key, "decision.json")
    return {**lake.read_json(key), "decision_uri": lake.uri(key)} if lake.exists(key) else None
