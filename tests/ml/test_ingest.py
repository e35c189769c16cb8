from __future__ import annotations

import os

import pandas as pd
import pytest

from ml import layout
from ml.data.ingest import CURATED_COLUMNS, ingest_batch, pending_batches, read_manifest, split_for
from ml.storage import Lake


def test_clean_batch_is_curated_with_a_complete_manifest(lake, settings, write_batch) -> None:
    write_batch("b1", 0, 120)
    result = ingest_batch(lake, "b1", settings)
    assert result["status"] == "curated" and result["images"] == 120
    manifest = read_manifest(lake, "b1")
    assert list(manifest.columns) == CURATED_COLUMNS
    assert manifest["decode_ok"].all() and manifest["sha256"].is_unique
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert (manifest["width"] == 8).all() and (manifest["channels"] == 1).all()
    assert manifest["uri"].str.startswith(lake.uri("landing/b1/images/")).all()
    assert not lake.exists(layout.quarantine_report("b1"))
    # The split is a pure function of content: the same on every rerun.
    assert all(
        split_for(h, settings.ingest.split_fractions) == s
        for h, s in zip(manifest["sha256"], manifest["split"], strict=True)
    )


def test_corrupted_batch_is_quarantined_naming_each_rule_and_row(lake, settings, write_batch, digits) -> None:
    from ml.demo import png_bytes

    write_batch("bad", 0, 60, extra_files={
        "images/3/broken.png": b"\x89PNG\r\n\x1a\n garbage",
        "images/4/empty.png": b"",
        "images/zebra/z.png": png_bytes(digits[0][500]),
    })  # fmt: skip
    result = ingest_batch(lake, "bad", settings)
    assert result["status"] == "quarantined"
    report = lake.read_json(layout.quarantine_report("bad"))
    assert report["failed_rules"] == ["image_decodes", "label_in_set"]
    by_rule = {f["rule"]: f for f in report["failures"]}
    assert by_rule["image_decodes"]["unexpected_count"] == 2
    decode_rows = {row["uri"]: row["error"] for row in by_rule["image_decodes"]["sample_rows"]}
    assert decode_rows == {
        lake.uri("landing/bad/images/3/broken.png"): "OSError: Truncated File Read",
        lake.uri("landing/bad/images/4/empty.png"): "empty file (0 bytes)",
    }
    assert by_rule["label_in_set"]["sample_rows"] == [{"uri": lake.uri("landing/bad/images/zebra/z.png")}]
    assert not lake.exists(layout.manifest("bad")), "a rejected batch must not be curated"
    assert lake.list_keys("curated") == [], "the shards published while it was scanned are gone"
    assert lake.exists("landing/bad/_COMMITTED"), "the landing data is kept"


def test_batch_without_commit_marker_is_not_pending(lake, write_batch) -> None:
    write_batch("done", 0, 30)
    write_batch("half-written", 30, 30, commit=False)
    assert pending_batches(lake) == ["done"]


def test_symlink_out_of_the_batch_is_rejected_and_not_read(lake: Lake, settings, write_batch, tmp_path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"outside the lake")
    write_batch("escape", 0, 40)
    link = lake.path("landing/escape/images/1/link.png")  # type: ignore[attr-defined]
    os.symlink(secret, link)
    result = ingest_batch(lake, "escape", settings)
    assert result["status"] == "quarantined" and result["failed_rules"] == ["path_inside_batch"]
    quarantined = pd.read_parquet(lake.path(layout.quarantine_manifest("escape")))  # type: ignore[attr-defined]
    row = quarantined[quarantined["uri"] == "images/1/link.png"].iloc[0]
    assert not row["path_ok"] and pd.isna(row["sha256"]), "the file behind the link was never read"


def test_rerun_is_idempotent(lake, settings, write_batch) -> None:
    write_batch("b1", 0, 80)
    first = ingest_batch(lake, "b1", settings)
    keys = lake.list_keys("curated")
    stamp = os.stat(lake.path(layout.manifest("b1"))).st_mtime_ns  # type: ignore[attr-defined]
    second = ingest_batch(lake, "b1", settings)
    assert second["already_done"] and second["images"] == first["images"]
    assert lake.list_keys("curated") == keys
    assert os.stat(lake.path(layout.manifest("b1"))).st_mtime_ns == stamp  # type: ignore[attr-defined]


def test_ingest_from_s3(s3_env, monkeypatch, settings, digits) -> None:
    from ml.config import load_settings
    from ml.demo import write_batch

    monkeypatch.setenv("CT_LAKE_URI", f"s3://{s3_env}/lake")
    s3_settings = load_settings()
    lake = Lake.from_uri(s3_settings.lake_uri)
    write_batch(lake, "s3b", digits[0][:50], digits[1][:50])
    assert pending_batches(lake) == ["s3b"]
    assert ingest_batch(lake, "s3b", s3_settings)["status"] == "curated"
    assert len(read_manifest(lake, "s3b")) == 50
    assert pending_batches(lake) == []


@pytest.mark.parametrize("count", [5], ids=["too-few-rows"])
def test_tiny_batch_fails_the_row_count_rule(lake, settings, write_batch, count) -> None:
    write_batch("tiny", 0, count)
    result = ingest_batch(lake, "tiny", settings)
    assert result["failed_rules"] == ["row_count"]
