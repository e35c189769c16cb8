"""Errors keep the step contract: refused arguments, unreachable services and corrupt state each get
a named error, their own exit code, and never a recorded decision or a silent "nothing there"."""

from __future__ import annotations

import json

import pytest

from ml import layout
from ml.config import load_settings
from ml.contract import XCOM_ENV, XCOM_FILE
from ml.data.window import window_key
from ml.errors import CorruptState, InfrastructureUnavailable
from ml.release import registry
from ml.release.history import read_history
from tests.conftest import free_port


@pytest.mark.parametrize(
    "batch_id", ["../x", "a/b", "", "a" * 300, ".hidden"], ids=["dotdot", "slash", "empty", "300-chars", "dot"]
)
def test_refused_ids_print_a_json_error_and_exit_2(run_step, batch_id: str) -> None:
    result = run_step("ingest", "--batch-id", batch_id)
    assert result["error_type"] == "UsageError" and result["retryable"] is False
    assert "is not a valid id: use 1 to 128 of letters, digits" in result["error"]


def test_unknown_step_is_a_usage_error(run_step) -> None:
    assert run_step("trian")["error_type"] == "UsageError"


def test_a_step_writes_the_pods_result_file_only_when_its_operator_asks(run_step, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A local step on a host where the XCom folder exists must not write into another process's result."""
    from ml import cli

    xcom = tmp_path / "xcom"
    xcom.mkdir()
    monkeypatch.setattr(cli, "XCOM_DIR", str(xcom))
    monkeypatch.delenv(XCOM_ENV, raising=False)
    assert "skip" in run_step("ingest")  # nothing is waiting in landing/
    assert list(xcom.iterdir()) == []
    monkeypatch.setenv(XCOM_ENV, "1")  # what the pod operator sets
    result = run_step("ingest")
    assert json.loads((xcom / XCOM_FILE).read_text()) == result


@pytest.fixture
def mlflow_down(monkeypatch: pytest.MonkeyPatch) -> str:
    """A tracking URI where nothing listens: MLflow is down."""
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("CT_MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    return uri


def test_mlflow_down_is_not_no_champion(run_step, write_batch, lake, mlflow_down) -> None:
    with pytest.raises(InfrastructureUnavailable, match="MLflow did not answer"):
        registry.champion(registry.client(load_settings()), "ct-classifier")
    write_batch("b1", 0, 60)
    assert run_step("ingest")["curated"] == ["b1"]
    drift = run_step("drift", "--run-key", "r1")
    assert drift["error_type"] == "InfrastructureUnavailable" and drift["retryable"] is True
    assert not lake.exists(window_key("r1")), "no window was pinned on a guessed champion"
    assert run_step("decide", "--run-key", "r1")["error_type"] == "CtError", "and so nothing can be decided"
    assert not lake.exists(layout.report(layout.RETRAIN_DAG, "r1", "decision.json"))


def test_no_champion_only_when_the_registry_says_so(settings) -> None:
    assert registry.champion(registry.client(settings), settings.model_name) is None


def test_a_corrupt_state_file_is_named(lake) -> None:
    lake.write_bytes(layout.state("policy.json"), b'{"drift_streak": ')
    with pytest.raises(CorruptState, match=r"state/policy.json is not valid JSON"):
        lake.read_json(layout.state("policy.json"))


def test_history_skips_and_reports_a_corrupt_record(lake) -> None:
    good = {"kind": "gate", "run_key": "k", "decision": "promote"}
    lake.write_json(layout.state("decisions/20260101T000000.000000-gate-k.json"), good)
    lake.write_bytes(layout.state("decisions/20260102T000000.000000-gate-bad.json"), b"\x00garbage")
    records, problems = read_history(lake)
    assert records == [good]
    assert len(problems) == 1 and "decisions/20260102T000000.000000-gate-bad.json is not valid JSON" in problems[0]
