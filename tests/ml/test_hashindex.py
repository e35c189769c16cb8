"""The content-hash index: cross-batch duplicates found without reading every manifest, compacted, repaired."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from ml import layout
from ml.data import hashindex
from ml.data.ingest import ingest_batch, read_manifest


def _hashes(tag: str, n: int) -> list[str]:
    return [hashlib.sha256(f"{tag}-{i}".encode()).hexdigest() for i in range(n)]


def test_lookup_names_the_dataset_of_each_known_hash_through_segments_and_compaction(
    lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashindex, "COMPACT_AFTER", 3)
    for b in range(7):
        hashindex.add(lake, layout.CURATED, f"b{b}", _hashes(f"b{b}", 50))
    base = lake.read_json(hashindex.BASE)
    assert base["rows"] == 300 and len(base["covers"]) == 6, "two compactions: after the 3rd and the 6th segment"
    hashindex.add(lake, layout.GOLDEN, "v1", _hashes("gold", 5))
    query = [_hashes("b0", 50)[7], _hashes("b6", 50)[49], _hashes("gold", 5)[0], _hashes("new", 1)[0]]
    assert hashindex.lookup(lake, query) == {
        query[0]: "curated:b0",  # in the base
        query[1]: "curated:b6",  # in a segment the base does not cover yet
        query[2]: "golden:v1",
    }
    assert hashindex.lookup(lake, []) == {}


def test_a_rerun_after_a_kill_between_the_manifest_and_the_index_repairs_the_index(lake, settings, write_batch) -> None:
    write_batch("b1", 0, 60)
    assert ingest_batch(lake, "b1", settings)["status"] == "curated"
    lake.delete_prefix(hashindex.segment_key(layout.CURATED, "b1"))  # as if killed right after the manifest
    again = ingest_batch(lake, "b1", settings)
    assert again["already_done"]
    known = read_manifest(lake, "b1")["sha256"].tolist()
    assert set(hashindex.lookup(lake, known).values()) == {"curated:b1"}


def test_a_lake_curated_before_the_index_is_indexed_once_and_duplicates_are_still_caught(
    lake, settings, write_batch
) -> None:
    write_batch("old", 0, 60)
    assert ingest_batch(lake, "old", settings)["status"] == "curated"
    lake.delete_prefix(hashindex.PREFIX)  # a lake from before the index
    write_batch("overlap", 30, 60)  # rows 30..59 are the same images as old's rows 30..59
    ingest_batch(lake, "overlap", settings.model_copy(update={"ingest": settings.ingest.model_copy(
        update={"on_bad_rows": "drop"})}))  # fmt: skip
    assert lake.exists(hashindex.segment_key(layout.CURATED, "old")), "indexed from its manifest"
    with lake.local_file(layout.join(layout.CURATED, "overlap", "dropped.parquet")) as path:
        dropped = pd.read_parquet(path)
    assert len(dropped) == 30 and set(dropped["dup_of"]) == {"curated:old"}, dropped[["uri", "dup_of"]]
    assert len(read_manifest(lake, "overlap")) == 30
