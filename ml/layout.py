"""Where things live in the lake: the one place that spells out the key layout."""

from __future__ import annotations

import re
import time

from ml.storage import join

LANDING = "landing"
CURATED = "curated"
QUARANTINE = "quarantine"
GOLDEN = "golden"
REPORTS = "reports"
STATE = "state"
CHECKPOINTS = "checkpoints"
PREDICTIONS = "predictions"
FEEDBACK = "feedback"
COMMIT_MARKER = "_COMMITTED"

INGEST_DAG = "ct_ingest"
RETRAIN_DAG = "ct_retrain"
OPS_DAG = "ct_ops"
MONITOR_DAG = "ct_monitor"

__all__ = ["join"]  # re-exported: callers build keys with layout.join

#: The one rule for batch ids, run keys and golden-set names, everywhere: the CLI, the landing
#: watcher, ``ct_ingest``'s Params and the lake keys. Short enough to be a file name on any disk.
ID_PATTERN = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
ID_RULE = "1 to 128 of letters, digits, '.', '_' and '-', not starting with '.'"
_ID = re.compile(ID_PATTERN)


def id_problem(value: str) -> str | None:
    """Why ``value`` is not a valid batch id / run key, or None when it is."""
    if _ID.fullmatch(value):
        return None
    shown = value if len(value) <= 60 else f"{value[:57]}..."
    return f"{shown!r} is not a valid id: use {ID_RULE}"


def landing(batch_id: str) -> str:
    return join(LANDING, batch_id)


def commit_marker(batch_id: str) -> str:
    return join(LANDING, batch_id, COMMIT_MARKER)


def dataset(batch_id: str, root: str = CURATED) -> str:
    """The folder of a curated batch (or golden set): everything ingest writes for it, the manifest last."""
    return join(root, batch_id)


def manifest(batch_id: str, root: str = CURATED) -> str:
    return join(root, batch_id, "manifest.parquet")


def batch_record(batch_id: str, root: str = CURATED) -> str:
    """When a curated batch became available: ct's curation time and its producer's event time (:mod:`ml.data.availability`)."""
    return join(root, batch_id, "batch.json")


def shards(batch_id: str, root: str = CURATED) -> str:
    """The folder of a curated batch's training-ready shards (:mod:`ml.training.shards`)."""
    return join(root, batch_id, "shards")


def shard(batch_id: str, name: str, root: str = CURATED) -> str:
    return join(shards(batch_id, root), name)


#: The one shard of a batch curated before fixed-size shards (its manifest has no ``shard`` column).
LEGACY_SHARD = "images.npy"


def golden_source(name: str) -> str:
    return join(GOLDEN, name, "source.json")


def quarantine(batch_id: str) -> str:
    return join(QUARANTINE, batch_id)


def quarantine_report(batch_id: str) -> str:
    return join(QUARANTINE, batch_id, "report.json")


def quarantine_manifest(batch_id: str) -> str:
    return join(QUARANTINE, batch_id, "manifest.parquet")


def report(dag_id: str, run_key: str, name: str) -> str:
    return join(REPORTS, dag_id, run_key, name)


def checkpoint(run_key: str) -> str:
    """The training checkpoint of a run: what a rerun resumes from (deleted once the version is registered)."""
    return join(CHECKPOINTS, run_key, "latest.pt")


def state(name: str) -> str:
    return join(STATE, name)


def prediction_log(epoch: float, part: str) -> str:
    """One file of the prediction log: ``predictions/<YYYY-MM-DD>/<HH>/<stamp>-<part>.parquet``, by the hour it holds."""
    day, hour = time.strftime("%Y-%m-%d", time.gmtime(epoch)), time.strftime("%H", time.gmtime(epoch))
    return join(PREDICTIONS, day, hour, f"{time_stamp(epoch)}-{part}.parquet")


def prediction_hour(epoch: float) -> str:
    """The folder of one hour of the prediction log."""
    return join(PREDICTIONS, time.strftime("%Y-%m-%d/%H", time.gmtime(epoch)))


def served_image(sha256: str) -> str:
    """A served image kept by ``serve.keep_images``, by its content hash."""
    return join(PREDICTIONS, "images", sha256[:2], sha256)


def feedback(batch_id: str) -> str:
    """The late labels of one feedback batch (``request_id``, ``label``), validated: ``feedback/<batch_id>.parquet``."""
    return join(FEEDBACK, f"{batch_id}.parquet")


#: ``state/monitor/latest.json``: ct_monitor's latest verdict on the champion, which the retrain policy reads.
MONITOR_LATEST = join(STATE, "monitor", "latest.json")


#: ``state/runs/``: one record per retrain decision, live or replayed, named by the time the run stands for.
RUNS = "runs"
#: ``state/replays/``: what each replay (a backfill's settings and force) was, by its id.
REPLAYS = "replays"


def time_stamp(epoch: float) -> str:
    """A sortable UTC stamp with microseconds, ``20260103T030000.000000``: keys named by it list in time order."""
    seconds, micros = divmod(round(epoch * 1e6), 1_000_000)  # rounding up to a whole second carries into it
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds)) + f".{micros:06d}"
