"""Package a ct model folder as a standard MLflow model: the ``python_function`` flavor, no pickle.

:func:`save` writes an MLflow model folder around ct's own files:

* ``MLmodel``, with the python_function flavor loaded from code (``ml/model/mlflow_entry.py``),
  the signature (input: a column ``image`` of encoded image files; output: ``label``,
  ``probability`` and ``p_<label>`` per class) and an input example;
* ``code/ml/...``: the few modules the served form runs (:mod:`ml.model.pyfunc` and the
  preprocessing it shares with ingest and evaluation), copied as they are in this checkout;
* ``artifacts/ct/``: ``spec.json``, ``weights.pt`` and ``model.onnx`` with their hashes, which ct's
  own loader reads (:func:`ml.model.artifact.locate`);
* ``requirements.txt``, ``python_env.yaml``: the packages the served form imports, pinned as the
  lock pins them.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

import ml

log = logging.getLogger(__name__)

ML_ROOT = Path(ml.__file__).resolve().parent
ENTRY = ML_ROOT / "model" / "mlflow_entry.py"
#: What the served form imports from ct: copied into the model's code folder, the package layout kept.
SERVED_MODULES = ("__init__.py", "model/__init__.py", "model/preprocess.py", "model/pyfunc.py")
#: The distributions the served form imports (MLflow loads it, so MLflow itself is one).
SERVED_PACKAGES = ("mlflow", "numpy", "pandas", "pillow", "onnxruntime")
LOCK = ML_ROOT.parent / "requirements.lock"


def requirements(lock: Path = LOCK) -> list[str]:
    """The served form's packages pinned as ``requirements.lock`` pins them (else as installed: the lock's versions)."""
    pins: dict[str, str] = {}
    if lock.is_file():
        for line in lock.read_text().splitlines():
            name, sep, version = line.split("#")[0].strip().partition("==")
            if sep:
                pins[name.strip().lower()] = version.strip()
    return [f"{name}=={pins.get(name) or metadata.version(name)}" for name in SERVED_PACKAGES]


def example_image(store_size: int, channels: int) -> bytes:
    """A PNG the model accepts: mid-grey at the stored size (the input example MLflow keeps and checks)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L" if channels == 1 else "RGB", (store_size, store_size), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def signature(labels: tuple[str, ...]) -> object:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    from ml.model.pyfunc import IMAGE, LABEL, PROBABILITY, class_column

    outputs: list[Any] = [ColSpec("string", LABEL), ColSpec("double", PROBABILITY)]
    outputs += [ColSpec("double", class_column(label)) for label in labels]
    return ModelSignature(inputs=Schema([ColSpec("binary", IMAGE)]), outputs=Schema(outputs))


def _stage_code(into: Path) -> Path:
    """The served modules, laid out as the ``ml`` package, under ``into``."""
    package = into / "ml"
    for name in SERVED_MODULES:
        target = package / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ML_ROOT / name, target)
    return package


def save(ct_model: Path, dest: Path) -> None:
    """Write the MLflow model for the ct model in ``ct_model`` to ``dest`` (which must not exist or be empty)."""
    import json

    import mlflow.pyfunc
    import pandas as pd

    from ml.model.pyfunc import CT_ARTIFACT

    spec = json.loads((ct_model / "spec.json").read_text())
    pipeline = spec.get("preprocessing") or {}
    example = example_image(int(pipeline.get("store_size", spec["image_size"])), int(spec["channels"]))
    with tempfile.TemporaryDirectory(prefix="ct-code-") as staging:
        mlflow.pyfunc.save_model(
            path=str(dest),
            python_model=str(ENTRY),
            artifacts={CT_ARTIFACT: str(ct_model)},  # MLflow copies it to artifacts/ct: artifact.IN_MLFLOW_MODEL
            code_paths=[str(_stage_code(Path(staging)))],
            signature=signature(tuple(spec["labels"])),
            input_example=pd.DataFrame({"image": [example]}),
            pip_requirements=requirements(),
        )
    log.info("MLflow model written to %s (python_function, ONNX Runtime, %d labels)", dest, len(spec["labels"]))


#: Two classes whose served probabilities are this close are a tie: either label is the model's answer.
TIE_PROBABILITY = 2e-3


def served_parity(
    folder: Path, stored: Iterable[np.ndarray], expected: np.ndarray, labels: tuple[str, ...]
) -> dict[str, Any]:
    """Serve the evaluation rows through the MLflow model in ``folder`` and compare its labels with ``expected``.

    Each stored row (uint8 HWC at the stored size, as ingest wrote it) is encoded as a PNG, a lossless
    file that decodes to the same pixels, and goes through what a client's request goes through:
    MLflow's loader, the served preprocessing, ONNX Runtime. A row whose label differs from the
    evaluate step's counts against it unless the served top two probabilities are a tie.
    """
    import mlflow.pyfunc
    import pandas as pd

    from ml.model.pyfunc import class_column

    model = mlflow.pyfunc.load_model(str(folder))
    names = np.asarray(labels, dtype=object)
    rows = disagree = ties = 0
    for images in stored:
        served = model.predict(pd.DataFrame({"image": [png(image) for image in images]}))
        probabilities = served[[class_column(label) for label in labels]].to_numpy()
        top2 = np.sort(probabilities, axis=1)[:, -2:] if probabilities.shape[1] > 1 else np.zeros((len(images), 2))
        want = expected[rows : rows + len(images)]
        differ = served["label"].to_numpy() != names[want]
        tie = (top2[:, 1] - top2[:, 0]) <= TIE_PROBABILITY
        disagree += int((differ & ~tie).sum())
        ties += int((differ & tie).sum())
        rows += len(images)
    return {"rows": rows, "label_disagreements": disagree, "ties": ties, "passed": rows > 0 and disagree == 0}


def png(image: np.ndarray) -> bytes:
    """A uint8 HWC array (1 or 3 channels) as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
