"""The fault suite's world: a real moto S3 server and a real ``mlflow server`` (on PostgreSQL), and a scenario built once.

Both servers run in their own process groups so that a test can freeze one (SIGSTOP) at a chosen
call and thaw it (SIGCONT): to a step that is an outage, a server that stopped answering, and no
data is lost (moto keeps everything in memory, so a restart would wipe the lake).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.faults.harness import Runner

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Service:
    url: str
    pgid: int


def _start(
    args: list[str], url: str, log: Path, health: str, timeout: float = 180
) -> tuple[subprocess.Popen[bytes], Service]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + health, timeout=2).close()
            return proc, Service(url, os.getpgid(proc.pid))
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"{args[0]} did not come up: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory, mlflow_template: str) -> Iterator[dict[str, Service]]:
    from ct_airflow.launcher import postgres
    from ml.config import embedded_database_uri
    from tests.conftest import SESSION_PG_HOME

    root = tmp_path_factory.mktemp("fault-services")
    # MLflow's backend store on the session's PostgreSQL, as in every profile.
    postgres.create_databases(SESSION_PG_HOME, ["mlflow_faults"], template=mlflow_template)
    s3_port, mlflow_port = free_port(), free_port()
    moto, s3 = _start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                      f"http://127.0.0.1:{s3_port}", root / "moto.log", "/moto-api/")  # fmt: skip
    mlflow, tracking = _start(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
         "--backend-store-uri", embedded_database_uri(SESSION_PG_HOME, "mlflow_faults"), "--artifacts-destination", str(root / "artifacts")],
        f"http://127.0.0.1:{mlflow_port}", root / "mlflow.log", "/health",
    )  # fmt: skip
    try:
        yield {"s3": s3, "mlflow": tracking}
    finally:
        for proc in (moto, mlflow):
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in (moto, mlflow):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    return Runner(tmp_path_factory.mktemp("fault-runs"))


@pytest.fixture(scope="session")
def world(services: dict[str, Service], runner: Runner, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a lake on S3 with two curated batches, a weak champion v1 and a strong candidate."""
    import boto3

    bucket = "ct-faults"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CT_")}
    env.update({
        "CT_HOME": str(tmp_path_factory.mktemp("fault-home")),
        "CT_LAKE_URI": f"s3://{bucket}/lake",
        "CT_MLFLOW_TRACKING_URI": services["mlflow"].url,
        "CT_S3_ENDPOINT_URL": services["s3"].url,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        # An outage must surface in seconds, not after minutes of retries.
        "AWS_MAX_ATTEMPTS": "1", "CT_S3_CONNECT_TIMEOUT": "2", "CT_S3_READ_TIMEOUT": "3",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "3", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "CT_TRAIN__EPOCHS": "4", "CT_INGEST__MIN_ROWS": "20", "CT_DRIFT__EMBEDDINGS": "false",
    })  # fmt: skip
    boto3.client("s3", endpoint_url=services["s3"].url, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)  # fmt: skip
    runner.call(env, _write_batches)
    assert runner.step(env, "ingest").exitcode == 0
    weak = {**env, "CT_TRAIN__EPOCHS": "1", "CT_TRAIN__LR": "1e-6", "CT_GATE__FLOOR_ACCURACY": "0"}
    for argv in (["drift", "--run-key", "weak"], ["decide", "--run-key", "weak", "--force"],
                 ["train", "--run-key", "weak"], ["evaluate", "--run-key", "weak"], ["gate", "--run-key", "weak"]):  # fmt: skip
        run = runner.step(weak, *argv)
        assert run.exitcode == 0, (argv, run.result)
    for argv in (["drift", "--run-key", "strong"], ["decide", "--run-key", "strong", "--force"],
                 ["train", "--run-key", "strong"]):  # fmt: skip
        run = runner.step(env, *argv)
        assert run.exitcode == 0, (argv, run.result)
    return env


def _write_batches() -> None:
    from ml.config import load_settings
    from ml.demo import digits, write_batch
    from ml.storage import Lake

    images, labels = digits()
    lake = Lake.from_uri(load_settings().lake_uri)
    write_batch(lake, "b1", images[:500], labels[:500])
    write_batch(lake, "b2", images[500:900], labels[500:900])
