"""MLflow tracking and registry: the champion alias, versions by run key, and loading models.

Aliases have no compare-and-set in MLflow, so :func:`move_champion` takes a lock object in the lake,
re-reads the alias, moves it only if it still points where the caller evaluated, and reads it back.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ml import layout
from ml.config import Settings
from ml.errors import ChampionChanged, ChampionUnavailable, CtError, StorageError
from ml.storage import Lake

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

CHAMPION = "champion"
RUN_KEY_TAG = "ct.run_key"
WINDOW_TAG = "ct.window_uri"
PROMOTION_LOCK = "promotion.lock"


@dataclass(frozen=True)
class VersionInfo:
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]


def _info(mv: ModelVersion) -> VersionInfo:
    return VersionInfo(version=str(mv.version), run_id=mv.run_id, source=str(mv.source or ""), tags=dict(mv.tags or {}))


def client(settings: Settings) -> MlflowClient:
    """A client bound to the configured tracking and registry URIs (never the cwd default)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)


def experiment_id(settings: Settings, mlflow_client: MlflowClient) -> str:
    from mlflow.exceptions import MlflowException

    existing = mlflow_client.get_experiment_by_name(settings.experiment)
    if existing is not None:
        return str(existing.experiment_id)
    try:
        return str(
            mlflow_client.create_experiment(settings.experiment, artifact_location=settings.mlflow_artifact_uri or None)
        )
    except MlflowException:  # created concurrently by another step
        again = mlflow_client.get_experiment_by_name(settings.experiment)
        if again is None:
            raise
        return str(again.experiment_id)


def ensure_registered_model(mlflow_client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        try:
            mlflow_client.create_registered_model(name, description="Image classifier trained by ct")
        except MlflowException:
            mlflow_client.get_registered_model(name)  # lost a creation race: it exists now


def champion(mlflow_client: MlflowClient, name: str) -> VersionInfo | None:
    """The version behind ``@champion``, or None when there is no registered model or no alias."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = mlflow_client.get_registered_model(name).aliases
    except MlflowException:
        return None
    if CHAMPION not in aliases:
        return None
    try:
        return _info(mlflow_client.get_model_version(name, str(aliases[CHAMPION])))
    except MlflowException as exc:
        raise ChampionUnavailable(
            f"@{CHAMPION} of {name} points at version {aliases[CHAMPION]}, which cannot be read: {exc}. "
            f"Roll back to a good version with `python -m ml rollback`."
        ) from exc


def version_by_run_key(mlflow_client: MlflowClient, name: str, run_key: str) -> VersionInfo | None:
    """The model version a run registered, if any: what makes a re-run of train a no-op."""
    found = mlflow_client.search_model_versions(f"name='{name}' and tags.`{RUN_KEY_TAG}`='{run_key}'")
    if not found:
        return None
    if len(found) > 1:
        log.warning("run key %s has %d versions; using the oldest", run_key, len(found))
    return _info(min(found, key=lambda mv: int(mv.version)))


def get_version(mlflow_client: MlflowClient, name: str, version: str) -> VersionInfo:
    return _info(mlflow_client.get_model_version(name, version))


def load_model(settings: Settings, version: VersionInfo) -> Any:
    """Load a registered torch model. Only versions from our own registry are ever unpickled."""
    import mlflow.pytorch

    client(settings)
    try:
        return mlflow.pytorch.load_model(f"models:/{settings.model_name}/{version.version}", map_location="cpu")
    except Exception as exc:
        raise ChampionUnavailable(
            f"model version {version.version} of {settings.model_name} cannot be loaded: {exc}"
        ) from exc


@contextmanager
def promotion_lock(lake: Lake, owner: str, timeout_s: float = 120.0, stale_s: float = 900.0) -> Iterator[None]:
    """Serialise promotions: a lock object created with an exclusive write (O_EXCL, S3 If-None-Match).

    A lock older than ``stale_s`` belongs to a holder that crashed and is broken, with a warning.
    """
    key = layout.state(PROMOTION_LOCK)
    token = uuid.uuid4().hex
    body = json.dumps({"token": token, "owner": owner, "at": time.time()}).encode()
    deadline = time.monotonic() + timeout_s
    while not lake.create_exclusive(key, body):
        try:
            holder = lake.read_json_or(key, None)
        except StorageError:  # released between our create and our read: try again at once
            continue
        if holder is not None and time.time() - float(holder.get("at", 0)) > stale_s:
            log.warning("breaking a stale promotion lock held by %s", holder)
            lake.delete_prefix(key)
            continue
        if time.monotonic() > deadline:
            raise CtError(
                f"could not take the promotion lock {lake.uri(key)} within {timeout_s:.0f}s; held by {holder}"
            )
        time.sleep(0.2)
    try:
        yield
    finally:
        if lake.read_json_or(key, {}).get("token") == token:
            lake.delete_prefix(key)


def move_champion(
    mlflow_client: MlflowClient, lake: Lake, name: str, new_version: str, expected: str | None, owner: str
) -> None:
    """Point ``@champion`` at ``new_version`` only if it still points at ``expected`` (None: no champion)."""
    with promotion_lock(lake, owner):
        current = champion(mlflow_client, name)
        current_version = current.version if current else None
        if current_version == new_version:
            log.info("@%s already points at %s (an earlier attempt of this run moved it)", CHAMPION, new_version)
            return
        if current_version != expected:
            raise ChampionChanged(f"champion changed from v{expected} to v{current_version} during evaluation; re-run")
        mlflow_client.set_registered_model_alias(name, CHAMPION, new_version)
        after = champion(mlflow_client, name)
        if after is None or after.version != new_version:
            raise CtError(f"@{CHAMPION} reads back as {after.version if after else None}, not {new_version}")
    log.info("@%s of %s moved from %s to %s", CHAMPION, name, expected, new_version)
