"""Gate rules on constructed prediction sets with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from ml.config import GateConfig
from ml.gate import decide, mcnemar_exact

LABELS = ("a", "b", "c")


def make(n_per_class: int = 100) -> np.ndarray:
    return np.repeat(np.arange(3), n_per_class)


def with_errors(y: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    pred = y.copy()
    pred[wrong] = (y[wrong] + 1) % 3
    return pred


def test_first_model_above_floor_promotes() -> None:
    y = make()
    result = decide(y, with_errors(y, np.arange(10)), None, LABELS, GateConfig(floor_accuracy=0.8))
    assert result.decision == "promote" and "first model" in result.reasons[0]


def test_first_model_below_floor_rejects() -> None:
    y = make()
    result = decide(y, with_errors(y, np.arange(100)), None, LABELS, GateConfig(floor_accuracy=0.8))
    assert result.decision == "reject" and "< floor" in result.reasons[0]


def test_worse_candidate_rejects() -> None:
    y = make()
    champion, candidate = with_errors(y, np.arange(0, 300, 10)), with_errors(y, np.arange(0, 300, 5))
    result = decide(y, candidate, champion, LABELS, GateConfig())
    assert result.decision == "reject"
    assert result.reasons[0].startswith("accuracy 0.8000 vs champion 0.9000")


def test_slightly_better_but_not_significant_rejects() -> None:
    y = make()
    champion, candidate = with_errors(y, np.arange(0, 300, 10)), with_errors(y, np.arange(0, 300, 10)[2:])
    result = decide(y, candidate, champion, LABELS, GateConfig())
    assert result.decision == "reject" and result.reasons[0].startswith("not significant (p=0.25")


def test_significantly_better_promotes() -> None:
    y = make()
    champion, candidate = with_errors(y, np.arange(0, 300, 5)), with_errors(y, np.arange(0, 300, 50))
    result = decide(y, candidate, champion, LABELS, GateConfig())
    assert result.decision == "promote"
    assert result.checks["significance"]["p_value"] < 1e-10


def test_better_overall_but_a_supported_class_collapses_rejects() -> None:
    y = make()
    champion = with_errors(y, np.arange(0, 300, 4))  # 25% wrong everywhere
    candidate = with_errors(y, np.arange(200, 240))  # perfect on a and b, 40% of c wrong
    result = decide(y, candidate, champion, LABELS, GateConfig(recall_epsilon=0.05))
    assert result.decision == "reject"
    assert result.reasons == ["class c recall dropped 0.150 > epsilon 0.05 (support 100)"]


def test_equal_models_reject() -> None:
    y = make()
    same = with_errors(y, np.arange(0, 300, 10))
    result = decide(y, same.copy(), same, LABELS, GateConfig())
    assert result.decision == "reject"
    assert result.reasons == ["accuracy 0.9000 vs champion 0.9000: delta +0.0000 <= margin 0"]
    assert result.checks["significance"]["p_value"] == 1.0


def test_better_overall_while_a_small_class_drops_still_promotes() -> None:
    # Class c has only 8 rows (< min_support 10): it is reported but cannot veto.
    y = np.concatenate([np.repeat([0, 1], 150), np.full(8, 2)])
    champion = with_errors(y, np.arange(0, 300, 4))  # 75 errors on a and b, c perfect
    candidate = with_errors(y, np.array([300, 301, 302, 303]))  # a and b perfect, half of c wrong
    result = decide(y, candidate, champion, LABELS, GateConfig(min_support=10, recall_epsilon=0.05))
    assert result.decision == "promote", result.reasons
    small = {c["label"]: c for c in result.checks["non_inferiority"]["classes"]}["c"]
    assert small["drop"] == pytest.approx(0.5) and small["vetoes"] is False
    assert "below min_support, reported only: c" in result.reasons[0]


@pytest.mark.parametrize(
    ("candidate_errors", "decision"),
    [(np.arange(0, 300, 50), "promote"), (np.arange(0, 300, 10)[1:], "reject")],
    ids=["clearly-better", "one-row-better"],
)
def test_macro_f1_uses_a_seeded_paired_bootstrap(candidate_errors: np.ndarray, decision: str) -> None:
    y = make()
    champion = with_errors(y, np.arange(0, 300, 10))
    cfg = GateConfig(primary_metric="macro_f1", bootstrap_samples=1000)
    result = decide(y, with_errors(y, candidate_errors), champion, LABELS, cfg)
    test = result.checks["significance"]
    assert test["test"] == "paired_bootstrap_macro_f1" and test["seed"] == 0
    assert result.decision == decision
    if decision == "reject":
        assert result.reasons[0].startswith("not significant (p=")
    again = decide(y, with_errors(y, candidate_errors), champion, LABELS, cfg)
    assert again.checks["significance"] == test, "a fixed seed gives the same interval every time"


def test_budgets_veto_a_slow_or_large_candidate() -> None:
    y = make()
    champion, candidate = with_errors(y, np.arange(0, 300, 5)), with_errors(y, np.arange(0, 300, 50))
    cfg = GateConfig(max_latency_p95_ms=5.0, max_size_mb=10.0)
    fine = decide(y, candidate, champion, LABELS, cfg, candidate_cost={"latency_p95_ms": 2.0, "size_mb": 1.0})
    assert fine.decision == "promote" and fine.checks["latency_budget"]["passed"]
    slow = decide(y, candidate, champion, LABELS, cfg, candidate_cost={"latency_p95_ms": 9.5, "size_mb": 12.0})
    assert slow.decision == "reject"
    assert slow.reasons == ["latency_p95_ms 9.50 ms exceeds budget 5 ms", "size_mb 12.00 MB exceeds budget 10 MB"]


def test_mcnemar_counts_only_discordant_pairs() -> None:
    y = np.zeros(10, dtype=int)
    result = mcnemar_exact(y, np.array([0] * 8 + [1] * 2), np.array([0] * 5 + [1] * 5))
    assert result == {"test": "mcnemar_exact_one_sided", "only_candidate_right": 3, "only_champion_right": 0,
                      "p_value": pytest.approx(0.125)}  # fmt: skip
