"""The promotion lease: real exclusion between processes, recovery from dead and paused holders, fencing."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from ml.errors import CtError, LeaseLost
from ml.release.lease import generation_key, generations, promotion_lease
from ml.storage import Lake

ROUNDS = 12


def _no_recovery(intent: dict, lease: object) -> None:
    raise AssertionError(f"nothing should need recovery, got {intent}")


def _worker(root: str, name: str) -> None:
    lake = Lake.from_uri(Path(root).as_uri())
    for _ in range(ROUNDS):
        with promotion_lease(lake, owner=name, recover=_no_recovery, timeout_s=60):
            # A read-modify-write that loses updates unless the lease really excludes.
            count = int(lake.read_json_or("counter.json", {"n": 0})["n"])
            inside = lake.read_json_or("inside.json", {"holders": 0})["holders"]
            lake.write_json("inside.json", {"holders": inside + 1})
            lake.write_json("counter.json", {"n": count + 1})
            lake.write_json("inside.json", {"holders": inside})
            if inside != 0:
                raise AssertionError(f"{name} entered while {inside} other holder(s) were inside")


def test_lease_serialises_processes(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker, args=(str(tmp_path), f"w{i}")) for i in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    lake = Lake.from_uri(tmp_path.as_uri())
    assert lake.read_json("counter.json") == {"n": 3 * ROUNDS}, "no update was lost"
    top = generations(lake)[-1]
    assert top == 3 * ROUNDS and lake.read_json(generation_key(top))["released"], "one generation per hold"


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


def _hold_forever(root: str, intent: dict | None, ready: object) -> None:
    lake = Lake.from_uri(Path(root).as_uri())
    with promotion_lease(lake, owner="doomed", recover=_no_recovery) as lease:
        if intent:
            lease.set_intent(intent)
        ready.set()  # type: ignore[attr-defined]
        time.sleep(3600)


def _killed_holder(tmp_path: Path, intent: dict | None = None) -> None:
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    holder = context.Process(target=_hold_forever, args=(str(tmp_path), intent, ready))
    holder.start()
    assert ready.wait(60)
    os.kill(holder.pid, signal.SIGKILL)  # type: ignore[arg-type]
    holder.join()


def test_a_killed_holder_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    _killed_holder(tmp_path)
    lake = Lake.from_uri(tmp_path.as_uri())
    started = time.monotonic()
    with promotion_lease(lake, owner="next", recover=_no_recovery):
        waited = time.monotonic() - started
    assert waited < 5, f"took {waited:.1f}s to recover a dead holder's lease"


def test_a_dead_holders_intent_is_handed_to_the_next_holder(tmp_path: Path) -> None:
    intent = {"record_key": "reports/x/gate.json", "target": "7", "expected": "6", "run_key": "x", "kind": "gate"}
    _killed_holder(tmp_path, intent)
    lake = Lake.from_uri(tmp_path.as_uri())
    recovered: list[dict] = []
    with promotion_lease(lake, owner="next", recover=lambda i, _lease: recovered.append(i)) as lease:
        assert recovered == [intent]
        assert lease.body["intent"] is None, "cleared once recovered"
    with promotion_lease(lake, owner="after", recover=_no_recovery):
        pass  # recovered intents are not handed on again


def _foreign_holder(lake: Lake, generation: int, expires_in: float) -> None:
    body = {"owner": "other-host", "host": "not-" + socket.gethostname(), "pid": 1, "released": False,
            "expires_at": time.time() + expires_in, "intent": None}  # fmt: skip
    lake.write_bytes(generation_key(generation), json.dumps(body).encode())


def test_a_live_foreign_holder_blocks_and_an_expired_one_does_not(tmp_path: Path) -> None:
    lake = Lake.from_uri(tmp_path.as_uri())
    _foreign_holder(lake, 1, expires_in=60)
    with pytest.raises(CtError, match="could not take the promotion lease within 1s"):
        with promotion_lease(lake, owner="me", recover=_no_recovery, timeout_s=1):
            pass
    _foreign_holder(lake, 1, expires_in=-1)
    with promotion_lease(lake, owner="me", recover=_no_recovery, timeout_s=1) as lease:
        assert lease.generation == 2


def test_a_corrupt_lease_is_reported_then_taken_over_after_a_ttl(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    lake = Lake.from_uri(tmp_path.as_uri())
    lake.write_bytes(generation_key(1), b"{not json")
    started = time.monotonic()
    with promotion_lease(lake, owner="me", recover=_no_recovery, ttl_s=2, margin_s=0.5, renew_every_s=0.5) as lease:
        assert lease.generation == 2
    assert 2 <= time.monotonic() - started < 10
    assert "promotion-lease/000000000001.json is not valid JSON" in caplog.text


def test_a_holder_whose_lease_was_taken_over_cannot_act(tmp_path: Path) -> None:
    lake = Lake.from_uri(tmp_path.as_uri())
    # A holder paused past its expiry: renewals every 60s, so its 1s lease lapses while it "sleeps".
    with promotion_lease(lake, owner="paused", recover=_no_recovery, ttl_s=1, margin_s=0.2, renew_every_s=60) as paused:
        time.sleep(1.2)
        with promotion_lease(lake, owner="next", recover=_no_recovery, timeout_s=5) as taken:
            assert taken.generation == paused.generation + 1
            with pytest.raises(LeaseLost, match="is no longer ours: generation 2 was taken"):
                paused.check()
            taken.check()  # the new holder may act


def test_check_refuses_to_act_on_a_lease_about_to_expire(tmp_path: Path) -> None:
    lake = Lake.from_uri(tmp_path.as_uri())
    with promotion_lease(lake, owner="me", recover=_no_recovery, ttl_s=5, margin_s=10) as lease:
        with pytest.raises(LeaseLost, match="expires too soon to act safely"):
            lease.check()
