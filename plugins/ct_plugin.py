"""Registers ct with Airflow: the dashboard under ``/ct`` (in the navigation), and the links on ct's tasks."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from ct_airflow.ui.app import create_app
from ct_airflow.ui.links import WEBAPP_PREFIX, MlflowModelLink, MlflowRunLink, ReportLink


class CtPlugin(AirflowPlugin):
    name = "ct"
    operator_extra_links = [ReportLink(), MlflowModelLink(), MlflowRunLink()]  # noqa: RUF012 - AirflowPlugin API
    fastapi_apps = [{"app": create_app(), "url_prefix": WEBAPP_PREFIX, "name": "ct dashboard"}]  # noqa: RUF012
    # A top-level entry in Airflow's navigation that shows the dashboard inside the UI (an iframe at /plugin/ct).
    external_views = [  # noqa: RUF012
        {"name": "ct", "href": f"{WEBAPP_PREFIX}/", "url_route": "ct", "destination": "nav", "nav_top_level": True}
    ]
