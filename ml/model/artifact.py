"""The model on disk: weights plus an architecture spec, never a pickle, and an ONNX twin for serving.

A stored model is a folder of three files:

* ``spec.json``: the format tag, the network (``arch``: a built-in name or the user's entry point
  ``package.module:function``), ``channels``, ``num_classes``, the label names, the input size, the
  whole preprocessing from file to tensor (:class:`ml.model.preprocess.Preprocessing`) and the
  SHA-256 of the two other files;
* ``weights.pt``: the ``state_dict``, written by ``torch.save`` and read back with
  ``weights_only=True``, whose unpickler builds tensors and plain containers and refuses anything
  else (no class, no callable);
* ``model.onnx``: the same network exported to ONNX, input ``images`` (float32 NCHW in [0, 1], any
  batch size), output ``logits``. This is the file a serving team takes.

:mod:`ml.learn.mlmodel` wraps the folder in a standard MLflow model (it sits under
``artifacts/ct`` there, :func:`locate` finds it); the served form is :mod:`ml.model.pyfunc`.

:func:`load` rebuilds the network through the model factory and loads the weights into it; it
checks both hashes first, so a file swapped in the artifact store is refused before it is parsed.

:func:`onnx_parity` runs both on the same rows. Its tolerance is relative to the largest logit:
both sides compute in float32 on the CPU and differ only in the order of their sums, which moves a
logit by a few units in the last place per layer (about 1e-6 of its scale through a ResNet-18; the
benchmark and the tests print what they measured). ``PARITY_RTOL = 1e-3`` is 100 times that, and
still 100 times smaller than the gap a wrong export makes (a dropped normalisation or a swapped
channel order moves logits by their whole scale). A row whose predicted class differs is a failure
unless the torch model's top two logits are within the tolerance of each other (a tie).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ml.model.factory import build_model
from ml.model.preprocess import Preprocessing, to_input
from ml.training.shards import sha256_file

FORMAT = "ct.weights/1"
SPEC, WEIGHTS, ONNX = "spec.json", "weights.pt", "model.onnx"
IN_MLFLOW_MODEL = "artifacts/ct"  # where an MLflow model (ml.learn.mlmodel) keeps these files
ONNX_OPSET = 17
PARITY_RTOL = 1e-3


class ModelFileError(ValueError):
    """A stored model is not in ct's format, or its files are not the ones the spec names."""


@dataclass(frozen=True)
class ModelSpec:
    """What the factory needs to rebuild the network, and what the network expects as input."""

    arch: str  # a built-in name, or the entry point 'package.module:function' that builds it
    channels: int
    num_classes: int
    image_size: int
    labels: tuple[str, ...]
    preprocessing: Preprocessing | None = None  # None: the image squashed to image_size (specs before ct recorded it)

    def __post_init__(self) -> None:
        if self.preprocessing is None:
            object.__setattr__(self, "preprocessing", Preprocessing.from_dict(None, self.image_size, self.channels))

    @property
    def pipeline(self) -> Preprocessing:
        assert self.preprocessing is not None  # set by __post_init__
        return self.preprocessing

    def build(self) -> nn.Module:
        pipeline = self.pipeline
        return build_model(self.arch, self.channels, self.num_classes, self.image_size, pipeline.mean, pipeline.std)

    def example(self, rows: int = 2) -> torch.Tensor:
        return torch.zeros(rows, self.channels, self.image_size, self.image_size)


def save(model: nn.Module, spec: ModelSpec, folder: Path, onnx: bool = True) -> dict[str, Any]:
    """Write ``model`` as weights + spec (+ ONNX) into ``folder``; returns the spec as written."""
    folder.mkdir(parents=True, exist_ok=True)
    model = model.to("cpu").eval()
    torch.save({k: v.detach().contiguous() for k, v in model.state_dict().items()}, folder / WEIGHTS)
    files = {WEIGHTS: sha256_file(folder / WEIGHTS)}
    if onnx:
        export_onnx(model, spec, folder / ONNX)
        files[ONNX] = sha256_file(folder / ONNX)
    record = {
        "format": FORMAT,
        **{k: v for k, v in asdict(spec).items() if k != "preprocessing"},
        "labels": list(spec.labels),
        "preprocessing": spec.pipeline.to_dict(),
        "input": {"name": "images", "dtype": "float32", "layout": "NCHW", "range": [0.0, 1.0]},
        "output": {"name": "logits", "dtype": "float32"},
        "files": files,
        "torch": torch.__version__,
    }
    (folder / SPEC).write_text(json.dumps(record, indent=2, sort_keys=True))
    return record


def locate(folder: Path) -> Path | None:
    """Where ct's files are in a downloaded version: ``artifacts/ct`` of an MLflow model, or the root
    (versions registered before ct wrote an ``MLmodel``); None when neither holds a spec."""
    for candidate in (folder / IN_MLFLOW_MODEL, folder):
        if (candidate / SPEC).is_file():
            return candidate
    return None


def read_spec(folder: Path) -> dict[str, Any]:
    path = folder / SPEC
    if not path.is_file():
        raise ModelFileError(f"{folder} has no {SPEC}: it is not a model stored by ct")
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else None
        raise ModelFileError(f"{path} has format {found!r}; this ct reads {FORMAT!r}")
    return record


def _checked(folder: Path, record: dict[str, Any], name: str) -> Path:
    path = folder / name
    expected = (record.get("files") or {}).get(name)
    if not path.is_file() or expected is None:
        raise ModelFileError(f"{folder} lacks {name}, which its spec should name")
    if sha256_file(path) != expected:
        raise ModelFileError(f"{path} is not the file its spec names (SHA-256 differs): refusing to load it")
    return path


def load(folder: Path) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the network from its spec and load its weights; nothing in the folder is unpickled."""
    record = read_spec(folder)
    spec = ModelSpec(
        arch=str(record["arch"]),
        channels=int(record["channels"]),
        num_classes=int(record["num_classes"]),
        image_size=int(record["image_size"]),
        labels=tuple(str(x) for x in record["labels"]),
        preprocessing=Preprocessing.from_dict(
            record.get("preprocessing"), int(record["image_size"]), int(record["channels"])
        ),
    )
    path = _checked(folder, record, WEIGHTS)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses any global it does not know: never run it
        raise ModelFileError(f"{path} holds more than tensors; refusing to load it: {exc}") from exc
    model = spec.build()
    model.load_state_dict(state, strict=True)
    return model.eval(), spec


def export_onnx(model: nn.Module, spec: ModelSpec, path: Path) -> None:
    """ONNX with a free batch dimension; TorchScript tracing (fast, and enough for feed-forward CNNs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter announces its successor on every call
        torch.onnx.export(
            model.to("cpu").eval(),
            (spec.example(),),
            str(path),
            dynamo=False,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET,
        )


def onnx_parity(folder: Path, model: nn.Module, batches: Iterable[np.ndarray]) -> dict[str, Any]:
    """Run the ONNX file and the torch model on the same uint8 NHWC batches; compare their logits."""
    import onnxruntime

    record = read_spec(folder)
    session = onnxruntime.InferenceSession(str(_checked(folder, record, ONNX)), providers=["CPUExecutionProvider"])
    model = model.to("cpu").eval()
    rows, max_diff, scale, disagree = 0, 0.0, 0.0, 0
    with torch.inference_mode():
        for images in batches:
            x = to_input(images)
            expected = model(torch.from_numpy(x)).numpy()
            got = session.run(["logits"], {"images": x})[0]
            max_diff = max(max_diff, float(np.abs(got - expected).max(initial=0.0)))
            scale = max(scale, float(np.abs(expected).max(initial=0.0)))
            top2 = np.sort(expected, axis=1)[:, -2:] if expected.shape[1] > 1 else np.zeros((len(x), 2))
            clear = (top2[:, 1] - top2[:, 0]) > 2 * PARITY_RTOL * max(1.0, float(np.abs(expected).max(initial=0.0)))
            disagree += int(((got.argmax(1) != expected.argmax(1)) & clear).sum())
            rows += len(x)
    tolerance = PARITY_RTOL * max(1.0, scale)
    return {
        "rows": rows,
        "max_abs_logit_diff": max_diff,
        "max_abs_logit": scale,
        "tolerance": tolerance,
        "rtol": PARITY_RTOL,
        "argmax_disagreements": disagree,
        "passed": rows > 0 and max_diff <= tolerance and disagree == 0,
    }
