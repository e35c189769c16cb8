"""The gate's statistics against independent computations: likelihoods, enumeration, closed forms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import optimize
from scipy import stats as scipy_stats

from ml.decide import stats


def reference_score_z(wins: int, losses: int, n: int, margin: float) -> float:
    """The score statistic from first principles: maximise the multinomial likelihood under
    H0 (P(only candidate right) - P(only champion right) = margin) numerically, then standardise."""
    rest = n - wins - losses

    def negative_log_likelihood(p_loss: float) -> float:
        p_win = p_loss + margin
        p_rest = 1 - p_win - p_loss
        if min(p_win, p_loss, p_rest) <= 0:
            return math.inf
        return -(wins * math.log(p_win) + losses * math.log(p_loss) + rest * math.log(p_rest))

    low, high = max(0.0, -margin) + 1e-12, (1 - margin) / 2 - 1e-12
    p_loss = optimize.minimize_scalar(negative_log_likelihood, bounds=(low, high), method="bounded",
                                      options={"xatol": 1e-12}).x  # fmt: skip
    variance = n * (2 * p_loss + margin - margin**2)  # Var(wins - losses) at the restricted estimate
    return (wins - losses - n * margin) / math.sqrt(variance)


@pytest.mark.parametrize(
    ("wins", "losses", "n", "margin"),
    [(30, 12, 300, 0.01), (8, 2, 300, 0.01), (120, 80, 1000, 0.02), (5, 9, 200, 0.0), (40, 10, 100, 0.1),
     (3, 25, 500, -0.03)],
)  # fmt: skip
def test_score_statistic_matches_the_likelihood_computed_from_scratch(wins, losses, n, margin) -> None:
    assert stats.score_z(wins, losses, n, margin) == pytest.approx(reference_score_z(wins, losses, n, margin), rel=1e-5)


def test_with_no_margin_it_is_mcnemars_z() -> None:
    assert stats.score_z(30, 12, 300, 0) == pytest.approx((30 - 12) / math.sqrt(42))
    assert stats.score_z(30, 12, 300, 0, continuity=True) == pytest.approx((30 - 12 - 0.5) / math.sqrt(42))


def test_the_test_holds_its_level_at_the_margin_by_exact_enumeration() -> None:
    # Every outcome of 400 paired rows when the candidate is better by exactly the margin, weighted
    # by its multinomial probability: the chance of a rejection must stay at or below alpha.
    n, margin, alpha = 400, 0.01, 0.05
    for p_loss in (0.02, 0.05, 0.10):
        p_win = p_loss + margin
        wins, losses = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        possible = wins + losses <= n
        probability = np.where(
            possible,
            scipy_stats.multinomial.pmf(
                np.stack([wins, losses, n - wins - losses], -1), n, [p_win, p_loss, 1 - p_win - p_loss]
            ),
            0.0,
        )
        likely = np.argwhere(probability > 1e-12)
        size = sum(
            probability[w, c] for w, c in likely
            if stats.score_test(int(w), int(c), n, margin, continuity=True).p_value < alpha
        )  # fmt: skip
        assert size <= alpha, (p_loss, size)
        assert size > alpha / 4, "and it is not so conservative that it cannot reject"


def test_a_difference_equal_to_the_margin_gives_no_evidence_whatever_the_floats() -> None:
    # 0.07 * 100 is 7.000000000000001 in floats; the numerator is computed exactly.
    assert 0.07 * 100 != 7
    assert stats.score_z(17, 10, 100, 0.07) == 0.0
    assert stats.score_test(17, 10, 100, 0.07, continuity=True).p_value == 0.5
    assert stats.exact(0.1) + stats.exact(0.2) == stats.exact(0.3)


def test_the_lower_bound_inverts_the_test() -> None:
    wins, losses, n, alpha = 60, 20, 1000, 0.01
    bound = stats.lower_bound(wins, losses, n, alpha, continuity=True)
    assert 0 < bound < (wins - losses) / n
    assert stats.score_test(wins, losses, n, bound - 1e-6, continuity=True).p_value < alpha
    assert stats.score_test(wins, losses, n, bound + 1e-6, continuity=True).p_value > alpha


def test_holm_steps_down() -> None:
    assert stats.holm([0.01, 0.04, 0.03, 0.5], 0.05) == [True, False, False, False]
    assert stats.holm([0.01, 0.02, 0.03, 0.04], 0.2) == [True, True, True, True]
    assert stats.holm([], 0.05) == []


def test_spending_sums_to_at_most_alpha_however_long_the_reign() -> None:
    alpha = 0.01
    levels = [stats.alpha_for(alpha, k) for k in range(1, 10_001)]
    assert levels[0] == pytest.approx(alpha * 6 / math.pi**2)
    assert levels[19] == pytest.approx(levels[0] / 400), "the 20th challenge gets 1/400 of the first"
    assert all(a > b for a, b in itertools.pairwise(levels))
    assert sum(levels) < alpha and sum(levels) == pytest.approx(alpha, rel=1e-3)
    assert stats.alpha_spent(alpha, 3) == pytest.approx(sum(levels[:3]))
    with pytest.raises(ValueError, match="counted from 1"):
        stats.alpha_for(alpha, 0)


def test_detectable_improvement_and_rows_needed_agree() -> None:
    n, discordance, alpha = 318, 0.06, stats.alpha_for(0.01, 1)
    smallest = stats.detectable(n, discordance, 0.0, alpha)
    assert smallest is not None and 0.03 < smallest < 0.06
    assert stats.rows_needed(smallest, discordance, 0.0, alpha) == pytest.approx(n, abs=2)
    assert stats.detectable(4 * n, discordance, 0.0, alpha) < smallest, "more rows see smaller improvements"
    assert stats.rows_needed(0.0, discordance, 0.0, alpha) is None, "nothing to find at or below the margin"


def test_the_power_claim_holds_in_simulation() -> None:
    # Paired outcomes with a true improvement equal to the stated detectable delta are found ~80% of the time.
    rng = np.random.default_rng(0)
    n, discordance, alpha = 1000, 0.08, 0.006
    delta = stats.detectable(n, discordance, 0.0, alpha)
    assert delta is not None
    p_win, p_loss = (discordance + delta) / 2, (discordance - delta) / 2
    draws = rng.multinomial(n, [p_win, p_loss, 1 - p_win - p_loss], size=4000)
    found = np.mean([stats.score_test(int(w), int(c), n, 0.0, continuity=True).p_value < alpha for w, c, _ in draws])
    assert 0.74 < found < 0.86, found
