"""The layering rules, read from the source: ``ml/`` never imports Airflow, and the training core
(``ml/model/``, ``ml/training/``) imports only torch, torchvision, numpy, Pillow, ct's errors and
itself, so that it runs on a bare GPU host. Imports inside functions count too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ML = REPO / "ml"
CORE = ("model", "training")
# Pillow comes with torchvision; the preprocessing that ingest, evaluation and serving share decodes with it.
CORE_LIBS = {"torch", "torchvision", "numpy", "PIL"}
CORE_ML = ("ml.model", "ml.training", "ml.errors")  # ml.errors: exceptions and exit codes, the standard library only
# Imported only inside the ONNX parity check, which a serving team runs; training never reaches it.
CORE_OPTIONAL = {"onnxruntime"}
# The served form (the code stored in every MLflow model version) runs without torch, on these alone.
SERVED = ("pyfunc.py", "mlflow_entry.py")
SERVED_LIBS = {"numpy", "pandas", "PIL", "onnxruntime", "mlflow"}


def imports(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; ct uses absolute ones"
            assert node.module is not None
            found.add(node.module)
    return found


def modules(*parts: str) -> list[Path]:
    return sorted(ML.joinpath(*parts).rglob("*.py"))


def test_the_scan_sees_every_stage() -> None:
    """The rules below are only as good as the files they read: the stages are all there."""
    packages = {p.parent.relative_to(ML).as_posix() for p in modules() if p.name == "__init__.py"}
    assert {".", "data", "decide", "learn", "release", "model", "training"} <= packages
    assert "airflow" in {
        name.split(".")[0] for name in imports(REPO / "plugins" / "ct_airflow" / "operators" / "step.py")
    }


def test_ml_never_imports_airflow() -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(
            name for name in imports(path) if name.split(".")[0] in {"airflow", "ct_airflow"}
        )
        for path in modules()
    }
    assert not {path: names for path, names in offenders.items() if names}


def test_training_core_imports_only_torch_torchvision_numpy_and_itself() -> None:
    allowed_ml = CORE_ML
    offenders = {}
    for path in [p for part in CORE for p in modules(part) if p.name not in SERVED]:
        bad = sorted(
            name
            for name in imports(path)
            if (top := name.split(".")[0]) not in sys.stdlib_module_names | CORE_LIBS | CORE_OPTIONAL | {"ml"}
            or (top == "ml" and not name.startswith(allowed_ml))
        )
        if bad:
            offenders[str(path.relative_to(REPO))] = bad
    assert not offenders


def test_the_served_form_needs_no_torch_and_only_the_preprocessing_of_ct() -> None:
    """What each MLflow model version carries as code: it must run where only its requirements are installed."""
    from ml.learn.mlmodel import SERVED_MODULES

    for name in SERVED:
        found = imports(ML / "model" / name)
        outside = {n for n in found if n.split(".")[0] not in sys.stdlib_module_names | SERVED_LIBS | {"ml"}}
        assert not outside, (name, outside)
        ct = {n for n in found if n.split(".")[0] == "ml"}
        assert ct <= {"ml.model.pyfunc", "ml.model.preprocess"}, (name, ct)
        assert {f"ml.{m.removesuffix('.py').replace('/', '.')}" for m in SERVED_MODULES} >= {n for n in ct if n != "ml"}
    code = "import sys, ml.model.pyfunc; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert "torch" not in ast.literal_eval(out.stdout.strip().splitlines()[-1])


def test_importing_the_training_core_loads_nothing_else() -> None:
    """What the trainer loads on a bare host: no pandas, MLflow, boto3, pydantic or GX behind its back."""
    code = (
        "import sys; import ml.model.artifact, ml.model.factory, ml.training.loop, ml.training.loader, "
        "ml.training.distributed, ml.training.augment, ml.training.shards; "
        "print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    loaded = set(ast.literal_eval(out.stdout.strip().splitlines()[-1]))
    assert {"torch", "numpy"} <= loaded
    assert not loaded & {"pandas", "mlflow", "boto3", "pydantic", "great_expectations", "evidently", "airflow", "yaml"}


def test_the_configuration_knows_the_networks_the_factory_builds() -> None:
    """Config load refuses an unknown ``train.arch`` without importing torch, from its own list of the names."""
    from ml.config import BUILTIN_ARCHS
    from ml.model.factory import ARCHS

    assert BUILTIN_ARCHS == ARCHS
