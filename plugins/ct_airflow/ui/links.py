"""Extra links on ct's tasks: the step's report (served by :mod:`ct_airflow.ui.app`) and its MLflow model.

Airflow 3 computes a task's links on the worker when the task finishes and stores them, so the
links read the step's result from the operator instance that just ran.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

WEBAPP_PREFIX = "/ct"
# Which of a step's outputs a person most wants to open, in order of preference.
REPORT_FIELDS = ("html_uri", "gate_md_uri", "gate_uri", "eval_uri", "decision_uri", "report_uri", "manifest_uri")


def api_address() -> tuple[str, str]:
    """The API server's own host and port (``[api] host``/``port``), a wildcard host read as loopback."""
    from airflow.configuration import conf

    host = conf.get("api", "host", fallback="127.0.0.1") or "127.0.0.1"
    return ("127.0.0.1" if host in ("0.0.0.0", "::") else host), conf.get("api", "port", fallback="8080")


def airflow_base_url() -> str:
    """Where people open Airflow, for links that leave the UI (messages, approvals): ``[api] base_url``,
    else the API server's own address."""
    from airflow.configuration import conf

    base = conf.get("api", "base_url", fallback="") or ""
    if not base:
        host, port = api_address()
        base = f"http://{host}:{port}"
    return base.rstrip("/")


def lake_key(uri: str, lake_root: str) -> str | None:
    root = lake_root.rstrip("/") + "/"
    return uri[len(root) :] if uri.startswith(root) else None


def report_url(result: dict[str, Any], lake_root: str, base_url: str = "") -> str:
    """The page a person wants for a step's result: a decision's own page, else its main report.

    JSON and Markdown reports open in the dashboard's style (``/ct/report/...``); HTML reports as they are.
    """
    base = base_url.rstrip("/") + WEBAPP_PREFIX
    history = result.get("history_key")
    if isinstance(history, str) and history.startswith("state/decisions/"):
        return f"{base}/decision/{history.rsplit('/', 1)[-1].removesuffix('.json')}"
    candidates = [result.get(field) for field in REPORT_FIELDS]
    for batch in result.get("quarantined", []) + result.get("batches", []):
        candidates += [batch.get("report_uri"), batch.get("manifest_uri")]
    for uri in candidates:
        key = lake_key(uri, lake_root) if isinstance(uri, str) else None
        if key:
            return f"{base}/{'report' if key.endswith(('.json', '.md')) else 'lake'}/{key}"
    return ""


def _settings() -> Any:
    from ml.config import load_settings

    return load_settings()


class ReportLink(BaseOperatorLink):
    name = "ct report"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        result = getattr(operator, "step_result", None) or {}
        if not result:
            return ""
        from airflow.configuration import conf

        return report_url(result, _settings().lake_uri, conf.get("api", "base_url", fallback="") or "")


class MlflowModelLink(BaseOperatorLink):
    name = "MLflow model"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        result = getattr(operator, "step_result", None) or {}
        version = result.get("model_version") or result.get("candidate_version")
        if not version:
            return ""
        settings = _settings()
        return f"{settings.mlflow_ui_url.rstrip('/')}/#/models/{settings.model_name}/versions/{version}"


class MlflowRunLink(BaseOperatorLink):
    """The MLflow run of a train step: its per-epoch loss, validation accuracy, learning rate and pace."""

    name = "MLflow training run"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        result = getattr(operator, "step_result", None) or {}
        run_id = result.get("run_id")
        if not run_id:
            return ""
        return f"{_settings().mlflow_ui_url.rstrip('/')}/#/runs/{quote(str(run_id), safe='')}"
