"""Hostile landing batches: each is quarantined (or its rows dropped) under a named rule, nothing it
should not be is read, and a plain ingest still reaches the batches listed after it."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from ml import layout
from ml.config import load_settings
from ml.data.ingest import ingest_batch, ingest_many, landing_id, pending_batches, read_manifest
from ml.demo import png_bytes
from ml.demo import write_batch as write_to
from ml.errors import UsageError
from ml.storage import Lake, LocalLake, S3Lake

AFTER = "zz-after"  # sorts after every bad batch below: a plain ingest must still reach it


@pytest.fixture
def read_keys(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every lake key that ``read_bytes`` was asked for: what ingest really read."""
    keys: list[str] = []
    for cls in (LocalLake, S3Lake):
        original = cls.read_bytes

        def spy(self: Lake, key: str, original=original) -> bytes:  # type: ignore[no-untyped-def]
            keys.append(key)
            return original(self, key)

        monkeypatch.setattr(cls, "read_bytes", spy)
    return keys


def report_of(lake: Lake, batch_id: str, rules: list[str]) -> dict:
    """The quarantine report, after checking that it names exactly ``rules`` and nothing was curated."""
    report = lake.read_json(layout.quarantine_report(batch_id))
    assert report["status"] == "quarantined" and not lake.exists(layout.manifest(batch_id))
    assert report["failed_rules"] == rules
    assert sorted({f["rule"] for f in report["failures"]}) == rules
    return report


def plain_ingest_quarantines(lake: Lake, settings, write_batch, batch_id: str, rules: list[str]) -> dict:  # type: ignore[no-untyped-def]
    """``ingest_many(lake, None)`` quarantines ``batch_id`` under ``rules`` and still curates the batch after it."""
    write_batch(AFTER, 1500, 40)
    result = ingest_many(lake, None, settings)
    assert result["curated"] == [AFTER], result
    assert pending_batches(lake) == [], "the bad batch is done with: it does not come back"
    return report_of(lake, batch_id, rules)


def quarantined_manifest(lake: Lake, batch_id: str) -> pd.DataFrame:
    return pd.read_parquet(lake.path(layout.quarantine_manifest(batch_id)))  # type: ignore[attr-defined]


def create_raw(directory: Path, name: bytes, data: bytes) -> None:
    """A file whose name is raw bytes (not necessarily UTF-8)."""
    fd = os.open(os.path.join(os.fsencode(directory), name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def encoded(digits, i: int, fmt: str) -> bytes:  # type: ignore[no-untyped-def]
    buffer = io.BytesIO()
    Image.fromarray(digits[0][i], mode="L").save(buffer, format=fmt)
    return buffer.getvalue()


# --- 10: names that are not text ------------------------------------------------------------


def test_unusable_file_names_are_flagged_unread_and_do_not_wedge_the_queue(
    lake, settings, write_batch, digits, read_keys
) -> None:
    write_batch("a-names", 0, 40, commit=False)
    create_raw(lake.path("landing/a-names/images/3"), b"bad\xff.png", png_bytes(digits[0][100]))
    create_raw(lake.path("landing/a-names/images/4"), b"new\nline.png", png_bytes(digits[0][101]))
    lake.write_bytes(layout.commit_marker("a-names"), b"")

    report = plain_ingest_quarantines(lake, settings, write_batch, "a-names", ["file_name"])
    (failure,) = report["failures"]
    assert failure["level"] == "row" and failure["stage"] == "validation"
    assert {(r["uri"], r["error"]) for r in failure["sample_rows"]} == {
        ("images/3/bad\\xff.png", "the name is not valid UTF-8"),
        ("images/4/new\\nline.png", "the name contains a control or other invisible character"),
    }
    manifest = quarantined_manifest(lake, "a-names")
    flagged = manifest[manifest["uri"].str.contains("\\", regex=False)]
    assert len(flagged) == 2 and flagged["sha256"].isna().all(), "a file with an unusable name is never read"
    assert not any("bad" in key or "line" in key for key in read_keys)
    assert lake.exists(layout.report(layout.INGEST_DAG, "a-names", "validation.html"))


# --- 11: a batch root that is somewhere else --------------------------------------------------


@pytest.mark.parametrize("linked", ["root", "images"], ids=["batch-root-symlink", "images-symlink"])
def test_symlinked_batch_root_is_quarantined_without_reading_a_file(
    lake, settings, write_batch, digits, tmp_path, read_keys, linked: str
) -> None:
    outside = Lake.from_uri((tmp_path / "outside").as_uri())
    write_to(outside, "src", digits[0][:40], digits[1][:40])
    target = outside.path(layout.landing("src"))  # type: ignore[attr-defined]
    batch_root = lake.path(layout.landing("a-linked"))
    if linked == "root":
        batch_root.parent.mkdir(parents=True)
        os.symlink(target, batch_root)
    else:
        batch_root.mkdir(parents=True)
        os.symlink(target / "images", batch_root / "images")
        lake.write_bytes(layout.commit_marker("a-linked"), b"")

    report = plain_ingest_quarantines(lake, settings, write_batch, "a-linked", ["batch_root"])
    assert report["failures"][0]["level"] == "batch" and os.path.realpath(target) in report["failures"][0]["observed"]
    assert not [key for key in read_keys if key.startswith("landing/a-linked")], "no file under the link was read"
    assert not lake.exists(layout.quarantine_manifest("a-linked"))


@pytest.mark.parametrize("kind", ["folder", "symlink"], ids=["marker-is-a-folder", "marker-is-a-symlink"])
def test_commit_marker_must_be_a_regular_file(lake, settings, write_batch, tmp_path, read_keys, kind: str) -> None:
    write_batch("a-marker", 0, 40, commit=False)
    marker = lake.path(layout.commit_marker("a-marker"))
    if kind == "folder":
        marker.mkdir()
    else:
        (tmp_path / "real-marker").write_bytes(b"")
        os.symlink(tmp_path / "real-marker", marker)

    report = plain_ingest_quarantines(lake, settings, write_batch, "a-marker", ["commit_marker"])
    assert report["failures"][0]["observed"] == f"_COMMITTED is a {kind}"
    assert not [key for key in read_keys if key.startswith("landing/a-marker")]


# --- 12: drop mode keeps the cause ------------------------------------------------------------


def test_drop_mode_that_still_fails_keeps_the_dropped_rows_and_their_rules(lake, write_batch, monkeypatch) -> None:
    monkeypatch.setenv("CT_INGEST__ON_BAD_ROWS", "drop")  # and CT_INGEST__MIN_ROWS=20, from conftest
    broken = {f"images/{i}/broken-{i}.png": f"not an image {i}".encode() for i in range(10)}  # distinct: no duplicates
    write_batch("dropped", 0, 15, extra_files=broken)  # 25 files, 10 undecodable
    result = ingest_batch(lake, "dropped", load_settings())
    assert result["status"] == "quarantined"

    report = report_of(lake, "dropped", ["image_decodes", "row_count"])
    stages = {f["rule"]: (f["stage"], f["unexpected_count"]) for f in report["failures"]}
    assert stages == {"image_decodes": ("before_drop", 10), "row_count": ("after_drop", 0)}
    assert report["dropped_rows"] == 10 and report["rows"] == 25
    assert len(quarantined_manifest(lake, "dropped")) == 25, "the quarantined manifest keeps the dropped rows"
    dropped = lake.read_json(layout.report(layout.INGEST_DAG, "dropped", "dropped.json"))
    assert len(dropped) == 10 and all(d["dropped_by"] == ["image_decodes"] for d in dropped)


# --- 13: landing folder names follow the id rule ----------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["x18 bad name", "n" * 250, "bad\udcff", "back\\slash"],  # "\udcff": how os.listdir spells the byte 0xff
    ids=["space", "250-chars", "not-utf8", "backslash-no-key-can-spell"],
)
def test_invalid_landing_name_is_quarantined_under_a_derived_id(
    lake, settings, write_batch, read_keys, name: str
) -> None:
    from ct_airflow.triggers import claim_new_batches

    write_batch("tmp", 0, 40)  # then renamed: the lake's own writer refuses some of these names
    os.rename(lake.path("landing/tmp"), os.path.join(os.fsencode(lake.path("landing")), os.fsencode(name)))
    derived = landing_id(name)
    assert derived.startswith("invalid-name-") and layout.id_problem(derived) is None
    assert pending_batches(lake) == [derived]
    assert claim_new_batches(settings.lake_uri) == [derived], "the trigger announces it under a key-safe id"
    with pytest.raises(UsageError, match="not a valid id"):
        ingest_many(lake, [name], settings)

    report = plain_ingest_quarantines(lake, settings, write_batch, derived, ["batch_name"])
    (failure,) = report["failures"]
    assert failure["level"] == "batch" and failure["fix"].startswith("rename the landing folder to match")
    escaped = os.fsencode(name).decode("utf-8", "backslashreplace")
    assert report["landing_name"] == escaped and report["landing_uri"] == lake.uri("landing") + "/" + escaped
    landing_reads = [key for key in read_keys if key.startswith("landing/")]
    assert all(key.startswith(f"landing/{AFTER}/") for key in landing_reads), "the invalid-named folder is not read"
    assert not lake.exists(layout.manifest(derived)) and lake.list_children("curated") == [AFTER]
    # The derived id works wherever an id does: a re-ingest by id says the same thing again.
    assert ingest_many(lake, [derived], settings)["quarantined"][0]["failed_rules"] == ["batch_name"]


def test_300_character_landing_name_on_s3_is_quarantined(s3_env, monkeypatch, digits) -> None:
    monkeypatch.setenv("CT_LAKE_URI", f"s3://{s3_env}/lake")
    settings = load_settings()
    lake = Lake.from_uri(settings.lake_uri)
    name = "b" * 300
    write_to(lake, name, digits[0][:30], digits[1][:30])
    derived = landing_id(name)
    assert pending_batches(lake) == [derived]
    result = ingest_many(lake, None, settings)
    assert result["quarantined"][0]["batch_id"] == derived
    assert lake.read_json(layout.quarantine_report(derived))["failed_rules"] == ["batch_name"]
    assert pending_batches(lake) == []
    with pytest.raises(UsageError):  # not OSError: File name too long
        ingest_many(lake, [name], settings)


# --- 14: rules that are enforced --------------------------------------------------------------


@pytest.mark.parametrize(
    ("relpath", "fmt", "env", "rule", "error"),
    [
        ("images/3/sub/deep.png", "PNG", {}, "layout",
         "expected images/<label>/<file>; this file is 1 folder(s) below its label folder"),
        ("images/top.png", "PNG", {}, "layout", "expected images/<label>/<file>; this file is directly under images/"),
        ("3/beside.png", "PNG", {}, "layout",
         "outside images/: move label folders under landing/rows/images/ (this file to images/3/beside.png)"),
        ("root.png", "PNG", {}, "layout",
         "outside images/: move label folders under landing/rows/images/ (this file to images/<label>/root.png)"),
        ("images/3/notes.txt", "PNG", {}, "file_extension", "extension '.txt' is not in ingest.extensions"),
        ("images/3/README", "PNG", {}, "file_extension", "extension '(none)' is not in ingest.extensions"),
        ("images/3/pic.png", "PPM", {}, "image_format",
         "decoded format PPM is not one that ingest.extensions allows (BMP, GIF, JPEG, MPO, PNG, TIFF, WEBP)"),
        ("images/3/pic.png", "JPEG", {"CT_INGEST__EXTENSIONS": ".png,.bmp"}, "image_format",
         "decoded format JPEG is not one that ingest.extensions allows (BMP, PNG)"),
    ],
    ids=["nested-below-label", "directly-under-images", "label-folder-beside-images", "file-at-batch-root",
         "txt-extension", "no-extension", "ppm-named-png", "jpeg-not-allowed"],
)  # fmt: skip
def test_each_row_rule_names_the_file_and_its_reason(
    lake, write_batch, digits, monkeypatch, read_keys, relpath: str, fmt: str, env: dict, rule: str, error: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    write_batch("rows", 0, 40, extra_files={relpath: encoded(digits, 900, fmt)})
    ingest_batch(lake, "rows", load_settings())
    (failure,) = report_of(lake, "rows", [rule])["failures"]
    assert failure["level"] == "row"
    assert failure["sample_rows"] == [{"uri": lake.uri(f"landing/rows/{relpath}"), "error": error}]
    row = quarantined_manifest(lake, "rows").set_index("uri").loc[lake.uri(f"landing/rows/{relpath}")]
    if rule == "image_format":
        assert pd.isna(row["width"]), "a disallowed format is never decoded"
    else:
        assert pd.isna(row["sha256"]) and f"landing/rows/{relpath}" not in read_keys, "never read"


def test_layout_and_name_rules_fail_the_batch_even_in_drop_mode(lake, write_batch, digits, monkeypatch) -> None:
    monkeypatch.setenv("CT_INGEST__ON_BAD_ROWS", "drop")
    write_batch("nested", 0, 40, extra_files={"images/3/sub/deep.png": png_bytes(digits[0][900])})
    ingest_batch(lake, "nested", load_settings())
    report_of(lake, "nested", ["layout"])


def test_droppable_row_rules_are_dropped_with_every_rule_they_failed(lake, write_batch, digits, monkeypatch) -> None:
    monkeypatch.setenv("CT_INGEST__ON_BAD_ROWS", "drop")
    monkeypatch.setenv("CT_INGEST__MAX_FILE_BYTES", "4000")
    write_batch("droppable", 0, 40, extra_files={
        "images/6/notes.txt": png_bytes(digits[0][900]) + b"\0" * 5000,  # two rules at once
        "images/3/pic.png": encoded(digits, 901, "PPM"),
        "images/4/big.png": png_bytes(digits[0][902]) + b"\0" * 5000,
        "images/5/UPPER.PNG": png_bytes(digits[0][903]),  # suffixes compare lower-cased: kept
    })  # fmt: skip
    result = ingest_batch(lake, "droppable", load_settings())
    assert result["status"] == "curated" and result["images"] == 41 and result["dropped"] == 3
    dropped = lake.read_json(layout.report(layout.INGEST_DAG, "droppable", "dropped.json"))
    assert sorted((d["uri"].rsplit("/", 1)[-1], d["dropped_by"]) for d in dropped) == [
        ("big.png", ["file_size"]), ("notes.txt", ["file_extension", "file_size"]), ("pic.png", ["image_format"])]  # fmt: skip
    assert read_manifest(lake, "droppable")["uri"].str.endswith("UPPER.PNG").any()


def test_oversized_file_is_rejected_from_its_listed_size_and_never_read(lake, settings, write_batch, read_keys) -> None:
    write_batch("huge", 0, 40)
    with open(lake.path("landing/huge/images/3/huge.png"), "wb") as fh:
        fh.truncate(1 << 30)  # 1 GiB, sparse: costs no disk, but reading it would cost 1 GiB of memory
    ingest_batch(lake, "huge", settings)
    (failure,) = report_of(lake, "huge", ["file_size"])["failures"]
    assert failure["sample_rows"][0]["error"] == "1,073,741,824 bytes is over ingest.max_file_bytes=67,108,864"
    row = quarantined_manifest(lake, "huge").set_index("uri").loc[lake.uri("landing/huge/images/3/huge.png")]
    assert pd.isna(row["sha256"]) and row["bytes"] == 1 << 30
    assert "landing/huge/images/3/huge.png" not in read_keys


def test_oversized_object_on_s3_is_rejected_from_the_listing(s3_env, monkeypatch, digits, read_keys) -> None:
    monkeypatch.setenv("CT_LAKE_URI", f"s3://{s3_env}/lake")
    monkeypatch.setenv("CT_INGEST__MAX_FILE_BYTES", "4000")
    settings = load_settings()
    lake = Lake.from_uri(settings.lake_uri)
    write_to(lake, "s3big", digits[0][:30], digits[1][:30], {"images/3/big.png": b"\x89PNG" + b"\0" * 5000})
    ingest_batch(lake, "s3big", settings)
    (failure,) = report_of(lake, "s3big", ["file_size"])["failures"]
    assert failure["sample_rows"][0]["uri"] == lake.uri("landing/s3big/images/3/big.png")
    assert "landing/s3big/images/3/big.png" not in read_keys


# --- 15: files outside images/ ------------------------------------------------------------------


def test_label_folders_directly_under_the_batch_are_named_by_layout(lake, settings, write_batch, read_keys) -> None:
    """landing/flat/<label>/<file>, no images/ at all: every file is named, none is read, nothing is silently left out."""
    write_batch("flat", 0, 40, commit=False)
    root = lake.path(layout.landing("flat"))
    for label in os.listdir(root / "images"):
        os.rename(root / "images" / label, root / label)
    os.rmdir(root / "images")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # what a Mac's Finder leaves behind
    lake.write_bytes(layout.commit_marker("flat"), b"")

    report = plain_ingest_quarantines(lake, settings, write_batch, "flat", ["file_extension", "layout"])
    by_rule = {f["rule"]: f for f in report["failures"]}
    layout_failure = by_rule["layout"]
    assert report["rows"] == 41 and layout_failure["unexpected_count"] == 41, "every file is a row: no row_count 0"
    assert layout_failure["fix"].startswith("move each file to landing/<batch_id>/images/<label>/<file>")
    prefix, move = lake.uri("landing/flat") + "/", "outside images/: move label folders under landing/flat/images/"
    errors = {row["uri"].removeprefix(prefix): row["error"] for row in layout_failure["sample_rows"]}
    assert errors.pop(".DS_Store") == f"{move} (this file to images/<label>/.DS_Store)"
    assert len(errors) == 19 and all(error == f"{move} (this file to images/{rel})" for rel, error in errors.items())
    assert by_rule["file_extension"]["sample_rows"][0]["uri"] == lake.uri("landing/flat/.DS_Store")
    assert quarantined_manifest(lake, "flat")["label"].isna().all(), "a folder outside images/ is no label"
    assert [key for key in read_keys if key.startswith("landing/flat/")] == [layout.commit_marker("flat")], (
        "a file outside images/ is never read"
    )


def test_links_beside_images_are_flagged_and_not_followed(lake, settings, write_batch, tmp_path, read_keys) -> None:
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "x.png").write_bytes(b"outside the lake")
    write_batch("links", 0, 40)
    root = lake.path(layout.landing("links"))
    os.symlink(tmp_path / "secret", root / "cat")
    os.symlink(tmp_path / "secret" / "x.png", root / "x.png")
    ingest_batch(lake, "links", settings)
    by_rule = {f["rule"]: f for f in report_of(lake, "links", ["layout", "path_inside_batch"])["failures"]}
    assert {row["uri"] for row in by_rule["path_inside_batch"]["sample_rows"]} == {"cat", "x.png"}
    assert {row["uri"] for row in by_rule["layout"]["sample_rows"]} == {"cat", "x.png"}
    manifest = quarantined_manifest(lake, "links").set_index("uri")
    assert manifest.loc[["cat", "x.png"], "sha256"].isna().all(), "a link out of the batch is never read"
    assert not manifest.index.str.contains("secret").any(), "a linked folder is not walked into"
    assert not [key for key in read_keys if key.startswith(("landing/links/cat", "landing/links/x.png"))]


def test_label_folders_under_the_batch_on_s3_are_named_by_layout(s3_env, monkeypatch, digits, read_keys) -> None:
    monkeypatch.setenv("CT_LAKE_URI", f"s3://{s3_env}/lake")
    settings = load_settings()
    lake = Lake.from_uri(settings.lake_uri)
    write_to(lake, "s3flat", digits[0][:30], digits[1][:30], {"cat/x.png": png_bytes(digits[0][900])}, commit=False)
    for placeholder in ("lake/landing/s3flat/", "lake/landing/s3flat/images/"):  # what an S3 console's "folder" is
        lake.client.put_object(Bucket=s3_env, Key=placeholder, Body=b"")  # type: ignore[attr-defined]
    lake.write_bytes(layout.commit_marker("s3flat"), b"")
    ingest_batch(lake, "s3flat", settings)
    (failure,) = report_of(lake, "s3flat", ["layout"])["failures"]
    assert failure["sample_rows"] == [{
        "uri": lake.uri("landing/s3flat/cat/x.png"),
        "error": "outside images/: move label folders under landing/s3flat/images/ (this file to images/cat/x.png)",
    }]  # fmt: skip
    assert "landing/s3flat/cat/x.png" not in read_keys
