"""DDP on CPU: ``torchrun`` with two gloo processes runs the same train step a multi-GPU pod runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.faults import ops
from tests.faults.harness import Runner

REPO = Path(__file__).resolve().parents[2]


def test_two_process_ddp_registers_once_and_matches_one_process(runner: Runner, world: dict[str, str]) -> None:
    env = {**world, "CT_TRAIN__EPOCHS": "3", "CT_TRAIN__NUM_THREADS": "1", "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}"}
    runner.call(env, ops.copy_window, "strong", "ddp-one")
    runner.call(env, ops.copy_window, "strong", "ddp-two")
    single = runner.step(env, "train", "--run-key", "ddp-one")
    assert single.exitcode == 0 and single.result is not None, single.result

    # The command a pod with kubernetes.gpu_count=2 runs (ct_airflow.operators.pods.step_command), on CPUs.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "ml", "train", "--run-key", "ddp-two"]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, f"only rank 0 prints the step's JSON line: {done.stdout[-2000:]}"
    result = json.loads(lines[0])
    assert result["processes"] == 2 and not result["already_done"], result
    assert "rank 1:" in done.stderr, "rank 1 trained and reported on stderr"

    snap = runner.call(env, ops.snapshot, "ddp-two")
    assert snap["versions"] == [result["model_version"]] and snap["running_runs"] == [] and snap["orphan_models"] == []
    # The ranks together took the steps one process takes (same global batches, averaged gradients);
    # only BatchNorm's statistics differ (each rank normalises its half batch).
    one, two = single.result["train_loss"], result["train_loss"]
    assert abs(two - one) <= 0.15 * one + 0.02, (one, two)
    assert abs(result["val_accuracy"] - single.result["val_accuracy"]) <= 0.1, (single.result, result)
    print(f"train loss: 1 process {one:.4f}, 2 processes {two:.4f}; val accuracy "
          f"{single.result['val_accuracy']:.3f} vs {result['val_accuracy']:.3f}")  # fmt: skip

    again = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1])["already_done"] is True
    assert runner.call(env, ops.snapshot, "ddp-two")["versions"] == [result["model_version"]]
