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


def test_mcnemar_counts_only_discordant_pairs() -> None:
    y = np.zeros(10, dtype=int)
    result = mcnemar_exact(y, np.array([0] * 8 + [1] * 2), np.array([0] * 5 + [1] * 5))
    assert result == pytest.approx({"only_candidate_right": 3, "only_champion_right": 0, "p_value": 0.125})
