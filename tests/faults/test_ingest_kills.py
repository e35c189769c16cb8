"""SIGKILL ``ingest`` at every write, rerun it: a reader never sees half a batch, and the rerun curates it whole."""

from __future__ import annotations

from tests.faults import ops
from tests.faults.harness import Runner
from tests.faults.test_kill_points import kill_points, rerun_within_limit


def test_ingest_killed_at_every_write(runner: Runner, world: dict[str, str]) -> None:
    def new_batch(batch_id: str, start: int) -> None:
        runner.call(world, _write_one_batch, batch_id, start)

    new_batch("ik-clean", 900)
    clean = runner.step(world, "ingest", "--batch-id", "ik-clean")
    assert clean.exitcode == 0 and clean.result and clean.result["curated"] == ["ik-clean"], clean.result
    expected = runner.call(world, ops.batch_state, "ik-clean")
    for i, fault in enumerate(kill_points(clean.trace), start=1):
        batch_id = f"ik-{fault.kill_at}-{fault.when}"
        new_batch(batch_id, 900 + 45 * i)
        killed = runner.step(world, "ingest", "--batch-id", batch_id, fault=fault)
        assert killed.killed, (batch_id, killed.exitcode)
        half = runner.call(world, ops.batch_state, batch_id)
        assert not (half["curated"] and half["rows"] != half["shard_rows"]), f"{batch_id}: a reader sees half a batch"
        result = rerun_within_limit(runner, world, "ingest", "--batch-id", batch_id)
        assert result["curated"] == [batch_id], (batch_id, result)
        state = runner.call(world, ops.batch_state, batch_id)
        assert state == expected, (batch_id, state)


def _write_one_batch(batch_id: str, start: int) -> None:
    from ml.config import load_settings
    from ml.demo import digits, write_batch
    from ml.storage import Lake

    images, labels = digits()
    write_batch(
        Lake.from_uri(load_settings().lake_uri), batch_id, images[start : start + 40], labels[start : start + 40]
    )
