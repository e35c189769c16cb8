"""Tell people: a message on every quarantine, promotion, rollback, forced promotion and failed ct task.

:class:`CtNotifier` is an Airflow notifier (``BaseNotifier``), attached as task callbacks by
:data:`NOTIFY_ARGS`. Where messages go is an Airflow Connection, ``ct_notify`` (no connection: no
message, and nothing else changes):

* ``http`` / ``https``: a webhook. ct POSTs one JSON object, ``{"text", "event", "reason", "link",
  "dag_id", "run_id", "task_id"}``; ``text`` is the one line a chat channel shows (Slack and
  Mattermost incoming webhooks read it as is). The URL is the connection's host (a whole URL, or a
  host with ``schema``, ``port`` and ``extra.endpoint``); a password is sent as a bearer token.
* ``smtp``: an email through the SMTP provider, to the addresses in ``extra.to``.

Every message carries its one-line reason and a link to the ct dashboard page that explains it.
A webhook that is down or busy (no connection, a timeout, 429 or 5xx) is tried again, up to
:data:`WEBHOOK_ATTEMPTS` times in all; one that refuses the message (another 4xx) is not. A message
that cannot be sent is logged as a warning; it never fails or retries the task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from airflow.sdk.bases.notifier import BaseNotifier

from ct_airflow.ui.links import WEBAPP_PREFIX, airflow_base_url, report_url

log = logging.getLogger(__name__)

CONN_ID = "ct_notify"
SEND_TIMEOUT_S = 10.0
WEBHOOK_ATTEMPTS = 3
#: Seconds to wait before the second and third attempt.
WEBHOOK_BACKOFF_S = (1.0, 4.0)
QUARANTINE_TASK = "fail_on_quarantine"
#: What a moving decision is called in a message, by the kind of record that moved @champion.
MOVE_EVENTS = {"gate": "promotion", "approval": "promotion", "rollback": "rollback", "promote": "forced promotion"}


def _lake_root() -> str:
    from ml.config import load_settings

    return load_settings().lake_uri


def failure_message(context: Mapping[str, Any]) -> dict[str, Any]:
    """A failed task: a quarantine (the batches and their rules), or any other failure with its error line."""
    ti = context["ti"]
    error = str(context.get("exception") or "no error message").strip()
    base = airflow_base_url()
    if ti.task_id == QUARANTINE_TASK:
        batches = [line.split(" (report:", 1)[0] for line in error.splitlines()[1:] if " (report:" in line]
        reason = "; ".join(batches) or error.splitlines()[0]
        return {"event": "quarantine", "reason": reason, "link": f"{base}{WEBAPP_PREFIX}/data",
                "text": f"ct: batch quarantined, champion untouched: {reason}"}  # fmt: skip
    first = error.splitlines()[0][:500]
    return {"event": "task failed", "reason": first, "link": f"{base}{WEBAPP_PREFIX}/",
            "text": f"ct: {ti.dag_id}.{ti.task_id} failed (try {ti.try_number}): {first}"}  # fmt: skip


def move_message(result: Mapping[str, Any]) -> dict[str, Any] | None:
    """A decision that moved ``@champion`` (a promotion, a rollback, a forced promotion); None for any other."""
    if result.get("decision") not in ("promote", "rollback"):
        return None
    kind = str(result.get("kind") or ("gate" if "gate_uri" in result else result["decision"]))
    event = MOVE_EVENTS.get(kind, "promotion")
    headline = str(result.get("headline") or result["decision"])
    return {"event": event, "reason": headline, "link": report_url(dict(result), _lake_root(), airflow_base_url()),
            "text": f"ct: {event}: {headline}"}  # fmt: skip


class CtNotifier(BaseNotifier):
    """Send ct's message for a task callback: ``on="failure"`` for a failed task, ``on="move"`` for a
    task whose result may have moved ``@champion`` (``promoted``, ``ct_ops.move_champion``)."""

    def __init__(self, on: str, conn_id: str = CONN_ID) -> None:
        super().__init__()
        if on not in ("failure", "move"):
            raise ValueError(f"on must be failure or move, got {on!r}")
        self.on, self.conn_id = on, conn_id

    def notify(self, context: Any) -> None:
        try:
            message = self.message(context)
            if message is not None:
                send(self.conn_id, message)
        except Exception as exc:  # noqa: BLE001 (a message is never worth failing the task it reports on)
            log.warning("could not send the ct notification through %s: %s", self.conn_id, exc)

    def message(self, context: Any) -> dict[str, Any] | None:
        ti = context["ti"]
        message: dict[str, Any] | None
        if self.on == "failure":
            message = failure_message(context)
        else:
            from ct_airflow.operators.tasks import final_decision

            result = final_decision(ti) if ti.task_id == "promoted" else ti.xcom_pull(task_ids=ti.task_id) or {}
            message = move_message(result)
        if message is None:
            return None
        return {**message, "dag_id": ti.dag_id, "run_id": ti.run_id, "task_id": ti.task_id}


def _connection(conn_id: str) -> Any | None:
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def webhook_url(conn: Any) -> str:
    host = str(conn.host or "")
    if "://" in host:
        return host
    endpoint = str((conn.extra_dejson or {}).get("endpoint", "")).lstrip("/")
    scheme = conn.schema or ("http" if conn.conn_type == "http" else "https")
    return f"{scheme}://{host}{f':{conn.port}' if conn.port else ''}/{endpoint}"


def send(conn_id: str, message: dict[str, Any]) -> None:
    conn = _connection(conn_id)
    if conn is None:
        log.debug("no %s connection: not sending %s", conn_id, message["event"])
        return
    if conn.conn_type in ("http", "https"):
        post_webhook(webhook_url(conn), message, conn.password)
    elif conn.conn_type in ("smtp", "email"):
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        to = (conn.extra_dejson or {}).get("to")
        if not to:
            raise ValueError(f"the {conn_id} connection needs extra.to (who gets the email)")
        with SmtpHook(smtp_conn_id=conn_id) as smtp:
            smtp.send_email_smtp(to=to, subject=message["text"][:200],
                                 html_content=f"<p>{_escape(message['text'])}</p><p><a href=\"{_escape(message['link'])}\">"
                                              "Open it in the ct dashboard</a></p>")  # fmt: skip
    else:
        raise ValueError(f"the {conn_id} connection has type {conn.conn_type!r}; ct sends to http(s) and smtp")
    log.info("sent the ct %s notification through %s", message["event"], conn_id)


def post_webhook(url: str, message: dict[str, Any], token: str | None = None) -> None:
    """POST the message, trying again while the receiver is unreachable or answers 429 or 5xx."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
        try:
            reply = httpx.post(url, json=message, headers=headers, timeout=SEND_TIMEOUT_S)
            busy = reply.status_code == 429 or reply.status_code >= 500
            if not busy or attempt == WEBHOOK_ATTEMPTS:
                reply.raise_for_status()  # a 2xx returns; another 4xx is a refusal, and would be again
                return
            problem = f"HTTP {reply.status_code}"
        except httpx.TransportError as exc:
            if attempt == WEBHOOK_ATTEMPTS:
                raise
            problem = str(exc) or type(exc).__name__
        log.info("the webhook did not take the ct %s notification (attempt %d of %d: %s); trying again",
                 message["event"], attempt, WEBHOOK_ATTEMPTS, problem)  # fmt: skip
        time.sleep(WEBHOOK_BACKOFF_S[min(attempt, len(WEBHOOK_BACKOFF_S)) - 1])


def _escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


#: Task arguments for every ct task: a failure (after its last retry) sends a message.
NOTIFY_ARGS: dict[str, Any] = {"on_failure_callback": [CtNotifier("failure")]}
