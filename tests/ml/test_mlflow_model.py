"""Every registered version is a standard MLflow model: MLflow's own loader and server predict with it,
on image files, with the labels the evaluate step gave; ct's loader still reads it and older versions."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import requests

from ml.data.curated import ShardReader
from ml.decide import gate
from ml.learn import mlmodel
from ml.learn.evaluate import eval_rows
from ml.model import artifact
from ml.release import registry
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def stored_rows_as_png(settings) -> tuple[list[bytes], np.ndarray]:  # type: ignore[no-untyped-def]
    """The evaluation rows of run r1 as the image files a client would send (their stored squares, PNG)."""
    from dataclasses import replace

    from ml.data.window import load_window
    from ml.storage import Lake

    lake = Lake.from_uri(settings.lake_uri)
    with ShardReader(lake) as reader:
        rows = eval_rows(reader, settings, load_window(lake, "r1"))
        images = np.concatenate(list(replace(rows, size=None).batches()))
    return [mlmodel.png(image) for image in images], rows.labels


def pyfunc_answers_the_evaluate_steps_labels(champion, settings) -> None:  # type: ignore[no-untyped-def]
    _version, evaluation = champion
    registry.client(settings)  # MLflow's globals now point at ct's registry, as MLFLOW_TRACKING_URI would
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@champion")
    meta = model.metadata
    assert meta.get_input_schema().input_names() == ["image"]
    assert meta.get_input_schema().input_types()[0].name == "binary"
    assert meta.get_output_schema().input_names() == ["label", "probability", *[f"p_{x}" for x in settings.labels]]
    assert meta.saved_input_example_info["type"] == "dataframe"

    files, _labels = stored_rows_as_png(settings)
    served = model.predict(pd.DataFrame({"image": files}))
    evaluated = [settings.labels[i] for i in evaluation["candidate"]["pred"]]
    assert len(served) == len(evaluated) == len(evaluation["y_true"]) > 50
    assert served["label"].tolist() == evaluated
    probabilities = served[[f"p_{x}" for x in settings.labels]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(served["probability"], probabilities.max(axis=1))
    # the evaluate step checked the same, and the gate read it
    assert evaluation["candidate"]["served"] == {
        "rows": len(evaluated), "label_disagreements": 0, "ties": 0, "passed": True
    }  # fmt: skip


def an_mlflow_model_around_cts_own_files(champion, settings) -> None:  # type: ignore[no-untyped-def]
    version, _ = champion
    with registry.downloaded(settings, registry.get_version(registry.client(settings), settings.model_name, version)) as folder:  # fmt: skip
        assert (folder / "MLmodel").is_file() and (folder / "mlflow_entry.py").is_file()
        assert not list(folder.rglob("*.pkl")), "no pickle in a ct model"
        code = sorted(p.relative_to(folder / "code").as_posix() for p in (folder / "code").rglob("*.py"))
        assert code == sorted(f"ml/{name}" for name in mlmodel.SERVED_MODULES)
        assert (folder / "code/ml/model/preprocess.py").read_bytes() == (REPO / "ml/model/preprocess.py").read_bytes()
        files = artifact.locate(folder)
        assert files == folder / "artifacts" / "ct"
        spec = artifact.read_spec(files)
        assert set(spec["files"]) == {"weights.pt", "model.onnx"}
        _model, _ = artifact.load(files)  # ct's loader: the hashes checked, the weights only
        lock = dict(line.split("==") for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line)
        pinned = (folder / "requirements.txt").read_text().split()
        assert pinned == [f"{name}=={lock[name]}" for name in mlmodel.SERVED_PACKAGES]
    assert registry.load_model(settings, registry.get_version(registry.client(settings), settings.model_name, version))


def test_mlflow_models_serve_answers_base64_images_with_the_same_labels(champion, settings, tmp_path: Path) -> None:
    """`mlflow models serve -m models:/ct-classifier@champion --env-manager local`: MLflow resolves the alias in
    ct's registry itself, and its fresh interpreter runs the model's code folder, not this checkout."""
    version, evaluation = champion
    with registry.downloaded(settings, registry.get_version(registry.client(settings), settings.model_name, version)) as folder:  # fmt: skip
        model_dir = tmp_path / "model"
        import shutil

        shutil.copytree(folder, model_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CT_HOME")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri  # MLflow's own command resolves @champion itself
    where = subprocess.run(
        [sys.executable, "-c", "import sys, mlflow.pyfunc; mlflow.pyfunc.load_model(sys.argv[1]); "
         "import ml.model.pyfunc as served, sys; print(served.__file__, 'torch' in sys.modules)", str(model_dir)],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert where == [str(model_dir / "code/ml/model/pyfunc.py"), "False"], "the model's own code, and no torch"
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", f"models:/{settings.model_name}@champion",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{url}/ping", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping in 120 s"
            time.sleep(0.5)
        files, _ = stored_rows_as_png(settings)
        body = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(f).decode()] for f in files]}}
        answer = requests.post(f"{url}/invocations", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        labels = [row["label"] for row in answer.json()["predictions"]]
        assert labels == [settings.labels[i] for i in evaluation["candidate"]["pred"]]
        # the served example MLflow stored with the model is a valid request too
        example = json.loads((model_dir / "serving_input_example.json").read_text())
        assert requests.post(f"{url}/invocations", json=example, timeout=30).status_code == 200
        refused = requests.post(f"{url}/invocations", json={"dataframe_split": {"columns": ["image"], "data": [["bm90IGFuIGltYWdl"]]}}, timeout=30)  # fmt: skip
        assert refused.status_code == 400 and "row 0: not an image" in refused.text
    finally:
        server.terminate()
        server.wait(timeout=30)


def a_served_form_that_disagrees_refuses_the_candidate(champion, settings) -> None:  # type: ignore[no-untyped-def]
    """served_parity counts every row whose served label is not the evaluate step's; the gate refuses on it."""
    version, evaluation = champion
    pred = np.asarray(evaluation["candidate"]["pred"])
    wrong = (pred + 1) % len(settings.labels)  # as if the served preprocessing saw other pixels
    _files, _ = stored_rows_as_png(settings)
    from dataclasses import replace

    from ml.data.window import load_window
    from ml.storage import Lake

    lake = Lake.from_uri(settings.lake_uri)
    with registry.downloaded(settings, registry.get_version(registry.client(settings), settings.model_name, version)) as folder:  # fmt: skip
        with ShardReader(lake) as reader:
            rows = eval_rows(reader, settings, load_window(lake, "r1"))
            parity = mlmodel.served_parity(folder, replace(rows, size=None).batches(64), wrong, settings.labels)
    assert parity["rows"] == len(pred) and parity["label_disagreements"] >= len(pred) - parity["ties"] > 0
    assert not parity["passed"]
    y = np.asarray(evaluation["y_true"])
    decision = gate.decide(y, pred, None, settings.labels, settings.gate, served=parity)
    assert decision.decision == "reject"
    assert any("served model" in reason and "another label" in reason for reason in decision.reasons)


def test_the_champion_is_an_mlflow_model_that_answers_as_evaluate_did(champion, settings) -> None:
    """One champion (training one is the cost), three looks at it: MLflow's loader, its files, and the gate's check."""
    pyfunc_answers_the_evaluate_steps_labels(champion, settings)
    an_mlflow_model_around_cts_own_files(champion, settings)
    a_served_form_that_disagrees_refuses_the_candidate(champion, settings)


def test_a_version_stored_before_mlmodel_still_loads_through_cts_loader(settings, tmp_path: Path) -> None:
    """Older versions hold spec.json, weights.pt and model.onnx at their root: found and loaded as before."""
    from ml.learn.train import model_spec, new_model

    artifact.save(new_model(settings), model_spec(settings), tmp_path)
    assert artifact.locate(tmp_path) == tmp_path
    version = registry.VersionInfo("1", None, "", {})
    model = registry.load_folder(settings, version, tmp_path)
    assert sum(p.numel() for p in model.parameters()) > 0
