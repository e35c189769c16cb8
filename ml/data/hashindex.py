"""The content-hash index: is this image already curated (or frozen in a golden set), and where?

Ingest asks about a whole batch at once. Without an index, answering meant reading the ``sha256``
column of every manifest in the lake, so each batch cost more than the one before. Here:

* every curated (or frozen) dataset has a **segment** under ``state/hash-index/segments/``: its
  sorted, unique SHA-256 digests, 32 bytes each, written right after its manifest (and rewritten
  by a rerun that finds the manifest but not the segment, so a kill in between is repaired);
* every ``COMPACT_AFTER`` segments are merged into a **base**: one sorted array of digests and a
  parallel array naming each digest's dataset. ``base.json`` (written last) names the base file and
  the segments it covers. A segment is never deleted, so a compaction that loses a race with
  another one leaves its segments uncovered, never unindexed.

A lookup reads ``base.json``, the base (34 bytes per indexed image, searched by bisection) and the
segments the base does not cover (fewer than ``COMPACT_AFTER``), instead of every manifest's
``sha256`` column. A lake curated before the index existed is indexed once (:func:`ensure_indexed`).
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterable

import numpy as np

from ml import layout
from ml.storage import Lake

PREFIX = layout.state("hash-index")
SEGMENTS = layout.join(PREFIX, "segments")
BASE = layout.join(PREFIX, "base.json")
COMPACT_AFTER = 16


def segment_key(root: str, dataset: str) -> str:
    return layout.join(SEGMENTS, root, f"{dataset}.npy")


def _digests(hashes: Iterable[str]) -> np.ndarray:
    """Hex SHA-256 strings as a sorted, unique (N, 32) uint8 array."""
    unique = sorted(set(hashes))
    if not unique:
        return np.zeros((0, 32), np.uint8)
    return np.frombuffer(b"".join(bytes.fromhex(h) for h in unique), np.uint8).reshape(-1, 32)


def _to_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _from_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _as_void(digests: np.ndarray) -> np.ndarray:
    """Rows of 32 bytes as one comparable scalar each (sorting and searching on whole digests)."""
    return np.ascontiguousarray(digests).view(np.dtype((np.void, 32))).ravel()


def has_segment(lake: Lake, root: str, dataset: str) -> bool:
    return lake.exists(segment_key(root, dataset))


def add(lake: Lake, root: str, dataset: str, hashes: Iterable[str]) -> None:
    """Index a dataset whose manifest is written; compact when enough segments are uncovered."""
    lake.write_bytes(segment_key(root, dataset), _to_npy(_digests(hashes)))
    base = lake.read_json_or(BASE, None)
    covered = set(base["covers"]) if base else set()
    uncovered = [k for k in lake.list_keys(SEGMENTS) if k not in covered]
    if len(uncovered) >= COMPACT_AFTER:
        compact(lake, base, uncovered)


def ensure_indexed(lake: Lake) -> list[str]:
    """Index the datasets curated before the index existed (once; later calls list two prefixes and stop)."""
    from ml.data.ingest import read_manifest

    have = set(lake.list_keys(SEGMENTS))
    added = []
    for root in (layout.CURATED, layout.GOLDEN):
        for dataset in lake.list_children(root):
            if segment_key(root, dataset) not in have and lake.exists(layout.manifest(dataset, root)):
                add(lake, root, dataset, read_manifest(lake, dataset, root)["sha256"])
                added.append(f"{root}:{dataset}")
    return added


def _location(key: str) -> str:
    """``state/hash-index/segments/curated/b1.npy`` -> ``curated:b1`` (how manifests name a duplicate's home)."""
    root, name = key[len(SEGMENTS) + 1 :].split("/", 1)
    return f"{root}:{name.removesuffix('.npy')}"


def compact(lake: Lake, base: dict | None, uncovered: list[str]) -> None:
    names: list[str] = list(base["names"]) if base else []
    parts, owners = [], []
    if base:
        parts.append(_from_npy(lake.read_bytes(base["digests"])))
        owners.append(_from_npy(lake.read_bytes(base["owners"])))
    for key in uncovered:
        digests = _from_npy(lake.read_bytes(key))
        names.append(_location(key))
        parts.append(digests)
        owners.append(np.full(len(digests), len(names) - 1, np.int32))
    digests = np.concatenate(parts) if parts else np.zeros((0, 32), np.uint8)
    owner = np.concatenate(owners) if owners else np.zeros(0, np.int32)
    order = np.argsort(_as_void(digests), kind="stable")
    token = uuid.uuid4().hex[:12]
    digests_key = layout.join(PREFIX, f"base-{token}-digests.npy")
    owners_key = layout.join(PREFIX, f"base-{token}-owners.npy")
    record = {
        "digests": digests_key,
        "owners": owners_key,
        "names": names,
        "covers": sorted({*(base["covers"] if base else []), *uncovered}),
        "rows": len(order),
    }
    lake.write_bytes(digests_key, _to_npy(digests[order]))
    lake.write_bytes(owners_key, _to_npy(owner[order]))
    lake.write_json(BASE, record)  # the commit point: readers switch to the new base only now


def lookup(lake: Lake, hashes: Iterable[str]) -> dict[str, str]:
    """The datasets (``curated:<id>`` or ``golden:<name>``) that already hold any of ``hashes``."""
    wanted = sorted(set(hashes))
    if not wanted:
        return {}
    query = _as_void(_digests(wanted))
    found: dict[str, str] = {}
    base = lake.read_json_or(BASE, None)
    covered = set(base["covers"]) if base else set()
    if base and base["rows"]:
        digests = _as_void(_from_npy(lake.read_bytes(base["digests"])))
        owners = _from_npy(lake.read_bytes(base["owners"]))
        at = np.minimum(np.searchsorted(digests, query), len(digests) - 1)
        for i in np.flatnonzero(digests[at] == query):
            found[wanted[i]] = base["names"][int(owners[at[i]])]
    for key in sorted(k for k in lake.list_keys(SEGMENTS) if k not in covered):
        digests = _as_void(_from_npy(lake.read_bytes(key)))
        if not len(digests):
            continue
        at = np.minimum(np.searchsorted(digests, query), len(digests) - 1)
        for i in np.flatnonzero(digests[at] == query):
            found.setdefault(wanted[i], _location(key))
    return found
