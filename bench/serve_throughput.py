"""The prediction service against bare ONNX Runtime: requests/s and p50/p99 latency, on CPU.

For each model (a small CNN at 32 px, ResNet-18 at 224 px; random weights: serving cost does not
depend on what the weights learned) it measures, in one run on the same PNG files:

* **bare**: the served form in this process, no HTTP (:class:`ml.model.pyfunc.ImageClassifier`:
  decode, ct's preprocessing, ONNX Runtime), one call per request;
* **service**: ``POST /invocations`` to the real service (MLflow's scoring server, ct's wrapper,
  the prediction log on), a separate process, one client sending requests one after another;
* **service, log off**: the same without the prediction log, for the log's own cost.

Batch 1 is one image per request; batch 32 is 32 images per request (the MLflow protocol's
batching: one ``dataframe_split`` of 32 rows, answered in one ONNX Runtime call per 64 rows).
"Server overhead" is the service's own p50 (its ``Server-Timing`` header: from the request's first
byte read to its answer, so MLflow's parsing, ct's wrapper, the prediction log and the JSON answer)
over bare's p50, minus one; target <= 20% at batch 1. The client's round trip (the HTTP client
library and loopback) is printed beside it.

    .venv/bin/python bench/serve_throughput.py            # both sizes, about 3 minutes on 2 cores
    .venv/bin/python bench/serve_throughput.py --sizes 32 --requests 200
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

MODELS = {32: "digits_cnn", 224: "resnet18"}


def build(folder: Path, size: int) -> Path:
    """A ct model and its MLflow model at ``size`` px (3 channels); returns the folder ct's files are in."""
    import torch

    from ml.learn import mlmodel
    from ml.model import artifact
    from ml.model.preprocess import Preprocessing

    torch.manual_seed(0)
    labels = tuple(str(i) for i in range(10))
    spec = artifact.ModelSpec(MODELS[size], 3, len(labels), size, labels, Preprocessing(size, size, 3))
    artifact.save(spec.build(), spec, folder / "ct")
    mlmodel.save(folder / "ct", folder / "model")
    return folder / "model" / "artifacts" / "ct"


def photos(size: int, count: int) -> list[bytes]:
    """PNG files of ``size`` px with structure (gradients and noise), as a camera would send."""
    from PIL import Image

    rng = np.random.default_rng(size)
    y, x = np.mgrid[0:size, 0:size]
    files = []
    for i in range(count):
        pixels = np.stack([(x * 3 + i) % 256, (y * 2 + 7 * i) % 256, (x + y) % 256], axis=-1)
        pixels = (pixels + rng.integers(0, 40, pixels.shape)).clip(0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


def summary(seconds: list[float], images_per_request: int, server: list[float] | None = None) -> dict[str, float]:
    total = sum(seconds)
    found = {"p50_ms": float(np.percentile(seconds, 50) * 1000), "p99_ms": float(np.percentile(seconds, 99) * 1000),
             "requests_per_s": len(seconds) / total, "images_per_s": len(seconds) * images_per_request / total}  # fmt: skip
    if server:
        found |= {"server_p50_ms": float(np.percentile(server, 50)), "server_p99_ms": float(np.percentile(server, 99))}
    return found


def bare(files: Path, images: list[bytes], batch: int, requests: int) -> dict[str, float]:
    from ml.model.pyfunc import ImageClassifier

    model = ImageClassifier().load(files)
    timings = []
    for i in range(requests + 10):
        chosen = [images[(i * batch + j) % len(images)] for j in range(batch)]
        started = time.perf_counter()
        model.answer(model.probabilities(chosen))
        if i >= 10:
            timings.append(time.perf_counter() - started)
    return summary(timings, batch)


def served(url: str, images: list[bytes], batch: int, requests: int) -> dict[str, float]:
    import requests as http

    session = http.Session()
    encoded = [base64.b64encode(x).decode() for x in images]
    timings, server = [], []
    for i in range(requests + 10):
        rows = [[encoded[(i * batch + j) % len(encoded)]] for j in range(batch)]
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}})
        started = time.perf_counter()
        answer = session.post(
            f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=120
        )
        elapsed = time.perf_counter() - started
        if answer.status_code != 200:
            raise SystemExit(f"the service answered {answer.status_code}: {answer.text[:300]}")
        if i >= 10:
            timings.append(elapsed)
            server.append(float(answer.headers["Server-Timing"].split("dur=")[1]))
    return summary(timings, batch, server)


def start_service(files: Path, port: int, log: bool, home: Path) -> subprocess.Popen[bytes]:
    import requests as http

    env = {**os.environ, "CT_HOME": str(home), "PYTHONPATH": f"{REPO}:{REPO / 'plugins'}"}
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(files), "--port", str(port),
                             *([] if log else ["--no-log"])], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if http.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return proc
        except http.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the service did not become ready in 120 s")


def serve(files: Path, port: int, log: bool) -> None:
    """The service process: ct's app around one fixed model (no registry to follow in a benchmark)."""
    import uvicorn

    from ml.config import load_settings
    from ml.model.pyfunc import ImageClassifier
    from ml.serve.app import Service, build_app
    from ml.serve.follower import Serving

    service = Service(load_settings())
    service.follower.refresh = lambda: False  # type: ignore[method-assign]
    service.follower.current = Serving("1", None, ImageClassifier().load(files), time.time())
    if not log:  # no hash, no statistics, no row: the whole of the log's work skipped
        service.model._log = lambda *args: None  # type: ignore[method-assign]
    uvicorn.run(build_app(service), host="127.0.0.1", port=port, log_level="warning")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224], choices=sorted(MODELS))
    parser.add_argument("--requests", type=int, default=100, help="timed requests per measurement (batch 1)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--no-log", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, log=not args.no_log)
        return 0
    from tests.conftest import free_port

    results = []
    print(f"{'px':>4} {'batch':>5} {'what':<18} {'req/s':>8} {'img/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'server p50':>9} {'server p99':>9}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ct-bench-serve-") as tmp:
        for size in args.sizes:
            files = build(Path(tmp) / str(size), size)
            images = photos(size, 64)
            for batch in (1, 32):
                requests = args.requests if batch == 1 else max(10, args.requests // 8)
                row = {
                    "size": size,
                    "model": MODELS[size],
                    "batch": batch,
                    "bare": bare(files, images, batch, requests),
                }
                for what, log in (("service", True), ("service_no_log", False)):
                    port = free_port()
                    proc = start_service(files, port, log, Path(tmp) / f"home-{size}-{batch}-{what}")
                    try:
                        row[what] = served(f"http://127.0.0.1:{port}", images, batch, requests)
                    finally:
                        proc.terminate()
                        proc.wait(timeout=60)
                service, bare_p50 = row["service"], row["bare"]["p50_ms"]
                row["overhead_p50"] = service["server_p50_ms"] / bare_p50 - 1
                row["round_trip_overhead_p50"] = service["p50_ms"] / bare_p50 - 1
                row["log_cost_p50"] = service["server_p50_ms"] / row["service_no_log"]["server_p50_ms"] - 1
                for what in ("bare", "service", "service_no_log"):
                    m = row[what]
                    inside = f" {m['server_p50_ms']:>9.2f} {m['server_p99_ms']:>9.2f}" if "server_p50_ms" in m else ""
                    print(f"{size:>4} {batch:>5} {what:<18} {m['requests_per_s']:>8.1f} {m['images_per_s']:>8.1f} "
                          f"{m['p50_ms']:>8.2f} {m['p99_ms']:>8.2f}{inside}", flush=True)  # fmt: skip
                print(f"{'':>4} {'':>5} server overhead {row['overhead_p50']:+.1%} over bare at p50 "
                      f"({service['server_p50_ms'] - bare_p50:+.2f} ms); with the client and HTTP round trip "
                      f"{row['round_trip_overhead_p50']:+.1%}; the prediction log {row['log_cost_p50']:+.1%}",
                      flush=True)  # fmt: skip
                results.append(row)
    print(json.dumps({"results": results, "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
