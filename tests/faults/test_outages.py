"""Take MLflow or S3 down at each external call of ``gate`` and ``drift``: an error, never an answer.

At call n the hook freezes the real server (SIGSTOP on its process group) and lets the call go on,
so the step meets a server that stopped answering. The points are the first call of each distinct
kind the step makes (S3: operation and lake area, e.g. ``GetObject curated``; MLflow: method and
endpoint): drift reads every manifest and shard, and one point per object would take minutes. The step must exit 75 with a named retryable
error and record no decision; once the server is thawed, a rerun must reach the decision a run
without the outage reached.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.faults import ops
from tests.faults.conftest import Service
from tests.faults.harness import Fault, Runner, frozen_until_done
from tests.faults.test_kill_points import move_champion_to, new_gate_case

EXIT_UNAVAILABLE = 75


def call_kind(service: str, label: str) -> str:
    if service == "s3":
        operation, _, key = label.partition(" ")
        parts = key.split("/")
        return f"{operation} {parts[1] if len(parts) > 1 else key}"
    method, _, path = label.partition(" ")
    return f"{method} {path.split('/artifacts/')[0]}"


def distinct_calls(trace: list[str], service: str) -> list[int]:
    """The index of the first call of each kind to ``service`` in a clean run's trace."""
    first: dict[str, int] = {}
    for line in trace:
        if line.startswith("call "):
            _, n, svc, label = line.split(" ", 3)
            if svc == service:
                first.setdefault(call_kind(service, label), int(n))
    assert first, f"the clean run made no {service} call: the hook is not installed"
    return sorted(first.values())


def assert_outage(run, what: str) -> None:  # type: ignore[no-untyped-def]
    assert run.exitcode == EXIT_UNAVAILABLE, (what, run.exitcode, run.result)
    assert run.result["error_type"] == "InfrastructureUnavailable" and run.result["retryable"] is True, run.result
    assert "did not answer" in run.result["error"], run.result


@pytest.mark.parametrize("service", ["mlflow", "s3"])
def test_gate_outage_at_each_call_records_nothing(
    runner: Runner, world: dict[str, str], services: dict[str, Service], service: str
) -> None:
    new_gate_case(runner, world, f"go-{service}-clean")
    clean = runner.step(world, "gate", "--run-key", f"go-{service}-clean", fault=Fault(cut_service=service))
    assert clean.exitcode == 0 and clean.result and clean.result["decision"] == "promote", clean.result
    for n in distinct_calls(clean.trace, service):
        key = f"go-{service}-{n}"
        new_gate_case(runner, world, key)
        cut = Fault(cut_at=n, cut_service=service, cut_pgid=services[service].pgid)
        with frozen_until_done(services[service].pgid):
            down = runner.step(world, "gate", "--run-key", key, fault=cut)
        snap = runner.call(world, ops.snapshot, key)
        if down.exitcode == 0:
            # The call that met the outage came after the commit point and its retry succeeded
            # (only possible for idempotent finishing writes): the decision must then be complete.
            pytest.fail(f"{key}: the step succeeded through an outage at call {n}: {down.result}")
        assert_outage(down, f"{service} call {n}")
        if snap["record"] is None:
            assert [h for h in snap["history"] if h["run_key"] == key] == [], "no decision recorded"
            assert snap["champion"] == "1", "the champion is untouched"
        back = runner.step(world, "gate", "--run-key", key)
        assert back.exitcode == 0 and back.result["decision"] == "promote", (key, back.result)
        snap = runner.call(world, ops.snapshot, key)
        assert snap["champion"] == back.result["candidate_version"]
        assert [h["decision"] for h in snap["history"] if h["run_key"] == key] == ["promote"]


@pytest.mark.parametrize("service", ["mlflow", "s3"])
def test_drift_outage_at_each_call_is_an_error(
    runner: Runner, world: dict[str, str], services: dict[str, Service], service: str
) -> None:
    env = {**world, "CT_DRIFT__EMBEDDINGS": "true"}  # drift then loads the champion from MLflow too
    move_champion_to(runner, env, "1", f"do-{service}-setup")
    # Each run is a replay (--replay): it decides as live ct would have, and writes no live policy memory.
    replay = ("--replay", "outage", "--as-of", datetime.now(UTC).isoformat())  # one moment for every run
    clean = runner.step(env, "drift", "--run-key", f"do-{service}-clean", *replay,
                        fault=Fault(cut_service=service))  # fmt: skip
    assert clean.exitcode == 0, clean.result
    expected = runner.step(env, "decide", "--run-key", f"do-{service}-clean")
    for n in distinct_calls(clean.trace, service):
        key = f"do-{service}-{n}"
        cut = Fault(cut_at=n, cut_service=service, cut_pgid=services[service].pgid)
        with frozen_until_done(services[service].pgid):
            down = runner.step(env, "drift", "--run-key", key, *replay, fault=cut)
        assert_outage(down, f"{service} call {n}")
        assert runner.step(env, "drift", "--run-key", key, *replay).exitcode == 0, key
        decided = runner.step(env, "decide", "--run-key", key)
        assert decided.result is not None and expected.result is not None
        assert decided.result["reasons"] == expected.result["reasons"], (key, decided.result["reasons"])
        assert "no champion yet" not in decided.result["summary"]
