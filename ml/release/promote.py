"""Apply the gate and the overrides: decide once, move ``@champion`` safely, record it everywhere.

Every decision has exactly one **commit point**: its record object,
``reports/ct_retrain/<run_key>/gate.json`` for a gate and ``reports/ct_ops/<run_key>/decision.json``
for a rollback or forced promotion. The protocol:

1. Decide (pure functions in :mod:`ml.decide.gate`). A decision that moves nothing is committed at once.
2. A live gate against a champion, and any move, is decided under the promotion lease
   (:mod:`ml.release.lease`): re-read ``@champion``; if it moved since the evaluation, score the new champion
   on the same rows and decide again (at most ``gate.max_reevaluations`` times, then fail with
   nothing recorded). A live gate then claims its share of the champion's error budget
   (:mod:`ml.decide.reign`) and decides at that level. A move writes the intent into the lease, checks the
   fence, **commits the record**, checks the fence, moves the alias and starts the new reign.
3. Finish (idempotent): ``gate.md``, the history entry (its key is derived from the record, so it is
   written once) and the tags on the version.

Whatever a kill leaves undone is finished later, never decided again: a rerun that finds the record
completes the alias (compare-and-set on the recorded champion, under the lease), the history and the
tags; and whoever takes the lease next finishes a dead holder's committed move before anything else.
Before the commit point nothing is visible; a kill there means the rerun decides from scratch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ml import layout
from ml.config import Settings
from ml.data.availability import iso
from ml.data.window import Window, load_window
from ml.decide import gate, reign
from ml.errors import ChampionChanged, CtError, UsageError
from ml.learn.evaluate import eval_key, rescore_champion
from ml.release import registry
from ml.release.history import (
    MOVES,
    append_history,
    challenges_at,
    decision_id,
    effective_at,
    history_key,
    read_history,
)
from ml.release.lease import Lease, promotion_lease
from ml.storage import Lake

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

ACCURACY_TAG = "ct.eval.accuracy"
OVERRIDES = ("rollback", "promote")
MIN_REASON_CHARS = 10
#: A live promote that waits for a person (``gate.require_approval``); it moves nothing until answered.
PENDING = "pending"
#: A backfill's gate: what the live gate would have decided at the run's time. Neither moves anything.
WOULD_PROMOTE = "would-promote"
WOULD_REJECT = "would-reject"
#: An approval nobody answered in ``gate.approval_timeout_hours``: nothing moved.
EXPIRED = "expired"
ANSWERS = ("approve", "reject", EXPIRED)
RECORD_NAMES = {"gate": "gate.json", "approval": "approval.json"}
#: How far ahead of this machine's clock an override's time may be (another machine's clock may lead).
FUTURE_SLACK_S = 300


def gate_key(dag_id: str, run_key: str, name: str = "gate.json") -> str:
    return layout.report(dag_id, run_key, name)


def record_key(record: dict[str, Any]) -> str:
    """Where a decision's record (its commit point) lives."""
    return gate_key(record["dag_id"], record["run_key"], RECORD_NAMES.get(record["kind"], "decision.json"))


# -- rendering --------------------------------------------------------------------------------
def _num(value: Any) -> str:
    """Numbers for people: four significant digits, p-values in scientific notation when tiny."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4g}"
    return str(value)


def render_markdown(record: dict[str, Any]) -> str:
    lines = [f"# Gate decision for run `{record['run_key']}`: **{record['decision'].upper()}**", ""]
    lines += [f"- {reason}" for reason in record["reasons"]]
    champion = record.get("champion_version")
    lines += ["", f"Candidate: v{record['candidate_version']}  ", f"Champion: {('v' + champion) if champion else 'none'}  ",
              f"Evaluation rows: {record['eval_rows']} from {', '.join(record['eval_batches'])}", ""]  # fmt: skip
    power = record.get("power")
    if power:
        lines += [f"**What this evaluation could see:** {power['sentence']}."]
        if power.get("advice"):
            lines += ["", f"**Not significant:** {power['advice']}."]
        lines.append("")
    guard = (record.get("checks") or {}).get("non_inferiority") or {}
    if guard.get("sentence"):
        lines += [f"**What the class guard could see:** {guard['sentence']}.", ""]
    spending = record.get("spending")
    if spending:
        lines += [
            f"**Error budget:** challenge {spending['k']} of v{spending['champion_version']}'s reign, tested at "
            f"alpha {_num(spending['alpha'])} ({spending['rule']}); {_num(spending['left'])} of "
            f"{_num(spending['budget'])} left{'' if spending['consumed'] else ' (nothing spent: backfill)'}.",
            "",
        ]
    lines += ["| check | passed | detail |", "|---|---|---|"]
    for name, check in record.get("checks", {}).items():
        detail = ", ".join(f"{k} {_num(v)}" for k, v in check.items()
                           if k not in ("passed", "classes", "unguarded", "sentence") and not isinstance(v, dict | list))  # fmt: skip
        lines.append(f"| {name} | {_num(check.get('passed'))} | {detail} |")
    classes = record.get("checks", {}).get("non_inferiority", {}).get("classes")
    if classes:
        lines += ["", "| class | support | champion recall | candidate recall | drop | guarded | drop seen from "
                  "(80% power) | p-value | vetoes |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for row in classes:
            guarded = "yes" if row["guarded"] else row.get("note", "no")
            lines.append(
                f"| {row['label']} | {row['support']} | {_num(row['champion_recall'])} | "
                f"{_num(row['candidate_recall'])} | {_num(row['drop'])} | {guarded} | "
                f"{_num(row.get('detectable_drop'))} | {_num(row['p_value'])} | {_num(row['vetoes'])} |"
            )
    return "\n".join(lines) + "\n"


def headline(record: dict[str, Any]) -> str:
    """One line for logs, notes and messages: the decision, the versions, the first reason."""
    candidate, champion = record.get("candidate_version"), record.get("champion_version")
    reasons = record.get("reasons") or [""]
    if record.get("kind") in OVERRIDES:  # a person moved it: say who, and from where
        versions = f"to v{candidate}" + (f" from v{champion}" if champion else "") + f" by {record.get('actor')}"
    else:
        versions = f"v{candidate}" + (f" over v{champion}" if champion else "")
    return f"{str(record['decision']).upper()} {versions}: {reasons[0]}"


def approval_markdown(record: dict[str, Any]) -> str:
    """What an approver reads before answering: the evidence in one line, then the gate's full report."""
    significance = (record.get("checks") or {}).get("significance") or {}
    superiority = (record.get("checks") or {}).get("superiority") or {}
    evidence = (f"**Δ {superiority.get('metric', 'accuracy')}: {_num(superiority.get('delta'))}** "
                f"(one-sided lower bound {_num(significance.get('lower_bound'))}), "
                f"p-value {_num(significance.get('p_value'))}")  # fmt: skip
    report = render_markdown(record).split("\n", 1)[1]  # without its title: the approval has its own
    return f"{headline(record)}\n\n{evidence}\n{report}"


# -- the protocol -----------------------------------------------------------------------------
def _intent(record: dict[str, Any]) -> dict[str, Any]:
    return {"record_key": record_key(record), "run_key": record["run_key"], "kind": record["kind"],
            "target": record["candidate_version"], "expected": record["champion_version"]}  # fmt: skip


def apply_move(mlflow_client: MlflowClient, settings: Settings, record: dict[str, Any], lease: Lease) -> None:
    """Make ``@champion`` reflect a committed move: compare-and-set on the champion the record saw.

    The move's last step begins the new champion's reign (a fresh error budget, :mod:`ml.decide.reign`).
    """
    target, expected = str(record["candidate_version"]), record["champion_version"]
    current = registry.champion_version(mlflow_client, settings.model_name)
    if current != target and current != expected:
        # Committed moves are finished before anyone else can move the alias, so this one was
        # applied and a later decision has superseded it.
        log.info("@%s is v%s: %s's move to v%s was applied and later superseded", registry.CHAMPION, current,
                 record["run_key"], target)  # fmt: skip
        return
    if current != target:
        lease.check()
        registry.set_champion(mlflow_client, settings.model_name, target)
    reign.start(lease.lake, lease, target, float(record["decided_at"]), record_key(record))


def finish(lake: Lake, settings: Settings, mlflow_client: MlflowClient, record: dict[str, Any]) -> None:
    """The idempotent writes after the commit point: report page, history entry, version tags."""
    name, version = settings.model_name, str(record["candidate_version"])
    if record["kind"] == "gate":
        lake.write_bytes(gate_key(record["dag_id"], record["run_key"], "gate.md"), render_markdown(record).encode())
    append_history(lake, record)
    # A link people can open (the decision's dashboard page); the record itself stays in the lake.
    page = f"{settings.dashboard_url.rstrip('/')}/decision/{decision_id(record)}"
    if record["kind"] in RECORD_NAMES:  # a gate, or the answer to its approval
        mlflow_client.set_model_version_tag(name, version, "ct.gate.decision", record["decision"])
        mlflow_client.set_model_version_tag(name, version, "ct.gate.report", page)
        mlflow_client.set_model_version_tag(name, version, "ct.gate.record", lake.uri(record_key(record)))
        # What the policy's quality check compares against once this version is champion.
        accuracy = record["metrics"]["candidate"]["accuracy"]
        mlflow_client.set_model_version_tag(name, version, ACCURACY_TAG, f"{accuracy:.6f}")
    else:
        mlflow_client.set_model_version_tag(name, version, f"ct.{record['kind']}.reason", record["reasons"][0][:4000])
        mlflow_client.set_model_version_tag(name, version, f"ct.{record['kind']}.report", page)


def _recoverer(lake: Lake, settings: Settings, mlflow_client: MlflowClient) -> Callable[[dict[str, Any], Lease], None]:
    """What the next lease holder does with a dead holder's intent: finish it if it was committed."""

    def recover(intent: dict[str, Any], lease: Lease) -> None:
        key = intent["record_key"]
        if not lake.exists(key):
            log.warning("the move of %s was never committed (%s is missing): nothing to finish", intent["run_key"], key)
            return
        record = lake.read_json(key)
        if record.get("decision") not in MOVES or str(record.get("candidate_version")) != str(intent["target"]):
            return
        apply_move(mlflow_client, settings, record, lease)
        finish(lake, settings, mlflow_client, record)
        log.warning(
            "finished %s's committed move to v%s, left by a holder that died", record["run_key"], intent["target"]
        )

    return recover


def _lease(lake: Lake, settings: Settings, mlflow_client: MlflowClient, owner: str) -> Any:
    return promotion_lease(lake, owner, _recoverer(lake, settings, mlflow_client))


def _commit_move(
    lake: Lake, settings: Settings, mlflow_client: MlflowClient, record: dict[str, Any], lease: Lease
) -> None:
    """Under the lease: announce the intent, commit the record, move the alias, clear the intent."""
    lease.set_intent(_intent(record))
    lease.check()
    record["decided_at"] = time.time()  # taken under the lease: history order is promotion order
    lake.write_json(record_key(record), record)  # the commit point
    apply_move(mlflow_client, settings, record, lease)
    lease.set_intent(None)


def complete(lake: Lake, settings: Settings, mlflow_client: MlflowClient, record: dict[str, Any]) -> None:
    """Finish a committed decision that a killed attempt may have left half done."""
    if record["decision"] in MOVES:
        with _lease(lake, settings, mlflow_client, owner=f"{record['dag_id']}/{record['run_key']} (rerun)") as lease:
            apply_move(mlflow_client, settings, record, lease)
    finish(lake, settings, mlflow_client, record)


def _golden_mask(evaluation: dict[str, Any]) -> np.ndarray | None:
    source = (evaluation.get("rows") or {}).get("source")
    return None if source is None else np.asarray(source) == "golden"


def _outcome_record(
    evaluation: dict[str, Any],
    settings: Settings,
    run_key: str,
    dag_id: str,
    window: Window,
    spending: dict[str, Any] | None,
) -> dict[str, Any]:
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
        serving=candidate.get("onnx"),
        served=candidate.get("served"),
        alpha=spending["alpha"] if spending else None,
        golden=_golden_mask(evaluation),
    )
    if spending:
        outcome.reasons.append(
            f"challenge {spending['k']} of v{spending['champion_version']}'s reign: tested at alpha "
            f"{spending['alpha']:.3g}, {spending['left']:.3g} of {spending['budget']:g} left"
            + ("" if spending["consumed"] else " (a backfill spends none of it)")
        )
    if window.backfill:
        # What the live gate would have decided then; the evidence is recorded, nothing moves.
        champion_then = f"v{champion['version']}" if champion else "no champion"
        outcome.reasons.append(
            f"replay as of {iso(window.as_of)}: judged against {champion_then}, the champion then "
            f"({(window.sources.get('champion') or {}).get('source', 'decision history')}); @champion untouched"
        )
        if outcome.decision == "promote" and settings.gate.require_approval:
            outcome.reasons.append("live ct would have asked an approver first (gate.require_approval)")
        outcome.decision = WOULD_PROMOTE if outcome.decision == "promote" else WOULD_REJECT
    elif outcome.decision == "promote" and settings.gate.require_approval:
        # Decided and recorded now; the alias moves only when an approver says so (run_approval).
        outcome.reasons.insert(0, "waiting for an approver: the evidence says promote (gate.require_approval)")
        outcome.decision = PENDING
    superseded = evaluation.get("superseded_champions") or []
    if superseded:
        outcome.reasons.append(
            f"re-evaluated against v{champion['version'] if champion else None} after @champion moved "
            f"(was {', '.join(f'v{v}' for v in superseded)})"
        )
    return {
        "kind": "gate",
        "run_key": run_key,
        "dag_id": dag_id,
        "decided_at": time.time(),
        "as_of": window.as_of,
        "decision": outcome.decision,
        "reasons": outcome.reasons,
        "candidate_version": candidate["version"],
        "champion_version": champion["version"] if champion else None,
        "superseded_champions": superseded,
        "eval_batches": evaluation["eval_batches"],
        "train_batches": evaluation["train_batches"],
        "eval_rows": len(y_true),
        "golden_set": evaluation.get("golden_set"),
        "backfill": window.backfill,
        "replay": window.replay,
        "cost": {"candidate": candidate.get("cost"), "champion": (champion or {}).get("cost")},
        "metrics": {"candidate": outcome.candidate, "champion": outcome.champion},
        "checks": outcome.checks,
        "power": outcome.power,
        "spending": spending,
        "thresholds": outcome.thresholds,
    }


def _result(lake: Lake, record: dict[str, Any], already_done: bool) -> dict[str, Any]:
    key = record_key(record)
    extra = {
        "gate_uri": lake.uri(key),
        "gate_md_uri": lake.uri(gate_key(record["dag_id"], record["run_key"], "gate.md")),
    }
    if record["kind"] != "gate":
        extra = {"decision_uri": lake.uri(key)}
    return {**record, **extra, "history_key": history_key(record), "already_done": already_done}


def run_gate(lake: Lake, settings: Settings, run_key: str, dag_id: str = layout.RETRAIN_DAG) -> dict[str, Any]:
    """Decide once per run key. A rerun finishes what a killed attempt left and never decides again.

    A backfill run (its window says so) decides what the live gate would have decided at its time:
    against the champion of that time, at the level of that point of its reign, and moves nothing.
    """
    key = gate_key(dag_id, run_key)
    mlflow_client = registry.client(settings)
    if lake.exists(key):
        record = lake.read_json(key)
        complete(lake, settings, mlflow_client, record)
        return _result(lake, record, already_done=True)

    evaluation = lake.read_json(eval_key(run_key))
    window = load_window(lake, run_key)
    if window.backfill:
        record = _outcome_record(
            evaluation, settings, run_key, dag_id, window, _replayed_spending(lake, settings, window)
        )
        lake.write_json(key, record)  # the commit point
        finish(lake, settings, mlflow_client, record)
        log.info("gate %s (replay as of %s): %s (%s)", run_key, iso(window.as_of), record["decision"],
                 "; ".join(record["reasons"]))  # fmt: skip
        return _result(lake, record, already_done=False)
    attempts = settings.gate.max_reevaluations + 1
    for attempt in range(1, attempts + 1):
        try:
            record = _decide_and_commit(lake, settings, mlflow_client, evaluation, run_key, dag_id, window)
            break
        except ChampionChanged as changed:
            if attempt == attempts:
                raise ChampionChanged(
                    f"{changed}; it kept moving through {attempts} evaluations (gate.max_reevaluations="
                    f"{settings.gate.max_reevaluations}), so nothing was decided: re-run the gate"
                ) from changed
            log.warning("%s; scoring v%s on the same rows and deciding again", changed, changed.current)
            evaluation = rescore_champion(lake, settings, run_key, changed.current)
    finish(lake, settings, mlflow_client, record)
    log.info("gate %s: %s (%s)", run_key, record["decision"], "; ".join(record["reasons"]))
    return _result(lake, record, already_done=False)


def _replayed_spending(lake: Lake, settings: Settings, window: Window) -> dict[str, Any] | None:
    """The alpha a live challenge had at the window's time: its place in that champion's reign, from the history."""
    champion = window.sources.get("champion") or {}
    if window.champion_version is None or window.as_of is None or "since" not in champion:
        return None
    records, _ = read_history(lake)
    earlier = challenges_at(records, champion, window.as_of)
    return reign.replayed(window.champion_version, champion.get("decision"), earlier, settings.gate.alpha)


def _decide_and_commit(
    lake: Lake,
    settings: Settings,
    mlflow_client: MlflowClient,
    evaluation: dict[str, Any],
    run_key: str,
    dag_id: str,
    window: Window,
) -> dict[str, Any]:
    """Decide and commit once. A live test against a champion claims its level under the lease."""
    key = gate_key(dag_id, run_key)
    champion = evaluation.get("champion")
    evaluated = champion["version"] if champion else None
    alpha = settings.gate.alpha
    record: dict[str, Any] = {}
    if evaluated is None:  # a first model: no test, no budget
        record = _outcome_record(evaluation, settings, run_key, dag_id, window, None)
        if record["decision"] not in MOVES:
            lake.write_json(key, record)  # the commit point
            return record
    with _lease(lake, settings, mlflow_client, owner=f"{dag_id}/{run_key}") as lease:
        current = registry.champion_version(mlflow_client, settings.model_name)
        if current != evaluated:
            raise ChampionChanged(
                f"@{registry.CHAMPION} moved from v{evaluated} to v{current} while {run_key} was evaluated",
                current=current,
            )
        if evaluated is not None:
            spending = reign.claim(lake, lease, str(evaluated), run_key, alpha)
            record = _outcome_record(evaluation, settings, run_key, dag_id, window, spending)
        if record["decision"] in MOVES:
            _commit_move(lake, settings, mlflow_client, record, lease)
        else:
            lease.check()
            lake.write_json(key, record)  # the commit point
    return record


def run_override(
    lake: Lake,
    settings: Settings,
    action: str,
    version: str,
    reason: str,
    run_key: str,
    actor: str = "cli",
    as_of: float | None = None,
) -> dict[str, Any]:
    """Roll back to, or force-promote, ``version``: with a reason, under the lease, with a history record.

    Idempotent per ``run_key``: a rerun finishes what a killed attempt left and returns the record.
    """
    from mlflow.exceptions import MlflowException

    if action not in OVERRIDES:
        raise CtError(f"unknown action {action!r}; choose one of {list(OVERRIDES)}")
    if len(reason.strip()) < MIN_REASON_CHARS:
        raise CtError(f"a {action} needs a reason of at least {MIN_REASON_CHARS} characters; got {reason!r}")
    if as_of is not None and as_of > time.time() + FUTURE_SLACK_S:
        raise UsageError(f"--as-of {iso(as_of)} is in the future: a {action} takes effect now or at a past moment")
    key = gate_key(layout.OPS_DAG, run_key, "decision.json")
    mlflow_client = registry.client(settings)
    if lake.exists(key):
        recorded = lake.read_json(key)
        complete(lake, settings, mlflow_client, recorded)
        return _result(lake, recorded, already_done=True)

    try:
        target = registry.get_version(mlflow_client, settings.model_name, version)
    except MlflowException as exc:
        if registry.not_found(exc):
            raise CtError(f"{settings.model_name} has no version {version}") from exc
        raise registry.unavailable_or(exc) from exc
    registry.load_model(settings, target)  # refuse to put an unloadable version in production
    with _lease(lake, settings, mlflow_client, owner=f"{layout.OPS_DAG}/{run_key}") as lease:
        current = registry.champion_version(mlflow_client, settings.model_name)
        if current == target.version:
            raise CtError(f"v{version} is already @{registry.CHAMPION}; nothing to {action}")
        if action == "rollback" and current is not None and int(target.version) > int(current):
            raise CtError(f"v{version} is newer than the champion v{current}; a rollback goes back, use promote")
        record: dict[str, Any] = {
            "kind": action,
            "run_key": run_key,
            "dag_id": layout.OPS_DAG,
            "decided_at": time.time(),
            "as_of": as_of if as_of is not None else time.time(),  # when it takes effect in ct's history
            "decision": action,
            "reasons": [reason.strip()],
            "actor": actor,
            "candidate_version": target.version,
            "champion_version": current,
        }
        _commit_move(lake, settings, mlflow_client, record, lease)
    finish(lake, settings, mlflow_client, record)
    log.info("%s: @%s moved from v%s to v%s (%s)", action, registry.CHAMPION, current, version, reason)
    return _result(lake, record, already_done=False)


def run_approval(lake: Lake, settings: Settings, run_key: str, answer: str, by: str | None, comment: str = "",
                 dag_id: str = layout.RETRAIN_DAG) -> dict[str, Any]:  # fmt: skip
    """Settle a pending gate decision with an approver's answer: ``approve``, ``reject`` or ``expired``.

    An approval moves ``@champion`` by the gate's own compare-and-set, under the lease: if the
    champion moved while the approval waited, nothing moves and the record says why. The record
    (``approval.json``, its commit point) is the gate's evidence with the answer, who gave it and
    why. Idempotent per run key, like the gate.
    """
    if answer not in ANSWERS:
        raise CtError(f"unknown answer {answer!r}; choose one of {list(ANSWERS)}")
    key = gate_key(dag_id, run_key, RECORD_NAMES["approval"])
    mlflow_client = registry.client(settings)
    if lake.exists(key):
        recorded = lake.read_json(key)
        complete(lake, settings, mlflow_client, recorded)
        return _result(lake, recorded, already_done=True)
    pending = lake.read_json(gate_key(dag_id, run_key))
    if pending.get("decision") != PENDING:
        raise CtError(f"the gate of {run_key} decided {pending.get('decision')!r}: there is no approval to settle")
    who = by or "nobody"
    said = f": {comment.strip()}" if comment.strip() else ""
    first = {
        "approve": f"approved by {who}{said}",
        "reject": f"not approved by {who}{said or ': no comment'}",
        EXPIRED: f"nobody answered within {settings.gate.approval_timeout_hours:g} h; the champion stays",
    }[answer]
    record: dict[str, Any] = {
        **pending,
        "kind": "approval",
        "decided_at": time.time(),
        # It takes effect as long after the gate's run time as the approver took to answer.
        "as_of": effective_at(pending) + (time.time() - float(pending["decided_at"])),
        "decision": "promote" if answer == "approve" else "reject" if answer == "reject" else EXPIRED,
        "reasons": [first, *pending["reasons"][1:]],  # the gate's own reasons, without "waiting for an approver"
        "actor": by,
        "approval": {"answer": answer, "by": by, "comment": comment.strip(), "gate_decided_at": pending["decided_at"]},
    }
    if answer != "approve":
        lake.write_json(key, record)  # the commit point
    else:
        with _lease(lake, settings, mlflow_client, owner=f"{dag_id}/{run_key} (approval)") as lease:
            current = registry.champion_version(mlflow_client, settings.model_name)
            if current != pending["champion_version"]:
                record["decision"] = "reject"
                record["reasons"][0] = (f"{first}, but @{registry.CHAMPION} moved from v{pending['champion_version']} "
                                        f"to v{current} while the approval waited; nothing moved")  # fmt: skip
                lease.check()
                lake.write_json(key, record)
            else:
                _commit_move(lake, settings, mlflow_client, record, lease)
    finish(lake, settings, mlflow_client, record)
    log.info("approval of %s: %s (%s)", run_key, record["decision"], record["reasons"][0])
    return _result(lake, record, already_done=False)
