"""The ``monitor`` step (``ct_monitor``): what the champion meets in production, and whether it still holds up.

From the prediction log (:mod:`ml.serve.predlog`) of the last ``monitor.window_hours`` before the
run's time, and the late labels of the feedback batches (:mod:`ml.data.feedback`), it measures:

* **live drift:** the served images' statistics against the champion's training data, with the
  drift step's own detectors and thresholds (:func:`ml.decide.drift.compare`); the label mix
  compared is the champion's *predicted* classes (a shift seen through the model's outputs);
* **estimated accuracy** without labels (:mod:`ml.decide.estimate`), calibrated on held-out rows
  of the champion's own training data, where it also measures the champion's **reference accuracy**;
* **realized accuracy** where late labels exist, per version and per day, with Wilson intervals,
  and the **label lag** (how long labels take to come back);
* the traffic per hour and version, and the problems the service reported since the last run.

It writes ``reports/ct_monitor/<run_key>/monitor.json`` and the latest verdict to
``state/monitor/latest.json``, which the retrain policy reads (:func:`ml.decide.policy.decide`):
each of ``live_drift``, ``estimated_drop`` and ``realized_drop`` that fires is an alarm with a reason.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from ml import layout
from ml.config import Settings
from ml.data import feedback
from ml.data.window import trained_batches
from ml.decide import estimate
from ml.errors import CtError, InfrastructureUnavailable, NothingToDo
from ml.release import registry
from ml.serve import predlog
from ml.storage import Lake

log = logging.getLogger(__name__)

LATEST = layout.MONITOR_LATEST
HOUR, DAY = 3600.0, 86400.0


def calibration_key(version: str) -> str:
    return layout.state(f"monitor/calibration/v{version}.json")


def reference_rows(lake: Lake, settings: Settings, batches: list[str]) -> Any:
    """The champion's held-out rows (val and test of what it trained on): it never learned from them."""
    from ml.data.curated import ShardReader, join_rows, rows_of

    reader = ShardReader(lake)
    val, test = (rows_of(reader, batches, part, settings.labels) for part in ("val", "test"))
    return reader, join_rows(val, test)


def calibrate(lake: Lake, settings: Settings, version: registry.VersionInfo) -> dict[str, Any]:
    """The champion's calibration and reference accuracy on its held-out rows (once per version, then read)."""
    key = calibration_key(version.version)
    if lake.exists(key):
        return lake.read_json(key)
    from ml.serve.follower import load_version

    batches = trained_batches(lake, version.tags.get(registry.WINDOW_TAG))
    served = load_version(settings, version).model
    confidence, correct = [], []
    reader, rows = reference_rows(lake, settings, batches)
    with reader:
        start = 0
        for stored in rows.batches():  # the stored squares: the served preprocessing's centre crop follows
            probabilities = served.run(served.pipeline.model_input(stored))
            truth = rows.labels[start : start + len(stored)]
            names = np.asarray(served.labels)[probabilities.argmax(axis=1)]
            confidence.append(probabilities.max(axis=1))
            correct.append(names == np.asarray(settings.labels)[truth])
            start += len(stored)
    record = estimate.fit(np.concatenate(confidence) if confidence else np.zeros(0),
                          np.concatenate(correct) if correct else np.zeros(0, bool),
                          settings.monitor.calibration_bins, settings.monitor.max_calibration_error)  # fmt: skip
    record.update({"version": version.version, "batches": batches})
    lake.write_json(key, record)
    return record


def live_drift(lake: Lake, settings: Settings, served: pd.DataFrame, batches: list[str]) -> dict[str, Any]:
    """The served images against the champion's training data: the drift step's detectors on the same columns."""
    from ml.decide.drift import compare, manifests

    if len(served) < settings.monitor.min_rows:
        return {"drift_detected": False, "skipped": f"{len(served)} served images < monitor.min_rows "
                f"{settings.monitor.min_rows}"}  # fmt: skip
    reference = manifests(lake, batches)
    if reference.empty:
        return {"drift_detected": False, "skipped": "the champion's training data is not in this lake"}
    cfg = settings.drift.model_copy(update={"features": tuple(f for f in settings.drift.features if f in served)})
    verdict, _ = compare(served, reference, cfg)
    return {**verdict, "compared": list(cfg.features), "label_is": "the champion's predicted class"}


def realized(served: pd.DataFrame, labels: pd.DataFrame) -> dict[str, Any]:
    """Late labels joined to the predictions they are about: accuracy per version and day, and the label lag."""
    joined = served.merge(labels[["request_id", "label", "landed_at"]].rename(columns={"label": "truth"}),
                          on="request_id", how="inner")  # fmt: skip
    per_day = []
    if not joined.empty:
        joined = joined.assign(day=pd.to_datetime(joined["time"], unit="s", utc=True).dt.strftime("%Y-%m-%d"),
                               correct=joined["label"].astype(str) == joined["truth"].astype(str))  # fmt: skip
        for (version, day), part in joined.groupby(["version", "day"], sort=True):
            correct = int(part["correct"].sum())
            low, high = estimate.wilson(correct, len(part))
            per_day.append({"version": str(version), "day": day, "rows": len(part), "correct": correct,
                            "accuracy": correct / len(part), "low": low, "high": high})  # fmt: skip
    lag = (joined["landed_at"] - joined["time"]) / HOUR if not joined.empty else pd.Series(dtype=float)
    return {
        "joined": joined,
        "per_day": per_day,
        "label_lag_hours": {"median": float(lag.median()), "p90": float(lag.quantile(0.9)), "rows": len(lag)}
        if len(lag) else None,
    }  # fmt: skip


def traffic(served: pd.DataFrame) -> list[dict[str, Any]]:
    if served.empty:
        return []
    hours = (served["time"] // HOUR * HOUR).astype("int64")
    counts = served.groupby([hours, served["version"].astype(str)]).size()
    return [{"hour": float(hour), "version": version, "rows": int(rows)} for (hour, version), rows in counts.items()]


def problems_since(lake: Lake, since: float | None) -> list[dict[str, Any]]:
    """What the prediction service reported (a version it could not load, a log it could not write) since ``since``."""
    found = []
    for key in lake.list_keys(layout.state("serve/problems")):
        record = lake.read_json(key)
        if since is None or record.get("time", 0) > since:
            found.append(record)
    return sorted(found, key=lambda r: r.get("time", 0))


def monitor(lake: Lake, settings: Settings, run_key: str, as_of: float | None = None) -> dict[str, Any]:
    """Judge the champion on its live traffic as of ``as_of`` (default now); once per run key."""
    key = layout.report(layout.MONITOR_DAG, run_key, "monitor.json")
    if lake.exists(key):
        return {**lake.read_json(key), "already_done": True}
    as_of = time.time() if as_of is None else as_of
    cfg = settings.monitor
    champion = registry.champion(registry.client(settings), settings.model_name)
    if champion is None:
        raise NothingToDo("no champion yet: nothing is served, nothing to monitor")
    previous = lake.read_json_or(LATEST, {})
    since = as_of - cfg.window_hours * HOUR
    served_all = predlog.read(lake, as_of - cfg.feedback_days * DAY, as_of)
    served = served_all[(served_all["time"] >= since) & (served_all["version"].astype(str) == champion.version)]
    try:
        calibration = calibrate(lake, settings, champion)
    except (CtError, ValueError, OSError) as exc:  # a champion that cannot be loaded: judged without an estimate
        if isinstance(exc, InfrastructureUnavailable):
            raise
        log.error("cannot calibrate v%s: %s", champion.version, exc)
        calibration = {"error": f"v{champion.version} cannot be loaded to calibrate: {exc}", "accuracy": None,
                       "reliable": False, "ece_held_out": None, "batches": []}  # fmt: skip
    reference_accuracy = calibration["accuracy"]
    if "error" in calibration:
        estimated = {"rows": len(served), "accuracy": None, "reliable": False, "error": calibration["error"]}
    else:
        estimated = {**estimate.estimate(served["probability"].to_numpy(), calibration),
                     "reliable": calibration["reliable"], "reference_accuracy": reference_accuracy,
                     "ece_held_out": calibration["ece_held_out"]}  # fmt: skip
    if estimated["accuracy"] is not None and reference_accuracy is not None:
        estimated["drop"] = reference_accuracy - estimated["accuracy"]
    late = realized(served_all, feedback.read_all(lake))
    joined = late.pop("joined")
    mine = joined[joined["version"].astype(str) == champion.version] if not joined.empty else joined
    champion_realized: dict[str, Any] = {"rows": len(mine)}
    if len(mine):
        correct = int(mine["correct"].sum())
        low, high = estimate.wilson(correct, len(mine))
        champion_realized.update({"accuracy": correct / len(mine), "low": low, "high": high})
        if reference_accuracy is not None:
            champion_realized["drop"] = reference_accuracy - correct / len(mine)
    drift = live_drift(lake, settings, served, calibration.get("batches") or [])
    record = {
        "run_key": run_key,
        "as_of": as_of,
        "since": since,
        "champion_version": champion.version,
        "served_rows": len(served),
        "traffic": traffic(served_all[served_all["time"] >= since]),
        "drift": {k: v for k, v in drift.items() if k != "features"} | {"features": _scores(drift)},
        "estimate": estimated,
        "realized": {"champion": champion_realized, "per_day": late["per_day"]},
        "label_lag_hours": late["label_lag_hours"],
        "problems": problems_since(lake, previous.get("as_of")),
    }
    record["alarms"] = alarms(record, settings)
    record["alarm"] = bool(record["alarms"])
    lake.write_json(key, record)
    if as_of >= previous.get("as_of", 0):
        lake.write_json(LATEST, record)
    log.info("monitor %s: v%s, %d served, alarms %s", run_key, champion.version, len(served),
             [a["trigger"] for a in record["alarms"]] or "none")  # fmt: skip
    return {**record, "report_uri": lake.uri(key), "already_done": False}


def _scores(drift: dict[str, Any]) -> dict[str, Any]:
    """Each compared column's score and threshold (not Evidently's whole entry)."""
    return {name: {k: entry.get(k) for k in ("score", "threshold", "drifted")}
            for name, entry in (drift.get("features") or {}).items()}  # fmt: skip


def alarms(record: dict[str, Any], settings: Settings) -> list[dict[str, str]]:
    """The live signals that ask for a retrain, each with its reason (the policy repeats it)."""
    policy, cfg = settings.policy, settings.monitor
    found = []
    drift, est, real = record["drift"], record["estimate"], record["realized"]["champion"]
    version = record["champion_version"]
    if policy.retrain_on_live_drift and drift.get("drift_detected"):
        fired = ", ".join(drift.get("drifted_features") or []) or "the served images"
        found.append({"trigger": "live_drift", "reason": f"served images drifted from v{version}'s training data "
                      f"on {fired} ({record['served_rows']} served)"})  # fmt: skip
    drop = est.get("drop")
    if policy.max_estimated_drop is not None and drop is not None and record["served_rows"] >= cfg.min_rows:
        if not est["reliable"]:
            pass  # an uncalibrated estimate triggers nothing; the report says so
        elif drop > policy.max_estimated_drop:
            found.append({"trigger": "estimated_drop", "reason": f"estimated live accuracy of v{version} "
                          f"{est['accuracy']:.3f} (95% {est['low']:.3f}-{est['high']:.3f}, {est['rows']} served, "
                          f"no labels) < held-out {est['reference_accuracy']:.3f} - {policy.max_estimated_drop:g}"})  # fmt: skip
    drop = real.get("drop")
    if policy.max_realized_drop is not None and drop is not None and real["rows"] >= cfg.min_feedback_rows:
        if drop > policy.max_realized_drop:
            found.append({"trigger": "realized_drop", "reason": f"realized live accuracy of v{version} "
                          f"{real['accuracy']:.3f} (95% {real['low']:.3f}-{real['high']:.3f}, {real['rows']} late "
                          f"labels) < held-out {est['reference_accuracy']:.3f} - {policy.max_realized_drop:g}"})  # fmt: skip
    return found
