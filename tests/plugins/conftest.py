"""Fixtures for the kubernetes runner's tests: its configuration, a task context, and a stand-in cluster.

No cluster exists here. ``cluster`` replaces the Kubernetes API at its edge: the ``CoreV1Api``
client the provider's hook hands out (create, list, read, patch, delete pods; read logs) and the
exec stream that reads ``/airflow/xcom/return.json`` from the sidecar. Everything above that edge
is the provider's and ct's real code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest

RUN_ID = "scheduled__2026-01-01T03:00:00+00:00"
RUN_KEY = "scheduled__2026-01-01T03-00-00-00-00"
SIDECAR_IMAGE = "registry.example/mirror/alpine:3.24.2"


@pytest.fixture
def kube_settings(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """The kubernetes runner's configuration, as an operator would set it for a GPU cluster."""
    from ml.config import load_settings

    monkeypatch.setenv("CT_HOME", str(tmp_path / "ct"))
    monkeypatch.setenv("CT_RUNNER", "kubernetes")
    monkeypatch.setenv("CT_LAKE_URI", "s3://ct-lake/prod")
    monkeypatch.setenv("CT_MLFLOW_TRACKING_URI", "http://mlflow.ct.svc:5000")
    monkeypatch.setenv("CT_KUBERNETES__IMAGE", "registry.example/ct-trainer:1.2.3")
    monkeypatch.setenv("CT_KUBERNETES__NODE_SELECTOR", "{nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}")
    monkeypatch.setenv("CT_KUBERNETES__TOLERATIONS", "[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]")
    monkeypatch.setenv("CT_KUBERNETES__ENV_FROM_SECRETS", "[ct-s3-credentials]")
    monkeypatch.setenv("CT_KUBERNETES__XCOM_SIDECAR_IMAGE", SIDECAR_IMAGE)
    # The Kubernetes connection, from the environment (no metadata database needed); no kubeconfig.
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", json.dumps({"conn_type": "kubernetes"}))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return load_settings()


class FakeTaskStateStore:
    """The task state store in which a durable KPO keeps its pod's identity across tries."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self.values.get(key)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value


@pytest.fixture
def task_context() -> Callable[..., dict[str, Any]]:
    """``task_context(task_id, run_id=..., params=..., **extra)``: what a worker hands ``execute``."""

    def make(task_id: str, run_id: str = RUN_ID, params: dict | None = None, **extra: Any) -> dict[str, Any]:
        dag_id = extra.pop("dag_id", "ct_retrain")
        ti = mock.MagicMock(
            dag_id=dag_id, task_id=task_id, run_id=run_id, map_index=-1, try_number=1,
            start_date=datetime.now(tz=UTC),
        )  # fmt: skip
        dag_run = SimpleNamespace(run_id=run_id, run_type=run_id.split("__")[0], run_after=None)
        return {"ti": ti, "run_id": run_id, "dag": SimpleNamespace(dag_id=dag_id), "dag_run": dag_run,
                "params": params or {}, "task_state_store": FakeTaskStateStore(), **extra}  # fmt: skip

    return make


class FakeCluster:
    """The Kubernetes API as the provider sees it: one namespace, pods kept by name, canned states."""

    def __init__(self) -> None:
        from kubernetes.client import ApiClient, CoreV1Api, V1PodList

        self.pods: dict[str, Any] = {}
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.xcom: str = "__airflow_xcom_result_empty__"
        self.api = mock.create_autospec(CoreV1Api, instance=True)
        self.api.api_client = ApiClient()
        self.api.create_namespaced_pod.side_effect = self._create
        self.api.read_namespaced_pod.side_effect = self._read
        self.api.list_namespaced_pod.return_value = V1PodList(items=[])
        self.api.delete_namespaced_pod.side_effect = lambda name, namespace, **kw: self.deleted.append(name)
        self.api.read_namespaced_pod_log.return_value = [b"epoch 1: loss 0.52\n", b"epoch 2: loss 0.31\n"]

    def _create(self, body: dict[str, Any], namespace: str, **kwargs: Any) -> Any:
        self.created.append(body)
        pod = self.pod(body["metadata"]["name"], namespace, phase="Pending", labels=body["metadata"]["labels"])
        self.pods[pod.metadata.name] = pod
        return pod

    def _read(self, name: str, namespace: str, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        if name not in self.pods:
            raise ApiException(status=404, reason="Not Found")
        return self.pods[name]

    @staticmethod
    def pod(name: str, namespace: str = "ct", *, phase: str = "Running", exit_code: int | None = None,
            reason: str | None = None, labels: dict | None = None) -> Any:  # fmt: skip
        """A pod as the API returns it: the base container running, or terminated with ``exit_code``; the sidecar up."""
        from kubernetes.client import models as k8s

        if exit_code is None:
            base_state = k8s.V1ContainerState(running=k8s.V1ContainerStateRunning())
        else:
            base_state = k8s.V1ContainerState(
                terminated=k8s.V1ContainerStateTerminated(exit_code=exit_code, reason=reason)
            )

        def status(container: str, state: Any) -> Any:
            return k8s.V1ContainerStatus(name=container, state=state, image="img", image_id="img", ready=True,
                                         restart_count=0)  # fmt: skip

        return k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name=name, namespace=namespace, labels={"try_number": "1", **(labels or {})}),
            spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base"), k8s.V1Container(name="airflow-xcom-sidecar")]),
            status=k8s.V1PodStatus(
                phase=phase,
                container_statuses=[
                    status("base", base_state),
                    status("airflow-xcom-sidecar", k8s.V1ContainerState(running=k8s.V1ContainerStateRunning())),
                ],
            ),
        )

    def finish(self, name: str, *, exit_code: int, result: dict | None = None, reason: str | None = None) -> None:
        """The step in pod ``name`` exits ``exit_code`` after writing ``result`` to /airflow/xcom/return.json."""
        self.pods[name] = self.pod(name, exit_code=exit_code, reason=reason, labels=self.pods[name].metadata.labels)
        self.xcom = json.dumps(result) if result is not None else "__airflow_xcom_result_empty__"


@pytest.fixture
def cluster(monkeypatch) -> FakeCluster:  # type: ignore[no-untyped-def]
    """A stand-in for the cluster, at the Kubernetes API's edge (see the module docstring)."""
    from airflow.providers.cncf.kubernetes.hooks.kubernetes import KubernetesHook
    from airflow.providers.cncf.kubernetes.utils.pod_manager import PodManager

    fake = FakeCluster()
    monkeypatch.setattr(KubernetesHook, "core_v1_client", property(lambda hook: fake.api))
    monkeypatch.setattr(KubernetesHook, "is_in_cluster", property(lambda hook: False))
    # The exec into the sidecar (a websocket stream): reading return.json, then stopping the sidecar.
    monkeypatch.setattr(PodManager, "extract_xcom_json", lambda manager, pod: fake.xcom)
    monkeypatch.setattr(PodManager, "extract_xcom_kill", lambda manager, pod: None)
    return fake
