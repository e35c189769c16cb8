"""The dashboard's actions: roll back or force a promotion by triggering ``ct_ops`` as the logged-in user.

ct decides nothing here. The form's request goes to Airflow's own REST API
(``POST /api/v2/dags/ct_ops/dagRuns``) with the user's own token, so Airflow's permissions decide who
may act: a user who may not trigger ``ct_ops`` is refused by Airflow, and the page says so. The run
then does what a run triggered from the Airflow UI does (the lease, the compare-and-set, the record).

A form post must carry the page's CSRF token (an HMAC of the user's own token, so another site
cannot compute it) and, when the browser sends one, an ``Origin`` of this server.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import HTTPException, Request

OPS_DAG = "ct_ops"
ACTIONS = ("rollback", "promote")
MIN_REASON_CHARS = 10  # kept in step with ml.release.promote.MIN_REASON_CHARS (and ct_ops's Param)
API_TIMEOUT_S = 30.0
COOKIE = "_token"  # airflow.api_fastapi.auth.managers.base_auth_manager.COOKIE_NAME_JWT_TOKEN


def user_token(request: Request) -> str:
    """The credential this request was authenticated with: a bearer token, else the UI's cookie."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return credentials.strip()
    token = request.cookies.get(COOKIE, "")
    if not token:
        raise HTTPException(status_code=401, detail="not logged in")
    return token


def _secret() -> bytes:
    from airflow.configuration import conf

    secret = conf.get("api_auth", "jwt_secret", fallback="") or conf.get("api", "secret_key", fallback="")
    return secret.encode() or b"ct-dashboard"


def csrf_token(token: str) -> str:
    """The form token for a user's session: only a page served to that session can know it."""
    return hmac.new(_secret(), b"ct-actions:" + token.encode(), hashlib.sha256).hexdigest()


def check_csrf(request: Request, submitted: str) -> None:
    if not hmac.compare_digest(submitted or "", csrf_token(user_token(request))):
        raise HTTPException(status_code=403, detail="the form expired or came from another site; reload the page")
    origin = request.headers.get("origin")
    if origin and origin != "null":
        here = urlsplit(str(request.base_url))
        there = urlsplit(origin)
        if (there.scheme, there.netloc) != (here.scheme, here.netloc):
            raise HTTPException(status_code=403, detail=f"refusing a form posted from {origin}")


@dataclass(frozen=True)
class Ask:
    """What the form asks for, checked before Airflow sees it."""

    action: str
    version: str
    reason: str

    def problems(self) -> list[str]:
        found = []
        if self.action not in ACTIONS:
            found.append(f"choose an action: {' or '.join(ACTIONS)}")
        if not re.fullmatch(r"[0-9]{1,9}", self.version):
            found.append("choose a model version (a number)")
        if len(self.reason.strip()) < MIN_REASON_CHARS:
            found.append(f"give a reason of at least {MIN_REASON_CHARS} characters; it goes into the history")
        return found

    def conf(self) -> dict[str, str]:
        return {"action": self.action, "version": self.version, "reason": self.reason.strip()}


def internal_api_url() -> str:
    """Where this API server answers itself: its own host and port, under the base URL's path."""
    from airflow.configuration import conf

    from ct_airflow.ui.links import api_address

    host, port = api_address()
    path = urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")
    scheme = "https" if conf.get("api", "ssl_cert", fallback="") else "http"
    return f"{scheme}://{host}:{port}{path}"


#: Opens a client on Airflow's REST API; tests replace it with a client of the in-process app.
api_client: Callable[[], httpx.Client] = lambda: httpx.Client(base_url=internal_api_url(), timeout=API_TIMEOUT_S)  # noqa: E731


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status: int
    message: str
    run_id: str | None = None


def trigger(token: str, wanted: Ask) -> Outcome:
    """``POST /api/v2/dags/ct_ops/dagRuns`` as the user; Airflow's answer, in words."""
    body = {"logical_date": None, "conf": wanted.conf(), "note": f"from the ct dashboard: {wanted.reason.strip()}"}
    try:
        with api_client() as client:
            reply = client.post(f"/api/v2/dags/{OPS_DAG}/dagRuns", json=body,
                                headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    except httpx.HTTPError as exc:
        return Outcome(False, 502, f"Airflow's API did not answer ({exc}); nothing was triggered")
    if reply.status_code in (200, 201):
        run_id = str(reply.json().get("dag_run_id"))
        return Outcome(True, reply.status_code, f"{OPS_DAG} run {run_id} is queued", run_id)
    detail = _detail(reply)
    if reply.status_code in (401, 403):
        return Outcome(False, 403, f"Airflow refused: you may not trigger {OPS_DAG} ({detail})")
    return Outcome(False, reply.status_code, f"Airflow refused the run: {detail}")


def _detail(reply: httpx.Response) -> str:
    try:
        detail: Any = reply.json().get("detail", reply.text)
    except ValueError:
        detail = reply.text
    return str(detail)[:500]
