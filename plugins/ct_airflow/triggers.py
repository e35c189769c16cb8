"""``NewLandingBatchTrigger``: notices committed landing batches without holding a worker slot.

It runs in the triggerer as an ``AssetWatcher``. Every ``poll_interval`` seconds it lists the
landing area (in a thread: boto3 and ``os.scandir`` block) for batches that carry the commit
marker and have been neither announced, curated nor quarantined. It consumes what it finds by
writing ``state/announced/<batch_id>.json`` and then yields one event with their ids, so the same
batch never fires twice, even across triggerer restarts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

ANNOUNCED = "announced"


def claim_new_batches(lake_uri: str | None) -> list[str]:
    """Find committed batches that nobody has announced yet, and mark them announced."""
    from ml import layout
    from ml.config import load_settings
    from ml.data.ingest import pending_batches
    from ml.storage import Lake

    lake = Lake.from_uri(lake_uri or load_settings().lake_uri)
    announced = set(name.removesuffix(".json") for name in lake.list_children(layout.state(ANNOUNCED)))
    # pending_batches lists an invalid-named landing folder under a derived, valid id (ingest then
    # quarantines it); each id becomes a lake key and a ct_ingest param here, so the one id rule is
    # checked again rather than trusted.
    fresh = [b for b in pending_batches(lake) if b not in announced and layout.id_problem(b) is None]
    for batch_id in fresh:
        lake.write_json(layout.state(f"{ANNOUNCED}/{batch_id}.json"), {"batch_id": batch_id, "at": time.time()})
    return fresh


class NewLandingBatchTrigger(BaseEventTrigger):
    def __init__(self, lake_uri: str | None = None, poll_interval: float = 10.0) -> None:
        super().__init__()
        self.lake_uri = lake_uri
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"lake_uri": self.lake_uri, "poll_interval": self.poll_interval},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                fresh = await asyncio.to_thread(claim_new_batches, self.lake_uri)
            except Exception:  # a lake hiccup must not kill the watcher: log it and poll again
                self.log.exception("Listing the landing area failed; retrying in %ss", self.poll_interval)
                fresh = []
            if fresh:
                self.log.info("Found %s new committed batch(es): %s", len(fresh), fresh)
                yield TriggerEvent({"batch_ids": fresh})
            await asyncio.sleep(self.poll_interval)
