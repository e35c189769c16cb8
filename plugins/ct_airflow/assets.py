"""The assets that connect the DAGs. Names are stable: renaming one orphans its event history."""

from __future__ import annotations

from airflow.sdk import Asset, AssetWatcher

from ct_airflow.triggers import NewLandingBatchTrigger

#: Curated batches; ``ct_ingest`` emits an event whose extra holds ``batch_ids``.
CURATED = Asset(name="ct_curated_batches")


def landing_asset(poll_interval: float = 10.0) -> Asset:
    """Committed landing batches, watched by the triggerer: a new batch starts ``ct_ingest``."""
    return Asset(
        name="ct_landing_batches",
        watchers=[
            AssetWatcher(name="ct_new_landing_batch", trigger=NewLandingBatchTrigger(poll_interval=poll_interval))
        ],
    )
