"""The retrain decision: retrain or skip, always with the reasons written down.

Rules (each that fires adds a reason; none firing means skip, with why):

* **forced** by the run's params, or **no champion yet** (once any data is curated);
* **drift that hurts**, debounced: the window must drift ``policy.drift_windows`` times in a row, and
  drift alone does not retrain within ``policy.cooldown_hours`` of the last retrain. With
  ``policy.drift_needs_harm`` (the default) it also needs the drift step's evidence of harm
  (:mod:`ml.decide.harm`): the champion's measured or estimated accuracy on the new data fell by
  more than ``policy.max_accuracy_drop``, or its confidence fell. Drift without harm is noted, and
  skipped: a retrain costs a GPU run and the champion is fine;
* **data volume:** at least ``policy.min_new_images`` new training images;
* **model age:** the champion is older than ``policy.max_model_age_days``;
* **quality drop:** the champion's accuracy on the new labelled rows is below its recorded accuracy
  minus ``policy.quality_tolerance``;
* **live alarms** from ``ct_monitor`` (``state/monitor/latest.json``, :mod:`ml.monitor.live`) about the
  current champion, judged since the last retrain: the served images drifted, the label-free
  estimate of live accuracy dropped, or the realized accuracy of late labels dropped. Like drift,
  they wait out ``policy.cooldown_hours`` after a retrain. Backfills never read them (they are today's).

``decide`` is pure: the memory it needs (the drift streak, the last retrain) comes in as a
:class:`PolicyState` and the updated state comes back. It lives in ``state/policy.json``; each
decision is stored once per run key in ``reports/ct_retrain/<run_key>/decision.json``.

Every decision, live or replayed, is also appended to ``state/runs/`` under the time its run stands
for. The live ones are the policy memory's history: :func:`state_at` reads the memory as it was at
any past moment from there (what a backfill decides with), never from today's ``state/policy.json``.

The decision record is the commit point. It holds the state it read (its ``revision``) and the
state it produced; :func:`apply_state` writes the latter only if the memory is still at that
revision, so a rerun after a kill finishes the update and never applies it twice or over a newer
one. Backfill runs record their decision but never touch the live memory: a run about the past
must not move cooldowns or the model's age for today's runs.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ml import layout
from ml.config import PolicyConfig
from ml.data.window import POLICY_STATE, Window
from ml.storage import Lake

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyState:
    considered_batches: tuple[str, ...] = ()
    drift_streak: int = 0  # consecutive windows with new data that drifted
    last_retrain_at: float | None = None  # epoch seconds of the run that last decided to retrain
    last_retrain_run: str | None = None
    revision: int = 0  # bumped on every write: what apply_state compares and sets on
    updated_by: str | None = None  # the run key that wrote this revision

    @staticmethod
    def from_dict(data: dict[str, Any]) -> PolicyState:
        known = {k: v for k, v in data.items() if k in PolicyState.__dataclass_fields__}
        known["considered_batches"] = tuple(known.get("considered_batches", ()))
        return PolicyState(**known)


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reasons: list[str]
    signals: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        return f"{'retrain' if self.retrain else 'skip'}: {'; '.join(self.reasons)}"


def _drift_text(drift: dict[str, Any]) -> str:
    return ", ".join(drift.get("drifted_features", [])) or "the window"


def _harm(drift: dict[str, Any], cfg: PolicyConfig) -> tuple[bool, str]:
    """Whether drift may retrain on its harm, and the words for it.

    Without an assessment (no champion model was loaded, or a report from before harm was judged)
    drift speaks for itself, and the reason says so.
    """
    harm = drift.get("harm") or {}
    if not cfg.drift_needs_harm:
        return True, ""
    if harm.get("expected") is None:
        return True, " (harm not assessed)"
    if harm["expected"]:
        return True, f", and it hurts: {'; '.join(harm['evidence'])}"
    return False, f", but {harm.get('summary', 'no evidence of harm')}"


def decide(
    window: Window,
    drift: dict[str, Any],
    cfg: PolicyConfig,
    state: PolicyState,
    as_of: float,
    champion_age_days: float | None = None,
    force: bool = False,
    live: dict[str, Any] | None = None,
) -> tuple[RetrainDecision, PolicyState]:
    if not window.train_batches:
        return RetrainDecision(False, [window.empty_reason()]), state

    has_new = bool(window.new_batches)
    drifted = bool(drift.get("drift_detected"))
    # Only windows with new data move the streak; an empty window says nothing about drift.
    streak = (state.drift_streak + 1 if drifted else 0) if has_new else state.drift_streak
    since_retrain = None if state.last_retrain_at is None else as_of - state.last_retrain_at
    # A run older than the last retrain (a backfill) is not "just after" it.
    cooling = since_retrain is not None and 0 <= since_retrain < cfg.cooldown_hours * 3600
    quality = drift.get("quality") or {}
    signals = {"drift_streak": streak, "cooling_down": cooling, "new_images": window.new_images,
               "champion_age_days": champion_age_days, "quality": quality}  # fmt: skip

    reasons = []
    notes = []
    if force:
        reasons.append("forced by run parameter")
    if window.champion_version is None:
        reasons.append("no champion yet")
    if cfg.retrain_on_drift and drifted and has_new:
        windows = f"{streak} window{'s' if streak != 1 else ''}"
        hurts, harm_text = _harm(drift, cfg)
        signals["harm"] = (drift.get("harm") or {}).get("expected")
        if streak < cfg.drift_windows:
            notes.append(f"drift on {_drift_text(drift)} for {windows} (< {cfg.drift_windows} needed)")
        elif not hurts:
            notes.append(f"drift on {_drift_text(drift)} for {windows}{harm_text}")
        elif cooling:
            notes.append(f"drift on {_drift_text(drift)} for {windows}, but cooling down after a retrain")
        else:
            reasons.append(f"drift on {_drift_text(drift)} for {windows}{harm_text}")
    if window.new_images >= cfg.min_new_images:
        reasons.append(f"{window.new_images:,} new images")
    elif has_new:
        notes.append(f"{window.new_images:,} new images < {cfg.min_new_images:,}")
    if (
        cfg.max_model_age_days is not None
        and champion_age_days is not None
        and champion_age_days > cfg.max_model_age_days
    ):
        reasons.append(f"champion is {champion_age_days:.1f} days old > {cfg.max_model_age_days:g}")
    accuracy, recorded = quality.get("accuracy_on_new"), quality.get("recorded_accuracy")
    if cfg.quality_tolerance is not None and accuracy is not None and recorded is not None:
        if accuracy < recorded - cfg.quality_tolerance:
            reasons.append(
                f"champion accuracy on new data {accuracy:.3f} < recorded {recorded:.3f} - {cfg.quality_tolerance:g}"
            )

    new_state = replace(
        state, considered_batches=tuple(sorted(set(state.considered_batches) | set(window.new_batches)))
    )
    for alarm in live_alarms(live, window, state, as_of):
        if cooling:
            notes.append(f"live: {alarm['reason']}, but cooling down after a retrain")
        else:
            reasons.append(f"live: {alarm['reason']}")
    if live:
        signals["live"] = {"run_key": live.get("run_key"), "as_of": live.get("as_of"),
                           "alarms": [a["trigger"] for a in live.get("alarms", [])]}  # fmt: skip
    if reasons:
        # A retrain resets the drift streak: the next model answers the drift seen so far.
        new_state = replace(new_state, drift_streak=0, last_retrain_at=as_of, last_retrain_run=window.run_key)
        return RetrainDecision(True, reasons, signals), new_state
    new_state = replace(new_state, drift_streak=streak)
    if not has_new:
        return RetrainDecision(False, ["no new data since the last decision"], signals), new_state
    if not drifted and not drift.get("skipped"):
        notes.append("no drift")
    return RetrainDecision(False, notes or ["no rule fired"], signals), new_state


def live_alarms(live: dict[str, Any] | None, window: Window, state: PolicyState, as_of: float) -> list[dict[str, str]]:
    """ct_monitor's alarms that count for this run: about today's champion, newer than the last retrain, not later than the run."""
    if not live or live.get("champion_version") != window.champion_version:
        return []
    judged_at = float(live.get("as_of") or 0)
    if judged_at > as_of or (state.last_retrain_at is not None and judged_at <= state.last_retrain_at):
        return []
    return list(live.get("alarms") or [])


def load_state(lake: Lake) -> PolicyState:
    return PolicyState.from_dict(lake.read_json_or(layout.state(POLICY_STATE), {}))


def _state_dict(state: PolicyState) -> dict[str, Any]:
    return {**asdict(state), "considered_batches": list(state.considered_batches)}


def record_decision(
    lake: Lake,
    window: Window,
    decision: RetrainDecision,
    state: PolicyState,
    new_state: PolicyState,
    as_of: float,
    backfill: bool = False,
) -> dict[str, Any]:
    """Commit the decision for the run (with the memory it read and produced), then apply that memory."""
    key = layout.report(layout.RETRAIN_DAG, window.run_key, "decision.json")
    if state.last_retrain_at is not None and new_state.last_retrain_at is not None:
        # Live runs arrive in time order, but never let the memory go back in time.
        new_state = replace(new_state, last_retrain_at=max(state.last_retrain_at, new_state.last_retrain_at))
    record = {"run_key": window.run_key, "as_of": as_of, "retrain": decision.retrain, "reasons": decision.reasons,
              "summary": decision.summary, "signals": decision.signals, "new_batches": window.new_batches,
              "new_images": window.new_images, "backfill": backfill, "replay": window.replay,
              "champion_version": window.champion_version, "state_revision": state.revision,
              "state_before": _state_dict(state), "state_after": None if backfill else _state_dict(new_state)}  # fmt: skip
    lake.write_json(key, record)  # the commit point
    settle(lake, record)
    return {**record, "decision_uri": lake.uri(key)}


def settle(lake: Lake, record: dict[str, Any]) -> None:
    """After the commit point (and on every rerun): apply the memory, then log the run, saying if it applied."""
    wrote = apply_state(lake, record)
    applied = wrote or (record.get("state_after") is not None and load_state(lake).updated_by == record["run_key"])
    log_run(lake, {**record, "applied": applied})


def run_log_key(record: dict[str, Any]) -> str:
    kind = "replay" if record.get("backfill") else "live"
    return layout.state(f"{layout.RUNS}/{layout.time_stamp(float(record['as_of']))}-{kind}-{record['run_key']}.json")


def log_run(lake: Lake, record: dict[str, Any]) -> None:
    """Append the decision to ``state/runs/`` (an exclusive create: a rerun adds nothing)."""
    body = json.dumps(record, sort_keys=True, default=str).encode()
    if not lake.create_exclusive(run_log_key(record), body):
        log.info("run %s is already in %s", record["run_key"], layout.state(layout.RUNS))


def run_log(lake: Lake) -> list[str]:
    """Keys of ``state/runs/``, oldest first (their names start with the run's time)."""
    return lake.list_keys(layout.state(layout.RUNS))


def state_at(lake: Lake, as_of: float) -> tuple[PolicyState, dict[str, Any]]:
    """The live policy memory as it was just before ``as_of``, and where it came from.

    It is the memory that the last live decision before ``as_of`` wrote (``state/runs/``, by the runs'
    times): a backfill decides with what live ct knew then, never with today's ``state/policy.json``. A
    run decides whether to retrain as it starts, so its time is when its memory was written; runs
    triggered for past dates (a history played day by day) take their place in that history.
    Decisions whose memory was refused (the revision had moved) never were the memory, and are skipped.
    """
    cutoff = layout.time_stamp(as_of)
    stamp = len(cutoff)
    names = {k: k.rsplit("/", 1)[-1] for k in run_log(lake)}
    keys = [k for k, name in names.items() if name[stamp : stamp + 6] == "-live-" and name[:stamp] < cutoff]
    found = None
    for key in reversed(keys):  # newest first: usually the first one read is the answer
        record = lake.read_json(key)
        if record.get("applied", True) and record.get("state_after"):
            found = record
            break
    if found is None:
        return PolicyState(), {"source": "no live retrain decision before this time in state/runs/: empty memory",
                               "state": _state_dict(PolicyState())}  # fmt: skip
    state = PolicyState.from_dict(found["state_after"])
    return state, {"source": f"state/runs/: the memory after live run {found['run_key']}", "key": run_log_key(found),
                   "state": _state_dict(state)}  # fmt: skip


def apply_state(lake: Lake, record: dict[str, Any]) -> bool:
    """Write the policy memory a decision produced, if the memory is still the revision it read."""
    if record.get("state_after") is None:  # a backfill, or a record from before this field existed
        return False
    current = load_state(lake)
    if current.updated_by == record["run_key"]:
        return False  # already applied
    if current.revision != record["state_revision"]:
        log.warning("policy memory moved to revision %d (by %s) since run %s read revision %d; not overwriting it",
                    current.revision, current.updated_by, record["run_key"], record["state_revision"])  # fmt: skip
        return False
    after = PolicyState.from_dict(record["state_after"])
    after = replace(after, revision=current.revision + 1, updated_by=record["run_key"])
    lake.write_json(layout.state(POLICY_STATE), _state_dict(after))
    return True


def recorded_decision(lake: Lake, run_key: str) -> dict[str, Any] | None:
    key = layout.report(layout.RETRAIN_DAG, run_key, "decision.json")
    return {**lake.read_json(key), "decision_uri": lake.uri(key)} if lake.exists(key) else None


def describe_replay(lake: Lake, window: Window, overrides: dict[str, Any], force: bool) -> None:
    """Note once what a replay is (its settings overrides and force), for the dashboard's backfill view."""
    if window.replay is None:
        return
    body = {"replay": window.replay, "settings": overrides, "force_retrain": bool(force), "first_run": window.run_key,
            "created_at": time.time()}  # fmt: skip
    lake.create_exclusive(
        layout.state(f"{layout.REPLAYS}/{window.replay}.json"), json.dumps(body, sort_keys=True).encode()
    )
