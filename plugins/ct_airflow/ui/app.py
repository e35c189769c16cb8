"""The ct dashboard and report viewer, mounted in the Airflow API server under ``/ct``.

Pages (HTML, server-rendered, no external assets): ``/`` the champion and the decision timeline,
``/decision/<id>`` one decision, ``/drift`` the drift charts, ``/data`` landing, curated and
quarantined batches, ``/report/<key>`` a JSON or Markdown report in the same style. Raw objects:
``/lake/<key>`` (only ``reports/``, ``quarantine/`` and ``state/decisions/``) and ``/decisions``
(JSON). Every route needs an Airflow login: the UI's session cookie or a bearer token.
"""

from __future__ import annotations

import logging
import mimetypes
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Form, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from ct_airflow.runkey import run_key_from_run_id
from ct_airflow.ui import actions, charts, render
from ct_airflow.ui.links import WEBAPP_PREFIX

log = logging.getLogger(__name__)
SERVED_PREFIXES = ("reports/", "quarantine/", "state/decisions/")
#: How long a page waits for MLflow's answer about @champion before it shows ct's own record.
REGISTRY_TIMEOUT_S = 5.0
#: Every page forbids scripts and anything from elsewhere: it is plain HTML with inline styles.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'self'; form-action 'self'"


def _settings() -> Any:
    from ml.config import load_settings

    return load_settings()


def _lake(settings: Any) -> Any:
    from ml.storage import Lake

    return Lake.from_uri(settings.lake_uri)


def _airflow_run_ids(dag_ids: set[str]) -> dict[tuple[str, str], str]:
    """(dag_id, run_key) -> run_id of the DAG runs Airflow knows, to link a decision to its run."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with create_session() as session:
            rows = session.execute(select(DagRun.dag_id, DagRun.run_id).where(DagRun.dag_id.in_(dag_ids))).all()
    except (SQLAlchemyError, OSError) as exc:  # the page is still useful without run links
        log.warning("cannot read DAG runs for the dashboard's links: %s", exc)
        return {}
    return {(dag_id, run_key_from_run_id(run_id)): run_id for dag_id, run_id in rows}


def _ops_runs(limit: int = 10) -> list[dict[str, Any]]:
    """The newest ``ct_ops`` runs: who asked for what, and how it went."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    columns = (DagRun.run_id, DagRun.state, DagRun.triggering_user_name, DagRun.conf, DagRun.run_after)
    try:
        with create_session() as session:
            rows = session.execute(select(*columns).where(DagRun.dag_id == actions.OPS_DAG)
                                   .order_by(DagRun.id.desc()).limit(limit)).all()  # fmt: skip
    except (SQLAlchemyError, OSError) as exc:
        log.warning("cannot read ct_ops runs: %s", exc)
        return []
    return [{"run_id": r[0], "state": str(r[1] or ""), "user": r[2], "conf": dict(r[3] or {}),
             "run_key": run_key_from_run_id(r[0]), "when": r[4].timestamp() if r[4] else None} for r in rows]  # fmt: skip


def _ops_record(lake: Any, run_key: str) -> dict[str, Any] | None:
    """The decision a ``ct_ops`` run recorded, once it has."""
    from ml import layout
    from ml.overview import decision_id

    key = layout.report(layout.OPS_DAG, run_key, "decision.json")
    if not lake.exists(key):
        return None
    record = lake.read_json(key)
    return {**record, "id": decision_id(record)}


@dataclass
class Links:
    """URLs the pages point at: MLflow versions, Airflow runs, lake reports."""

    mlflow_ui: str
    model_name: str
    run_ids: dict[tuple[str, str], str]

    def model(self, version: Any) -> str:
        return f"{self.mlflow_ui.rstrip('/')}/#/models/{quote(self.model_name)}/versions/{quote(str(version))}"

    def mlflow_run(self, run_id: str) -> str:
        return f"{self.mlflow_ui.rstrip('/')}/#/runs/{quote(run_id, safe='')}"

    def run(self, dag_id: str, run_key: str) -> str:
        # A backfill's key is its run's key plus its replay's id (ct_airflow.runkey.replay_run_key).
        run_id = self.run_ids.get((dag_id, run_key)) or self.run_ids.get((dag_id, run_key.rsplit(".", 1)[0]))
        if run_id is None:
            return f"/dags/{quote(dag_id)}/runs"
        return f"/dags/{quote(dag_id)}/runs/{quote(run_id, safe='')}"

    @staticmethod
    def report(key: str) -> str:
        styled = key.endswith((".json", ".md"))
        return f"{WEBAPP_PREFIX}/{'report' if styled else 'lake'}/{quote(key)}"


def _links(settings: Any, dag_ids: set[str]) -> Links:
    return Links(settings.mlflow_ui_url, settings.model_name, _airflow_run_ids(dag_ids) if dag_ids else {})


def _registry_champion(settings: Any) -> tuple[str | None, str | None]:
    """MLflow's @champion version, or why it is not known; never waits more than REGISTRY_TIMEOUT_S."""

    def ask() -> str | None:
        from ml.release import registry

        return registry.champion_version(registry.client(settings), settings.model_name)

    from mlflow.exceptions import MlflowException

    from ml.errors import CtError

    pool = ThreadPoolExecutor(1, thread_name_prefix="ct-ui-registry")
    try:
        return pool.submit(ask).result(timeout=REGISTRY_TIMEOUT_S), None
    except FutureTimeout:
        return None, f"MLflow did not answer within {REGISTRY_TIMEOUT_S:g} s."
    except (CtError, MlflowException, OSError) as exc:
        return None, f"MLflow could not say which version is @champion: {str(exc)[:300]}"
    finally:
        pool.shutdown(wait=False)


def _html(body: str) -> HTMLResponse:
    return HTMLResponse(body, headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"})


def _served_key(key: str) -> str:
    from ml.errors import CtError
    from ml.storage import clean_key

    try:
        key = clean_key(key)
    except CtError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc
    if not key.startswith(SERVED_PREFIXES):
        raise HTTPException(status_code=404, detail=f"only {', '.join(SERVED_PREFIXES)} are served")
    return key


def create_app() -> FastAPI:
    from airflow.api_fastapi.core_api.security import get_user

    app = FastAPI(title="ct", dependencies=[Depends(get_user)])
    base = WEBAPP_PREFIX

    @app.get("/backfill", response_class=HTMLResponse)
    def backfill_page() -> HTMLResponse:
        from ml import layout
        from ml import overview as data
        from ml.release.history import read_history

        settings = _settings()
        lake = _lake(settings)
        records, _ = read_history(lake)
        view = data.replay_view(lake, records)
        return _html(render.page("backfill.html", title="Backfill", active="backfill", base=base,
                                 days=view["days"], replays=view["replays"],
                                 links=_links(settings, {layout.RETRAIN_DAG})))  # fmt: skip

    @app.get("/", response_class=HTMLResponse, response_model=None)
    def overview(decision: str = "", runs: str = "all") -> HTMLResponse | RedirectResponse:
        if runs == "backfill":  # every backfill run, skips too, beside live: the replay view
            return RedirectResponse(f"{base}/backfill", status_code=303)
        from ml import overview as data
        from ml.release.history import read_history

        settings = _settings()
        records, problems = read_history(_lake(settings))  # once: on S3 every record is a GET
        entries = data.timeline(records, decision or None, {"live": False, "backfill": True}.get(runs))
        registry_version, registry_problem = _registry_champion(settings)
        champion = data.champion_card(records, registry_version)
        links = _links(settings, {e["dag_id"] for e in entries})
        return _html(render.page(
            "overview.html", title="Overview", active="overview", base=base, model_name=settings.model_name,
            champion=champion, registry_problem=registry_problem, entries=entries, decision=decision,
            runs=runs if runs in ("live", "backfill") else "all", links=links,
            problems=[f"Skipped an unreadable decision record: {p}" for p in problems],
        ))  # fmt: skip

    @app.get("/decision/{ident}", response_class=HTMLResponse)
    def decision_page(ident: str) -> HTMLResponse:
        from ml import overview as data

        settings = _settings()
        record = data.decision(_lake(settings), ident)
        if record is None:
            raise HTTPException(status_code=404, detail=f"no decision {ident!r}")
        classes = (record.get("checks") or {}).get("non_inferiority", {}).get("classes") or []
        return _html(render.page(
            "decision.html", title=f"{record['decision']} · {record['run_key']}", active="overview", base=base,
            record=record, classes=classes, links=_links(settings, {record["entry"]["dag_id"]}),
        ))  # fmt: skip

    @app.get("/drift", response_class=HTMLResponse)
    def drift_page() -> HTMLResponse:
        from ml import overview as data

        series = data.drift_series(_lake(_settings()))
        rendered = [
            (name, points[-1].get("detector"), render.trusted(charts.drift_chart(name, points)), points[-1])
            for name, points in series["features"].items()
        ]
        return _html(render.page("drift.html", title="Drift", active="drift", base=base, charts=rendered,
                                 runs=series["runs"]))  # fmt: skip

    @app.get("/serving", response_class=HTMLResponse)
    def serving_page() -> HTMLResponse:
        from ml import overview as data

        settings = _settings()
        return _html(render.page("serving.html", title="Serving", active="serving", base=base,
                                 serving=data.serving_status(_lake(settings)), model_name=settings.model_name))  # fmt: skip

    @app.get("/data", response_class=HTMLResponse)
    def data_page() -> HTMLResponse:
        from ml import overview as data

        settings = _settings()
        return _html(render.page("data.html", title="Data", active="data", base=base,
                                 data=data.data_status(_lake(settings)), links=_links(settings, set())))  # fmt: skip

    def actions_page(request: Request, status: int = 200, **form: Any) -> HTMLResponse:
        from ml.release.history import read_history

        settings = _settings()
        lake = _lake(settings)
        records, _ = read_history(lake)
        versions = sorted({str(r["candidate_version"]) for r in records if r.get("candidate_version")}, key=int)
        runs = _ops_runs()
        result = next((r for r in runs if r["run_id"] == form.get("run")), None)
        if result is not None:
            result["record"] = _ops_record(lake, result["run_key"])
        response = _html(render.page(
            "actions.html", title="Actions", active="actions", base=base, versions=versions, runs=runs,
            champion=data_champion(records), csrf=actions.csrf_token(actions.user_token(request)), result=result,
            links=_links(settings, set()), **{k: v for k, v in form.items() if k != "run"},
        ))  # fmt: skip
        response.status_code = status
        return response

    def data_champion(records: list[dict[str, Any]]) -> str | None:
        from ml import overview as data

        card = data.champion_card(records)
        return card["version"] if card else None

    @app.get("/actions", response_class=HTMLResponse)
    def actions_form(request: Request, action: str = "rollback", version: str = "", run: str = "") -> HTMLResponse:
        return actions_page(request, action=action, version=version, run=run)

    @app.post("/actions", response_class=HTMLResponse)
    def run_action(
        request: Request,
        action: str = Form(""),
        version: str = Form(""),
        reason: str = Form(""),
        csrf: str = Form(""),
    ) -> Response:
        actions.check_csrf(request, csrf)
        wanted = actions.Ask(action, version.strip(), reason)
        if problems := wanted.problems():
            return actions_page(request, 400, action=action, version=version, reason=reason, errors=problems)
        outcome = actions.trigger(actions.user_token(request), wanted)
        if not outcome.ok:
            log.warning("ct_ops %s to v%s refused: %s", action, version, outcome.message)
            return actions_page(request, outcome.status, action=action, version=version, reason=reason,
                                errors=[outcome.message])  # fmt: skip
        log.info("ct_ops %s to v%s triggered from the dashboard: %s", action, version, outcome.run_id)
        return RedirectResponse(f"{base}/actions?run={quote(str(outcome.run_id))}", status_code=303)

    @app.get("/report/{key:path}", response_class=HTMLResponse)
    def report_page(key: str) -> HTMLResponse:
        """A JSON or Markdown report, readable, in the dashboard's style (the raw object is one click away)."""
        key = _served_key(key)
        lake = _lake(_settings())
        if not lake.exists(key):
            raise HTTPException(status_code=404, detail=f"{lake.uri(key)} does not exist")
        body = lake.read_bytes(key).decode("utf-8", "replace")
        if key.endswith(".json"):
            try:
                import json

                body = render.pretty_json(json.loads(body))
            except ValueError:
                pass  # shown as it is
        return _html(render.page("report.html", title=key.rsplit("/", 2)[-2] + " / " + key.rsplit("/", 1)[-1],
                                 base=base, active="", uri=lake.uri(key), body=body, raw=f"{base}/lake/{quote(key)}"))  # fmt: skip

    @app.get("/lake/{key:path}")
    def read_lake_object(key: str) -> Response:
        key = _served_key(key)
        lake = _lake(_settings())
        if not lake.exists(key):
            raise HTTPException(status_code=404, detail=f"{lake.uri(key)} does not exist")
        body = lake.read_bytes(key)
        media_type = mimetypes.guess_type(key)[0] or "text/plain"
        if key.endswith(".md"):
            media_type = "text/plain; charset=utf-8"
        return Response(content=body, media_type=media_type, headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/decisions")
    def list_decisions(response: Response, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first. An unreadable record is skipped and named in ``X-Ct-Unreadable`` (and the log)."""
        from ml.release.history import read_history

        records, problems = read_history(_lake(_settings()), limit)
        if problems:
            response.headers["X-Ct-Unreadable"] = str(len(problems))
            response.headers["X-Ct-Unreadable-First"] = problems[0][:500].encode("ascii", "replace").decode()
        return list(reversed(records))

    return app
