"""The kubernetes runner's tasks and pods, built without a cluster and checked against the Kubernetes schema.

``ct_step`` gives every ct task of every DAG a ``CtPodOperator`` under the kubernetes runner and a
``CtStepOperator`` otherwise; the pod that a task builds for a run carries the same arguments the
local runner would use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
from kubernetes.client import ApiClient

from ct_airflow.operators.step import CtStepOperator, ct_step
from ml.contract import OVERRIDE_STEP, XCOM_ENV
from tests.plugins.conftest import RUN_ID, RUN_KEY, SIDECAR_IMAGE

K8S_VERSION = "1.37.0"
REPO = Path(__file__).resolve().parents[2]
#: The ct step tasks of each DAG; the rest are TaskFlow tasks that run in the worker under either runner.
STEP_TASKS = {"ct_ingest": {"ingest"}, "ct_retrain": {"drift", "decide", "train", "evaluate", "gate", "apply_approval"},
              "ct_ops": {"move_champion"}, "ct_monitor": {"monitor"}}  # fmt: skip


def build_pod(task, context) -> dict:  # type: ignore[no-untyped-def]
    """The pod ``task`` would create for the run in ``context``, as the JSON manifest sent to the API."""
    return ApiClient().sanitize_for_serialization(task.build_pod_request_obj(context))


def test_train_pod_requests_a_gpu_and_validates(kube_settings, cluster, task_context) -> None:
    task = ct_step(task_id="train", step="train")
    assert type(task).__name__ == "CtPodOperator"
    # What makes it a first-class pod task: deferred while it runs, found again after a worker restart,
    # logs streamed, the result read back through the sidecar, failed pods kept for inspection.
    assert task.deferrable is True
    assert task.reattach_on_restart is True and task.durable is True
    assert task.get_logs is True and task.logging_interval == kube_settings.kubernetes.logging_interval_seconds
    assert task.do_xcom_push is True
    assert task.on_finish_action.value == "delete_succeeded_pod"

    manifest = build_pod(task, task_context("train"))
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    base, sidecar = manifest["spec"]["containers"]
    assert base["image"] == "registry.example/ct-trainer:1.2.3"
    assert base["command"] == ["python", "-m", "ml"]
    assert base["args"] == ["train", "--run-key", RUN_KEY]
    assert base["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e.get("value") for e in base["env"]}
    shipped = json.loads(env["CT_CONFIG_JSON"])
    assert shipped["lake_uri"] == "s3://ct-lake/prod" and shipped["mlflow_tracking_uri"] == "http://mlflow.ct.svc:5000"
    assert base["envFrom"] == [{"secretRef": {"name": "ct-s3-credentials"}}]
    assert not any("SECRET" in name or "PASSWORD" in name for name in env), "secrets come from Secrets, not values"
    assert {"name": "xcom", "mountPath": "/airflow/xcom"} in base["volumeMounts"]
    assert env[XCOM_ENV] == "1"  # the step writes the sidecar's return.json only when its pod asks
    assert base["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}

    assert sidecar["name"] == "airflow-xcom-sidecar" and sidecar["image"] == SIDECAR_IMAGE
    assert sidecar["securityContext"] == base["securityContext"]

    spec = manifest["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["serviceAccountName"] == "ct-trainer"
    # The "restricted" Pod Security Standard, for the step container and the XCom sidecar alike.
    assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001,
                                       "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip
    assert spec["restartPolicy"] == "Never"
    metadata = manifest["metadata"]
    assert metadata["namespace"] == "ct" and metadata["name"].startswith("ct-train-")
    # KPO's labels for this task instance (what reattaching searches by), and ct's.
    expected_labels = {"dag_id": "ct_retrain", "task_id": "train", "try_number": "1", "kubernetes_pod_operator": "True",
                       "app.kubernetes.io/part-of": "ct", "ct.step": "train"}  # fmt: skip
    assert expected_labels.items() <= metadata["labels"].items() and metadata["labels"]["run_id"]


def test_multi_gpu_training_runs_torchrun_with_shared_memory(kube_settings, cluster, task_context, monkeypatch) -> None:
    monkeypatch.setenv("CT_KUBERNETES__GPU_COUNT", "4")
    train = build_pod(ct_step(task_id="train", step="train"), task_context("train"))
    kubernetes_validate.validate(train, K8S_VERSION, strict=True)
    base = train["spec"]["containers"][0]
    assert base["command"] == [
        "python",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=4",
        "-m",
        "ml",
    ]
    assert base["args"] == ["train", "--run-key", RUN_KEY]
    assert base["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in base["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in train["spec"]["volumes"]
    # Evaluation takes the GPUs too, but is one process: no torchrun, no extra volume.
    evaluate = build_pod(ct_step(task_id="evaluate", step="evaluate"), task_context("evaluate"))
    assert evaluate["spec"]["containers"][0]["command"] == ["python", "-m", "ml"]
    assert all(v["name"] != "dshm" for v in evaluate["spec"].get("volumes", []))


@pytest.mark.parametrize(
    ("step", "params", "gpu"),
    [("evaluate", {}, True), ("drift", {}, False), ("decide", {}, False), ("gate", {}, False),
     ("ingest", {"batch_ids": ["b1"]}, False),
     (OVERRIDE_STEP, {"action": "rollback", "version": "3", "reason": "v4 misreads sevens"}, False)],
    ids=str,
)  # fmt: skip
def test_only_configured_steps_get_a_gpu(kube_settings, cluster, task_context, step: str, params, gpu: bool) -> None:
    manifest = build_pod(ct_step(task_id=step, step=step), task_context(step, params=params))
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    limits = manifest["spec"]["containers"][0]["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) is gpu
    assert limits["memory"] == "16Gi"


def _replay_key(overrides: dict) -> str:
    from ml.config import apply_overrides, decision_digest, load_settings

    return f"backfill__2026-01-01T03-00-00-00-00.{decision_digest(apply_overrides(load_settings(), overrides))}"


MARGIN = {"gate": {"margin": 0.01}}


@pytest.mark.parametrize(
    ("step", "run_id", "params", "expected"),
    [
        ("gate", "backfill__2026-01-01T03:00:00+00:00", {"settings": MARGIN},
         lambda: ["gate", "--run-key", _replay_key(MARGIN), "--settings", json.dumps(MARGIN)]),
        ("drift", "backfill__2026-01-01T03:00:00+00:00", {},
         lambda: ["drift", "--run-key", _replay_key({}), "--as-of", "2026-01-01T03:00:00+00:00",
                  "--replay", _replay_key({}).rsplit(".", 1)[1]]),
        ("drift", RUN_ID, {}, lambda: ["drift", "--run-key", RUN_KEY, "--as-of", "2026-01-01T03:00:00+00:00"]),
        ("ingest", "manual__x", {"batch_ids": ["b1", "b2"]}, lambda: ["ingest", "--batch-id", "b1", "--batch-id", "b2"]),
        (OVERRIDE_STEP, "manual__x", {"action": "promote", "version": "5", "reason": "the gate was misconfigured"},
         lambda: ["promote", "--version", "5", "--reason", "the gate was misconfigured", "--run-key", "manual__x",
                  "--actor", "airflow", "--as-of", "2026-01-01T03:00:00+00:00"]),
    ],
    ids=["backfill-gate-overrides", "backfill-drift", "drift-as-of", "ingest-batches", "forced-promotion"],
)  # fmt: skip
def test_pod_arguments_are_the_local_runners(
    kube_settings, cluster, task_context, step, run_id, params, expected
) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    context = task_context(step, run_id=run_id, params=params, logical_date=datetime(2026, 1, 1, 3, tzinfo=UTC))
    manifest = build_pod(ct_step(task_id=step, step=step), context)
    assert manifest["spec"]["containers"][0]["args"] == expected()
    assert CtStepOperator(task_id=step, step=step).command_args(context) == expected()


def test_the_sidecar_image_falls_back_to_the_connection(kube_settings, cluster, task_context, monkeypatch) -> None:
    monkeypatch.setenv("CT_KUBERNETES__XCOM_SIDECAR_IMAGE", "")
    extra = {"xcom_sidecar_container_image": "mirror.example/alpine:3.24.2"}
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps({"conn_type": "kubernetes", "extra": extra}))
    manifest = build_pod(ct_step(task_id="drift", step="drift"), task_context("drift"))
    assert manifest["spec"]["containers"][1]["image"] == "mirror.example/alpine:3.24.2"


def test_the_default_sidecar_image_is_pinned() -> None:
    from ml.config import KubernetesConfig

    image = KubernetesConfig().xcom_sidecar_image
    assert image.startswith("alpine:") and image.split(":")[1][0].isdigit(), "a pinned tag, never latest"


def _step_tasks(bag) -> dict[str, dict[str, str]]:  # type: ignore[no-untyped-def]
    return {dag_id: {t.task_id: type(t).__name__ for t in dag.tasks if hasattr(t, "step")} for dag_id, dag in bag.dags.items()}  # fmt: skip


@pytest.mark.parametrize(("runner", "operator"), [("local", "CtStepOperator"), ("kubernetes", "CtPodOperator")])
def test_every_ct_task_of_every_dag_follows_the_runner(
    airflow_db, kube_settings, monkeypatch, runner, operator
) -> None:  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    monkeypatch.setenv("CT_RUNNER", runner)
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    assert {dag_id: set(tasks) for dag_id, tasks in _step_tasks(bag).items()} == STEP_TASKS
    assert {name for tasks in _step_tasks(bag).values() for name in tasks.values()} == {operator}
    for dag in bag.dags.values():
        serialized = json.dumps(DagSerialization.to_dict(dag), default=str)  # what the dag-processor stores
        assert "CT_CONFIG_JSON" not in serialized, "the configuration reaches pods at run time, not via the DAG"
        for task_id in STEP_TASKS[dag.dag_id]:
            assert {link.name for link in dag.get_task(task_id).operator_extra_links} == {
                "ct report",
                "MLflow model",
                "MLflow training run",
            }


#: What only the kubernetes runner may import: ct's pod module, the provider's operator and the Kubernetes clients.
HEAVY_FOR_LOCAL = ["ct_airflow.operators.pods", "airflow.providers.cncf.kubernetes.operators.pod", "kubernetes.client",
                   "kubernetes_asyncio"]  # fmt: skip


def test_the_local_runner_never_imports_the_provider(tmp_path) -> None:
    code = f"""
import sys, runpy
sys.path[:0] = [{str(REPO / "plugins")!r}, {str(REPO)!r}]
for path in {[str(p) for p in sorted((REPO / "dags").glob("*.py"))]!r}:
    runpy.run_path(path)
import ct_plugin, ct_airflow.operators.step
print([m for m in {HEAVY_FOR_LOCAL!r} if m in sys.modules])
"""
    env = {**os.environ, "CT_HOME": str(tmp_path), "CT_RUNNER": "local"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip().splitlines()[-1] == "[]"
