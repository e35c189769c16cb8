from __future__ import annotations

from pathlib import Path

import pytest

from ml.config import load_settings
from ml.errors import ConfigError


def test_embedded_defaults_live_under_home(tmp_path: Path) -> None:
    settings = load_settings({"CT_HOME": str(tmp_path)})
    assert settings.profile == "embedded"
    assert settings.runner == "local"
    assert settings.lake_uri == (tmp_path / "lake").as_uri()
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_file_then_environment_overrides(tmp_path: Path) -> None:
    config = tmp_path / "ct.yaml"
    config.write_text("runner: kubernetes\ngate:\n  margin: 0.01\nkubernetes:\n  image: reg/ct:1\n")
    settings = load_settings({
        "CT_HOME": str(tmp_path), "CT_CONFIG": str(config), "CT_GATE__MARGIN": "0.02",
        "CT_KUBERNETES__NODE_SELECTOR": "{gpu: h100}", "CT_RUN_KEY": "not-config",
    })  # fmt: skip
    assert settings.runner == "kubernetes"
    assert settings.gate.margin == 0.02  # the environment wins over the file
    assert settings.kubernetes.image == "reg/ct:1"
    assert settings.kubernetes.node_selector == {"gpu": "h100"}


def test_config_json_round_trips_to_a_pod(tmp_path: Path) -> None:
    original = load_settings({"CT_HOME": str(tmp_path), "CT_TRAIN__EPOCHS": "3"})
    assert load_settings({"CT_CONFIG_JSON": original.to_json()}) == original


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CT_GATE__MARGIN": "-1"}, "gate.margin"),
        ({"CT_TRAIN__EPOCHS": "many"}, "train.epochs"),
        ({"CT_RUNNER": "docker"}, "runner"),
        ({"CT_GATE__NO_SUCH_THING": "1"}, "no_such_thing"),
        ({"CT_CONFIG": "/nonexistent/ct.yaml"}, "does not exist"),
    ],
    ids=["negative-margin", "non-int", "unknown-runner", "unknown-key", "missing-file"],
)
def test_invalid_configuration_names_the_field(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"[.\n ]+")):
        load_settings({"CT_HOME": str(tmp_path), **env})
