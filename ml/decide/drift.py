"""Drift: does the new data still look like what the champion was trained on?

Four detectors compare the window's new batches with the champion's batches (the manifests of
every split; the embeddings and outputs of its val/test rows, which it never trained on). Each can
flag the window on its own; ``drift_detected`` is their OR:

* ``image_stats``: each image statistic in ``drift.features`` (mean, std, bright, min, max)
  is scored with Evidently's normed Wasserstein distance (W1 over the reference's SD). One usable
  statistic past its own threshold fires the detector; there is no share rule. A statistic that is
  constant in the reference and in the window is set aside, so it dilutes nothing.
* ``label``: Evidently's Jensen-Shannon distance of the class mix (``label``), or the largest
  change of one class's share in standard errors (``class_share``), which sees one or two classes
  surging with more power than a distance spread over every class. Either one fires the detector.
* ``embeddings``: the unbiased squared MMD (RBF kernel, median-heuristic bandwidth) between the
  champion's penultimate-layer embeddings of the new rows and of the reference rows. It is stored
  unclipped, so a quiet window can score below zero and trends stay visible.
* ``outputs``: the champion's class probabilities (:func:`ml.decide.harm.output_drift`).

**Improbable and large.** A feature fires only when its score is improbable under the reference
(past its calibrated threshold) *and* the change is at least a floor in its own units:
``drift.min_effect`` (the W1 distance in grey levels, or in share of bright pixels),
``drift.min_class_share``, ``drift.min_mmd``, ``drift.min_output_ks``. With a few hundred rows, a
sub-percent change of a statistic that hardly varies (the max of images that nearly always reach
255) is statistically certain and means nothing; the floors, measured by ``bench/drift_power.py``
against the shifts that cost the champion accuracy, keep it quiet.

**Image size is a finding, not drift.** ``width`` and ``height`` never drive the verdict: a new
size or aspect ratio is reported under ``findings`` ("new image size 640x480 from batch X"), and
the pixels' statistics, embeddings and outputs say whether the new camera matters.

**Does it hurt?** With the champion loaded, :func:`ml.decide.harm.assess` adds ``harm``: its
measured and label-free estimated accuracy on the new rows against its held-out rows, and whether
its confidence fell. The retrain policy asks for that evidence before drift retrains.

No threshold is a fixed number. Each is calibrated on the reference for the window's size from
``drift.null_resamples`` seeded resamples of the score when nothing changed (windows drawn from the
reference; for the labels, multinomial draws from its class shares; for MMD, random splits of the
reference embeddings), as the ``1 - alpha`` quantile of a three-moment (Pearson III) fit to them.
``drift.false_alarm_rate`` is split evenly across the four detectors, then across the usable
image statistics or the two label statistics (Bonferroni), so a window with no real shift is flagged
with at most that probability. Tabular thresholds never fall below ``drift.min_wasserstein`` /
``drift.min_jensenshannon``: on huge windows a calibrated threshold alone flags trivial shifts.

The tabular scores are computed directly here (the same numbers Evidently reports; a test holds
them equal), and Evidently's Report runs on the same sampled rows with the calibrated thresholds
for ``drift.html``. ``reports/ct_retrain/<run_key>/drift.json`` holds the verdict, each detector
(fired, statistic, threshold, ratio score/threshold, the features that fired) and every
per-feature score, kept below threshold too so trends can be plotted.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ml import layout
from ml.config import DriftConfig, Settings
from ml.data.ingest import read_manifest
from ml.data.window import Window
from ml.decide.harm import OUTPUTS, assess, output_drift
from ml.storage import Lake

log = logging.getLogger(__name__)

CATEGORICAL = ("label",)
SIZE_COLUMNS = ("width", "height")  # a finding of their own (:func:`size_findings`), never drift
SIZE_MIN_SHARE = 0.05  # a new size is a finding when at least this share of the new images has it
EMBEDDINGS = "embeddings"
IMAGE_STATS = "image_stats"
DETECTORS = (IMAGE_STATS, "label", EMBEDDINGS, OUTPUTS)
STATISTICS = {
    IMAGE_STATS: "normed Wasserstein distance (Evidently 'wasserstein': W1 / reference SD)",
    "label": "Jensen-Shannon distance of the class mix (Evidently 'jensenshannon'), or the largest class-share "
    "change in standard errors",
    EMBEDDINGS: "unbiased squared MMD, RBF kernel, median-heuristic bandwidth",
    OUTPUTS: "Kolmogorov-Smirnov distance of each class probability and the top-class confidence",
}
NORM_FLOOR = 0.001  # Evidently's floor on the reference SD in the normed Wasserstein distance
CALIBRATION_ROWS = 5000  # reference rows that stand for its distribution when resampling
# Evidently's verdict is score >= threshold: a constant column (score 0 when unchanged) needs a
# threshold above zero in the HTML report.
CONSTANT_THRESHOLD = 1e-9


def manifests(lake: Lake, batch_ids: list[str], split: str | None = None) -> pd.DataFrame:
    frames = [read_manifest(lake, b) for b in batch_ids]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if split is not None and not frame.empty:
        frame = frame[frame["split"] == split]
    return frame


def detector_alpha(cfg: DriftConfig) -> float:
    """Each detector's share of the false-alarm rate; fixed, so a detector's threshold does not depend on the others."""
    return cfg.false_alarm_rate / len(DETECTORS)


def null_quantile(null: np.ndarray, level: float) -> float:
    """The ``level`` quantile of a null sample, from a three-moment (Pearson III) fit.

    A few hundred resamples put only a handful of points beyond a 0.1% quantile; a fit of the mean,
    SD and skew is far steadier there, and for these scores slightly conservative.
    """
    mean, sd = float(null.mean()), float(null.std(ddof=1))
    if not np.isfinite(sd) or sd <= 0:
        return float(null.max())
    skew = float(stats.skew(null))
    return float(stats.pearson3.ppf(level, skew, loc=mean, scale=sd))


def judged(
    score: float, calibrated: dict[str, float], effect: float | None = None, floor: float = 0.0
) -> dict[str, Any]:
    """A score against its calibrated threshold and the change against its floor: drifted only if improbable and large.

    ``effect`` is the change in the feature's own units (the score itself when None).
    """
    threshold = calibrated["threshold"]
    improbable = bool(score > threshold)
    effect = score if effect is None else effect
    return {"score": score, "threshold": threshold, "ratio": score / threshold if threshold > 0 else None,
            "drifted": improbable and effect >= floor, "improbable": improbable, "effect": effect, "floor": floor,
            "false_alarm_rate": calibrated["false_alarm_rate"]}  # fmt: skip


# --- image statistics: normed Wasserstein ---------------------------------------------------------


def normed_wasserstein(reference: np.ndarray, current: np.ndarray) -> float:
    """Evidently's ``wasserstein`` score: W1 over the reference's population SD, floored at 0.001."""
    norm = max(float(np.std(reference)), NORM_FLOOR)
    return float(stats.wasserstein_distance(reference, current) / norm)


def _resample_counts(rows: int, draws: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of ``rows`` rows is drawn in ``draws`` draws with replacement, per resample (resamples x rows)."""
    if draws >= rows:
        return rng.multinomial(draws, np.full(rows, 1.0 / rows), size=resamples).astype(np.int32)
    picks = rng.integers(0, rows, size=(resamples, draws)) + (np.arange(resamples) * rows)[:, None]
    return np.bincount(picks.ravel(), minlength=resamples * rows).reshape(resamples, rows).astype(np.int32)


def wasserstein_nulls(
    reference: pd.DataFrame, current_rows: int, resamples: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Null samples of each column's normed Wasserstein score for a window of ``current_rows``.

    Each resample draws a window from the reference (at most ``CALIBRATION_ROWS`` of it) with
    replacement and scores it against the reference, as Evidently would. A window drawn from the
    reference sits closer to it than an independent one: W1 between samples of n and m rows scales
    as sqrt(1/n + 1/m), so the scores are scaled by sqrt(1 + n/m) to stand for two independent
    samples. The same draws serve every column.
    """
    grid = reference
    if len(reference) > CALIBRATION_ROWS:
        grid = reference.iloc[rng.choice(len(reference), CALIBRATION_ROWS, replace=False)]
    counts = _resample_counts(len(grid), current_rows, resamples, rng)
    scale = np.sqrt(1.0 + current_rows / len(reference))
    # float32 halves the work; the CDFs need far fewer than its 7 digits.
    reference_cdf = (np.arange(1, len(grid)) / len(grid)).astype(np.float32)
    nulls = {}
    for column in grid.columns:
        values = grid[column].to_numpy(dtype=np.float64)
        order = np.argsort(values, kind="stable")
        gaps = np.diff(values[order]).astype(np.float32)
        current_cdf = np.cumsum(counts[:, order], axis=1, dtype=np.int32)[:, :-1] * np.float32(1.0 / current_rows)
        norm = max(float(np.std(reference[column].to_numpy(dtype=np.float64))), NORM_FLOOR)
        nulls[column] = (np.abs(current_cdf - reference_cdf) @ gaps).astype(np.float64) / norm * scale
    return nulls


def _is_constant(values: pd.Series) -> bool:
    return bool(values.nunique(dropna=False) <= 1)


def image_stat_thresholds(reference: pd.DataFrame, current_rows: int, cfg: DriftConfig) -> dict[str, dict[str, float]]:
    """Calibrated threshold of each image statistic that varies in the reference, for a window of ``current_rows``."""
    usable = [column for column in reference.columns if not _is_constant(reference[column])]
    if not usable:
        return {}
    alpha = detector_alpha(cfg) / len(usable)
    rng = np.random.default_rng([cfg.seed, 0])
    nulls = wasserstein_nulls(reference[usable], current_rows, cfg.null_resamples, rng)
    return {
        column: {"threshold": max(null_quantile(nulls[column], 1.0 - alpha), cfg.min_wasserstein),
                 "false_alarm_rate": alpha}
        for column in usable
    }  # fmt: skip


def image_stat_features(
    current: pd.DataFrame, reference: pd.DataFrame, thresholds: dict[str, dict[str, float]], floors: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """Score and verdict of each image statistic (the ``image_stats`` detector's inputs).

    The effect is the Wasserstein distance in the statistic's own units; ``floors`` (``drift.min_effect``)
    is the least that counts.
    """
    results: dict[str, dict[str, Any]] = {}
    for column in reference.columns:
        ref = reference[column].to_numpy(dtype=np.float64)
        cur = current[column].to_numpy(dtype=np.float64)
        score = normed_wasserstein(ref, cur)
        effect, floor = float(stats.wasserstein_distance(ref, cur)), floors.get(column, 0.0)
        entry: dict[str, Any] = {"detector": IMAGE_STATS, "method": "wasserstein", "score": score}
        if column in thresholds:
            results[column] = {**entry, **judged(score, thresholds[column], effect, floor)}
        else:
            # Nothing to calibrate: the reference never varies, so any difference is improbable; it
            # counts as drift only when it is as large as the floor.
            differs = float(np.mean(cur != ref[0]))
            results[column] = {**entry, "threshold": 0.0, "ratio": None, "drifted": differs > 0 and effect >= floor,
                               "improbable": differs > 0, "effect": effect, "floor": floor,
                               "constant": "reference" if differs > 0 else "both", "reference_value": float(ref[0]),
                               "share_differing": differs}  # fmt: skip
    return results


# --- labels: Jensen-Shannon -------------------------------------------------------------------------


def _js_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise Jensen-Shannon distance (natural log, as scipy and Evidently) of share vectors."""
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(p > 0, p * np.log(p / m), 0.0)
        right = np.where(q > 0, q * np.log(q / m), 0.0)
    return np.sqrt(np.maximum((left + right).sum(axis=-1) / 2, 0.0))


def _shares(reference: pd.Series, current: pd.Series) -> tuple[list[Any], np.ndarray, np.ndarray]:
    keys = sorted(set(reference.dropna()) | set(current.dropna()), key=str)
    ref = reference.value_counts().reindex(keys, fill_value=0).to_numpy(dtype=np.float64)
    cur = current.value_counts().reindex(keys, fill_value=0).to_numpy(dtype=np.float64)
    return keys, ref / ref.sum(), cur / cur.sum()


def label_distance(reference: pd.Series, current: pd.Series) -> float:
    """Evidently's ``jensenshannon`` score of a categorical column: JS distance of the class shares."""
    _, ref, cur = _shares(reference, current)
    return float(_js_distance(ref, cur))


def _class_z(ref: np.ndarray, cur: np.ndarray, reference_rows: int, current_rows: int) -> np.ndarray:
    """Each class's share change in standard errors (two-proportion z, pooled shares); rows are windows."""
    pooled = (ref * reference_rows + cur * current_rows) / (reference_rows + current_rows)
    se = np.sqrt(pooled * (1.0 - pooled) * (1.0 / reference_rows + 1.0 / current_rows))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(se > 0, np.abs(cur - ref) / se, 0.0)


def _label_nulls(reference: pd.Series, current_rows: int, cfg: DriftConfig) -> tuple[np.ndarray, np.ndarray]:
    """Null samples of the JS distance and of the largest class z: both sides drawn from the reference's shares."""
    shares = reference.value_counts(normalize=True).to_numpy(dtype=np.float64)
    rng = np.random.default_rng([cfg.seed, 1])
    draw_ref = rng.multinomial(len(reference), shares, size=cfg.null_resamples) / len(reference)
    draw_cur = rng.multinomial(current_rows, shares, size=cfg.null_resamples) / current_rows
    return _js_distance(draw_ref, draw_cur), _class_z(draw_ref, draw_cur, len(reference), current_rows).max(axis=1)


def label_thresholds(reference: pd.Series, current_rows: int, cfg: DriftConfig) -> dict[str, dict[str, float]]:
    """Calibrated thresholds of ``label`` (JS distance) and ``class_share`` (largest class z) for ``current_rows``.

    Each gets half the detector's false-alarm rate. Each fit is on the squared statistic (near a
    scaled chi-square), then square-rooted.
    """
    alpha = detector_alpha(cfg) / 2
    js_null, z_null = _label_nulls(reference, current_rows, cfg)

    def threshold(null: np.ndarray, floor: float) -> dict[str, float]:
        fitted = float(np.sqrt(max(null_quantile(null**2, 1.0 - alpha), 0.0)))
        return {"threshold": max(fitted, floor), "false_alarm_rate": alpha}

    return {"label": threshold(js_null, cfg.min_jensenshannon), "class_share": threshold(z_null, 0.0)}


def label_features(
    current: pd.Series, reference: pd.Series, thresholds: dict[str, dict[str, float]], min_class_share: float = 0.0
) -> dict[str, dict[str, Any]]:
    """Scores and verdicts of the class mix (the ``label`` detector); either statistic is enough to fire.

    ``label`` is Evidently's Jensen-Shannon distance of the whole mix; ``class_share`` is the
    largest change of one class's share, in standard errors, which sees one or two classes surging
    (the common case) with more power than a distance spread over every class. A class counts only
    when its share moved by at least ``min_class_share``; the one reported is the most improbable of
    those (or of all, when none did).
    """
    keys, ref, cur = _shares(reference, current)
    js = float(_js_distance(ref, cur))
    z = _class_z(ref, cur, len(reference), len(current))
    moved = np.abs(cur - ref)
    large = moved >= min_class_share
    top = int(np.argmax(np.where(large, z, -np.inf))) if large.any() else int(np.argmax(z))
    return {
        "label": {"detector": "label", "method": "jensenshannon", **judged(js, thresholds["label"])},
        "class_share": {"detector": "label", "method": "largest class-share change, in standard errors",
                        **judged(float(z[top]), thresholds["class_share"], float(moved[top]), min_class_share),
                        "class": str(keys[top]), "share": float(cur[top]), "reference_share": float(ref[top])},
    }  # fmt: skip


def _numeric(cfg: DriftConfig) -> list[str]:
    return [f for f in cfg.features if f not in CATEGORICAL and f not in SIZE_COLUMNS]


def _compared(cfg: DriftConfig) -> list[str]:
    """The manifest columns the tabular detectors compare: every configured feature but the image size."""
    return [f for f in cfg.features if f not in SIZE_COLUMNS]


def tabular_thresholds(reference: pd.DataFrame, current_rows: int, cfg: DriftConfig) -> dict[str, dict[str, float]]:
    """Every calibrated threshold of the manifest columns.

    They depend only on the reference, the window's size and the seed, so one set serves many
    windows of one size.
    """
    thresholds = image_stat_thresholds(reference[_numeric(cfg)], current_rows, cfg)
    if "label" in cfg.features:
        thresholds.update(label_thresholds(reference["label"].astype(str), current_rows, cfg))
    return thresholds


def tabular_features(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    cfg: DriftConfig,
    thresholds: dict[str, dict[str, float]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every configured manifest column, scored and judged directly (no Evidently Report: it takes seconds)."""
    if thresholds is None:
        thresholds = tabular_thresholds(reference, len(current), cfg)
    features = image_stat_features(current[_numeric(cfg)], reference[_numeric(cfg)], thresholds, cfg.min_effect)
    if "label" in cfg.features:
        features.update(label_features(current["label"].astype(str), reference["label"].astype(str), thresholds,
                                       cfg.min_class_share))  # fmt: skip
    return features


def _sample(frame: pd.DataFrame, cfg: DriftConfig) -> pd.DataFrame:
    frame = frame[_compared(cfg)]
    return frame.sample(cfg.max_rows, random_state=cfg.seed) if len(frame) > cfg.max_rows else frame


def compare(current: pd.DataFrame, reference: pd.DataFrame, cfg: DriftConfig) -> tuple[dict[str, Any], Any]:
    """Score the manifest columns, then run Evidently on the same rows with the calibrated thresholds.

    Returns (verdict dict, the Evidently snapshot). Evidently's number for each column is stored
    beside ours as ``evidently_score``; they agree (a test checks it), and a disagreement is logged.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    current, reference = _sample(current, cfg), _sample(reference, cfg)
    current = current.astype({c: str for c in CATEGORICAL if c in current})
    reference = reference.astype({c: str for c in CATEGORICAL if c in reference})
    features = tabular_features(current, reference, cfg)
    definition = DataDefinition(
        numerical_columns=_numeric(cfg), categorical_columns=[f for f in _compared(cfg) if f in CATEGORICAL]
    )
    preset = DataDriftPreset(
        # The HTML's dataset verdict follows ours: one drifted column is enough.
        drift_share=1.0 / len(_compared(cfg)),
        num_method="wasserstein",
        cat_method="jensenshannon",
        per_column_threshold={name: features[name]["threshold"] or CONSTANT_THRESHOLD for name in _compared(cfg)},
    )
    # Constant columns (e.g. every image 8x8) make Evidently divide by a zero spread; the scores stay right.
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        snapshot = Report([preset]).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config.get("type", "").endswith("ValueDrift") and config["column"] in features:
            feature = features[config["column"]]
            feature["evidently_score"] = float(metric["value"])
            if not np.isclose(feature["evidently_score"], feature["score"], rtol=1e-6, atol=1e-9):
                log.warning("drift score of %s: ours %s, Evidently's %s", config["column"], feature["score"],
                            feature["evidently_score"])  # fmt: skip
    return summarise(features, cfg, len(current), len(reference)), snapshot


# --- embeddings: unbiased MMD^2 -----------------------------------------------------------------


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(sq, 0.0)


def _mmd2_from_sums(within_a: Any, within_b: Any, across: Any, n_a: int, n_b: int) -> Any:
    """Unbiased MMD^2 from kernel sums (diagonals excluded; an RBF kernel is 1 on them)."""
    return (within_a - n_a) / (n_a * (n_a - 1)) + (within_b - n_b) / (n_b * (n_b - 1)) - 2.0 * across / (n_a * n_b)


def mmd2_unbiased(current: np.ndarray, reference: np.ndarray, bandwidth: float) -> float:
    """Unbiased MMD^2 with an RBF kernel ``exp(-d^2 / (2 bandwidth^2))``; negative when the samples are closer than chance."""
    gamma = 1.0 / (2.0 * bandwidth**2)
    k_cc = np.exp(-gamma * _squared_distances(current, current))
    k_rr = np.exp(-gamma * _squared_distances(reference, reference))
    k_cr = np.exp(-gamma * _squared_distances(current, reference))
    return float(_mmd2_from_sums(k_cc.sum(), k_rr.sum(), k_cr.sum(), len(current), len(reference)))


def median_bandwidth(reference: np.ndarray) -> float:
    """The median heuristic: the median distance between two reference rows."""
    sq = _squared_distances(reference, reference)[np.triu_indices(len(reference), k=1)]
    median = float(np.sqrt(np.median(sq))) if len(sq) else 0.0
    return median if median > 0 else 1.0


def mmd2_null(
    reference: np.ndarray, current_rows: int, bandwidth: float, resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Null samples of MMD^2 for ``current_rows`` new rows against ``reference``, from random splits of the reference.

    Each split keeps the real sizes' ratio, and the scores are rescaled by (1/n + 1/m) / (1/a + 1/b):
    under no change the unbiased MMD^2 scales with 1/n + 1/m (its limit is (1/n + 1/m) times a sum of
    weighted centred chi-squares that depends only on the distribution).
    """
    m = len(reference)
    part = min(max(round(m * current_rows / (current_rows + m)), 2), m - 2)
    rest = m - part
    kernel = np.exp(-_squared_distances(reference, reference) / (2.0 * bandwidth**2))
    total = kernel.sum()
    masks = np.zeros((resamples, m))
    picks = np.argsort(rng.random((resamples, m)), axis=1)[:, :part]
    np.put_along_axis(masks, picks, 1.0, axis=1)
    weighted = masks @ kernel
    within_a = (weighted * masks).sum(1)
    across = weighted.sum(1) - within_a
    within_b = total - within_a - 2.0 * across
    null = _mmd2_from_sums(within_a, within_b, across, part, rest)
    return np.asarray(null) * (1.0 / current_rows + 1.0 / m) / (1.0 / part + 1.0 / rest)


def _subsample(rows: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows[rng.choice(len(rows), limit, replace=False)] if len(rows) > limit else rows


def sample_positions(total: int, limit: int, seed: int, stream: int) -> np.ndarray:
    """The rows :func:`_subsample` keeps of ``total`` (with ``rng([seed, stream])``): what is worth embedding."""
    if total <= limit:
        return np.arange(total)
    return np.random.default_rng([seed, stream]).choice(total, limit, replace=False)


def embedding_calibration(reference: np.ndarray, current_rows: int, cfg: DriftConfig) -> dict[str, float]:
    """Bandwidth and calibrated threshold for ``current_rows`` new rows against these reference embeddings."""
    bandwidth = median_bandwidth(reference)
    alpha = detector_alpha(cfg)
    null = mmd2_null(reference, current_rows, bandwidth, cfg.null_resamples, np.random.default_rng([cfg.seed, 2]))
    return {"bandwidth": bandwidth, "threshold": null_quantile(null, 1.0 - alpha), "false_alarm_rate": alpha}


def embedding_drift(
    current: np.ndarray, reference: np.ndarray, cfg: DriftConfig, calibration: dict[str, float] | None = None
) -> dict[str, Any]:
    """Score, calibrated threshold and verdict of the champion's embeddings (the ``embeddings`` detector).

    Computed here rather than by Evidently's ``mmd()``: that one clips the score at zero and takes a
    fixed threshold; its Report also always runs t-SNE (20 s and more). Each side is sampled to
    ``drift.embedding_max_rows``; ``calibration`` (from :func:`embedding_calibration` on the sampled
    reference) may be passed in to judge many windows of one size against one reference.
    """
    reference = _subsample(reference, cfg.embedding_max_rows, np.random.default_rng([cfg.seed, 3]))
    current = _subsample(current, cfg.embedding_max_rows, np.random.default_rng([cfg.seed, 4]))
    entry: dict[str, Any] = {"detector": EMBEDDINGS, "method": "mmd", "rows": [len(current), len(reference)]}
    if len(current) < 2 or len(reference) < 6:
        return {**entry, "score": None, "threshold": None, "ratio": None, "drifted": False,
                "skipped": f"too few rows to compare ({len(current)} new, {len(reference)} reference)"}  # fmt: skip
    if calibration is None:
        calibration = embedding_calibration(reference, len(current), cfg)
    score = mmd2_unbiased(current, reference, calibration["bandwidth"])
    return {**entry, **judged(score, calibration, floor=cfg.min_mmd), "bandwidth": calibration["bandwidth"]}


# --- the verdict -------------------------------------------------------------------------------------


def _detector(name: str, members: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One detector's summary: fired, and the score, threshold and ratio of its strongest feature (one that fired, if any)."""
    fired = sorted(f for f, e in members.items() if e["drifted"])
    calibrated = [(f, e) for f, e in members.items() if e.get("ratio") is not None]
    moved = sorted(f for f, e in members.items() if e.get("constant") == "reference" and e["drifted"])
    top = max([fe for fe in calibrated if fe[1]["drifted"]] or calibrated, key=lambda fe: fe[1]["ratio"], default=None)
    if moved and (top is None or not top[1]["drifted"]):
        # Only a column that never varied in the reference moved: it has no ratio (its threshold is 0).
        top = (moved[0], members[moved[0]])
    summary: dict[str, Any] = {"fired": bool(fired), "statistic": STATISTICS[name], "features_fired": fired}
    if top is not None:
        feature, entry = top
        summary.update(feature=feature, score=entry["score"], threshold=entry["threshold"], ratio=entry["ratio"])
    if name == IMAGE_STATS:
        summary["constant"] = sorted(f for f, e in members.items() if e.get("constant") == "both")
        summary["constant_moved"] = moved
    return summary


def summarise(
    per_feature: dict[str, dict[str, Any]], cfg: DriftConfig, current_rows: int, reference_rows: int
) -> dict[str, Any]:
    """The window drifts when any detector fires: one image statistic, the label mix, the embeddings or the outputs."""
    by_detector: dict[str, dict[str, dict[str, Any]]] = {}
    for name, entry in per_feature.items():
        by_detector.setdefault(entry["detector"], {})[name] = entry
    detectors = {name: _detector(name, by_detector[name]) for name in DETECTORS if name in by_detector}
    stats_used = [e for e in by_detector.get(IMAGE_STATS, {}).values() if e.get("constant") != "both"]
    share = sum(e["drifted"] for e in stats_used) / len(stats_used) if stats_used else 0.0
    return {
        "drift_detected": any(d["fired"] for d in detectors.values()),
        "fired_detectors": [name for name, d in detectors.items() if d["fired"]],
        "detectors": detectors,
        # Older readers: one flag per detector, and the share of usable image statistics that drifted.
        "groups": {name: {"drifted": d["fired"], "ratio": d.get("ratio")} for name, d in detectors.items()},
        "drifted_share": share,
        "drifted_features": sorted(name for name, f in per_feature.items() if f["drifted"]),
        "features": per_feature,
        "false_alarm_rate": cfg.false_alarm_rate,
        "null_resamples": cfg.null_resamples,
        "seed": cfg.seed,
        "current_rows": current_rows,
        "reference_rows": reference_rows,
    }


def size_findings(
    current: pd.DataFrame, reference: pd.DataFrame, limit: int = 5, min_share: float = SIZE_MIN_SHARE
) -> list[dict[str, Any]]:
    """Image sizes in the new batches that the reference never had: each a finding of its own, never drift.

    A new camera often means a new size; whether it matters is for the pixels' statistics, the
    embeddings and the champion's outputs to say. A size counts when at least ``min_share`` of the
    new images have it: in a folder of photos of every size, each size is a photo, not a camera.
    The ``limit`` most common new sizes are listed.
    """
    sizes = list(SIZE_COLUMNS)
    if not set(sizes) <= set(current.columns) & set(reference.columns):
        return []
    current, reference = current.dropna(subset=sizes), reference.dropna(subset=sizes)
    if current.empty:
        return []
    known = set(zip(reference["width"].astype(int), reference["height"].astype(int), strict=True))
    aspects = {round(w / h, 2) for w, h in known if h}
    new = current[[(int(w), int(h)) not in known for w, h in zip(current["width"], current["height"], strict=True)]]
    common = [(wh, part) for wh, part in new.groupby(sizes) if len(part) >= min_share * len(current)]
    findings = []
    for (width, height), part in sorted(common, key=lambda wp: -len(wp[1]))[:limit]:
        width, height = int(width), int(height)
        batches = sorted(map(str, part["batch_id"].unique())) if "batch_id" in part else []
        aspect = round(width / height, 2) if height else None
        new_aspect = aspect is not None and aspect not in aspects
        where = f" from batch{'es' if len(batches) > 1 else ''} {', '.join(batches)}" if batches else ""
        extra = f"; new aspect ratio {aspect:g}" if new_aspect else ""
        findings.append({"finding": "image_size", "size": f"{width}x{height}", "width": width, "height": height,
                         "rows": len(part), "share": len(part) / len(current), "batches": batches,
                         "aspect_ratio": aspect, "new_aspect_ratio": new_aspect,
                         "message": f"new image size {width}\u00d7{height}{where} ({len(part)} of {len(current)} "
                                    f"images{extra})"})  # fmt: skip
    return findings


def _through_champion(lake: Lake, settings: Settings, window: Window, model: Any) -> dict[str, Any]:
    """The champion's view of the window: embeddings and outputs against its held-out rows, and its accuracy.

    Every new row is scored (class and confidence, streamed); embeddings and class probabilities only
    for the sampled rows that the MMD and KS tests compare, so memory does not grow with the window.
    Returns the feature entries it adds and the harm assessment.
    """
    from ml.data.curated import ShardReader, join_rows, rows_of
    from ml.learn.embed import embed_and_score, top_class
    from ml.learn.train import pick_device

    cfg = settings.drift
    device = pick_device(settings.train.device)
    size, limit = settings.image.size, cfg.embedding_max_rows
    with ShardReader(lake) as reader:
        new_rows = rows_of(reader, window.new_batches, None, settings.labels, size=size)
        new_pred, new_conf = top_class(model, new_rows.batches(), device)
        # The champion never trained on val/test rows: an unbiased reference for what it sees.
        val, test = (rows_of(reader, window.reference_batches, part, settings.labels, size=size)
                     for part in ("val", "test"))  # fmt: skip
        held_out = join_rows(val, test)
        held_out = held_out.take(sample_positions(len(held_out), limit, cfg.seed, 3))
        ref_emb, ref_prob = embed_and_score(model, held_out.batches(), device)
        sampled = new_rows.take(sample_positions(len(new_rows), limit, cfg.seed, 4))
        new_emb, new_prob = embed_and_score(model, sampled.batches(), device)
    features: dict[str, dict[str, Any]] = {}
    if cfg.embeddings:
        if not len(ref_emb):
            ref_emb = np.zeros((0, new_emb.shape[1] if new_emb.ndim == 2 else 0), np.float32)
        features[EMBEDDINGS] = embedding_drift(new_emb, ref_emb, cfg)
    if cfg.outputs:
        features[OUTPUTS] = output_drift(new_prob, ref_prob, settings.labels, detector_alpha(cfg), cfg.min_output_ks)
    ref_correct = ref_prob.argmax(axis=1) == held_out.labels if len(ref_prob) else np.zeros(0, bool)
    ref_conf = ref_prob.max(axis=1) if len(ref_prob) else np.zeros(0)
    new_correct = new_pred == new_rows.labels
    harm = assess(new_correct, new_conf, ref_correct, ref_conf, settings)
    quality = {"champion_version": window.champion_version,
               "accuracy_on_new": float(new_correct.mean()) if len(new_rows) else None,
               "held_out_accuracy": float(ref_correct.mean()) if len(ref_correct) else None,
               "rows": len(new_rows)}  # fmt: skip
    return {"features": features, "harm": harm, "quality": quality}


def detect_drift(
    lake: Lake,
    settings: Settings,
    window: Window,
    champion_model: Any = None,
    champion_accuracy: float | None = None,
) -> dict[str, Any]:
    """Compare the window's new batches with the champion's training data and store the report.

    With the champion model at hand, also compare its embeddings and outputs of new and held-out
    images, measure its accuracy on the new labelled rows (none of which it was trained on), and
    judge whether the shift is expected to hurt.
    """
    cfg = settings.drift
    json_key = layout.report(layout.RETRAIN_DAG, window.run_key, "drift.json")
    base = {"run_key": window.run_key, "new_batches": window.new_batches, "reference_batches": window.reference_batches}
    if not window.new_batches or not window.reference_batches:
        reason = "no new batches" if not window.new_batches else "no champion to compare with"
        verdict = {**base, "drift_detected": False, "skipped": reason, "features": {}}
        lake.write_json(json_key, verdict)
        return {**verdict, "report_uri": lake.uri(json_key)}

    current = manifests(lake, window.new_batches)
    # Every split of the champion's batches: val and test rows come from the same distribution (the
    # split is by content hash), and a larger reference sharpens every threshold.
    reference = manifests(lake, window.reference_batches)
    result, snapshot = compare(current, reference, cfg)
    quality, harm = None, None
    if champion_model is not None:
        seen = _through_champion(lake, settings, window, champion_model)
        result = summarise({**result["features"], **seen["features"]}, cfg, result["current_rows"],
                           result["reference_rows"])  # fmt: skip
        quality = {**seen["quality"], "recorded_accuracy": champion_accuracy}
        harm = seen["harm"]
    findings = size_findings(current, reference)
    verdict = {**base, **result, "quality": quality, "harm": harm, "findings": findings}
    html_key = layout.report(layout.RETRAIN_DAG, window.run_key, "drift.html")
    with tempfile.TemporaryDirectory(prefix="ct-drift-") as tmp:
        html = Path(tmp) / "drift.html"
        snapshot.save_html(str(html))  # a Path silently writes nothing in evidently 0.7
        lake.write_file(html_key, html)
    verdict["html_uri"] = lake.uri(html_key)
    lake.write_json(json_key, verdict)
    log.info("drift %s: fired %s, drifted %s; %s%s", window.run_key, result["fired_detectors"],
             result["drifted_features"], (harm or {}).get("summary", "harm not assessed (no champion model)"),
             "".join(f"; {f['message']}" for f in findings))  # fmt: skip
    return {**verdict, "report_uri": lake.uri(json_key)}
