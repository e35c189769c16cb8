"""The step contract, on the task's side: the arguments a run gives a step, and what its result means.

Both runners share it (:class:`StepMixin`): :class:`ct_airflow.operators.step.CtStepOperator` runs the
command as a subprocess, :class:`ct_airflow.operators.pods.CtPodOperator` as a pod. The step's side
(exit codes, step names, the XCom file) is :mod:`ml.contract`.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from ct_airflow.runkey import is_backfill, replay_run_key, run_key, run_time, triggering_batch_ids
from ml.contract import EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE, OVERRIDE_STEP, REPLAY_STEPS, RUN_KEY_STEPS, STEPS

STDERR_TAIL = 40
#: Log lines of a step's outcome (a decision and its reasons) are wrapped to this width: none is cut off on screen.
WRAP = 100
#: Short steps whose task log starts with their outcome (the decision and its reasons), then the step's
#: own lines: the first thing a person reads is what was decided. (Long steps stream their log live.)
OUTCOME_FIRST = frozenset({"decide", "gate", "approval", OVERRIDE_STEP})
#: The task that asks an approver, and whose answer ``python -m ml approval`` settles.
APPROVAL_TASK = "approval"

#: Task retries for ct's DAGs: an outage (exit 75) decides nothing, so retrying with backoff is safe.
OUTAGE_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}


class StepFailed(AirflowException):
    """The ``ml`` step exited non-zero; the message carries its error line."""


class StepUnavailable(StepFailed):
    """A service the step needs (MLflow, S3, the database) did not answer; nothing was decided. Retried."""


class StepRefused(AirflowFailException):
    """The step refused its arguments; retrying the same command cannot help."""


def failure_for(step: str, returncode: int, result: dict[str, Any], fallback: str) -> AirflowException:
    """The task outcome for a failed step, from its exit code and its JSON error line."""
    message = f"{step} failed: {result.get('error') or fallback}"
    if returncode == EXIT_UNAVAILABLE or result.get("retryable"):
        return StepUnavailable(f"{message} (retryable: exit {returncode})")
    if returncode == EXIT_USAGE or result.get("error_type") in ("UsageError", "ConfigError"):
        return StepRefused(message)
    return StepFailed(message)


def parse_result(stdout: str) -> dict[str, Any]:
    """The step contract: the last non-empty stdout line is one JSON object."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise StepFailed("the step printed nothing on stdout; expected one JSON object on its last line")
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise StepFailed(f"the step's last stdout line is not JSON: {lines[-1][:200]!r}") from exc
    if not isinstance(result, dict):
        raise StepFailed(f"the step's last stdout line is JSON but not an object: {lines[-1][:200]!r}")
    return result


def check_step(step: str) -> None:
    if step not in STEPS:
        raise ValueError(f"unknown ml step {step!r}; choose one of {sorted(STEPS)}")


def command_args(step: str, step_args: Sequence[Any], context: Mapping[str, Any]) -> list[str]:
    """The arguments after ``python -m ml`` for this run: the same for every runner."""
    if step == OVERRIDE_STEP:
        return override_args(context)
    args = [step, *(str(a) for a in step_args if str(a).strip())]
    if step == "approval":
        args += answer_args(context)
    replay = replay_of(context) if step in REPLAY_STEPS else None
    if step in RUN_KEY_STEPS:
        key = run_key(context)
        if replay:  # the key drift planned under: a ct.yaml changed mid-run cannot split the run's steps
            key = (pinned_run_key(context) if step != "drift" else None) or replay_run_key(context, replay.id)
        args += ["--run-key", key]
    if replay and replay.overrides:
        args += ["--settings", json.dumps(replay.overrides, sort_keys=True)]  # every step decides with them
    if step in ("drift", "monitor") and (as_of := run_time(context)):
        args += ["--as-of", as_of]  # the run sees the world as of its time: data, champion, policy memory
    if step == "drift" and replay:
        args += ["--replay", replay.id]  # a backfill: the world from the history; nothing live moves
    if step == "ingest":
        # The batch ids of the asset events (or Params) that started the run; none: every pending batch.
        params = context.get("params") or {}
        for batch_id in triggering_batch_ids(context) or list(params.get("batch_ids") or []):
            args += ["--batch-id", batch_id]
    return args


@dataclass(frozen=True)
class Replay:
    """A backfill run's replay: its id (the digest of what it decides with) and its settings overrides."""

    id: str
    overrides: dict[str, Any]


def replay_of(context: Mapping[str, Any]) -> Replay | None:
    """The replay a backfill run belongs to, with its overrides validated like ``ct.yaml``; None for a live run.

    Refused at once (no retries): overrides on a live run, and overrides that do not validate.
    """
    from ml.config import apply_overrides, decision_digest, load_settings
    from ml.errors import ConfigError

    params = context.get("params") or {}
    overrides = params.get("settings") or {}
    if not is_backfill(context):
        if overrides:
            raise StepRefused("`settings` overrides apply only to backfill runs (a replay of the past); "
                              "for live runs change ct.yaml or the CT_* environment")  # fmt: skip
        return None
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise StepRefused(f"ct's configuration on this worker is invalid: {exc}") from exc
    try:
        settings = apply_overrides(settings, overrides)
    except ConfigError as exc:
        raise StepRefused(f"this backfill's settings were refused: {exc}") from exc
    return Replay(decision_digest(settings, bool(params.get("force_retrain"))), dict(overrides))


def pinned_run_key(context: Mapping[str, Any]) -> str | None:
    """The run key this run's drift step planned its window under (its XCom), if it has run."""
    ti = context.get("ti")
    result = ti.xcom_pull(task_ids="drift", default=None) if ti is not None else None
    key = result.get("run_key") if isinstance(result, dict) else None
    return key if isinstance(key, str) else None


def answer_args(context: Mapping[str, Any]) -> list[str]:
    """The approver's answer, as the approval task returned it: ``--answer``, ``--by`` and ``--comment``."""
    answer = context["ti"].xcom_pull(task_ids=APPROVAL_TASK) or {}
    if answer.get("answer") not in ("approve", "reject", "expired"):
        raise AirflowException(f"the {APPROVAL_TASK} task returned no answer: {answer!r}")
    return [
        "--answer",
        answer["answer"],
        "--by",
        str(answer.get("by") or ""),
        "--comment",
        str(answer.get("comment") or ""),
    ]


def log_outcome(log: Any, result: Mapping[str, Any]) -> None:
    """A step's one-line outcome (``headline``: a decision and its first reason), wrapped, then its other reasons."""
    headline = result.get("headline") or result.get("summary")  # decide's summary already joins every reason
    if not headline:
        return
    for i, line in enumerate(textwrap.wrap(str(headline), WRAP, subsequent_indent="    ")):
        log.info("%s%s", "" if i else "Outcome: ", line)
    for reason in list(result.get("reasons") or [])[1:] if "headline" in result else []:
        for line in textwrap.wrap(str(reason), WRAP, initial_indent="  - ", subsequent_indent="    "):
            log.info("%s", line)


def override_args(context: Mapping[str, Any]) -> list[str]:
    """Rollback or forced promotion from the ``ct_ops`` Params: ``action``, ``version`` and ``reason``."""
    params = context.get("params") or {}
    action = str(params.get("action", ""))
    if action not in ("rollback", "promote"):
        raise AirflowException(f"params.action must be rollback or promote, got {action!r}")
    dag_run = context.get("dag_run")
    actor = str(getattr(dag_run, "triggering_user_name", None) or "airflow")
    return [
        action,
        "--to" if action == "rollback" else "--version",
        str(params.get("version", "")),
        "--reason",
        str(params.get("reason", "")),
        "--run-key",
        run_key(context),
        "--actor",
        actor,
        *(["--as-of", as_of] if (as_of := run_time(context)) else []),  # its place in ct's history
    ]


class StepMixin:
    """What a ct task is, whichever runner runs it: its command for this run, and what its result means.

    Shared by :class:`CtStepOperator` (a local subprocess) and :class:`ct_airflow.operators.pods.CtPodOperator`.
    """

    step: str
    step_args: list[str]
    step_result: dict[str, Any]  # read by the extra links when the task finishes
    log: Any  # the operator's task logger

    def command_args(self, context: Mapping[str, Any]) -> list[str]:
        """The arguments after ``python -m ml``."""
        return command_args(self.step, self.step_args, context)

    def step_failure(self, command: str, returncode: int, result: dict[str, Any], fallback: str) -> AirflowException:
        """The exception that fails the task for a step that exited ``returncode`` (non-zero)."""
        self.step_result = result
        return failure_for(f"`python -m ml {command}`", returncode, result, fallback)

    def step_outcome(self, command: str, returncode: int, result: dict[str, Any], fallback: str) -> dict[str, Any]:
        """The task's outcome for a finished step: its result (the XCom), or a skip, or a failure of its kind."""
        if returncode != 0 or "error" in result:
            raise self.step_failure(command, returncode or EXIT_FAILED, result, fallback)
        self.step_result = result
        log_outcome(self.log, result)
        if "skip" in result:
            raise AirflowSkipException(str(result["skip"]))
        return result
