"""Test helpers for the prediction service: start ``python -m ml serve`` for real, and a client that keeps calling it."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def service(port: int, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """``python -m ml serve`` on ``port``, ready (a champion loaded) when the block starts; SIGTERM at its end."""
    env = {**os.environ, **env, "PYTHONPATH": f"{REPO}:{REPO / 'plugins'}"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ml", "serve", "--port", str(port)], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            wait_ready(f"http://127.0.0.1:{port}", proc, log)
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the service exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            ready = requests.get(f"{url}/ready", timeout=2)
            if ready.status_code == 200:
                return ready.json()
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"the service was not ready in {timeout} s:\n{log.read_text()[-3000:]}")


def body(images: list[bytes], ids: list[str] | None = None) -> dict:
    """An MLflow ``dataframe_split`` request: the images base64-encoded, with request ids when given."""
    encoded = [base64.b64encode(x).decode() for x in images]
    if ids is None:
        return {"dataframe_split": {"columns": ["image"], "data": [[x] for x in encoded]}}
    return {
        "dataframe_split": {
            "columns": ["image", "request_id"],
            "data": [list(p) for p in zip(encoded, ids, strict=True)],
        }
    }


@dataclass
class Traffic:
    """A client calling the service in a loop from a thread: every answer and every failure, in order."""

    url: str
    streams: dict[str, list[bytes]]
    stream: str = "clean"
    batch: int = 2
    answers: list[dict] = field(default_factory=list)  # one per row: request_id, version, label, stream, status
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    shutting_down: bool = False  # set before SIGTERM: a refused connection then ends the loop, it is no failure
    ended_by: str | None = None
    _thread: threading.Thread | None = None

    def start(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        session, sent = requests.Session(), 0
        while not self.stop.is_set():
            stream = self.stream
            pool = self.streams[stream]
            images = [pool[(sent + i) % len(pool)] for i in range(self.batch)]
            ids = [f"{stream}-{sent + i}" for i in range(self.batch)]
            sent += self.batch
            try:
                answer = session.post(f"{self.url}/invocations", json=body(images, ids), timeout=30)
            except requests.RequestException as exc:
                if self.stop.is_set():
                    return
                if self.shutting_down and isinstance(exc, requests.ConnectionError):
                    self.ended_by = f"{type(exc).__name__}: {exc}"
                    return
                self.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            if answer.status_code != 200:
                self.failures.append(f"{answer.status_code}: {answer.text[:300]}")
                continue
            header = answer.headers.get("X-Ct-Model-Version")
            for row in answer.json()["predictions"]:
                self.answers.append({**row, "stream": stream, "header": header})

    def wait_for(self, rows: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.answers) < rows:
            assert time.monotonic() < deadline, f"only {len(self.answers)} answers; failures: {self.failures[:3]}"
            time.sleep(0.05)

    def versions_after(self, start: int) -> list[str]:
        return [row["version"] for row in self.answers[start:]]

    def finish(self) -> None:
        self.stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def broken_version(settings, tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    """A registered version whose ONNX file is not the one its spec names (a corrupted artifact store)."""
    from ml.learn import mlmodel
    from ml.learn.train import model_spec, new_model
    from ml.model import artifact

    artifact.save(new_model(settings), model_spec(settings), tmp_path / "ct")
    mlmodel.save(tmp_path / "ct", tmp_path / "model")
    (tmp_path / "model/artifacts/ct/model.onnx").write_bytes(b"not the exported graph")
    import mlflow

    from ml.release import registry

    client = registry.client(settings)

    with mlflow.start_run(experiment_id=registry.experiment_id(settings, client)) as run:
        mlflow.log_artifacts(str(tmp_path / "model"), "model")
        return str(
            client.create_model_version(settings.model_name, f"{run.info.artifact_uri}/model", run.info.run_id).version
        )
