"""The step operator's local runner and its mapping of step outcomes to task outcomes."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from ct_airflow.operators.contract import StepFailed, parse_result
from ct_airflow.operators.step import CtStepOperator
from ct_airflow.runkey import is_backfill, run_key_from_run_id, triggering_batch_ids


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [('log line\n{"a": 1}\n', {"a": 1}), ('{"a": 1}\n\n', {"a": 1})],
    ids=["last-line", "trailing-blank"],
)
def test_parse_result_reads_the_last_json_line(stdout: str, expected: dict) -> None:
    assert parse_result(stdout) == expected


@pytest.mark.parametrize("stdout", ["", "not json", "[1, 2]"], ids=["empty", "not-json", "not-object"])
def test_parse_result_rejects_broken_contracts(stdout: str) -> None:
    with pytest.raises(StepFailed):
        parse_result(stdout)


def test_local_runner_maps_nothing_to_do_to_a_skip(ct_home) -> None:
    operator = CtStepOperator(task_id="ingest", step="ingest")
    with pytest.raises(AirflowSkipException, match="no committed landing batch"):
        operator.execute({"run_id": "manual__x", "params": {}})


def test_local_runner_failure_carries_the_steps_reason(ct_home) -> None:
    operator = CtStepOperator(task_id="train", step="train")
    with pytest.raises(StepFailed, match="no data window for run 'manual__x'"):
        operator.execute({"run_id": "manual__x", "params": {}})


def test_unknown_step_is_refused_at_parse_time() -> None:
    with pytest.raises(ValueError, match="unknown ml step 'trian'"):
        CtStepOperator(task_id="t", step="trian")


def test_run_key_is_path_safe_and_stable() -> None:
    key = run_key_from_run_id("scheduled__2026-01-01T03:00:00+00:00")
    assert key == "scheduled__2026-01-01T03-00-00-00-00"
    assert run_key_from_run_id("scheduled__2026-01-01T03:00:00+00:00") == key


def test_batch_ids_come_from_trigger_payloads_and_task_extras() -> None:
    class Event:
        def __init__(self, extra: dict) -> None:
            self.extra = extra

    context = {"triggering_asset_events": {"landing": [Event({"from_trigger": True, "payload": {"batch_ids": ["a", "b"]}})],
                                           "curated": [Event({"batch_ids": ["b", "c"]})]}}  # fmt: skip
    assert triggering_batch_ids(context) == ["a", "b", "c"]


def test_backfill_runs_are_recognised() -> None:
    assert is_backfill({"run_id": "backfill__2026-01-01T03:00:00+00:00"})
    assert not is_backfill({"run_id": "scheduled__2026-01-01T03:00:00+00:00"})


BACKFILL_RUN = {"run_id": "backfill__2026-01-01T03:00:00+00:00", "logical_date": datetime(2026, 1, 1, 3, tzinfo=UTC)}


def _key(step: str, context: dict) -> str:
    args = CtStepOperator(task_id=step, step=step).command_args(context)
    return args[args.index("--run-key") + 1]


def test_a_backfill_run_is_a_replay_keyed_by_what_it_decides_with(ct_home) -> None:
    plain = {**BACKFILL_RUN, "params": {}}
    key = _key("gate", plain)
    assert key.startswith("backfill__2026-01-01T03-00-00-00-00.") and _key("drift", plain) == key
    assert _key("gate", plain) == key, "a retry of the same attempt keeps its key (and its records)"
    forced = _key("gate", {**BACKFILL_RUN, "params": {"force_retrain": True}})
    margin = _key("gate", {**BACKFILL_RUN, "params": {"settings": {"gate": {"margin": 0.02}}}})
    assert len({key, forced, margin}) == 3, "a new conf is a new attempt, recorded beside the earlier one"
    # A live run that a backfill reprocesses keeps its Airflow id, but not its live records.
    converted = {"run_id": "scheduled__2026-01-01T03:00:00+00:00", "logical_date": BACKFILL_RUN["logical_date"],
                 "dag_run": SimpleNamespace(run_type="backfill"), "params": {}}  # fmt: skip
    assert _key("gate", converted) == key
    live = {"run_id": "scheduled__2026-01-01T03:00:00+00:00", "params": {}}
    assert _key("gate", live) == "scheduled__2026-01-01T03-00-00-00-00"
    drift = CtStepOperator(task_id="drift", step="drift").command_args({**BACKFILL_RUN, "params": {}})
    assert drift[-2:] == ["--replay", key.rsplit(".", 1)[1]] and "--as-of" in drift
    # Once drift has planned the window, the run's later steps keep its key whatever ct.yaml says by then.
    planned = SimpleNamespace(xcom_pull=lambda task_ids, default=None: {"run_key": f"{key}-as-planned"})
    assert _key("gate", {**plain, "ti": planned}) == f"{key}-as-planned"
    assert _key("drift", {**plain, "ti": planned}) == key, "drift itself plans under the replay's own key"


@pytest.mark.parametrize(
    ("run", "overrides", "message"),
    [(BACKFILL_RUN, {"gate": {"margn": 0.1}}, "gate.margn"),
     (BACKFILL_RUN, {"gate": {"margin": "lots"}}, "gate.margin"),
     (BACKFILL_RUN, {"labels": ["a", "b"]}, "may change only policy, gate, drift, train"),
     ({"run_id": "manual__x"}, {"gate": {"margin": 0.1}}, "apply only to backfill runs")],
    ids=["unknown-key", "bad-value", "not-a-replay-section", "live-run"],
)  # fmt: skip
def test_bad_settings_overrides_fail_the_task_at_once(ct_home, run: dict, overrides: dict, message: str) -> None:
    from ct_airflow.operators.contract import StepRefused

    with pytest.raises(StepRefused, match=message):  # an AirflowFailException: no retries
        CtStepOperator(task_id="drift", step="drift").execute({**run, "params": {"settings": overrides}})


@pytest.mark.parametrize(
    ("code", "result", "outcome"),
    [(75, {"error": "MLflow did not answer", "retryable": True}, "StepUnavailable"),
     (2, {"error": "bad id", "error_type": "UsageError"}, "StepRefused"),
     (1, {"error": "no data window", "error_type": "CtError"}, "StepFailed")],
    ids=["outage-retried", "usage-not-retried", "failure"],
)  # fmt: skip
def test_exit_codes_map_to_task_outcomes(code: int, result: dict, outcome: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from ct_airflow.operators.contract import failure_for

    failure = failure_for("drift", code, result, "")
    assert type(failure).__name__ == outcome and result["error"] in str(failure)
    # Only refused arguments skip Airflow's retries; an outage must be retried.
    assert isinstance(failure, AirflowFailException) == (outcome == "StepRefused")


def test_an_unreachable_mlflow_fails_the_try_as_retryable(ct_home, monkeypatch) -> None:
    from ct_airflow.operators.contract import StepUnavailable
    from tests.conftest import free_port

    monkeypatch.setenv("CT_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(StepUnavailable, match=r"did not answer.*retryable: exit 75"):
        CtStepOperator(task_id="drift", step="drift").execute({"run_id": "manual__x", "params": {}})


def test_refused_batch_ids_fail_without_retries(ct_home) -> None:
    from ct_airflow.operators.contract import StepRefused

    with pytest.raises(StepRefused, match="is not a valid id"):
        CtStepOperator(task_id="ingest", step="ingest").execute(
            {"run_id": "manual__x", "params": {"batch_ids": ["../etc"]}}
        )


class _Lines:
    """Stands in for the task logger: keeps each formatted line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str, *args: object) -> None:
        self.lines.append(message % args)

    def warning(self, message: str, *args: object) -> None:
        pass  # e.g. "execute cannot be called outside of the Task Runner": this test calls it directly


def test_a_decision_steps_log_starts_with_its_outcome(run_step, write_batch, monkeypatch) -> None:
    write_batch("b1", 0, 200)
    run_step("ingest")
    run_step("drift", "--run-key", "manual__x")
    operator = CtStepOperator(task_id="decide", step="decide")
    lines = _Lines()
    monkeypatch.setattr(CtStepOperator, "log", lines)
    result = operator.execute({"run_id": "manual__x", "params": {}})
    assert result["retrain"] is True
    assert lines.lines[0] == f"Outcome: {result['summary']}", lines.lines[:3]
    assert lines.lines[1].startswith("Ran `python -m ml decide --run-key manual__x")
    assert any("ml.cli" in line or "decide manual__x" in line for line in lines.lines[2:]), "then the step's own lines"
