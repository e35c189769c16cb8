"""Apply the gate: decide, move ``@champion`` with compare-and-set, and record the decision.

Records: ``reports/<dag_id>/<run_key>/gate.json`` (+ ``gate.md``), one object per decision under
``state/decisions/`` (append-only: keys are never rewritten), and tags on the candidate version.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np

from ml import gate, layout, registry
from ml.config import Settings
from ml.errors import ChampionChanged, CtError
from ml.evaluate import eval_key
from ml.storage import Lake

log = logging.getLogger(__name__)

HISTORY = "decisions"
ACCURACY_TAG = "ct.eval.accuracy"


def gate_key(dag_id: str, run_key: str, name: str = "gate.json") -> str:
    return layout.report(dag_id, run_key, name)


def append_history(lake: Lake, record: dict[str, Any]) -> str:
    """Add one decision to ``state/decisions/``; an exclusive create means a record is never rewritten."""
    decided_at = float(record.get("decided_at", time.time()))
    # Microseconds in the key keep the listing in decision order.
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(decided_at)) + f".{int(decided_at * 1e6) % 1_000_000:06d}"
    base = f"{HISTORY}/{stamp}-{record.get('kind', 'gate')}-{record['run_key']}"
    body = (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode()
    for attempt in range(100):
        key = layout.state(f"{base}{'' if attempt == 0 else f'-{attempt}'}.json")
        if lake.create_exclusive(key, body):
            return key
    raise CtError(f"could not append to the decision history under {lake.uri(layout.state(HISTORY))}")


def history(lake: Lake, limit: int | None = None) -> list[dict[str, Any]]:
    """Decisions in the order they were made; with ``limit``, only the newest ones."""
    keys = lake.list_keys(layout.state(HISTORY))
    return [lake.read_json(k) for k in (keys[-limit:] if limit else keys)]


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


def run_gate(
    lake: Lake,
    settings: Settings,
    run_key: str,
    backfill: bool = False,
    allow_backfill_promote: bool = False,
    dag_id: str = layout.RETRAIN_DAG,
) -> dict[str, Any]:
    """Decide once per run key; a rerun returns the recorded decision and never promotes twice."""
    key = gate_key(dag_id, run_key)
    if lake.exists(key):
        return {**lake.read_json(key), "gate_uri": lake.uri(key), "already_done": True,
                "gate_md_uri": lake.uri(gate_key(dag_id, run_key, "gate.md"))}  # fmt: skip

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
        candidate_cost=candidate.get("cost"),
    )
    if backfill and not allow_backfill_promote:
        # The evidence is still computed and recorded; only the alias stays where it is.
        outcome.reasons.insert(0, f"backfill runs do not promote (the evidence said {outcome.decision})")
        outcome.decision = "reject"
    elif backfill:
        outcome.reasons.append("backfill run: promotion allowed by allow_backfill_promote")

    record: dict[str, Any] = {
        "kind": "gate",
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
        "golden_set": evaluation.get("golden_set"),
        "backfill": backfill,
        "cost": {"candidate": candidate.get("cost"), "champion": (champion or {}).get("cost")},
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
    # What the policy's quality check compares against once this version is champion.
    mlflow_client.set_model_version_tag(
        settings.model_name, candidate["version"], ACCURACY_TAG, f"{outcome.candidate['accuracy']:.6f}"
    )
    log.info("gate %s: %s (%s)", run_key, record["decision"], "; ".join(record["reasons"]))
    return {**record, "gate_uri": lake.uri(key), "gate_md_uri": lake.uri(gate_key(dag_id, run_key, "gate.md")),
            "already_done": False}  # fmt: skip


OVERRIDES = ("rollback", "promote")
MIN_REASON_CHARS = 10


def run_override(
    lake: Lake, settings: Settings, action: str, version: str, reason: str, run_key: str, actor: str = "cli"
) -> dict[str, Any]:
    """Roll back to, or force-promote, ``version``: with a reason, compare-and-set, and a history record.

    Idempotent per ``run_key``: a rerun returns the recorded outcome.
    """
    if action not in OVERRIDES:
        raise CtError(f"unknown action {action!r}; choose one of {list(OVERRIDES)}")
    if len(reason.strip()) < MIN_REASON_CHARS:
        raise CtError(f"a {action} needs a reason of at least {MIN_REASON_CHARS} characters; got {reason!r}")
    key = gate_key(layout.OPS_DAG, run_key, "decision.json")
    if lake.exists(key):
        return {**lake.read_json(key), "decision_uri": lake.uri(key), "already_done": True}

    mlflow_client = registry.client(settings)
    current = registry.champion(mlflow_client, settings.model_name)
    target = registry.get_version(mlflow_client, settings.model_name, version)
    registry.load_model(settings, target)  # refuse to put an unloadable version in production
    if current is not None and current.version == target.version:
        raise CtError(f"v{version} is already @{registry.CHAMPION}; nothing to {action}")
    if action == "rollback" and current is not None and int(target.version) > int(current.version):
        raise CtError(f"v{version} is newer than the champion v{current.version}; a rollback goes back, use promote")
    record: dict[str, Any] = {
        "kind": action,
        "run_key": run_key,
        "dag_id": layout.OPS_DAG,
        "decided_at": time.time(),
        "decision": action,
        "reasons": [reason.strip()],
        "actor": actor,
        "candidate_version": target.version,
        "champion_version": current.version if current else None,
    }
    registry.move_champion(
        mlflow_client, lake, settings.model_name, target.version,
        expected=record["champion_version"], owner=f"{layout.OPS_DAG}/{run_key}",
    )  # fmt: skip
    lake.write_json(key, record)
    record["history_key"] = append_history(lake, record)
    mlflow_client.set_model_version_tag(
        settings.model_name, target.version, f"ct.{action}.reason", reason.strip()[:4000]
    )
    log.info("%s: @%s moved from %s to %s (%s)", action, registry.CHAMPION, record["champion_version"], version, reason)
    return {**record, "decision_uri": lake.uri(key), "already_done": False}
