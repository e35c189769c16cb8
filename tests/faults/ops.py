"""Helpers the fault suite runs inside forked children (they talk to MLflow and the lake)."""

from __future__ import annotations

from typing import Any

from ml import layout
from ml.config import load_settings
from ml.data.window import window_key
from ml.release import registry
from ml.release.history import read_history
from ml.release.lease import generation_key, generations
from ml.storage import Lake


def register_copy(source_key: str, new_key: str) -> str:
    """A new candidate version for ``new_key`` with the weights of ``source_key``'s version (no training)."""
    settings = load_settings()
    lake = Lake.from_uri(settings.lake_uri)
    client = registry.client(settings)
    source = registry.version_by_run_key(client, settings.model_name, source_key)
    assert source is not None, source_key
    window = lake.read_json(window_key(source_key))
    lake.write_json(window_key(new_key), {**window, "run_key": new_key})
    # The copy is a second version of the same logged model: the same files, no training.
    created = client.create_model_version(
        settings.model_name, source=source.source, run_id=source.run_id, model_id=source.source.removeprefix("models:/"),
        tags={registry.RUN_KEY_TAG: new_key, registry.WINDOW_TAG: lake.uri(window_key(new_key))},
    )  # fmt: skip
    return str(created.version)


def copy_window(source_key: str, new_key: str) -> None:
    lake = Lake.from_uri(load_settings().lake_uri)
    lake.write_json(window_key(new_key), {**lake.read_json(window_key(source_key)), "run_key": new_key})


def batch_state(batch_id: str) -> dict[str, Any]:
    from ml.data.ingest import load_images, read_manifest

    lake = Lake.from_uri(load_settings().lake_uri)
    curated = lake.exists(layout.manifest(batch_id))
    return {
        "curated": curated,
        "quarantined": lake.exists(layout.quarantine_report(batch_id)),
        "rows": len(read_manifest(lake, batch_id)) if curated else None,
        "shard_rows": len(load_images(lake, batch_id)) if curated else None,
    }


def snapshot(
    run_key: str, record_name: str = "gate.json", dag_id: str = layout.RETRAIN_DAG, version: str | None = None
) -> dict[str, Any]:
    """Everything the invariants look at, read back from MLflow and the lake."""
    settings = load_settings()
    lake = Lake.from_uri(settings.lake_uri)
    client = registry.client(settings)
    experiment = registry.experiment_id(settings, client)
    records, problems = read_history(lake)
    record_key = layout.report(dag_id, run_key, record_name)
    record = lake.read_json(record_key) if lake.exists(record_key) else None
    versions = client.search_model_versions(
        f"name='{settings.model_name}' and tags.`{registry.RUN_KEY_TAG}`='{run_key}'"
    )
    running = client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'")
    models = client.search_logged_models([experiment], filter_string=f"tags.`{registry.RUN_KEY_TAG}` = '{run_key}'")
    # A version points at its logged model through its source, models:/<model_id>.
    registered = {
        str(v.source).removeprefix("models:/") for v in client.search_model_versions(f"name='{settings.model_name}'")
    }
    top = generations(lake)[-1] if generations(lake) else None
    if version is not None:
        version_tags = dict(client.get_model_version(settings.model_name, version).tags)
    else:
        version_tags = dict(versions[0].tags) if versions else {}
    return {
        "champion": registry.champion_version(client, settings.model_name),
        "history": [{k: r.get(k) for k in ("kind", "run_key", "decision", "candidate_version")} for r in records],
        "history_problems": problems,
        "record": record,
        "versions": sorted(str(v.version) for v in versions),
        "version_tags": version_tags,
        "running_runs": [r.info.run_id for r in running],
        "orphan_models": [m.model_id for m in models if m.model_id not in registered],
        "lease": lake.read_json(generation_key(top)) if top else None,
    }


def recompute_gate(run_key: str) -> str:
    """The decision ml.decide.gate gives on the run's final eval.json at the level its record claimed:
    what the recorded decision must equal."""
    import numpy as np

    from ml.decide import gate
    from ml.learn.evaluate import eval_key

    settings = load_settings()
    lake = Lake.from_uri(settings.lake_uri)
    evaluation = lake.read_json(eval_key(run_key))
    spending = lake.read_json(layout.report(layout.RETRAIN_DAG, run_key, "gate.json")).get("spending")
    champion = evaluation["champion"]
    outcome = gate.decide(
        np.asarray(evaluation["y_true"]),
        np.asarray(evaluation["candidate"]["pred"]),
        np.asarray(champion["pred"]) if champion else None,
        settings.labels,
        settings.gate,
        alpha=spending["alpha"] if spending else None,
    )
    return outcome.decision


def weights_digest(run_key: str) -> str:
    """A hash over every tensor of the version ``run_key`` registered: equal only for bit-identical weights."""
    import hashlib

    settings = load_settings()
    client = registry.client(settings)
    version = registry.version_by_run_key(client, settings.model_name, run_key)
    assert version is not None, run_key
    model = registry.load_model(settings, version)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()
