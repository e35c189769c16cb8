"""The data window of a retrain run: which batches are new, which train, which evaluate.

The window is planned once per ``run_key`` and pinned in ``reports/ct_retrain/<run_key>/window.json``,
so retries and reruns of the same DAG run see exactly the same data even if new batches arrived.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ml import layout
from ml.config import Settings
from ml.data.ingest import curated_batches, manifest_hash, read_manifest
from ml.storage import Lake

log = logging.getLogger(__name__)

POLICY_STATE = "policy.json"


@dataclass(frozen=True)
class Window:
    run_key: str
    champion_version: str | None
    reference_batches: list[str]  # what the champion was trained on
    new_batches: list[str]  # curated, and not yet considered by any retrain decision
    train_batches: list[str]  # every curated batch up to this run: what a candidate trains on
    eval_batches: list[str]  # the newest batches, whose test splits score both models
    manifest_hashes: dict[str, str] = field(default_factory=dict)
    new_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Window:
        return Window(**data)


def window_key(run_key: str) -> str:
    return layout.report(layout.RETRAIN_DAG, run_key, "window.json")


def considered_batches(lake: Lake) -> set[str]:
    """Batches that an earlier retrain decision already looked at (policy memory in ``state/``)."""
    return set(lake.read_json_or(layout.state(POLICY_STATE), {}).get("considered_batches", []))


def plan_window(
    lake: Lake, settings: Settings, run_key: str, champion: Callable[[], tuple[str | None, list[str]]]
) -> Window:
    """Plan the window for ``run_key``, or return the one already pinned for it.

    ``champion`` resolves the current champion's version and training batches; it is called only
    when the window is planned, so a rerun never re-resolves a champion that has moved since.
    """
    key = window_key(run_key)
    if lake.exists(key):
        return Window.from_dict(lake.read_json(key))
    champion_version, reference_batches = champion()
    curated = sorted(curated_batches(lake))
    seen = considered_batches(lake) | set(reference_batches)
    new = [b for b in curated if b not in seen]
    new_images = sum(int((read_manifest(lake, b)["split"] == "train").sum()) for b in new)
    window = Window(
        run_key=run_key,
        champion_version=champion_version,
        reference_batches=sorted(reference_batches),
        new_batches=new,
        train_batches=curated,
        eval_batches=curated[-settings.gate.eval_recent_batches :],
        manifest_hashes={b: manifest_hash(lake, b) for b in curated},
        new_images=new_images,
    )
    lake.write_json(key, window.to_dict())
    log.info("window %s: %d new batches, %d to train, eval on %s", run_key, len(new), len(curated), window.eval_batches)
    return window


def load_window(lake: Lake, run_key: str) -> Window:
    from ml.errors import CtError

    key = window_key(run_key)
    if not lake.exists(key):
        raise CtError(f"no data window for run {run_key!r} at {lake.uri(key)}; run the drift step of this run first")
    return Window.from_dict(lake.read_json(key))


def trained_batches(lake: Lake, window_uri: str | None) -> list[str]:
    """The batches a registered version was trained on, read from its pinned window."""
    if not window_uri or not window_uri.startswith(lake.root_uri + "/"):
        if window_uri:
            log.warning("window %s is not in this lake (%s)", window_uri, lake.root_uri)
        return []
    key = window_uri[len(lake.root_uri) + 1 :]
    if not lake.exists(key):
        log.warning("window %s is missing", window_uri)
        return []
    return list(Window.from_dict(lake.read_json(key)).train_batches)
