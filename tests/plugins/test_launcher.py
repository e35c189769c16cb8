"""``make up``'s launcher on an ordinary machine: its ports move, a taken port is refused before anything
starts, and ``env`` gives any shell (no PYTHONPATH, any directory) what ``make up``'s components get,
MLflow through its server, which alone reads the artifacts it stores.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ct_airflow.launcher import postgres
from ct_airflow.launcher.local import (
    Ports,
    embedded_env,
    env_command,
    server_env,
    service_commands,
    start_services,
    stop_services,
)
from tests.conftest import free_port

PYTHON = shlex.quote(sys.executable)
#: A shell with nothing of this checkout in it: no PYTHONPATH, no venv on PATH, no CT_ or Airflow variables.
PLAIN_PATH = "/usr/local/bin:/usr/bin:/bin"


@contextlib.contextmanager
def listening() -> Iterator[int]:
    """A port that something else listens on (127.0.0.1), for as long as the block runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def plain_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # The prediction service's port is free too (not its default, which a service elsewhere may hold).
    return {"PATH": PLAIN_PATH, "HOME": str(tmp_path), "LANG": "C.UTF-8", "SERVE_PORT": str(free_port()), **extra}


def launch(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ct_airflow.launcher.local", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def in_shell(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


# -- ports ----------------------------------------------------------------------------------
@pytest.mark.parametrize("busy", ["airflow", "mlflow"], ids=["airflow-port-taken", "mlflow-port-taken"])
def test_a_taken_port_is_refused_in_one_line_before_anything_starts(tmp_path: Path, busy: str) -> None:
    home = tmp_path / "ct"
    with listening() as taken:
        ports = {"airflow": free_port(), "mlflow": free_port()} | {busy: taken}
        env = plain_env(tmp_path, CT_HOME=str(home), AIRFLOW_PORT=str(ports["airflow"]),
                        MLFLOW_PORT=str(ports["mlflow"]))  # fmt: skip
        done = launch("up", env=env, cwd=tmp_path)

    assert done.returncode == 2, done
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    what, name = {"airflow": ("Airflow UI", "AIRFLOW_PORT"), "mlflow": ("MLflow UI", "MLFLOW_PORT")}[busy]
    match = re.fullmatch(rf"port {taken} \({what}\) is in use; free it or pick another: make up {name}=(\d+)", lines[0])
    assert match, lines[0]
    suggested = int(match.group(1))
    assert suggested not in ports.values()
    with socket.socket() as probe:  # the port it suggests is one a server can take
        probe.bind(("127.0.0.1", suggested))
    # Nothing started: no home, no PostgreSQL.
    assert not home.exists() and not postgres.is_running(home)


def test_both_ports_taken_are_said_in_the_same_line(tmp_path: Path) -> None:
    with listening() as airflow_port, listening() as mlflow_port:
        env = plain_env(tmp_path, CT_HOME=str(tmp_path / "ct"), AIRFLOW_PORT=str(airflow_port),
                        MLFLOW_PORT=str(mlflow_port))  # fmt: skip
        done = launch("up", env=env, cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done
    assert done.stderr.startswith(f"ports {airflow_port} (Airflow UI) and {mlflow_port} (MLflow UI) are in use;")
    assert re.search(r"make up AIRFLOW_PORT=\d+ MLFLOW_PORT=\d+$", done.stderr.strip()), done.stderr


@pytest.mark.parametrize(
    ("airflow_port", "mlflow_port", "said"),
    [("80a", "5000", "AIRFLOW_PORT='80a' is not a port number"), ("8080", "70000", "MLFLOW_PORT='70000' is not a port"),
     ("8080", "8080", "AIRFLOW_PORT and MLFLOW_PORT are both 8080")],
    ids=["not-a-number", "out-of-range", "the-same-port"],
)  # fmt: skip
def test_a_bad_port_setting_is_refused_in_one_line(tmp_path: Path, airflow_port: str, mlflow_port: str,
                                                   said: str) -> None:  # fmt: skip
    env = plain_env(tmp_path, CT_HOME=str(tmp_path / "ct"), AIRFLOW_PORT=airflow_port, MLFLOW_PORT=mlflow_port)
    for command in ("up", "env"):
        done = launch(command, env=env, cwd=tmp_path)
        assert done.returncode == 2 and done.stdout == "", done
        assert done.stderr.splitlines() == [done.stderr.strip()] and said in done.stderr, done.stderr


def test_ports_from_the_environment_reach_every_address_and_link(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ml.config import load_settings

    monkeypatch.setenv("AIRFLOW_PORT", "18081")
    monkeypatch.setenv("MLFLOW_PORT", "15001")
    monkeypatch.setenv("SERVE_PORT", "15002")
    for name in ("CT_MLFLOW_UI_URL", "CT_DASHBOARD_URL", "CT_CONFIG", "CT_CONFIG_JSON", "CT_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    env = embedded_env(tmp_path / "ct")

    assert env["AIRFLOW__API__HOST"] == "127.0.0.1" and env["AIRFLOW__API__PORT"] == "18081"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18081/execution/"
    assert (env["AIRFLOW_PORT"], env["MLFLOW_PORT"]) == ("18081", "15001")
    settings = load_settings(env)  # what the steps and the dashboard's links read
    assert settings.mlflow_ui_url == "http://127.0.0.1:15001"
    assert settings.dashboard_url == "http://127.0.0.1:18081/ct"
    mlflow = service_commands(env)["mlflow"]
    assert mlflow[mlflow.index("--host") + 1] == "127.0.0.1" and mlflow[mlflow.index("--port") + 1] == "15001"
    assert (
        server_env(env)["CT_MLFLOW_TRACKING_URI"] == server_env(env)["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:15001"
    )
    serve = service_commands(env)["serve"]
    assert serve[-4:] == ["--host", "127.0.0.1", "--port", "15002"] and env["SERVE_PORT"] == "15002"
    # Ports given by the caller (the integration tests' free ports) win over the environment's, everywhere.
    given = embedded_env(tmp_path / "ct", ports=Ports(airflow=28080, mlflow=25000))
    assert given["AIRFLOW__API__PORT"] == "28080" and given["CT_DASHBOARD_URL"] == "http://127.0.0.1:28080/ct"
    assert service_commands(given)["mlflow"][mlflow.index("--port") + 1] == "25000"
    assert server_env(given)["CT_MLFLOW_TRACKING_URI"] == "http://127.0.0.1:25000"


def test_the_default_ports_and_configured_links_are_left_alone(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ml.config import load_settings

    for name in ("AIRFLOW_PORT", "MLFLOW_PORT", "SERVE_PORT", "CT_MLFLOW_UI_URL", "CT_DASHBOARD_URL", "CT_CONFIG_JSON"):
        monkeypatch.delenv(name, raising=False)
    env = embedded_env(tmp_path / "ct")
    assert service_commands(env)["serve"][-1] == "5002"
    assert env["AIRFLOW__API__PORT"] == "8080" and "CT_MLFLOW_UI_URL" not in env and "CT_DASHBOARD_URL" not in env
    assert service_commands(env)["mlflow"][service_commands(env)["mlflow"].index("--port") + 1] == "5000"

    # Links someone configured (a proxy in front, say) stay theirs when the ports move.
    config = tmp_path / "ct.yaml"
    config.write_text("dashboard_url: https://ops.example/airflow/ct\n")
    monkeypatch.setenv("CT_CONFIG", str(config))
    monkeypatch.setenv("CT_MLFLOW_UI_URL", "https://mlflow.example")
    monkeypatch.setenv("AIRFLOW_PORT", "18081")
    monkeypatch.setenv("MLFLOW_PORT", "15001")
    env = embedded_env(tmp_path / "ct")
    assert "CT_MLFLOW_UI_URL" not in env and "CT_DASHBOARD_URL" not in env
    settings = load_settings({**os.environ, **env})
    assert settings.mlflow_ui_url == "https://mlflow.example"
    assert settings.dashboard_url == "https://ops.example/airflow/ct"


# -- the env command ------------------------------------------------------------------------
def test_env_gives_a_plain_shell_the_launcher_and_make_ups_environment(tmp_path: Path) -> None:
    home = tmp_path / "a home with 'quotes' and spaces"
    env = plain_env(tmp_path, CT_HOME=str(home), MLFLOW_PORT="15001")
    script = (f'eval "$({PYTHON} -m ct_airflow.launcher.local env)" && cd / && '
              'python -c "import ct_airflow.launcher.local, ml.config, os, sys, json; '
              'print(json.dumps({**{k: os.environ.get(k) for k in (\'CT_HOME\', \'PYTHONPATH\', '
              '\'CT_MLFLOW_TRACKING_URI\', \'AIRFLOW_HOME\')}, \'python\': sys.executable}))" && command -v airflow')  # fmt: skip
    done = in_shell(script, env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[0])
    repo = Path(__file__).resolve().parents[2]
    assert seen["CT_HOME"] == str(home) and seen["AIRFLOW_HOME"] == str(home / "airflow")
    assert seen["PYTHONPATH"].split(os.pathsep)[:2] == [str(repo / "plugins"), str(repo)]
    assert seen["CT_MLFLOW_TRACKING_URI"] == "http://127.0.0.1:15001"  # make up's MLflow server, not its database
    assert Path(seen["python"]).parent == Path(sys.executable).parent
    assert done.stdout.splitlines()[1] == str(Path(sys.executable).parent / "airflow")
    # Evaluated twice, PATH and PYTHONPATH do not grow.
    twice = in_shell(f'for i in 1 2; do eval "$({PYTHON} -m ct_airflow.launcher.local env)"; done; '
                     'echo "$PATH"; echo "$PYTHONPATH"', env, cwd=tmp_path)  # fmt: skip
    path, pythonpath = twice.stdout.splitlines()
    assert path.split(":").count(str(Path(sys.executable).parent)) == 1
    assert pythonpath.split(os.pathsep)[:2] == [str(repo / "plugins"), str(repo)] and pythonpath.count(str(repo)) == 2


def test_the_line_make_up_prints_for_a_second_shell_carries_its_home_and_ports(tmp_path: Path) -> None:
    home = tmp_path / "my home"
    line = env_command(home, Ports(airflow=18081, mlflow=15001))
    done = in_shell(f'{line} && echo "$CT_HOME|$CT_MLFLOW_TRACKING_URI|$AIRFLOW__API__PORT"', plain_env(tmp_path),
                    cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{home}|http://127.0.0.1:15001|18081"


# -- models stored by make up's MLflow server ------------------------------------------------
@pytest.fixture
def mlflow_server(tmp_path: Path, mlflow_database: str) -> Iterator[dict[str, str]]:
    """``make up``'s ``mlflow server`` (the command it runs) on a fresh database, with one version of
    ct's model registered through it: its files live in the server's artifact store (``mlflow-artifacts:``)."""
    import httpx
    from mlflow import MlflowClient

    port = free_port()
    env = {**os.environ, "CT_HOME": str(tmp_path / "ct"), "CT_MLFLOW_TRACKING_URI": mlflow_database,
           "MLFLOW_PORT": str(port)}  # fmt: skip
    log = open(tmp_path / "mlflow.log", "w")
    services = start_services({"mlflow": service_commands(env)["mlflow"]}, env, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, (tmp_path / "mlflow.log").read_text()[-3000:]
            time.sleep(0.5)
        server = f"http://127.0.0.1:{port}"
        client = MlflowClient(server, registry_uri=server)  # not the registry an earlier test set globally
        run = client.create_run(client.create_experiment("ct"))
        (tmp_path / "weights.txt").write_text("not really a model")
        client.log_artifact(run.info.run_id, str(tmp_path / "weights.txt"), "model")
        client.create_registered_model("ct-classifier")
        version = client.create_model_version("ct-classifier", f"{run.info.artifact_uri}/model", run.info.run_id)
        assert version.source.startswith("mlflow-artifacts:"), version.source
        yield {"database": mlflow_database, "port": str(port)}
    finally:
        stop_services(services)
        log.close()


def test_a_shell_outside_make_ups_env_is_told_to_use_the_mlflow_server(tmp_path: Path, mlflow_server) -> None:  # type: ignore[no-untyped-def]
    """The README's rollback, run where MLflow is read from its database: the files cannot be read from
    there, and the error says so (a configuration error, exit 2), not that the target is unloadable."""
    env = plain_env(tmp_path, CT_HOME=str(tmp_path / "ct"), CT_MLFLOW_TRACKING_URI=mlflow_server["database"])
    done = in_shell(f"{PYTHON} -m ml rollback --to 1 --reason 'v2 misreads sevens from camera B'", env, cwd=tmp_path)
    assert done.returncode == 2, done
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["error_type"] == "ConfigError", result
    assert "only that server can read" in result["error"] and "ct_airflow.launcher.local env" in result["error"]


def test_the_env_shell_reads_models_through_make_ups_mlflow_server(tmp_path: Path, mlflow_server) -> None:  # type: ignore[no-untyped-def]
    env = plain_env(tmp_path, CT_HOME=str(tmp_path / "ct"), MLFLOW_PORT=mlflow_server["port"])
    code = ("from ml.config import load_settings\nfrom ml.release import registry\ns = load_settings()\n"
            "v = registry.get_version(registry.client(s), s.model_name, '1')\n"
            "with registry.downloaded(s, v) as folder:\n    print((folder / 'weights.txt').read_text())")  # fmt: skip
    done = in_shell(f'eval "$({PYTHON} -m ct_airflow.launcher.local env)" && python -c {shlex.quote(code)}', env,
                    cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "not really a model"


# -- one fernet key per home -------------------------------------------------------------------
def test_every_process_of_a_home_encrypts_with_the_same_fernet_key(tmp_path: Path) -> None:
    """Without it, Airflow processes that start together make up keys of their own, and a trigger's
    arguments one of them encrypted cannot be read by another."""
    from cryptography.fernet import Fernet

    from ct_airflow.launcher.local import fernet_key

    first = embedded_env(tmp_path / "a")["AIRFLOW__CORE__FERNET_KEY"]
    assert embedded_env(tmp_path / "a")["AIRFLOW__CORE__FERNET_KEY"] == first == fernet_key(tmp_path / "a")
    assert Fernet(first.encode()).decrypt(Fernet(first.encode()).encrypt(b"{}")) == b"{}"
    assert (tmp_path / "a" / "airflow" / "fernet.key").stat().st_mode & 0o777 == 0o600
    assert fernet_key(tmp_path / "b") != first, "each home its own"
    # A home from before ct kept its key: the one its airflow.cfg holds, so existing rows stay readable.
    legacy = Fernet.generate_key().decode()
    (tmp_path / "c" / "airflow").mkdir(parents=True)
    (tmp_path / "c" / "airflow" / "airflow.cfg").write_text(f"[core]\nfernet_key = {legacy}\n")
    assert fernet_key(tmp_path / "c") == legacy
