"""The lake: one small interface over a local directory (``file://``) and S3 (``s3://``, boto3).

Keys are ``/``-separated paths relative to the lake root, e.g. ``curated/b1/manifest.parquet``.
Every write is atomic for a reader: files are written to a temporary name and renamed; on S3 a
``put_object`` is atomic per key, and multi-object outputs write their index object last.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

from ml.errors import CorruptState, InfrastructureUnavailable, StorageError, UnsafePath

log = logging.getLogger(__name__)


def clean_key(key: str) -> str:
    """Normalise a lake key and refuse anything that could leave the lake root."""
    if key.startswith("/") or "\\" in key:
        raise UnsafePath(f"lake key {key!r} must be relative and use '/'")
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafePath(f"lake key {key!r} contains '..'")
    return "/".join(parts)


def join(*parts: str) -> str:
    return clean_key(posixpath.join(*parts))


class Lake(ABC):
    """Read and write objects under one root."""

    root_uri: str

    @staticmethod
    def from_uri(uri: str) -> Lake:
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            return LocalLake(Path(parsed.path))
        if parsed.scheme == "s3":
            if not parsed.netloc:
                raise StorageError(f"{uri!r} names no bucket; use s3://bucket/prefix")
            return S3Lake(parsed.netloc, parsed.path.strip("/"))
        raise StorageError(f"unsupported lake URI {uri!r}; use file:///abs/path or s3://bucket/prefix")

    def uri(self, key: str) -> str:
        return f"{self.root_uri.rstrip('/')}/{clean_key(key)}"

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist yet; True if this call created it (a lock primitive)."""

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """All keys under ``prefix`` (recursive), relative to the lake root, sorted."""

    @abstractmethod
    def list_children(self, prefix: str) -> list[str]:
        """Names of the immediate children (files and folders) of ``prefix``, sorted."""

    @abstractmethod
    def list_sizes(self, prefix: str) -> dict[str, int]:
        """Every key under ``prefix`` with its size in bytes, from the listing alone (nothing is read)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None: ...

    @abstractmethod
    @contextmanager
    def local_file(self, key: str) -> Iterator[Path]:
        """A local path holding the object, for readers that need a file (mmap, parquet)."""

    def write_file(self, key: str, path: Path) -> None:
        self.write_bytes(key, path.read_bytes())

    @abstractmethod
    def write_view(self, key: str, data: memoryview) -> None:
        """Publish a large object held in memory (a shard), without first copying it or writing it locally."""

    def read_json(self, key: str) -> Any:
        """Parse a JSON object; a corrupt one raises :class:`CorruptState` naming it."""
        data = self.read_bytes(key)
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptState(
                f"{self.uri(key)} is not valid JSON ({exc}); restore it, or move it aside if it is expendable"
            ) from exc

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

    def read_json_or(self, key: str, default: Any) -> Any:
        return self.read_json(key) if self.exists(key) else default


class LocalLake(Lake):
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root_uri = self.root.as_uri()

    def path(self, key: str) -> Path:
        return self.root / clean_key(key) if clean_key(key) else self.root

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError as exc:
            raise StorageError(f"{self.uri(key)} does not exist") from exc

    def _publish(self, key: str, write: Callable[[BinaryIO], object], publish: Callable[[str, Path], None]) -> None:
        """Write to a temporary file beside the target, then ``publish`` it (rename, or link)."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            publish(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)

    def write_bytes(self, key: str, data: bytes) -> None:
        self._publish(key, lambda fh: fh.write(data), os.replace)

    def write_file(self, key: str, path: Path) -> None:
        target, temporary = self._beside(key)
        try:
            os.link(path, temporary)  # on the lake's own filesystem: published without copying
        except OSError:
            with open(path, "rb") as src:
                self._publish(key, lambda fh: shutil.copyfileobj(src, fh, 1 << 22), os.replace)
            return
        self._settle(temporary, target)

    def write_view(self, key: str, data: memoryview) -> None:
        from ml.training.shards import write_direct

        target, temporary = self._beside(key)
        try:
            write_direct(temporary, data)  # page-cache free where it can be: see its docstring
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        self._settle(temporary, target)

    def _beside(self, key: str) -> tuple[Path, Path]:
        """The path of ``key``, and a temporary name beside it (its folder made)."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target, target.parent / f".{target.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"

    @staticmethod
    def _settle(temporary: Path, target: Path) -> None:
        """Make ``temporary`` durable, then rename it to ``target``; it is gone either way."""
        try:
            fd = os.open(temporary, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def create_exclusive(self, key: str, data: bytes) -> bool:
        try:
            # link() is atomic and fails if the target exists: a reader never sees a half-written object.
            self._publish(key, lambda fh: fh.write(data), os.link)
            return True
        except FileExistsError:
            return False

    def list_keys(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        keys = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue
                keys.append(Path(dirpath, name).relative_to(self.root).as_posix())
        return sorted(keys)

    def list_children(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if not p.name.endswith(".tmp"))

    def list_sizes(self, prefix: str) -> dict[str, int]:
        return {key: self.path(key).lstat().st_size for key in self.list_keys(prefix)}

    def delete_prefix(self, prefix: str) -> None:
        target = self.path(prefix)
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)

    @contextmanager
    def local_file(self, key: str) -> Iterator[Path]:
        path = self.path(key)
        if not path.is_file():
            raise StorageError(f"{self.uri(key)} does not exist")
        yield path


class S3Lake(Lake):
    """S3 through boto3. Endpoint and credentials come from the usual AWS environment variables."""

    def __init__(self, bucket: str, prefix: str) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.root_uri = f"s3://{bucket}/{prefix}".rstrip("/")

    @cached_property
    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        # Retries: botocore's standard mode (AWS_MAX_ATTEMPTS tunes it); then an outage is an error.
        config = Config(
            retries={"mode": "standard"},
            max_pool_connections=64,  # ingest's readers and the shard uploads run concurrently
            connect_timeout=float(os.environ.get("CT_S3_CONNECT_TIMEOUT", "10")),
            read_timeout=float(os.environ.get("CT_S3_READ_TIMEOUT", "60")),
        )
        return boto3.client("s3", endpoint_url=os.environ.get("CT_S3_ENDPOINT_URL") or None, config=config)

    @contextmanager
    def _call(self, what: str, key: str = "") -> Iterator[None]:
        """Turn "S3 did not answer" into :class:`InfrastructureUnavailable`; other errors pass through."""
        from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

        try:
            yield
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"):
                raise InfrastructureUnavailable(
                    f"S3 failed while {what} {self.uri(key)}: {code or status}; retry later"
                ) from exc
            raise
        except (ConnectionError, HTTPClientError) as exc:
            endpoint = self.client.meta.endpoint_url
            raise InfrastructureUnavailable(
                f"S3 at {endpoint} did not answer while {what} {self.uri(key)}: {exc}"
            ) from exc
        except BotoCoreError as exc:
            if "credential" in type(exc).__name__.lower():
                raise StorageError(f"no S3 credentials while {what} {self.uri(key)}: {exc}") from exc
            raise

    def _key(self, key: str) -> str:
        key = clean_key(key)
        return "/".join(part for part in (self.prefix, key) if part)

    def _rel(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def read_bytes(self, key: str) -> bytes:
        try:
            with self._call("reading", key):
                return bytes(self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read())
        except self.client.exceptions.NoSuchKey as exc:
            raise StorageError(f"{self.uri(key)} does not exist") from exc

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._call("writing", key):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def write_file(self, key: str, path: Path) -> None:
        with self._call("uploading", key):
            self.client.upload_file(str(path), self.bucket, self._key(key))

    def write_view(self, key: str, data: memoryview) -> None:
        """A multipart upload straight from memory: its parts go up concurrently, each read from ``data`` once."""
        with self._call("uploading", key):
            self.client.upload_fileobj(_ViewReader(data), self.bucket, self._key(key))

    def create_exclusive(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            # S3 conditional write: fails with 412 if the key exists (and 409 on a concurrent race).
            with self._call("creating", key):
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
                "412",
                "409",
            ):
                return False
            raise

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            with self._call("checking", key):
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def _paginate(self, prefix: str, delimiter: str | None) -> Iterator[dict[str, Any]]:
        full = self._key(prefix)
        full = f"{full}/" if full else ""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
        if delimiter:
            kwargs["Delimiter"] = delimiter
        with self._call("listing", prefix):
            yield from self.client.get_paginator("list_objects_v2").paginate(**kwargs)

    def list_keys(self, prefix: str) -> list[str]:
        return sorted(self._rel(o["Key"]) for page in self._paginate(prefix, None) for o in page.get("Contents", []))

    def list_sizes(self, prefix: str) -> dict[str, int]:
        return {
            self._rel(o["Key"]): int(o["Size"])
            for page in self._paginate(prefix, None)
            for o in page.get("Contents", [])
        }

    def list_children(self, prefix: str) -> list[str]:
        names: set[str] = set()
        for page in self._paginate(prefix, "/"):
            names.update(p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for p in page.get("CommonPrefixes", []))
            names.update(o["Key"].rsplit("/", 1)[-1] for o in page.get("Contents", []))
        return sorted(names)

    def delete_prefix(self, prefix: str) -> None:
        keys = [self._key(k) for k in self.list_keys(prefix)]
        if self.exists(prefix):
            keys.append(self._key(prefix))
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[start : start + 1000]]
            with self._call("deleting", prefix):
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})

    @contextmanager
    def local_file(self, key: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="ct-lake-") as tmp:
            path = Path(tmp) / posixpath.basename(clean_key(key))
            with self._call("downloading", key):
                self.client.download_file(self.bucket, self._key(key), str(path))
            yield path


class _ViewReader(io.RawIOBase):
    """A seekable, read-only file over a memoryview, for boto3's uploads.

    ``io.BytesIO`` would copy the whole view first; here each ``read`` copies only the part it returns.
    """

    def __init__(self, data: memoryview) -> None:
        super().__init__()
        self.data, self.position = data, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        end = len(self.data) if size is None or size < 0 else min(self.position + size, len(self.data))
        chunk = bytes(self.data[self.position : end])
        self.position = max(self.position, end)
        return chunk

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: len(self.data)}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position
