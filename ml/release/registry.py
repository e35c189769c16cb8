"""MLflow tracking and registry: the champion alias, versions by run key, and loading models.

"Not there" is said only when MLflow answered so (``RESOURCE_DOES_NOT_EXIST``); an MLflow that
does not answer raises :class:`~ml.errors.InfrastructureUnavailable`, never None. Moving the
alias is :func:`set_champion`, which callers run under the promotion lease (:mod:`ml.release.lease`),
because MLflow aliases have no compare-and-set of their own.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.config import Settings
from ml.errors import ChampionUnavailable, ConfigError, CtError
from ml.outage import outage
from ml.process import dead_here, identity

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

CHAMPION = "champion"
RUN_KEY_TAG = "ct.run_key"
WINDOW_TAG = "ct.window_uri"
AS_OF_TAG = "ct.as_of"  # the time (epoch seconds) of the run that trained the version: its age is counted from it
FORMAT_TAG = "ct.model_format"  # how the version is stored: ml.model.artifact.FORMAT
PROCESS_TAG_PREFIX = "ct.process."  # ct.process.host, .pid, .pid_start: who ran a training run


def not_found(exc: BaseException) -> bool:
    """True when MLflow answered that the thing does not exist (as opposed to not answering)."""
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def unavailable_or(exc: BaseException) -> BaseException:
    """The retryable error behind ``exc`` if MLflow did not answer, else ``exc`` itself."""
    return outage(exc, "MLflow") or exc


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
    except MlflowException as exc:
        again = mlflow_client.get_experiment_by_name(settings.experiment)  # created concurrently by another step?
        if again is None:
            raise unavailable_or(exc) from exc
        return str(again.experiment_id)


def ensure_registered_model(mlflow_client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_registered_model(name)
        return
    except MlflowException as exc:
        if not not_found(exc):
            raise unavailable_or(exc) from exc
    try:
        mlflow_client.create_registered_model(name, description="Image classifier trained by ct")
    except MlflowException:
        mlflow_client.get_registered_model(name)  # lost a creation race: it exists now (or this raises)


def champion(mlflow_client: MlflowClient, name: str) -> VersionInfo | None:
    """The version behind ``@champion``; None only when MLflow answered that there is none."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = mlflow_client.get_registered_model(name).aliases
    except MlflowException as exc:
        if not_found(exc):
            return None
        raise unavailable_or(exc) from exc
    if CHAMPION not in aliases:
        return None
    try:
        return _info(mlflow_client.get_model_version(name, str(aliases[CHAMPION])))
    except MlflowException as exc:
        if not not_found(exc):
            raise unavailable_or(exc) from exc
        raise ChampionUnavailable(
            f"@{CHAMPION} of {name} points at version {aliases[CHAMPION]}, which does not exist: {exc}. "
            f"Roll back to a good version with `python -m ml rollback`."
        ) from exc


def champion_version(mlflow_client: MlflowClient, name: str) -> str | None:
    found = champion(mlflow_client, name)
    return found.version if found else None


def set_champion(mlflow_client: MlflowClient, name: str, version: str) -> None:
    """Point ``@champion`` at ``version`` and read it back. Call it only while holding the promotion lease."""
    mlflow_client.set_registered_model_alias(name, CHAMPION, version)
    after = champion_version(mlflow_client, name)
    if after != version:
        raise CtError(f"@{CHAMPION} reads back as v{after}, not v{version}, right after moving it")
    log.info("@%s of %s now points at v%s", CHAMPION, name, version)


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


@contextmanager
def downloaded(settings: Settings, version: VersionInfo) -> Iterator[Path]:
    """The files of a registered version, in a temporary folder for the duration of the block."""
    import mlflow.artifacts

    client(settings)
    with tempfile.TemporaryDirectory(prefix="ct-model-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{settings.model_name}/{version.version}", dst_path=tmp
            )
        except Exception as exc:
            if (unavailable := outage(exc, "MLflow or its artifact store")) is not None:
                raise unavailable from exc
            if _served_artifacts_out_of_reach(settings, exc):
                raise ConfigError(
                    f"model version {version.version} of {settings.model_name} is stored in an MLflow server's "
                    "artifact store (mlflow-artifacts:), which only that server can read, and this process reads "
                    "MLflow's store directly (CT_MLFLOW_TRACKING_URI is not an http(s) URL): point "
                    "CT_MLFLOW_TRACKING_URI at the server, e.g. http://127.0.0.1:5000 (while make up runs, "
                    'eval "$(.venv/bin/python -m ct_airflow.launcher.local env)" in this shell does)'
                ) from exc
            raise ChampionUnavailable(
                f"model version {version.version} of {settings.model_name} cannot be downloaded: {exc}"
            ) from exc
        yield Path(path)


def _served_artifacts_out_of_reach(settings: Settings, exc: BaseException) -> bool:
    """True when a download failed because the files sit behind an MLflow server's artifact proxy
    (``mlflow-artifacts:`` URIs) and this process's tracking URI is not that server's ``http(s)`` URL."""
    return "mlflow-artifacts" in str(exc) and not settings.mlflow_tracking_uri.startswith(("http://", "https://"))


def load_model(settings: Settings, version: VersionInfo) -> Any:
    """Load a registered model: weights into the factory's network (:mod:`ml.model.artifact`), never a pickle.

    A version registered before ct stored weights is a pickled MLflow model. It loads only with
    ``allow_pickled_models`` (``CT_ALLOW_PICKLED_MODELS=true``), with a warning, because unpickling
    runs whatever code the artifact store hands back.
    """
    with downloaded(settings, version) as folder:
        return load_folder(settings, version, folder)


def load_folder(settings: Settings, version: VersionInfo, folder: Path) -> Any:
    from ml.model import artifact

    what = f"model version {version.version} of {settings.model_name}"
    files = artifact.locate(folder)
    if files is None and (folder / "MLmodel").is_file():
        if not settings.allow_pickled_models:
            raise ChampionUnavailable(
                f"{what} is a pickled model (registered before ct stored weights); loading it would run code "
                "from the artifact store. Retrain it, or set CT_ALLOW_PICKLED_MODELS=true to load it anyway"
            )
        log.warning("%s is a pickled model: loading it because allow_pickled_models is on", what)
        import mlflow.pytorch

        return mlflow.pytorch.load_model(str(folder), map_location="cpu")
    try:
        model, _spec = artifact.load(files or folder)
    except artifact.ModelFileError as exc:
        raise ChampionUnavailable(f"{what} cannot be loaded: {exc}") from exc
    return model


def process_tags() -> dict[str, str]:
    """Who is running a training run, so that a rerun can tell a dead attempt from a live one."""
    return {f"{PROCESS_TAG_PREFIX}{k}": v for k, v in identity().items()}


def fail_abandoned_runs(mlflow_client: MlflowClient, experiment: str, run_key: str) -> list[str]:
    """Mark FAILED the runs of ``run_key`` left RUNNING by a killed attempt; returns their ids.

    A run whose process is still alive on this host is left alone and reported: two attempts of
    one run key at once is an operator error that must not be papered over. A run from another host
    (another pod) cannot be checked and is taken as dead: Airflow runs one try of a task at a time.
    """
    running = mlflow_client.search_runs(
        [experiment], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}' and attributes.status = 'RUNNING'"
    )
    failed = []
    for run in running:
        holder = {k: run.data.tags.get(f"{PROCESS_TAG_PREFIX}{k}") for k in ("host", "pid", "pid_start")}
        if holder["host"] == socket.gethostname() and not dead_here(**holder):
            raise CtError(f"run {run_key} is still training in process {holder['pid']} (MLflow run {run.info.run_id})")
        mlflow_client.set_tag(run.info.run_id, "ct.abandoned", "the attempt was killed; a later attempt took over")
        mlflow_client.set_terminated(run.info.run_id, status="FAILED")
        failed.append(run.info.run_id)
    if failed:
        log.warning("marked %d run(s) of %s FAILED, left RUNNING by a killed attempt: %s", len(failed), run_key, failed)
    return failed


def delete_orphan_models(mlflow_client: MlflowClient, experiment: str, run_key: str) -> list[str]:
    """Delete logged models of ``run_key`` that no registered version points at (a kill before registration)."""
    models = mlflow_client.search_logged_models([experiment], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'")
    deleted = []
    for model in models:
        mlflow_client.delete_logged_model(model.model_id)
        deleted.append(model.model_id)
    if deleted:
        log.warning("deleted %d unregistered logged model(s) of %s: %s", len(deleted), run_key, deleted)
    return deleted
