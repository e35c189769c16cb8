"""The prediction log: every answer the service gives, written to the lake in hourly columnar files.

One row per served image: ``request_id``, ``time`` (epoch seconds), ``version``, ``label``,
``probability``, the image's ``sha256`` and ``bytes``, and the statistics the manifest keeps
(:mod:`ml.data.imagestats`), under ``predictions/<YYYY-MM-DD>/<HH>/`` (:func:`ml.layout.prediction_log`).

Writes never sit on the request path: rows wait in memory and a background thread writes them once
``serve.log_flush_rows`` wait or the oldest is ``serve.log_flush_seconds`` old, and on :meth:`close`
(SIGTERM). A write that fails keeps its rows for the next try, counts the failure and reports it
(``on_problem``); at most ``serve.log_max_rows`` rows wait, beyond which the oldest are dropped and
counted, so a lake that is down for a day costs bounded memory, not the service.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from ml import layout
from ml.config import ServeConfig
from ml.storage import Lake

log = logging.getLogger(__name__)

COLUMNS = ("request_id", "time", "version", "label", "probability", "sha256", "bytes",
           "width", "height", "mean", "std", "min", "max", "bright")  # fmt: skip


class PredictionLog:
    """Rows in memory until a background thread writes them to the lake; thread-safe."""

    def __init__(
        self,
        lake: Lake,
        cfg: ServeConfig,
        on_written: Callable[[int], None] | None = None,
        on_failed: Callable[[str], None] | None = None,
        on_dropped: Callable[[int, str], None] | None = None,
    ) -> None:
        self.lake, self.cfg = lake, cfg
        self._rows: deque[dict[str, Any]] = deque()
        self._images: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_written, self._on_failed, self._on_dropped = on_written, on_failed, on_dropped
        self.written = self.dropped = self.failures = 0

    def append(self, rows: list[dict[str, Any]], images: dict[str, bytes] | None = None) -> None:
        """Queue rows (and, with ``serve.keep_images``, their images by hash); never blocks on the lake."""
        with self._lock:
            self._rows.extend(rows)
            if self.cfg.keep_images and images:
                self._images.update(images)
            overflow = len(self._rows) - self.cfg.log_max_rows
            for _ in range(max(overflow, 0)):
                self._images.pop(self._rows.popleft()["sha256"], None)
            if overflow > 0:
                self.dropped += overflow
        if overflow > 0:
            message = f"the prediction log dropped its {overflow} oldest rows: {self.cfg.log_max_rows} were waiting"
            log.error("%s", message)
            if self._on_dropped:
                self._on_dropped(overflow, message)
        if len(self._rows) >= self.cfg.log_flush_rows:
            self._wake.set()

    @property
    def waiting(self) -> int:
        return len(self._rows)

    def flush(self) -> int:
        """Write every waiting row, one file per hour they fall in; returns the rows written (0 on failure)."""
        import pandas as pd

        with self._lock:
            rows, self._rows = list(self._rows), deque()
            images, self._images = self._images, {}
        if not rows:
            return 0
        frame = pd.DataFrame(rows, columns=list(COLUMNS))
        hours = (frame["time"] // 3600).astype("int64")
        done: list[int] = []  # positions of the rows already in a file
        try:
            for sha256, data in list(images.items()):
                key = layout.served_image(sha256)
                if not self.lake.exists(key):
                    self.lake.write_bytes(key, data)
                del images[sha256]
            for _, part in frame.groupby(hours, sort=True):  # one file per hour; each written once
                buffer = io.BytesIO()
                part.to_parquet(buffer, index=False)
                self.lake.write_bytes(layout.prediction_log(float(part["time"].iloc[0]), uuid.uuid4().hex[:12]),
                                      buffer.getvalue())  # fmt: skip
                done.extend(part.index.tolist())
        except Exception as exc:  # noqa: BLE001 - a failed write keeps its rows for the next try; it never fails a request
            written = set(done)
            unwritten = [row for position, row in enumerate(rows) if position not in written]
            with self._lock:
                self._rows.extendleft(reversed(unwritten))
                self._images.update(images)
            self.failures += 1
            message = f"the prediction log could not be written to {self.lake.uri(layout.PREDICTIONS)}: {exc}"
            log.error("%s", message)
            if self._on_failed:
                self._on_failed(message)
        self.written += len(done)
        if done and self._on_written:
            self._on_written(len(done))
        return len(done)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ct-prediction-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            oldest = self._rows[0]["time"] if self._rows else None
            due = len(self._rows) >= self.cfg.log_flush_rows or (
                oldest is not None and time.time() - oldest >= self.cfg.log_flush_seconds
            )
            if due:
                self.flush()

    def close(self, attempts: int = 3) -> None:
        """Stop the writer and write what waits (at shutdown: SIGTERM), retrying a failed write a few times."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for attempt in range(attempts):
            self.flush()
            if not self._rows:
                return
            time.sleep(0.5 * (attempt + 1))
        log.error("the prediction log lost %d rows at shutdown: the lake could not be written", len(self._rows))


def read(lake: Lake, since: float, until: float) -> Any:
    """The logged predictions with ``since <= time < until``, as one DataFrame (empty when none)."""
    import pandas as pd

    frames = []
    hour = int(since // 3600) * 3600
    while hour < until:
        for key in lake.list_keys(layout.prediction_hour(hour)):
            if key.endswith(".parquet"):
                frames.append(pd.read_parquet(io.BytesIO(lake.read_bytes(key))))
        hour += 3600
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    frame = pd.concat(frames, ignore_index=True)
    return frame[(frame["time"] >= since) & (frame["time"] < until)].reset_index(drop=True)
