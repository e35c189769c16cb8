"""Turn a committed landing batch into a curated batch, or quarantine it with the reason.

A landing batch is ``landing/<batch_id>/images/<label>/<file>`` plus a ``_COMMITTED`` marker
written last by the producer. Ingest first checks the batch itself (its name, that its root really
is that folder, the marker; see ``INGEST_CHECKS`` in :mod:`ml.data.validate`), then lists its files and
reads only those that pass the listing checks (inside the batch root, a usable name, the expected
layout, an allowed extension and size). It builds the manifest, validates it with Great
Expectations plus the ingest checks, and writes either

* ``curated/<batch_id>/shards/shard-NNNNN.npy`` (fixed-capacity uint8 NHWC shards at
  ``image.store_size``, see :mod:`ml.training.shards`, each published as soon as it is full), then
  ``curated/<batch_id>/manifest.parquet`` last, naming each row's shard and the shard's SHA-256,
  so that a reader never sees half a batch; or
* ``quarantine/<batch_id>/report.json`` naming each failed rule and its rows, plus the manifest,
  after deleting the shards the scan published.

Landing folder names follow :data:`ml.layout.ID_RULE`. A committed folder whose name does not is
listed under a derived id (:func:`landing_id`) and quarantined with rule ``batch_name``: never read,
never curated, never lost.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import stat
import tempfile
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ml import layout
from ml.config import Settings
from ml.data import feedback, hashindex
from ml.data.availability import MARKER_EXAMPLE, marker_event_time, record_batch
from ml.data.validate import RuleFailure, ValidationOutcome, batch_failure, render_html, validate_manifest
from ml.errors import BatchNotFound, CtError, InfrastructureUnavailable, NothingToDo, UnsafePath, UsageError
from ml.storage import Lake, LocalLake, clean_key

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from ml.training.shards import ShardInfo, ShardWriter

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = [
    "batch_id", "uri", "label", "path_ok", "decode_ok", "mode_ok", "error", "width", "height", "channels", "mode",
    "mean", "std", "min", "max", "bright", "bytes", "sha256", "dup_of", "split", "row",
]  # fmt: skip
#: A curated manifest adds where each row's pixels are: its shard, its row there and the shard's hash.
CURATED_COLUMNS = [*MANIFEST_COLUMNS, "shard", "shard_row", "shard_sha256"]
INVALID_NAME_PREFIX = "invalid-name-"
# The report's ``stage`` of a failure: one validation, or the passes before and after dropping rows.
VALIDATION, BEFORE_DROP, AFTER_DROP = "validation", "before_drop", "after_drop"
DROP_RECORDS = ("dropped.json", "validation_before_drop.json")  # under reports/ct_ingest/<batch_id>/


class DecompressionBomb(ValueError):
    """The header promises more pixels than ``image.max_pixels``; nothing was decoded."""


class DisallowedFormat(ValueError):
    """The header names a format that ``ingest.extensions`` does not allow; nothing was decoded."""


def raw_name(name: str) -> bytes:
    """A listed name's bytes as stored: ``os.listdir`` hands back bytes that are not UTF-8 as surrogates."""
    try:
        return os.fsencode(name)
    except UnicodeEncodeError:  # a surrogate that stands for no byte; no listing returns one
        return name.encode("utf-8", "surrogatepass")


def _unprintable(char: str) -> bool:
    # str.isprintable() also refuses spaces other than ' ' (a no-break space): harmless in a name.
    return not char.isprintable() and unicodedata.category(char) != "Zs"


def printable(name: str) -> str:
    """``name`` as text that every encoder, log and terminal takes, for showing (never for opening).

    Bytes that are not UTF-8 become ``\\xff``; control and invisible characters ``\\n``, ``\\u202e``.
    """
    if name.isprintable():  # the common case, in C: also False for the surrogates of undecodable bytes
        return name
    text = raw_name(name).decode("utf-8", "backslashreplace")
    return "".join(c.encode("unicode_escape").decode("ascii") if _unprintable(c) else c for c in text)


def _shown(name: str, limit: int = 80) -> str:
    text = printable(name)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def name_problem(name: str) -> str | None:
    """Why a path in a batch is not a usable name (rule ``file_name``), or None."""
    if name.isprintable() and "\\" not in name:  # the common case, without a per-character loop
        return None
    try:
        text = raw_name(name).decode("utf-8")
    except UnicodeDecodeError:
        return "the name is not valid UTF-8"
    if "\\" in text:  # not a lake key (clean_key refuses it), and a folder separator elsewhere
        return "the name contains a backslash"
    if any(_unprintable(c) for c in text):
        return "the name contains a control or other invisible character"
    return None


def landing_id(name: str) -> str:
    """The id a landing folder is ingested under: its name, or a safe derived id when the name breaks the id rule.

    The derived id, ``invalid-name-<first 16 hex of the sha256 of the raw name>``, is a valid id and
    a short key, stable across runs, so the folder is quarantined once (rule ``batch_name``).
    """
    if layout.id_problem(name) is None:
        return name
    return INVALID_NAME_PREFIX + hashlib.sha256(raw_name(name)).hexdigest()[:16]


def landing_name(lake: Lake, batch_id: str) -> str:
    """The landing folder behind ``batch_id``: the id itself, or the invalid-named folder it was derived from."""
    if batch_id.startswith(INVALID_NAME_PREFIX) and not lake.exists(layout.commit_marker(batch_id)):
        for name in lake.list_children(layout.LANDING):
            if name != batch_id and landing_id(name) == batch_id:
                return name
    return batch_id


def _is_committed(lake: Lake, name: str) -> bool:
    try:
        return lake.exists(layout.commit_marker(name))
    except UnsafePath:
        # No lake key can spell this name (a backslash), so its marker cannot be seen: it can never be
        # ingested as it is, and is reported now rather than waited for.
        return True


def committed_batches(lake: Lake) -> list[str]:
    """Ids of the landing batches whose producer wrote the commit marker; the others are still being written.

    An invalid-named folder is listed under its :func:`landing_id`, so that it is quarantined, not skipped.
    """
    return [landing_id(name) for name in lake.list_children(layout.LANDING) if _is_committed(lake, name)]


def curated_batches(lake: Lake) -> list[str]:
    return [b for b in lake.list_children(layout.CURATED) if lake.exists(layout.manifest(b))]


def quarantined_batches(lake: Lake) -> list[str]:
    return [b for b in lake.list_children(layout.QUARANTINE) if lake.exists(layout.quarantine_report(b))]


def golden_source_batches(lake: Lake) -> set[str]:
    """Landing batches frozen into golden sets: evaluation only, never curated for training."""
    return {lake.read_json(layout.golden_source(n))["batch_id"] for n in lake.list_children(layout.GOLDEN)
            if lake.exists(layout.golden_source(n))}  # fmt: skip


def pending_batches(lake: Lake) -> list[str]:
    """Committed batches that have been neither curated, quarantined, frozen as a golden set nor taken as feedback."""
    done = set(curated_batches(lake)) | set(quarantined_batches(lake)) | golden_source_batches(lake)
    done |= set(feedback.feedback_batches(lake))
    return [b for b in committed_batches(lake) if b not in done]


def split_for(sha256: str, fractions: tuple[float, float, float]) -> str:
    """Train/val/test from the content hash: stable across reruns, and duplicates share a split."""
    position = int(sha256[:12], 16) / float(1 << 48)
    if position < fractions[0]:
        return "train"
    if position < fractions[0] + fractions[1]:
        return "val"
    return "test"


def _check_id(batch_id: str) -> None:
    if (problem := layout.id_problem(batch_id)) is not None:
        raise UsageError(problem)


def _require_committed(lake: Lake, batch_id: str) -> None:
    if not lake.exists(layout.commit_marker(batch_id)):
        raise BatchNotFound(
            f"no committed landing batch {batch_id!r}: {lake.uri(layout.commit_marker(batch_id))} is missing"
        )


def _batch_failure(lake: Lake, batch_id: str) -> RuleFailure | None:
    """The batch-level check that ``batch_id`` fails, or None. Nothing in the batch is read before they pass."""
    name = landing_name(lake, batch_id)
    if name != batch_id:
        return batch_failure(
            "batch_name",
            f"the landing folder '{_shown(name)}' breaks the id rule",
            fix=f"rename the landing folder to match the id rule ({layout.ID_RULE}; pattern {layout.ID_PATTERN}); "
            "it is then ingested as a new batch",
        )
    _require_committed(lake, batch_id)
    return _local_batch_failure(lake, batch_id) if isinstance(lake, LocalLake) else None


def _local_batch_failure(lake: LocalLake, batch_id: str) -> RuleFailure | None:
    """What only a file system can get wrong: where the batch root really is, and what the marker is."""
    root = lake.path(layout.landing(batch_id))
    expected = os.path.join(lake.root, layout.LANDING, batch_id)  # lake.root is resolved already
    for path, where in ((root, expected), (root / "images", os.path.join(expected, "images"))):
        # Every file is later judged "inside" against the real batch root: if that root were a symlink,
        # everything under its target would count as inside. So the root must be exactly where it says.
        real = os.path.realpath(path)
        if os.path.islink(path) or (os.path.lexists(path) and real != where):
            return batch_failure(
                "batch_root",
                f"{path.relative_to(lake.root)} resolves to {printable(real)}, not {where}",
                fix="move the batch's files into a real folder landing/<batch_id>/images/ in the lake",
            )
    mode = os.lstat(root / layout.COMMIT_MARKER).st_mode
    if not stat.S_ISREG(mode):
        kind = "a symlink" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        return batch_failure(
            "commit_marker",
            f"{layout.COMMIT_MARKER} is {kind}",
            fix=f"write {layout.COMMIT_MARKER} as an empty regular file, after every other file of the batch",
        )
    return None


@dataclass(frozen=True, slots=True)
class _Entry:
    relpath: str  # relative to the batch root, '/'-separated, as listed (undecodable bytes as surrogates)
    path_ok: bool
    error: str = ""
    size: int | None = None  # from the listing, for regular files inside the batch


def _list_entries(lake: Lake, batch_id: str) -> list[_Entry]:
    """Every file in the batch but its commit marker, flagging any path that leaves the batch root.

    The whole batch is listed, not just ``images/``: a file anywhere else (label folders put
    directly under the batch, a stray ``.DS_Store``) is a row that rule ``layout`` names, never
    silently left out. Only ``_COMMITTED`` at the batch root is not a row (``_batch_failure`` has
    judged it), and on S3 the empty ``<folder>/`` objects that consoles create, which hold no file.
    """
    root_key = layout.landing(batch_id)
    if isinstance(lake, LocalLake):
        return sorted(_local_entries(str(lake.path(root_key))), key=lambda e: e.relpath)
    entries = []
    for key, size in sorted(lake.list_sizes(root_key).items()):
        rel = key[len(root_key) + 1 :]
        if rel == layout.COMMIT_MARKER or (size == 0 and (rel == "" or rel.endswith("/"))):
            continue
        try:
            # A key that only normalises to a safe path ("a//b", "a/./b") is refused too: it is not
            # the object we would read.
            if clean_key(rel) != rel:
                raise UnsafePath(f"lake key {rel!r} is not a normalised path")
            entries.append(_Entry(rel, True, size=size))
        except UnsafePath as exc:
            entries.append(_Entry(rel, False, str(exc)))
    return entries


def _local_entries(root: str) -> Iterator[_Entry]:
    """The files under the batch ``root`` on a file system but its commit marker, one directory read at a time.

    ``_batch_failure`` has checked that ``root`` and ``images/`` (where there is one) are real
    folders where they say, and that the marker is a regular file, so a regular file or folder met
    here is inside the batch; only a symlink needs resolving. A symlinked folder is not walked into:
    like a symlinked file, it is an entry, judged by its target.
    """
    real_root = os.path.realpath(root)
    folders = [""]
    while folders:
        folder = folders.pop()
        with os.scandir(os.path.join(root, folder)) as listing:
            for item in listing:
                if not folder and item.name == layout.COMMIT_MARKER:
                    continue
                rel = f"{folder}/{item.name}" if folder else item.name
                if item.is_dir(follow_symlinks=False):
                    folders.append(rel)
                elif item.is_file(follow_symlinks=False):
                    yield _Entry(rel, True, size=item.stat(follow_symlinks=False).st_size)
                elif not item.is_symlink():
                    yield _Entry(rel, False, "not a regular file")  # a fifo, a socket, a device
                elif os.path.commonpath([real_root, real := os.path.realpath(item.path)]) != real_root:
                    yield _Entry(rel, False, "resolves outside the batch root")
                elif not os.path.isfile(real):
                    yield _Entry(rel, False, "not a regular file")
                else:
                    yield _Entry(rel, True, size=os.stat(real).st_size)


def _layout_problem(relpath: str, batch_id: str) -> str | None:
    parts = relpath.split("/")
    if parts[0] != "images" or len(parts) == 1:
        # Most often a producer that wrote its label folders straight into the batch (cat/x.png):
        # say where the file belongs, so that one move fixes them all.
        belongs = "/".join(parts) if len(parts) == 2 else f"<label>/{parts[-1]}"
        return f"outside images/: move label folders under landing/{batch_id}/images/ (this file to images/{belongs})"
    depth = len(parts) - 1  # images/<label>/<file> has two
    if depth == 2:
        return None
    where = "directly under images/" if depth < 2 else f"{depth - 2} folder(s) below its label folder"
    return f"expected images/<label>/<file>; this file is {where}"


def _listing_problems(entry: _Entry, settings: Settings, batch_id: str) -> list[tuple[str, str]]:
    """The row-level ingest checks decided from the listing alone, as (rule, error). A failing file is not read."""
    cfg = settings.ingest
    found = []
    if (problem := name_problem(entry.relpath)) is not None:
        found.append(("file_name", problem))
    if (problem := _layout_problem(entry.relpath, batch_id)) is not None:
        found.append(("layout", problem))
    if entry.path_ok:  # what leaves the batch, or is no regular file, has no extension or size worth judging
        suffix = PurePosixPath(entry.relpath).suffix.lower()
        if suffix not in cfg.extensions:
            found.append(("file_extension", f"extension '{suffix or '(none)'}' is not in ingest.extensions"))
        if entry.size is not None and entry.size > cfg.max_file_bytes:
            found.append(("file_size", f"{entry.size:,} bytes is over ingest.max_file_bytes={cfg.max_file_bytes:,}"))
    return found


def image_formats(extensions: tuple[str, ...]) -> frozenset[str]:
    """The PIL formats that ``ingest.extensions`` allow (rule ``image_format``), from PIL's own extension table."""
    from PIL import Image

    known = Image.registered_extensions()
    formats = {known[ext] for ext in extensions if ext in known}
    # Cameras write JPEGs that carry extra pictures, which PIL opens as MPO: still a JPEG.
    return frozenset(formats | ({"MPO"} if "JPEG" in formats else set()))


def _decode(data: bytes, settings: Settings, formats: frozenset[str]) -> tuple[dict[str, Any], np.ndarray]:
    """Decode one image safely and return its stats plus its stored square (uint8 HWC at image.store_size)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        # Only the header is parsed so far: a format the configuration does not allow (PSD, EPS, ICO
        # named .png) is refused before its decoder touches a pixel.
        if img.format not in formats:
            raise DisallowedFormat(
                f"decoded format {img.format} is not one that ingest.extensions allows ({', '.join(sorted(formats))})"
            )
        # The header gives the size before any pixel is decoded: refuse bombs here.
        if img.width * img.height > settings.image.max_pixels:
            raise DecompressionBomb(
                f"decompression bomb: {img.width}x{img.height} = {img.width * img.height:,} pixels "
                f"exceeds image.max_pixels={settings.image.max_pixels:,}"
            )
        img.load()
        mode = img.mode
        bands = len(img.getbands())
        # While ``img`` is open: what describe() works on may be the same image.
        stats, pixels = describe(img, settings, reject_unusual=settings.ingest.unsupported_modes == "reject")
    return {**stats, "channels": bands, "mode": mode}, pixels


def describe(image: Any, settings: Settings, reject_unusual: bool = False) -> tuple[dict[str, Any], np.ndarray]:
    """The stats drift compares and the stored square (uint8 HWC at ``image.store_size``) of a decoded image.

    The image is first turned upright and into the model's colour mode, and squared by the resize
    policy: the steps every inference path takes too (:mod:`ml.model.preprocess`). The stats are the
    upright image's, before it is resized (its own size, its own pixels).
    """
    from ml.data.imagestats import statistics
    from ml.model.preprocess import Preprocessing

    image, pixels = Preprocessing.from_settings(settings.image).stored(image, reject_unusual)
    return statistics(image), pixels


def _decode_error(data: bytes, exc: Exception) -> str:
    """A reason a person can act on, without the decoder's object reprs."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        return "empty file (0 bytes)"
    if isinstance(exc, DecompressionBomb):
        return str(exc)
    if isinstance(exc, Image.DecompressionBombError):  # PIL's own, larger limit tripped first in open()
        return f"decompression bomb: {exc}"
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format"
    return f"{type(exc).__name__}: {exc}"[:300]


@dataclass(frozen=True)
class _Read:
    """What a worker learned from one file: its hash, and its stats and pixels or why it did not decode."""

    size: int
    sha256: str
    outcome: str  # "ok", "format" (a format ingest.extensions refuses), "mode" (refused mode), "error"
    error: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    pixels: np.ndarray | None = None


def _read_one(lake: Lake, key: str, settings: Settings, formats: frozenset[str]) -> _Read:
    """Read, hash, decode and resize one file (in a worker thread: the lake and PIL release the GIL)."""
    from ml.model.preprocess import UnsupportedMode

    data = lake.read_bytes(key)
    digest = hashlib.sha256(data).hexdigest()
    try:
        stats, pixels = _decode(data, settings, formats)
    except DisallowedFormat as exc:
        return _Read(len(data), digest, "format", str(exc))
    except UnsupportedMode as exc:
        return _Read(len(data), digest, "mode", str(exc))
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a property of the file
        return _Read(len(data), digest, "error", _decode_error(data, exc))
    return _Read(len(data), digest, "ok", stats=stats, pixels=pixels)


#: Manifest columns held in NumPy arrays while a batch is scanned, with the value that marks "none":
#: the smallest type that holds each exactly (min and max are whole numbers 0..255). ``row`` is never
#: missing (-1 is its value for a file that did not decode), so its marker is one it never takes.
_NUMBERS: dict[str, tuple[str, float]] = {
    "width": ("int32", -1), "height": ("int32", -1), "channels": ("int8", -1), "bytes": ("int64", -1),
    "row": ("int32", -2), "shard_row": ("int32", -1), "mean": ("float64", math.nan), "std": ("float64", math.nan),
    "min": ("int16", -1), "max": ("int16", -1), "bright": ("float64", math.nan),
}  # fmt: skip
_FLAGS = ("path_ok", "decode_ok", "mode_ok")  # 1, 0, or -1 for None
_TEXTS = ("label", "error", "mode", "shard")  # few distinct values: a code per row, each text stored once
_FLOATS = ("mean", "std", "min", "max", "bright")  # float columns in the manifest, whatever they are stored as


class _Columns:
    """A batch's manifest rows while it is scanned: preallocated NumPy columns, under 200 bytes a row.

    One dict per row cost about 2.5 KB, so a batch of 100,000 files held 250 MB of rows and gave
    Python's collector 100,000 more objects to walk. Here the columns are allocated once for the
    listing's length (no growth, no copies), digests are 32 bytes a row, a row's name is the
    listing's own string, and repeated texts (labels, modes, shard names, the empty error) are a
    code each. :meth:`frame` turns them into the DataFrame after the scan has let go of its shard buffers.
    """

    def __init__(self, batch_id: str, prefix: str, rows: int) -> None:
        import numpy as np

        self.batch_id, self.prefix = batch_id, prefix
        self.names: list[str] = []  # the uri after ``prefix`` ("" where it does not start with it)
        self.whole: dict[int, str] = {}  # row -> uri, where it does not start with ``prefix``
        self.numbers = {name: np.full(rows, none, dtype) for name, (dtype, none) in _NUMBERS.items()}
        self.flags = {name: np.full(rows, -1, np.int8) for name in _FLAGS}
        self.codes = {name: np.zeros(rows, np.uint32) for name in _TEXTS}  # 0: None
        self.texts: list[str | None] = [None]
        self._code: dict[str, int] = {}
        self.digests = np.zeros((rows, 32), np.uint8)
        self.hashed = np.zeros(rows, bool)

    def __len__(self) -> int:
        return len(self.names)

    def _text(self, value: str) -> int:
        code = self._code.get(value)
        if code is None:
            code = self._code[value] = len(self.texts)
            self.texts.append(value)
        return code

    def append(self, row: dict[str, Any], relpath: str) -> None:
        """Add one row; ``relpath`` is its name in the listing (kept as is, not copied)."""
        import numpy as np

        i = len(self)
        if row["uri"] == self.prefix + relpath:
            self.names.append(relpath)
        else:
            self.whole[i] = row["uri"]
            self.names.append("")
        for name, column in self.numbers.items():
            if (value := row.get(name)) is not None:
                column[i] = value
        for name, flags in self.flags.items():
            if row[name] is not None:
                flags[i] = int(row[name])
        for name, codes in self.codes.items():
            if (value := row.get(name)) is not None:
                codes[i] = self._text(value)
        if sha := row.get("sha256"):
            self.digests[i] = np.frombuffer(bytes.fromhex(sha), np.uint8)
            self.hashed[i] = True

    def frame(self, settings: Settings, elsewhere: Callable[[list[str]], dict[str, str]]) -> pd.DataFrame:
        """The manifest as a DataFrame: splits from the digests, and each duplicate's first copy.

        ``elsewhere`` maps digests to the curated or golden dataset that already holds them; that
        copy wins over an earlier one in this batch.
        """
        import numpy as np
        import pandas as pd

        n = len(self)
        shas: list[str | None] = [self.digests[i].tobytes().hex() if self.hashed[i] else None for i in range(n)]
        uris = [self.whole.get(i) or self.prefix + name for i, name in enumerate(self.names)]
        # Only a file whose pixels were kept can be a duplicate image: one that was read but not kept
        # (it does not decode, its format or mode is refused) has that rule as its reason, and a
        # copy of it too. Its dup_of is None, so no_duplicate_images skips it rather than counting it twice.
        kept = self.numbers["row"][:n] >= 0
        where = elsewhere([sha for sha, keep in zip(shas, kept, strict=True) if sha and keep])
        first: dict[str, int] = {}
        dup_of: list[str | None] = []
        for i, sha in enumerate(shas):
            if sha is None or not kept[i]:
                dup_of.append(None)
                continue
            earlier = first.setdefault(sha, i)
            dup_of.append(where.get(sha) or (f"this batch:{self.names[earlier]}" if earlier != i else ""))
        fractions = settings.ingest.split_fractions
        texts = np.array(self.texts, dtype=object)
        columns: dict[str, Any] = {
            "batch_id": [self.batch_id] * n,
            "uri": uris,
            "sha256": shas,
            "dup_of": dup_of,
            "split": [split_for(sha, fractions) if sha else None for sha in shas],
            **{name: texts[codes[:n]] for name, codes in self.codes.items()},
        }
        for name, values in self.flags.items():
            columns[name] = pd.arrays.BooleanArray(values[:n] == 1, values[:n] == -1)
        for name, (_, none) in _NUMBERS.items():
            values = self.numbers[name][:n]
            missing = np.isnan(values) if values.dtype.kind == "f" else values == none
            if name in _FLOATS or missing.any():  # as pandas types a column of Python numbers with a gap
                columns[name] = np.where(missing, np.nan, values.astype(np.float64))
            else:
                columns[name] = values.astype(np.int64)
        return pd.DataFrame(columns)


@dataclass
class _Scan:
    """One pass over a batch's files: manifest rows, shards of the decoded pixels, and failed ingest checks.

    Files are read, hashed and decoded by ``ingest.workers`` threads, at most a few per worker in
    flight, and their results are taken in listing order: the manifest and the shards are the same
    whatever the timing, and memory holds one shard plus the files in flight and a few hundred bytes
    a row (:class:`_Columns`), never the batch.
    """

    lake: Lake
    batch_id: str
    settings: Settings
    formats: frozenset[str]
    writer: ShardWriter
    rows: _Columns
    problems: list[tuple[str, str, str]] = field(default_factory=list)  # uri, rule, error
    decoded: int = 0

    def run(self, entries: list[_Entry]) -> None:
        """Scan ``entries`` in order, emptying the list as it goes (each entry's row replaces it)."""
        cores = os.cpu_count() or 1
        # A local read costs CPU like the decode after it; an S3 GET mostly waits on the network.
        workers = self.settings.ingest.workers or (cores if isinstance(self.lake, LocalLake) else 4 * cores)
        pending: deque[tuple[dict[str, Any], str, Future[_Read] | None, list[tuple[str, str]]]] = deque()
        entries.reverse()
        with ThreadPoolExecutor(workers, thread_name_prefix="ct-ingest") as pool:
            while entries:
                entry = entries.pop()
                row, key, found = self._listed(entry)
                job = pool.submit(_read_one, self.lake, key, self.settings, self.formats) if key else None
                pending.append((row, entry.relpath, job, found))
                while len(pending) > 4 * workers or (pending and pending[0][2] is None):
                    self._finish(*pending.popleft())
            while pending:
                self._finish(*pending.popleft())

    def _listed(self, entry: _Entry) -> tuple[dict[str, Any], str, list[tuple[str, str]]]:
        found = _listing_problems(entry, self.settings, self.batch_id)
        named = entry.path_ok and all(rule != "file_name" for rule, _ in found)
        key = layout.join(layout.landing(self.batch_id), entry.relpath) if named else ""
        parts = entry.relpath.split("/")
        # Every text column goes through printable(): a name that is not UTF-8 must not crash pandas'
        # hashing (GX's uniqueness check), parquet or JSON further on.
        row: dict[str, Any] = {
            "batch_id": self.batch_id,
            "uri": self.lake.uri(key) if named else printable(entry.relpath),
            # None: layout names the row instead
            "label": printable(parts[1]) if len(parts) == 3 and parts[0] == "images" else None,
            "path_ok": entry.path_ok,
            # None: not known, so other rules skip the row. A file that fails a listing check is never read.
            "decode_ok": None,
            "mode_ok": None,
            "error": entry.error,
            "bytes": entry.size,
            "row": -1,
        }
        return row, key if entry.path_ok and not found else "", found

    def _finish(
        self, row: dict[str, Any], relpath: str, job: Future[_Read] | None, found: list[tuple[str, str]]
    ) -> None:
        if job is not None:
            found = found + self._apply(row, job.result())
        row["error"] = printable("; ".join(filter(None, [row["error"], *(error for _, error in found)])))
        self.rows.append(row, relpath)
        self.problems += [(row["uri"], rule, printable(error)) for rule, error in found]

    def _apply(self, row: dict[str, Any], read: _Read) -> list[tuple[str, str]]:
        row.update(bytes=read.size, sha256=read.sha256, decode_ok=False)
        if read.outcome == "format":
            row["decode_ok"] = None  # never decoded: image_format names the row, image_decodes skips it
            return [("image_format", read.error)]
        if read.outcome == "mode":
            row.update(decode_ok=True, mode_ok=False, error=read.error)
        elif read.outcome == "error":
            row["error"] = read.error
        else:
            assert read.pixels is not None
            shard, at = self.writer.add(read.pixels)
            row.update(read.stats, decode_ok=True, mode_ok=True, row=self.decoded, shard=shard, shard_row=at)
            self.decoded += 1
        return []


def build_manifest(
    lake: Lake, batch_id: str, settings: Settings, root: str, dataset_id: str
) -> tuple[pd.DataFrame, list[ShardInfo], pd.DataFrame]:
    """One manifest row per file in the batch, the shards of the rows that decoded, and the row-level
    ingest checks that failed (``uri``, ``rule``, ``error``).

    Each shard is published to ``root/dataset_id/shards/`` from memory as soon as it is full
    (:meth:`Lake.write_view`), so the uploads overlap the scan and no shard touches local disk on
    its way to S3. No reader looks at them before the manifest names them; :func:`ingest_batch` has
    deleted an earlier attempt's.
    """
    import pandas as pd

    from ml.training.shards import ShardWriter, capacity

    _require_committed(lake, batch_id)
    hashindex.ensure_indexed(lake)
    store, channels = settings.image.stored, settings.image.channels

    def publish(name: str, data: memoryview) -> None:
        lake.write_view(layout.shard(dataset_id, name, root), data)

    writer = ShardWriter((store, store, channels), capacity(store, channels, settings.image.shard_mb), publish)
    entries = _list_entries(lake, batch_id)
    rows = _Columns(batch_id, lake.uri(layout.landing(batch_id)) + "/", len(entries))
    scan = _Scan(lake, batch_id, settings, image_formats(settings.ingest.extensions), writer, rows)
    try:
        scan.run(entries)
    except BaseException:
        writer.abort()
        raise
    shards = writer.close()  # lets go of its buffers: the frame is built in the memory they held
    # One index lookup for the whole batch: rows whose content is already curated or frozen elsewhere.
    manifest = rows.frame(settings, lambda hashes: hashindex.lookup(lake, hashes))
    manifest = manifest.reindex(columns=[*MANIFEST_COLUMNS, "shard", "shard_row"])
    manifest = manifest.astype(
        {"path_ok": bool, "decode_ok": "boolean", "mode_ok": "boolean", "row": "int64", "label": object, "error": str}
    )
    return manifest, shards, pd.DataFrame(scan.problems, columns=["uri", "rule", "error"])


def ingest_batch(
    lake: Lake, batch_id: str, settings: Settings, root: str = layout.CURATED, dataset_id: str | None = None
) -> dict[str, Any]:
    """Curate (into ``root/dataset_id``) or quarantine one batch. Re-running a curated batch changes nothing."""
    _check_id(batch_id)
    dataset_id = dataset_id or batch_id
    if lake.exists(layout.manifest(dataset_id, root)):
        log.info("batch %s is already in %s/%s; nothing to redo", batch_id, root, dataset_id)
        if not hashindex.has_segment(lake, root, dataset_id):  # killed between the manifest and the index
            hashindex.add(lake, root, dataset_id, read_manifest(lake, dataset_id, root)["sha256"])
        return {"batch_id": batch_id, "status": "curated", "already_done": True,
                **_curated_summary(lake, dataset_id, root)}  # fmt: skip
    # No manifest names anything in the dataset's folder yet, so all that is there is an earlier,
    # killed attempt's: its shards, its batch record and the temporary files of writes it never
    # renamed (a local lake's ``.<name>.<pid>.<n>.tmp``). The folder goes whole, the folder too.
    lake.delete_prefix(layout.dataset(dataset_id, root))
    if (failure := _batch_failure(lake, batch_id)) is not None:
        return _quarantine(lake, batch_id, [(failure, VALIDATION)], rows=0)
    if root == layout.CURATED and feedback.is_feedback(lake, batch_id):  # late labels, not images
        try:
            return feedback.ingest(lake, batch_id, settings)
        except feedback.FeedbackRejected as exc:
            return _quarantine(lake, batch_id, [(batch_failure(exc.rule, exc.why, fix=exc.fix), VALIDATION)], rows=0)
    try:
        event_time = marker_event_time(lake.read_bytes(layout.commit_marker(batch_id)))
    except ValueError as exc:
        failure = batch_failure(
            "commit_marker", f"{layout.COMMIT_MARKER}: {exc}",
            fix=f"leave {layout.COMMIT_MARKER} empty, or write an event time into it as {MARKER_EXAMPLE}",
        )  # fmt: skip
        return _quarantine(lake, batch_id, [(failure, VALIDATION)], rows=0)
    return _curate(lake, batch_id, settings, root, dataset_id, event_time)


def _curate(
    lake: Lake, batch_id: str, settings: Settings, root: str, dataset_id: str, event_time: float | None = None
) -> dict[str, Any]:
    manifest, shards, problems = build_manifest(lake, batch_id, settings, root, dataset_id)
    outcome = validate_manifest(manifest, settings, problems)
    passes, checked, dropped = [(outcome, VALIDATION)], manifest, manifest.iloc[0:0]
    if not outcome.success and settings.ingest.on_bad_rows == "drop":
        bad = outcome.rows_to_drop(settings.ingest.always_fail_rules)
        if bad:
            # Row-level failures only: drop those rows (with a record), then the rest must pass on its own.
            dropped, manifest = _drop(lake, batch_id, manifest, outcome, bad)
            first_pass = outcome
            outcome = validate_manifest(manifest, settings, problems[~problems["uri"].isin(bad)])
            # The report keeps both passes: a batch that failed after the drop says what was dropped first.
            passes = [(first_pass, BEFORE_DROP), (outcome, AFTER_DROP)]
    if len(passes) == 1:  # nothing dropped this time: an earlier run's drop records would mislead
        for name in DROP_RECORDS:
            lake.delete_prefix(layout.report(layout.INGEST_DAG, batch_id, name))
    report_dir = layout.report(layout.INGEST_DAG, batch_id, "")
    lake.write_json(layout.join(report_dir, "validation.json"), outcome.gx_results)
    lake.write_bytes(layout.join(report_dir, "validation.html"), render_html(batch_id, outcome, len(dropped)).encode())
    if not outcome.success:
        # The shards the scan published, and the folder with them: a quarantined batch leaves nothing
        # under curated/. Before the report: a rerun would delete them too.
        lake.delete_prefix(layout.dataset(dataset_id, root))
        # The quarantined manifest holds every row, the dropped ones too: the report names them.
        return _quarantine(
            lake, batch_id, [(f, stage) for result, stage in passes for f in result.failures], rows=len(checked),
            manifest=checked[MANIFEST_COLUMNS], expectations_evaluated=outcome.evaluated, dropped_rows=len(dropped),
            validation_uri=lake.uri(layout.join(report_dir, "validation.html")),
        )  # fmt: skip

    del checked  # every row, dropped ones too: the quarantine's, not needed past here (a batch is held once)
    manifest = _locate(manifest, shards)
    if len(dropped):
        _write_parquet(lake, layout.join(root, dataset_id, "dropped.parquet"), dropped[MANIFEST_COLUMNS])
    record_batch(lake, dataset_id, event_time, root)  # when it became available: what point-in-time runs read
    # The manifest is written after every shard it names: its presence is what makes the batch curated.
    _write_parquet(lake, layout.manifest(dataset_id, root), manifest)
    hashindex.add(lake, root, dataset_id, manifest["sha256"])
    if lake.exists(layout.quarantine_report(batch_id)):
        lake.delete_prefix(layout.quarantine(batch_id))  # an earlier rejection was fixed by configuration
    log.info("batch %s curated: %d images, %d dropped", batch_id, len(manifest), len(dropped))
    summary = _curated_summary(lake, dataset_id, root, manifest)
    return {"batch_id": batch_id, "status": "curated", "already_done": False, "dropped": len(dropped), **summary}


def ingest_many(lake: Lake, batch_ids: list[str] | None, settings: Settings) -> dict[str, Any]:
    """Ingest the given batches (None: every pending one), each on its own.

    One batch's failure never stops the others: an unexpected error quarantines that batch with the
    rule ``ingest_error`` and the loop goes on. An outage (:class:`InfrastructureUnavailable`) stops
    the step instead, so that the task retries and no batch is quarantined for the service's fault.
    """
    for batch_id in batch_ids or []:
        _check_id(batch_id)  # refuse the whole command, as the CLI does, before any batch is touched
    ids = list(dict.fromkeys(batch_ids or [])) or pending_batches(lake)
    if not ids:
        raise NothingToDo("no committed landing batch is waiting to be ingested")
    results = []
    for batch_id in ids:
        try:
            results.append(ingest_batch(lake, batch_id, settings))
        except (InfrastructureUnavailable, BatchNotFound):
            raise
        except Exception as exc:
            from ml.outage import outage

            if (unavailable := outage(exc)) is not None:
                raise unavailable from exc
            log.exception("batch %s could not be ingested; quarantining it and going on", batch_id)
            results.append(quarantine_unexpected(lake, batch_id, exc))
    return {
        "batches": results,
        "curated": [r["batch_id"] for r in results if r["status"] == "curated"],
        "quarantined": [r for r in results if r["status"] == "quarantined"],
        "feedback": [r["batch_id"] for r in results if r["status"] == "feedback"],
    }


def quarantine_unexpected(lake: Lake, batch_id: str, exc: BaseException) -> dict[str, Any]:
    """Quarantine a batch whose ingest crashed, with the error, so that it cannot wedge the queue."""
    failure = batch_failure("ingest_error", printable(f"{type(exc).__name__}: {exc}"[:2000]))
    if not lake.exists(layout.manifest(batch_id)):  # a curated batch is never touched
        lake.delete_prefix(layout.dataset(batch_id))  # what the crashed scan published, before the report
    return _quarantine(lake, batch_id, [(failure, VALIDATION)], rows=0)


def _drop(
    lake: Lake, batch_id: str, manifest: pd.DataFrame, outcome: ValidationOutcome, bad: set[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off the rows to drop, recording each with every rule it failed; returns (dropped, kept).

    ``dropped.json`` and ``validation_before_drop.json`` are written whether the rest then passes or not.
    """
    is_bad = manifest["uri"].isin(bad)
    rules = outcome.rules_by_uri()
    dropped = manifest[is_bad].assign(dropped_by=lambda d: d["uri"].map(rules))
    records, before = DROP_RECORDS
    lake.write_json(layout.report(layout.INGEST_DAG, batch_id, before), outcome.summary())
    lake.write_json(
        layout.report(layout.INGEST_DAG, batch_id, records), dropped[["uri", "dropped_by", "error"]].to_dict("records")
    )
    return dropped, manifest[~is_bad].reset_index(drop=True)


def _quarantine(
    lake: Lake,
    batch_id: str,
    failures: list[tuple[RuleFailure, str]],
    rows: int,
    manifest: pd.DataFrame | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Write ``quarantine/<batch_id>/report.json``: one format for every rule, GX's or ingest's own.

    ``failures`` pairs each failed rule with its ``stage``: ``validation``, or ``before_drop`` and
    ``after_drop`` when ``ingest.on_bad_rows=drop`` dropped rows and the rest failed anyway.
    """
    rules = sorted({failure.rule for failure, _ in failures})
    name = printable(landing_name(lake, batch_id))  # an invalid-named folder's real name, escaped
    report = {
        "batch_id": batch_id,
        "status": "quarantined",
        "rows": rows,
        "failed_rules": rules,
        "success": False,
        "failures": [{**failure.summary(), "stage": stage} for failure, stage in failures],
        "landing_name": name,
        "landing_uri": f"{lake.uri(layout.LANDING)}/{name}",
        **extra,
    }
    if manifest is not None:
        _write_parquet(lake, layout.quarantine_manifest(batch_id), manifest)
    else:
        lake.delete_prefix(layout.quarantine_manifest(batch_id))  # an earlier run's, for other reasons
    lake.write_json(layout.quarantine_report(batch_id), report)
    log.warning("batch %s quarantined: %s", batch_id, ", ".join(rules))
    return {"batch_id": batch_id, "status": "quarantined", "failed_rules": rules,
            "report_uri": lake.uri(layout.quarantine_report(batch_id))}  # fmt: skip


def freeze_golden(lake: Lake, batch_id: str, name: str, settings: Settings) -> dict[str, Any]:
    """Validate a committed landing batch into ``golden/<name>``: a frozen set added to every evaluation."""
    if lake.exists(layout.golden_source(name)):
        source = lake.read_json(layout.golden_source(name))
        if source["batch_id"] != batch_id:
            raise CtError(f"golden set {name!r} is frozen from batch {source['batch_id']}; choose another name")
    if batch_id in curated_batches(lake):
        raise CtError(f"batch {batch_id} is already curated for training; a golden set must be data no model trains on")
    result = ingest_batch(lake, batch_id, settings, root=layout.GOLDEN, dataset_id=name)
    if result["status"] == "curated":
        lake.write_json(layout.golden_source(name), {"batch_id": batch_id, "name": name})
    return {**result, "golden_set": name}


def _curated_summary(
    lake: Lake, dataset_id: str, root: str = layout.CURATED, manifest: pd.DataFrame | None = None
) -> dict[str, Any]:
    """Images and splits of a curated dataset (from ``manifest`` when the caller has it in hand)."""
    manifest = read_manifest(lake, dataset_id, root) if manifest is None else manifest
    return {
        "images": len(manifest),
        "splits": {str(k): int(v) for k, v in manifest["split"].value_counts().sort_index().items()},
        "manifest_uri": lake.uri(layout.manifest(dataset_id, root)),
    }


def _locate(manifest: pd.DataFrame, shards: list[ShardInfo]) -> pd.DataFrame:
    """Give every kept row its final ``row`` and its shard's hash (the shards are published already).

    Rows dropped after decoding leave their pixels in a shard that no manifest row points at.
    """
    import numpy as np

    hashes = {info.name: info.sha256 for info in shards}
    # In place, not a copy: at 100,000 rows every copy of the manifest costs tens of MB.
    manifest["row"] = np.arange(len(manifest), dtype=np.int64)
    manifest["shard_row"] = manifest["shard_row"].astype("int64")
    manifest["shard_sha256"] = manifest["shard"].map(hashes)
    return manifest if list(manifest.columns) == CURATED_COLUMNS else manifest[CURATED_COLUMNS]


#: Rows converted to Arrow at a time when a frame is written: the conversion's memory is one group's.
PARQUET_ROWS = 16_384


def _write_parquet(lake: Lake, key: str, frame: pd.DataFrame) -> None:
    """Write ``frame`` as Parquet, a row group at a time (converting 100,000 rows at once took 80 MB)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Arrow's default pool (mimalloc) keeps what it frees for its next allocation; the system
    # allocator gives it back. This sets the pool of the whole process (a step is a process of its
    # own), and is idempotent.
    pa.set_memory_pool(pa.system_memory_pool())
    schema = pa.Schema.from_pandas(frame, preserve_index=False)
    with tempfile.TemporaryDirectory(prefix="ct-parquet-") as tmp:
        path = Path(tmp) / "frame.parquet"
        with pq.ParquetWriter(path, schema) as writer:
            for start in range(0, max(len(frame), 1), PARQUET_ROWS):
                part = frame.iloc[start : start + PARQUET_ROWS]
                writer.write_table(pa.Table.from_pandas(part, schema=schema, preserve_index=False))
        lake.write_file(key, path)


def read_manifest(lake: Lake, batch_id: str, root: str = layout.CURATED) -> pd.DataFrame:
    import pandas as pd

    with lake.local_file(layout.manifest(batch_id, root)) as path:
        return pd.read_parquet(path)


def manifest_hash(lake: Lake, batch_id: str) -> str:
    """The content hash of a curated manifest: what a model's data window records."""
    return hashlib.sha256(lake.read_bytes(layout.manifest(batch_id))).hexdigest()


def load_images(lake: Lake, batch_id: str, root: str = layout.CURATED) -> np.ndarray:
    """All of a batch's images in manifest order (small batches and tests; training streams shards instead)."""
    from ml.data.curated import ShardReader

    manifest = read_manifest(lake, batch_id, root)
    with ShardReader(lake) as reader:
        return reader.gather(manifest, root, dataset=batch_id)
