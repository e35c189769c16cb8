"""The promotion lock excludes for real: processes hammering it never overlap and never read a half-written lock."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from ml.registry import promotion_lock
from ml.storage import Lake

ROUNDS = 12


def _worker(root: str, name: str) -> None:
    lake = Lake.from_uri(Path(root).as_uri())
    for _ in range(ROUNDS):
        with promotion_lock(lake, owner=name, timeout_s=60):
            # A read-modify-write that loses updates unless the lock really excludes.
            count = int(lake.read_json_or("counter.json", {"n": 0})["n"])
            inside = lake.read_json_or("inside.json", {"holders": 0})["holders"]
            lake.write_json("inside.json", {"holders": inside + 1})
            lake.write_json("counter.json", {"n": count + 1})
            lake.write_json("inside.json", {"holders": inside})
            if inside != 0:
                raise AssertionError(f"{name} entered while {inside} other holder(s) were inside")


def test_lock_serialises_processes(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(str(tmp_path), f"w{i}")) for i in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    lake = Lake.from_uri(tmp_path.as_uri())
    assert lake.read_json("counter.json") == {"n": 3 * ROUNDS}, "no update was lost"
    assert not lake.exists("state/promotion.lock"), "the lock is released"


PAYLOAD = b"x" * 65536


def _create_and_delete(root: str, rounds: int) -> None:
    lake = Lake.from_uri(Path(root).as_uri())
    for _ in range(rounds):
        if lake.create_exclusive("lock", PAYLOAD):
            lake.delete_prefix("lock")


def test_create_exclusive_never_shows_a_partial_object(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    writer = context.Process(target=_create_and_delete, args=(str(tmp_path), 3000))
    writer.start()
    path = tmp_path / "lock"
    seen = partial = 0
    while writer.is_alive():
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        seen += 1
        partial += data != PAYLOAD
    writer.join()
    assert writer.exitcode == 0
    assert seen > 0 and partial == 0, f"{partial} of {seen} reads saw a half-written object"
