"""The promotion lease: one holder at a time, recovered within a minute when its holder dies.

MLflow aliases have no compare-and-set, so every move of ``@champion`` happens while holding this
lease. It lives in the lake as numbered generations, ``state/promotion-lease/<generation>.json``:

* **Acquire** = create generation ``n + 1`` with an exclusive write (a hard link locally, S3
  ``If-None-Match``). Only one process can create a given generation, so two holders are
  impossible, and the generation number is a fencing token that only grows.
* Generation ``n`` is free once its holder released it, its ``expires_at`` has passed (the holder
  renews it every few seconds from a thread), or its holder is a dead process on this host
  (host, pid and the pid's start time are recorded). A body that cannot be parsed is reported and
  treated as expired once it has been seen for a whole TTL, never trusted forever.
* **Fencing:** before each write that matters the holder calls :meth:`Lease.check`, which fails
  when a later generation exists or when less than ``margin_s`` of the lease is left. A holder
  that was paused past its expiry therefore cannot act.
* **Intent:** before committing a move, the holder writes what it is about to do into its
  generation. Whoever takes the next generation first hands that intent to ``recover`` (which
  finishes the move if its decision was committed), and carries it in its own body until then,
  so a crash during recovery is recovered by the next holder in turn.

What this cannot give: a holder that stalls for longer than ``margin_s`` *between* its check and
its write could still act after expiry. Keep ``margin_s`` well above the time one write takes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ml import layout
from ml.errors import CorruptState, CtError, InfrastructureUnavailable, LeaseLost, StorageError
from ml.process import dead_here, identity
from ml.storage import Lake

log = logging.getLogger(__name__)

LEASE_DIR = "promotion-lease"
TTL_S = 30.0
RENEW_EVERY_S = 5.0
MARGIN_S = 10.0
KEEP_GENERATIONS = 20

Recover = Callable[[dict[str, Any], "Lease"], None]


def lease_prefix() -> str:
    return layout.state(LEASE_DIR)


def generation_key(generation: int) -> str:
    return layout.join(lease_prefix(), f"{generation:012d}.json")


def generations(lake: Lake) -> list[int]:
    found = []
    for name in lake.list_children(lease_prefix()):
        stem = name.removesuffix(".json")
        if name.endswith(".json") and stem.isdigit():
            found.append(int(stem))
    return sorted(found)


def holder_gone(body: dict[str, Any], now: float) -> str | None:
    """Why the holder of ``body`` no longer holds it, or None while it does."""
    if body.get("released"):
        return "released"
    if float(body.get("expires_at", 0)) <= now:
        return f"expired {now - float(body.get('expires_at', 0)):.0f}s ago"
    if dead_here(body.get("host"), body.get("pid"), body.get("pid_start")):
        return f"its process {body.get('pid')} on this host is gone"
    return None


@dataclass
class Lease:
    """A held generation of the promotion lease. Use :func:`promotion_lease` to get one."""

    lake: Lake
    generation: int
    body: dict[str, Any]
    ttl_s: float = TTL_S
    margin_s: float = MARGIN_S
    lost: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def key(self) -> str:
        return generation_key(self.generation)

    def _write(self, **changes: Any) -> None:
        with self._lock:
            body = {**self.body, **changes}
            self.lake.write_bytes(self.key, json.dumps(body, sort_keys=True).encode())
            self.body = body

    def renew(self) -> None:
        """Push the expiry out by a TTL, unless a later generation exists (then the lease is lost)."""
        if self.lost:
            return
        newer = [g for g in generations(self.lake) if g > self.generation]
        if newer:
            self.lost = f"generation {newer[0]} was taken while this process held {self.generation}"
            log.error("promotion lease lost: %s", self.lost)
            return
        self._write(expires_at=time.time() + self.ttl_s)

    def check(self) -> None:
        """Fence: raise :class:`LeaseLost` unless this process still holds the lease with time to act."""
        if not self.lost:
            self.renew()  # also looks for a later generation
        if self.lost:
            raise LeaseLost(f"the promotion lease {self.lake.uri(self.key)} is no longer ours: {self.lost}")
        if float(self.body["expires_at"]) - time.time() < self.margin_s:
            raise LeaseLost(f"the promotion lease {self.lake.uri(self.key)} expires too soon to act safely")

    def set_intent(self, intent: dict[str, Any] | None) -> None:
        """Record what this holder is about to do (or, with None, that it is done)."""
        self._write(intent=intent)


def _read_generation(lake: Lake, generation: int) -> dict[str, Any] | None:
    """The body of a generation, None if it vanished (pruned), or raise CorruptState."""
    try:
        body = lake.read_json(generation_key(generation))
    except CorruptState:
        raise
    except StorageError:
        return None
    if not isinstance(body, dict) or "expires_at" not in body:
        raise CorruptState(f"{lake.uri(generation_key(generation))} is not a lease object: {str(body)[:200]}")
    return body


def _acquire(
    lake: Lake, owner: str, timeout_s: float, ttl_s: float
) -> tuple[int, dict[str, Any], dict[str, Any] | None]:
    """Create the next generation; returns (generation, own body, the predecessor's body or None)."""
    deadline = time.monotonic() + timeout_s
    corrupt_since: dict[int, float] = {}
    while True:
        existing = generations(lake)
        top = existing[-1] if existing else 0
        previous: dict[str, Any] | None = None
        gone: str | None = "no holder"
        if top:
            try:
                previous = _read_generation(lake, top)
                gone = holder_gone(previous, time.time()) if previous is not None else "pruned"
            except CorruptState as exc:
                first_seen = corrupt_since.setdefault(top, time.monotonic())
                if time.monotonic() - first_seen >= ttl_s:
                    log.warning("taking over a corrupt promotion lease after %.0fs: %s", ttl_s, exc)
                    gone = "corrupt"
                else:
                    log.warning(
                        "the promotion lease is corrupt; waiting up to %.0fs before taking over: %s", ttl_s, exc
                    )
                    gone = None
        if gone is not None:
            carried = (previous or {}).get("intent")
            body = {"token": uuid.uuid4().hex, "owner": owner, **identity(), "acquired_at": time.time(),
                    "expires_at": time.time() + ttl_s, "released": False, "intent": carried}  # fmt: skip
            if lake.create_exclusive(generation_key(top + 1), json.dumps(body, sort_keys=True).encode()):
                if top and gone != "released":
                    log.warning("took over the promotion lease from %s: %s", (previous or {}).get("owner"), gone)
                return top + 1, body, previous
            continue  # another process took top + 1 first: look again at once
        if time.monotonic() > deadline:
            holder = {k: (previous or {}).get(k) for k in ("owner", "host", "pid", "expires_at")}
            raise CtError(
                f"could not take the promotion lease within {timeout_s:.0f}s; it is held by {holder} "
                f"({lake.uri(generation_key(top))}); it frees itself within {ttl_s:.0f}s of its holder dying"
            )
        time.sleep(0.2)


def _prune(lake: Lake, generation: int) -> None:
    for old in generations(lake):
        if old < generation - KEEP_GENERATIONS:
            lake.delete_prefix(generation_key(old))


@contextmanager
def promotion_lease(
    lake: Lake,
    owner: str,
    recover: Recover,
    timeout_s: float = 90.0,
    ttl_s: float = TTL_S,
    margin_s: float = MARGIN_S,
    renew_every_s: float = RENEW_EVERY_S,
) -> Iterator[Lease]:
    """Hold the promotion lease for the block; a predecessor's unfinished intent is recovered first."""
    generation, body, previous = _acquire(lake, owner, timeout_s, ttl_s)
    lease = Lease(lake, generation, body, ttl_s=ttl_s, margin_s=margin_s)
    stop = threading.Event()

    def keep_renewing() -> None:
        while not stop.wait(renew_every_s):
            try:
                lease.renew()
            except (CtError, OSError) as exc:  # the lake hiccupped: the fence check will catch a real loss
                log.warning("renewing the promotion lease failed: %s", exc)
            if lease.lost:
                return

    renewer = threading.Thread(target=keep_renewing, name="ct-lease-renewer", daemon=True)
    renewer.start()
    try:
        carried = body.get("intent")
        if carried:
            log.warning("finishing the intent left by %s: %s", (previous or {}).get("owner"), carried)
            recover(carried, lease)
            lease.set_intent(None)
        yield lease
    finally:
        stop.set()
        renewer.join(timeout=renew_every_s + 5)
        if not lease.lost:
            try:
                # An intent still set here was not finished (an error after it was set): the next
                # holder recovers it, which is why release keeps it.
                lease._write(released=True, released_at=time.time())
                _prune(lake, generation)
            except (InfrastructureUnavailable, StorageError, OSError) as exc:
                log.warning("could not release the promotion lease (it expires in %.0fs): %s", ttl_s, exc)
