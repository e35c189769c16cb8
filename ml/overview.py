"""What the ct dashboard shows, read from the lake: plain data, no HTML, no Airflow.

Every function here reads records that the steps already commit (``state/decisions/``,
``reports/ct_retrain/<run_key>/``, ``quarantine/``, ``landing/``) and returns dicts of plain
values; :mod:`ct_airflow.ui` turns them into pages. Nothing here writes.

* :func:`timeline`: every decision (gate, rollback, forced promotion), newest first;
* :func:`decision`: one decision's full record, with its report links;
* :func:`champion_card`: the version behind ``@champion`` as ct last moved it, and why;
* :func:`drift_series`: each drift feature's score and threshold, run by run;
* :func:`data_status`: landing batches waiting, curated batches, quarantined batches and their fixes;
* :func:`replay_view`: every backfill replay day by day, beside what live ct decided;
* :func:`serving_status`: what ``ct_monitor`` saw of the champion's live traffic: traffic per hour and
  version, estimated against realized accuracy per version, label lag, alarms and service problems.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from ml import layout
from ml.errors import CorruptState
from ml.release.history import MOVES, decision_id
from ml.release.promote import RECORD_NAMES
from ml.storage import Lake

log = logging.getLogger(__name__)

#: How many of the newest runs the drift charts read (one ``drift.json`` and ``decision.json`` each).
DRIFT_RUNS = 90
#: How many of the newest ct_monitor reports the serving page reads.
MONITOR_RUNS = 48
#: Sample rows shown per failed rule of a quarantined batch.
SAMPLE_ROWS = 5


_DECISION_ID = re.compile(r"[0-9]{8}T[0-9]{6}\.[0-9]{6}-[a-z]+-[A-Za-z0-9_.-]{1,200}")


def _check(record: dict[str, Any], name: str) -> dict[str, Any]:
    return dict((record.get("checks") or {}).get(name) or {})


def _report_keys(record: dict[str, Any]) -> dict[str, str]:
    """Lake keys of the reports behind a decision (only those a gate or an override writes)."""
    run_key, dag_id = record["run_key"], record.get("dag_id", layout.RETRAIN_DAG)
    kind = record.get("kind", "gate")
    if kind not in RECORD_NAMES:
        return {"decision": layout.report(dag_id, run_key, "decision.json")}
    return {
        **({"approval": layout.report(dag_id, run_key, RECORD_NAMES[kind])} if kind != "gate" else {}),
        "gate": layout.report(dag_id, run_key, "gate.json"),
        "evaluation": layout.report(dag_id, run_key, "eval.json"),
        "drift": layout.report(dag_id, run_key, "drift.html"),
        "retrain decision": layout.report(dag_id, run_key, "decision.json"),
    }


def timeline_entry(record: dict[str, Any]) -> dict[str, Any]:
    """One line of the timeline: what was decided, the first reason, and the numbers behind it."""
    significance, superiority = _check(record, "significance"), _check(record, "superiority")
    reasons = record.get("reasons") or []
    return {
        "id": decision_id(record),
        "kind": record.get("kind", "gate"),
        "decision": record["decision"],
        "moved": record["decision"] in MOVES,
        "reason": reasons[0] if reasons else "",
        "decided_at": float(record["decided_at"]),
        "run_key": record["run_key"],
        "dag_id": record.get("dag_id", layout.RETRAIN_DAG),
        "backfill": bool(record.get("backfill")),
        "eval_rows": record.get("eval_rows"),
        "eval_batches": list(record.get("eval_batches") or []),
        "actor": record.get("actor"),
        "candidate_version": record.get("candidate_version"),
        "champion_version": record.get("champion_version"),
        "p_value": significance.get("p_value"),
        "metric": superiority.get("metric"),
        "delta": superiority.get("delta"),  # candidate minus champion, on the primary metric
        "lower_bound": significance.get("lower_bound"),  # the one-sided confidence bound on it
    }


def timeline(
    records: list[dict[str, Any]], decision: str | None = None, backfill: bool | None = None
) -> list[dict[str, Any]]:
    """The history's ``records`` (:func:`ml.release.history.read_history`) newest first, filtered by decision
    and by live (``backfill=False``) or backfill runs."""
    entries = [timeline_entry(r) for r in reversed(records)]
    if decision:
        entries = [e for e in entries if e["decision"] == decision]
    if backfill is not None:
        entries = [e for e in entries if e["backfill"] == backfill]
    return entries


def decision(lake: Lake, ident: str) -> dict[str, Any] | None:
    """One decision's record by its :func:`decision_id`, with ``report_keys`` that exist; None if unknown."""
    if not _DECISION_ID.fullmatch(ident):
        return None
    key = layout.state(f"decisions/{ident}.json")
    if not lake.exists(key):
        return None
    record = _read_optional(lake, key)
    if record is None or "decision" not in record:
        return None  # unreadable: the overview names it
    reports = {name: k for name, k in _report_keys(record).items() if lake.exists(k)}
    scored = _read_optional(lake, layout.report(layout.RETRAIN_DAG, str(record.get("run_key")), "eval.json")) or {}
    train_run = (scored.get("candidate") or {}).get("run_id")  # the candidate's MLflow run: its training curves
    return {**record, "id": ident, "report_keys": reports, "entry": timeline_entry(record), "train_run_id": train_run}


def champion_card(records: list[dict[str, Any]], registry_version: str | None = None) -> dict[str, Any] | None:
    """The champion as ct's history (``records``) has it: the last move, and the gate record that admitted it.

    ``registry_version`` is what MLflow says ``@champion`` is, when it answered; a difference means
    the alias was moved outside ct, and the card says so.
    """
    moves = [r for r in records if r["decision"] in MOVES]
    if not moves and registry_version is None:
        return None
    last = moves[-1] if moves else None
    version = str(last["candidate_version"]) if last else str(registry_version)
    admitted = next(
        (r for r in reversed(records) if r.get("kind") in RECORD_NAMES and str(r.get("candidate_version")) == version),
        None,
    )
    metrics = ((admitted or {}).get("metrics") or {}).get("candidate") or {}
    return {
        "version": version,
        "since": float(last["decided_at"]) if last else None,
        "moved_by": timeline_entry(last) if last else None,
        "reasons": list(last.get("reasons") or []) if last else [],
        "accuracy": metrics.get("accuracy"),
        "macro_f1": metrics.get("macro_f1"),
        "eval_rows": (admitted or {}).get("eval_rows"),
        "train_batches": list((admitted or {}).get("train_batches") or []),
        "admitted_by": decision_id(admitted) if admitted else None,
        "registry_version": registry_version,
        "registry_differs": registry_version is not None and str(registry_version) != version,
    }


def _read_optional(lake: Lake, key: str) -> dict[str, Any] | None:
    try:
        value = lake.read_json_or(key, None)
    except CorruptState:
        return None
    return value if isinstance(value, dict) else None


def drift_series(lake: Lake, runs: int = DRIFT_RUNS) -> dict[str, Any]:
    """Per feature, the score and threshold of each of the newest ``runs`` drift checks, oldest first.

    Each point says whether that run retrained (``decision.json``) and whether it was a backfill.
    Runs whose drift step skipped (no new data) have no scores and are left out.
    """
    points: list[dict[str, Any]] = []
    for run_key in lake.list_children(layout.report(layout.RETRAIN_DAG, "", "").rstrip("/")):
        drift = _read_optional(lake, layout.report(layout.RETRAIN_DAG, run_key, "drift.json"))
        features = (drift or {}).get("features")
        if not features:
            continue
        decided = _read_optional(lake, layout.report(layout.RETRAIN_DAG, run_key, "decision.json")) or {}
        points.append({
            "run_key": run_key,
            "as_of": decided.get("as_of"),
            "retrained": bool(decided.get("retrain")),
            "backfill": bool(decided.get("backfill")),
            "features": features,
        })  # fmt: skip
    # Runs in the order of the time they judged (a backfill judges the past); unknown times go first.
    points.sort(key=lambda p: (p["as_of"] is not None, p["as_of"] or 0.0, p["run_key"]))
    points = points[-runs:]
    series: dict[str, list[dict[str, Any]]] = {}
    for point in points:
        for name, entry in point["features"].items():
            series.setdefault(name, []).append({
                "run_key": point["run_key"], "as_of": point["as_of"], "retrained": point["retrained"],
                "backfill": point["backfill"], "score": entry.get("score"), "threshold": entry.get("threshold"),
                "drifted": bool(entry.get("drifted")), "detector": entry.get("detector"),
            })  # fmt: skip
    return {"runs": len(points), "features": dict(sorted(series.items()))}


def reingest_hint(batch_id: str) -> dict[str, str]:
    """How to re-ingest a batch once its problem is fixed: the ``ct_ingest`` conf and the CLI command."""
    return {
        "conf": json.dumps({"batch_ids": [batch_id]}),
        "command": f"python -m ml ingest --batch-id {batch_id}",
    }


def data_status(lake: Lake) -> dict[str, Any]:
    """Landing batches waiting for ingest, curated batches with their row counts, quarantined batches."""
    from ml.data.ingest import curated_batches, pending_batches, quarantined_batches

    curated = []
    for batch_id in curated_batches(lake):
        curated.append({"batch_id": batch_id, "rows": _manifest_rows(lake, batch_id),
                        "validation_key": layout.report(layout.INGEST_DAG, batch_id, "validation.html")})  # fmt: skip
    quarantined = []
    for batch_id in quarantined_batches(lake):
        report = _read_optional(lake, layout.quarantine_report(batch_id)) or {}
        failures = [
            {"rule": f.get("rule"), "why": f.get("why"), "observed": f.get("observed"), "stage": f.get("stage"),
             "unexpected_count": f.get("unexpected_count"), "fix": f.get("fix"),
             "sample_rows": list(f.get("sample_rows") or [])[:SAMPLE_ROWS]}
            for f in report.get("failures") or []
        ]  # fmt: skip
        quarantined.append({
            "batch_id": batch_id, "rows": report.get("rows"), "failed_rules": list(report.get("failed_rules") or []),
            "failures": failures, "landing_uri": report.get("landing_uri"), "report_key": layout.quarantine_report(batch_id),
            "reingest": reingest_hint(batch_id),
        })  # fmt: skip
    return {"pending": pending_batches(lake), "curated": curated, "quarantined": quarantined}


def _manifest_rows(lake: Lake, batch_id: str) -> int | None:
    """A curated batch's row count, from its Parquet footer (no rows are decoded)."""
    import pyarrow.parquet as pq

    try:
        with lake.local_file(layout.manifest(batch_id)) as path:
            return int(pq.ParquetFile(path).metadata.num_rows)
    except (OSError, ValueError) as exc:
        log.warning("cannot count the rows of %s: %s", lake.uri(layout.manifest(batch_id)), exc)
        return None


#: How many of the newest retrain decisions (live and replayed) the backfill view reads.
REPLAY_RUNS = 400
#: A live outcome and a replayed one that mean the same decision.
_SAME = {"would-promote": "promote", "would-reject": "reject", "pending": "promote", "expired": "reject"}


def _outcome(run: dict[str, Any], gates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What one retrain run decided, in a line: skip (and why), or the gate's (or its approval's) decision."""
    gate_record = gates.get(run["run_key"])
    summary = str(run.get("summary") or "")
    entry: dict[str, Any] = {
        "run_key": run["run_key"], "as_of": run.get("as_of"), "retrain": bool(run.get("retrain")),
        "reason": summary.split(": ", 1)[-1], "decision": "retrain" if run.get("retrain") else "skip",
        "id": None, "candidate_version": None, "champion_version": run.get("champion_version"), "p_value": None,
        "gate_reason": None,
    }  # fmt: skip
    if gate_record is not None:
        line = timeline_entry(gate_record)
        entry.update(decision=line["decision"], id=line["id"], candidate_version=line["candidate_version"],
                     champion_version=line["champion_version"], p_value=line["p_value"], gate_reason=line["reason"])  # fmt: skip
    return entry


def replay_view(lake: Lake, records: list[dict[str, Any]], runs: int = REPLAY_RUNS) -> dict[str, Any]:
    """Every replay day by day, beside what live ct decided on the same days (``state/runs/``, ``state/replays/``).

    ``records`` is the decision history; a run's gate (or, for a live one, its approval's answer) is
    its outcome, and a run that skipped is listed with its reason. Each replay says on how many of
    its days it decided otherwise than live ct: what its day ended with against what live ct's last
    run of that day decided (a would-promote counts as a promote).
    """
    gates: dict[str, dict[str, Any]] = {}
    for record in records:  # in decision order: a live run's approval answer replaces its pending gate
        if record.get("kind") in RECORD_NAMES:
            gates[record["run_key"]] = record
    days: dict[str, dict[str, list[dict[str, Any]]]] = {}
    replays: dict[str, dict[str, Any]] = {}
    for key in _newest_per_column(lake.list_keys(layout.state(layout.RUNS)), runs):
        run = _read_optional(lake, key)
        if run is None or "run_key" not in run:
            continue
        column = str(run.get("replay") or "unknown") if run.get("backfill") else "live"
        entry = _outcome(run, gates)
        day = str(iso_day(run.get("as_of")))
        days.setdefault(day, {}).setdefault(column, []).append(entry)
        if column != "live":
            replays.setdefault(column, {"id": column, "runs": 0, "days": set()})
            replays[column]["runs"] += 1
            replays[column]["days"].add(day)
    for replay_id, replay in replays.items():
        described = _read_optional(lake, layout.state(f"{layout.REPLAYS}/{replay_id}.json")) or {}
        replay["settings"] = described.get("settings") or {}
        replay["force_retrain"] = bool(described.get("force_retrain"))
        compared = [d for d in replay["days"] if days[d].get("live")]
        replay["compared_days"] = len(compared)
        replay["differs_on"] = sorted(
            d for d in compared if _decisions(days[d][replay_id]) != _decisions(days[d]["live"])
        )
        replay["days"] = sorted(replay["days"])
    ordered = sorted(replays.values(), key=lambda r: (r["days"][0] if r["days"] else "", r["id"]))
    return {"days": dict(sorted(days.items(), reverse=True)), "replays": ordered}


def _newest_per_column(keys: list[str], runs: int) -> list[str]:
    """The newest ``runs`` keys of ``state/runs/`` for live and for each replay (by name: time, kind, run key)."""
    stamp = len(layout.time_stamp(0))
    columns: dict[str, list[str]] = {}
    for key in keys:
        name = key.rsplit("/", 1)[-1].removesuffix(".json")
        kind, _, run_key = name[stamp + 1 :].partition("-")
        columns.setdefault("live" if kind == "live" else run_key.rsplit(".", 1)[-1], []).append(key)
    return sorted(k for column in columns.values() for k in column[-runs:])


def _decisions(entries: list[dict[str, Any]]) -> str:
    """What a day ended with (its last run's decision), with a replay's "would-" read as live's word."""
    return _SAME.get(entries[-1]["decision"], entries[-1]["decision"])


def iso_day(epoch: Any) -> str:
    """The UTC day of a Unix time, ``2026-01-03`` (``unknown`` without one)."""
    if not isinstance(epoch, int | float):
        return "unknown"
    return datetime.fromtimestamp(float(epoch), UTC).date().isoformat()


def serving_status(lake: Lake, runs: int = MONITOR_RUNS) -> dict[str, Any]:
    """The champion on its live traffic, from ct_monitor's reports (newest last): what the serving page shows.

    Per version: its latest label-free estimate (with its interval, and whether its calibration held)
    beside its realized accuracy from late labels (summed over the days of the latest report).
    """
    from ml.decide.estimate import wilson

    keys = [k for k in lake.list_keys(layout.join(layout.REPORTS, layout.MONITOR_DAG)) if k.endswith("/monitor.json")]
    records = sorted((r for r in (_read_optional(lake, k) for k in keys) if r), key=lambda r: r.get("as_of", 0))[-runs:]
    if not records:
        return {"latest": None, "versions": [], "per_day": [], "traffic": [], "runs": 0}
    latest = records[-1]
    versions: dict[str, dict[str, Any]] = {}
    for record in records:  # the newest estimate of each version wins
        version = str(record["champion_version"])
        versions[version] = {"version": version, "estimate": record.get("estimate") or {}, "as_of": record.get("as_of")}
    for day in latest["realized"]["per_day"]:
        entry = versions.setdefault(day["version"], {"version": day["version"], "estimate": {}, "as_of": None})
        entry["rows"] = entry.get("rows", 0) + day["rows"]
        entry["correct"] = entry.get("correct", 0) + day["correct"]
    for entry in versions.values():
        if entry.get("rows"):
            entry["realized"] = entry["correct"] / entry["rows"]
            entry["low"], entry["high"] = wilson(entry["correct"], entry["rows"])
    traffic: dict[float, dict[str, int]] = {}
    for row in latest.get("traffic") or []:
        traffic.setdefault(row["hour"], {})[row["version"]] = row["rows"]
    return {
        "latest": latest,
        "versions": sorted(versions.values(), key=lambda e: int(e["version"]) if e["version"].isdigit() else 0),
        "per_day": latest["realized"]["per_day"],
        "traffic": [{"hour": hour, "rows": per} for hour, per in sorted(traffic.items())],
        "runs": len(records),
    }
