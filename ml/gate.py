"""The promotion gate: pure decision rules over paired predictions on the same evaluation rows.

Rules, in order (the first that fails decides a reject; every check is recorded either way):
1. No champion: promote only if the candidate's accuracy clears ``gate.floor_accuracy``.
2. Superiority: the candidate's primary metric beats the champion's by more than ``gate.margin``,
   and for accuracy an exact one-sided McNemar test on the paired outcomes has p < ``gate.alpha``.
3. Non-inferiority: no class with at least ``gate.min_support`` rows loses more than
   ``gate.recall_epsilon`` recall. Smaller classes are reported but cannot veto.
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


def mcnemar_exact(y_true: np.ndarray, candidate: np.ndarray, champion: np.ndarray) -> dict[str, float]:
    """One-sided exact McNemar: is the candidate right more often where the two models disagree?"""
    from scipy.stats import binomtest

    cand_ok, champ_ok = candidate == y_true, champion == y_true
    only_candidate = int((cand_ok & ~champ_ok).sum())
    only_champion = int((champ_ok & ~cand_ok).sum())
    discordant = only_candidate + only_champion
    p_value = (
        1.0 if discordant == 0 else float(binomtest(only_candidate, discordant, 0.5, alternative="greater").pvalue)
    )
    return {"only_candidate_right": only_candidate, "only_champion_right": only_champion, "p_value": p_value}


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


def decide(
    y_true: np.ndarray,
    candidate_pred: np.ndarray,
    champion_pred: np.ndarray | None,
    labels: tuple[str, ...],
    cfg: GateConfig,
) -> GateDecision:
    cand = metrics(y_true, candidate_pred, labels)
    thresholds = cfg.model_dump()
    if len(y_true) == 0:
        return GateDecision("reject", ["no evaluation rows: nothing to compare on"], cand, None, {}, thresholds)

    if champion_pred is None:
        ok = cand["accuracy"] >= cfg.floor_accuracy
        verdict = "promote" if ok else "reject"
        reason = f"first model: accuracy {cand['accuracy']:.4f} {'>=' if ok else '<'} floor {cfg.floor_accuracy:.4f}"
        return GateDecision(verdict, [reason], cand, None, {"floor": {"passed": ok}}, thresholds)

    champ = metrics(y_true, champion_pred, labels)
    checks: dict[str, Any] = {}
    reasons: list[str] = []

    metric = cfg.primary_metric
    delta = cand[metric] - champ[metric]
    superior = delta > cfg.margin
    checks["superiority"] = {"metric": metric, "candidate": cand[metric], "champion": champ[metric],
                             "delta": delta, "margin": cfg.margin, "passed": superior}  # fmt: skip
    test = mcnemar_exact(y_true, candidate_pred, champion_pred)
    significant = test["p_value"] < cfg.alpha
    checks["significance"] = {"test": "mcnemar_exact_one_sided", **test, "alpha": cfg.alpha, "passed": significant}

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
    checks["non_inferiority"] = {"epsilon": cfg.recall_epsilon, "min_support": cfg.min_support,
                                 "classes": drops, "passed": not vetoed}  # fmt: skip

    if not superior:
        reasons.append(
            f"{metric} {cand[metric]:.4f} vs champion {champ[metric]:.4f}: delta {delta:+.4f} <= margin {cfg.margin}"
        )
    elif not significant:
        reasons.append(f"not significant (p={test['p_value']:.3g} >= alpha {cfg.alpha})")
    for d in vetoed:
        reasons.append(
            f"class {d['label']} recall dropped {d['drop']:.3f} > epsilon {cfg.recall_epsilon} (support {d['support']})"
        )
    if reasons:
        return GateDecision("reject", reasons, cand, champ, checks, thresholds)
    return GateDecision(
        "promote",
        [f"{metric} {cand[metric]:.4f} beats champion {champ[metric]:.4f} by {delta:+.4f} (p={test['p_value']:.3g}); "
         f"no supported class lost more than {cfg.recall_epsilon} recall"],
        cand, champ, checks, thresholds,
    )  # fmt: skip
