"""Where ct's messages go: the ``ct_notify`` connection as a webhook URL or an SMTP server.

The messages themselves, from real DAG runs, are in ``tests/dags/test_notifications.py``; here the
delivery paths: a webhook address spelled either way, and an email through the SMTP provider to a
small SMTP server on loopback.
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from email import message_from_string
from types import SimpleNamespace
from typing import ClassVar

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
    notifier = notify.CtNotifier("failure")
    monkeypatch.setattr(notifier, "message", lambda context: MESSAGE)
    notifier.notify({})
    assert "could not send the ct notification through ct_notify" in caplog.text


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
