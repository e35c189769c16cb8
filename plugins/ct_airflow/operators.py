"""``CtStepOperator``: run one ``python -m ml <step>`` command, locally or as a Kubernetes pod.

The runner comes from configuration (``runner: local | kubernetes``), so a DAG never changes
between the embedded, compose and Kubernetes profiles:

* ``local``: a subprocess of the CLI. Its stderr streams into the task log line by line and the
  JSON object on its last stdout line becomes the task's XCom.
* ``kubernetes``: a ``KubernetesPodOperator`` running the same command in the trainer image, with
  a GPU limit for the steps listed in ``kubernetes.gpu_steps``. The pod writes the same JSON to
  ``/airflow/xcom/return.json``, which the XCom sidecar hands back.

A step that prints ``{"skip": reason}`` makes the task *skipped* with that reason, not failed.
A failure keeps its kind (the step's exit code, :mod:`ml.errors`): a service that did not answer
(75) fails the try so that Airflow retries it with backoff; refused arguments (2) fail the task
without retries, since the same command cannot succeed; anything else (1) fails the try.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from ct_airflow.links import MlflowModelLink, ReportLink
from ct_airflow.runkey import is_backfill, run_key, run_time, triggering_batch_ids

if TYPE_CHECKING:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk import Context

    from ml.config import Settings

RUN_KEY_STEPS = frozenset({"drift", "decide", "train", "evaluate", "gate", "rollback", "promote"})
STEPS = RUN_KEY_STEPS | {"ingest"}
STDERR_TAIL = 40
# Kept in step with ml.errors (not imported: plugins stay light at parse time).
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 75

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


class CtStepOperator(BaseOperator):
    """Run ``python -m ml <step>`` for this DAG run.

    :param step: one of ``ingest, drift, decide, train, evaluate, gate``.
    :param step_args: extra CLI arguments (templated; empty strings are dropped, which lets a
        template switch a flag off).
    :param runner: override the configured runner (``local`` or ``kubernetes``).
    """

    template_fields: Sequence[str] = ("step_args",)
    ui_color = "#e8f1fb"
    operator_extra_links = (ReportLink(), MlflowModelLink())

    def __init__(self, *, step: str, step_args: Sequence[str] = (), runner: str | None = None, **kwargs: Any) -> None:
        if step not in STEPS:
            raise ValueError(f"unknown ml step {step!r}; choose one of {sorted(STEPS)}")
        if runner not in (None, "local", "kubernetes"):
            raise ValueError(f"unknown runner {runner!r}; choose local or kubernetes")
        super().__init__(**kwargs)
        self.step = step
        self.step_args = list(step_args)
        self.runner = runner
        self._process: subprocess.Popen[str] | None = None
        self.step_result: dict[str, Any] = {}  # read by the extra links when the task finishes

    def command_args(self, context: Context) -> list[str]:
        """The arguments after ``python -m ml``."""
        args = [self.step, *(str(a) for a in self.step_args if str(a).strip())]
        if self.step in RUN_KEY_STEPS:
            args += ["--run-key", run_key(context)]
        if self.step == "decide" and (as_of := run_time(context)):
            args += ["--as-of", as_of]  # the policy's clock is the run's time, not the wall clock
        if self.step == "decide" and is_backfill(context):
            args.append("--backfill")  # a run about the past never writes the live policy memory
        if self.step == "gate" and is_backfill(context):
            # Backfills evaluate and record; they move @champion only when the run asks for it.
            args.append("--backfill")
            if (context.get("params") or {}).get("allow_backfill_promote"):
                args.append("--allow-backfill-promote")
        return args

    def execute(self, context: Context) -> dict[str, Any]:
        from ml.config import load_settings

        settings = load_settings()
        args = self.command_args(context)
        runner = self.runner or settings.runner
        self.log.info("Running `python -m ml %s` with the %s runner", " ".join(args), runner)
        if runner == "local":
            result = self.run_local(args)
        else:
            raw = self.build_pod_operator(args, settings).execute(context)
            result = raw if isinstance(raw, dict) else parse_result(json.dumps(raw))
        self.step_result = result
        if "error" in result:
            raise failure_for(self.step, 1, result, "")
        if "skip" in result:
            raise AirflowSkipException(str(result["skip"]))
        return result

    # -- local runner -------------------------------------------------------------------------
    def run_local(self, args: list[str]) -> dict[str, Any]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "ml", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        tail: list[str] = []

        def pump_stderr() -> None:
            assert self._process is not None and self._process.stderr is not None
            for line in self._process.stderr:
                line = line.rstrip()
                self.log.info("%s", line)
                tail.append(line)
                del tail[:-STDERR_TAIL]

        pump = threading.Thread(target=pump_stderr, daemon=True)
        pump.start()
        try:
            assert self._process.stdout is not None
            stdout = self._process.stdout.read()
            returncode = self._process.wait()
        finally:
            pump.join(timeout=10)
        result = parse_result(stdout) if stdout.strip() or returncode == 0 else {}
        if returncode != 0:
            raise failure_for(f"`python -m ml {args[0]}`", returncode, result, tail[-1] if tail else "no output")
        return result

    def on_kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self.log.info("Terminating the %s step (pid %s)", self.step, self._process.pid)
            self._process.terminate()

    # -- kubernetes runner --------------------------------------------------------------------
    def build_pod_operator(self, args: list[str], settings: Settings) -> KubernetesPodOperator:
        """The pod that runs this step in the trainer image; built at execute time, never at parse time."""
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
        from kubernetes.client import models as k8s

        kube = settings.kubernetes
        limits = {"memory": kube.memory_limit}
        if self.step in kube.gpu_steps:
            limits[kube.gpu_resource] = str(kube.gpu_count)
        return KubernetesPodOperator(
            task_id=f"{self.task_id}-pod",
            name=f"ct-{self.step}",
            namespace=kube.namespace,
            image=kube.image,
            image_pull_policy=kube.image_pull_policy,
            cmds=["python", "-m", "ml"],
            arguments=args,
            env_vars=[
                k8s.V1EnvVar(name="CT_CONFIG_JSON", value=settings.to_json()),
                k8s.V1EnvVar(name="TQDM_DISABLE", value="1"),
            ],
            env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=s)) for s in kube.env_from_secrets],
            container_resources=k8s.V1ResourceRequirements(
                requests={"cpu": kube.cpu_request, "memory": kube.memory_request}, limits=limits
            ),
            node_selector=dict(kube.node_selector) or None,
            tolerations=[k8s.V1Toleration(**t) for t in kube.tolerations] or None,
            service_account_name=kube.service_account,
            security_context=k8s.V1PodSecurityContext(run_as_non_root=True, run_as_user=10001, fs_group=10001),
            container_security_context=k8s.V1SecurityContext(
                allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"])
            ),
            labels={"app.kubernetes.io/part-of": "ct", "ct.step": self.step},
            kubernetes_conn_id=kube.kubernetes_conn_id,
            startup_timeout_seconds=kube.startup_timeout_seconds,
            do_xcom_push=True,
            get_logs=True,
            on_finish_action="delete_succeeded_pod",
        )


class CtIngestOperator(CtStepOperator):
    """The ingest step, fed the batch ids of the asset events (or Params) that started the run."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(step="ingest", **kwargs)

    def command_args(self, context: Context) -> list[str]:
        args = super().command_args(context)
        params = context.get("params") or {}
        batch_ids = triggering_batch_ids(context) or list(params.get("batch_ids") or [])
        for batch_id in batch_ids:
            args += ["--batch-id", batch_id]
        return args


class CtOverrideOperator(CtStepOperator):
    """Rollback or forced promotion from the ``ct_ops`` Params: ``action``, ``version`` and ``reason``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(step="rollback", **kwargs)

    def command_args(self, context: Context) -> list[str]:
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
        ]
