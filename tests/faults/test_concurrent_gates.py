"""Two different candidates gated at the same instant, ten times over: exactly one promotes over the
old champion, and the other re-scores the new champion on its own rows and decides again (its
decision must be what the gate gives on that re-scored evaluation), instead of recording an error."""

from __future__ import annotations

import time

from tests.faults import ops
from tests.faults.harness import Fault, Runner
from tests.faults.test_kill_points import move_champion_to

ROUNDS = 10


def test_racing_gates_promote_once_and_the_loser_decides_again(runner: Runner, world: dict[str, str]) -> None:
    # A second strong model with other weights (another seed), trained once.
    other = {**world, "CT_TRAIN__SEED": "1"}
    runner.call(other, ops.copy_window, "strong", "strong-seed1")
    assert runner.step(other, "train", "--run-key", "strong-seed1").exitcode == 0
    for round_ in range(ROUNDS):
        move_champion_to(runner, world, "1", f"race-{round_}-setup")
        keys = {f"race-{round_}-a": "strong", f"race-{round_}-b": "strong-seed1"}
        for key, source in keys.items():
            runner.call(world, ops.register_copy, source, key)
            assert runner.step(world, "evaluate", "--run-key", key).exitcode == 0
        runs = runner.steps(world, [["gate", "--run-key", key] for key in keys], fault=Fault(start_at=time.time() + 2))
        assert [r.exitcode for r in runs] == [0, 0], [r.result for r in runs]
        results = [r.result for r in runs if r.result]
        winners = [r for r in results if r["decision"] == "promote" and not r["superseded_champions"]]
        losers = [r for r in results if r["superseded_champions"]]
        assert len(winners) == 1 and len(losers) == 1, (round_, results)
        winner, loser = winners[0], losers[0]
        assert loser["superseded_champions"] == ["1"]
        assert loser["champion_version"] == winner["candidate_version"], "re-evaluated against the new champion"
        # Same rows: the loser's view of the new champion is exactly the winner's own evaluation.
        assert loser["champion_accuracy"] == winner["candidate_accuracy"]
        assert loser["decision"] == runner.call(world, ops.recompute_gate, loser["run_key"]), loser["reasons"]
        snap = runner.call(world, ops.snapshot, winner["run_key"])
        last_promoted = loser if loser["decision"] == "promote" else winner
        assert snap["champion"] == last_promoted["candidate_version"]
        decisions = [h["decision"] for h in snap["history"] if h["run_key"] in keys]
        assert sorted(decisions) == sorted([winner["decision"], loser["decision"]]), decisions
