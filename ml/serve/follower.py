"""Follow ``@champion``: load the version it points at, check it, then swap it in; never serve nothing.

A background thread reads the alias every ``serve.poll_seconds``. When it moved (a promotion, a
rollback, a forced promotion), the new version is downloaded and loaded beside the one serving,
asked to answer its own input example, and only then made current: one reference assignment, so a
request in flight finishes on the model it started with and the next one gets the new model. A
version that is missing, corrupt or answers wrongly is not swapped in: the old one keeps serving,
the failure is logged, counted and reported (``on_problem``), and the version is retried after
``serve.retry_seconds``. An MLflow that does not answer changes nothing either.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.config import Settings
from ml.errors import CtError
from ml.model.pyfunc import ImageClassifier, as_bytes
from ml.release import registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Serving:
    """The model that answers, and which registered version it is."""

    version: str
    run_id: str | None
    model: ImageClassifier
    loaded_at: float


def example_request(folder: Path, model: ImageClassifier) -> list[bytes]:
    """The images to check a version with: the input example stored in its MLmodel, else a blank of its stored size."""
    from ml.learn.mlmodel import example_image

    if (folder / "MLmodel").is_file():
        from mlflow.models import Model

        example: Any = Model.load(str(folder)).load_input_example(str(folder))
        if example is not None and "image" in example:
            return [as_bytes(cell, row) for row, cell in enumerate(example["image"])]
    return [example_image(model.pipeline.store_size, model.pipeline.channels)]


def check(model: ImageClassifier, images: list[bytes]) -> None:
    """The loaded model answers: one finite probability row per image, summing to 1, over its own labels."""
    probabilities = model.probabilities(images)
    if probabilities.shape != (len(images), len(model.labels)) or not np.isfinite(probabilities).all():
        raise CtError(
            f"answers {probabilities.shape} probabilities for {len(images)} images of {len(model.labels)} labels"
        )
    if not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4):
        raise CtError("answers probabilities that do not sum to 1")


def load_version(settings: Settings, version: registry.VersionInfo) -> Serving:
    """Download ``version``, load its served form (ct's files inside it) and check it on its input example."""
    from ml.model import artifact

    with registry.downloaded(settings, version) as folder:
        files = artifact.locate(folder)
        if files is None:
            raise CtError(f"version {version.version} holds no spec.json: it is not a model ct stored")
        model = ImageClassifier().load(files, threads=settings.serve.threads)
        check(model, example_request(folder, model))
    return Serving(version.version, version.run_id, model, time.time())


class ChampionFollower:
    """The model behind ``@champion``, kept current by a background thread (:meth:`start`)."""

    def __init__(
        self,
        settings: Settings,
        on_swap: Callable[[Serving, Serving | None], None] | None = None,
        on_problem: Callable[[str, str], None] | None = None,
        loader: Callable[[Settings, registry.VersionInfo], Serving] = load_version,
    ) -> None:
        self.settings = settings
        self.current: Serving | None = None
        self._failed: dict[str, float] = {}  # version -> when it last failed to load
        self._on_swap, self._on_problem, self._loader = on_swap, on_problem, loader
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: Any = None

    def refresh(self) -> bool:
        """Read ``@champion`` once and swap to it if it moved and loads; True when a swap happened."""
        from ml.errors import InfrastructureUnavailable

        try:
            if self._client is None:
                self._client = registry.client(self.settings)
            found = registry.champion(self._client, self.settings.model_name)
        except InfrastructureUnavailable as exc:
            log.warning("cannot read @champion (%s); still serving v%s", exc, self.current and self.current.version)
            return False
        except CtError as exc:  # the alias points at a deleted version: keep what serves
            self._problem(None, str(exc))
            return False
        if found is None or (self.current is not None and found.version == self.current.version):
            return False
        failed_at = self._failed.get(found.version)
        if failed_at is not None and time.time() - failed_at < self.settings.serve.retry_seconds:
            return False
        try:
            loaded = self._loader(self.settings, found)
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with the new version, the old one keeps serving
            self._failed[found.version] = time.time()
            self._problem(found.version, f"{type(exc).__name__}: {exc}")
            return False
        previous, self.current = self.current, loaded  # the swap: one assignment, no request sees a half state
        self._failed.pop(found.version, None)
        log.info("now serving v%s of %s (was v%s)", loaded.version, self.settings.model_name,
                 previous.version if previous else "none")  # fmt: skip
        if self._on_swap:
            self._on_swap(loaded, previous)
        return True

    def _problem(self, version: str | None, message: str) -> None:
        serving = self.current.version if self.current else "none"
        text = (
            f"@champion v{version} of {self.settings.model_name} cannot be served: {message}; v{serving} keeps serving"
        )
        log.error("%s", text)
        if self._on_problem:
            self._on_problem(version or "?", text)

    def start(self) -> None:
        """Load the champion now (if there is one), then follow it in the background."""
        self._refresh_logged()
        self._thread = threading.Thread(target=self._follow, name="ct-champion-follower", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.wait(self.settings.serve.poll_seconds):
            self._refresh_logged()

    def _refresh_logged(self) -> None:
        """One refresh whatever goes wrong in it: the follower outlives any one failed look at the registry."""
        try:
            self.refresh()
        except Exception as exc:  # noqa: BLE001 - e.g. MLflow's client giving up its own retries; the next poll tries again
            log.warning("could not read @champion (%s: %s); still serving v%s", type(exc).__name__, exc,
                        self.current.version if self.current else "none")  # fmt: skip

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
