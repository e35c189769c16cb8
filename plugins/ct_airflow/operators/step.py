"""``ct_step()``: the Airflow task that runs one ``python -m ml <step>`` command, locally or as a pod.

DAG files call :func:`ct_step`. It reads ``runner`` from the configuration when the DAG file is
parsed (the dag-processor and every worker parse it with the same configuration), so a DAG never
changes between the embedded, compose and Kubernetes profiles:

* ``local``: :class:`CtStepOperator`, a subprocess of the CLI. Its stderr streams into the task log
  line by line and the JSON object on its last stdout line becomes the task's XCom.
* ``kubernetes``: :class:`ct_airflow.operators.pods.CtPodOperator`, a deferrable ``KubernetesPodOperator``
  task running the same command in the trainer image, with a GPU for the steps listed in
  ``kubernetes.gpu_steps``. Its operator asks the step to also write its JSON line to
  ``/airflow/xcom/return.json``, which the XCom sidecar hands back. That module (and the provider, about a second to import) is
  imported only under this runner.

Whichever runner runs it, a step means the same (:class:`ct_airflow.operators.contract.StepMixin`): its arguments come from the
run's context (run key or replay key, ``--as-of``, ``--replay``, ``--settings``, batch ids, ``ct_ops`` Params), and its result
maps to the same task outcome. A step that prints ``{"skip": reason}`` makes the task *skipped*
with that reason, not failed. A failure keeps its kind (the step's exit code, :mod:`ml.errors`): a
service that did not answer (75) fails the try so that Airflow retries it with backoff; refused
arguments (2) fail the task without retries, since the same command cannot succeed; anything else
(1) fails the try.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from ct_airflow.operators.contract import OUTCOME_FIRST, STDERR_TAIL, StepMixin, check_step, parse_result
from ct_airflow.ui.links import MlflowModelLink, MlflowRunLink, ReportLink

if TYPE_CHECKING:
    from airflow.sdk import Context


class CtStepOperator(StepMixin, BaseOperator):
    """Run ``python -m ml <step>`` for this DAG run as a local subprocess (the ``local`` runner).

    DAG files use :func:`ct_step`, which returns this operator or the pod operator by the runner.

    :param step: one of :data:`ml.contract.STEPS`.
    :param step_args: extra CLI arguments (templated; empty strings are dropped, which lets a
        template switch a flag off).
    """

    template_fields: Sequence[str] = ("step_args",)
    ui_color = "#e8f1fb"
    operator_extra_links = (ReportLink(), MlflowModelLink(), MlflowRunLink())

    def __init__(self, *, step: str, step_args: Sequence[str] = (), **kwargs: Any) -> None:
        check_step(step)
        super().__init__(**kwargs)
        self.step = step
        self.step_args = list(step_args)
        self._process: subprocess.Popen[str] | None = None
        self._held: list[str] | None = None  # a short step's log lines, written after its outcome
        self.step_result = {}

    def execute(self, context: Context) -> dict[str, Any]:
        args = self.command_args(context)
        command = f"`python -m ml {' '.join(args)}` with the local runner"
        self._held = [f"Ran {command}"] if self.step in OUTCOME_FIRST else None
        if self._held is None:
            self.log.info("Running %s", command)
        returncode, result, last_line = self.run_local(args)
        try:
            return self.step_outcome(args[0], returncode, result, last_line or "no output")
        finally:
            if self._held:  # the command and its own lines, after its outcome
                for line in self._held:
                    self.log.info("%s", line)

    def run_local(self, args: list[str]) -> tuple[int, dict[str, Any], str]:
        """Run the CLI; return its exit code, its JSON result and its last stderr line."""
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
                if self._held is None:
                    self.log.info("%s", line)
                else:
                    self._held.append(line)
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
        # A step that crashed before printing its line still fails with its exit code and last stderr line.
        result = parse_result(stdout) if stdout.strip() or returncode == 0 else {}
        return returncode, result, tail[-1] if tail else ""

    def on_kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self.log.info("Terminating the %s step (pid %s)", self.step, self._process.pid)
            self._process.terminate()


def ct_step(*, task_id: str, step: str, step_args: Sequence[str] = (), **kwargs: Any) -> BaseOperator:
    """The task that runs ``python -m ml <step>`` with the configured runner: what DAG files call.

    ``runner: local`` gives a :class:`CtStepOperator`; ``runner: kubernetes`` a deferrable
    :class:`ct_airflow.operators.pods.CtPodOperator`, whose pod is shaped by the ``kubernetes`` section.
    Other keyword arguments (``retries``, ``execution_timeout``, ...) go to the operator.
    """
    from ml.config import load_settings

    settings = load_settings()
    if settings.runner == "kubernetes":
        # Imported here only: the provider takes about a second to import, which no local-runner parse should pay.
        from ct_airflow.operators.pods import CtPodOperator

        return CtPodOperator(task_id=task_id, step=step, step_args=step_args, settings=settings, **kwargs)
    return CtStepOperator(task_id=task_id, step=step, step_args=step_args, **kwargs)
