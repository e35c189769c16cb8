from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml.errors import StorageError, UnsafePath
from ml.storage import Lake, LocalLake
from ml.training import shards


def exercise(lake: Lake) -> None:
    lake.write_bytes("a/b/one.bin", b"1")
    lake.write_json("a/two.json", {"x": 2})
    lake.write_bytes("c.txt", b"c")
    assert lake.read_bytes("a/b/one.bin") == b"1"
    assert lake.read_json("a/two.json") == {"x": 2}
    assert lake.exists("a/two.json") and not lake.exists("a/nope.json")
    assert lake.list_keys("a") == ["a/b/one.bin", "a/two.json"]
    assert lake.list_children("a") == ["b", "two.json"]
    assert lake.list_children("") == ["a", "c.txt"]
    lake.write_json("a/two.json", {"x": 3})  # overwrite in place
    assert lake.read_json("a/two.json") == {"x": 3}
    with lake.local_file("a/b/one.bin") as path:
        assert path.read_bytes() == b"1"
    assert lake.create_exclusive("locks/x", b"first") is True
    assert lake.create_exclusive("locks/x", b"second") is False
    assert lake.read_bytes("locks/x") == b"first"
    lake.delete_prefix("a")
    assert lake.list_keys("a") == [] and lake.exists("c.txt")
    # A shard's buffer, published from memory: aligned and not, and on S3 past the multipart threshold (8 MB).
    buffer = shards._aligned(9 << 20)
    buffer[:] = np.random.default_rng(0).integers(0, 256, len(buffer), dtype=np.uint8)
    for key, start, stop in (("v/aligned.npy", 0, (9 << 20) - 123), ("v/offset.npy", 7, 70_007)):
        lake.write_view(key, buffer.data[start:stop])
        assert lake.read_bytes(key) == buffer[start:stop].tobytes()
    assert lake.list_keys("v") == ["v/aligned.npy", "v/offset.npy"], "nothing else, no temporary file"
    with pytest.raises(StorageError, match="does not exist"):
        lake.read_bytes("a/two.json")
    with pytest.raises(UnsafePath):
        lake.read_bytes("../outside")


def test_local_lake(tmp_path: Path) -> None:
    exercise(Lake.from_uri((tmp_path / "lake").as_uri()))


def test_s3_lake_against_moto_server(s3_env: str) -> None:
    exercise(Lake.from_uri(f"s3://{s3_env}/prefix"))


def test_local_write_is_atomic_no_temp_left_behind(tmp_path: Path) -> None:
    lake = LocalLake(tmp_path)
    lake.write_bytes("x/y.bin", b"data")
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["y.bin"]


def test_unsupported_uri_is_a_clear_error() -> None:
    with pytest.raises(StorageError, match="unsupported lake URI"):
        Lake.from_uri("gs://bucket/x")
