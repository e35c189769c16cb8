"""The kubernetes runner's pods, rendered without a cluster and checked against the Kubernetes schema."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest
from kubernetes.client import ApiClient

from ct_airflow.operators import CtStepOperator
from ml.config import load_settings

K8S_VERSION = "1.37.0"


@pytest.fixture
def kube_settings(ct_home, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CT_RUNNER", "kubernetes")
    monkeypatch.setenv("CT_LAKE_URI", "s3://ct-lake/prod")
    monkeypatch.setenv("CT_MLFLOW_TRACKING_URI", "http://mlflow.ct.svc:5000")
    monkeypatch.setenv("CT_KUBERNETES__IMAGE", "registry.example/ct-trainer:1.2.3")
    monkeypatch.setenv("CT_KUBERNETES__NODE_SELECTOR", "{nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}")
    monkeypatch.setenv("CT_KUBERNETES__TOLERATIONS", "[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]")
    monkeypatch.setenv("CT_KUBERNETES__ENV_FROM_SECRETS", "[ct-s3-credentials]")
    return load_settings()


def render(step: str, settings) -> dict:  # type: ignore[no-untyped-def]
    operator = CtStepOperator(task_id=step, step=step)
    args = [step, "--run-key", "scheduled__2026-01-01T03-00-00-00-00"]
    pod = operator.build_pod_operator(args, settings).build_pod_request_obj(dry_run=True)
    return ApiClient().sanitize_for_serialization(pod)


def test_train_pod_requests_a_gpu_and_validates(kube_settings) -> None:
    manifest = render("train", kube_settings)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    container = manifest["spec"]["containers"][0]
    assert container["image"] == "registry.example/ct-trainer:1.2.3"
    assert container["command"] == ["python", "-m", "ml"]
    assert container["args"] == ["train", "--run-key", "scheduled__2026-01-01T03-00-00-00-00"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e.get("value") for e in container["env"]}
    shipped = json.loads(env["CT_CONFIG_JSON"])
    assert shipped["lake_uri"] == "s3://ct-lake/prod" and shipped["mlflow_tracking_uri"] == "http://mlflow.ct.svc:5000"
    assert container["envFrom"] == [{"secretRef": {"name": "ct-s3-credentials"}}]
    assert not any("SECRET" in name or "PASSWORD" in name for name in env), "secrets come from Secrets, not values"
    spec = manifest["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["serviceAccountName"] == "ct-trainer"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert manifest["metadata"]["namespace"] == "ct"


@pytest.mark.parametrize(("step", "gpu"), [("evaluate", True), ("drift", False), ("gate", False)], ids=str)
def test_only_configured_steps_get_a_gpu(kube_settings, step: str, gpu: bool) -> None:
    manifest = render(step, kube_settings)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    limits = manifest["spec"]["containers"][0]["resources"]["limits"]
    assert ("nvidia.com/gpu" in limits) is gpu
