"""A shift seen through the champion: did its outputs move, and is the shift expected to hurt?

Drift says the new data differs from the champion's. Whether that matters is a question about the
model. Here are the drift detector that looks through it, then the three pieces of evidence of
harm that :func:`assess` weighs:

* **the champion's outputs** (:func:`output_drift`, a drift detector): black-box shift detection
  (Rabanser, Günnemann and Lipton, "Failing Loudly", NeurIPS 2019). A two-sample
  Kolmogorov-Smirnov test compares each class's probability, and the top-class confidence, between
  the new rows and the champion's held-out rows, with a Bonferroni split of the detector's
  false-alarm rate; it fires only when the change is both improbable and at least
  ``drift.min_output_ks`` large. Its firing is drift, not yet harm: a class's probability moves
  whenever that class grows more common, which is the label mix changing, not the model failing;
* **a fall in confidence** (:func:`confidence_fell`): a model that meets images it cannot read grows
  unsure, so a one-sided KS test that the champion's top-class confidence fell is evidence of harm
  that needs no labels;
* **measured accuracy:** the new rows are labelled, so the champion's accuracy on them is compared
  with its accuracy on its held-out rows, scored now by the same model and code;
* **estimated accuracy** without the labels: the calibrated-confidence estimate that live
  monitoring uses (:mod:`ml.decide.estimate`), fitted on the held-out rows.

A fall counts as harm only when the champion is, at 95% confidence (one-sided), worse on the new
rows by more than ``policy.max_accuracy_drop``: the lower bound of the drop must clear it. For the
measured drop the bound is Agresti and Caffo's (each side's accuracy with one right and one wrong
answer added, which behaves near 100%); for the estimate it adds the estimate's own spread. The
held-out accuracy it is compared with is a sample too, of a few hundred rows: a lucky one sits
points above the truth, and a rule on the point estimate alone would then find harm in windows
that cost nothing (``bench/drift_power.py`` saw half its control windows do so). A shift that
costs a few points is told from chance only with more rows; the confidence test catches most
such shifts without labels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from ml.config import Settings
from ml.decide import estimate

OUTPUTS = "outputs"
CONFIDENCE = "confidence"  # the top-class probability: the output that falls first when a shift hurts
CONFIDENCE_ALPHA = 0.01  # the one-sided test that the champion's confidence fell
Z_ONE_SIDED_95 = 1.6448536269514722


def ks_critical(alpha: float, current_rows: int, reference_rows: int) -> float:
    """The two-sample Kolmogorov-Smirnov distance that a sample of this size exceeds with chance ``alpha`` (asymptotic)."""
    n, m = current_rows, reference_rows
    return math.sqrt(-math.log(alpha / 2.0) * (n + m) / (2.0 * n * m))


def output_drift(
    current: np.ndarray, reference: np.ndarray, labels: tuple[str, ...] | list[str], alpha: float, floor: float
) -> dict[str, Any]:
    """The ``outputs`` detector: the champion's class probabilities (rows x classes) of new and held-out rows.

    Each class's probability and the top-class confidence get a KS test at ``alpha`` split evenly
    among them; the detector fires when one of them is past its critical distance and at least
    ``floor``. Its score is the largest KS distance, its ratio that over the critical distance.
    """
    entry: dict[str, Any] = {"detector": OUTPUTS, "method": "ks", "rows": [len(current), len(reference)]}
    if len(current) < 2 or len(reference) < 2:
        return {**entry, "score": None, "threshold": None, "ratio": None, "drifted": False,
                "skipped": f"too few rows to compare ({len(current)} new, {len(reference)} reference)"}  # fmt: skip
    names = [*map(str, labels), CONFIDENCE]
    cur = np.column_stack([current, current.max(axis=1)])
    ref = np.column_stack([reference, reference.max(axis=1)])
    result = stats.ks_2samp(ref, cur, axis=0)
    distance, p_value = np.atleast_1d(result.statistic), np.atleast_1d(result.pvalue)
    each = alpha / len(names)
    critical = ks_critical(each, len(cur), len(ref))
    fired = [names[i] for i in np.flatnonzero((distance > critical) & (distance >= floor))]
    top = int(np.argmax(distance))
    return {**entry, "score": float(distance[top]), "threshold": critical, "ratio": float(distance[top] / critical),
            "drifted": bool(fired), "improbable": bool(distance[top] > critical), "effect": float(distance[top]),
            "floor": floor, "false_alarm_rate": alpha, "output": names[top], "p_value": float(p_value[top]),
            "outputs_fired": fired,
            "distances": {name: float(d) for name, d in zip(names, distance, strict=True)}}  # fmt: skip


def _adjusted(correct: np.ndarray) -> tuple[float, float]:
    """Agresti-Caffo: the accuracy with one right and one wrong answer added, and the variance of that share."""
    share = (float(correct.sum()) + 1.0) / (len(correct) + 2.0)
    return share, share * (1.0 - share) / (len(correct) + 2.0)


def _measured(new_correct: np.ndarray, ref_correct: np.ndarray, max_drop: float) -> dict[str, Any]:
    """The champion's accuracy on the new labelled rows against its held-out rows: the drop and its 95% lower bound."""
    accuracy, reference = float(new_correct.mean()), float(ref_correct.mean())
    (new_share, new_var), (ref_share, ref_var) = _adjusted(new_correct), _adjusted(ref_correct)
    low = ref_share - new_share - Z_ONE_SIDED_95 * math.sqrt(new_var + ref_var)
    return {"accuracy": accuracy, "rows": len(new_correct), "reference_accuracy": reference,
            "reference_rows": len(ref_correct), "drop": reference - accuracy, "drop_low": low,
            "significant": bool(low > 0), "harmful": bool(low > max_drop)}  # fmt: skip


def confidence_fell(new_confidence: np.ndarray, ref_confidence: np.ndarray, floor: float) -> dict[str, Any]:
    """Did the champion grow less sure? A one-sided KS test that its top-class confidence on the new rows is lower.

    Asked only of a window that drifted, it is a question of its own (not one of the ``outputs``
    detector's Bonferroni-split tests): at ``CONFIDENCE_ALPHA``, and at least ``floor`` in KS distance.
    """
    if len(new_confidence) < 2 or len(ref_confidence) < 2:
        return {"fell": False, "distance": None, "p_value": None}
    # 'greater': the new rows' CDF lies above the reference's somewhere, i.e. their confidences are lower.
    result = stats.ks_2samp(new_confidence, ref_confidence, alternative="greater")
    distance, p_value = float(result.statistic), float(result.pvalue)
    return {"fell": bool(p_value < CONFIDENCE_ALPHA and distance >= floor), "distance": distance, "p_value": p_value,
            "alpha": CONFIDENCE_ALPHA, "floor": floor}  # fmt: skip


def _estimated(
    new_confidence: np.ndarray, ref_confidence: np.ndarray, ref_correct: np.ndarray, settings: Settings
) -> dict[str, Any]:
    """The label-free estimate of the champion's accuracy on the new rows, calibrated on its held-out rows."""
    cfg, max_drop = settings.monitor, settings.policy.max_accuracy_drop
    calibration = estimate.fit(ref_confidence, ref_correct, cfg.calibration_bins, cfg.max_calibration_error)
    guess = estimate.estimate(new_confidence, calibration)
    reference = calibration["accuracy"]
    if guess["accuracy"] is None or reference is None:
        return {**guess, "reference_accuracy": reference, "drop": None, "reliable": False, "harmful": False}
    spread = (guess["high"] - guess["low"]) / (2 * estimate.Z95)  # the estimate's own standard error
    drop = reference - guess["accuracy"]
    low = drop - Z_ONE_SIDED_95 * math.sqrt(spread**2 + _adjusted(np.asarray(ref_correct, bool))[1])
    return {**guess, "reference_accuracy": reference, "drop": drop, "drop_low": low,
            "reliable": calibration["reliable"], "ece_held_out": calibration["ece_held_out"],
            "harmful": bool(calibration["reliable"] and low > max_drop)}  # fmt: skip


def assess(
    new_correct: np.ndarray,
    new_confidence: np.ndarray,
    ref_correct: np.ndarray,
    ref_confidence: np.ndarray,
    settings: Settings,
) -> dict[str, Any]:
    """Is the shift expected to hurt? The evidence for it, each piece in words, and what was looked at.

    ``new_correct``/``new_confidence``: every new row (right or not, top-class probability);
    ``ref_*``: the champion's held-out rows.
    """
    max_drop = settings.policy.max_accuracy_drop
    if not len(new_correct) or not len(ref_correct):
        return {"expected": None, "evidence": [], "max_accuracy_drop": max_drop,
                "summary": f"not assessed: {len(new_correct)} new rows, {len(ref_correct)} held-out rows"}  # fmt: skip
    measured = _measured(np.asarray(new_correct, bool), np.asarray(ref_correct, bool), max_drop)
    estimated = _estimated(new_confidence, ref_confidence, ref_correct, settings)
    confidence = confidence_fell(new_confidence, ref_confidence, settings.drift.min_output_ks)
    evidence = []
    if measured["harmful"]:
        evidence.append(f"champion accuracy on the {measured['rows']} new rows {measured['accuracy']:.3f} vs "
                        f"{measured['reference_accuracy']:.3f} on its held-out rows ({-100 * measured['drop']:+.1f} "
                        f"points; at least {100 * measured['drop_low']:.1f} at 95%, beyond {100 * max_drop:g})")  # fmt: skip
    if estimated["harmful"]:
        evidence.append(f"label-free estimate of its accuracy {estimated['accuracy']:.3f} vs "
                        f"{estimated['reference_accuracy']:.3f} held-out (at least {100 * estimated['drop_low']:.1f} "
                        f"points lower at 95%)")  # fmt: skip
    if confidence["fell"]:
        evidence.append(f"its confidence fell (KS {confidence['distance']:.2f}, p={confidence['p_value']:.2g})")
    if evidence:
        summary = "expected to hurt: " + "; ".join(evidence)
    else:
        guess = f"{estimated['accuracy']:.3f}" if estimated["accuracy"] is not None else "n/a"
        summary = (f"no evidence of harm: accuracy on the new rows {measured['accuracy']:.3f} vs "
                   f"{measured['reference_accuracy']:.3f} held-out, label-free estimate {guess}, confidence "
                   f"steady")  # fmt: skip
    return {"expected": bool(evidence), "evidence": evidence, "summary": summary, "max_accuracy_drop": max_drop,
            "measured": measured, "estimated": estimated, "confidence": confidence}  # fmt: skip
