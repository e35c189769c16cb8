"""Start training from weights the user brings (``train.init_weights``) instead of random ones.

The source is a state dict, read with ``weights_only=True`` (tensors and plain containers only,
never a pickled object), from:

* a local path: a ``.pt``/``.pth`` file, or a model folder ct stored (``spec.json`` + ``weights.pt``);
* a lake URI (``file://...``, ``s3://bucket/key``);
* an MLflow model: ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` (a previous champion).

Nothing is downloaded from the internet. Tensors are matched to the network by name and shape: a
torchvision file (``conv1.weight``) matches ct's backbone (``1.conv1.weight``) as well as a ct model
does. A tensor whose shape differs (a head for other classes) keeps its fresh initialisation and is
listed. The normalisation buffers always come from the configuration. If nothing matches, the
file is for another network and the step is refused, as it is when the source does not exist.
The file's SHA-256 goes into the run's lineage (MLflow tags, the model version, the fingerprint of
its checkpoints).
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml.config import Settings
from ml.errors import ConfigError
from ml.storage import Lake

log = logging.getLogger(__name__)

_NORMALISE = ("0.mean", "0.std")  # ct's first module: its values come from image.mean/std, never a file
_NESTED = ("state_dict", "model", "model_state_dict")  # common checkpoint layouts around a state dict


@dataclass(frozen=True)
class InitWeights:
    """A state dict to start from, and where it came from."""

    source: str
    sha256: str
    state: dict[str, Any] = field(repr=False)

    def lineage(self) -> dict[str, str]:
        return {"ct.init_weights": self.source[:500], "ct.init_weights.sha256": self.sha256}


def _local_bytes(path: Path, source: str) -> bytes:
    from ml.model.artifact import locate

    if path.is_dir():
        path = locate(path) or path  # a downloaded MLflow model keeps ct's files under artifacts/ct
        if not (path / "weights.pt").is_file():
            raise ConfigError(f"train.init_weights={source}: the folder has no weights.pt (a model ct stored has "
                              "spec.json and weights.pt); point it at a .pt file or such a folder")  # fmt: skip
        path = path / "weights.pt"
    if not path.is_file():
        raise ConfigError(f"train.init_weights={source}: no such file. Bring the weights file onto this machine "
                          "(nothing is downloaded), or unset train.init_weights to train from scratch")  # fmt: skip
    return path.read_bytes()


def _lake_bytes(source: str) -> bytes:
    parent, _, name = source.rstrip("/").rpartition("/")
    lake = Lake.from_uri(parent)
    if lake.exists(name):
        return lake.read_bytes(name)
    if lake.exists(f"{name}/weights.pt"):
        return lake.read_bytes(f"{name}/weights.pt")
    raise ConfigError(f"train.init_weights={source}: no such object (nor {name}/weights.pt) in {parent}")


def _mlflow_bytes(settings: Settings, source: str) -> bytes:
    import mlflow
    from mlflow.exceptions import MlflowException

    from ml.release import registry

    registry.client(settings)  # points MLflow at ct's tracking server and registry
    with tempfile.TemporaryDirectory(prefix="ct-init-") as tmp:
        try:
            folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp))
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" not in str(exc.error_code) and "not found" not in str(exc).lower():
                raise
            raise ConfigError(f"train.init_weights={source}: MLflow has no such model ({exc.message})") from exc
        return _local_bytes(folder, source)


def read_state(raw: bytes, source: str) -> dict[str, Any]:
    """The state dict in ``raw`` (a bare one, or nested under state_dict/model), loaded without unpickling objects."""
    import torch

    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses any global it does not know: never run it
        raise ConfigError(f"train.init_weights={source} is not a weights-only state dict: {exc}") from exc
    for key in _NESTED:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"train.init_weights={source} holds no tensors by name (a state dict is expected)")
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def resolve(settings: Settings, source: str) -> InitWeights:
    """Read ``source`` (see the module docstring) into an :class:`InitWeights`; a missing source is a ConfigError."""
    if source.startswith("models:/"):
        raw = _mlflow_bytes(settings, source)
    elif "://" in source:
        raw = _lake_bytes(source)
    else:
        raw = _local_bytes(Path(source).expanduser(), source)
    return InitWeights(source, hashlib.sha256(raw).hexdigest(), read_state(raw, source))


def apply(model: Any, init: InitWeights) -> dict[str, Any]:
    """Copy the matching tensors of ``init`` into ``model``; returns what was loaded and what was not."""
    own = {k: v for k, v in model.state_dict().items() if k not in _NORMALISE}
    best: dict[str, Any] = {}
    for prefix in ("", "1."):  # a ct model's names, or a bare backbone's (torchvision, the user's module)
        renamed = {prefix + k: v for k, v in init.state.items()}
        matched = {k: v for k, v in renamed.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        if len(matched) > len(best):
            best = matched
    if not best:
        sample = ", ".join(list(init.state)[:3])
        raise ConfigError(f"train.init_weights={init.source} matches none of the network's tensors by name and "
                          f"shape (it holds {sample}, ...): it was saved from another network")  # fmt: skip
    model.load_state_dict(best, strict=False)
    fresh = sorted(k for k in own if k not in best)
    log.info("init_weights: loaded %d of %d tensors from %s; fresh: %s", len(best), len(own), init.source,
             ", ".join(fresh[:8]) or "none")  # fmt: skip
    return {"source": init.source, "sha256": init.sha256, "loaded": len(best), "tensors": len(own), "fresh": fresh}
