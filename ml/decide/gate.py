"""The promotion gate: pure decision rules over paired predictions on the same evaluation rows.

Every check runs and is recorded; a single failed check means reject. The checks:

1. **No champion:** promote only if the candidate's accuracy clears ``gate.floor_accuracy``.
2. **Superiority, as a test of what the configuration states:** H0 "the candidate is better by
   at most ``gate.margin``" against H1 "better by more". For accuracy, Tango's score test on the
   paired rows (:func:`ml.decide.stats.score_test`); for macro-F1, a paired bootstrap of the difference
   (fixed seed) with the margin built in. The level is this challenge's share of the champion's
   error budget (``α_k``, see :mod:`ml.decide.stats`); the record keeps the statistic, the p-value and the
   one-sided confidence bound on Δ.
3. **The class guard:** a class with at least ``gate.min_support`` rows vetoes when its recall is
   *shown* to have dropped by more than ``gate.recall_epsilon``: a one-sided paired test per class,
   Holm-corrected across classes at ``gate.guard_alpha``. Smaller classes are listed as not
   guarded; ``gate.max_unguarded_drop`` optionally rejects any larger observed drop on them.
4. **Budgets (optional):** the candidate's CPU p95 latency per batch and its size stay within
   ``gate.max_latency_p95_ms`` and ``gate.max_size_mb``.
5. **The serving forms:** the candidate's ONNX export gives the torch model's logits on every
   evaluation row, within :data:`ml.model.artifact.PARITY_RTOL`, and its MLflow model, sent each
   row as an image file, answers the evaluate step's label on every row (ties aside; both checked
   by the evaluate step).

Thresholds are compared on integer row counts against the exact decimals of the configuration
(:func:`ml.decide.stats.exact`), so a difference that equals a threshold never flips with the floats. The
record also says what this evaluation could see: the smallest improvement it detects at 80% power,
and, when a candidate is rejected as not significant, how many rows would have been needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ml.config import GateConfig
from ml.decide import stats

#: Explicit tolerance for the one comparison that is not on counts: macro-F1 against the margin.
TOLERANCE = 1e-9


def per_class(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    support = np.bincount(y_true, minlength=n_classes)
    hits = np.bincount(y_true[y_true == y_pred], minlength=n_classes)
    predicted = np.bincount(y_pred, minlength=n_classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, hits / np.maximum(support, 1), np.nan)
        precision = np.where(predicted > 0, hits / np.maximum(predicted, 1), 0.0)
        f1 = np.where(precision + np.nan_to_num(recall) > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"support": support, "hits": hits, "recall": recall, "precision": precision, "f1": f1}


def metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: tuple[str, ...]) -> dict[str, Any]:
    table = per_class(y_true, y_pred, len(labels))
    present = table["support"] > 0
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "correct": int((y_true == y_pred).sum()),
        "rows": len(y_true),
        "macro_f1": float(np.nanmean(table["f1"][present])) if present.any() else 0.0,
        "per_class": {
            label: {
                "support": int(table["support"][i]),
                "correct": int(table["hits"][i]),
                "recall": None if np.isnan(table["recall"][i]) else float(table["recall"][i]),
            }
            for i, label in enumerate(labels)
        },
    }


def discordant(y_true: np.ndarray, candidate: np.ndarray, champion: np.ndarray) -> tuple[int, int]:
    """(rows only the candidate gets right, rows only the champion gets right)."""
    cand_ok, champ_ok = candidate == y_true, champion == y_true
    return int((cand_ok & ~champ_ok).sum()), int((champ_ok & ~cand_ok).sum())


def accuracy_test(y_true: np.ndarray, candidate: np.ndarray, champion: np.ndarray, margin: float,
                  alpha: float) -> dict[str, Any]:  # fmt: skip
    """H0: accuracy(candidate) - accuracy(champion) <= margin, by the score test on paired rows."""
    wins, losses = discordant(y_true, candidate, champion)
    n = len(y_true)
    test = stats.score_test(wins, losses, n, stats.exact(margin), continuity=True)
    return {
        "test": "paired_score_test_accuracy",
        "continuity_correction": True,
        "hypothesis": f"H0: delta <= {margin:g} vs H1: delta > {margin:g}",
        "only_candidate_right": wins,
        "only_champion_right": losses,
        "rows": n,
        "statistic": test.statistic,
        "p_value": test.p_value,
        "lower_bound": stats.lower_bound(wins, losses, n, alpha, continuity=True),
        "confidence": 1 - alpha,
    }


def _macro_f1_batch(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Macro-F1 for each row of index-resampled ``(B, n)`` label arrays, vectorised over B."""
    b = y_true.shape[0]
    offset = (np.arange(b) * n_classes)[:, None]
    support = np.bincount((offset + y_true).ravel(), minlength=b * n_classes).reshape(b, n_classes)
    predicted = np.bincount((offset + y_pred).ravel(), minlength=b * n_classes).reshape(b, n_classes)
    hit = np.where(y_true == y_pred, offset + y_true, -1).ravel()
    hits = np.bincount(hit[hit >= 0], minlength=b * n_classes).reshape(b, n_classes)
    denominator = support + predicted
    f1 = np.divide(2 * hits, denominator, out=np.zeros(hits.shape), where=denominator > 0)
    present = support > 0
    return (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def paired_bootstrap(
    y_true: np.ndarray, candidate: np.ndarray, champion: np.ndarray, n_classes: int, cfg: GateConfig, alpha: float
) -> dict[str, Any]:
    """Bootstrap the macro-F1 difference on resampled rows (the same rows for both models).

    The p-value and bound use the bootstrap standard error, so that the small levels of late
    challenges are not limited by the number of resamples; the share of resamples at or below the
    margin is kept next to it.
    """
    rng = np.random.default_rng(cfg.bootstrap_seed)
    diffs = []
    for start in range(0, cfg.bootstrap_samples, 500):  # chunks bound the memory at 500 x n
        idx = rng.integers(0, len(y_true), size=(min(500, cfg.bootstrap_samples - start), len(y_true)))
        truth = y_true[idx]
        diffs.append(
            _macro_f1_batch(truth, candidate[idx], n_classes) - _macro_f1_batch(truth, champion[idx], n_classes)
        )
    delta = np.concatenate(diffs)
    observed = float(
        _macro_f1_batch(y_true[None], candidate[None], n_classes)[0]
        - _macro_f1_batch(y_true[None], champion[None], n_classes)[0]
    )
    se = float(delta.std(ddof=1))
    z = (observed - cfg.margin) / se if se > 0 else (np.inf if observed > cfg.margin + TOLERANCE else 0.0)
    return {
        "test": "paired_bootstrap_macro_f1",
        "rows": len(y_true),
        "hypothesis": f"H0: delta <= {cfg.margin:g} vs H1: delta > {cfg.margin:g}",
        "samples": cfg.bootstrap_samples,
        "seed": cfg.bootstrap_seed,
        "standard_error": se,
        "statistic": float(z),
        "p_value": stats.upper_tail(float(z)),
        "share_at_or_below_margin": float((delta <= cfg.margin).mean()),
        "lower_bound": observed - stats.critical(alpha) * se,
        "confidence": 1 - alpha,
    }


@dataclass
class GateDecision:
    decision: str  # promote | reject
    reasons: list[str]
    candidate: dict[str, Any]
    champion: dict[str, Any] | None
    checks: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    power: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _budget_checks(cost: dict[str, float], cfg: GateConfig) -> tuple[dict[str, Any], list[str]]:
    checks: dict[str, Any] = {}
    reasons = []
    for name, value_key, limit, unit in (
        ("latency_budget", "latency_p95_ms", cfg.max_latency_p95_ms, "ms"),
        ("size_budget", "size_mb", cfg.max_size_mb, "MB"),
    ):
        value = cost.get(value_key)
        if limit is None or value is None:
            continue
        ok = value <= limit
        checks[name] = {"value": value, "limit": limit, "passed": ok}
        if not ok:
            reasons.append(f"{value_key} {value:.2f} {unit} exceeds budget {limit:g} {unit}")
    return checks, reasons


def _parity_reason(parity: dict[str, Any]) -> str:
    if parity.get("error"):
        return f"the ONNX export cannot be checked: {parity['error']}"
    return (
        f"the ONNX export disagrees with the torch model on {parity['rows']} evaluation rows: max |logit "
        f"difference| {parity['max_abs_logit_diff']:.3g} (tolerance {parity['tolerance']:.3g}), "
        f"{parity['argmax_disagreements']} rows predicted differently"
    )


def _served_reason(served: dict[str, Any]) -> str:
    if served.get("error"):
        return f"the served model (MLflow python_function) cannot be checked: {served['error']}"
    return (
        f"the served model (MLflow python_function) answers {served['label_disagreements']} of {served['rows']} "
        "evaluation rows with another label than the evaluate step"
    )


def class_guard(
    y_true: np.ndarray,
    candidate: np.ndarray,
    champion: np.ndarray,
    labels: tuple[str, ...],
    cfg: GateConfig,
    golden: np.ndarray | None = None,
) -> dict[str, Any]:
    """Per class: is a recall drop of more than ε shown (Holm across the guarded classes)?"""
    cand_ok, champ_ok = candidate == y_true, champion == y_true
    epsilon = stats.exact(cfg.recall_epsilon)
    rows = []
    for i, label in enumerate(labels):
        mask = y_true == i
        support = int(mask.sum())
        gained = int((mask & cand_ok & ~champ_ok).sum())
        lost = int((mask & champ_ok & ~cand_ok).sum())
        row: dict[str, Any] = {
            "label": label,
            "support": support,
            "golden_rows": int((mask & golden).sum()) if golden is not None else 0,
            "champion_recall": float(champ_ok[mask].mean()) if support else None,
            "candidate_recall": float(cand_ok[mask].mean()) if support else None,
            "lost_rows": lost,
            "gained_rows": gained,
            "drop": (lost - gained) / support if support else 0.0,
            "guarded": support >= cfg.min_support,
            "p_value": None,
            "vetoes": False,
        }
        if row["guarded"]:
            # The champion's advantage on this class's rows, tested against ε.
            row["p_value"] = stats.score_test(lost, gained, support, epsilon).p_value
        else:
            row["note"] = f"not guarded: {support} rows"
            limit = cfg.max_unguarded_drop
            row["vetoes"] = limit is not None and support > 0 and lost - gained > stats.exact(limit) * support
        rows.append(row)
    guarded = [r for r in rows if r["guarded"]]
    for row, shown in zip(guarded, stats.holm([r["p_value"] for r in guarded], cfg.guard_alpha), strict=True):
        row["vetoes"] = shown
    # What the guard could see: Holm's first step compares the smallest p-value with guard_alpha / K,
    # so a class that drops alone is caught with 80% power from this drop up.
    first_step = cfg.guard_alpha / max(len(guarded), 1)
    for row in guarded:
        discordance = max(row["lost_rows"] + row["gained_rows"], 1) / row["support"]
        row["detectable_drop"] = stats.detectable(row["support"], discordance, cfg.recall_epsilon, first_step)
    return {
        "test": "paired_score_test_per_class_holm",
        "hypothesis": f"per class, H0: recall drop <= {cfg.recall_epsilon:g}",
        "epsilon": cfg.recall_epsilon,
        "level": cfg.guard_alpha,
        "min_support": cfg.min_support,
        "max_unguarded_drop": cfg.max_unguarded_drop,
        "classes": rows,
        "unguarded": [r["label"] for r in rows if not r["guarded"]],
        "sentence": guard_sentence(guarded, cfg, first_step),
        "passed": not any(r["vetoes"] for r in rows),
    }


def guard_sentence(guarded: list[dict[str, Any]], cfg: GateConfig, first_step: float) -> str:
    """The class guard's blind spot, in words: the drop it could miss on its weakest guarded class
    (``first_step``: the level of Holm's first step, ``guard_alpha / K``)."""
    if not guarded:
        return (f"no class has {cfg.min_support} evaluation rows, so no class is guarded: a frozen golden set "
                "(gate.golden_set) with that many rows per class would guard them")  # fmt: skip
    weakest = max(guarded, key=lambda r: (r["detectable_drop"] is None, r["detectable_drop"] or 0.0))
    if weakest["detectable_drop"] is None:
        return (f"on class {weakest['label']} ({weakest['support']} rows) no recall drop can be told from noise; "
                "a golden set with more rows per class would")  # fmt: skip
    return (
        f"on its weakest guarded class ({weakest['label']}, {weakest['support']} rows) the class guard misses "
        f"recall drops below {weakest['detectable_drop']:.2f} more than 1 time in 5 (80% power at Holm's first "
        f"step, {first_step:.2g})"
    )


def _guard_reasons(guard: dict[str, Any]) -> list[str]:
    reasons = []
    for row in guard["classes"]:
        if not row["vetoes"]:
            continue
        if row["guarded"]:
            reasons.append(
                f"class {row['label']} recall dropped {row['drop']:.3f} > epsilon {guard['epsilon']:g} "
                f"(support {row['support']}, p={row['p_value']:.3g}, Holm at {guard['level']:g})"
            )
        else:
            reasons.append(
                f"class {row['label']} (not guarded: {row['support']} rows) dropped {row['drop']:.3f} > "
                f"max_unguarded_drop {guard['max_unguarded_drop']:g}"
            )
    return reasons


def power_statement(
    metric: str, test: dict[str, Any], delta: float, margin: float, alpha: float, significant: bool
) -> dict[str, Any]:
    """What this evaluation could see: the smallest improvement found with 80% power, and rows needed."""
    n = test["rows"]
    if metric == "accuracy":
        disagree = test["only_candidate_right"] + test["only_champion_right"]
        discordance = max(disagree, 1) / n
        smallest = stats.detectable(n, discordance, margin, alpha)
        needed = stats.rows_needed(delta, discordance, margin, alpha)
        size = f"with {n} paired rows ({disagree} where the models disagree)"
    else:
        se = test["standard_error"]
        smallest = stats.detectable_with_se(se, margin, alpha)
        needed = stats.rows_needed_with_se(delta, se, n, margin, alpha)
        size = f"with {n} paired rows"
    if smallest is None:
        sentence = f"{size}, no improvement over the margin can be told from noise at α={alpha:.2g}"
    else:
        sentence = (
            f"{size}, improvements below {smallest * 100:.1f} points cannot be told from noise "
            f"(80% power at α={alpha:.2g})"
        )
    statement: dict[str, Any] = {
        "rows": n,
        "power": stats.POWER,
        "alpha": alpha,
        "detectable_delta": smallest,
        "sentence": sentence,
    }
    if not significant:
        if needed is None:
            statement["advice"] = (
                f"the observed {metric} delta {delta:+.4f} is not above the margin {margin:g}: "
                "more rows would not make this candidate pass"
            )
        else:
            statement["rows_needed"] = needed
            statement["advice"] = (
                f"to tell the observed {delta * 100:+.1f} points from noise the gate needs about {needed} "
                f"paired rows ({max(needed - n, 0)} more): raise gate.eval_recent_batches or add a frozen "
                "golden set (gate.golden_set)"
            )
    return statement


def decide(
    y_true: np.ndarray,
    candidate_pred: np.ndarray,
    champion_pred: np.ndarray | None,
    labels: tuple[str, ...],
    cfg: GateConfig,
    candidate_cost: dict[str, float] | None = None,
    alpha: float | None = None,
    golden: np.ndarray | None = None,
    serving: dict[str, Any] | None = None,
    served: dict[str, Any] | None = None,
) -> GateDecision:
    """Decide on paired predictions. ``alpha`` is this challenge's level (default ``gate.alpha``,
    one test alone); ``golden`` marks the rows that came from the frozen golden set."""
    level = cfg.alpha if alpha is None else alpha
    cand = metrics(y_true, candidate_pred, labels)
    thresholds = cfg.model_dump()
    if len(y_true) == 0:
        return GateDecision("reject", ["no evaluation rows: nothing to compare on"], cand, None, {}, thresholds)
    budget_checks, budget_reasons = _budget_checks(candidate_cost or {}, cfg)
    if serving is not None:
        budget_checks["onnx_parity"] = serving
        if not serving.get("passed"):
            budget_reasons.append(_parity_reason(serving))
    if served is not None:
        budget_checks["served_parity"] = served
        if not served.get("passed"):
            budget_reasons.append(_served_reason(served))

    if champion_pred is None:
        ok = cand["correct"] >= stats.exact(cfg.floor_accuracy) * cand["rows"]
        floor = {"floor": {"accuracy": cand["accuracy"], "correct": cand["correct"], "rows": cand["rows"],
                           "floor": cfg.floor_accuracy, "passed": ok}, **budget_checks}  # fmt: skip
        reason = f"first model: accuracy {cand['accuracy']:.4f} {'>=' if ok else '<'} floor {cfg.floor_accuracy:.4f}"
        verdict = "promote" if ok and not budget_reasons else "reject"
        return GateDecision(verdict, [reason, *budget_reasons], cand, None, floor, thresholds)

    champ = metrics(y_true, champion_pred, labels)
    metric = cfg.primary_metric
    delta = cand[metric] - champ[metric]
    if metric == "accuracy":
        test = accuracy_test(y_true, candidate_pred, champion_pred, cfg.margin, level)
        net = cand["correct"] - champ["correct"]
        superior = net > stats.exact(cfg.margin) * len(y_true)
    else:
        test = paired_bootstrap(y_true, candidate_pred, champion_pred, len(labels), cfg, level)
        superior = delta > cfg.margin + TOLERANCE
    significant = superior and test["p_value"] < level
    guard = class_guard(y_true, candidate_pred, champion_pred, labels, cfg, golden)
    power = power_statement(metric, test, delta, cfg.margin, level, significant)
    checks: dict[str, Any] = {
        "superiority": {"metric": metric, "candidate": cand[metric], "champion": champ[metric],
                        "delta": delta, "margin": cfg.margin, "passed": superior},
        "significance": {**test, "alpha": level, "passed": significant},
        "non_inferiority": guard,
        **budget_checks,
    }  # fmt: skip

    reasons: list[str] = []
    if not superior:
        reasons.append(
            f"{metric} {cand[metric]:.4f} vs champion {champ[metric]:.4f}: delta {delta:+.4f} <= margin {cfg.margin:g}"
        )
    elif not significant:
        reasons.append(
            f"not significant (p={test['p_value']:.3g} >= alpha {level:.3g}): the lower "
            f"{test['confidence']:.1%} bound on delta is {test['lower_bound']:+.4f}; {power['sentence']}"
        )
    reasons += _guard_reasons(guard)
    reasons += budget_reasons
    if reasons:
        return GateDecision("reject", reasons, cand, champ, checks, thresholds, power)
    why = (
        f"{metric} {cand[metric]:.4f} beats champion {champ[metric]:.4f} by {delta:+.4f} (p={test['p_value']:.3g} "
        f"< alpha {level:.3g}, lower bound {test['lower_bound']:+.4f} > margin {cfg.margin:g}); no guarded class "
        f"shown to lose more than {cfg.recall_epsilon:g} recall"
    )
    if guard["unguarded"]:
        why += f" (not guarded, too few rows: {', '.join(guard['unguarded'])})"
    return GateDecision("promote", [why], cand, champ, checks, thresholds, power)
