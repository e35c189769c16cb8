"""ct's Helm chart, rendered by the real helm binary and checked without a cluster.

Each rendered object is validated against the Kubernetes 1.30 schema; the tests then assert on
what was built: the RBAC rules, the containers' security settings, the ct.yaml that Airflow
loads (validated by ct's own ``Settings``), the network policies, and that no secret is rendered.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from importlib.metadata import distribution
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from ml.config import Settings, load_settings
from tests.helm.tools import CHART, KUBE_VERSION, NAMESPACE, RELEASE, REPO

Render = Callable[..., list[dict[str, Any]]]

AIRFLOW_VALUES = REPO / "helm" / "airflow-values.yaml"
STEP_NAMESPACE = "ct"

GPU_VALUES: dict[str, Any] = {
    "gpu": {
        "count": 4,
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}

#: What KubernetesPodOperator (cncf.kubernetes 10.25) calls in the step namespace; see step-rbac.yaml.
EXPECTED_RULES = {
    ("", "pods"): {"create", "get", "list", "patch", "delete"},
    ("", "pods/log"): {"get"},
    ("", "pods/exec"): {"create", "get"},
    ("", "events"): {"list", "watch"},
}

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [obj for obj in by_kind(objects, kind) if name is None or obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {[m['metadata']['name'] for m in matches]}"
    return matches[0]


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in POD_TEMPLATE_KINDS:
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]
        elif obj["kind"] == "Pod":
            yield f"Pod/{obj['metadata']['name']}", obj["spec"]


def cli_options(args: list[str]) -> dict[str, str | bool]:
    """``--name value`` pairs and bare ``--flag``s of a command line."""
    options: dict[str, str | bool] = {}
    for index, arg in enumerate(args):
        if arg.startswith("--"):
            following = args[index + 1] if index + 1 < len(args) else "--"
            options[arg] = True if following.startswith("--") else following
    return options


def ct_yaml(objects: list[dict[str, Any]]) -> dict[str, Any]:
    configmap = one(objects, "ConfigMap", f"{RELEASE}-config")
    data = yaml.safe_load(configmap["data"]["ct.yaml"])
    assert isinstance(data, dict)
    return data


@pytest.fixture
def default_objects(render: Render) -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def airflow_values() -> dict[str, Any]:
    values = yaml.safe_load(AIRFLOW_VALUES.read_text())
    assert isinstance(values, dict)
    return values


# -- lint and render ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "kube_version"),
    [(None, None), (None, KUBE_VERSION), (GPU_VALUES, KUBE_VERSION)],
    ids=["plain", "defaults-1.30", "gpu-1.30"],
)
def test_helm_lint_strict_passes(run_helm, values: dict[str, Any] | None, kube_version: str | None) -> None:  # type: ignore[no-untyped-def]
    result = run_helm("lint", "--strict", str(CHART), values=values, kube_version=kube_version)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("values", [None, GPU_VALUES], ids=["defaults", "gpu"])
def test_every_rendered_object_is_valid_kubernetes(render: Render, values: dict[str, Any] | None) -> None:
    objects = render(values)
    kinds = {obj["kind"] for obj in objects}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Deployment", "Service"} <= kinds
    assert "NetworkPolicy" in kinds
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_objects_land_in_the_right_namespaces(default_objects: list[dict[str, Any]]) -> None:
    placed = {(obj["kind"], obj["metadata"]["name"]): obj["metadata"].get("namespace") for obj in default_objects}
    assert placed[("Namespace", STEP_NAMESPACE)] is None
    # The step pods' identity, RBAC and policy live where the pods run; the rest beside Airflow.
    for key in [("ServiceAccount", "ct-trainer"), ("Role", "ct-pod-launcher"), ("RoleBinding", "ct-pod-launcher"),
                ("NetworkPolicy", "ct-steps")]:  # fmt: skip
        assert placed[key] == STEP_NAMESPACE, key
    for key in [("ConfigMap", "ct-config"), ("Deployment", "ct-mlflow"), ("Service", "ct-mlflow"),
                ("NetworkPolicy", "ct-mlflow"), ("ServiceAccount", "ct-mlflow")]:  # fmt: skip
        assert placed[key] == NAMESPACE, key


def test_existing_step_namespace_is_not_created(render: Render) -> None:
    objects = render({"stepNamespace": {"name": "ml-steps", "create": False}})
    assert not by_kind(objects, "Namespace")
    assert one(objects, "Role")["metadata"]["namespace"] == "ml-steps"
    assert ct_yaml(objects)["kubernetes"]["namespace"] == "ml-steps"


# -- RBAC -----------------------------------------------------------------------------------------
def test_pod_launcher_role_grants_exactly_what_the_pod_operator_calls(default_objects: list[dict[str, Any]]) -> None:
    role = one(default_objects, "Role")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, f"no resourceNames or nonResourceURLs: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == EXPECTED_RULES


PROVIDER_FILES = ("operators/pod.py", "utils/pod_manager.py", "triggers/pod.py", "hooks/kubernetes.py")
VERBS_OF_CALL = {"create": {"create"}, "read": {"get"}, "list": {"list"}, "patch": {"patch"}, "delete": {"delete"},
                 "replace": {"update"}, "connect_get": {"get", "create"}, "connect_post": {"create"}}  # fmt: skip
RESOURCE_OF_CALL = {"pod": "pods", "pod_log": "pods/log", "pod_exec": "pods/exec", "pod_attach": "pods/attach",
                    "pod_status": "pods/status", "event": "events"}  # fmt: skip


def provider_pod_permissions() -> set[tuple[str, str]]:
    """(resource, verb) for every pod or event API call the installed cncf.kubernetes provider makes."""
    root = Path(
        str(distribution("apache-airflow-providers-cncf-kubernetes").locate_file("airflow/providers/cncf/kubernetes"))
    )
    call = re.compile(r"\b(create|read|list|patch|delete|replace|connect_get|connect_post)_namespaced_(pod\w*|event)\b")
    watch = re.compile(r"\.stream\(\s*[\w.]*?\blist_namespaced_(pod|event)\b")
    needed: set[tuple[str, str]] = set()
    for relative in PROVIDER_FILES:
        source = (root / relative).read_text()
        for prefix, kind in call.findall(source):
            assert kind in RESOURCE_OF_CALL, f"{relative} calls {prefix}_namespaced_{kind}: grant it or explain why not"
            needed |= {(RESOURCE_OF_CALL[kind], verb) for verb in VERBS_OF_CALL[prefix]}
        needed |= {(RESOURCE_OF_CALL[kind], "watch") for kind in watch.findall(source)}
    return needed


def test_role_matches_the_calls_the_installed_provider_makes(default_objects: list[dict[str, Any]]) -> None:
    """Read the provider's source: an upgrade that makes a new call (or stops one) fails here."""
    granted = {(resource, verb) for (_, resource), verbs in EXPECTED_RULES.items() for verb in verbs}
    assert provider_pod_permissions() == granted
    role = one(default_objects, "Role")
    rendered = {(resource, verb) for rule in role["rules"] for resource in rule["resources"] for verb in rule["verbs"]}
    assert rendered == granted


def test_rbac_has_no_wildcards_and_no_cluster_scope(default_objects: list[dict[str, Any]]) -> None:
    assert not by_kind(default_objects, "ClusterRole") and not by_kind(default_objects, "ClusterRoleBinding")
    for role in by_kind(default_objects, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert not any("*" in item for item in rule[field]), f"wildcard in {field}: {rule}"


def test_role_is_bound_to_airflows_worker_and_triggerer(default_objects: list[dict[str, Any]]) -> None:
    binding = one(default_objects, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": one(default_objects, "Role")["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "ct-airflow-worker", "namespace": NAMESPACE},
        {"kind": "ServiceAccount", "name": "ct-airflow-triggerer", "namespace": NAMESPACE},
    ]


def test_binding_follows_airflows_namespace_and_can_leave_out_the_triggerer(render: Render) -> None:
    objects = render({"airflow": {"namespace": "orchestration", "workerServiceAccount": "af-worker",
                                  "triggererServiceAccount": ""}})  # fmt: skip
    assert one(objects, "RoleBinding")["subjects"] == [
        {"kind": "ServiceAccount", "name": "af-worker", "namespace": "orchestration"}
    ]
    # Airflow's pods mount the ConfigMap, so it goes to Airflow's namespace.
    assert one(objects, "ConfigMap")["metadata"]["namespace"] == "orchestration"


def test_step_service_account_has_no_api_token(default_objects: list[dict[str, Any]]) -> None:
    for account in by_kind(default_objects, "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False, account["metadata"]["name"]


# -- container security -----------------------------------------------------------------------------
def test_every_container_runs_locked_down(default_objects: list[dict[str, Any]]) -> None:
    specs = list(pod_specs(default_objects))
    assert specs, "the chart renders at least MLflow's Deployment"
    for where, spec in specs:
        pod_context = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, where
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = {**pod_context, **container.get("securityContext", {})}
            label = f"{where}/{container['name']}"
            assert context.get("runAsNonRoot") is True, label
            assert isinstance(context.get("runAsUser"), int) and context["runAsUser"] > 0, label
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, label
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}, label
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, label
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, label
            assert container["resources"].get("requests") and container["resources"].get("limits"), label


def test_mlflow_writes_only_to_an_emptydir_tmp(default_objects: list[dict[str, Any]]) -> None:
    spec = one(default_objects, "Deployment", "ct-mlflow")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    (volume,) = spec["volumes"]
    assert volume["name"] == "tmp" and "emptyDir" in volume
    env = {e["name"]: e for e in container["env"]}
    assert env["HOME"]["value"] == "/tmp"


# -- MLflow -------------------------------------------------------------------------------------------
def test_mlflow_server_command_probes_and_image(default_objects: list[dict[str, Any]]) -> None:
    (container,) = one(default_objects, "Deployment", "ct-mlflow")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ct-mlflow:0.1.0"
    argv = [*container["command"], *container["args"]]
    assert argv[:2] == ["mlflow", "server"]
    options = cli_options(argv[2:])
    assert options["--serve-artifacts"] is True, "artifacts go through the server, which holds the S3 credentials"
    assert options["--backend-store-uri"] == "$(MLFLOW_BACKEND_STORE_URI)"
    assert str(options["--artifacts-destination"]).startswith("s3://")
    assert options["--host"] == "0.0.0.0"
    allowed = str(options["--allowed-hosts"]).split(",")
    assert f"ct-mlflow.{NAMESPACE}.svc.cluster.local:*" in allowed and "*" not in allowed
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    service = one(default_objects, "Service", "ct-mlflow")
    assert service["spec"]["ports"][0]["port"] == int(str(options["--port"]))
    assert service["spec"]["selector"].items() <= (
        one(default_objects, "Deployment", "ct-mlflow")["spec"]["template"]["metadata"]["labels"].items()
    )


# -- secrets --------------------------------------------------------------------------------------------
def test_no_secret_is_rendered_only_referenced(render: Render) -> None:
    objects = render(
        {"secrets": {"mlflowDatabase": {"name": "prod-mlflow-db", "key": "dsn"},
                     "s3": {"name": "prod-s3", "accessKeyIdKey": "id", "secretAccessKeyKey": "secret"}}}
    )  # fmt: skip
    assert not by_kind(objects, "Secret")
    (container,) = one(objects, "Deployment", "ct-mlflow")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    for name, secret, key in [("MLFLOW_BACKEND_STORE_URI", "prod-mlflow-db", "dsn"),
                              ("AWS_ACCESS_KEY_ID", "prod-s3", "id"),
                              ("AWS_SECRET_ACCESS_KEY", "prod-s3", "secret")]:  # fmt: skip
        assert "value" not in env[name], name
        assert env[name]["valueFrom"] == {"secretKeyRef": {"name": secret, "key": key}}, name
    # Nothing else that looks like a credential is set by value, anywhere.
    for _, spec in pod_specs(objects):
        for container in spec["containers"]:
            for var in container.get("env", []):
                if var["name"] in (
                    "CT_LAKE_URI",
                    "CT_MLFLOW_TRACKING_URI",
                ):  # the prediction service's, as ct.yaml has them
                    assert "@" not in var["value"], var  # no user:password@ in a URI
                elif "value" in var:
                    assert not any(word in var["name"] for word in ("SECRET", "PASSWORD", "TOKEN", "KEY", "URI")), var
    text = json.dumps(objects).lower()
    assert "postgresql" not in text and "password" not in text


def test_ct_config_holds_no_credentials(default_objects: list[dict[str, Any]]) -> None:
    config = ct_yaml(default_objects)
    flat = json.dumps(config).lower()
    assert not any(word in flat for word in ("password", "secret_access", "access_key", "token"))
    # Credentials reach the step pods only through the Secrets named here (envFrom).
    assert config["kubernetes"]["env_from_secrets"] == ["ct-step-env"]


# -- ct's configuration ---------------------------------------------------------------------------------
def test_default_ct_yaml_is_a_valid_kubernetes_profile(default_objects: list[dict[str, Any]]) -> None:
    settings = Settings.model_validate(ct_yaml(default_objects))
    assert settings.profile == "kubernetes" and settings.runner == "kubernetes"
    assert settings.lake_uri == "s3://ct-lake/prod"
    assert settings.gate.require_approval and settings.gate.approval_timeout_hours == 24, "production asks a person"
    kube = settings.kubernetes
    assert kube.namespace == STEP_NAMESPACE and kube.service_account == "ct-trainer"
    assert kube.image == "ct-trainer:0.1.0"
    assert kube.gpu_resource == "nvidia.com/gpu" and kube.gpu_count == 1
    assert kube.node_selector == {} and kube.tolerations == []
    # The tracking URI names MLflow's Service, by the name pods in the step namespace resolve.
    uri = urlsplit(settings.mlflow_tracking_uri)
    service = one(default_objects, "Service", "ct-mlflow")
    assert uri.hostname == f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    assert uri.port == service["spec"]["ports"][0]["port"]


def test_gpu_values_flow_into_ct_config(render: Render) -> None:
    objects = render(GPU_VALUES)
    settings = Settings.model_validate(ct_yaml(objects))
    kube = settings.kubernetes
    assert kube.gpu_count == 4
    assert kube.gpu_resource == "nvidia.com/gpu"
    assert kube.node_selector == GPU_VALUES["gpu"]["nodeSelector"]
    assert kube.tolerations == GPU_VALUES["gpu"]["tolerations"]
    assert set(kube.gpu_steps) == {"train", "evaluate"}


def test_airflow_loads_the_mounted_ct_yaml(render: Render, tmp_path: Path) -> None:
    """As Airflow's pods do: CT_CONFIG names the mounted file, and load_settings validates it."""
    config_file = tmp_path / "ct.yaml"
    config_file.write_text(one(render(GPU_VALUES), "ConfigMap")["data"]["ct.yaml"])
    settings = load_settings({"CT_CONFIG": str(config_file)})
    assert settings.kubernetes.gpu_count == 4 and settings.runner == "kubernetes"


def test_rendered_config_builds_a_gpu_step_pod_the_chart_governs(
    render: Render, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a DAG gets from this ct.yaml: the train step's pod has the GPUs and placement asked for,
    and its namespace, identity and labels are the ones the chart's Role, ServiceAccount and
    NetworkPolicy govern."""
    from kubernetes.client import ApiClient

    from ct_airflow.operators.step import ct_step

    objects = render(GPU_VALUES)
    config_file = tmp_path / "ct.yaml"
    config_file.write_text(one(objects, "ConfigMap")["data"]["ct.yaml"])
    for name in [name for name in os.environ if name.startswith("CT_")]:
        monkeypatch.delenv(name)  # the test session's embedded settings would override the file
    monkeypatch.setenv("CT_CONFIG", str(config_file))
    operator = ct_step(task_id="train", step="train")
    pod = ApiClient().sanitize_for_serialization(operator.build_pod_request_obj(dry_run=True))  # type: ignore[attr-defined]
    kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)

    spec = pod["spec"]
    base = next(c for c in spec["containers"] if c["name"] == "base")
    assert base["image"] == "ct-trainer:0.1.0"
    assert base["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert spec["nodeSelector"] == GPU_VALUES["gpu"]["nodeSelector"]
    assert spec["tolerations"] == GPU_VALUES["gpu"]["tolerations"]
    assert pod["metadata"]["namespace"] == one(objects, "Role")["metadata"]["namespace"]
    assert spec["serviceAccountName"] == one(objects, "ServiceAccount", "ct-trainer")["metadata"]["name"]
    selector = one(objects, "NetworkPolicy", "ct-steps")["spec"]["podSelector"]
    labels = pod["metadata"]["labels"]
    assert selector["matchLabels"].items() <= labels.items()
    assert all(expr["operator"] == "Exists" and expr["key"] in labels for expr in selector["matchExpressions"])


def test_other_ct_settings_pass_through(render: Render) -> None:
    settings_values = {
        "labels": ["cat", "dog"],
        "gate": {"margin": 0.01},
        "kubernetes": {"xcom_sidecar_image": "registry.example/alpine:3.24.2"},
    }
    objects = render({"config": {"lakeUri": "s3://lake/x", "settings": settings_values}})
    config = ct_yaml(objects)
    assert config["kubernetes"]["xcom_sidecar_image"] == "registry.example/alpine:3.24.2"
    assert config["kubernetes"]["gpu_count"] == 1, "merged beside the chart's own kubernetes keys"
    settings = Settings.model_validate(config)
    assert settings.labels == ("cat", "dog") and settings.gate.margin == 0.01
    assert settings.lake_uri == "s3://lake/x"


# -- network policies -----------------------------------------------------------------------------------
def test_step_pods_accept_nothing_and_reach_only_mlflow_s3_and_dns(default_objects: list[dict[str, Any]]) -> None:
    policy = one(default_objects, "NetworkPolicy", "ct-steps")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"] and policy["ingress"] == []
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/part-of": "ct"}
    ports = sorted((p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"])
    assert ports == [("TCP", 53), ("TCP", 443), ("TCP", 5000), ("UDP", 53)]
    mlflow_rule = next(rule for rule in policy["egress"] if rule["ports"] == [{"port": 5000, "protocol": "TCP"}])
    (peer,) = mlflow_rule["to"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NAMESPACE}
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "mlflow"


def test_mlflow_accepts_only_airflow_step_and_serving_pods(default_objects: list[dict[str, Any]]) -> None:
    policy = one(default_objects, "NetworkPolicy", "ct-mlflow")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    namespaces = [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in rule["from"]]
    assert namespaces == [NAMESPACE, STEP_NAMESPACE, NAMESPACE]
    assert rule["from"][2]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "serve"
    assert all("podSelector" in peer for peer in rule["from"]), "whole namespaces are never let in"
    assert rule["ports"] == [{"port": 5000, "protocol": "TCP"}]


def test_the_prediction_service_is_a_probed_deployment_that_follows_the_champion(
    default_objects: list[dict[str, Any]], render: Render
) -> None:
    deployment = one(default_objects, "Deployment", "ct-serve")
    spec = deployment["spec"]
    assert spec["replicas"] == 2 and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (container,) = spec["template"]["spec"]["containers"]
    assert container["image"] == "ct-trainer:0.1.0" and container["args"][:1] == ["serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/ping"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CT_MLFLOW_TRACKING_URI"] == f"http://ct-mlflow.{NAMESPACE}.svc.cluster.local:5000"
    assert env["CT_LAKE_URI"] == "s3://ct-lake/prod"
    assert container["envFrom"] == [{"secretRef": {"name": "ct-serve-env"}}]
    assert spec["template"]["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    service = one(default_objects, "Service", "ct-serve")
    assert service["spec"]["ports"][0]["port"] == 5002
    assert not by_kind(default_objects, "InferenceService"), "KServe is optional"
    kserve = render(
        {"serve": {"kserve": {"enabled": True, "storageUri": "s3://ct-mlflow-artifacts/1/models/m-1/artifacts"}}}
    )
    (inference,) = by_kind(kserve, "InferenceService")
    assert inference["spec"]["predictor"]["model"]["modelFormat"] == {"name": "mlflow"}
    off = render({"serve": {"enabled": False}})
    assert not [o for o in off if o["metadata"]["name"] == "ct-serve"]


def test_network_policies_can_be_turned_off(render: Render) -> None:
    assert not by_kind(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy")


# -- the schema rejects bad values ----------------------------------------------------------------------
BAD_VALUES = [
    pytest.param(["--set", "gpu.count=0"], id="zero-gpus"),
    pytest.param(["--set", "gpu.count=-1"], id="negative-gpus"),
    pytest.param(["--set", "gpu.count=1.5"], id="fractional-gpus"),
    pytest.param(["--set", "replicaCount=2"], id="unknown-top-level-key"),
    pytest.param(["--set", "gpu.type=h100"], id="unknown-nested-key"),
    pytest.param(["--set", "mlflow.image.pullPolicy=Sometimes"], id="bad-pull-policy"),
    pytest.param(["--set", "stepPods.image.pullPolicy=always"], id="bad-pull-policy-case"),
    pytest.param(["--set-json", "mlflow.image.tag=1.2"], id="numeric-image-tag"),
    pytest.param(["--set-json", 'gpu.tolerations=[{"key":"x","tolerationSeconds":5}]'], id="toleration-key"),
    pytest.param(["--set", "config.lakeUri=file:///tmp/lake"], id="lake-not-s3"),
    pytest.param(["--set", "config.settings.runner=local"], id="settings-override-chart-key"),
    pytest.param(["--set", "config.settings.kubernetes.gpu_count=8"], id="settings-override-gpu-value"),
    pytest.param(["--set", "mlflow.runAsUser=0"], id="root-user"),
    pytest.param(["--set", "secrets.s3.name=Bad_Name"], id="bad-secret-name"),
]


@pytest.mark.parametrize("command", [("template", RELEASE), ("lint", "--strict")], ids=["template", "lint"])
@pytest.mark.parametrize("bad", BAD_VALUES)
def test_schema_rejects_bad_values(run_helm, command: tuple[str, str], bad: list[str]) -> None:  # type: ignore[no-untyped-def]
    result = run_helm(*command, str(CHART), extra=bad)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"{bad} was accepted"
    assert "schema" in output.lower(), output


# -- the official chart's values file agrees with this chart -----------------------------------------------
def test_airflow_values_match_the_ct_chart(
    default_objects: list[dict[str, Any]], airflow_values: dict[str, Any]
) -> None:
    configmap = one(default_objects, "ConfigMap")["metadata"]["name"]
    (volume,) = [v for v in airflow_values["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == configmap
    (mount,) = [m for m in airflow_values["volumeMounts"] if m["name"] == volume["name"]]
    env = {e["name"]: e["value"] for e in airflow_values["env"]}
    assert Path(env["CT_CONFIG"]) == Path(mount["mountPath"]) / "ct.yaml"
    subjects = {s["name"] for s in one(default_objects, "RoleBinding")["subjects"]}
    assert subjects == {airflow_values["workers"]["serviceAccount"]["name"],
                        airflow_values["triggerer"]["serviceAccount"]["name"]}  # fmt: skip
    assert airflow_values["triggerer"]["enabled"] is True
    # Airflow reads the lake with the same S3 Secret that MLflow's artifact proxy uses.
    (mlflow,) = one(default_objects, "Deployment", "ct-mlflow")["spec"]["template"]["spec"]["containers"]
    mlflow_refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in mlflow["env"] if "valueFrom" in e}
    for item in airflow_values["secret"]:
        assert {"name": item["secretName"], "key": item["secretKey"]} == mlflow_refs[item["envName"]], item


def test_airflow_values_use_our_image_external_postgres_and_no_secret_values(airflow_values: dict[str, Any]) -> None:
    assert airflow_values["executor"] in {"CeleryExecutor", "KubernetesExecutor"}
    assert airflow_values["images"]["airflow"]["repository"] == "ct-airflow"
    assert isinstance(airflow_values["images"]["airflow"]["tag"], str)
    assert airflow_values["postgresql"]["enabled"] is False and airflow_values["data"]["metadataSecretName"]
    assert airflow_values["dags"]["gitSync"]["enabled"] is False, "DAGs are baked into the image"
    assert not airflow_values["dags"]["persistence"]["enabled"]
    for item in airflow_values["secret"]:
        assert set(item) == {"envName", "secretName", "secretKey"}
    text = AIRFLOW_VALUES.read_text().lower()
    for key in ("fernetkey:", "jwtsecret:", "apisecretkey:", "password:", "metadataconnection:", "brokerurl:"):
        assert key not in text, f"{key} would put a secret value in the file"
