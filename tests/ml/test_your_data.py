"""A newcomer's photos through the README's own commands: config check, land (dry run first), ingest, retrain.

The folder is what real photo folders hold (tests/photoset.py): mixed sizes and aspect ratios, JPEG
and PNG, grey files, phone pictures stored sideways with an EXIF orientation, a truncated file and a
folder nested below its label. The configuration is the README's example, ``ml/profiles/photos.yaml``,
as it ships. Every command runs as the README writes it, in its own process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ml import layout
from ml.config import load_settings
from ml.data.curated import ShardReader
from ml.data.ingest import read_manifest
from ml.model.preprocess import square
from ml.release import registry
from ml.storage import Lake
from tests import photoset

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "ml" / "profiles" / "photos.yaml"


def ct(*argv: str, expect: int = 0) -> dict:
    """``python -m ml <argv>`` as a user runs it; its last stdout line is the step's JSON."""
    done = subprocess.run([sys.executable, "-m", "ml", *argv], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == expect, (argv, done.returncode, done.stdout[-2000:], done.stderr[-4000:])
    result: dict = json.loads(done.stdout.strip().splitlines()[-1])
    result["_stderr"] = done.stderr
    return result


def test_a_folder_of_photos_becomes_a_first_champion(ct_home, tmp_path, monkeypatch) -> None:
    photos = photoset.write(tmp_path / "photos", per_class=60)
    (photos.root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # what a Mac leaves in every folder it opened
    (photos.root / "cat" / "._IMG_0001.jpg").write_bytes(b"\0\5\26\7")
    shutil.copy(EXAMPLE, tmp_path / "ct.yaml")  # the README: copy the example, set your labels (these are its)
    monkeypatch.setenv("CT_CONFIG", str(tmp_path / "ct.yaml"))
    settings = load_settings()
    lake = Lake.from_uri(settings.lake_uri)

    checked = ct("config", "check")
    assert checked["config"] == "valid" and checked["checks"]["network"].startswith("resnet18: ")

    # The dry run names each file ingest would refuse, with its rule, and lands nothing.
    rehearsal = ct("land", str(photos.root), "--batch-id", "photos-1", "--dry-run")
    refused = {item["file"]: item["rules"] for item in rehearsal["refused"]}
    assert refused == {f"images/{photos.corrupt}": ["image_decodes"], f"images/{photos.misplaced}": ["layout"]}
    assert rehearsal["would_be"] == "quarantined" and rehearsal["accepted"] == photos.files - 2
    by_rule = {rule["rule"]: rule for rule in rehearsal["rules"]}
    assert by_rule["layout"]["first"] == [f"images/{photos.misplaced}"] and "move each file" in by_rule["layout"]["fix"]
    assert by_rule["image_decodes"]["files"] == 1 and "re-export or remove" in by_rule["image_decodes"]["fix"]
    assert f"refused  layout: 1 file: images/{photos.misplaced}" in rehearsal["_stderr"]
    assert "great_expectations" not in rehearsal["_stderr"], "the library's set-up chatter stays out of the way"
    assert not lake.exists(layout.landing("photos-1")) and lake.list_keys(layout.LANDING) == []
    assert rehearsal["not_landed"] == [".DS_Store", "cat/._IMG_0001.jpg"], "hidden files are not photos"

    # Landed as it is, the batch is quarantined, and the report names the same files with the same rules.
    assert ct("land", str(photos.root), "--batch-id", "photos-1")["files"] == photos.files
    assert ct("ingest", "--batch-id", "photos-1")["quarantined"][0]["failed_rules"] == ["image_decodes", "layout"]
    report = lake.read_json(layout.quarantine_report("photos-1"))
    named = {(f["rule"], Path(row["uri"]).name) for f in report["failures"] for row in f["sample_rows"]}
    assert named == {("image_decodes", "IMG_broken.jpg"), ("layout", "IMG_old.jpg")}
    assert lake.list_keys(layout.join(layout.CURATED, "photos-1")) == [], "a quarantined batch leaves nothing curated"

    # Fixed as the report says (the truncated file out, the old photo into its label's folder), landed anew.
    (photos.root / photos.corrupt).unlink()
    shutil.move(photos.root / photos.misplaced, photos.root / Path(photos.misplaced).parent.parent / "IMG_old.jpg")
    assert ct("land", str(photos.root), "--batch-id", "photos-2", "--dry-run")["refused"] == []
    ct("land", str(photos.root), "--batch-id", "photos-2")
    assert ct("ingest", "--batch-id", "photos-2")["curated"] == ["photos-2"]

    # A phone photo stored sideways is curated upright, at the size it is seen.
    manifest = read_manifest(lake, "photos-2")
    rotated = photos.rotated[0]
    row = manifest[manifest["uri"].str.endswith(rotated)].iloc[0]
    with Image.open(photos.root / rotated) as stored:
        sideways = stored.convert("RGB")
        upright = ImageOps.exif_transpose(stored).convert("RGB")
    assert (row["width"], row["height"]) == upright.size != sideways.size
    with ShardReader(lake) as reader:
        pixels = reader.gather(manifest.iloc[[int(row["row"])]], layout.CURATED, dataset="photos-2")[0]
    side = settings.image.stored
    assert np.abs(pixels.astype(int) - square(upright, side, "letterbox").astype(int)).mean() < 1
    assert np.abs(pixels.astype(int) - square(sideways, side, "letterbox").astype(int)).mean() > 10

    # One command retrains and gates: the first model clears the example's floor and becomes champion.
    gate = ct("retrain")
    assert gate["decision"] == "promote" and gate["candidate_accuracy"] >= settings.gate.floor_accuracy, gate
    champion = registry.champion(registry.client(settings), settings.model_name)
    assert champion is not None and champion.version == gate["candidate_version"]
    # Its key again redoes nothing, and says so; without a key, a new run decides on the data there is now.
    again = ct("retrain", "--run-key", gate["run_key"])
    assert again["candidate_version"] == gate["candidate_version"] and "ran before" in again["rerun"]
    assert "no new data" in ct("retrain")["skip"]


def test_land_takes_an_s3_prefix_and_a_rerun_lands_nothing_twice(ct_home, s3_env, tmp_path) -> None:
    """An S3 prefix of label folders lands like a local folder; an interrupted landing is completed."""
    import boto3

    from ml.data.land import land

    s3 = boto3.client("s3", endpoint_url=os.environ["CT_S3_ENDPOINT_URL"])
    photos = photoset.write(tmp_path / "photos", per_class=4)
    for path in sorted(p for p in photos.root.rglob("*") if p.is_file()):
        s3.put_object(Bucket=s3_env, Key=f"drop/2026-12-07/{path.relative_to(photos.root)}", Body=path.read_bytes())
    settings = load_settings()
    lake = Lake.from_uri(settings.lake_uri)
    source = f"s3://{s3_env}/drop/2026-12-07"
    # A landing killed half-way: some files, no marker. The next run writes the rest, then the marker.
    lake.write_bytes(layout.join(layout.landing("s3-1"), "images", photos.rotated[0]), b"half")
    landed = land(lake, settings, source, "s3-1")
    assert landed["files"] == photos.files and not landed["already_done"]
    keys = lake.list_keys(layout.landing("s3-1"))
    assert len(keys) == photos.files + 1 and layout.commit_marker("s3-1") in keys
    first = lake.read_bytes(layout.join(layout.landing("s3-1"), "images", photos.rotated[0]))
    assert first == (photos.root / photos.rotated[0]).read_bytes(), "the half-written file was written whole"
    assert land(lake, settings, source, "s3-1")["already_done"]
