"""The prediction service before there is a champion, and its prediction log when the lake fails.

Following @champion through promotions and rollbacks without a failed request, a broken version,
the metrics and SIGTERM are tried over real HTTP in ``tests/dags/test_live_loop.py``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from ml.demo import digits, png_bytes
from ml.serve import predlog
from ml.storage import Lake
from tests.conftest import free_port
from tests.serving import body


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


def test_the_service_refuses_until_a_champion_exists(settings, ct_home, clean_images, tmp_path) -> None:
    """No champion: not ready (503), and a prediction asks to retry."""
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
