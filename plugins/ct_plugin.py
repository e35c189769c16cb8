"""Registers ct with Airflow: the report viewer under ``/ct`` and the links to it and to MLflow."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from ct_airflow.links import WEBAPP_PREFIX, MlflowModelLink, ReportLink
from ct_airflow.webapp import create_app


class CtPlugin(AirflowPlugin):
    name = "ct"
    operator_extra_links = [ReportLink(), MlflowModelLink()]  # noqa: RUF012 - AirflowPlugin API
    fastapi_apps = [{"app": create_app(), "url_prefix": WEBAPP_PREFIX, "name": "ct reports"}]  # noqa: RUF012
