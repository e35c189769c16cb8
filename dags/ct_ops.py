"""
### ct_ops: roll back or force-promote the champion, with a reason on record

Trigger by hand with Params:

* `action`: `rollback` (back to an earlier version) or `promote` (force a version, bypassing the gate);
* `version`: the registered model version to put behind `@champion`;
* `reason`: why, at least 10 characters. It goes into the decision history and onto the version's tags.

Both use the same compare-and-set and lock as the gate: if `@champion` moves while this runs, the
task fails and nothing changes. The target must load, so a broken version never reaches production.
The record lands in `reports/ct_ops/<run_key>/decision.json` and `state/decisions/`, and
`champion_moved` emits a `ct_champion` asset event (extra: `version`, `model_uri`, `previous_version`,
`action`), on which a deployment DAG of your own can be scheduled. The prediction service follows
`@champion` by itself.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param

from ct_airflow.operators.contract import OUTAGE_RETRIES
from ct_airflow.operators.notify import NOTIFY_ARGS, CtNotifier
from ct_airflow.operators.step import ct_step
from ct_airflow.operators.tasks import champion_moved
from ml.contract import OVERRIDE_STEP

with DAG(
    dag_id="ct_ops",
    schedule=None,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ct", "ops"],
    default_args=NOTIFY_ARGS,  # a refused or failed move sends a message (ct_notify)
    params={
        "action": Param("rollback", enum=["rollback", "promote"], description="rollback or promote"),
        "version": Param("", type="string", pattern=r"^[0-9]+$", description="Registered model version"),
        "reason": Param("", type="string", minLength=10, description="Why; kept in the decision history"),
    },
):
    # A retry of the same run key finishes what an outage interrupted; it never decides twice.
    # The override step runs `python -m ml rollback` or `promote`, as the run's Params say.
    moved = ct_step(
        task_id="move_champion", step=OVERRIDE_STEP, on_success_callback=CtNotifier("move"), **OUTAGE_RETRIES
    )
    champion_moved(moved.output)  # the ct_champion asset event: a deployment DAG can be scheduled on it
