"""The promotion gate: pure decision rules over paired predictions on the same evaluation rows.

Every check runs and is recorded; a single failed check means reject. The checks:

1. **No champion:** promote only if the candidate's accuracy clears ``gate.floor_accuracy``.
2. **Superiority:** the candidate's primary metric beats the champion's by more than ``gate.margin``,
   and the difference is significant at ``gate.alpha`` on the paired rows: an exact one-sided
   McNemar test for accuracy, a paired bootstrap of the difference (fixed seed) for macro-F1.
3. **Non-inferiority:** no class with at least ``gate.min_support`` rows loses more than
   ``gate.recall_epsilon`` recall. Smaller classes are reported but cannot veto.
4. **Budgets (optional):** the candidate's CPU p95 latency per batch and its size stay within
   ``gate.max_latency_p95_ms`` and ``gate.max_size_mb``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ml.config import GateConfig


def per_class(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    support = np.bincount(y_true, minlength=n_classes)
    hits = np.bincount(y_true[y_true == y_pred], minlength=n_classes)
    predicted = np.bincount(y_pred, minlength=n_classes)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, hits / np.maximum(support, 1), np.nan)
        precision = np.where(predicted > 0, hits / np.maximum(predicted, 1), 0.0)
        f1 = np.where(precision + np.nan_to_num(recall) > 0, 2 * precision * recall / (precision + recall), 0.0)
    return {"support": support, "recall": recall, "precision": precision, "f1": f1}


def metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: tuple[str, ...]) -> dict[str, Any]:
    table = per_class(y_true, y_pred, len(labels))
    present = table["support"] > 0
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "macro_f1": float(np.nanmean(table["f1"][present])) if present.any() else 0.0,
        "per_class": {
            label: {
                "support": int(table["support"][i]),
                "recall": None if np.isnan(table["recall"][i]) else float(table["recall"][i]),
            }
            for i, label in enumerate(labels)
        },
    }


def mcnemar_exact(y_true: np.ndarray, candidate: np.ndarray, champion: np.ndarray) -> dict[str, Any]:
    """One-sided exact McNemar: is the candidate right more often where the two models disagree?"""
    from scipy.stats import binomtest

    cand_ok, champ_ok = candidate == y_true, champion == y_true
    only_candidate = int((cand_ok & ~champ_ok).sum())
    only_champion = int((champ_ok & ~cand_ok).sum())
    discordant = only_candidate + only_champion
    p_value = (
        1.0 if discordant == 0 else float(binomtest(only_candidate, discordant, 0.5, alternative="greater").pvalue)
    )
    return {
        "test": "mcnemar_exact_one_sided",
        "only_candidate_right": only_candidate,
        "only_champion_right": only_champion,
        "p_value": p_value,
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
    y_true: np.ndarray, candidate: np.ndarray, champion: np.ndarray, n_classes: int, cfg: GateConfig
) -> dict[str, Any]:
    """Bootstrap the macro-F1 difference on resampled rows (the same rows for both models)."""
    rng = np.random.default_rng(cfg.bootstrap_seed)
    diffs = []
    for start in range(0, cfg.bootstrap_samples, 500):  # chunks bound the memory at 500 x n
        idx = rng.integers(0, len(y_true), size=(min(500, cfg.bootstrap_samples - start), len(y_true)))
        truth = y_true[idx]
        diffs.append(
            _macro_f1_batch(truth, candidate[idx], n_classes) - _macro_f1_batch(truth, champion[idx], n_classes)
        )
    delta = np.concatenate(diffs)
    return {
        "test": "paired_bootstrap_macro_f1",
        "samples": cfg.bootstrap_samples,
        "seed": cfg.bootstrap_seed,
        "ci_low": float(np.quantile(delta, cfg.alpha)),
        "ci_high": float(np.quantile(delta, 1 - cfg.alpha)),
        # One-sided: how often a resample shows no improvement beyond the margin.
        "p_value": float((delta <= cfg.margin).mean()),
    }


@dataclass
class GateDecision:
    decision: str  # promote | reject | error
    reasons: list[str]
    candidate: dict[str, Any]
    champion: dict[str, Any] | None
    checks: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)

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


def decide(
    y_true: np.ndarray,
    candidate_pred: np.ndarray,
    champion_pred: np.ndarray | None,
    labels: tuple[str, ...],
    cfg: GateConfig,
    candidate_cost: dict[str, float] | None = None,
) -> GateDecision:
    cand = metrics(y_true, candidate_pred, labels)
    thresholds = cfg.model_dump()
    if len(y_true) == 0:
        return GateDecision("reject", ["no evaluation rows: nothing to compare on"], cand, None, {}, thresholds)
    budget_checks, budget_reasons = _budget_checks(candidate_cost or {}, cfg)

    if champion_pred is None:
        ok = cand["accuracy"] >= cfg.floor_accuracy
        floor = {"floor": {"accuracy": cand["accuracy"], "floor": cfg.floor_accuracy, "passed": ok}, **budget_checks}
        reason = f"first model: accuracy {cand['accuracy']:.4f} {'>=' if ok else '<'} floor {cfg.floor_accuracy:.4f}"
        verdict = "promote" if ok and not budget_reasons else "reject"
        return GateDecision(verdict, [reason, *budget_reasons], cand, None, floor, thresholds)

    champ = metrics(y_true, champion_pred, labels)
    metric = cfg.primary_metric
    delta = cand[metric] - champ[metric]
    superior = delta > cfg.margin
    if metric == "accuracy":
        test = mcnemar_exact(y_true, candidate_pred, champion_pred)
    else:
        test = paired_bootstrap(y_true, candidate_pred, champion_pred, len(labels), cfg)
    significant = test["p_value"] < cfg.alpha

    drops = []
    for label in labels:
        c, p = cand["per_class"][label], champ["per_class"][label]
        if c["support"] == 0 or c["recall"] is None or p["recall"] is None:
            continue
        drop = p["recall"] - c["recall"]
        vetoes = c["support"] >= cfg.min_support and drop > cfg.recall_epsilon
        drops.append({"label": label, "support": c["support"], "champion_recall": p["recall"],
                      "candidate_recall": c["recall"], "drop": drop, "vetoes": vetoes})  # fmt: skip
    vetoed = [d for d in drops if d["vetoes"]]
    checks: dict[str, Any] = {
        "superiority": {"metric": metric, "candidate": cand[metric], "champion": champ[metric],
                        "delta": delta, "margin": cfg.margin, "passed": superior},
        "significance": {**test, "alpha": cfg.alpha, "passed": significant},
        "non_inferiority": {"epsilon": cfg.recall_epsilon, "min_support": cfg.min_support,
                            "classes": drops, "passed": not vetoed},
        **budget_checks,
    }  # fmt: skip

    reasons: list[str] = []
    if not superior:
        reasons.append(
            f"{metric} {cand[metric]:.4f} vs champion {champ[metric]:.4f}: delta {delta:+.4f} <= margin {cfg.margin:g}"
        )
    elif not significant:
        reasons.append(f"not significant (p={test['p_value']:.3g} >= alpha {cfg.alpha:g})")
    for d in vetoed:
        reasons.append(
            f"class {d['label']} recall dropped {d['drop']:.3f} > epsilon {cfg.recall_epsilon:g} (support {d['support']})"
        )
    reasons += budget_reasons
    if reasons:
        return GateDecision("reject", reasons, cand, champ, checks, thresholds)
    small = [d["label"] for d in drops if not d["vetoes"] and d["drop"] > cfg.recall_epsilon]
    why = (
        f"{metric} {cand[metric]:.4f} beats champion {champ[metric]:.4f} by {delta:+.4f} (p={test['p_value']:.3g}); "
        f"no class with support >= {cfg.min_support} lost more than {cfg.recall_epsilon:g} recall"
    )
    if small:
        why += f" (below min_support, reported only: {', '.join(small)})"
    return GateDecision("promote", [why], cand, champ, checks, thresholds)
