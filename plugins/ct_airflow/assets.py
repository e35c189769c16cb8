"""The assets that connect the DAGs. Names are stable: renaming one orphans its event history."""

from __future__ import annotations

from airflow.sdk import Asset, AssetWatcher

from ct_airflow.triggers import NewLandingBatchTrigger

#: Curated batches; ``ct_ingest`` emits an event whose extra holds ``batch_ids``.
CURATED = Asset(name="ct_curated_batches")
#: ``@champion`` moved (a promotion, a rollback, a forced promotion). The extra holds ``version``,
#: ``model_uri`` (``models:/<name>/<version>``), ``previous_version``, ``action`` and ``run_key``:
#: schedule a deployment DAG of your own on it (``schedule=CHAMPION``, or ``Asset("ct_champion")``).
CHAMPION = Asset(name="ct_champion")
#: ``ct_monitor`` saw the champion fail on live traffic; the extra holds ``alarms`` and the ``monitor_run_key``.
#: It starts ``ct_retrain``, whose policy reads the verdict (``state/monitor/latest.json``) and says why.
LIVE_ALARM = Asset(name="ct_live_alarm")


def landing_asset(poll_interval: float = 10.0) -> Asset:
    """Committed landing batches, watched by the triggerer: a new batch starts ``ct_ingest``."""
    return Asset(
        name="ct_landing_batches",
        watchers=[
            AssetWatcher(name="ct_new_landing_batch", trigger=NewLandingBatchTrigger(poll_interval=poll_interval))
        ],
    )
