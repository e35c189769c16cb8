"""
### ct_retrain: drift, retrain decision, train, evaluate, gate

**Starts** daily at 03:00 UTC, whenever `ct_ingest` curates a batch (`ct_curated_batches`), when
`ct_monitor` raises a live alarm (`ct_live_alarm`), or by hand. Params: `force_retrain` retrains
whatever the policy says.

**A run sees the world as of its logical date**: the batches available then, the champion then and
the policy memory then. A **backfill** run is a replay: it trains and judges a candidate as live ct
would have on that day and records "would promote" or "would reject", but never moves `@champion`,
spends no error budget and writes no live policy memory. Its conf may carry `settings` (the
`policy`, `gate`, `drift` or `train` sections, validated like `ct.yaml`) to ask "what would ct have
decided under these settings?"; ct → Backfill shows each replay beside what live ct decided.

| task | what it does | where it writes |
|---|---|---|
| drift | pins the data window; compares new batches with the champion's training data: image stats, class mix, the champion's embeddings (Evidently); scores the champion on the new labels | `reports/ct_retrain/<run_key>/drift.json`, `drift.html` |
| decide | retrain or skip, with reasons (drift streak and cooldown, new images, model age, quality drop, ct_monitor's live alarms); *skipped* means no reason to retrain | `decision.json`, `state/policy.json` |
| train | trains a candidate (GPU pod with the kubernetes runner), registers it in MLflow | MLflow run + model version |
| evaluate | scores candidate and `@champion` on the same test rows | `eval.json` |
| gate | promotes only on a significant improvement (McNemar / paired bootstrap) with no supported class losing recall, by compare-and-set; with `gate.require_approval`, records `pending` instead | `gate.json`, `gate.md`, `state/decisions/` |
| approval | only for a `pending` promote: asks `gate.approvers` in Airflow's *Required actions*, with the gate's evidence; skipped otherwise | the answer (XCom) |
| apply_approval | approve: moves `@champion` by the same compare-and-set; reject: `not approved by <user>: <comment>`; no answer in time: `expired` | `approval.json`, `state/decisions/` |
| promoted / champion_kept | exactly one succeeds: green `promoted` means the champion moved (and emits `ct_champion`); its log's first line is the decision and its reason | `ct_champion` event |

Each task is one `python -m ml <step>` command: a subprocess with the local runner; with the
kubernetes runner a deferrable pod (`KubernetesPodOperator`) that holds no worker slot while it runs,
streams its log into the task log, and is found again by the next try if a worker dies. The steps in
`kubernetes.gpu_steps` (train and evaluate by default) get a GPU.

Each task has a **ct report** link (the HTML or JSON above) and, where a model is involved, an
**MLflow model** link. To undo a promotion, use `ct_ops`.

Every step is keyed by the run, so clearing and re-running a task never duplicates a model
version or a decision.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param

from ct_airflow.assets import CURATED, LIVE_ALARM
from ct_airflow.operators.approval import CtApprovalOperator
from ct_airflow.operators.contract import APPROVAL_TASK, OUTAGE_RETRIES
from ct_airflow.operators.notify import NOTIFY_ARGS, CtNotifier
from ct_airflow.operators.step import ct_step
from ct_airflow.operators.tasks import champion_kept, promoted

with DAG(
    dag_id="ct_retrain",
    # New curated data, or ct_monitor's alarm about the champion's live traffic, or 03:00 UTC daily.
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 3 * * *", timezone="UTC"), assets=CURATED | LIVE_ALARM
    ),
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,  # one retrain at a time; promotion is also serialised by a lock in the lake
    doc_md=__doc__,
    tags=["ct"],
    params={
        "force_retrain": Param(False, type="boolean", description="Retrain even if the policy says skip"),
        "settings": Param(
            {},
            type="object",
            description="Backfill runs only: settings overrides for a replay, e.g. "
            '{"gate": {"margin": 0.01}} (sections policy, gate, drift, train; validated like ct.yaml)',
        ),
    },
    # Retries cover outages (a step that cannot reach MLflow or S3 decides nothing and exits 75).
    default_args={**OUTAGE_RETRIES, **NOTIFY_ARGS},  # a task that fails for good sends a message (ct_notify)
):
    drift = ct_step(task_id="drift", step="drift")
    decide = ct_step(task_id="decide", step="decide", step_args=["{{ '--force' if params.force_retrain else '' }}"])
    train = ct_step(task_id="train", step="train", retries=2, execution_timeout=timedelta(hours=6))
    evaluate = ct_step(task_id="evaluate", step="evaluate")
    # A backfill run's gate records what it would have decided; it never moves @champion.
    gate = ct_step(task_id="gate", step="gate")
    # With gate.require_approval, a promote waits here for an approver (awaiting input, no worker held).
    approval = CtApprovalOperator(task_id=APPROVAL_TASK, retries=0)
    apply_approval = ct_step(task_id="apply_approval", step="approval")
    drift >> decide >> train >> evaluate >> gate >> approval >> apply_approval
    # Exactly one of these succeeds: the grid shows at a glance whether the champion moved.
    [gate, apply_approval] >> promoted.override(on_success_callback=CtNotifier("move"))()  # a promotion is news
    [gate, apply_approval] >> champion_kept()
