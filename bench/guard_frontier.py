"""How rarely do class guards let a hidden 0.2 recall regression through at n = 1,000?

The issue asks for two things of the class guard at once: equal models vetoed in at most 10% of
gates at n = 1,000, and a 0.2 recall regression on a guarded class promoted in 0 gates. Alone (the
model otherwise equal, overall Δ = -2.2 points) the regression never passes the accuracy test, so
both hold (``bench/gate_power.py``). Hidden by gains on the other classes (the model equal overall)
it passes the accuracy test as often as an equal model does (about α_1 = 0.3%), and then only
the guard stands in the way. This script measures how often it gets through several guards, each
set to veto equal models in at most 9.5% of gates:

* ct's guard (the paired score test per class against ε, Holm) for ε from 0 to 0.1;
* a guard that knows both true models and vetoes on the likelihood ratio of "this class regressed
  by 0.2" against "equal". By Neyman-Pearson that is the most powerful test of one class's rows
  taken alone, but it is *not* a bound on the joint rate: the gates that matter are the ones the
  accuracy test lets through, where a class looks less regressed than it is, and there the score
  tests do better (the table shows by how much).

It shows that every guard tried leaves a rate of the order of 1e-5 to 1e-4 at this false-veto
level, and how much the choice of test moves it.

Within a class the rows are exchangeable, so a gate's evidence is four counts per class (both
right, only the champion right, only the candidate right, both wrong), drawn from the same
Gaussian copula as ``bench/gate_power.py``. That makes millions of gates cheap; the accuracy test
is the gate's own (:func:`ml.decide.stats.score_test`, continuity-corrected, at α_1).

Run: ``.venv/bin/python bench/guard_frontier.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from collections.abc import Callable

import numpy as np
from scipy.stats import multivariate_normal, norm

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from gate_power import REGRESSED, RHO, SHARES, regression_truth

from ml.config import GateConfig
from ml.decide import stats

N = 1000
CHAMPIONS = (0.90, 0.97)
FALSE_VETOES = 0.095
#: Count columns: both right, only the champion right (lost), only the candidate right (gained), both wrong.
BOTH, LOST, GAINED, NEITHER = range(4)


def cells(champion: float, candidate: float) -> np.ndarray:
    """P(both right), P(only the champion), P(only the candidate), P(neither) for one row."""
    a, b = norm.ppf(champion), norm.ppf(candidate)
    both = float(multivariate_normal(mean=[0, 0], cov=[[1, RHO], [RHO, 1]]).cdf([a, b]))
    lost, gained = norm.cdf(a) - both, norm.cdf(b) - both
    return np.array([both, lost, gained, 1 - both - lost - gained])


def draw(rng: np.random.Generator, rows: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Four counts for each entry of ``rows`` (a vectorised multinomial)."""
    out, left, mass = np.empty((*rows.shape, 4), dtype=np.int64), rows.copy(), 1.0
    for j in range(3):
        out[..., j] = rng.binomial(left, min(p[j] / mass, 1.0))
        left, mass = left - out[..., j], mass - p[j]
    out[..., 3] = left
    return out


# -- guards: a veto score per class; the gate vetoes when the largest score reaches the threshold ---
@functools.cache
def _score_p(lost: int, gained: int, support: int, epsilon: float) -> float:
    return stats.score_test(lost, gained, support, stats.exact(epsilon)).p_value


def score_guard(epsilon: float, min_support: int) -> Callable[[np.ndarray, float], np.ndarray]:
    """ct's guard. Holm's first step vetoes iff the smallest p-value is at most guard_alpha / K (K
    guarded classes), so the score is 1 / (K p) and the threshold 1 / guard_alpha."""

    def score(counts: np.ndarray, champion: float) -> np.ndarray:
        support = counts.sum(-1)
        flat = np.stack([counts[..., LOST].ravel(), counts[..., GAINED].ravel(), support.ravel()], 1)
        unique, inverse = np.unique(flat, axis=0, return_inverse=True)
        p = np.array([_score_p(int(lo), int(ga), int(s), epsilon) for lo, ga, s in unique])[inverse.ravel()]
        p = np.where(support.ravel() >= min_support, p, np.inf).reshape(support.shape)
        guarded = np.maximum((support >= min_support).sum(-1, keepdims=True), 1)
        return np.where(np.isfinite(p), 1 / (guarded * np.maximum(p, 1e-300)), 0.0)

    return score


def likelihood_guard(counts: np.ndarray, champion: float) -> np.ndarray:
    """log P(counts | the class regressed by 0.2) - log P(counts | equal), knowing both models."""
    ratio = np.log(cells(champion, champion - 0.2)) - np.log(cells(champion, champion))
    return (counts * ratio).sum(-1)


def calibrate(scores: np.ndarray, rate: float = FALSE_VETOES) -> float:
    """The lowest threshold t with ``(scores >= t).mean() <= rate``: ties at t are vetoed too."""
    ordered = np.sort(scores)
    values = np.unique(ordered)
    vetoed = len(ordered) - np.searchsorted(ordered, values, side="left")  # scores >= each value
    allowed = values[vetoed <= rate * len(ordered)]
    return float(allowed.min()) if allowed.size else math.inf


def equal_gates(rng: np.random.Generator, champion: float, gates: int) -> np.ndarray:
    """Per-class counts of equal models on ``gates`` evaluations of N rows: shape (gates, 10, 4)."""
    support = rng.multinomial(N, SHARES, size=gates)
    return draw(rng, support, cells(champion, champion))


def hidden_gates(rng: np.random.Generator, champion: float, gates: int) -> np.ndarray:
    """Per-class counts of the hidden regression, for the gates where the accuracy test passes."""
    truth = regression_truth("regression_hidden", champion)
    champ, cand = truth.recalls()
    regressed_rows = rng.binomial(N, SHARES[REGRESSED], size=gates)
    regressed = draw(rng, regressed_rows, cells(champ[REGRESSED], cand[REGRESSED]))
    others_p = cells(champ[0], cand[0])  # every other class gains the same
    others = draw(rng, N - regressed_rows, others_p)
    wins = regressed[:, GAINED] + others[:, GAINED]
    losses = regressed[:, LOST] + others[:, LOST]
    level = stats.alpha_for(GateConfig().alpha, 1)
    passing = [
        i
        for i in np.nonzero(wins > losses)[0]
        if stats.score_test(int(wins[i]), int(losses[i]), N, 0, continuity=True).p_value < level
    ]
    # Split the other classes' rows among them: given the pooled counts, each class's counts are a
    # multivariate hypergeometric draw (the classes share one truth, so rows are exchangeable).
    shares = np.delete(SHARES, REGRESSED) / np.delete(SHARES, REGRESSED).sum()
    out = np.zeros((len(passing), len(SHARES), 4), dtype=np.int64)
    for row, i in enumerate(passing):
        out[row, REGRESSED] = regressed[i]
        pool = others[i].copy()
        sizes = rng.multinomial(int(pool.sum()), shares)
        for cls, size in zip((c for c in range(len(SHARES)) if c != REGRESSED), sizes, strict=True):
            out[row, cls] = rng.multivariate_hypergeometric(pool, int(size))
            pool -= out[row, cls]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--equal-gates", type=int, default=200_000, help="equal-model gates per champion accuracy")
    parser.add_argument("--gates", type=int, default=4_000_000, help="hidden-regression gates per champion accuracy")
    args = parser.parse_args()
    rng = np.random.default_rng(8)
    equal = {acc: equal_gates(rng, acc, args.equal_gates) for acc in CHAMPIONS}
    hidden = {acc: hidden_gates(rng, acc, args.gates) for acc in CHAMPIONS}
    cfg = GateConfig()
    default = f"ct's default: score test, epsilon={cfg.recall_epsilon:g}, guard_alpha={cfg.guard_alpha:g}"
    guards: list[tuple[str, Callable[[np.ndarray, float], np.ndarray], float | None]] = [
        (default, score_guard(cfg.recall_epsilon, cfg.min_support), 1 / cfg.guard_alpha),
        *((f"score test, epsilon={e:g}", score_guard(e, cfg.min_support), None) for e in (0.0, 0.025, 0.05, 0.1)),
        ("likelihood ratio, knowing both true models", likelihood_guard, None),
    ]
    print(f"n={N} rows, 10 classes (class c{REGRESSED} regressed by 0.2 recall, the rest gaining enough to hide it), "
          f"latent error correlation {RHO}; {args.equal_gates:,} equal and {args.gates:,} hidden-regression gates "
          "per champion accuracy\n")  # fmt: skip
    print("| guard | equal models vetoed (0.90 / 0.97) | hidden regression promoted per gate (0.90 / 0.97) |")
    print("|---|---|---|")
    best = math.inf
    for name, guard, threshold in guards:
        scores = {acc: guard(equal[acc], acc).max(-1) for acc in CHAMPIONS}
        if threshold is None:  # the lowest threshold that keeps false vetoes at 9.5% for both champions
            threshold = max(calibrate(scores[acc]) for acc in CHAMPIONS)
        if guard is likelihood_guard:  # knowing the models, it may even set its threshold per champion
            thresholds = {acc: calibrate(scores[acc]) for acc in CHAMPIONS}
        else:
            thresholds = dict.fromkeys(CHAMPIONS, threshold)
        vetoed = [float((scores[acc] >= thresholds[acc]).mean()) for acc in CHAMPIONS]
        promoted = [float((guard(hidden[acc], acc).max(-1) < thresholds[acc]).sum()) / args.gates for acc in CHAMPIONS]
        if name != default:
            best = min(best, max(promoted))
        print(f"| {name} | {vetoed[0]:.1%} / {vetoed[1]:.1%} | {promoted[0]:.1e} / {promoted[1]:.1e} |")
    print(f"\nAt most 9.5% false vetoes, the best of these guards still lets a hidden regression through in {best:.1e} "
          "of gates for one of the champions: 0 in a sample of a few thousand gates is luck, not a property of the "
          "gate.")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
