"""docker-compose.yaml: validated and rendered by the real Compose binary, and read as written.

``config`` resolves interpolation, anchors and profiles exactly as ``docker compose up`` would, so the
assertions below are about the stack Compose would really start, with ``.env.example`` as its ``.env``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import COMPOSE_FILE, DOCKER_DIR, ENV_EXAMPLE, RunCompose

ONE_SHOT = {"minio-init", "airflow-init"}
ALWAYS = {"postgres", "minio", "mlflow", "serve", "airflow-apiserver", "airflow-dag-processor", "airflow-triggerer"}
CPU_SCHEDULER, GPU_SCHEDULER = "airflow-scheduler", "airflow-scheduler-gpu"
AIRFLOW_SERVICES = {"airflow-init", "airflow-apiserver", "airflow-dag-processor", "airflow-triggerer",
                    CPU_SCHEDULER, GPU_SCHEDULER}  # fmt: skip
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|TOKEN")
#: A value that is nothing but one required variable: ``${NAME}`` or ``${NAME:?message}``, never a default.
REQUIRED_VARIABLE = re.compile(r"^\$\{[A-Z][A-Z0-9_]*(:?\?[^}]*)?\}$")
URL_PASSWORD = re.compile(r"://[^/@\s:]*:(?P<password>[^/@\s]*)@")
VARIABLE = re.compile(r"\$\{(?P<name>[A-Z][A-Z0-9_]*)")
PLACEHOLDER = "change-me"


def rendered(run_compose: RunCompose, profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    done = run_compose("config", "--format", "json", profiles=profiles)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


@pytest.fixture(scope="module")
def stacks(run_compose: RunCompose) -> dict[str, dict[str, Any]]:
    """The rendered project with .env.example's profile (cpu) and with ``--profile gpu``."""
    return {"cpu": rendered(run_compose), "gpu": rendered(run_compose, ("gpu",))}


@pytest.fixture(scope="module")
def every_service(stacks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each service that either profile starts, as rendered."""
    return {**stacks["cpu"]["services"], **stacks["gpu"]["services"]}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """docker-compose.yaml as written (PyYAML resolves the ``<<`` merge keys, not the ``${...}``)."""
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


def environments(raw: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(where, name, value) for every environment entry written in the file, x- extension blocks included."""
    blocks = {f"services.{name}": service for name, service in raw["services"].items()}
    blocks |= {name: block for name, block in raw.items() if name.startswith("x-") and isinstance(block, dict)}
    found: list[tuple[str, str, Any]] = []
    for where, block in blocks.items():
        env = block.get("environment", {})
        if where.startswith("x-") and all(isinstance(v, str | int | float | bool) for v in block.values()):
            env = block  # an x- block that is itself an environment (x-airflow-env)
        if isinstance(env, list):
            env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
        found += [(where, name, value) for name, value in env.items()]
    return found


def masked(value: str) -> tuple[str, list[str]]:
    """``value`` with each ``${...}`` replaced by a NUL-delimited index, and the interpolations in order."""
    found: list[str] = []

    def keep(match: re.Match[str]) -> str:
        found.append(match[0])
        return f"\0{len(found) - 1}\0"

    return re.sub(r"\$\{[^}]*\}", keep, value), found


def test_compose_file_is_valid(run_compose: RunCompose) -> None:
    done = run_compose("config", "-q")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("profiles", "expected"),
    [((), ALWAYS | ONE_SHOT | {CPU_SCHEDULER}), (("gpu",), ALWAYS | ONE_SHOT | {GPU_SCHEDULER})],
    ids=["env-example-profile-cpu", "profile-gpu"],
)
def test_services_and_exactly_one_scheduler(run_compose: RunCompose, profiles: tuple[str, ...],
                                            expected: set[str]) -> None:  # fmt: skip
    done = run_compose("config", "--services", profiles=profiles)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == expected


def test_one_shot_jobs_are_the_only_services_that_do_not_restart(every_service: dict[str, dict[str, Any]]) -> None:
    assert {name for name, s in every_service.items() if s.get("restart", "no") == "no"} == ONE_SHOT


def test_every_long_running_service_has_a_healthcheck(every_service: dict[str, dict[str, Any]]) -> None:
    for name, service in every_service.items():
        if name in ONE_SHOT:
            continue
        check = service.get("healthcheck") or {}
        assert not check.get("disable") and check.get("test", [None])[0] in ("CMD", "CMD-SHELL"), name
        assert check.get("interval") and check.get("timeout") and check.get("retries"), name


def test_every_dependency_waits_for_health_or_completion(every_service: dict[str, dict[str, Any]]) -> None:
    waits = 0
    for name, service in every_service.items():
        for target, how in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if target in ONE_SHOT else "service_healthy"
            assert how["condition"] == expected, f"{name} -> {target}"
            if expected == "service_healthy":
                assert "healthcheck" in every_service[target], f"{name} waits for {target}, which has no healthcheck"
            waits += 1
    assert waits >= 15  # the stack really is ordered, not just free of bad conditions


def test_secrets_are_never_written_in_the_file(raw: dict[str, Any]) -> None:
    written = json.dumps(raw)  # what the file says, without its comments
    assert PLACEHOLDER not in written
    assert "env_file" not in written  # secrets reach each service by name, not by handing it all of .env
    checked = 0
    for where, name, value in environments(raw):
        # A *_FILE setting names where a secret lives (SimpleAuthManager's passwords file), not the secret.
        if SECRET_NAME.search(name) and not name.endswith("_FILE"):
            checked += 1
            assert isinstance(value, str) and REQUIRED_VARIABLE.match(value), (
                f"{where}: {name}={value!r} must be a required variable from .env, e.g. ${{{name}:?...}}"
            )
        text_value, variables = masked(str(value))
        for match in URL_PASSWORD.finditer(text_value):
            checked += 1
            index = re.fullmatch(r"\0(\d+)\0", match["password"])
            assert index and REQUIRED_VARIABLE.match(variables[int(index[1])]), (
                f"{where}: {name} has an inline password"
            )
    assert checked >= 15


def test_every_variable_is_documented_in_env_example() -> None:
    used = set(VARIABLE.findall(json.dumps(yaml.safe_load(COMPOSE_FILE.read_text()))))  # not the comments
    documented = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z]", line)}
    assert used - documented == set(), "used in docker-compose.yaml but not in .env.example"
    assert documented - used == {"COMPOSE_PROFILES"}, "in .env.example but used nowhere"


def test_a_missing_secret_stops_compose_with_its_name(run_compose: RunCompose, tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    lines = ENV_EXAMPLE.read_text().splitlines()
    env_file.write_text("\n".join(line for line in lines if not line.startswith("AIRFLOW_DB_PASSWORD=")) + "\n")
    done = run_compose("config", "-q", env_file=env_file)
    assert done.returncode != 0
    assert "set AIRFLOW_DB_PASSWORD in .env" in done.stderr


def test_published_ports_are_on_loopback_only(every_service: dict[str, dict[str, Any]]) -> None:
    published = [(name, port) for name, service in every_service.items() for port in service.get("ports", [])]
    assert {name for name, _ in published} == {"airflow-apiserver", "mlflow", "minio", "serve"}
    for name, port in published:
        assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port}"
    assert "ports" not in every_service["postgres"]


def test_gpu_scheduler_gets_an_nvidia_device_and_the_cpu_one_none(every_service: dict[str, dict[str, Any]]) -> None:
    devices = every_service[GPU_SCHEDULER]["deploy"]["resources"]["reservations"]["devices"]
    assert [(d["driver"], d["capabilities"], d["count"]) for d in devices] == [("nvidia", ["gpu"], 1)]
    assert "deploy" not in every_service[CPU_SCHEDULER]
    assert every_service[GPU_SCHEDULER]["profiles"] == ["gpu"]
    cpu, gpu = every_service[CPU_SCHEDULER], every_service[GPU_SCHEDULER]
    for key in ("image", "command", "environment", "depends_on", "healthcheck", "volumes"):
        assert cpu[key] == gpu[key], f"the two schedulers differ in {key}"


def test_steps_run_where_the_step_libraries_are(every_service: dict[str, dict[str, Any]]) -> None:
    targets = {name: every_service[name]["build"]["target"] for name in AIRFLOW_SERVICES}
    assert targets == {name: "worker" if name in (CPU_SCHEDULER, GPU_SCHEDULER) else "airflow" for name in targets}
    for name in AIRFLOW_SERVICES:
        assert every_service[name]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"


def test_the_prediction_service_runs_on_the_worker_image_with_the_lake_and_mlflow(
    every_service: dict[str, dict[str, Any]],
) -> None:
    serve = every_service["serve"]
    assert serve["build"]["target"] == "worker" and serve["command"][:4] == ["python", "-m", "ml", "serve"]
    env = serve["environment"]
    assert env["CT_MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and env["CT_LAKE_URI"].startswith("s3://")
    assert serve["ports"][0]["host_ip"] == "127.0.0.1" and serve["ports"][0]["target"] == 5002
    assert "/ping" in " ".join(serve["healthcheck"]["test"])


def test_ct_and_airflow_settings_for_the_compose_profile(every_service: dict[str, dict[str, Any]],
                                                         caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    from ml.config import load_settings

    for name in AIRFLOW_SERVICES:
        env = every_service[name]["environment"]
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://"), name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
        assert env["CT_S3_ENDPOINT_URL"] == "http://minio:9000"
        with caplog.at_level(logging.WARNING, logger="ml.config"):
            settings = load_settings(env)
        assert caplog.records == [], f"{name}: ct ignored some CT_ variables"
        assert (settings.profile, settings.runner) == ("compose", "local")
        assert settings.lake_uri == "s3://ct-lake/prod"
        assert settings.mlflow_tracking_uri == "http://mlflow:5000"
        assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
    mlflow = every_service["mlflow"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert mlflow["command"][:2] == ["--artifacts-destination", "s3://ct-mlflow/"]
    assert "mlflow:5000" in mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")


def test_images_are_pinned_and_builds_point_at_real_files(every_service: dict[str, dict[str, Any]]) -> None:
    for name, service in every_service.items():
        repository, _, tag = service["image"].rpartition(":")
        assert repository and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {service['image']}"
        if build := service.get("build"):
            dockerfile = Path(build["context"]) / build["dockerfile"]
            assert dockerfile.is_file(), name
            if "target" in build:
                assert re.search(rf"^FROM \S+ AS {build['target']}$", dockerfile.read_text(), re.M), name
        for mount in service.get("volumes", []):
            if mount["type"] == "bind":
                assert Path(mount["source"]).is_file() and mount.get("read_only"), f"{name}: {mount}"


def test_our_services_drop_privileges(every_service: dict[str, dict[str, Any]]) -> None:
    for name, service in every_service.items():
        if "build" in service:
            assert service.get("cap_drop") == ["ALL"], name
            assert "no-new-privileges:true" in service.get("security_opt", []), name


@pytest.mark.parametrize(
    "defect",
    ["undefined-dependency", "unknown-key"],
)
def test_a_broken_compose_file_is_rejected(run_compose: RunCompose, raw: dict[str, Any], tmp_path: Path,
                                           defect: str) -> None:  # fmt: skip
    """The same stack with one defect: Compose must refuse it, so the checks above can fail."""
    broken = json.loads(json.dumps(raw))
    if defect == "undefined-dependency":
        broken["services"]["airflow-apiserver"]["depends_on"]["no-such-service"] = {"condition": "service_healthy"}
    else:
        broken["services"]["airflow-apiserver"]["healthchek"] = {"test": ["CMD", "true"]}
    path = tmp_path / "docker-compose.yaml"
    path.write_text(yaml.safe_dump(broken, sort_keys=False))
    assert run_compose("config", "-q", compose_file=path).returncode != 0
    # ...and the untouched dump is accepted, so it is the defect that was refused.
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert run_compose("config", "-q", compose_file=path).returncode == 0


def test_fill_secrets_replaces_every_placeholder(run_compose: RunCompose, tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    env_file = tmp_path / ".env"
    shutil.copy(ENV_EXAMPLE, env_file)
    fill = [sys.executable, str(DOCKER_DIR / "fill_secrets.py"), str(env_file)]
    subprocess.run(fill, check=True, capture_output=True, text=True)
    before, after = ENV_EXAMPLE.read_text().splitlines(), env_file.read_text().splitlines()
    values = dict(line.split("=", 1) for line in after if re.match(r"^[A-Z]", line))
    assert PLACEHOLDER not in values.values()
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    Fernet(values["AIRFLOW_FERNET_KEY"])
    filled = [b.split("=", 1)[0] for b, a in zip(before, after, strict=True) if b != a]
    assert filled == [line.split("=", 1)[0] for line in before if line.endswith(f"={PLACEHOLDER}")]
    assert len({values[name] for name in filled}) == len(filled)  # each secret its own
    assert run_compose("config", "-q", env_file=env_file).returncode == 0
    subprocess.run(fill, check=True, capture_output=True, text=True)
    assert env_file.read_text().splitlines() == after  # a second run changes nothing
