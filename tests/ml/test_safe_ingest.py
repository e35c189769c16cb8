"""Each kind of bad input: its fate (quarantined, or rows dropped), the rule named, and nothing read outside."""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ml import layout
from ml.config import load_settings
from ml.data.ingest import ingest_batch, read_manifest
from ml.storage import Lake


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def digit_png(digits, i: int) -> bytes:  # type: ignore[no-untyped-def]
    return encode(Image.fromarray(digits[0][i], mode="L"))


def quarantined_rules(lake: Lake, batch_id: str) -> dict[str, dict]:
    report = lake.read_json(layout.quarantine_report(batch_id))
    assert report["status"] == "quarantined" and not lake.exists(layout.manifest(batch_id))
    return {f["rule"]: f for f in report["failures"]}


def test_truncated_file_is_rejected(lake, settings, write_batch, digits) -> None:
    whole = encode(Image.fromarray(np.tile(digits[0][0], (8, 8)), mode="L"))
    write_batch("trunc", 0, 40, extra_files={"images/1/cut.png": whole[: len(whole) // 2]})
    ingest_batch(lake, "trunc", settings)
    failure = quarantined_rules(lake, "trunc")["image_decodes"]
    assert failure["unexpected_count"] == 1
    assert failure["sample_rows"][0]["uri"].endswith("images/1/cut.png")
    assert (
        "truncated" in failure["sample_rows"][0]["error"].lower() or "Truncated" in failure["sample_rows"][0]["error"]
    )


@pytest.mark.parametrize(
    ("payload", "error"),
    [(b"", "empty file (0 bytes)"), (b"%PDF-1.7 not a picture", "not a recognised image format"),
     (b"GIF89a\x00\x00", "not a recognised image format")],
    ids=["zero-byte", "pdf-named-png", "fake-gif-header"],
)  # fmt: skip
def test_non_images_are_rejected_with_the_reason(lake, settings, write_batch, payload: bytes, error: str) -> None:
    write_batch("junk", 0, 40, extra_files={"images/2/thing.png": payload})
    ingest_batch(lake, "junk", settings)
    failure = quarantined_rules(lake, "junk")["image_decodes"]
    assert [row["error"] for row in failure["sample_rows"]] == [error]


def test_decompression_bomb_is_refused_from_its_header(lake, settings, write_batch) -> None:
    bomb = encode(Image.new("1", (20_000, 20_000)))  # 400 Mpixel, a few dozen KB on disk
    assert len(bomb) < 200_000
    write_batch("bomb", 0, 40, extra_files={"images/3/bomb.png": bomb})
    ingest_batch(lake, "bomb", settings)
    row = quarantined_rules(lake, "bomb")["image_decodes"]["sample_rows"][0]
    assert row["error"].startswith("decompression bomb: ")


def test_our_pixel_cap_applies_below_pillows_own(lake, write_batch, monkeypatch) -> None:
    monkeypatch.setenv("CT_IMAGE__MAX_PIXELS", "1000")
    write_batch("big", 0, 40, extra_files={"images/3/big.png": encode(Image.new("L", (100, 100)))})
    ingest_batch(lake, "big", load_settings())
    row = quarantined_rules(lake, "big")["image_decodes"]["sample_rows"][0]
    assert row["error"] == "decompression bomb: 100x100 = 10,000 pixels exceeds image.max_pixels=1,000"


def unusual_modes() -> dict[str, bytes]:
    grey16 = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))  # 16-bit, full white
    cmyk = Image.new("CMYK", (8, 8), (0, 0, 0, 0))  # no ink: white
    rgba = Image.new("RGBA", (8, 8), (255, 255, 255, 0))  # white but fully transparent
    return {
        "images/4/grey16.png": encode(grey16),
        "images/5/cmyk.jpg": encode(cmyk, "JPEG"),
        "images/6/alpha.png": encode(rgba),
    }


def test_unusual_modes_are_normalised_by_default(lake, settings, write_batch) -> None:
    write_batch("modes", 0, 40, extra_files=unusual_modes())
    assert ingest_batch(lake, "modes", settings)["status"] == "curated"
    manifest = read_manifest(lake, "modes")
    manifest = manifest.set_index(manifest["uri"].str.rsplit("/", n=1).str[-1])
    assert manifest.loc["grey16.png", "mean"] == 255.0, "16-bit white scales to 8-bit white, not clipped noise"
    assert manifest.loc["cmyk.jpg", "mean"] > 250
    assert manifest.loc["alpha.png", "mean"] == 0.0, "transparent pixels are composited onto black"
    assert set(manifest.loc[["grey16.png", "cmyk.jpg", "alpha.png"], "mode"]) == {"I;16", "CMYK", "RGBA"}


def test_unusual_modes_are_rejected_when_configured(lake, write_batch, monkeypatch) -> None:
    monkeypatch.setenv("CT_INGEST__UNSUPPORTED_MODES", "reject")
    write_batch("modes", 0, 40, extra_files=unusual_modes())
    ingest_batch(lake, "modes", load_settings())
    failure = quarantined_rules(lake, "modes")["supported_mode"]
    assert failure["unexpected_count"] == 3
    assert sorted(r["error"].split(" (")[0] for r in failure["sample_rows"]) == [
        "unsupported mode CMYK", "unsupported mode I;16", "unsupported mode RGBA"]  # fmt: skip


def test_symlinked_folder_out_of_the_batch_is_not_walked(lake, settings, write_batch, tmp_path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"never read")
    write_batch("dirlink", 0, 40)
    os.symlink(outside, lake.path("landing/dirlink/images/7/linked"))  # type: ignore[attr-defined]
    ingest_batch(lake, "dirlink", settings)
    failure = quarantined_rules(lake, "dirlink")["path_inside_batch"]
    assert failure["sample_rows"] == [{"uri": "images/7/linked", "error": "resolves outside the batch root"}]
    manifest = pd.read_parquet(lake.path(layout.quarantine_manifest("dirlink")))  # type: ignore[attr-defined]
    assert not manifest["uri"].str.contains("secret").any(), "the linked folder was never listed"


def test_dotdot_key_on_s3_is_rejected_and_not_read(s3_env, monkeypatch, digits) -> None:
    from ml.demo import write_batch

    monkeypatch.setenv("CT_LAKE_URI", f"s3://{s3_env}/lake")
    settings = load_settings()
    lake = Lake.from_uri(settings.lake_uri)
    write_batch(lake, "dots", digits[0][:40], digits[1][:40], commit=False)
    for key in ("lake/landing/dots/images/1/../../../../outside.png", "lake/landing/dots/images//etc/passwd.png"):
        lake.client.put_object(Bucket=s3_env, Key=key, Body=b"x")  # type: ignore[attr-defined]
    lake.write_bytes(layout.commit_marker("dots"), b"")
    ingest_batch(lake, "dots", settings)
    failure = quarantined_rules(lake, "dots")["path_inside_batch"]
    errors = " | ".join(row["error"] for row in failure["sample_rows"])
    assert failure["unexpected_count"] == 2
    assert "contains '..'" in errors and "is not a normalised path" in errors
    with lake.local_file(layout.quarantine_manifest("dots")) as path:
        refused = pd.read_parquet(path).query("not path_ok")
    assert refused["sha256"].isna().all(), "refused keys are never read"


def test_empty_batch_is_quarantined(lake, settings) -> None:
    lake.write_bytes(layout.commit_marker("empty"), b"")
    ingest_batch(lake, "empty", settings)
    rules = quarantined_rules(lake, "empty")
    assert rules["row_count"]["observed"] == 0


def test_duplicates_within_the_batch_and_against_curated_data(lake, settings, write_batch, digits) -> None:
    write_batch("first", 0, 60)
    ingest_batch(lake, "first", settings)
    write_batch("second", 100, 60, extra_files={"images/0/again.png": digit_png(digits, 0),  # already curated
                                                "images/9/copy.png": digit_png(digits, 100)})  # fmt: skip
    ingest_batch(lake, "second", settings)
    failure = quarantined_rules(lake, "second")["no_duplicate_images"]
    assert sorted(r["uri"].rsplit("/", 2)[-2] + "/" + r["uri"].rsplit("/", 1)[-1] for r in failure["sample_rows"]) == [
        "0/again.png", "9/copy.png"]  # fmt: skip
    manifest = pd.read_parquet(lake.path(layout.quarantine_manifest("second")))  # type: ignore[attr-defined]
    dup = manifest.set_index(manifest["uri"].str.rsplit("/", n=1).str[-1])["dup_of"]
    assert dup["again.png"] == "curated:first"
    assert dup["copy.png"].startswith("this batch:images/")
    assert dup["00000.png"] == "", "the first copy within the batch is not the duplicate"


def test_drop_policy_drops_bad_rows_with_a_record(lake, write_batch, monkeypatch) -> None:
    monkeypatch.setenv("CT_INGEST__ON_BAD_ROWS", "drop")
    write_batch("mixed", 0, 60, extra_files={"images/1/bad.png": b"nope", "images/2/z.png": b"\x89PNG"})
    result = ingest_batch(lake, "mixed", load_settings())
    assert result["status"] == "curated" and result["images"] == 60 and result["dropped"] == 2
    dropped = lake.read_json(layout.report(layout.INGEST_DAG, "mixed", "dropped.json"))
    assert sorted((d["uri"].rsplit("/", 1)[-1], d["dropped_by"]) for d in dropped) == [
        ("bad.png", ["image_decodes"]), ("z.png", ["image_decodes"])]  # fmt: skip
    manifest = read_manifest(lake, "mixed")
    assert manifest["row"].tolist() == list(range(60)), "the shard is re-indexed to the kept rows"
    assert lake.exists(layout.report(layout.INGEST_DAG, "mixed", "validation.html"))


def test_drop_policy_never_drops_a_folder_that_is_not_a_label(lake, write_batch, digits, monkeypatch) -> None:
    """A misspelt label folder (horses for horse) is a whole class: dropping it would lose it without a word."""
    from ml.demo import png_bytes

    monkeypatch.setenv("CT_INGEST__ON_BAD_ROWS", "drop")
    extra = {f"images/sevens/{i}.png": png_bytes(digits[0][900 + i]) for i in range(5)}
    write_batch("misspelt", 0, 60, extra_files=extra)
    result = ingest_batch(lake, "misspelt", load_settings())
    assert result["status"] == "quarantined" and result["failed_rules"] == ["label_in_set"]
    report = lake.read_json(layout.quarantine_report("misspelt"))
    assert report["failures"][0]["observed"] == ["sevens"] and report["dropped_rows"] == 0


def test_drop_policy_still_fails_on_escapes_and_whole_batch_rules(lake, write_batch, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CT_INGEST__ON_BAD_ROWS", "drop")
    (tmp_path / "x.png").write_bytes(b"outside")
    write_batch("escape", 0, 40)
    os.symlink(tmp_path / "x.png", lake.path("landing/escape/images/1/x.png"))  # type: ignore[attr-defined]
    ingest_batch(lake, "escape", load_settings())
    assert list(quarantined_rules(lake, "escape")) == ["path_inside_batch"]


def test_class_balance_is_a_whole_batch_rule(lake, settings, write_batch, digits) -> None:
    from ml.demo import write_batch as write

    zeros = digits[0][digits[1] == 0][:40]
    write(lake, "lopsided", np.concatenate([zeros, digits[0][:10]]), ["0"] * 40 + [str(d) for d in digits[1][:10]])
    ingest_batch(lake, "lopsided", settings)
    failure = quarantined_rules(lake, "lopsided")["class_balance"]
    assert failure["level"] == "batch" and failure["sample_rows"][0]["uri"] == "label:0"


def test_identical_corrupt_files_are_counted_once_under_their_real_rule(lake, settings, write_batch, digits) -> None:
    whole = digit_png(digits, 900)
    cut = whole[: len(whole) // 2]
    write_batch("twins", 0, 40, extra_files={"images/1/cut.png": cut, "images/2/cut-copy.png": cut,
                                              "images/3/empty.png": b"", "images/4/empty-too.png": b""})  # fmt: skip
    ingest_batch(lake, "twins", settings)
    report = lake.read_json(layout.quarantine_report("twins"))
    assert report["failed_rules"] == ["image_decodes"], "a copy of a file that does not decode is no duplicate image"
    (failure,) = report["failures"]
    assert failure["unexpected_count"] == 4
    assert sorted(row["uri"].rsplit("/", 1)[-1] for row in failure["sample_rows"]) == [
        "cut-copy.png", "cut.png", "empty-too.png", "empty.png"]  # fmt: skip
    manifest = pd.read_parquet(lake.path(layout.quarantine_manifest("twins")))  # type: ignore[attr-defined]
    corrupt = manifest[~manifest["decode_ok"].astype(bool)]
    assert len(corrupt) == 4 and corrupt["sha256"].notna().all() and corrupt["dup_of"].isna().all()
