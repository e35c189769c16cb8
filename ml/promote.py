"""Apply the gate: decide, move ``@champion`` with compare-and-set, and record the decision.

Records: ``reports/<dag_id>/<run_key>/gate.json`` (+ ``gate.md``), one object per decision under
``state/decisions/`` (append-only: keys are never rewritten), and tags on the candidate version.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ml import gate, layout, registry
from ml.config import Settings
from ml.errors import ChampionChanged
from ml.evaluate import eval_key
from ml.storage import Lake

log = logging.getLogger(__name__)

HISTORY = "decisions"


def gate_key(dag_id: str, run_key: str, name: str = "gate.json") -> str:
    return layout.report(dag_id, run_key, name)


def append_history(lake: Lake, record: dict[str, Any]) -> str:
    key = layout.state(f"{HISTORY}/{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{record['run_key']}.json")
    lake.write_json(key, record)
    return key


def history(lake: Lake) -> list[dict[str, Any]]:
    return [lake.read_json(k) for k in lake.list_keys(layout.state(HISTORY))]


def render_markdown(record: dict[str, Any]) -> str:
    lines = [f"# Gate decision for run `{record['run_key']}`: **{record['decision'].upper()}**", ""]
    lines += [f"- {reason}" for reason in record["reasons"]]
    champion = record.get("champion_version")
    lines += ["", f"Candidate: v{record['candidate_version']}  ", f"Champion: {('v' + champion) if champion else 'none'}  ",
              f"Evaluation rows: {record['eval_rows']} from {', '.join(record['eval_batches'])}", ""]  # fmt: skip
    lines += ["| check | passed | detail |", "|---|---|---|"]
    for name, check in record.get("checks", {}).items():
        detail = {k: v for k, v in check.items() if k not in ("passed", "classes")}
        lines.append(f"| {name} | {check.get('passed')} | `{detail}` |")
    cand = record["metrics"]["candidate"]["per_class"]
    champ = (record["metrics"].get("champion") or {}).get("per_class", {})
    lines += ["", "| class | support | champion recall | candidate recall |", "|---|---|---|---|"]
    for label, row in cand.items():
        lines.append(f"| {label} | {row['support']} | {champ.get(label, {}).get('recall')} | {row['recall']} |")
    return "\n".join(lines) + "\n"


def run_gate(lake: Lake, settings: Settings, run_key: str, allow_promote: bool = True,
             dag_id: str = layout.RETRAIN_DAG) -> dict[str, Any]:  # fmt: skip
    """Decide once per run key; a rerun returns the recorded decision and never promotes twice."""
    key = gate_key(dag_id, run_key)
    if lake.exists(key):
        return {**lake.read_json(key), "gate_uri": lake.uri(key), "already_done": True}

    evaluation = lake.read_json(eval_key(run_key))
    y_true = np.asarray(evaluation["y_true"], dtype=np.int64)
    candidate = evaluation["candidate"]
    champion = evaluation.get("champion")
    outcome = gate.decide(
        y_true,
        np.asarray(candidate["pred"], dtype=np.int64),
        np.asarray(champion["pred"], dtype=np.int64) if champion else None,
        settings.labels,
        settings.gate,
    )
    if outcome.decision == "promote" and not allow_promote:
        outcome.decision = "reject"
        outcome.reasons.insert(0, "backfill runs do not promote (set allow_promote to override)")

    record: dict[str, Any] = {
        "run_key": run_key,
        "dag_id": dag_id,
        "decided_at": time.time(),
        "decision": outcome.decision,
        "reasons": outcome.reasons,
        "candidate_version": candidate["version"],
        "champion_version": champion["version"] if champion else None,
        "eval_batches": evaluation["eval_batches"],
        "train_batches": evaluation["train_batches"],
        "eval_rows": len(y_true),
        "metrics": {"candidate": outcome.candidate, "champion": outcome.champion},
        "checks": outcome.checks,
        "thresholds": outcome.thresholds,
    }
    mlflow_client = registry.client(settings)
    if outcome.decision == "promote":
        try:
            registry.move_champion(mlflow_client, lake, settings.model_name, candidate["version"],
                                   expected=record["champion_version"], owner=f"{dag_id}/{run_key}")  # fmt: skip
        except ChampionChanged as exc:
            record["decision"] = "error"
            record["reasons"] = [str(exc)]

    lake.write_bytes(gate_key(dag_id, run_key, "gate.md"), render_markdown(record).encode())
    lake.write_json(key, record)
    record["history_key"] = append_history(lake, record)
    mlflow_client.set_model_version_tag(
        settings.model_name, candidate["version"], "ct.gate.decision", record["decision"]
    )
    mlflow_client.set_model_version_tag(settings.model_name, candidate["version"], "ct.gate.report", lake.uri(key))
    log.info("gate %s: %s (%s)", run_key, record["decision"], "; ".join(record["reasons"]))
    return {**record, "gate_uri": lake.uri(key), "already_done": False}
