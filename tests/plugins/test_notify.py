"""Where ct's messages go: the ``ct_notify`` connection as a webhook URL or an SMTP server.

The messages themselves, from real DAG runs, are in ``tests/dags/test_notifications.py``; here the
delivery paths: a webhook address spelled either way, a webhook on loopback that is busy, down or
refusing, and an email through the SMTP provider to a small SMTP server on loopback.
"""

from __future__ import annotations

import json
import logging
import socketserver
import threading
from collections.abc import Iterator
from email import message_from_string
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import ClassVar

import httpx
import pytest

from ct_airflow.operators import notify

MESSAGE = {"event": "rollback", "reason": "ROLLBACK to v1 from v2 by alice: v2 misreads sevens",
           "text": "ct: rollback: ROLLBACK to v1 from v2 by alice: v2 misreads sevens",
           "link": "https://airflow.example/ct/decision/20260101T000000.000000-rollback-k"}  # fmt: skip


def test_a_webhook_address_is_a_whole_url_or_host_schema_port_and_endpoint() -> None:
    whole = SimpleNamespace(host="https://hooks.example.com/services/T0/B0", conn_type="http", extra_dejson={})
    assert notify.webhook_url(whole) == "https://hooks.example.com/services/T0/B0"
    parts = SimpleNamespace(host="chat.internal", conn_type="http", schema="https", port=8443,
                            extra_dejson={"endpoint": "/hooks/ct"})  # fmt: skip
    assert notify.webhook_url(parts) == "https://chat.internal:8443/hooks/ct"


def test_without_a_connection_nothing_is_sent_and_nothing_fails(monkeypatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_CT_NOTIFY", raising=False)
    assert notify._connection("ct_notify") is None
    notify.send("ct_notify", MESSAGE)  # no connection: a debug line, no error


def test_an_unsupported_connection_type_is_named(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CT_NOTIFY", json.dumps({"conn_type": "ftp", "host": "x"}))
    with pytest.raises(ValueError, match="has type 'ftp'; ct sends to http"):
        notify.send("ct_notify", MESSAGE)


def test_a_message_that_cannot_be_sent_never_fails_the_task(monkeypatch, caplog) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_CT_NOTIFY", json.dumps({"conn_type": "http", "host": "http://127.0.0.1:9/x"}))
    monkeypatch.setattr(notify, "WEBHOOK_BACKOFF_S", (0.0, 0.0))
    notifier = notify.CtNotifier("failure")
    monkeypatch.setattr(notifier, "message", lambda context: MESSAGE)
    with caplog.at_level(logging.INFO, logger=notify.__name__):
        notifier.notify({})
    assert "attempt 2 of 3" in caplog.text  # nothing listens on port 9: tried three times, then given up
    assert "could not send the ct notification through ct_notify" in caplog.text


class _Webhook(BaseHTTPRequestHandler):
    """Answers each POST with the next status of ``script`` (200 once it runs out), keeping the bodies."""

    script: ClassVar[list[int]] = []
    bodies: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        self.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(self.script.pop(0) if self.script else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook(monkeypatch) -> Iterator[type[_Webhook]]:
    _Webhook.script, _Webhook.bodies = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hooks/ct"
    monkeypatch.setenv("AIRFLOW_CONN_CT_NOTIFY", json.dumps({"conn_type": "http", "host": url}))
    monkeypatch.setattr(notify, "WEBHOOK_BACKOFF_S", (0.0, 0.0))
    yield _Webhook
    server.shutdown()


def test_a_busy_webhook_is_tried_again_until_it_takes_the_message(webhook) -> None:
    webhook.script = [503, 429]
    notify.send("ct_notify", MESSAGE)
    assert len(webhook.bodies) == 3 and all(body == MESSAGE for body in webhook.bodies)


def test_a_webhook_that_stays_down_is_given_up_after_three_attempts(webhook) -> None:
    webhook.script = [502, 503, 500, 500]
    with pytest.raises(httpx.HTTPStatusError, match="500"):
        notify.send("ct_notify", MESSAGE)
    assert len(webhook.bodies) == 3


def test_a_webhook_that_refuses_the_message_is_not_asked_again(webhook) -> None:
    webhook.script = [404]
    with pytest.raises(httpx.HTTPStatusError, match="404"):
        notify.send("ct_notify", MESSAGE)
    assert len(webhook.bodies) == 1


class _SmtpSink(socketserver.StreamRequestHandler):
    """Just enough SMTP to take one message: greet, accept every command, read DATA until the dot."""

    received: ClassVar[list[str]] = []

    def reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())

    def handle(self) -> None:
        self.reply("220 sink ESMTP")
        while line := self.rfile.readline().decode():
            verb = line.strip().split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 sink")
            elif verb == "DATA":
                self.reply("354 go on")
                body = []
                while (row := self.rfile.readline().decode()) not in (".\r\n", ""):
                    body.append(row)
                self.received.append("".join(body))
                self.reply("250 queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 ok")


@pytest.fixture
def smtp_sink() -> Iterator[tuple[int, list[str]]]:
    _SmtpSink.received = []
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SmtpSink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], _SmtpSink.received
    server.shutdown()


def test_an_smtp_connection_sends_an_email_with_the_reason_and_the_link(monkeypatch, smtp_sink) -> None:
    port, received = smtp_sink
    conn = {"conn_type": "smtp", "host": "127.0.0.1", "port": port, "login": "", "password": "",
            "extra": {"to": ["oncall@example.com"], "from_email": "ct@example.com", "disable_tls": True,
                      "disable_ssl": True}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_CT_NOTIFY", json.dumps(conn))
    notify.send("ct_notify", MESSAGE)
    [raw] = received
    email = message_from_string(raw)
    assert email["To"] == "oncall@example.com" and email["Subject"] == MESSAGE["text"]
    html = next(part for part in email.walk() if part.get_content_type() == "text/html").get_payload(decode=True)
    assert MESSAGE["link"].encode() in html and b"v2 misreads sevens" in html
