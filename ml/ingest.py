"""Turn a committed landing batch into a curated batch, or quarantine it with the reason.

A landing batch is ``landing/<batch_id>/images/<label>/<file>`` plus a ``_COMMITTED`` marker
written last by the producer. Ingest reads only inside the batch root, builds the manifest,
validates it with Great Expectations and writes either

* ``curated/<batch_id>/shards/images.npy`` (uint8 NHWC at the model's input size), then
  ``curated/<batch_id>/manifest.parquet`` last, so that a reader never sees half a batch; or
* ``quarantine/<batch_id>/report.json`` naming each failed rule and its rows, plus the manifest.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml import layout
from ml.config import Settings
from ml.errors import BatchNotFound, CtError, InfrastructureUnavailable, NothingToDo, UnsafePath
from ml.storage import Lake, LocalLake, clean_key

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "batch_id", "uri", "label", "path_ok", "decode_ok", "mode_ok", "error", "width", "height", "channels", "mode",
    "mean", "std", "min", "max", "bright", "bytes", "sha256", "dup_of", "split", "row",
]  # fmt: skip
NATIVE_MODES = frozenset({"1", "L", "P", "RGB"})
HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


class UnsupportedMode(ValueError):
    """The image decoded, but its mode is one the configuration rejects."""


class DecompressionBomb(ValueError):
    """The header promises more pixels than ``image.max_pixels``; nothing was decoded."""


def committed_batches(lake: Lake) -> list[str]:
    """Landing batches whose producer wrote the commit marker; the others are still being written."""
    return [b for b in lake.list_children(layout.LANDING) if lake.exists(layout.commit_marker(b))]


def curated_batches(lake: Lake) -> list[str]:
    return [b for b in lake.list_children(layout.CURATED) if lake.exists(layout.manifest(b))]


def quarantined_batches(lake: Lake) -> list[str]:
    return [b for b in lake.list_children(layout.QUARANTINE) if lake.exists(layout.quarantine_report(b))]


def golden_source_batches(lake: Lake) -> set[str]:
    """Landing batches frozen into golden sets: evaluation only, never curated for training."""
    return {lake.read_json(layout.golden_source(n))["batch_id"] for n in lake.list_children(layout.GOLDEN)
            if lake.exists(layout.golden_source(n))}  # fmt: skip


def pending_batches(lake: Lake) -> list[str]:
    """Committed batches that have been neither curated, quarantined nor frozen as a golden set."""
    done = set(curated_batches(lake)) | set(quarantined_batches(lake)) | golden_source_batches(lake)
    return [b for b in committed_batches(lake) if b not in done]


def split_for(sha256: str, fractions: tuple[float, float, float]) -> str:
    """Train/val/test from the content hash: stable across reruns, and duplicates share a split."""
    position = int(sha256[:12], 16) / float(1 << 48)
    if position < fractions[0]:
        return "train"
    if position < fractions[0] + fractions[1]:
        return "val"
    return "test"


@dataclass(frozen=True)
class _Entry:
    relpath: str  # relative to the batch root, '/'-separated
    path_ok: bool
    error: str = ""


def _list_entries(lake: Lake, batch_id: str) -> list[_Entry]:
    """Every file under the batch's ``images/``, flagging any path that leaves the batch root."""
    root_key = layout.landing(batch_id)
    if isinstance(lake, LocalLake):
        root = lake.path(root_key)
        real_root = os.path.realpath(root)
        entries = []
        for dirpath, dirnames, filenames in os.walk(root / "images", followlinks=False):
            # Symlinked folders are not walked into; they are reported like any other entry.
            names = filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            for name in names:
                full = os.path.join(dirpath, name)
                rel = Path(full).relative_to(root).as_posix()
                real = os.path.realpath(full)
                inside = os.path.commonpath([real_root, real]) == real_root
                if not inside:
                    entries.append(_Entry(rel, False, "resolves outside the batch root"))
                elif not os.path.isfile(real):
                    entries.append(_Entry(rel, False, "not a regular file"))
                else:
                    entries.append(_Entry(rel, True))
        return sorted(entries, key=lambda e: e.relpath)
    entries = []
    for key in lake.list_keys(layout.join(root_key, "images")):
        rel = key[len(root_key) + 1 :]
        try:
            # A key that only normalises to a safe path ("a//b", "a/./b") is refused too: it is not
            # the object we would read.
            if clean_key(rel) != rel:
                raise UnsafePath(f"lake key {rel!r} is not a normalised path")
            entries.append(_Entry(rel, True))
        except UnsafePath as exc:
            entries.append(_Entry(rel, False, str(exc)))
    return entries


def _normalise(img: Any, settings: Settings) -> Any:
    """Bring any decoded mode to 8-bit L or RGB, or refuse it when ``ingest.unsupported_modes=reject``."""
    import numpy as np
    from PIL import Image

    mode = img.mode
    transparent = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if mode not in NATIVE_MODES or transparent:
        if settings.ingest.unsupported_modes == "reject":
            kind = "alpha" if transparent else "16/32-bit" if mode in HIGH_DEPTH_MODES else mode
            raise UnsupportedMode(f"unsupported mode {mode} ({kind}); ingest.unsupported_modes=reject")
        if mode in HIGH_DEPTH_MODES:
            # 16-bit integer images span 0..65535; float images are taken as 0..255 already.
            scale = 1.0 if mode == "F" else 257.0
            img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) / scale, 0, 255).astype(np.uint8), "L")
        elif transparent:
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return img.convert("L" if settings.image.channels == 1 else "RGB")


def _decode(data: bytes, settings: Settings) -> tuple[dict[str, Any], np.ndarray]:
    """Decode one image safely and return its stats plus the model-sized uint8 array."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        # The header gives the size before any pixel is decoded: refuse bombs here.
        if img.width * img.height > settings.image.max_pixels:
            raise DecompressionBomb(
                f"decompression bomb: {img.width}x{img.height} = {img.width * img.height:,} pixels "
                f"exceeds image.max_pixels={settings.image.max_pixels:,}"
            )
        img.load()
        mode = img.mode
        bands = len(img.getbands())
        converted = _normalise(img, settings)
    stats, pixels = describe(converted, settings)
    return {**stats, "channels": bands, "mode": mode}, pixels


def describe(image: Any, settings: Settings) -> tuple[dict[str, Any], np.ndarray]:
    """Stats of an 8-bit L/RGB image (what drift compares) and its model-sized uint8 HWC array."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image, dtype=np.uint8)
    stats = {
        "width": image.width,
        "height": image.height,
        "mean": float(pixels.mean()),
        "std": float(pixels.std()),
        "min": float(pixels.min()),
        "max": float(pixels.max()),
        "bright": float((pixels > 127).mean()),
    }
    size = settings.image.size
    resized = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return stats, resized.reshape(size, size, settings.image.channels)


def _decode_error(data: bytes, exc: Exception) -> str:
    """A reason a person can act on, without the decoder's object reprs."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        return "empty file (0 bytes)"
    if isinstance(exc, DecompressionBomb):
        return str(exc)
    if isinstance(exc, Image.DecompressionBombError):  # PIL's own, larger limit tripped first in open()
        return f"decompression bomb: {exc}"
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format"
    return f"{type(exc).__name__}: {exc}"[:300]


def known_hashes(lake: Lake) -> dict[str, str]:
    """sha256 -> where it already lives (``curated:<batch>`` or ``golden:<name>``), for cross-batch duplicates."""
    import pandas as pd

    found: dict[str, str] = {}
    for root in (layout.GOLDEN, layout.CURATED):
        for dataset in lake.list_children(root):
            if not lake.exists(layout.manifest(dataset, root)):
                continue
            with lake.local_file(layout.manifest(dataset, root)) as path:
                hashes = pd.read_parquet(path, columns=["sha256"])["sha256"]
            found.update(dict.fromkeys(hashes, f"{root}:{dataset}"))
    return found


def build_manifest(lake: Lake, batch_id: str, settings: Settings) -> tuple[pd.DataFrame, np.ndarray]:
    """One manifest row per file in the batch, and the decoded images of the rows that decoded."""
    import numpy as np
    import pandas as pd

    if not lake.exists(layout.commit_marker(batch_id)):
        raise BatchNotFound(
            f"no committed landing batch {batch_id!r}: {lake.uri(layout.commit_marker(batch_id))} is missing"
        )
    elsewhere = known_hashes(lake)
    first_seen: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    images: list[np.ndarray] = []
    for entry in _list_entries(lake, batch_id):
        parts = entry.relpath.split("/")
        row: dict[str, Any] = {
            "batch_id": batch_id,
            "uri": lake.uri(layout.join(layout.landing(batch_id), entry.relpath)) if entry.path_ok else entry.relpath,
            "label": parts[1] if len(parts) == 3 else "",
            "path_ok": entry.path_ok,
            # None: not known, so other rules skip the row. A path that leaves the batch is never read.
            "decode_ok": None,
            "mode_ok": None,
            "error": entry.error,
            "row": -1,
        }
        if entry.path_ok:
            data = lake.read_bytes(layout.join(layout.landing(batch_id), entry.relpath))
            digest = hashlib.sha256(data).hexdigest()
            row.update(bytes=len(data), sha256=digest, split=split_for(digest, settings.ingest.split_fractions))
            row["dup_of"] = elsewhere.get(digest) or first_seen.get(digest, "")
            first_seen.setdefault(digest, f"this batch:{entry.relpath}")
            row["decode_ok"] = False
            try:
                stats, pixels = _decode(data, settings)
            except UnsupportedMode as exc:
                row.update(decode_ok=True, mode_ok=False, error=str(exc))
            except Exception as exc:  # noqa: BLE001 - any decoder failure is a property of the file
                row["error"] = _decode_error(data, exc)
            else:
                row.update(stats, decode_ok=True, mode_ok=True, row=len(images))
                images.append(pixels)
        rows.append(row)
    manifest = pd.DataFrame(rows).reindex(columns=MANIFEST_COLUMNS)
    manifest = manifest.astype(
        {"path_ok": bool, "decode_ok": "boolean", "mode_ok": "boolean", "row": "int64", "label": str, "error": str}
    )
    size, channels = settings.image.size, settings.image.channels
    stacked = np.stack(images) if images else np.zeros((0, size, size, channels), dtype=np.uint8)
    return manifest, stacked


def ingest_batch(
    lake: Lake, batch_id: str, settings: Settings, root: str = layout.CURATED, dataset_id: str | None = None
) -> dict[str, Any]:
    """Curate (into ``root/dataset_id``) or quarantine one batch. Re-running a curated batch changes nothing."""
    import numpy as np

    from ml.validate import render_html, validate_manifest

    dataset_id = dataset_id or batch_id
    if lake.exists(layout.manifest(dataset_id, root)):
        log.info("batch %s is already in %s/%s; nothing to redo", batch_id, root, dataset_id)
        return {"batch_id": batch_id, "status": "curated", "already_done": True,
                **_curated_summary(lake, dataset_id, root)}  # fmt: skip

    manifest, images = build_manifest(lake, batch_id, settings)
    outcome = validate_manifest(manifest, settings)
    dropped = manifest.iloc[0:0]
    if not outcome.success and settings.ingest.on_bad_rows == "drop":
        bad = outcome.rows_to_drop(settings.ingest.always_fail_rules)
        if bad:
            # Row-level failures only: drop those rows (with a record), then the rest must pass on its own.
            reasons = {uri: f.rule for f in outcome.failures for uri in f.uris}
            dropped = manifest[manifest["uri"].isin(bad)].assign(dropped_by=lambda d: d["uri"].map(reasons))
            manifest = manifest[~manifest["uri"].isin(bad)].reset_index(drop=True)
            first_pass = outcome
            outcome = validate_manifest(manifest, settings)
            lake.write_json(
                layout.report(layout.INGEST_DAG, batch_id, "validation_before_drop.json"), first_pass.summary()
            )
    report_dir = layout.report(layout.INGEST_DAG, batch_id, "")
    lake.write_json(layout.join(report_dir, "validation.json"), outcome.gx_results)
    lake.write_bytes(layout.join(report_dir, "validation.html"), render_html(batch_id, outcome, len(dropped)).encode())
    if not outcome.success:
        report = {
            "batch_id": batch_id,
            "status": "quarantined",
            "rows": len(manifest),
            "failed_rules": [f.rule for f in outcome.failures],
            **outcome.summary(),
            "validation_uri": lake.uri(layout.join(report_dir, "validation.html")),
            "landing_uri": lake.uri(layout.landing(batch_id)),
        }
        _write_parquet(lake, layout.quarantine_manifest(batch_id), manifest)
        lake.write_json(layout.quarantine_report(batch_id), report)
        log.warning("batch %s quarantined: %s", batch_id, ", ".join(report["failed_rules"]))
        return {
            "batch_id": batch_id,
            "status": "quarantined",
            "failed_rules": report["failed_rules"],
            "report_uri": lake.uri(layout.quarantine_report(batch_id)),
        }

    with tempfile.TemporaryDirectory(prefix="ct-ingest-") as tmp:
        shard = Path(tmp) / "images.npy"
        np.save(shard, images[manifest["row"].to_numpy()])
        lake.write_file(layout.shard(dataset_id, root), shard)
    manifest = manifest.assign(row=np.arange(len(manifest), dtype=np.int64))
    if len(dropped):
        _write_parquet(lake, layout.join(root, dataset_id, "dropped.parquet"), dropped)
        lake.write_json(
            layout.report(layout.INGEST_DAG, batch_id, "dropped.json"),
            dropped[["uri", "dropped_by", "error"]].to_dict(orient="records"),
        )
    # The manifest is written last: its presence is what makes the batch curated.
    _write_parquet(lake, layout.manifest(dataset_id, root), manifest)
    if lake.exists(layout.quarantine_report(batch_id)):
        lake.delete_prefix(layout.quarantine(batch_id))  # an earlier rejection was fixed by configuration
    log.info("batch %s curated: %d images, %d dropped", batch_id, len(manifest), len(dropped))
    summary = _curated_summary(lake, dataset_id, root)
    return {"batch_id": batch_id, "status": "curated", "already_done": False, "dropped": len(dropped), **summary}


def ingest_many(lake: Lake, batch_ids: list[str] | None, settings: Settings) -> dict[str, Any]:
    """Ingest the given batches (None: every pending one), each on its own.

    One batch's failure never stops the others: an unexpected error quarantines that batch with the
    rule ``ingest_error`` and the loop goes on. An outage (:class:`InfrastructureUnavailable`) stops
    the step instead, so that the task retries and no batch is quarantined for the service's fault.
    """
    ids = list(dict.fromkeys(batch_ids or [])) or pending_batches(lake)
    if not ids:
        raise NothingToDo("no committed landing batch is waiting to be ingested")
    results = []
    for batch_id in ids:
        try:
            results.append(ingest_batch(lake, batch_id, settings))
        except (InfrastructureUnavailable, BatchNotFound):
            raise
        except Exception as exc:
            from ml.outage import outage

            if (unavailable := outage(exc)) is not None:
                raise unavailable from exc
            log.exception("batch %s could not be ingested; quarantining it and going on", batch_id)
            results.append(quarantine_unexpected(lake, batch_id, exc))
    return {
        "batches": results,
        "curated": [r["batch_id"] for r in results if r["status"] == "curated"],
        "quarantined": [r for r in results if r["status"] == "quarantined"],
    }


def quarantine_unexpected(lake: Lake, batch_id: str, exc: BaseException) -> dict[str, Any]:
    """Quarantine a batch whose ingest crashed, with the error, so that it cannot wedge the queue."""
    reason = f"{type(exc).__name__}: {exc}"[:2000]
    failure: dict[str, Any] = {"rule": "ingest_error", "level": "batch", "expectation": None, "unexpected_count": 0,
               "why": "ingest raised an unexpected error on this batch; the others went on", "observed": reason,
               "sample_rows": []}  # fmt: skip
    report = {"batch_id": batch_id, "status": "quarantined", "rows": 0, "failed_rules": ["ingest_error"],
              "success": False, "failures": [failure], "landing_uri": lake.uri(layout.landing(batch_id))}  # fmt: skip
    lake.write_json(layout.quarantine_report(batch_id), report)
    return {"batch_id": batch_id, "status": "quarantined", "failed_rules": ["ingest_error"],
            "report_uri": lake.uri(layout.quarantine_report(batch_id))}  # fmt: skip


def freeze_golden(lake: Lake, batch_id: str, name: str, settings: Settings) -> dict[str, Any]:
    """Validate a committed landing batch into ``golden/<name>``: a frozen set added to every evaluation."""
    if lake.exists(layout.golden_source(name)):
        source = lake.read_json(layout.golden_source(name))
        if source["batch_id"] != batch_id:
            raise CtError(f"golden set {name!r} is frozen from batch {source['batch_id']}; choose another name")
    if batch_id in curated_batches(lake):
        raise CtError(f"batch {batch_id} is already curated for training; a golden set must be data no model trains on")
    result = ingest_batch(lake, batch_id, settings, root=layout.GOLDEN, dataset_id=name)
    if result["status"] == "curated":
        lake.write_json(layout.golden_source(name), {"batch_id": batch_id, "name": name})
    return {**result, "golden_set": name}


def _curated_summary(lake: Lake, dataset_id: str, root: str = layout.CURATED) -> dict[str, Any]:
    manifest = read_manifest(lake, dataset_id, root)
    return {
        "images": len(manifest),
        "splits": {str(k): int(v) for k, v in manifest["split"].value_counts().sort_index().items()},
        "manifest_uri": lake.uri(layout.manifest(dataset_id, root)),
    }


def _write_parquet(lake: Lake, key: str, frame: pd.DataFrame) -> None:
    with tempfile.TemporaryDirectory(prefix="ct-parquet-") as tmp:
        path = Path(tmp) / "frame.parquet"
        frame.to_parquet(path, index=False)
        lake.write_file(key, path)


def read_manifest(lake: Lake, batch_id: str, root: str = layout.CURATED) -> pd.DataFrame:
    import pandas as pd

    with lake.local_file(layout.manifest(batch_id, root)) as path:
        return pd.read_parquet(path)


def manifest_hash(lake: Lake, batch_id: str) -> str:
    """The content hash of a curated manifest: what a model's data window records."""
    return hashlib.sha256(lake.read_bytes(layout.manifest(batch_id))).hexdigest()


def load_images(lake: Lake, batch_id: str, root: str = layout.CURATED) -> np.ndarray:
    """The batch's shard: memory-mapped when the lake is local."""
    import numpy as np

    if isinstance(lake, LocalLake):
        return np.load(lake.path(layout.shard(batch_id, root)), mmap_mode="r")
    with lake.local_file(layout.shard(batch_id, root)) as path:
        return np.load(path)
