"""The step operator's local runner and its mapping of step outcomes to task outcomes."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowSkipException

from ct_airflow.operators.step import CtStepOperator, StepFailed, parse_result
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


@pytest.mark.parametrize(
    ("run_id", "params", "extra"),
    [
        ("scheduled__2026-01-01T03:00:00+00:00", {}, []),
        ("backfill__2026-01-01T03:00:00+00:00", {}, ["--backfill"]),
        (
            "backfill__2026-01-01T03:00:00+00:00",
            {"allow_backfill_promote": True},
            ["--backfill", "--allow-backfill-promote"],
        ),
    ],
    ids=["scheduled", "backfill", "backfill-allowed"],
)
def test_gate_arguments_for_backfill_runs(run_id: str, params: dict, extra: list[str]) -> None:
    args = CtStepOperator(task_id="gate", step="gate").command_args({"run_id": run_id, "params": params})
    assert args == ["gate", "--run-key", run_key_from_run_id(run_id), *extra]


@pytest.mark.parametrize(
    ("code", "result", "outcome"),
    [(75, {"error": "MLflow did not answer", "retryable": True}, "StepUnavailable"),
     (2, {"error": "bad id", "error_type": "UsageError"}, "StepRefused"),
     (1, {"error": "no data window", "error_type": "CtError"}, "StepFailed")],
    ids=["outage-retried", "usage-not-retried", "failure"],
)  # fmt: skip
def test_exit_codes_map_to_task_outcomes(code: int, result: dict, outcome: str) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from ct_airflow.operators.step import failure_for

    failure = failure_for("drift", code, result, "")
    assert type(failure).__name__ == outcome and result["error"] in str(failure)
    # Only refused arguments skip Airflow's retries; an outage must be retried.
    assert isinstance(failure, AirflowFailException) == (outcome == "StepRefused")


def test_an_unreachable_mlflow_fails_the_try_as_retryable(ct_home, monkeypatch) -> None:
    from ct_airflow.operators.step import StepUnavailable
    from tests.conftest import free_port

    monkeypatch.setenv("CT_MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(StepUnavailable, match=r"did not answer.*retryable: exit 75"):
        CtStepOperator(task_id="drift", step="drift").execute({"run_id": "manual__x", "params": {}})


def test_refused_batch_ids_fail_without_retries(ct_home) -> None:
    from ct_airflow.operators.step import StepRefused

    with pytest.raises(StepRefused, match="is not a valid id"):
        CtStepOperator(task_id="ingest", step="ingest").execute(
            {"run_id": "manual__x", "params": {"batch_ids": ["../etc"]}}
        )


def test_backfill_runs_never_write_live_policy_memory() -> None:
    backfill = CtStepOperator(task_id="decide", step="decide").command_args(
        {"run_id": "backfill__2026-01-01T03:00:00+00:00", "params": {}}
    )
    live = CtStepOperator(task_id="decide", step="decide").command_args(
        {"run_id": "scheduled__2026-01-01T03:00:00+00:00", "params": {}}
    )
    assert backfill[-1] == "--backfill" and "--backfill" not in live


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
