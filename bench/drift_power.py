"""How often each drift detector catches real shifts, cries wolf on harmless ones, and whether a shift hurts.

scikit-learn's bundled digits, shuffled, are upscaled to 32 and 64 px and run through ingest's
``describe()`` (at ``image.size`` 32 / 64), so the image statistics are what ingest writes. 1,000
digits are the reference batch: all its rows are the tabular reference (the drift step reads every split
of the champion's batches), a small CNN (``digits_cnn``) is trained on its 70% train rows, and its
embeddings and class probabilities of the other 30% are the held-out reference, as in the drift
step. Windows of 300 rows come from the other 797 digits, their class counts drawn afresh from the
source's class mix. Every image, reference included, gets a small random jitter (+-1 grey level and
+-1 degree). The kinds of window:

* **control:** fresh draws of the same distribution;
* **harmless:** what a camera does on an ordinary day, which must not retrain: a per-image brightness
  factor of 0.98-1.02, +-1 px shifts, both together, JPEG re-encoding at quality 90, and a new
  camera size (1.5x the pixels, resized by ingest to the same stored size);
* **full strength:** brightness +40, contrast x0.5, invert, Gaussian blur (radius 1.5 at 32 px,
  scaled with size), rotation 20 deg, noise sigma 25; a 2x prior shift (two classes at twice their
  share) and a 3x one (one class at three times its share);
* **half strength:** brightness +20, rotation 10 deg, noise sigma 12, a 2x prior shift of one class;
* **sweep:** milder steps of brightness, contrast, blur, noise and rotation, to find the smallest
  shift of each kind that costs the champion a point of accuracy. The effect-size floors
  (``drift.min_effect``, ``min_output_ks``, ``min_mmd``) come from here: what those shifts move each
  statistic by, against what the harmless kinds move it by.

Each detector is judged alone (its threshold does not depend on the others) and the combined rule
is their OR; ``retrain`` is what the default policy does with it (drift and evidence of harm,
:mod:`ml.decide.harm`). Each window's accuracy drop is the champion's accuracy on it below its mean on
the controls. Targets: each detector catches >= 95% of the full-strength shifts it is meant for
(brightness, contrast, invert, blur: image statistics; prior shifts: labels; rotation, noise:
embeddings); the combined rule catches >= 80% of the half-strength shifts (pooled); every shift
that costs the champion more than 2 points is caught in >= 95% of its windows, and every one that
costs more than 5 retrains in >= 95%; <= 5% false alarms per detector, combined and retrained, on
the controls and on each harmless kind. It also prints how often the policy retrains on real
shifts that cost nothing (the needless retrains the harm rule is for).

Run: ``PYTHONPATH=plugins:. .venv/bin/python bench/drift_power.py`` (about 7 min on 2 CPU cores; add
``--cache DIR`` to keep the windows' statistics, embeddings and outputs for a rerun). Exit code 0
either way: the PASS/FAIL lines are the result.
"""

from __future__ import annotations

import argparse
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REFERENCE_ROWS = 1000
WINDOW_ROWS = 300
TRAIN_SHARE = 0.7
RENDERINGS = 2
DETECTORS = ("image_stats", "label", "embeddings", "outputs")
STATS = ("mean", "std", "bright", "min", "max")
DETECTION_TARGET, HALF_TARGET, FALSE_ALARM_TARGET = 0.95, 0.80, 0.05
HARMFUL, SURELY_HARMFUL, COSTLESS = 0.02, 0.05, 0.01  # accuracy drops: caught; retrained; needless to retrain


@dataclass(frozen=True)
class Shift:
    name: str
    strength: str  # control | harmless | full | half | sweep
    meant_for: str | None = None  # the detector that must catch it at full strength
    family: str | None = None  # sweep: the kind of shift, for the floors
    brightness: float = 0.0
    contrast: float = 1.0
    invert: bool = False
    blur: float = 0.0  # Gaussian radius at 32 px
    rotation: float = 0.0
    noise: float = 0.0
    prior: tuple[float, int] | None = None  # (factor, how many classes get it)
    gain: float = 0.0  # per-image brightness factor drawn from 1 +- gain
    translate: int = 0  # per-image shift of up to this many pixels each way
    jpeg: int | None = None  # re-encoded at this JPEG quality
    source: float = 1.0  # the camera's size, relative to the stored size


SHIFTS = (
    Shift("control", "control"),
    Shift("brightness x0.98-1.02", "harmless", gain=0.02),
    Shift("shift +-1 px", "harmless", translate=1),
    Shift("jitter: both of these", "harmless", gain=0.02, translate=1),
    Shift("JPEG q90", "harmless", jpeg=90),
    Shift("new size 1.5x", "harmless", source=1.5),
    Shift("brightness +40", "full", "image_stats", "brightness", brightness=40),
    Shift("contrast x0.5", "full", "image_stats", "contrast", contrast=0.5),
    Shift("invert", "full", "image_stats", invert=True),
    Shift("blur r1.5@32px", "full", "image_stats", "blur", blur=1.5),
    Shift("rotation 20deg", "full", "embeddings", "rotation", rotation=20),
    Shift("noise sigma 25", "full", "embeddings", "noise", noise=25),
    Shift("prior 2x (2 classes)", "full", "label", prior=(2.0, 2)),
    Shift("prior 3x (1 class)", "full", "label", prior=(3.0, 1)),
    Shift("brightness +20", "half", family="brightness", brightness=20),
    Shift("rotation 10deg", "half", family="rotation", rotation=10),
    Shift("noise sigma 12", "half", family="noise", noise=12),
    Shift("prior 2x (1 class)", "half", prior=(2.0, 1)),
    *(Shift(f"brightness +{b}", "sweep", family="brightness", brightness=b) for b in (5, 10)),
    *(Shift(f"contrast x{c}", "sweep", family="contrast", contrast=c) for c in (0.9, 0.8, 0.7)),
    *(Shift(f"blur r{r}@32px", "sweep", family="blur", blur=r) for r in (0.5, 0.75, 1.0)),
    *(Shift(f"noise sigma {n}", "sweep", family="noise", noise=n) for n in (4, 8)),
    *(Shift(f"rotation {r}deg", "sweep", family="rotation", rotation=r) for r in (4, 7)),
)
FAMILY_ORDER = {  # strength within a family, so the smallest harmful shift can be found
    "brightness": lambda s: s.brightness, "contrast": lambda s: 1.0 - s.contrast, "blur": lambda s: s.blur,
    "noise": lambda s: s.noise, "rotation": lambda s: s.rotation,
}  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--trials", type=int, default=60, help="windows per shift")
    parser.add_argument("--controls", type=int, default=150, help="windows with no shift")
    parser.add_argument("--epochs", type=int, default=15, help="champion training epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--false-alarm-rate", type=float, help="drift.false_alarm_rate (default: the configured one)")
    parser.add_argument("--cache", type=Path, help="keep each size's windows here")
    return parser


def render(base: np.ndarray, shift: Shift, size: int, rng: np.random.Generator) -> list[Any]:
    """Jitter and shift upscaled uint8 images as a camera would: PIL images out, at the camera's size."""
    from PIL import Image, ImageFilter

    out = []
    for pixels in base:
        image = Image.fromarray(pixels, "L")
        angle = rng.uniform(-1.0, 1.0) + shift.rotation
        image = image.rotate(angle, resample=Image.Resampling.BILINEAR)
        if shift.blur:
            image = image.filter(ImageFilter.GaussianBlur(shift.blur * image.width / 32))
        if shift.translate:
            dx, dy = rng.integers(-shift.translate, shift.translate + 1, 2)
            image = image.transform(image.size, Image.Transform.AFFINE, (1, 0, int(dx), 0, 1, int(dy)))
        array = np.asarray(image, np.float32) + rng.uniform(-1.0, 1.0)
        if shift.contrast != 1.0:
            array = array.mean() + shift.contrast * (array - array.mean())
        if shift.invert:
            array = 255.0 - array
        if shift.gain:
            array = array * rng.uniform(1.0 - shift.gain, 1.0 + shift.gain)
        if shift.noise:
            array = array + rng.normal(0.0, shift.noise, array.shape)
        image = Image.fromarray(np.clip(np.rint(array + shift.brightness), 0, 255).astype(np.uint8), "L")
        if shift.jpeg:
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=shift.jpeg)
            image = Image.open(io.BytesIO(buffer.getvalue())).convert("L")
        out.append(image)
    return out


def pick(labels: np.ndarray, pool: np.ndarray, base: np.ndarray, shift: Shift, rng: np.random.Generator) -> np.ndarray:
    """One window's digits: class counts drawn fresh from ``base`` (shifted for a prior shift), then digits of each class.

    Drawing the class counts afresh, rather than taking 300 of the 797 pool digits, makes each window
    a new sample of the class mix, as a new batch is; digits repeat only when a boosted class runs out.
    """
    shares = base.copy()
    if shift.prior is not None:
        factor, classes = shift.prior
        boosted = rng.choice(len(base), classes, replace=False)
        shares[boosted] *= factor
        rest = np.setdiff1d(np.arange(len(base)), boosted)
        shares[rest] *= (1.0 - shares[boosted].sum()) / shares[rest].sum()
    chosen = []
    for digit, count in enumerate(rng.multinomial(WINDOW_ROWS, shares)):
        members = np.flatnonzero(labels[pool] == digit)  # positions in the pool
        chosen.append(rng.permutation(np.resize(rng.permutation(members), count)))
    return np.concatenate(chosen)


def describe_all(images: list[Any], labels: np.ndarray, settings: Any) -> tuple[pd.DataFrame, np.ndarray]:
    """Manifest-like rows (ingest's ``describe()``) and model-sized arrays."""
    from ml.data.ingest import describe

    rows, arrays = [], []
    for image, label in zip(images, labels, strict=True):
        stats, array = describe(image, settings)
        rows.append({**stats, "label": str(label)})
        arrays.append(array)
    return pd.DataFrame(rows), np.stack(arrays)


def train_champion(arrays: np.ndarray, labels: np.ndarray, settings: Any) -> Any:
    import torch

    from ml.data.curated import Split
    from ml.learn.train import fit
    from ml.model.factory import build_model

    torch.manual_seed(settings.train.seed)
    model = build_model("digits_cnn", 1, 10)
    train = Split(arrays, labels.astype(np.int64), pd.DataFrame())
    fit(model, train, Split(arrays[:0], train.labels[:0], pd.DataFrame()), settings, torch.device("cpu"))
    return model


def upscale(images8: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack(
        [np.asarray(Image.fromarray(i, "L").resize((size, size), Image.Resampling.BILINEAR)) for i in images8]
    )


def build_windows(size: int, args: argparse.Namespace) -> dict[str, Any]:
    """The reference's frame, embeddings and outputs, then every window's, for one image size.

    Each shift renders every pool digit ``RENDERINGS`` times (its own jitter, noise and so on) and
    scores them once; a window takes distinct digits and one rendering of each (a digit that must
    repeat takes another). This keeps the CNN's work to a few passes over the pool, not one per window.
    """
    from ml.config import load_settings
    from ml.demo import digits
    from ml.learn.embed import embed_and_score

    settings = load_settings({
        "CT_HOME": "/tmp/ct-drift-power", "CT_IMAGE__SIZE": str(size), "CT_TRAIN__EPOCHS": str(args.epochs),
        "CT_TRAIN__DEVICE": "cpu",
    })  # fmt: skip
    images8, labels = digits()
    # The source lists its digits by writer: shuffled, the reference and the pool come from the same
    # writers, so a control window is the champion's own distribution (its accuracy included).
    order = np.random.default_rng([args.seed, 1797]).permutation(len(labels))
    images8, labels = images8[order], labels[order]
    sources = {1.0: upscale(images8, size)}
    rng = np.random.default_rng([args.seed, size])
    reference_images = render(sources[1.0][:REFERENCE_ROWS], SHIFTS[0], size, rng)
    ref_frame, ref_arrays = describe_all(reference_images, labels[:REFERENCE_ROWS], settings)
    is_train = rng.random(REFERENCE_ROWS) < TRAIN_SHARE
    started = time.perf_counter()
    model = train_champion(ref_arrays[is_train], labels[:REFERENCE_ROWS][is_train], settings)
    held_out_emb, held_out_prob = embed_and_score(model, ref_arrays[~is_train], "cpu")
    held_out_correct = held_out_prob.argmax(axis=1) == labels[:REFERENCE_ROWS][~is_train]
    print(f"{size} px: champion trained in {time.perf_counter() - started:.0f} s, "
          f"held-out accuracy {held_out_correct.mean():.3f}")  # fmt: skip
    pool = np.arange(REFERENCE_ROWS, len(images8))
    base = np.bincount(labels, minlength=10) / len(labels)  # the source's class mix: all 1,797 digits
    windows = []
    for shift_index, shift in enumerate(SHIFTS):
        if shift.source not in sources:
            sources[shift.source] = upscale(images8, round(size * shift.source))
        bank_rng = np.random.default_rng([args.seed, size, shift_index])
        bank = [describe_all(render(sources[shift.source][pool], shift, size, bank_rng), labels[pool], settings)
                for _ in range(RENDERINGS)]  # fmt: skip
        frames = [frame for frame, _ in bank]
        scored = [embed_and_score(model, arrays, "cpu") for _, arrays in bank]
        for trial in range(args.controls if shift.strength == "control" else args.trials):
            window_rng = np.random.default_rng([args.seed, size, shift_index, trial])
            chosen = pick(labels, pool, base, shift, window_rng)
            # The first time a digit appears it takes a random rendering; a repeat takes the next one.
            first = window_rng.integers(0, RENDERINGS, len(pool))
            seen = np.zeros(len(pool), int)
            version = np.empty(len(chosen), int)
            for i, digit in enumerate(chosen):
                version[i] = (first[digit] + seen[digit]) % RENDERINGS
                seen[digit] += 1
            parts = [chosen[version == v] for v in range(RENDERINGS)]
            probabilities = np.concatenate([scored[v][1][part] for v, part in enumerate(parts)])
            truth = np.concatenate([labels[pool][part] for part in parts])
            windows.append({
                "shift": shift.name,
                "frame": pd.concat([frames[v].iloc[part] for v, part in enumerate(parts)], ignore_index=True),
                "embeddings": np.concatenate([scored[v][0][part] for v, part in enumerate(parts)]),
                "probabilities": probabilities, "correct": probabilities.argmax(axis=1) == truth,
            })  # fmt: skip
    return {"reference": ref_frame, "reference_embeddings": held_out_emb, "reference_probabilities": held_out_prob,
            "reference_correct": held_out_correct, "windows": windows}  # fmt: skip


def cached_windows(size: int, args: argparse.Namespace) -> dict[str, Any]:
    if args.cache is None:
        return build_windows(size, args)
    path = args.cache / f"harm-windows-{size}-{args.seed}-{args.trials}-{args.controls}-{args.epochs}.pkl"
    if path.exists():
        return pd.read_pickle(path)
    data = build_windows(size, args)
    args.cache.mkdir(parents=True, exist_ok=True)
    pd.to_pickle(data, path)
    return data


def judge(data: dict[str, Any], settings: Any) -> pd.DataFrame:
    """One row per window: which detectors fired, the effect each statistic saw, harm, and the champion's accuracy.

    Every window has the same size, so the thresholds (which depend only on the reference, the
    window's size and the seed) are calibrated once, exactly as the drift step would for each.
    """
    from scipy import stats

    from ml.decide.drift import (
        detector_alpha,
        embedding_calibration,
        embedding_drift,
        summarise,
        tabular_features,
        tabular_thresholds,
    )
    from ml.decide.harm import assess, output_drift

    cfg = settings.drift
    reference, reference_embeddings = data["reference"], data["reference_embeddings"]
    ref_prob, ref_correct = data["reference_probabilities"], data["reference_correct"]
    thresholds = tabular_thresholds(reference, WINDOW_ROWS, cfg)
    calibration = embedding_calibration(reference_embeddings.astype(np.float64), WINDOW_ROWS, cfg)
    labels = [str(i) for i in range(10)]
    rows = []
    for window in data["windows"]:
        frame = window["frame"]
        assert len(frame) == WINDOW_ROWS
        features = tabular_features(frame, reference, cfg, thresholds)
        features["embeddings"] = embedding_drift(window["embeddings"], reference_embeddings, cfg, calibration)
        features["outputs"] = output_drift(window["probabilities"], ref_prob, labels, detector_alpha(cfg),
                                           cfg.min_output_ks)  # fmt: skip
        verdict = summarise(features, cfg, len(frame), len(reference))
        harm = assess(
            window["correct"], window["probabilities"].max(axis=1), ref_correct, ref_prob.max(axis=1), settings
        )
        row: dict[str, Any] = {"shift": window["shift"], "combined": verdict["drift_detected"],
                               "harm": harm["expected"], "retrain": verdict["drift_detected"] and harm["expected"],
                               "accuracy": float(window["correct"].mean())}  # fmt: skip
        for name in DETECTORS:
            detector = verdict["detectors"][name]
            row[name] = detector["fired"]
            row[f"{name}_ratio"] = detector.get("ratio")
            row[f"{name}_features"] = ",".join(detector["features_fired"])
        for stat in STATS:
            row[f"effect_{stat}"] = float(stats.wasserstein_distance(reference[stat], frame[stat]))
        row["effect_mmd"] = features["embeddings"]["score"]
        row["effect_ks"] = features["outputs"]["score"]
        rows.append(row)
    judged = pd.DataFrame(rows)
    control = judged.loc[judged["shift"] == "control", "accuracy"].mean()
    return judged.assign(drop=control - judged["accuracy"])


def report(size: int, judged: pd.DataFrame) -> list[tuple[str, bool]]:
    """Print one size's table; return its (target, passed) lines."""
    print(f"\n{size} px: detection rate per shift ({WINDOW_ROWS}-row windows; drop = the champion's accuracy below "
          f"its mean on the controls, in points; retrain = drift and evidence of harm)")  # fmt: skip
    header = (f"{'shift':22} {'strength':8} {'n':>3} {'drop':>6}  {'image_stats':>11} {'label':>6} {'embeddings':>10} "
              f"{'outputs':>7} {'combined':>8} {'retrain':>7}  {'meant for':11}")  # fmt: skip
    print(header)
    print("-" * len(header))
    checks = []
    for shift in SHIFTS:
        rows = judged[judged["shift"] == shift.name]
        rates = {name: float(rows[name].mean()) for name in (*DETECTORS, "combined", "retrain")}
        drop = float(rows["drop"].mean())
        meant = shift.meant_for or ""
        print(f"{shift.name:22} {shift.strength:8} {len(rows):>3} {100 * drop:>+6.1f}  {rates['image_stats']:>11.0%} "
              f"{rates['label']:>6.0%} {rates['embeddings']:>10.0%} {rates['outputs']:>7.0%} {rates['combined']:>8.0%} "
              f"{rates['retrain']:>7.0%}  {meant:11}")  # fmt: skip
        if shift.strength in ("control", "harmless"):
            for name in (*DETECTORS, "combined", "retrain"):
                checks.append((f"{size} px false alarms on {shift.name}, {name}: {rates[name]:.1%} <= "
                               f"{FALSE_ALARM_TARGET:.0%}", rates[name] <= FALSE_ALARM_TARGET))  # fmt: skip
        if shift.strength == "full" and shift.meant_for:
            checks.append((f"{size} px {shift.name} caught by {meant} alone: {rates[meant]:.0%} >= {DETECTION_TARGET:.0%}",
                           rates[meant] >= DETECTION_TARGET))  # fmt: skip
        if shift.strength not in ("control", "harmless") and drop > HARMFUL:
            checks.append((f"{size} px {shift.name} costs {100 * drop:.1f} points: caught {rates['combined']:.0%} >= "
                           f"{DETECTION_TARGET:.0%}", rates["combined"] >= DETECTION_TARGET))  # fmt: skip
        if shift.strength not in ("control", "harmless") and drop > SURELY_HARMFUL:
            checks.append((f"{size} px {shift.name} costs {100 * drop:.1f} points: retrained {rates['retrain']:.0%} >= "
                           f"{DETECTION_TARGET:.0%}", rates["retrain"] >= DETECTION_TARGET))  # fmt: skip
    half = judged[judged["shift"].isin([s.name for s in SHIFTS if s.strength == "half"])]
    per_kind = half.groupby("shift")["combined"].mean()
    rate = float(half["combined"].mean())
    print(f"half-strength shifts together: the combined rule caught {rate:.0%} of {len(half)} windows")
    drops = judged.groupby("shift")["drop"].mean()
    real = [s.name for s in SHIFTS if s.strength not in ("control", "harmless")]
    costless = judged[judged["shift"].isin([n for n in real if drops[n] < COSTLESS])]
    costly = judged[judged["shift"].isin([n for n in real if HARMFUL < drops[n] <= SURELY_HARMFUL])]
    print(f"real shifts costing < {100 * COSTLESS:g} point: drift caught {costless['combined'].mean():.0%} of "
          f"{len(costless)} windows, the default policy retrained on {costless['retrain'].mean():.0%} (drift alone: "
          f"{costless['combined'].mean():.0%}); costing {100 * HARMFUL:g}-{100 * SURELY_HARMFUL:g} points: retrained on "
          f"{costly['retrain'].mean():.0%} of {len(costly)}")  # fmt: skip
    checks.append((f"{size} px half-strength shifts caught by the combined rule: {rate:.0%} >= {HALF_TARGET:.0%} "
                   f"(weakest kind: {per_kind.idxmin()} {per_kind.min():.0%})", rate >= HALF_TARGET))  # fmt: skip
    return checks


def floors(size: int, judged: pd.DataFrame, cfg: Any) -> None:
    """Where the floors come from: what harmless kinds move each statistic by, against the smallest costly shifts.

    For each family (brightness, contrast, blur, noise, rotation) the smallest shift whose windows cost
    the champion at least a point on average; each statistic's median effect there. A statistic's
    suggested floor is the smallest of those effects that stands clear of the harmless kinds' (above
    their 95th percentile): a statistic that a family hardly moves is not the one that must catch it.
    """
    columns = [*(f"effect_{s}" for s in STATS), "effect_mmd", "effect_ks"]
    harmless = judged[judged["shift"].isin([s.name for s in SHIFTS if s.strength in ("control", "harmless")])]
    noise_level = harmless[columns].quantile(0.95)
    smallest = {}
    for family, strength in FAMILY_ORDER.items():
        members = sorted((s for s in SHIFTS if s.family == family), key=strength)
        for shift in members:
            rows = judged[judged["shift"] == shift.name]
            if rows["drop"].mean() >= 0.01:
                smallest[family] = (shift.name, float(rows["drop"].mean()), rows[columns].median())
                break
    configured = {**{f"effect_{k}": v for k, v in cfg.min_effect.items()}, "effect_mmd": cfg.min_mmd,
                  "effect_ks": cfg.min_output_ks}  # fmt: skip
    print(f"\n{size} px floors: harmless p95 effect vs the smallest shift of each kind costing >= 1 point")
    print(f"{'statistic':12} {'harmless p95':>12}  " + "  ".join(f"{f'{f}: {n}':>24}" for f, (n, _, _) in smallest.items())
          + f"  {'suggested':>9} {'configured':>10}")  # fmt: skip
    for column in columns:
        effects = {family: float(median[column]) for family, (_, _, median) in smallest.items()}
        clear = [e for e in effects.values() if e > 2 * noise_level[column]]
        suggested = min(clear) if clear else float("nan")
        print(f"{column[7:]:12} {noise_level[column]:>12.4f}  " + "  ".join(f"{e:>24.4f}" for e in effects.values())
              + f"  {suggested:>9.4f} {configured[column]:>10.4f}")  # fmt: skip
    for family, (name, drop, _) in smallest.items():
        print(f"  {family}: {name} costs {100 * drop:.1f} points")


def main(args: argparse.Namespace) -> int:
    import torch

    from ml.config import load_settings

    torch.set_num_threads(2)
    overrides = {"CT_HOME": "/tmp/ct-drift-power"}
    if args.false_alarm_rate is not None:
        overrides["CT_DRIFT__FALSE_ALARM_RATE"] = str(args.false_alarm_rate)
    settings = load_settings(overrides)
    started = time.perf_counter()
    checks = []
    for size in args.sizes:
        data = cached_windows(size, args)
        judging = time.perf_counter()
        judged = judge(data, settings)
        print(f"{size} px: {len(judged)} windows judged in {time.perf_counter() - judging:.0f} s")
        checks += report(size, judged)
        floors(size, judged, settings.drift)
    print()
    for line, passed in checks:
        print(f"{'PASS' if passed else 'FAIL'}  {line}")
    print(f"\n{sum(p for _, p in checks)}/{len(checks)} targets met; {time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
