"""The prediction service over real HTTP: it follows @champion through a forced promotion and a rollback
without failing a request, keeps serving when the alias points at a broken version, exposes its health
and metrics, and loses no logged prediction to SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from ml import layout
from ml.demo import digits, png_bytes
from ml.release import registry
from ml.serve import predlog
from ml.storage import Lake
from tests.conftest import free_port
from tests.serving import Traffic, body, service


@pytest.fixture
def clean_images() -> list[bytes]:
    images, _ = digits()
    return [png_bytes(image) for image in images[1500:1540]]


def serve_env(ct_home: Path) -> dict[str, str]:
    return {"CT_HOME": str(ct_home), "CT_MLFLOW_TRACKING_URI": os.environ["CT_MLFLOW_TRACKING_URI"],
            "CT_SERVE__POLL_SECONDS": "0.3", "CT_SERVE__LOG_FLUSH_SECONDS": "0.5", "CT_SERVE__RETRY_SECONDS": "600"}  # fmt: skip


def wait_until(check, timeout: float = 60, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def broken_version(settings, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    """A registered version whose ONNX file is not the one its spec names (a corrupted artifact store)."""
    from ml.learn import mlmodel
    from ml.learn.train import model_spec, new_model
    from ml.model import artifact

    artifact.save(new_model(settings), model_spec(settings), tmp_path / "ct")
    mlmodel.save(tmp_path / "ct", tmp_path / "model")
    (tmp_path / "model/artifacts/ct/model.onnx").write_bytes(b"not the exported graph")
    client = registry.client(settings)
    import mlflow

    with mlflow.start_run(experiment_id=registry.experiment_id(settings, client)) as run:
        mlflow.log_artifacts(str(tmp_path / "model"), "model")
        return str(
            client.create_model_version(settings.model_name, f"{run.info.artifact_uri}/model", run.info.run_id).version
        )


def test_the_service_follows_the_champion_without_failing_a_request(
    champion, run_step, settings, ct_home, clean_images, tmp_path
) -> None:
    first, _ = champion
    forced = run_step("retrain", "--run-key", "r2", "--force")["candidate_version"]  # a second version to move to
    assert forced != first
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with service(port, serve_env(ct_home), tmp_path / "serve.log") as proc:
        assert requests.get(f"{url}/ready", timeout=5).json() == {"ready": True, "version": first}
        traffic = Traffic(url, {"clean": clean_images}).start()
        traffic.wait_for(40)

        mark = len(traffic.answers)
        run_step("promote", "--version", forced, "--reason", "forced promotion while traffic runs")
        wait_until(lambda: traffic.answers[-1]["version"] == forced, what="the service to answer with the new version")
        after_promotion = traffic.versions_after(mark)
        switch = after_promotion.index(forced)
        assert set(after_promotion[:switch]) <= {first} and set(after_promotion[switch:]) == {forced}, "one clean swap"
        traffic.wait_for(len(traffic.answers) + 20)

        mark = len(traffic.answers)
        run_step("rollback", "--to", first, "--reason", "rollback while traffic runs")
        wait_until(lambda: traffic.answers[-1]["version"] == first, what="the rollback to reach the service")
        traffic.wait_for(len(traffic.answers) + 20)

        bad = broken_version(settings, tmp_path / "bad")
        registry.client(settings).set_registered_model_alias(
            settings.model_name, "champion", bad
        )  # moved behind ct's back
        wait_until(lambda: requests.get(f"{url}/ct/status", timeout=5).json()["problems"], what="the problem report")
        status = requests.get(f"{url}/ct/status", timeout=5).json()
        assert status["version"] == first, "the broken version is not swapped in"
        assert (
            "SHA-256 differs" in status["problems"][-1]["message"]
            and f"v{first} keeps serving" in status["problems"][-1]["message"]
        )
        mark = len(traffic.answers)
        traffic.wait_for(mark + 20)
        assert set(traffic.versions_after(mark)) == {first}
        lake = Lake.from_uri(settings.lake_uri)
        assert lake.list_keys(layout.state("serve/problems")), "the problem is in the lake for ct_monitor to notify"

        metrics = requests.get(f"{url}/metrics", timeout=5).text
        assert 'ct_serve_requests_total{status="200"}' in metrics
        assert "ct_serve_request_seconds_bucket" in metrics
        per_class = re.findall(rf'ct_serve_predictions_total{{label="(\w+)",version="{forced}"}} (\d+)', metrics)
        assert per_class and sum(float(n) for _, n in per_class) > 0, "predictions per class and version"
        assert "ct_serve_model_swaps_total 2.0" in metrics and "ct_serve_model_load_failures_total 1.0" in metrics

        # SIGTERM while the client is still sending: every answered row must reach the log
        os.kill(proc.pid, signal.SIGTERM)
        # uvicorn answers what is in flight, runs the shutdown (the log's last write), then re-raises SIGTERM
        assert proc.wait(timeout=60) == -signal.SIGTERM
        assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()
        traffic.finish()
    assert traffic.failures == [] or all("Connection" in f for f in traffic.failures[-3:]), traffic.failures[:5]
    answered_before_stop = list(traffic.answers)
    assert len(answered_before_stop) > 100
    assert all(row["header"] == row["version"] for row in answered_before_stop), "the header names the version too"
    logged = predlog.read(Lake.from_uri(settings.lake_uri), 0, time.time() + 1)
    assert set(row["request_id"] for row in answered_before_stop) <= set(logged["request_id"])
    assert logged["request_id"].is_unique, "no row written twice"
    row = logged.set_index("request_id").loc[answered_before_stop[0]["request_id"]]
    assert row["version"] == first and len(row["sha256"]) == 64 and row["width"] == 8 and 0 <= row["bright"] <= 1


def test_the_service_refuses_until_a_champion_exists_and_answers_bad_images_with_400(
    settings, ct_home, clean_images, tmp_path
) -> None:
    """No champion: not ready (503), and a prediction asks to retry; a non-image is the client's error (400)."""
    import subprocess
    import sys

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **serve_env(ct_home), "PYTHONPATH": f"{Path(__file__).parents[2]}"}
    proc = subprocess.Popen([sys.executable, "-m", "ml", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_until(lambda: _answers(f"{url}/ping"), what="the service to listen")
        assert requests.get(f"{url}/ready", timeout=5).status_code == 503
        answer = requests.post(f"{url}/invocations", json=body(clean_images[:1]), timeout=10)
        assert answer.status_code == 503 and "no @champion is loaded yet" in answer.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.ConnectionError:
        return False


def test_the_prediction_log_keeps_rows_while_the_lake_fails_and_bounds_them(tmp_path: Path) -> None:
    from ml.config import ServeConfig

    class FlakyLake:
        """A lake whose writes fail until ``healthy``; it remembers what was written."""

        def __init__(self) -> None:
            self.inner, self.healthy = Lake.from_uri(tmp_path.as_uri()), False

        def write_bytes(self, key: str, data: bytes) -> None:
            if not self.healthy:
                raise OSError("the lake is down")
            self.inner.write_bytes(key, data)

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(self.inner, name)

    lake = FlakyLake()
    failed, dropped = [], []
    log = predlog.PredictionLog(lake, ServeConfig(log_max_rows=5), on_failed=failed.append,  # type: ignore[arg-type]
                                on_dropped=lambda n, m: dropped.append(n))  # fmt: skip
    now = time.time()
    rows = [{"request_id": f"r{i}", "time": now + i, "version": "1", "label": "3", "probability": 0.9,
             "sha256": "0" * 64, "bytes": 10, "width": 8, "height": 8, "mean": 1.0, "std": 1.0, "min": 0.0,
             "max": 255.0, "bright": 0.5} for i in range(7)]  # fmt: skip
    log.append(rows[:4])
    assert log.flush() == 0 and len(failed) == 1 and log.waiting == 4, "a failed write keeps its rows"
    log.append(rows[4:])
    assert dropped == [2] and log.waiting == 5, "beyond log_max_rows the oldest are dropped, and counted"
    lake.healthy = True
    assert log.flush() == 5
    logged = predlog.read(lake.inner, now, now + 10)
    assert logged["request_id"].tolist() == ["r2", "r3", "r4", "r5", "r6"]
    assert np.isclose(logged["probability"], 0.9).all()
