"""Gate rules on constructed prediction sets with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from ml.config import GateConfig
from ml.decide import stats
from ml.decide.gate import decide, discordant

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


def test_first_model_exactly_at_the_floor_promotes_whatever_the_floats() -> None:
    # 0.7 * 300 = 210.00000000000003 in floats; 210 correct rows are exactly at the floor of 0.7.
    y = make()
    result = decide(y, with_errors(y, np.arange(90)), None, LABELS, GateConfig(floor_accuracy=0.7))
    assert result.checks["floor"]["correct"] == 210
    assert result.decision == "promote", result.reasons


def test_worse_candidate_rejects() -> None:
    y = make()
    champion, candidate = with_errors(y, np.arange(0, 300, 10)), with_errors(y, np.arange(0, 300, 5))
    result = decide(y, candidate, champion, LABELS, GateConfig())
    assert result.decision == "reject"
    assert result.reasons[0].startswith("accuracy 0.8000 vs champion 0.9000")


def test_slightly_better_but_not_significant_rejects_and_says_what_it_could_see() -> None:
    y = make()
    champion, candidate = with_errors(y, np.arange(0, 300, 10)), with_errors(y, np.arange(0, 300, 10)[2:])
    result = decide(y, candidate, champion, LABELS, GateConfig())
    assert result.decision == "reject" and result.reasons[0].startswith("not significant (p=0.144 >= alpha 0.005)")
    power = result.power
    assert power is not None
    assert power["sentence"] == (
        f"with 300 paired rows (2 where the models disagree), improvements below "
        f"{power['detectable_delta'] * 100:.1f} points cannot be told from noise (80% power at α=0.005)"
    )
    assert power["detectable_delta"] == pytest.approx(stats.detectable(300, 2 / 300, 0.0, 0.005))
    assert power["rows_needed"] > 300 and "golden set" in power["advice"]


def test_significantly_better_promotes() -> None:
    y = make()
    champion, candidate = with_errors(y, np.arange(0, 300, 5)), with_errors(y, np.arange(0, 300, 50))
    result = decide(y, candidate, champion, LABELS, GateConfig())
    assert result.decision == "promote"
    test = result.checks["significance"]
    assert test["test"] == "paired_score_test_accuracy" and test["p_value"] < 1e-10
    assert test["lower_bound"] > 0 and test["confidence"] == pytest.approx(0.995)


def test_the_margin_is_the_null_hypothesis_not_a_filter() -> None:
    # +4 points observed: significant against 0, but not against a margin of 0.03.
    y = make()
    champion, candidate = with_errors(y, np.arange(0, 300, 10)), with_errors(y, np.arange(0, 300, 10)[12:])
    assert decide(y, candidate, champion, LABELS, GateConfig(margin=0.0)).decision == "promote"
    result = decide(y, candidate, champion, LABELS, GateConfig(margin=0.03))
    assert result.checks["superiority"]["passed"], "the observed delta is above the margin"
    assert result.decision == "reject" and result.reasons[0].startswith("not significant")
    assert result.checks["significance"]["hypothesis"] == "H0: delta <= 0.03 vs H1: delta > 0.03"


def test_a_delta_equal_to_the_margin_is_not_above_it() -> None:
    # 0.93 vs 0.92 is 0.010000000000000009 in floats: 3 net rows of 300 are exactly the margin.
    y = make()
    champion, candidate = with_errors(y, np.arange(0, 300, 300 // 24)[:24]), with_errors(y, np.arange(21))
    assert discordant(y, candidate, champion)[0] - discordant(y, candidate, champion)[1] == 3
    result = decide(y, candidate, champion, LABELS, GateConfig(margin=0.01, alpha=0.5))
    assert result.checks["superiority"]["passed"] is False
    assert result.checks["significance"]["statistic"] == 0.0
    assert result.reasons[0].startswith("accuracy 0.9300 vs champion 0.9200: delta +0.0100 <= margin 0.01")


@pytest.mark.parametrize("champion_recall_rows", [20, 19], ids=["champion-1.00", "champion-0.95"])
def test_a_recall_drop_of_exactly_epsilon_decides_the_same_whatever_the_champion(champion_recall_rows: int) -> None:
    # Class c has 20 rows; the candidate loses exactly one of the champion's hits there: a drop of
    # exactly 0.05 (1.0 - 0.95 = 0.050000000000000044 in floats) never vetoes.
    y = np.concatenate([np.repeat([0, 1], 140), np.full(20, 2)])
    champion = with_errors(y, np.arange(280, 300 - champion_recall_rows))
    candidate = with_errors(y, np.arange(280, 300 - champion_recall_rows + 1))
    cfg = GateConfig(recall_epsilon=0.05, min_support=20, guard_alpha=0.99, max_unguarded_drop=0.05)
    row = {c["label"]: c for c in decide(y, candidate, champion, LABELS, cfg).checks["non_inferiority"]["classes"]}
    assert row["c"]["lost_rows"] - row["c"]["gained_rows"] == 1
    assert row["c"]["p_value"] == pytest.approx(0.5) and row["c"]["vetoes"] is False
    unguarded = decide(y, candidate, champion, LABELS, cfg.model_copy(update={"min_support": 21}))
    row = {c["label"]: c for c in unguarded.checks["non_inferiority"]["classes"]}
    assert row["c"]["guarded"] is False and row["c"]["vetoes"] is False, "a drop equal to the limit passes too"


def test_a_class_shown_to_collapse_vetoes_an_otherwise_better_model() -> None:
    y = make()
    champion = with_errors(y, np.arange(0, 300, 4))  # 25% wrong everywhere
    candidate = with_errors(y, np.arange(200, 240))  # perfect on a and b, 40% of c wrong
    result = decide(y, candidate, champion, LABELS, GateConfig(recall_epsilon=0.05))
    assert result.decision == "reject"
    assert result.reasons[0].startswith("class c recall dropped 0.150 > epsilon 0.05 (support 100, p=")
    guard = result.checks["non_inferiority"]
    assert guard["test"] == "paired_score_test_per_class_holm" and not guard["passed"]


def test_noise_in_a_class_is_not_a_veto() -> None:
    # Class c loses 3 rows net of 100 (a raw drop of 0.03 > epsilon 0.02): not shown beyond epsilon.
    y = make()
    champion = with_errors(y, np.concatenate([np.arange(0, 200, 4), [200, 201]]))
    candidate = with_errors(y, np.arange(200, 205))
    result = decide(y, candidate, champion, LABELS, GateConfig(recall_epsilon=0.02))
    c = {row["label"]: row for row in result.checks["non_inferiority"]["classes"]}["c"]
    assert c["drop"] == pytest.approx(0.03) and c["vetoes"] is False
    assert result.decision == "promote", result.reasons


def test_holm_makes_the_veto_harder_as_classes_are_added() -> None:
    labels = tuple("abcdefghij")
    y = np.repeat(np.arange(10), 100)
    champion = y.copy()
    candidate = y.copy()
    candidate[np.arange(0, 9)] = 1  # class a: 9 rows lost of 100
    cfg = GateConfig(recall_epsilon=0.03, guard_alpha=0.05)
    alone = decide(y[:100], candidate[:100], champion[:100], ("a", "b"), cfg)
    many = decide(y, candidate, champion, labels, cfg)
    p_alone = alone.checks["non_inferiority"]["classes"][0]["p_value"]
    assert p_alone < 0.05 and alone.checks["non_inferiority"]["passed"] is False
    assert many.checks["non_inferiority"]["classes"][0]["p_value"] == p_alone
    assert many.checks["non_inferiority"]["passed"], "p > 0.05 / 10: not shown across ten classes"


def test_a_small_class_is_listed_as_not_guarded_and_can_be_limited() -> None:
    # Class c has only 8 rows (< min_support 50): listed, and vetoes only under max_unguarded_drop.
    y = np.concatenate([np.repeat([0, 1], 150), np.full(8, 2)])
    champion = with_errors(y, np.arange(0, 300, 4))  # 75 errors on a and b, c perfect
    candidate = with_errors(y, np.array([300, 301, 302, 303]))  # a and b perfect, half of c wrong
    result = decide(y, candidate, champion, LABELS, GateConfig())
    assert result.decision == "promote", result.reasons
    small = {c["label"]: c for c in result.checks["non_inferiority"]["classes"]}["c"]
    assert small["drop"] == pytest.approx(0.5) and small["vetoes"] is False and small["note"] == "not guarded: 8 rows"
    assert "(not guarded, too few rows: c)" in result.reasons[0]
    limited = decide(y, candidate, champion, LABELS, GateConfig(max_unguarded_drop=0.25))
    assert limited.decision == "reject"
    assert limited.reasons == ["class c (not guarded: 8 rows) dropped 0.500 > max_unguarded_drop 0.25"]


def test_the_guard_says_which_drops_it_could_miss_and_more_rows_see_smaller_ones() -> None:
    # Classes a, b, c with 50, 100 and 400 rows; both models miss every 10th row alike.
    y = np.concatenate([np.full(50, 0), np.full(100, 1), np.full(400, 2)])
    both_wrong = np.arange(0, len(y), 10)
    champion = with_errors(y, both_wrong)
    candidate = with_errors(y, np.concatenate([both_wrong, [1, 2, 55, 56, 160, 161, 162, 163]]))
    cfg = GateConfig()
    guard = decide(y, candidate, champion, LABELS, cfg).checks["non_inferiority"]
    seen = {row["label"]: row["detectable_drop"] for row in guard["classes"]}
    assert seen["a"] > seen["b"] > seen["c"] > cfg.recall_epsilon
    first_step = cfg.guard_alpha / 3
    assert seen["b"] == stats.detectable(100, 2 / 100, cfg.recall_epsilon, first_step)
    assert guard["sentence"] == (
        f"on its weakest guarded class (a, 50 rows) the class guard misses recall drops below {seen['a']:.2f} "
        f"more than 1 time in 5 (80% power at Holm's first step, {first_step:.2g})"
    )
    blind = decide(y, candidate, champion, LABELS, GateConfig(min_support=500)).checks["non_inferiority"]
    assert all("detectable_drop" not in row for row in blind["classes"])
    assert blind["sentence"].startswith("no class has 500 evaluation rows, so no class is guarded: a frozen golden set")
    # Two rows at a level of 1e-4: not even a class losing all its recall would be found 4 times in 5.
    tiny = np.array([0, 0, 1, 1, 2, 2])
    hopeless = decide(tiny, tiny, tiny, LABELS, GateConfig(min_support=2, guard_alpha=1e-4)).checks["non_inferiority"]
    assert [row["detectable_drop"] for row in hopeless["classes"]] == [None, None, None]
    assert hopeless["sentence"] == (
        "on class a (2 rows) no recall drop can be told from noise; a golden set with more rows per class would"
    )


def test_golden_rows_are_counted_per_class() -> None:
    y = make()
    champion, candidate = with_errors(y, np.arange(0, 300, 5)), with_errors(y, np.arange(0, 300, 50))
    golden = np.zeros(len(y), bool)
    golden[250:] = True
    result = decide(y, candidate, champion, LABELS, GateConfig(), golden=golden)
    assert [c["golden_rows"] for c in result.checks["non_inferiority"]["classes"]] == [0, 0, 50]


def test_equal_models_reject() -> None:
    y = make()
    same = with_errors(y, np.arange(0, 300, 10))
    result = decide(y, same.copy(), same, LABELS, GateConfig())
    assert result.decision == "reject"
    assert result.reasons == ["accuracy 0.9000 vs champion 0.9000: delta +0.0000 <= margin 0"]
    assert result.checks["significance"]["p_value"] == 0.5
    assert result.power is not None and result.power["advice"].endswith("more rows would not make this candidate pass")


def test_a_later_challenge_needs_more_evidence() -> None:
    y = make()
    champion, candidate = with_errors(y, np.arange(0, 300, 10)), with_errors(y, np.arange(0, 300, 10)[10:])
    first = decide(y, candidate, champion, LABELS, GateConfig(), alpha=0.006)
    late = decide(y, candidate, champion, LABELS, GateConfig(), alpha=0.0001)
    assert first.checks["significance"]["p_value"] == late.checks["significance"]["p_value"] < 0.006
    assert first.decision == "promote" and late.decision == "reject"
    assert late.checks["significance"]["lower_bound"] < first.checks["significance"]["lower_bound"]
    assert late.power and first.power and late.power["detectable_delta"] > first.power["detectable_delta"]


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
    assert test["standard_error"] > 0 and test["lower_bound"] < result.checks["superiority"]["delta"]
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


def test_discordant_counts_only_rows_where_one_model_is_right() -> None:
    y = np.zeros(10, dtype=int)
    assert discordant(y, np.array([0] * 8 + [1] * 2), np.array([0] * 5 + [1] * 5)) == (3, 0)
