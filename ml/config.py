"""The one validated configuration object: defaults, then a YAML file, then environment overrides.

Precedence, lowest first:
1. the defaults below, which are the embedded profile (everything under ``CT_HOME``, ``./.ct``);
2. ``CT_CONFIG_JSON`` (how a pod receives the whole configuration) or the YAML file named by ``CT_CONFIG``;
3. ``CT_<SECTION>__<FIELD>`` variables, e.g. ``CT_GATE__MARGIN=0.02``, and ``CT_<FIELD>`` for every
   top-level field that is not a section (``CT_LAKE_URI``, ``CT_RUNNER``, ``CT_LABELS``, ...).

Scalars from the environment are coerced to the field's type (``CT_TRAIN__EPOCHS=3``); a value
that starts with ``[`` or ``{`` is parsed as YAML (``CT_KUBERNETES__NODE_SELECTOR='{gpu: h100}'``).
A list field also takes comma-separated values (``CT_LABELS=cat,dog,bird``, or ``'[cat, dog]'``).
A top-level ``CT_`` variable that is neither a setting nor in :data:`NOT_CONFIG_ENV` is logged as a
warning and ignored, so that a misspelt shortcut does not pass silently.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ml.errors import ConfigError

log = logging.getLogger(__name__)

ENV_PREFIX = "CT_"
#: ``CT_`` variables that are read elsewhere (storage, the CLI, the image build, the operator) and
#: are not settings; ``CT_CONFIG``/``CT_CONFIG_JSON`` name the configuration itself.
NOT_CONFIG_ENV = frozenset({
    "CT_CONFIG", "CT_CONFIG_JSON", "CT_S3_ENDPOINT_URL", "CT_S3_CONNECT_TIMEOUT", "CT_S3_READ_TIMEOUT",
    "CT_CODE_VERSION", "CT_LOG_LEVEL", "CT_RUN_KEY",
})  # fmt: skip


#: Longest Unix socket path Linux accepts (``sun_path`` is 108 bytes with its terminating NUL).
_SOCKET_PATH_MAX = 107


def embedded_socket_dir(home: Path) -> Path:
    """Where the embedded PostgreSQL of ``home`` puts its Unix socket (it listens on no TCP port).

    ``<home>/postgres-socket`` when the socket's full path fits the kernel's limit, otherwise a
    directory in /tmp named after a hash of ``home``, so every process finds the same one.
    """
    home = Path(home).expanduser().resolve()
    preferred = home / "postgres-socket"
    if len(str(preferred / ".s.PGSQL.5432")) <= _SOCKET_PATH_MAX:
        return preferred
    return Path("/tmp") / f"ct-pg-{hashlib.sha256(str(home).encode()).hexdigest()[:16]}"


def embedded_database_uri(home: Path, database: str) -> str:
    """SQLAlchemy URI of one database on the embedded PostgreSQL (psycopg2, over the Unix socket)."""
    return f"postgresql+psycopg2://postgres@/{database}?host={embedded_socket_dir(home)}"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageConfig(_Section):
    size: int = Field(32, ge=8, le=1024, description="Side of the square model input, in pixels")
    store_size: int | None = Field(
        None, ge=8, le=2048, description="Side of the stored training-ready images (default: size); random crops "
        "of `size` are taken from it, evaluation takes the centre",
    )  # fmt: skip
    channels: Literal[1, 3] = Field(1, description="1: every image is converted to grey (L), 3: to RGB")
    resize: Literal["letterbox", "squash", "crop"] = Field(
        "letterbox", description="How an image of any shape becomes a square of store_size: letterbox scales "
        "its longer side to fit and pads the rest with black (no pixel lost, shapes kept); squash stretches it "
        "(shapes distorted); crop scales its shorter side to fit and cuts the centre square (edges lost)",
    )  # fmt: skip
    mean: tuple[float, ...] = Field(
        (0.5,), description="Per-channel mean subtracted inside the model (1 or channels values, on [0, 1])"
    )
    std: tuple[float, ...] = Field(
        (0.25,), description="Per-channel divisor inside the model (ImageNet weights: 0.229, 0.224, 0.225)"
    )
    max_pixels: int = Field(50_000_000, ge=1, description="Decompression-bomb cap, checked before decoding")
    shard_mb: float = Field(64.0, gt=0, description="Size of one training-ready shard file, in MB")

    @field_validator("channels", mode="before")
    @classmethod
    def _channels_from_text(cls, value: Any) -> Any:
        # CT_IMAGE__CHANNELS=3 arrives as text, and a Literal does not coerce it.
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    @property
    def stored(self) -> int:
        return self.store_size or self.size

    @model_validator(mode="after")
    def _store_holds_the_input(self) -> ImageConfig:
        if self.stored < self.size:
            raise ValueError(f"image.store_size ({self.store_size}) must be at least image.size ({self.size})")
        for name in ("mean", "std"):
            if len(getattr(self, name)) not in (1, self.channels):
                raise ValueError(f"image.{name} needs 1 or {self.channels} values (image.channels)")
        if any(value <= 0 for value in self.std):
            raise ValueError("image.std values must be positive")
        return self


class IngestConfig(_Section):
    min_rows: int = Field(20, ge=1)
    max_rows: int = Field(5_000_000, ge=1)
    min_class_share: float = Field(0.0, ge=0, le=1, description="Each known label's share of the batch, lower bound")
    max_class_share: float = Field(0.5, gt=0, le=1, description="No label may make up more of a batch than this")
    unsupported_modes: Literal["normalize", "reject"] = Field(
        "normalize", description="16-bit, CMYK and alpha images: convert to 8-bit L/RGB, or reject the row"
    )
    on_bad_rows: Literal["fail", "drop"] = Field(
        "fail", description="Row-level rule failures quarantine the batch (fail) or drop those rows with a record"
    )
    always_fail_rules: tuple[str, ...] = Field(
        ("path_inside_batch", "file_name", "layout", "label_in_set"),
        description="Row-level rules that fail the batch even with on_bad_rows=drop: a file that leaves the batch, "
        "or one whose name or place the producer got wrong, says the producer is broken; a folder that is not a "
        "configured label says the labels or the producer are wrong, and dropping it would lose a class unseen",
    )
    min_side: int = Field(4, ge=1)
    max_side: int = Field(8192, ge=1)
    extensions: tuple[str, ...] = Field(
        (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"),
        description="File suffixes accepted (compared lower-cased; rule file_extension); they also decide which "
        "decoded formats are accepted (rule image_format)",
    )
    max_file_bytes: int = Field(
        64 * 1024**2, ge=1, description="Larger files (size from the listing) are rejected unread (rule file_size)"
    )
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    workers: int | None = Field(
        None,
        ge=1,
        description="Threads that read, hash, decode and resize images (default: one per CPU core, four on S3)",
    )

    @field_validator("extensions")
    @classmethod
    def _dotted_lower_case(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if bad := [ext for ext in value if not ext.startswith(".") or len(ext) < 2]:
            raise ValueError(f"ingest.extensions must look like '.png', got {bad}")
        return tuple(ext.lower() for ext in value)

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> IngestConfig:
        if abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ValueError(f"ingest.split_fractions must sum to 1, got {self.split_fractions}")
        return self


#: Each image statistic's effect-size floor (its own units), from bench/drift_power.py: the smallest shifts that
#: cost the champion a point of accuracy move these statistics by more, natural jitter by far less.
DEFAULT_MIN_EFFECT: dict[str, float] = {"mean": 10.0, "std": 2.0, "bright": 0.012, "min": 5.0, "max": 5.0}


class DriftConfig(_Section):
    """Four detectors (image statistics, label mix, embeddings, the champion's outputs), each with thresholds
    calibrated on the reference and a floor on the size of the change."""

    features: tuple[str, ...] = Field(
        ("mean", "std", "bright", "min", "max", "label"),
        description="Manifest columns compared: 'label' by Jensen-Shannon distance, the rest by normed Wasserstein. "
        "'width' and 'height' are never drift: a new image size is reported as its own finding",
    )
    false_alarm_rate: float = Field(
        0.02, gt=0, lt=0.5,
        description="Chance that a window with no real shift is flagged; split evenly across the four detectors, "
        "then across the usable image statistics",
    )  # fmt: skip
    null_resamples: int = Field(
        1000, ge=100, description="Seeded resamples of the reference that calibrate each threshold"
    )
    min_wasserstein: float = Field(
        0.1, ge=0, description="Image statistics never fire below this normed Wasserstein (reference SDs), however "
        "large the window: a calibrated threshold alone flags trivial shifts on huge windows",
    )  # fmt: skip
    min_jensenshannon: float = Field(0.05, ge=0, description="Likewise for the label mix's Jensen-Shannon distance")
    min_effect: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_MIN_EFFECT),
        description="Effect-size floor of each image statistic in its own units (Wasserstein distance: grey levels "
        "for mean, std, min and max; share of pixels for bright): smaller changes never fire, however improbable. "
        "Defaults measured by bench/drift_power.py",
    )  # fmt: skip
    min_class_share: float = Field(
        0.05, ge=0, le=1, description="A class's share must move by at least this much (0.05: 5 points) to fire"
    )
    min_mmd: float = Field(
        0.004, ge=0, description="Embedding MMD^2 floor (median-heuristic bandwidth): smaller never fires"
    )
    outputs: bool = Field(True, description="Also compare the champion's class probabilities (black-box shift "
                          "detection: a Kolmogorov-Smirnov test on each class's probability)")  # fmt: skip
    min_output_ks: float = Field(
        0.15,
        ge=0,
        le=1,
        description="The champion's outputs fire, and its confidence counts as fallen, only when "
        "the KS distance is at least this",
    )
    embeddings: bool = Field(True, description="Also compare the champion's penultimate-layer embeddings")
    embedding_max_rows: int = Field(
        1000, ge=50, description="Rows per side for embeddings and outputs (MMD is quadratic)"
    )
    max_rows: int = Field(20_000, ge=100, description="Rows sampled per side for the manifest columns")
    seed: int = 0

    @field_validator("min_effect")
    @classmethod
    def _known_statistics(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(DEFAULT_MIN_EFFECT))
        if unknown:
            raise ValueError(f"min_effect names {unknown}; the image statistics are {sorted(DEFAULT_MIN_EFFECT)}")
        if any(v < 0 for v in value.values()):
            raise ValueError("min_effect floors must be >= 0")
        return {**DEFAULT_MIN_EFFECT, **value}


class PolicyConfig(_Section):
    min_new_images: int = Field(200, ge=1, description="Retrain when at least this many new labelled images arrived")
    retrain_on_drift: bool = True
    drift_needs_harm: bool = Field(
        True, description="Drift retrains only with evidence that it hurts: the champion's measured or estimated "
        "accuracy on the new data falls by more than max_accuracy_drop, or its confidence fell",
    )  # fmt: skip
    max_accuracy_drop: float = Field(
        0.02, ge=0, lt=1, description="Evidence of harm: the champion's accuracy on the new data is below its accuracy "
        "on its held-out rows by more than this, at 95% confidence (the drop's one-sided lower bound clears it)",
    )  # fmt: skip
    drift_windows: int = Field(1, ge=1, description="Debounce: drift must breach this many windows in a row")
    cooldown_hours: float = Field(0.0, ge=0, description="After a retrain, drift alone does not retrain for this long")
    max_model_age_days: float | None = Field(None, gt=0)
    quality_tolerance: float | None = Field(
        0.05, ge=0, description="Retrain when the champion's accuracy on new data < its recorded accuracy minus this"
    )
    retrain_on_live_drift: bool = Field(True, description="Retrain when ct_monitor saw the served images drift")
    max_estimated_drop: float | None = Field(
        0.05, ge=0, description="Retrain when the label-free estimate of live accuracy is this far below the "
        "champion's held-out accuracy (only while its calibration check passes); none: never",
    )  # fmt: skip
    max_realized_drop: float | None = Field(
        0.05, ge=0, description="Retrain when the realized accuracy of late labels is this far below the "
        "champion's held-out accuracy; none: never",
    )  # fmt: skip


#: The networks ct builds by name (:mod:`ml.model.factory`): a small CNN and torchvision's, with ``weights=None``.
BUILTIN_ARCHS = ("digits_cnn", "resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "efficientnet_b0")
#: ``package.module:function``: a user's own network (Python identifiers, dotted module, one colon).
ENTRY_POINT = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def entry_point_problem(value: str) -> str | None:
    """Why ``value`` is not a usable ``package.module:function`` here, or None; nothing is imported.

    The module must be findable on this Python path; its function is checked when the model is built
    (``python -m ml config check`` builds it at once).
    """
    if not ENTRY_POINT.match(value):
        return f"{value!r} is not an entry point like 'mypackage.models:build'"
    module = value.split(":")[0]
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:  # a parent package that does not exist or fails to import
        found, reason = None, f": {exc}"
    else:
        reason = ""
    if found is None:
        return (f"module {module!r} of {value!r} cannot be found on this Python path{reason}; install your package "
                "into ct's environment (pip install -e .) or add its folder to PYTHONPATH")  # fmt: skip
    return None


class TrainConfig(_Section):
    """How a candidate is trained: the network, where its weights start, the optimizer and when to stop."""

    arch: str = Field(
        "digits_cnn", description=f"A built-in network ({', '.join(BUILTIN_ARCHS)}); see `model` for your own"
    )
    model: str | None = Field(
        None, description="Your own network instead of `arch`: an entry point 'package.module:function' called "
        "as function(num_classes=, channels=, image_size=) that returns a torch nn.Module taking float NCHW "
        "input (already normalised by ct) and returning one logit per class",
    )  # fmt: skip
    init_weights: str | None = Field(
        None, description="Start from this state dict instead of random weights: a local path, a lake URI "
        "(file://, s3://) or an MLflow model (models:/<name>/<version>, models:/<name>@<alias>). Tensors whose "
        "name and shape match are loaded (a new head is not); nothing is downloaded",
    )  # fmt: skip
    freeze_epochs: int = Field(0, ge=0, description="Train only the head (the last Linear) for this many epochs")
    head_lr: float | None = Field(None, gt=0, description="Learning rate of the head (default: lr)")
    epochs: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD's momentum (Nesterov)")
    lr: float = Field(1e-2, gt=0, description="Peak learning rate (the backbone's, when head_lr is set)")
    scheduler: Literal["onecycle", "cosine", "step", "constant"] = Field(
        "onecycle", description="onecycle: warm up to lr then anneal, per step; cosine: anneal from lr, per step; "
        "step: multiply by step_gamma every step_epochs; constant: lr throughout",
    )  # fmt: skip
    step_epochs: int = Field(10, ge=1, description="The step scheduler's period, in epochs")
    step_gamma: float = Field(0.1, gt=0, le=1, description="The step scheduler's factor")
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop when validation accuracy has not improved for this many epochs, and keep "
        "the best epoch's weights (none: train every epoch)",
    )  # fmt: skip
    mixed_precision: Literal["bf16", "fp16", "off"] = Field(
        "bf16", description="Autocast on CUDA (fp16 with a gradient scaler); CPU training is always float32"
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = Field(None, ge=1)
    augment: Literal["translate", "resized_crop"] = Field(
        "translate", description="Per-sample crop on the device: a shift of up to `pad` pixels past the stored "
        "image, or a random-resized crop (35-100% of the area)",
    )  # fmt: skip
    pad: int = Field(2, ge=0, description="How far a translation may shift past the stored image's edge")
    flip: bool = Field(False, description="Random horizontal flips (off for digits: they are not symmetric)")
    compile: bool = Field(False, description="torch.compile the model and the augmentation")
    checkpoint_minutes: float = Field(
        10.0, ge=0, description="Checkpoint to the lake this often (0: after every step); a rerun resumes there"
    )
    resident_mb: int = Field(
        1024, ge=0, description="Keep the training set on the device as uint8 when it fits; else stream shards"
    )
    ring_shards: int = Field(4, ge=1, description="Shards shuffled together (and mapped at once) when streaming")
    loader_threads: int = Field(2, ge=1, description="Background threads that gather batches from shards")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        if value not in BUILTIN_ARCHS:
            close = difflib.get_close_matches(value, BUILTIN_ARCHS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown arch {value!r}{hint}: choose one of {', '.join(BUILTIN_ARCHS)}, or set "
                             "train.model to your own 'package.module:function'")  # fmt: skip
        return value

    @field_validator("model")
    @classmethod
    def _findable_model(cls, value: str | None) -> str | None:
        if value is not None and (problem := entry_point_problem(value)) is not None:
            raise ValueError(f"train.model: {problem}")
        return value

    @model_validator(mode="after")
    def _one_network(self) -> TrainConfig:
        if self.model is not None and self.arch != "digits_cnn":
            raise ValueError("set train.arch or train.model, not both: model replaces the built-in arch")
        if self.freeze_epochs >= self.epochs:
            raise ValueError(f"train.freeze_epochs ({self.freeze_epochs}) must be below train.epochs ({self.epochs})")
        return self

    @property
    def network(self) -> str:
        """What builds the network: a built-in name, or the user's entry point (what spec.json records)."""
        return self.model or self.arch


class GateConfig(_Section):
    primary_metric: Literal["accuracy", "macro_f1"] = "accuracy"
    margin: float = Field(0.0, ge=0, description="Candidate must beat the champion by more than this")
    alpha: float = Field(
        0.005, gt=0, lt=1, description="Error budget of one champion's reign, spent over its challengers"
    )
    recall_epsilon: float = Field(0.025, ge=0, le=1, description="Largest allowed per-class recall drop")
    guard_alpha: float = Field(
        0.5, gt=0, lt=1, description="Most a guard may veto candidates whose every class lost exactly epsilon (Holm)"
    )
    min_support: int = Field(50, ge=1, description="Classes with fewer eval rows are listed as not guarded")
    max_unguarded_drop: float | None = Field(
        None, ge=0, le=1, description="Reject any observed recall drop above this on a class that is not guarded"
    )
    floor_accuracy: float = Field(0.8, ge=0, le=1, description="Absolute floor for the first model")
    eval_recent_batches: int = Field(3, ge=1, description="Test splits of this many newest batches form the eval set")
    golden_set: str | None = Field(
        None, description="Lake prefix of a frozen eval set (golden/<name>), added to the rows"
    )
    bootstrap_samples: int = Field(2000, ge=100, description="Paired bootstrap resamples for non-accuracy metrics")
    bootstrap_seed: int = 0
    max_latency_p95_ms: float | None = Field(None, gt=0, description="Budget: CPU p95 latency per eval batch")
    max_size_mb: float | None = Field(None, gt=0, description="Budget: parameters plus buffers, in MB")
    latency_batch_size: int = Field(64, ge=1)
    max_reevaluations: int = Field(
        3, ge=0, description="When @champion moves during a gate, re-score the new one on the same rows this often"
    )
    require_approval: bool = Field(
        False, description="A live promote waits for an approver's answer in Airflow before @champion moves"
    )
    approvers: tuple[str, ...] = Field(
        (), description="Airflow users who may answer an approval; empty: anyone the DAG's permissions allow"
    )
    approval_timeout_hours: float = Field(
        24.0, gt=0, description="An approval nobody answers in this long expires; the champion stays"
    )


class HistoryConfig(_Section):
    batch_time: Literal["event", "ingested"] = Field(
        "event", description="When a curated batch counts as available to a run: `event` is the time its producer "
        "stated in _COMMITTED (else when ct curated it), `ingested` is always when ct curated it",
    )  # fmt: skip


class ServeConfig(_Section):
    """The prediction service (``python -m ml serve``): it follows ``@champion`` and logs what it serves."""

    host: str = Field("127.0.0.1", description="Where the service listens (loopback unless you expose it)")
    port: int = Field(5002, ge=1, le=65535, description="Its port (make up: SERVE_PORT)")
    poll_seconds: float = Field(5.0, gt=0, description="How often it reads @champion from the registry")
    retry_seconds: float = Field(60.0, gt=0, description="How long a version that failed to load waits for a retry")
    threads: int | None = Field(None, ge=1, description="ONNX Runtime threads per model (none: its default)")
    keep_images: bool = Field(False, description="Also keep each served image in the lake (predictions/images/)")
    log_flush_rows: int = Field(1000, ge=1, description="Write the prediction log once this many rows wait")
    log_flush_seconds: float = Field(60.0, gt=0, description="... or once the oldest waiting row is this old")
    log_max_rows: int = Field(
        100_000, ge=1, description="Rows held while the lake cannot be written; beyond, the oldest are dropped "
        "(counted and alerted on)",
    )  # fmt: skip


class MonitorConfig(_Section):
    """What ``ct_monitor`` reads of the prediction log, and how much it needs before it judges."""

    window_hours: float = Field(
        24.0, gt=0, description="Served images compared with the champion's data: the last hours"
    )
    min_rows: int = Field(200, ge=20, description="Served images needed before live drift or the estimate is judged")
    feedback_days: float = Field(14.0, gt=0, description="How far back predictions are joined to late labels")
    min_feedback_rows: int = Field(50, ge=1, description="Late labels of the champion needed before its realized "
                                   "accuracy is judged")  # fmt: skip
    calibration_bins: int = Field(10, ge=2, le=50, description="Confidence bins of the accuracy estimate's calibration")
    max_calibration_error: float = Field(
        0.05, gt=0, lt=1, description="The estimate counts only if, on held-out rows the calibration did not see, "
        "its expected calibration error is at most this",
    )  # fmt: skip


class KubernetesConfig(_Section):
    namespace: str = "ct"
    image: str = "ct-trainer:latest"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: str = "ct-trainer"
    kubernetes_conn_id: str = "kubernetes_default"
    gpu_steps: tuple[str, ...] = ("train", "evaluate")
    gpu_resource: str = "nvidia.com/gpu"
    gpu_count: int = Field(1, ge=1, description="GPUs per GPU step; above 1, train runs DDP under torchrun")
    shm_size: str = Field("8Gi", description="Memory-backed /dev/shm of a multi-GPU training pod")
    cpu_request: str = "1"
    memory_request: str = "4Gi"
    memory_limit: str = "16Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    env_from_secrets: tuple[str, ...] = Field((), description="Secrets whose keys become env vars (S3, MLflow)")
    startup_timeout_seconds: int = Field(600, ge=1)
    xcom_sidecar_image: str = Field(
        "alpine:3.24.2",
        description="Image of the sidecar that hands a step's JSON result back (pinned; mirror it for air-gapped "
        "clusters). Empty: the Kubernetes connection's xcom_sidecar_container_image, else the provider's default",
    )
    logging_interval_seconds: int | None = Field(
        30,
        ge=1,
        description="How often the triggerer copies a running pod's new log lines into the task log; "
        "none: only once the pod has finished",
    )


class Settings(_Section):
    """Everything a step or a DAG needs to know about where things live and how to decide."""

    profile: Literal["embedded", "compose", "kubernetes"] = "embedded"
    home: Path = Field(default_factory=lambda: Path(".ct").resolve())
    lake_uri: str = ""
    mlflow_tracking_uri: str = ""
    mlflow_artifact_uri: str = ""
    mlflow_ui_url: str = Field("http://127.0.0.1:5000", description="Where people open MLflow (for links)")
    dashboard_url: str = Field(
        "http://127.0.0.1:8080/ct", description="Where people open the ct dashboard (links in MLflow's tags)"
    )
    experiment: str = "ct"
    model_name: str = "ct-classifier"
    labels: tuple[str, ...] = tuple(str(d) for d in range(10))
    runner: Literal["local", "kubernetes"] = "local"
    allow_pickled_models: bool = Field(
        False, description="Also load model versions stored as pickles (registered before ct stored weights); "
        "unpickling runs code from the artifact store",
    )  # fmt: skip
    image: ImageConfig = ImageConfig()
    ingest: IngestConfig = IngestConfig()
    drift: DriftConfig = DriftConfig()
    policy: PolicyConfig = PolicyConfig()
    train: TrainConfig = TrainConfig()
    gate: GateConfig = GateConfig()
    history: HistoryConfig = HistoryConfig()
    serve: ServeConfig = ServeConfig()
    monitor: MonitorConfig = MonitorConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()

    @model_validator(mode="after")
    def _derive_embedded_locations(self) -> Settings:
        # Frozen model: fill the derived defaults through object.__setattr__ once, at validation.
        home = self.home.expanduser().resolve()
        object.__setattr__(self, "home", home)
        if not self.lake_uri:
            object.__setattr__(self, "lake_uri", (home / "lake").as_uri())
        if not self.mlflow_tracking_uri:
            # The embedded profile's own PostgreSQL (ct_airflow.launcher.postgres starts it); SQLite only by choice.
            object.__setattr__(self, "mlflow_tracking_uri", embedded_database_uri(home, "mlflow"))
        if not self.mlflow_artifact_uri and not self.mlflow_tracking_uri.startswith(("http://", "https://")):
            # A local store gets a local artifact root; a tracking server decides (and proxies) its own.
            object.__setattr__(self, "mlflow_artifact_uri", (home / "mlartifacts").as_uri())
        if len(set(self.labels)) != len(self.labels) or len(self.labels) < 2:
            raise ValueError(f"labels must be at least two distinct names, got {list(self.labels)}")
        if self.ingest.max_rows < self.ingest.min_rows:
            raise ValueError("ingest.max_rows must be >= ingest.min_rows")
        return self

    def to_json(self) -> str:
        """Serialise for ``CT_CONFIG_JSON``: how the same configuration reaches a pod."""
        return self.model_dump_json()


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, _Section)


#: Top-level fields that ``CT_<FIELD>`` sets, derived from :class:`Settings` so that none is forgotten.
TOP_LEVEL_ENV = tuple(name for name, field in Settings.model_fields.items() if not _is_section(field.annotation))


def _field_annotation(path: list[str]) -> Any:
    """The type of the setting at ``path`` (e.g. ``["ingest", "extensions"]``), or None if there is none."""
    model: Any = Settings
    for part in path[:-1]:
        field = model.model_fields.get(part)
        if field is None or not _is_section(field.annotation):
            return None
        model = field.annotation
    field = model.model_fields.get(path[-1])
    return field.annotation if field is not None else None


def _env_value(path: list[str], raw: str) -> Any:
    """Scalars stay strings (pydantic coerces them); ``[...]``/``{...}`` is YAML; a list field also takes ``a,b,c``."""
    if raw.lstrip().startswith(("[", "{")):
        return yaml.safe_load(raw)
    if get_origin(_field_annotation(path)) in (tuple, list):
        return [part.strip() for part in raw.split(",")] if raw.strip() else []
    return raw


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in NOT_CONFIG_ENV:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if len(path) == 1 and path[0] not in TOP_LEVEL_ENV:
            # Not a setting: ignored, but said, so that CT_LABEL=... or CT_LAKEURI=... does not pass silently.
            log.warning("ignoring %s: not a ct setting (top-level settings: %s)", name, ", ".join(TOP_LEVEL_ENV))
            continue
        value = _env_value(path, raw)
        node = overrides
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return overrides


def _file_layer(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings ``CT_CONFIG_JSON`` or the ``CT_CONFIG`` file gives (empty: the embedded defaults)."""
    if env.get("CT_CONFIG_JSON"):
        data = json.loads(env["CT_CONFIG_JSON"])
    elif env.get("CT_CONFIG"):
        path = Path(env["CT_CONFIG"])
        if not path.is_file():
            raise ConfigError(f"CT_CONFIG={path} does not exist; unset it to use the embedded defaults")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    else:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{env.get('CT_CONFIG') or 'CT_CONFIG_JSON'} must hold a mapping at the top level")
    return data


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from the file named in the environment plus ``CT_*`` overrides."""
    env = os.environ if environ is None else environ
    data = _deep_merge(_file_layer(env), _env_overrides(env))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        where = env.get("CT_CONFIG") or "the environment"
        raise ConfigError(f"invalid ct configuration ({where}):\n{explain(exc)}") from exc


def explain(exc: ValidationError) -> str:
    """One line per refused setting: its dotted name, what is wrong, and the value given."""
    lines = []
    for error in exc.errors(include_url=False):
        name = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = str(error["msg"]).removeprefix("Value error, ")
        given = f" (given: {error['input']!r})" if not isinstance(error.get("input"), dict) else ""
        lines.append(f"  {name}: {message}{given}")
    return "\n".join(lines)


def _leaves(data: Mapping[str, Any], prefix: str = "") -> set[str]:
    found = set()
    for key, value in data.items():
        name = f"{prefix}{key}"
        found |= _leaves(value, f"{name}.") if isinstance(value, Mapping) and value else {name}
    return found


def effective_settings(environ: Mapping[str, str] | None = None) -> list[tuple[str, Any, str]]:
    """Every setting as (dotted name, effective value, source): ``default``, ``file`` or ``environment``.

    What ``python -m ml config show`` prints. Values derived from others (the lake and MLflow
    locations under ``home``) count as defaults.
    """
    env = os.environ if environ is None else environ
    settings = load_settings(env)
    from_file, from_env = _leaves(_file_layer(env)), _leaves(_env_overrides(env))
    dumped = settings.model_dump(mode="json")
    rows = []
    for name in sorted(_leaves(dumped)):
        value: Any = dumped
        for part in name.split("."):
            value = value[part]
        source = "environment" if name in from_env else "file" if name in from_file else "default"
        rows.append((name, value, source))
    return rows


#: The sections a replay (a backfill run's ``{"settings": {...}}``) may change: how ct decides and trains,
#: never where things live or how they are stored.
REPLAY_SECTIONS = ("policy", "gate", "drift", "train")
#: What a decision depends on besides the data: the replay's fingerprint covers these.
DECISION_SECTIONS = (*REPLAY_SECTIONS, "image", "labels", "history")


def apply_overrides(settings: Settings, overrides: Mapping[str, Any] | None) -> Settings:
    """``settings`` with a replay's ``overrides`` merged in, validated like ``ct.yaml``.

    Only :data:`REPLAY_SECTIONS` may be changed; anything else, or a bad value, raises
    :class:`ConfigError` with the field's name.
    """
    if not overrides:
        return settings
    if not isinstance(overrides, Mapping):
        raise ConfigError(
            f"settings overrides must be a mapping like {{'gate': {{'margin': 0.01}}}}, got {overrides!r}"
        )
    unknown = sorted(set(overrides) - set(REPLAY_SECTIONS))
    if unknown:
        raise ConfigError(
            f"settings overrides may change only {', '.join(REPLAY_SECTIONS)}; not {', '.join(map(repr, unknown))}"
        )
    for section, values in overrides.items():
        if not isinstance(values, Mapping):
            raise ConfigError(f"settings overrides: {section} must be a mapping of its fields, got {values!r}")
    try:
        return Settings.model_validate(_deep_merge(settings.model_dump(), overrides))
    except ValidationError as exc:
        raise ConfigError(f"invalid settings override:\n{explain(exc)}") from exc


def decision_digest(settings: Settings, force_retrain: bool = False) -> str:
    """A short, stable digest of everything a retrain decision depends on besides the data.

    Two backfill runs of one date with the same digest would decide the same; a new digest (another
    override, ``force_retrain``, a changed ``ct.yaml``) is a new replay, recorded beside the earlier one.
    """
    dumped = settings.model_dump(mode="json", include=set(DECISION_SECTIONS))
    payload = json.dumps({"settings": dumped, "force_retrain": bool(force_retrain)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:10]
