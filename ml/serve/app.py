"""The prediction service: MLflow's scoring server answering with whatever ``@champion`` is.

Why MLflow's scoring server: it is the server every registered version already speaks (``mlflow
models serve`` runs it on one version), so a client written against ``/invocations`` works the
same against ct, ``mlflow models serve``, and KServe's or Seldon's MLflow runtimes; it is in the lock
already (no second web stack beside Airflow's FastAPI), and :func:`mlflow.pyfunc.scoring_server.init`
takes any object with ``predict`` and ``metadata``. ct hands it :class:`ChampionModel`, which
answers with the follower's current model (:mod:`ml.serve.follower`), and adds around it only what a
production service needs:

* ``GET /ready`` (200 once a champion is loaded, else 503) beside MLflow's ``/ping`` and ``/health``;
* ``GET /metrics``: Prometheus (:mod:`ml.serve.metrics`);
* ``GET /ct/status``: the version serving, since when, the prediction log's counters and the last problems;
* every answer row carries its ``request_id`` (the client's, else a new one) and the ``version``
  that answered, and the response the header ``X-Ct-Model-Version`` (and ``Server-Timing``: the
  server's own milliseconds for the request, from its first byte read to its answer);
* every answer goes to the prediction log (:mod:`ml.serve.predlog`), written off the request path
  and flushed when uvicorn shuts down on SIGTERM (after the requests in flight are answered).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ml import layout
from ml.config import Settings
from ml.serve.follower import ChampionFollower, Serving
from ml.serve.metrics import ServiceMetrics
from ml.serve.predlog import PredictionLog
from ml.storage import Lake

log = logging.getLogger(__name__)

REQUEST_ID, VERSION = "request_id", "version"
VERSION_HEADER = "X-Ct-Model-Version"
_answered: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("ct_answered", default=None)


def problem_key(epoch: float) -> str:
    return layout.state(f"serve/problems/{layout.time_stamp(epoch)}-{uuid.uuid4().hex[:8]}.json")


class ChampionModel:
    """What MLflow's scoring server calls: the current champion's answer, with request ids and the version."""

    def __init__(self, follower: ChampionFollower, prediction_log: PredictionLog, metrics: ServiceMetrics) -> None:
        from mlflow.models import Model, ModelSignature
        from mlflow.types.schema import ColSpec, Schema

        self.follower, self.prediction_log, self.metrics = follower, prediction_log, metrics
        inputs = Schema([ColSpec("binary", "image"), ColSpec("string", REQUEST_ID, required=False)])
        self.metadata = Model(signature=ModelSignature(inputs=inputs))

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

        from ml.model.pyfunc import as_bytes

        serving: Serving | None = self.follower.current  # read once: this request is answered by this version
        if serving is None:
            raise MlflowException("no @champion is loaded yet; retry shortly (GET /ready says when)",
                                  error_code=TEMPORARILY_UNAVAILABLE)  # fmt: skip
        images = [as_bytes(cell, row) for row, cell in enumerate(data["image"].tolist())]
        decoded: list[Any] = []
        probabilities = serving.model.probabilities(images, decoded)
        given = data[REQUEST_ID].tolist() if REQUEST_ID in data.columns else [None] * len(images)
        ids = [str(x) if x not in (None, "") and x == x else uuid.uuid4().hex for x in given]  # x == x: not NaN
        columns = serving.model.columns(probabilities)
        answer = pd.DataFrame({REQUEST_ID: ids, **columns, VERSION: [serving.version] * len(ids)})
        holder = _answered.get()
        if holder is not None:
            holder[VERSION] = serving.version
        labels = columns["label"]
        self._log(ids, labels, columns["probability"].tolist(), images, decoded, serving)
        self.metrics.count(serving.version, labels)
        return answer

    def _log(self, ids: list[str], labels: list[str], confidence: list[float], images: list[bytes],
             decoded: list[Any], serving: Serving) -> None:  # fmt: skip
        """One prediction log row per image: who asked, what was answered, and the image's hash and statistics."""
        from ml.data.imagestats import statistics

        now = time.time()
        rows, kept = [], {}
        for request_id, label, probability, data, image in zip(ids, labels, confidence, images, decoded, strict=True):
            sha256 = hashlib.sha256(data).hexdigest()
            rows.append({REQUEST_ID: request_id, "time": now, VERSION: serving.version, "label": label,
                         "probability": probability, "sha256": sha256, "bytes": len(data), **statistics(image)})  # fmt: skip
            kept[sha256] = data
        self.prediction_log.append(rows, kept)


class Service:
    """The follower, the prediction log and the metrics of one serving process, and the problems it met."""

    def __init__(self, settings: Settings, lake: Lake | None = None) -> None:
        self.settings = settings
        self.lake = lake or Lake.from_uri(settings.lake_uri)
        self.metrics = ServiceMetrics()
        self.problems: deque[dict[str, Any]] = deque(maxlen=20)
        self.prediction_log = PredictionLog(self.lake, settings.serve, on_written=self.metrics.log_rows.inc,
                                            on_failed=self._log_failed, on_dropped=self._log_dropped)  # fmt: skip
        self.follower = ChampionFollower(settings, on_swap=self._swapped, on_problem=self._model_problem)
        self.model = ChampionModel(self.follower, self.prediction_log, self.metrics)

    def _swapped(self, new: Serving, previous: Serving | None) -> None:
        self.metrics.version.set(float(new.version))
        if previous is not None:
            self.metrics.swaps.inc()

    def _model_problem(self, version: str, message: str) -> None:
        self.metrics.load_failures.inc()
        self.report("model", message, version=version)

    def _log_failed(self, message: str) -> None:
        self.metrics.log_failures.inc()
        self.report("prediction_log", message)

    def _log_dropped(self, rows: int, message: str) -> None:
        self.metrics.log_dropped.inc(rows)
        self.report("prediction_log", message, dropped=rows)

    def report(self, kind: str, message: str, **extra: Any) -> None:
        """Keep a problem for ``/ct/status`` and write it under ``state/serve/problems/`` for ``ct_monitor`` to notify.

        Best effort: the lake may be what failed; the metrics and the status page still show it.
        """
        record = {"time": time.time(), "kind": kind, "message": message, **extra}
        self.problems.append(record)
        try:
            self.lake.write_bytes(problem_key(record["time"]), json.dumps(record).encode())
        except Exception as exc:  # noqa: BLE001 - reporting a problem must not become another one
            log.warning("could not record the problem in the lake: %s", exc)

    def status(self) -> dict[str, Any]:
        current = self.follower.current
        return {
            "model_name": self.settings.model_name,
            "version": current.version if current else None,
            "run_id": current.run_id if current else None,
            "serving_since": current.loaded_at if current else None,
            "labels": list(current.model.labels) if current else [],
            "prediction_log": {
                "written": self.prediction_log.written,
                "waiting": self.prediction_log.waiting,
                "failures": self.prediction_log.failures,
                "dropped": self.prediction_log.dropped,
            },
            "problems": list(self.problems),
        }

    def start(self) -> None:
        self.follower.start()
        self.prediction_log.start()

    def stop(self) -> None:
        self.follower.stop()
        self.prediction_log.close()


class _Measure:
    """Plain ASGI middleware around ``/invocations``: counts and times each request, and names the version
    that answered in ``X-Ct-Model-Version`` (the prediction writes it into a holder this request's context carries)."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/invocations":
            await self.app(scope, receive, send)
            return
        holder: dict[str, str] = {}
        token = _answered.set(holder)
        started, status = time.perf_counter(), 500

        async def send_with_version(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Server-Timing (W3C): the server's own time for this request, parse to answer, for clients to see
                headers = [*message.get("headers", []),
                           (b"server-timing", f"app;dur={(time.perf_counter() - started) * 1000:.3f}".encode())]  # fmt: skip
                if VERSION in holder:
                    headers.append((VERSION_HEADER.lower().encode(), holder[VERSION].encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_version)
        finally:
            _answered.reset(token)
            self.service.metrics.observe_request(status, time.perf_counter() - started)
            self.service.metrics.log_waiting.set(self.service.prediction_log.waiting)


def build_app(service: Service) -> Any:
    """The ASGI app: ct's routes, then MLflow's scoring server for everything else."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response
    from mlflow.pyfunc import scoring_server

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(service.start)
        try:
            yield
        finally:
            await asyncio.to_thread(service.stop)  # uvicorn answered every request in flight before this

    app = FastAPI(title="ct prediction service", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    app.add_middleware(_Measure, service=service)

    @app.get("/ready")
    async def ready() -> Response:
        current = service.follower.current
        if current is None:
            return JSONResponse({"ready": False, "reason": "no @champion loaded yet"}, status_code=503)
        return JSONResponse({"ready": True, "version": current.version})

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = service.metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/ct/status")
    async def status() -> Response:
        return JSONResponse(service.status())

    app.mount("/", scoring_server.init(service.model))  # type: ignore[arg-type]
    return app


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> dict[str, Any]:
    """Run the service until SIGTERM or Ctrl-C; returns what it served and logged."""
    import uvicorn

    service = Service(settings)
    config = uvicorn.Config(
        build_app(service),
        host=host or settings.serve.host,
        port=port or settings.serve.port,
        log_level="info",
        timeout_graceful_shutdown=30,
    )
    uvicorn.Server(config).run()
    return {"served_version": service.follower.current.version if service.follower.current else None,
            "logged": service.prediction_log.written, "dropped": service.prediction_log.dropped}  # fmt: skip
