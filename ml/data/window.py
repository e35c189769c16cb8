"""The data window of a retrain run: which batches are new, which train, which evaluate, as of the run's time.

A run stands for a moment ``as_of`` (its logical date). It sees the batches available then
(:mod:`ml.data.availability`: a backfill only those, a live run all it has bar those dated later),
the champion of that moment and the policy memory of that moment
(:class:`World`: the live alias and ``state/policy.json`` for a live run, the decision history for a
backfill). The window is planned once per ``run_key`` and pinned in
``reports/ct_retrain/<run_key>/window.json`` with where each of the three came from, so retries
and reruns of the same run see exactly the same data even if new batches arrived, and a reader can
check what the run saw.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ml import layout
from ml.config import Settings
from ml.data.availability import Availability, available_batches, iso
from ml.data.ingest import curated_batches, manifest_hash, read_manifest
from ml.storage import Lake

log = logging.getLogger(__name__)

POLICY_STATE = "policy.json"


@dataclass(frozen=True)
class World:
    """What a run at ``as_of`` knew besides the data: the champion then, and the policy memory then."""

    champion_version: str | None
    reference_batches: list[str]  # what that champion was trained on
    champion_source: dict[str, Any]  # where the champion came from: the live alias, or the decision history
    considered_batches: set[str]  # batches earlier decisions had already looked at
    policy_source: dict[str, Any]  # where that memory came from, with the memory itself


@dataclass(frozen=True)
class Window:
    run_key: str
    champion_version: str | None
    reference_batches: list[str]  # what the champion was trained on
    new_batches: list[str]  # available, and not yet considered by any retrain decision
    train_batches: list[str]  # every batch available at as_of: what a candidate trains on
    eval_batches: list[str]  # the newest of them, whose test splits score both models
    manifest_hashes: dict[str, str] = field(default_factory=dict)
    new_images: int = 0
    as_of: float | None = None  # the time the run stands for (epoch seconds); None: planned before ct kept it
    backfill: bool = False  # a replay of the past: never moves @champion, spends no alpha, keeps no memory
    replay: str | None = None  # the replay's id (settings and force digest) for a backfill
    sources: dict[str, Any] = field(default_factory=dict)  # where the batches, champion and policy memory came from

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "as_of_iso": iso(self.as_of)}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Window:
        return Window(**{k: v for k, v in data.items() if k in Window.__dataclass_fields__})

    def empty_reason(self) -> str:
        """Why a window has no data at all: nothing curated yet, or nothing yet at its time."""
        batches = self.sources.get("batches") or {}
        later = batches.get("not_yet_available") or {}
        if not later:
            return "no curated data yet"
        first = min(later.items(), key=lambda item: item[1].get("at") or 0.0)
        return (f"no data as of {iso(self.as_of)}: no batch was available yet (the first, {first[0]}, "
                f"became available at {first[1].get('at_iso')})")  # fmt: skip


def window_key(run_key: str) -> str:
    return layout.report(layout.RETRAIN_DAG, run_key, "window.json")


def plan_window(
    lake: Lake,
    settings: Settings,
    run_key: str,
    world: Callable[[], World],
    as_of: float | None = None,
    replay: str | None = None,
) -> Window:
    """Plan the window for ``run_key`` at ``as_of``, or return the one already pinned for it.

    ``world`` resolves the champion and the policy memory of the run's time; it is called only
    when the window is planned, so a rerun never re-resolves a champion that has moved since.
    ``replay`` (a backfill's id) makes the window a backfill's.
    """
    key = window_key(run_key)
    if lake.exists(key):
        return Window.from_dict(lake.read_json(key))
    seen = world()
    availability: Availability = available_batches(lake, sorted(curated_batches(lake)), as_of,
                                                   settings.history.batch_time, live=replay is None)  # fmt: skip
    curated = availability.available
    considered = seen.considered_batches | set(seen.reference_batches)
    new = [b for b in curated if b not in considered]
    new_images = sum(int((read_manifest(lake, b)["split"] == "train").sum()) for b in new)
    window = Window(
        run_key=run_key,
        champion_version=seen.champion_version,
        reference_batches=sorted(seen.reference_batches),
        new_batches=new,
        train_batches=curated,
        eval_batches=curated[-settings.gate.eval_recent_batches :],
        manifest_hashes={b: manifest_hash(lake, b) for b in curated},
        new_images=new_images,
        as_of=as_of,
        backfill=replay is not None,
        replay=replay,
        sources={"batches": availability.to_dict(), "champion": seen.champion_source, "policy": seen.policy_source},
    )
    lake.write_json(key, window.to_dict())
    log.info("window %s as of %s: %d new batches, %d to train, eval on %s, champion %s", run_key, iso(as_of),
             len(new), len(curated), window.eval_batches, seen.champion_version)  # fmt: skip
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
