"""Land a folder of labelled images (local, or an S3 prefix) in the lake as one committed batch.

The source holds one folder per label, ``<source>/<label>/<file>`` (or already
``<source>/images/<label>/<file>``). Landing copies every file, unchanged, to
``landing/<batch_id>/images/<label>/<file>`` and writes the ``_COMMITTED`` marker last, with the
event time if one is given; ``ct_ingest`` (or ``python -m ml ingest``) then curates or quarantines it.
Nothing is filtered on the way but the files systems and tools keep beside photos (hidden names such
as ``.DS_Store`` or ``._IMG_1.jpg``, and ``Thumbs.db``), which are listed as ``not_landed``: a
misplaced or unreadable file lands too, and ingest names it.

A dry run lands the batch in a scratch lake instead, runs ingest's own checks on it (the same
code, the same rules, the configured settings) and reports what would be curated and every file
that would be refused, with its rule. It writes nothing to the lake. (Duplicates of images
already curated are not looked up: the scratch lake has none.)

Landing is idempotent: a batch whose marker is in place is not landed again; one whose landing was
interrupted is completed (every file is written whole or not at all, the marker last).

A CSV file instead of a folder is a **feedback batch**: late labels of served predictions
(``request_id,label``; :mod:`ml.data.feedback`). It lands as ``landing/<batch_id>/feedback.csv``,
and ingest checks it by its own rules.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from ml import layout
from ml.config import Settings
from ml.errors import BatchNotFound, UsageError
from ml.storage import Lake, LocalLake

log = logging.getLogger(__name__)


def _source_files(source: str) -> tuple[Lake, dict[str, int]]:
    """(a reader of the source, {relative path: size}) for a local folder or a lake URI (file://, s3://)."""
    reader = Lake.from_uri(source) if "://" in source else LocalLake(Path(source).expanduser().resolve())
    if isinstance(reader, LocalLake):
        if not reader.root.is_dir():
            raise UsageError(f"{source} is not a folder: give a folder with one subfolder per label")
        sizes = {path.relative_to(reader.root).as_posix(): path.stat().st_size
                 for path in sorted(reader.root.rglob("*")) if path.is_file() and not path.is_symlink()}  # fmt: skip
    else:
        sizes = reader.list_sizes("")
    if not sizes:
        raise BatchNotFound(f"{source} holds no files: nothing to land")
    return reader, sizes


def hidden(relpath: str) -> bool:
    """A file the system or a tool keeps beside the photos (``.DS_Store``, ``._IMG_1.jpg``, ``.git/...``), not one."""
    return any(part.startswith(".") for part in relpath.split("/")) or relpath.rsplit("/", 1)[-1] == "Thumbs.db"


def plan(sizes: dict[str, int]) -> dict[str, str]:
    """Where each source file goes under ``landing/<batch_id>/``: ``images/`` is added unless the source has it."""
    files = [rel for rel in sizes if rel != layout.COMMIT_MARKER and not hidden(rel)]
    nested = all(rel.startswith("images/") for rel in files)
    return {rel: rel if nested else f"images/{rel}" for rel in sorted(files)}


def _copy(reader: Lake, moves: dict[str, str], lake: Lake, batch_id: str) -> None:
    for rel, target in moves.items():
        lake.write_bytes(layout.join(layout.landing(batch_id), target), reader.read_bytes(rel))


def _marker(event_time: datetime | None) -> bytes:
    return json.dumps({"event_time": event_time.isoformat()}).encode() if event_time else b""


def _labels(moves: dict[str, str]) -> dict[str, int]:
    counts = Counter(target.split("/")[1] for target in moves.values() if target.count("/") == 2)
    return dict(sorted(counts.items()))


def land(
    lake: Lake,
    settings: Settings,
    source: str,
    batch_id: str,
    event_time: datetime | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Land ``source`` as ``landing/<batch_id>`` (or, with ``dry_run``, report what ingest would make of it)."""
    if (problem := layout.id_problem(batch_id)) is not None:
        raise UsageError(problem)
    if source.lower().endswith(".csv") and Path(source).expanduser().is_file():
        return land_feedback(lake, Path(source).expanduser(), batch_id, event_time, dry_run, settings)
    reader, sizes = _source_files(source)
    moves = plan(sizes)
    left = sorted(rel for rel in sizes if rel not in moves and rel != layout.COMMIT_MARKER)
    summary = {"batch_id": batch_id, "source": source, "files": len(moves), "labels": _labels(moves),
               **({"not_landed": left} if left else {})}  # fmt: skip
    if not moves:
        raise BatchNotFound(f"{source} holds no files but hidden ones ({', '.join(left[:5])}): nothing to land")
    if dry_run:
        return {**summary, "dry_run": True, **_rehearse(reader, moves, batch_id, settings, event_time)}
    marker = layout.commit_marker(batch_id)
    if lake.exists(marker):
        log.info("batch %s is landed already (its %s is in place); nothing to redo", batch_id, layout.COMMIT_MARKER)
        return {**summary, "already_done": True, "landing_uri": lake.uri(layout.landing(batch_id))}
    _copy(reader, moves, lake, batch_id)
    lake.write_bytes(marker, _marker(event_time))  # last: the batch is complete before anyone may read it
    log.info("landed %d files as %s", len(moves), lake.uri(layout.landing(batch_id)))
    return {**summary, "already_done": False, "landing_uri": lake.uri(layout.landing(batch_id)),
            "next": f"python -m ml ingest --batch-id {batch_id}  (or let ct_ingest pick it up)"}  # fmt: skip


def land_feedback(
    lake: Lake, path: Path, batch_id: str, event_time: datetime | None, dry_run: bool, settings: Settings
) -> dict[str, Any]:
    """Land a CSV of late labels as a feedback batch; the dry run checks it by ingest's rules and lands nothing."""
    from ml.data import feedback

    raw = path.read_bytes()
    summary = {"batch_id": batch_id, "source": str(path), "kind": "feedback"}
    if dry_run:
        try:
            rows = len(feedback.check(raw, settings.labels))
        except feedback.FeedbackRejected as exc:
            rule = {"rule": exc.rule, "files": 0, "first": [], "observed": exc.why, "fix": exc.fix}
            return {**summary, "dry_run": True, "would_be": "quarantined", "files": 1, "accepted": 0, "rules": [rule]}
        return {**summary, "dry_run": True, "would_be": f"taken as feedback ({rows:,} late labels)", "files": 1,
                "accepted": 1, "rows": rows, "rules": []}  # fmt: skip
    marker = layout.commit_marker(batch_id)
    if not lake.exists(marker):
        lake.write_bytes(layout.join(layout.landing(batch_id), feedback.FILE), raw)
        lake.write_bytes(marker, _marker(event_time))
    return {**summary, "already_done": False, "landing_uri": lake.uri(layout.landing(batch_id)),
            "next": f"python -m ml ingest --batch-id {batch_id}  (or let ct_ingest pick it up)"}  # fmt: skip


def _rehearse(
    reader: Lake, moves: dict[str, str], batch_id: str, settings: Settings, event_time: datetime | None
) -> dict[str, Any]:
    """Ingest's own checks on a copy in a scratch lake: what would be curated, and each file refused with its rule."""
    from ml.data.ingest import build_manifest
    from ml.data.validate import validate_manifest

    with tempfile.TemporaryDirectory(prefix="ct-land-") as tmp:
        scratch = LocalLake(Path(tmp))
        _copy(reader, moves, scratch, batch_id)
        scratch.write_bytes(layout.commit_marker(batch_id), _marker(event_time))
        manifest, _, problems = build_manifest(scratch, batch_id, settings, layout.CURATED, batch_id)
        outcome = validate_manifest(manifest, settings, problems)
        prefix = scratch.uri(layout.landing(batch_id)) + "/"
        refused = {uri.removeprefix(prefix): rules for uri, rules in sorted(outcome.rules_by_uri().items())}
        verdict = "curated" if outcome.success else "quarantined"
        if (
            not outcome.success
            and settings.ingest.on_bad_rows == "drop"
            and outcome.rows_to_drop(settings.ingest.always_fail_rules)
        ):
            verdict = "curated without the refused files, if the rest passes (ingest.on_bad_rows=drop)"
        return {
            "would_be": verdict,
            "accepted": len(manifest) - len(refused),
            "refused": [{"file": name, "rules": rules} for name, rules in refused.items()],
            "rules": [_rule_summary(f, prefix) for f in outcome.failures],
            "failed_rules": sorted({f.rule for f in outcome.failures}),
        }


def _rule_summary(failure: Any, prefix: str) -> dict[str, Any]:
    """One failed rule as a person reads it: how many files, the first few, what was seen and what to do."""
    files = [uri.removeprefix(prefix) for uri in failure.uris]
    return {"rule": failure.rule, "level": failure.level, "files": len(files), "first": files[:SHOWN],
            **({"observed": failure.observed} if failure.observed not in (None, "", []) else {}),
            **({"fix": failure.fix} if failure.fix else {})}  # fmt: skip


#: Files named per rule in the dry run's lines (the JSON lists every refused file).
SHOWN = 3
