"""The served form of a stored model: an MLflow ``python_function`` that takes encoded image files.

:class:`ImageClassifier` reads a ct model folder (``spec.json`` and ``model.onnx``, hashes checked),
turns each image file into the model's input with :mod:`ml.model.preprocess` (the code ingest and
evaluation use), runs the ONNX graph with ONNX Runtime and answers, per image, the ``label``, its
``probability`` and one ``p_<label>`` column per class. It needs numpy, pandas, Pillow, onnxruntime
and MLflow; never torch.

MLflow loads it as "models from code": ``ml/model/mlflow_entry.py`` is the file stored with each
version, and this package travels beside it in the model's ``code/`` folder, so nothing is pickled
and a server without ct installed (``mlflow models serve``, KServe's or Seldon's MLflow runtime) runs
the same code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from ml.model.preprocess import Preprocessing

log = logging.getLogger(__name__)

IMAGE, LABEL, PROBABILITY, CLASS_PREFIX = "image", "label", "probability", "p_"
CT_ARTIFACT = "ct"  # the artifacts key of the folder that holds spec.json, weights.pt and model.onnx
SPEC, ONNX = "spec.json", "model.onnx"
CHUNK = 64  # images per ONNX Runtime call: bounds the memory of one large request


class ServedModelError(ValueError):
    """A request the model cannot answer (an undecodable image, a missing ``image`` column), or a bad folder."""


def class_column(label: str) -> str:
    return f"{CLASS_PREFIX}{label}"


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def as_bytes(value: Any, row: int) -> bytes:
    """One cell of the ``image`` column as the file's bytes: raw bytes, or base64 text (JSON requests)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ServedModelError(f"row {row}: the image is text but not base64 ({exc})") from exc
    raise ServedModelError(f"row {row}: the image is a {type(value).__name__}; send the file's bytes (base64 in JSON)")


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class ImageClassifier(PythonModel):
    """Encoded images in, ``label``, ``probability`` and ``p_<label>`` out; ONNX Runtime underneath."""

    def load_context(self, context: Any) -> None:
        self.load(Path(context.artifacts[CT_ARTIFACT]))

    def load(self, folder: Path, threads: int | None = None) -> ImageClassifier:
        """Read the model from a ct folder; its ONNX file must be the one ``spec.json`` names."""
        import onnxruntime

        try:
            record = json.loads((folder / SPEC).read_text())
        except (OSError, ValueError) as exc:
            raise ServedModelError(f"{folder / SPEC} is not readable: {exc}") from exc
        onnx_path, expected = folder / ONNX, (record.get("files") or {}).get(ONNX)
        if expected is None or not onnx_path.is_file():
            raise ServedModelError(f"{folder} has no {ONNX} named by its spec: it cannot be served")
        if _sha256(onnx_path) != expected:
            raise ServedModelError(
                f"{onnx_path} is not the file its spec names (SHA-256 differs): refusing to serve it"
            )
        self.labels = tuple(str(x) for x in record["labels"])
        self.pipeline = Preprocessing.from_dict(
            record.get("preprocessing"), int(record["image_size"]), int(record["channels"])
        )
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        return self

    def probabilities(self, images: Sequence[bytes], decoded: list[Any] | None = None) -> np.ndarray:
        """Class probabilities (rows x classes) of encoded image files, in order.

        ``decoded``, if given, receives each image as decoded (upright, in the model's colour mode),
        for a caller that also describes the images (the prediction log) without decoding them twice.
        """
        out = np.zeros((len(images), len(self.labels)), np.float32)
        for start in range(0, len(images), CHUNK):
            rows = []
            for offset, data in enumerate(images[start : start + CHUNK]):
                try:
                    image = self.pipeline.decoded(data)
                    rows.append(self.pipeline.input_of(image))
                except Exception as exc:  # PIL raises many types for a bad file; the caller needs which row
                    raise ServedModelError(f"row {start + offset}: not an image this model can read ({exc})") from exc
                if decoded is not None:
                    decoded.append(image)
            out[start : start + len(rows)] = self.run(np.stack(rows))
        return out

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Class probabilities of model inputs (float32 NCHW in [0, 1], as :mod:`ml.model.preprocess` makes them)."""
        logits = self.session.run(["logits"], {"images": inputs})[0]
        return softmax(logits.astype(np.float64)).astype(np.float32)

    def columns(self, probabilities: np.ndarray) -> dict[str, Any]:
        """The answer's columns, in order: label, its probability, then one column per class."""
        best = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, np.int64)
        table = probabilities.astype(np.float64)
        found: dict[str, Any] = {LABEL: [self.labels[i] for i in best], PROBABILITY: table[np.arange(len(best)), best]}
        found.update({class_column(label): table[:, position] for position, label in enumerate(self.labels)})
        return found

    def answer(self, probabilities: np.ndarray) -> pd.DataFrame:
        """The response frame (built at once: column by column, pandas takes milliseconds)."""
        return pd.DataFrame(self.columns(probabilities))

    # No annotations on the inputs: MLflow reads them as the model's signature, and this one is set explicitly.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        if isinstance(model_input, pd.DataFrame):
            if IMAGE not in model_input.columns:
                raise ServedModelError(f"the request has no {IMAGE!r} column (it has {list(model_input.columns)})")
            cells = model_input[IMAGE].tolist()
        elif isinstance(model_input, dict) and IMAGE in model_input:
            cells = list(model_input[IMAGE])
        else:
            raise ServedModelError(f"send a table with an {IMAGE!r} column of encoded images")
        return self.answer(self.probabilities([as_bytes(cell, row) for row, cell in enumerate(cells)]))
