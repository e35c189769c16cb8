from __future__ import annotations

import html
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ml import layout
from ml.data.ingest import CURATED_COLUMNS, ingest_batch, ingest_many, pending_batches, read_manifest, split_for
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
    assert lake.list_children("curated") == [], "and no empty curated/bad/ folder is left either"
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
    (failure,) = lake.read_json(layout.quarantine_report("tiny"))["failures"]
    fix = ("the batch has 5 files; ingest.min_rows=20 and ingest.max_rows=5,000,000 allow 20 to 5,000,000: "
           "add images to the batch (at images/<label>/<file>), or lower ingest.min_rows")  # fmt: skip
    assert failure["observed"] == count and failure["fix"] == fix
    page = lake.read_bytes(layout.report(layout.INGEST_DAG, "tiny", "validation.html")).decode()
    assert html.escape(fix) in page


def test_unknown_label_names_the_folder_and_the_configured_labels(lake, settings, write_batch, digits) -> None:
    from ml.demo import png_bytes

    write_batch("bal", 0, 40, extra_files={f"images/bal/{i}.png": png_bytes(digits[0][900 + i]) for i in range(3)})
    ingest_batch(lake, "bal", settings)
    (failure,) = lake.read_json(layout.quarantine_report("bal"))["failures"]
    assert failure["rule"] == "label_in_set" and failure["unexpected_count"] == 3
    assert failure["observed"] == ["bal"], "the unknown labels, each once"
    assert failure["fix"] == (
        "the label folder(s) 'bal' are not among the configured labels ('0', '1', '2', '3', '4', '5', '6', '7', '8', "
        "'9'): add them to `labels` in ct.yaml, or rename those folders under images/ to a configured label"
    )
    page = lake.read_bytes(layout.report(layout.INGEST_DAG, "bal", "validation.html")).decode()
    assert html.escape(failure["fix"]) in page and html.escape("['bal']") in page


def test_a_crashed_ingest_leaves_nothing_under_curated(lake, settings, write_batch, monkeypatch) -> None:
    published: list[str] = []

    def crash(*args, **kwargs):  # type: ignore[no-untyped-def]
        published.extend(lake.list_keys(layout.shards("crash")))
        raise RuntimeError("validation crashed")

    monkeypatch.setattr("ml.data.ingest.validate_manifest", crash)
    write_batch("crash", 0, 40)
    (quarantined,) = ingest_many(lake, ["crash"], settings)["quarantined"]
    assert quarantined["failed_rules"] == ["ingest_error"]
    assert published, "the scan had published its shards when it crashed"
    assert lake.list_children("curated") == []


#: Ingest in a child that SIGKILLs itself as the manifest is renamed into place: its temporary file
#: is written and synced, and stays behind.
KILLED_AT_THE_MANIFEST = """
import os, signal, sys

rename = os.replace

def replace(source, target, *args, **kwargs):
    if os.path.basename(target) == "manifest.parquet":
        os.kill(os.getpid(), signal.SIGKILL)
    return rename(source, target, *args, **kwargs)

os.replace = replace
from ml.config import load_settings
from ml.data.ingest import ingest_batch
from ml.storage import Lake

settings = load_settings()
ingest_batch(Lake.from_uri(settings.lake_uri), sys.argv[1], settings)
"""


def test_rerun_after_a_kill_at_the_manifest_leaves_no_temporary_file(lake, settings, write_batch) -> None:
    write_batch("killed", 0, 40)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), str(repo / "plugins")])}
    child = subprocess.run([sys.executable, "-c", KILLED_AT_THE_MANIFEST, "killed"], cwd=repo, env=env, check=False)
    assert child.returncode == -signal.SIGKILL
    folder = lake.path(layout.dataset("killed"))  # type: ignore[attr-defined]
    assert [p.name.split(".")[1:3] for p in folder.glob(".*.tmp")] == [["manifest", "parquet"]], "what the kill left"
    assert not lake.exists(layout.manifest("killed"))

    assert ingest_batch(lake, "killed", settings)["status"] == "curated"
    assert not list(lake.root.rglob("*.tmp")), "the rerun removed the killed attempt's temporary file"  # type: ignore[attr-defined]
    assert sorted(p.name for p in folder.iterdir()) == ["batch.json", "manifest.parquet", "shards"]
