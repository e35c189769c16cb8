"""SIGKILL each step at every write it makes, rerun it, and check that nothing is half done.

For ``gate``, ``rollback``, ``promote`` and ``train`` (``ingest`` is in test_ingest_kills.py): a clean run lists the step's write
points; then, for every point n, a fresh case is killed just before write n (and once just after
the last write), the same step is rerun, and the invariants must hold:

* exactly one decision per run key, and ``gate.json``, the history and the version's tags agree;
* ``@champion`` is the target of the last promote or rollback in the history;
* at most one model version per run key, no MLflow run left RUNNING, no orphan logged model;
* the promotion lease is free again (released, no pending intent), recovered well within 60 s.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.faults import ops
from tests.faults.harness import Fault, Runner

RECOVERY_LIMIT_S = 60


def kill_points(clean_trace: list[str]) -> list[Fault]:
    writes = [line for line in clean_trace if line.startswith("write ")]
    assert writes, "the clean run made no writes: the hook is not installed"
    return [Fault(kill_at=n) for n in range(1, len(writes) + 1)] + [Fault(kill_at=len(writes), when="after")]


def move_champion_to(runner: Runner, env: dict[str, str], version: str, key: str) -> None:
    """Set up a case through the real override path (its own run key, recorded like any override)."""
    snap = runner.call(env, ops.snapshot, key)
    if snap["champion"] == version:
        return
    action = "rollback" if int(version) < int(snap["champion"]) else "promote"
    flag = "--to" if action == "rollback" else "--version"
    run = runner.step(env, action, flag, version, "--reason", "set up a fault-injection case", "--run-key", key)
    assert run.exitcode == 0, run.result


def assert_consistent(snap: dict[str, Any], key: str, kind: str) -> None:
    record = snap["record"]
    assert record is not None, f"{key}: no record after the rerun"
    mine = [h for h in snap["history"] if h["run_key"] == key]
    assert len(mine) == 1, f"{key}: {len(mine)} history entries, want exactly one"
    assert mine[0]["decision"] == record["decision"] and mine[0]["kind"] == kind
    if kind == "gate":
        assert snap["version_tags"].get("ct.gate.decision") == record["decision"], snap["version_tags"]
        assert "ct.eval.accuracy" in snap["version_tags"], "the policy's quality check needs it"
    else:
        assert snap["version_tags"].get(f"ct.{kind}.reason"), snap["version_tags"]
    moves = [h for h in snap["history"] if h["decision"] in ("promote", "rollback")]
    assert snap["champion"] == moves[-1]["candidate_version"], (snap["champion"], moves[-3:])
    assert len(snap["versions"]) <= 1
    assert snap["running_runs"] == []
    assert snap["lease"]["released"] and not snap["lease"]["intent"], snap["lease"]
    assert snap["history_problems"] == []


def rerun_within_limit(runner: Runner, env: dict[str, str], *argv: str) -> dict[str, Any]:
    started = time.monotonic()
    rerun = runner.step(env, *argv)
    elapsed = time.monotonic() - started
    assert rerun.exitcode == 0, rerun.result
    assert elapsed < RECOVERY_LIMIT_S, f"the rerun took {elapsed:.0f}s: the lease was not recovered in time"
    assert rerun.result is not None
    return rerun.result


def new_gate_case(runner: Runner, env: dict[str, str], key: str) -> None:
    """The strong candidate's weights as a new version for ``key``, evaluated against the weak v1."""
    move_champion_to(runner, env, "1", f"{key}-setup")
    runner.call(env, ops.register_copy, "strong", key)
    assert runner.step(env, "evaluate", "--run-key", key).exitcode == 0


def test_gate_killed_at_every_write(runner: Runner, world: dict[str, str]) -> None:
    new_gate_case(runner, world, "gk-clean")
    clean = runner.step(world, "gate", "--run-key", "gk-clean")
    assert clean.exitcode == 0 and clean.result and clean.result["decision"] == "promote", clean.result
    for fault in kill_points(clean.trace):
        key = f"gk-{fault.kill_at}-{fault.when}"
        new_gate_case(runner, world, key)
        killed = runner.step(world, "gate", "--run-key", key, fault=fault)
        assert killed.killed, (key, killed.exitcode, killed.result)
        result = rerun_within_limit(runner, world, "gate", "--run-key", key)
        assert result["decision"] == "promote", (key, result)
        snap = runner.call(world, ops.snapshot, key)
        assert_consistent(snap, key, "gate")
        assert snap["champion"] == result["candidate_version"], key


@pytest.mark.parametrize(("action", "before", "target"), [("rollback", "2", "1"), ("promote", "1", "2")],
                         ids=["rollback", "promote"])  # fmt: skip
def test_override_killed_at_every_write(
    runner: Runner, world: dict[str, str], action: str, before: str, target: str
) -> None:
    flag = "--to" if action == "rollback" else "--version"
    reason = f"{action} under fault injection"

    def case(key: str, fault: Fault | None = None) -> Any:
        move_champion_to(runner, world, before, f"{key}-setup")
        return runner.step(world, action, flag, target, "--reason", reason, "--run-key", key, fault=fault)

    clean = case(f"{action}-clean")
    assert clean.exitcode == 0, clean.result
    for fault in kill_points(clean.trace):
        key = f"{action}-{fault.kill_at}-{fault.when}"
        killed = case(key, fault)
        assert killed.killed, (key, killed.exitcode, killed.result)
        rerun_within_limit(runner, world, action, flag, target, "--reason", reason, "--run-key", key)
        snap = runner.call(world, ops.snapshot, key, "decision.json", "ct_ops", target)
        assert_consistent(snap, key, action)
        assert snap["champion"] == target


def test_train_killed_at_every_write(runner: Runner, world: dict[str, str]) -> None:
    env = {**world, "CT_TRAIN__EPOCHS": "1"}
    runner.call(env, ops.copy_window, "strong", "tk-clean")
    clean = runner.step(env, "train", "--run-key", "tk-clean")
    assert clean.exitcode == 0, clean.result
    for fault in kill_points(clean.trace):
        key = f"tk-{fault.kill_at}-{fault.when}"
        runner.call(env, ops.copy_window, "strong", key)
        killed = runner.step(env, "train", "--run-key", key, fault=fault)
        assert killed.killed, (key, killed.exitcode, killed.result)
        result = rerun_within_limit(runner, env, "train", "--run-key", key)
        snap = runner.call(env, ops.snapshot, key)
        assert snap["versions"] == [result["model_version"]], (key, snap["versions"])
        assert snap["running_runs"] == [], f"{key}: a killed attempt's run is still RUNNING"
        assert snap["orphan_models"] == [], f"{key}: a logged model no version points at"


def test_train_killed_mid_epoch_resumes_and_ends_with_the_same_weights(runner: Runner, world: dict[str, str]) -> None:
    """SIGKILL right after a mid-epoch checkpoint: the rerun resumes there and registers the model an
    uninterrupted run registers, bit for bit (CPU kernels are deterministic here), as one version."""
    env = {**world, "CT_TRAIN__EPOCHS": "2", "CT_TRAIN__BATCH_SIZE": "16", "CT_TRAIN__CHECKPOINT_MINUTES": "0"}
    runner.call(env, ops.copy_window, "strong", "tr-clean")
    clean = runner.step(env, "train", "--run-key", "tr-clean")
    assert clean.exitcode == 0 and clean.result is not None and clean.result["resumed_from"] is None, clean.result
    checkpoints = [line.split()[1] for line in clean.trace if line.startswith("write ") and "checkpoints/" in line]
    assert len(checkpoints) >= 4, clean.trace
    fault = Fault(kill_at=int(checkpoints[2]), when="after")  # the third checkpoint: step 3 of epoch 0

    runner.call(env, ops.copy_window, "strong", "tr-killed")
    killed = runner.step(env, "train", "--run-key", "tr-killed", fault=fault)
    assert killed.killed, (killed.exitcode, killed.result)
    resumed = rerun_within_limit(runner, env, "train", "--run-key", "tr-killed")
    assert resumed["resumed_from"] == {"epoch": 0, "step": 3}, resumed
    snap = runner.call(env, ops.snapshot, "tr-killed")
    assert snap["versions"] == [resumed["model_version"]] and snap["running_runs"] == [] and snap["orphan_models"] == []
    assert runner.call(env, ops.weights_digest, "tr-killed") == runner.call(env, ops.weights_digest, "tr-clean")
    assert resumed["train_loss"] == clean.result["train_loss"]
