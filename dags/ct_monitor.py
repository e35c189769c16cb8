"""
### ct_monitor: the champion on its live traffic

**Runs** every hour (and by hand). It reads the prediction log that the prediction service
(`python -m ml serve`, which `make up`, compose and Helm run) writes to `predictions/`, and the
late labels of feedback batches (`landing/<batch_id>/feedback.csv`: `request_id,label`).

**Does** `python -m ml monitor`:

| measures | from | alarm when |
|---|---|---|
| drift of the served images from the champion's training data | the log's image statistics and predicted classes, the drift step's detectors | a detector fires (`policy.retrain_on_live_drift`) |
| live accuracy without labels | calibrated confidences (CBPE), calibration checked on held-out rows | it falls more than `policy.max_estimated_drop` below the held-out accuracy |
| realized live accuracy, per version and day (Wilson 95%) | late labels joined by request id | it falls more than `policy.max_realized_drop` below |
| label lag, traffic per hour and version | the same | - |

It writes `reports/ct_monitor/<run_key>/monitor.json` and `state/monitor/latest.json`.

**Emits** `ct_live_alarm` when an alarm fires, which starts `ct_retrain`; its decision names the
alarm. `serving_problems` fails (and notifies) when the service reported a version it could not
load or a log it could not write since the last run.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, CronTriggerTimetable

from ct_airflow.operators.contract import OUTAGE_RETRIES
from ct_airflow.operators.notify import NOTIFY_ARGS
from ct_airflow.operators.step import ct_step
from ct_airflow.operators.tasks import live_alarm, serving_problems

with DAG(
    dag_id="ct_monitor",
    schedule=CronTriggerTimetable("0 * * * *", timezone="UTC"),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ct", "monitoring"],
    default_args={**OUTAGE_RETRIES, **NOTIFY_ARGS},
):
    monitor = ct_step(task_id="monitor", step="monitor")
    live_alarm(monitor.output)
    serving_problems(monitor.output)
