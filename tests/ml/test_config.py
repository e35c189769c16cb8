from __future__ import annotations

import logging
from operator import attrgetter
from pathlib import Path

import pytest

from ml.config import TOP_LEVEL_ENV, embedded_socket_dir, load_settings
from ml.errors import ConfigError


def test_embedded_defaults_live_under_home(tmp_path: Path) -> None:
    settings = load_settings({"CT_HOME": str(tmp_path)})
    assert settings.profile == "embedded"
    assert settings.runner == "local"
    assert settings.lake_uri == (tmp_path / "lake").as_uri()
    # MLflow's backend store is the embedded PostgreSQL, over its Unix socket; nothing defaults to SQLite.
    assert settings.mlflow_tracking_uri == f"postgresql+psycopg2://postgres@/mlflow?host={tmp_path / 'postgres-socket'}"


def test_sqlite_only_by_configuration(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert load_settings({"CT_HOME": str(tmp_path), "CT_MLFLOW_TRACKING_URI": uri}).mlflow_tracking_uri == uri


def test_a_long_home_gets_a_socket_directory_that_fits(tmp_path: Path) -> None:
    home = tmp_path / ("deep" * 30)
    socket_dir = embedded_socket_dir(home)
    assert len(str(socket_dir / ".s.PGSQL.5432")) <= 107 < len(str(home / "postgres-socket" / ".s.PGSQL.5432"))
    assert socket_dir == embedded_socket_dir(home)  # every process computes the same place
    assert socket_dir != embedded_socket_dir(tmp_path / ("other" * 30))


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
        ({"CT_LABELS": "cat"}, "at least two distinct"),
        ({"CT_INGEST__EXTENSIONS": "[png, .jpg]"}, "must look like"),
    ],
    ids=["negative-margin", "non-int", "unknown-runner", "unknown-key", "missing-file", "one-label", "undotted-ext"],
)
def test_invalid_configuration_names_the_field(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"[.\n ]+")):
        load_settings({"CT_HOME": str(tmp_path), **env})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CT_LABELS": "cat,dog,bird"}, {"labels": ("cat", "dog", "bird")}),
        ({"CT_LABELS": "[cat, dog]"}, {"labels": ("cat", "dog")}),
        ({"CT_LABELS": " cat , dog "}, {"labels": ("cat", "dog")}),
        ({"CT_INGEST__EXTENSIONS": ".PNG,.jpg"}, {"ingest.extensions": (".png", ".jpg")}),
        ({"CT_INGEST__ALWAYS_FAIL_RULES": ""}, {"ingest.always_fail_rules": ()}),
        ({"CT_INGEST__MAX_FILE_BYTES": "1000"}, {"ingest.max_file_bytes": 1000}),
        ({"CT_EXPERIMENT": "other"}, {"experiment": "other"}),
    ],
    ids=["labels-commas", "labels-yaml", "labels-spaces", "extensions-lowered", "empty-list", "max-file-bytes",
         "any-top-level-field"],
)  # fmt: skip
def test_list_and_top_level_overrides(tmp_path: Path, env: dict[str, str], expected: dict) -> None:
    settings = load_settings({"CT_HOME": str(tmp_path), **env})
    assert {name: attrgetter(name)(settings) for name in expected} == expected


def test_every_top_level_field_has_a_shortcut() -> None:
    from ml.config import Settings

    sections = {"image", "ingest", "drift", "policy", "train", "gate", "history", "serve", "monitor", "kubernetes"}
    assert set(TOP_LEVEL_ENV) == set(Settings.model_fields) - sections
    assert "labels" in TOP_LEVEL_ENV


def test_unknown_top_level_variable_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    known = {"CT_RUN_KEY": "r1", "CT_LOG_LEVEL": "DEBUG", "CT_CODE_VERSION": "abc", "CT_S3_ENDPOINT_URL": "http://x",
             "CT_S3_CONNECT_TIMEOUT": "5", "CT_S3_READ_TIMEOUT": "5"}  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="ml.config"):
        settings = load_settings({"CT_HOME": str(tmp_path), "CT_LABLES": "cat,dog", **known})
    assert settings.labels == tuple(str(d) for d in range(10)), "an unknown variable changes nothing"
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["ignoring CT_LABLES"]


def test_image_channels_and_store_size_come_from_the_environment() -> None:
    settings = load_settings({"CT_IMAGE__CHANNELS": "3", "CT_IMAGE__SIZE": "224", "CT_IMAGE__STORE_SIZE": "256"})
    assert (settings.image.channels, settings.image.size, settings.image.stored) == (3, 224, 256)
    assert load_settings({"CT_IMAGE__SIZE": "48"}).image.stored == 48, "store_size defaults to size"
    with pytest.raises(ConfigError, match=r"must be at least image\.size"):
        load_settings({"CT_IMAGE__SIZE": "224", "CT_IMAGE__STORE_SIZE": "200"})
    with pytest.raises(ConfigError, match=r"image\.channels"):
        load_settings({"CT_IMAGE__CHANNELS": "2"})
