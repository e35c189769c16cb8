"""``CtPodOperator``: one ct step as a deferrable ``KubernetesPodOperator`` task (the ``kubernetes`` runner).

Only :func:`ct_airflow.operators.step.ct_step` imports this module, and only under ``runner: kubernetes``:
the provider takes about a second to import, which a local-runner parse must not pay. That is why
the provider imports below carry ``noqa: TID253`` (ruff bans them at module level in ``plugins/``).

The pod runs ``python -m ml <args>`` in the trainer image (``torchrun ... -m ml train`` with one
process per GPU when ``kubernetes.gpu_count > 1``, plus a memory-backed ``/dev/shm``), with the
arguments the local runner would use (:class:`~ct_airflow.operators.contract.StepMixin`). While it runs the task is deferred, so a six-hour
training holds no worker slot, and the triggerer copies the pod's new log lines into the task log
every ``kubernetes.logging_interval_seconds``. If the worker dies, the next try reattaches to the
running pod (``durable``: the pod's identity in the task state store, else a search by KPO's labels
for this task instance) instead of starting a second one. The step's JSON line comes back from
``/airflow/xcom/return.json`` through the XCom sidecar and means what it means with the local runner:
a skip, a failure of its kind (the base container's exit code where the pod still has it), or the
task's XCom. Succeeded pods are deleted; failed ones are kept for inspection.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook  # noqa: TID253
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator  # noqa: TID253
from airflow.providers.cncf.kubernetes.utils.pod_manager import PodManager, PodPhase  # noqa: TID253
from airflow.sdk.exceptions import AirflowException, AirflowSkipException
from kubernetes.client import models as k8s
from kubernetes.client.exceptions import ApiException
from websocket import WebSocketConnectionClosedException

from ct_airflow.operators.contract import StepFailed, StepMixin, check_step
from ct_airflow.ui.links import MlflowModelLink, MlflowRunLink, ReportLink
from ml.contract import EXIT_FAILED, XCOM_ENV

if TYPE_CHECKING:
    from airflow.sdk import Context

    from ml.config import Settings

#: Labels on every ct pod, next to KPO's own (dag_id, task_id, run_id, try_number, ...), which reattaching needs.
CT_POD_LABELS = {"app.kubernetes.io/part-of": "ct"}
ML_COMMAND = ["python", "-m", "ml"]


def step_command(step: str, gpu_count: int) -> list[str]:
    """``python -m ml``, or for training on several GPUs, torchrun starting one DDP process per GPU."""
    if step == "train" and gpu_count > 1:
        return ["python", "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpu_count}", "-m", "ml"]
    return ML_COMMAND


class CtKubernetesHook(KubernetesHook):
    """The provider's hook, with the XCom sidecar's image from ct's configuration.

    The provider reads that image from the Kubernetes connection (``xcom_sidecar_container_image``);
    ``kubernetes.xcom_sidecar_image`` takes precedence, so the one configuration object pins it.
    """

    def __init__(self, *, xcom_sidecar_image: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.xcom_sidecar_image = xcom_sidecar_image

    def get_xcom_sidecar_container_image(self) -> str | None:
        return self.xcom_sidecar_image or super().get_xcom_sidecar_container_image()


def container_exit(pod: k8s.V1Pod | None, container_name: str) -> tuple[int | None, str]:
    """The exit code of ``container_name`` and a line saying how it ended, if the pod shows it terminated."""
    statuses = (pod.status.container_statuses if pod is not None and pod.status else None) or []
    status = next((s for s in statuses if s.name == container_name), None)
    terminated = status.state.terminated if status is not None and status.state else None
    if terminated is None:
        return None, ""
    how = f"container {container_name} {terminated.reason or 'terminated'} (exit {terminated.exit_code})"
    return terminated.exit_code, f"{how}: {terminated.message}" if terminated.message else how


class ResultKeepingPodManager(PodManager):
    """The provider's pod manager, except that a result already read survives the XCom sidecar's stop.

    After reading ``return.json`` the provider stops the sidecar over a second exec websocket, which
    can close while the sidecar shuts down. It forgives an API error there but not a closed socket,
    which then replaces the result it had read: the task would fail, its pod be deleted and a
    finished step run again. A closed socket at that moment is a warning here, and the result stands.
    """

    def extract_xcom_kill(self, pod: k8s.V1Pod) -> None:
        try:
            super().extract_xcom_kill(pod)
        except WebSocketConnectionClosedException as exc:
            self.log.warning("The XCom sidecar of pod %s closed its connection while it was being stopped (%s); "
                             "the result was already read", pod.metadata.name, exc)  # fmt: skip


class CtPodOperator(StepMixin, KubernetesPodOperator):
    """Run ``python -m ml <step>`` for this DAG run in a pod of the trainer image, deferred while it runs.

    The pod's shape comes from the ``kubernetes`` section of ``settings`` (the configuration when the
    DAG file is parsed); the whole configuration reaches the pod as ``CT_CONFIG_JSON``.

    :param step: one of :data:`ml.contract.STEPS`.
    :param step_args: extra CLI arguments (templated; empty strings are dropped).
    :param settings: ct's configuration; read from the environment when not given.
    """

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "step_args")
    ui_color = "#e8f1fb"
    operator_extra_links = (ReportLink(), MlflowModelLink(), MlflowRunLink())

    def __init__(
        self, *, step: str, step_args: Sequence[str] = (), settings: Settings | None = None, **kwargs: Any
    ) -> None:
        check_step(step)
        if settings is None:
            from ml.config import load_settings

            settings = load_settings()
        kube = settings.kubernetes
        limits = {"memory": kube.memory_limit}
        gpus = kube.gpu_count if step in kube.gpu_steps else 0
        if gpus:
            limits[kube.gpu_resource] = str(gpus)
        # NCCL and the loader's pinned buffers use shared memory; a container's default /dev/shm is 64 MB.
        shm = k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=kube.shm_size))
        multi_gpu = step == "train" and gpus > 1
        locked_down = k8s.V1SecurityContext(
            allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"])
        )
        super().__init__(
            name=f"ct-{step}",
            namespace=kube.namespace,
            image=kube.image,
            image_pull_policy=kube.image_pull_policy,
            cmds=step_command(step, gpus),
            arguments=[],  # from the run's context, when the pod is built (build_pod_request_obj)
            # CT_CONFIG_JSON too, when the pod is built; XCOM_ENV asks the step for the sidecar's return.json.
            env_vars=[k8s.V1EnvVar(name="TQDM_DISABLE", value="1"), k8s.V1EnvVar(name=XCOM_ENV, value="1")],
            env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=s)) for s in kube.env_from_secrets],
            container_resources=k8s.V1ResourceRequirements(
                requests={"cpu": kube.cpu_request, "memory": kube.memory_request}, limits=limits
            ),
            node_selector=dict(kube.node_selector) or None,
            tolerations=[k8s.V1Toleration(**t) for t in kube.tolerations] or None,
            volumes=[shm] if multi_gpu else None,
            volume_mounts=[k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm")] if multi_gpu else None,
            service_account_name=kube.service_account,
            # The "restricted" Pod Security Standard: non-root, no escalation, no capabilities, RuntimeDefault seccomp.
            security_context=k8s.V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=10001,
                fs_group=10001,
                seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
            ),
            container_security_context=locked_down,
            xcom_sidecar_container_security_context=locked_down,
            labels={**CT_POD_LABELS, "ct.step": step},
            kubernetes_conn_id=kube.kubernetes_conn_id,
            startup_timeout_seconds=kube.startup_timeout_seconds,
            deferrable=True,
            # The provider's name for reattach_on_restart on Airflow 3.3 (which it deprecates): a new try
            # reattaches to this try's pod by its stored identity or by KPO's labels for this task instance.
            durable=True,
            get_logs=True,
            logging_interval=kube.logging_interval_seconds,
            do_xcom_push=True,
            on_finish_action="delete_succeeded_pod",
            # The spec holds CT_CONFIG_JSON; the step's own error line is what a failure needs to show.
            log_pod_spec_on_failure=False,
            **kwargs,
        )
        self.step = step
        self.step_args = list(step_args)
        self.xcom_sidecar_image = kube.xcom_sidecar_image
        self.config_json = settings.to_json()
        self.step_result = {}
        self._xcom_result: dict[str, Any] | None = None

    @cached_property
    def hook(self) -> CtKubernetesHook:
        return CtKubernetesHook(
            conn_id=self.kubernetes_conn_id,
            in_cluster=self.in_cluster,
            config_file=self.config_file,
            cluster_context=self.cluster_context,
            xcom_sidecar_image=self.xcom_sidecar_image,
        )

    def build_pod_request_obj(self, context: Context | None = None, *, dry_run: bool = False) -> k8s.V1Pod:
        if context is not None:
            # Run key, --as-of, --replay, --settings, batch ids: from the run, exactly as the local runner computes them.
            self.arguments = self.command_args(context)
        # Added here, not in __init__: env_vars is a rendered template field, and the serialized DAG needs no copy.
        env = [e for e in self.env_vars if getattr(e, "name", None) != "CT_CONFIG_JSON"]
        self.env_vars = [*env, k8s.V1EnvVar(name="CT_CONFIG_JSON", value=self.config_json)]
        return super().build_pod_request_obj(context, dry_run=dry_run)

    @cached_property
    def pod_manager(self) -> PodManager:
        return ResultKeepingPodManager(kube_client=self.client, callbacks=self.callbacks)

    def execute(self, context: Context) -> Any:
        self.log.info(
            "Running `python -m ml %s` in a pod of %s in namespace %s",
            " ".join(self.command_args(context)),
            self.image,
            self.namespace,
        )
        super().execute(context)  # creates (or reattaches to) the pod, then defers to the trigger
        # Reached only when the pod had already finished: trigger_reentry then ran without deferring.
        return self.step_result

    def extract_xcom(self, pod: k8s.V1Pod, *, ignore_kill_failure: bool = True) -> Any:
        # Kept for the failure path too, where the provider pushes it but raises a generic error.
        result = super().extract_xcom(pod, ignore_kill_failure=ignore_kill_failure)
        self._xcom_result = result if isinstance(result, dict) else None
        return result

    def trigger_reentry(self, context: Context, event: dict[str, Any]) -> Any:
        """After the trigger: the provider reads logs and the XCom and cleans up; then ct's semantics apply."""
        command = self.command_args(context)[0]
        self._xcom_result = None
        try:
            raw = super().trigger_reentry(context, event)
        except AirflowSkipException:
            raise
        except AirflowException as exc:
            if event.get("status") == "timeout":
                self._delete_unfinished_pod()
            exit_code, how = container_exit(self.pod, self.base_container_name)
            # How the container ended; else what the trigger said (a timeout, say); else the provider's error.
            fallback = how or str(event.get("message") or "") or (str(exc).splitlines() or [type(exc).__name__])[0]
            raise self.step_failure(command, exit_code or EXIT_FAILED, self._xcom_result or {}, fallback) from exc
        if not isinstance(raw, dict):
            # The pod was gone before its result was read (or broke the contract). Never guess the
            # outcome (a lost skip would let training run); the step is idempotent, so a retry is safe.
            raise StepFailed(
                f"`python -m ml {command}` finished in pod {event.get('name')} but its JSON result could not be "
                f"read (got {type(raw).__name__}); retrying reruns the step"
            )
        exit_code, _ = container_exit(self.pod, self.base_container_name)
        return self.step_outcome(command, exit_code or 0, raw, "")

    def _delete_unfinished_pod(self) -> None:
        # After a timeout the provider keeps a pod that has not succeeded; one still pending or running
        # would hold its GPU while the retry starts another, so it goes.
        pod = self.pod
        if pod is None or pod.status is None or pod.status.phase not in (PodPhase.PENDING, PodPhase.RUNNING):
            return
        self.log.info("Deleting pod %s: the step timed out while it was %s", pod.metadata.name, pod.status.phase)
        try:
            self.pod_manager.delete_pod(pod)
        except ApiException as exc:
            self.log.warning("Could not delete pod %s: %s", pod.metadata.name, exc.reason)
