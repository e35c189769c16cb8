"""The ct dashboard (``/ct``): real decisions made by the real steps, rendered as pages, behind Airflow's auth.

The scenario runs the ``ml`` steps in-process (a real lake, a real MLflow store): a first model is
promoted, a crippled one is rejected, an operator rolls back, and a batch with an unknown label is
quarantined. The pages must then tell that story without anyone opening a JSON file.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient

from ml import layout, overview
from ml.release import registry

ROUTES = ["/", "/decision/20260101T000000.000000-gate-k", "/drift", "/data", "/serving", "/report/reports/x.json",
          "/lake/reports/x.json", "/decisions"]  # fmt: skip


class _Tables(HTMLParser):
    """Rows of the table with a given id, as lists of cell texts."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id, self.depth, self.rows = table_id, 0, []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and ("id", self.table_id) in attrs:
            self.depth = 1
        elif self.depth and tag == "tr":
            self.rows.append([])
        elif self.depth and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if self.depth and tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif self.depth and tag == "table":
            self.depth = 0

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table(html: str, table_id: str) -> list[list[str]]:
    parser = _Tables(table_id)
    parser.feed(html)
    return parser.rows


@pytest.fixture
def client(lake):  # type: ignore[no-untyped-def]
    from airflow.api_fastapi.core_api.security import get_user

    from ct_airflow.ui.app import create_app

    app = create_app()
    app.dependency_overrides[get_user] = lambda: {"name": "tester"}
    return TestClient(app)


def test_the_pages_tell_the_story_of_promote_reject_rollback_and_quarantine(
    run_step, settings, write_batch, monkeypatch, client, lake
) -> None:
    from ml.demo import digits, drift, png_bytes
    from tests.ml.test_pipeline import retrain
    from tests.ml.test_promotion import candidate

    write_batch("b1", 0, 500)
    run_step("ingest")
    assert retrain(run_step, "r1")["decision"] == "promote"
    write_batch("b2", 500, 300, transform=drift)  # brighter and noisier: the drift charts must show it
    run_step("ingest")
    with monkeypatch.context() as m:
        m.setenv("CT_TRAIN__EPOCHS", "1")
        m.setenv("CT_TRAIN__LR", "1e-6")
        assert retrain(run_step, "r2", force=True)["decision"] == "reject"
    run_step("promote", "--version", "2", "--reason", "forced to try it on camera B", "--run-key", "ops1",
             "--actor", "bob")  # fmt: skip
    run_step("rollback", "--to", "1", "--reason", "v2 misreads sevens from camera B", "--run-key", "ops2",
             "--actor", "alice")  # fmt: skip
    write_batch("bad", 800, 50, extra_files={"images/11/odd.png": png_bytes(digits()[0][0])})
    assert run_step("ingest")["quarantined"][0]["batch_id"] == "bad"
    candidate(run_step, "backfill__2026-01-05", "--replay", "r1")  # a good candidate, replayed for today
    assert run_step("gate", "--run-key", "backfill__2026-01-05")["decision"] == "would-promote"

    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp  # nothing may run, nothing from elsewhere
    champion = page.text[page.text.index('id="champion"') : page.text.index('id="timeline"')]
    assert re.search(r'class="big"><a [^>]*>v1</a>', champion), champion
    assert "v2 misreads sevens from camera B" in champion and "alice" in champion

    rows = table(page.text, "decisions")
    assert [r[1].split()[0] for r in rows[1:]] == ["would-promote", "rollback", "promote", "reject", "promote"]
    assert rows[1][1] == "would-promote backfill", "a backfill is marked as one"
    reject_row = rows[4]
    assert reject_row[2:4] == ["v2", "v1"] and "vs champion" in reject_row[4]
    assert re.fullmatch(r"[-+]\d+\.\d\d pts", reject_row[6]), reject_row  # Δ for people, not 16 digits
    assert re.fullmatch(r"< 0\.0001|\d\.\d{4}", reject_row[5]), reject_row

    only_rejects = table(client.get("/?decision=reject").text, "decisions")
    assert [r[1].split()[0] for r in only_rejects[1:]] == ["reject"]
    assert len(table(client.get("/?runs=live").text, "decisions")) == 5
    # Backfills apart, beside live, day by day: every run with its decision, the skips too.
    moved = client.get("/?runs=backfill", follow_redirects=False)
    assert moved.status_code == 303 and moved.headers["location"] == "/ct/backfill"
    backfills = client.get("/backfill").text
    assert 'id="backfill-note"' in backfills and "never moves" in backfills
    [header, today] = table(backfills, "replay-days")
    assert header[:2] == ["day", "live"] and header[2].startswith("replay r1")
    assert today[1].startswith("promote") and "reject" in today[1], today  # r1's first model, then r2's reject
    assert today[2].startswith("would-promote v3 vs v1"), today
    assert "decided otherwise than live on <strong>1 of 1</strong> days" in backfills

    # One decision's page: checks as pass/fail rows, the per-class table, the power sentence, links.
    reject_id = overview.decision_id(lake.read_json(layout.report(layout.RETRAIN_DAG, "r2", "gate.json")))
    detail = client.get(f"/decision/{reject_id}")
    assert detail.status_code == 200
    checks = {row[0]: row[1] for row in table(detail.text, "checks")[1:]}
    assert "fail" in checks.values() and set(checks.values()) <= {"pass", "fail", "not run"}, checks
    classes = table(detail.text, "classes")
    assert [row[0] for row in classes[1:]] == [str(i) for i in range(10)]
    assert all(re.fullmatch(r"-|-?\d(\.\d{1,3})?", cell) for row in classes[1:] for cell in row[2:5]), classes
    assert all(row[5] == "guarded" or re.fullmatch(r"not guarded: \d+ rows", row[5]) for row in classes[1:]), classes
    assert all((row[5] == "guarded") == bool(re.fullmatch(r"0\.\d{1,3}|1", row[6])) for row in classes[1:]), classes
    assert 'id="power"' in detail.text and "paired rows" in detail.text
    assert 'id="guard-power">What the class guard could see: ' in detail.text
    for target in ("/ct/report/reports/ct_retrain/r2/eval.json", "/ct/lake/reports/ct_retrain/r2/drift.html",
                   "/#/models/ct-classifier/versions/2", "/#/models/ct-classifier/versions/1"):  # fmt: skip
        assert target in detail.text, target
    # The candidate's training run in MLflow: its curves were logged epoch by epoch.
    train_run = registry.get_version(registry.client(settings), settings.model_name, "2").run_id
    assert f'id="train-run" href="http://127.0.0.1:5000/#/runs/{train_run}"' in detail.text
    assert client.get("/report/reports/ct_retrain/r2/eval.json").status_code == 200
    assert client.get("/decision/20990101T000000.000000-gate-nope").status_code == 404
    assert client.get("/decision/..%2F..%2Fpolicy").status_code == 404

    # Drift: one SVG per feature, with its threshold line; the run that retrained is marked.
    drift = client.get("/drift").text
    svgs = re.findall(r'<svg class="chart".*?</svg>', drift, flags=re.S)
    assert len(svgs) >= 5
    assert all('class="threshold"' in svg for svg in svgs if "brightness" in svg or "mean" in svg)
    assert any('class="point' in svg and "retrained" in svg for svg in svgs)

    # Data: the quarantined batch with its rule and how to re-ingest it; curated batches with row counts.
    data = client.get("/data").text
    quarantined = data[data.index('data-batch="bad"') :]
    assert 'data-rule="label_in_set"' in quarantined
    assert (
        "python -m ml ingest --batch-id bad" in quarantined and "{&#34;batch_ids&#34;: [&#34;bad&#34;]}" in quarantined
    )
    assert table(data, "curated")[1:] == [["b1", "500", "validation.html"], ["b2", "300", "validation.html"]]


def test_hostile_text_is_escaped_and_a_corrupt_record_is_named(client, lake) -> None:
    record = {"kind": "rollback", "run_key": "ops-x", "dag_id": "ct_ops", "decided_at": 1767225600.0,
              "decision": "rollback", "reasons": ["<script>alert(1)</script> & <b>bold</b>"], "actor": "<img src=x>",
              "candidate_version": "1", "champion_version": "2"}  # fmt: skip
    lake.write_json(f"state/decisions/{overview.decision_id(record)}.json", record)
    lake.write_bytes("state/decisions/20260102T000000.000000-gate-broken.json", b"{not json")
    page = client.get("/")
    assert "<script>" not in page.text and "<img src=x>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page.text
    assert "Skipped an unreadable decision record" in page.text and "gate-broken.json" in page.text
    assert client.get("/decision/20260102T000000.000000-gate-broken").status_code == 404
    detail = client.get(f"/decision/{overview.decision_id(record)}").text
    assert "&lt;img src=x&gt;" in detail and "<img" not in detail


def test_the_serving_page_says_what_to_do_before_anything_is_monitored(client) -> None:
    page = client.get("/serving").text
    assert "ct_monitor has not judged live traffic yet" in page and "python -m ml serve" in page


@pytest.mark.parametrize("path", ROUTES)
def test_every_route_needs_an_airflow_login(lake, path: str) -> None:
    from ct_airflow.ui.app import create_app

    assert TestClient(create_app()).get(path).status_code == 401
