"""
### ct_ingest: new landing batches become curated batches, or go to quarantine

**Starts** when the triggerer's `NewLandingBatchTrigger` sees a landing batch with its
`_COMMITTED` marker (an `AssetWatcher` on `ct_landing_batches`), or by hand with
`batch_ids` (empty: every pending batch).

**Does** `python -m ml ingest` (a subprocess; with the kubernetes runner, a deferrable pod):
decodes every image inside the batch root, builds the manifest, validates it with the Great
Expectations suite `ml/data/suites/manifest.json`, then writes `curated/<batch_id>/` or
`quarantine/<batch_id>/report.json`.

A **feedback batch** (`landing/<batch_id>/feedback.csv`: `request_id,label`, late labels of
served predictions) is checked by its own rules and kept in `feedback/<batch_id>.parquet`, where
`ct_monitor` joins it to the prediction log; it starts no retrain by itself.

**Emits** a `ct_curated_batches` event with the curated `batch_ids`, which starts `ct_retrain`.
A quarantined batch fails `fail_on_quarantine` with the rule names and the report's location;
nothing else touches it and the champion is untouched.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from ct_airflow.assets import landing_asset
from ct_airflow.operators.contract import OUTAGE_RETRIES
from ct_airflow.operators.notify import NOTIFY_ARGS
from ct_airflow.operators.step import ct_step
from ct_airflow.operators.tasks import fail_on_quarantine, publish_curated
from ml.layout import ID_PATTERN, ID_RULE

with DAG(
    dag_id="ct_ingest",
    schedule=[landing_asset()],
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ct"],
    params={
        "batch_ids": Param(
            [],
            type="array",
            items={"type": "string", "pattern": f"^{ID_PATTERN}$"},
            description=f"Landing batch ids ({ID_RULE}); empty: all pending",
        ),
    },
    default_args={**OUTAGE_RETRIES, **NOTIFY_ARGS},  # a failed task (a quarantine too) sends a message
):
    ingest = ct_step(task_id="ingest", step="ingest", execution_timeout=timedelta(hours=2))
    publish_curated(ingest.output)
    fail_on_quarantine(ingest.output)
