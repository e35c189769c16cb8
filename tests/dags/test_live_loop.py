"""The loop closed over real HTTP: the champion serves, live monitoring sees it fail, ct retrains and the
service switches versions while a client keeps calling it, without a failed request; a broken version
is refused while the old one serves, the metrics count it all, and SIGTERM loses no logged prediction.

Real parts throughout: ``python -m ml serve`` (MLflow's scoring server) in its own process, a
client thread sending base64 PNGs, the prediction log in the lake, and the DAGs run by ``dag.test()``
(each step a subprocess): ``ct_ingest`` (images and a feedback batch), ``ct_monitor``,
``ct_retrain`` and ``ct_ops``.
"""

from __future__ import annotations

import os
import re
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from ml import layout
from ml.demo import digits, drift, png_bytes
from ml.release import registry
from ml.serve import predlog
from tests.conftest import free_port
from tests.dags.test_dag_runs import event_extras, states
from tests.serving import Traffic, body, broken_version, service

pytestmark = pytest.mark.xdist_group("live-loop")

CLEAN, DRIFTED = slice(1000, 1150), slice(1150, 1750)  # digits the bootstrap batch (0..800) never had


def now() -> datetime:
    """A run's logical date: this moment, so that the run sees what was logged and ingested until now."""
    time.sleep(0.01)  # two runs a few ms apart get different dates, so different run ids
    return datetime.now(UTC)


def wait_until(check, what: str, timeout: float = 90) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def serving_page_shows(verdict: dict) -> None:
    """The dashboard's Serving page, through Airflow's app: estimated against realized accuracy, lag, alarms."""
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.testclient import TestClient

    from ct_airflow.ui.app import create_app
    from ct_airflow.ui.render import num
    from tests.plugins.test_dashboard import table

    app = create_app()
    app.dependency_overrides[get_user] = lambda: {"name": "oncall"}
    page = TestClient(app).get("/serving").text
    version = table(page, "serving-versions")[1]
    estimate, realized = verdict["estimate"], verdict["realized"]["champion"]
    assert version[:4] == ["v1", num(estimate["reference_accuracy"]),
                           f"{num(estimate['accuracy'])} ({num(estimate['low'])}-{num(estimate['high'])})", "yes"]  # fmt: skip
    assert version[4].startswith(num(realized["accuracy"])) and version[5] == str(realized["rows"])
    assert 'id="label-lag">Late labels came back after' in page
    assert all(alarm["trigger"] in page for alarm in verdict["alarms"])


def test_monitoring_sees_the_drop_retrains_and_the_service_switches_without_a_failed_request(
    run_dag, run_step, write_batch, settings, lake, ct_home: Path, tmp_path: Path, monkeypatch, webhook
) -> None:
    knobs = {"CT_SERVE__KEEP_IMAGES": "true", "CT_SERVE__POLL_SECONDS": "0.3", "CT_SERVE__LOG_FLUSH_SECONDS": "0.5",
             "CT_MONITOR__MIN_ROWS": "100", "CT_MONITOR__MIN_FEEDBACK_ROWS": "50"}  # fmt: skip
    for name, value in knobs.items():
        monkeypatch.setenv(name, value)
    write_batch("b1", 0, 800)
    run_dag("ct_ingest", when=now(), run_conf={"batch_ids": ["b1"]})
    bootstrap = run_dag("ct_retrain", when=now())
    assert states(bootstrap)["promoted"] == "success", states(bootstrap)

    images, labels = digits()
    streams = {
        "clean": [png_bytes(x) for x in images[CLEAN]],
        "drifted": [png_bytes(x) for x in drift(images[DRIFTED])],
    }
    truth = {"clean": labels[CLEAN], "drifted": labels[DRIFTED]}
    url = f"http://127.0.0.1:{(port := free_port())}"
    env = {**knobs, "CT_HOME": str(ct_home), "CT_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri}
    with service(port, env, tmp_path / "serve.log") as proc:
        traffic = Traffic(url, streams, batch=4).start()
        traffic.wait_for(len(streams["clean"]))
        traffic.stream = "drifted"
        drifted = lambda: [a for a in traffic.answers if a["stream"] == "drifted"]  # noqa: E731
        wait_until(lambda: len(drifted()) >= len(streams["drifted"]), "one pass over the drifted images")
        assert {a["version"] for a in traffic.answers} == {"1"}

        # Late labels come back for every drifted image, by the request ids the service answered with.
        answered = {a["request_id"]: a for a in drifted()[: len(streams["drifted"])]}
        lines = [f"{rid},{truth['drifted'][int(rid.split('-')[1]) % len(streams['drifted'])]}" for rid in answered]
        lake.write_bytes(
            layout.join(layout.landing("fb1"), "feedback.csv"), ("request_id,label\n" + "\n".join(lines)).encode()
        )
        lake.write_bytes(layout.commit_marker("fb1"), b"")
        time.sleep(1.5)  # the prediction log writes what waits every 0.5 s
        assert states(run_dag("ct_ingest", when=now(), run_conf={"batch_ids": ["fb1"]}))["ingest"] == "success"

        monitored = run_dag("ct_monitor", when=now())
        assert states(monitored) == {"monitor": "success", "live_alarm": "success", "serving_problems": "success"}
        verdict = lake.read_json(layout.MONITOR_LATEST)
        assert verdict["champion_version"] == "1" and verdict["served_rows"] >= 600
        assert {a["trigger"] for a in verdict["alarms"]} == {"live_drift", "estimated_drop", "realized_drop"}, (
            verdict["alarms"],
            verdict["estimate"],
        )
        estimate, realized = verdict["estimate"], verdict["realized"]["champion"]
        assert estimate["reliable"] and estimate["drop"] > 0.05, estimate
        assert realized["rows"] == len(answered) and realized["drop"] > 0.05, realized
        assert realized["low"] <= realized["accuracy"] <= realized["high"]
        assert verdict["label_lag_hours"]["median"] > 0
        assert event_extras("ct_live_alarm")[-1]["alarms"] == [a["trigger"] for a in verdict["alarms"]]
        serving_page_shows(verdict)

        # The labelled production images become a training batch, through ingest's rules like any other.
        harvested = run_step("harvest", "--feedback", "fb1", "--batch-id", "h1")
        assert harvested["images"] == len(set(a["request_id"] for a in drifted()[: len(streams["drifted"])]))
        assert states(run_dag("ct_ingest", when=now(), run_conf={"batch_ids": ["h1"]}))["publish_curated"] == "success"

        mark = len(traffic.answers)
        retrain = run_dag("ct_retrain", when=now())
        assert states(retrain)["promoted"] == "success", states(retrain)
        from ct_airflow.runkey import run_key_from_run_id

        reasons = lake.read_json(
            layout.report(layout.RETRAIN_DAG, run_key_from_run_id(retrain.run_id), "decision.json")
        )["reasons"]
        assert any(r.startswith("live: realized live accuracy of v1") for r in reasons), reasons
        assert any(r.startswith("live: estimated live accuracy of v1") for r in reasons), reasons
        assert event_extras("ct_champion")[-1]["version"] == "2"
        wait_until(lambda: traffic.answers[-1]["version"] == "2", "the service to answer with v2")
        after = traffic.versions_after(mark)
        assert after == sorted(after), "v1 until the swap, v2 after it: one clean switch"
        traffic.wait_for(len(traffic.answers) + 40)
        assert traffic.answers[-1]["header"] == "2"

        mark = len(traffic.answers)
        rollback = run_dag("ct_ops", when=now(), run_conf={"action": "rollback", "version": "1",
                                                           "reason": "on-call checks v2 against the old camera"})  # fmt: skip
        assert rollback.state == "success"
        wait_until(lambda: traffic.answers[-1]["version"] == "1", "the rollback to reach the service")
        after = traffic.versions_after(mark)
        assert after == sorted(after, reverse=True)
        traffic.wait_for(len(traffic.answers) + 40)

        # @champion moved behind ct's back to a version whose files are corrupt: v1 keeps serving, and says why.
        bad = broken_version(settings, tmp_path / "bad")
        registry.client(settings).set_registered_model_alias(settings.model_name, "champion", bad)
        wait_until(lambda: requests.get(f"{url}/ct/status", timeout=5).json()["problems"], "the problem report")
        status = requests.get(f"{url}/ct/status", timeout=5).json()
        assert status["version"] == "1", "the broken version is not swapped in"
        assert (
            "SHA-256 differs" in status["problems"][-1]["message"]
            and "v1 keeps serving" in status["problems"][-1]["message"]
        )
        mark = len(traffic.answers)
        traffic.wait_for(mark + 40)
        assert set(traffic.versions_after(mark)) == {"1"}
        assert lake.list_keys(layout.state("serve/problems")), (
            "in the lake, for ct_monitor's serving_problems to notify"
        )
        checked = run_dag("ct_monitor", when=now())  # ct_monitor tells the on-call engineer
        assert states(checked)["serving_problems"] == "failed"
        (message,) = [m for m in webhook if m["task_id"] == "serving_problems"]
        assert message["event"] == "task failed" and message["reason"].startswith(
            f"prediction service: model: @champion v{bad}"
        )
        refused = requests.post(f"{url}/invocations", json=body([b"not an image"]), timeout=30)
        assert refused.status_code == 400 and "row 0: not an image" in refused.text

        metrics = requests.get(f"{url}/metrics", timeout=5).text
        assert re.search(r'ct_serve_requests_total\{status="200"\} [1-9]', metrics)
        assert (
            'ct_serve_request_errors_total{status="400"} 1.0' in metrics
            and "ct_serve_request_seconds_bucket" in metrics
        )
        per_class = re.findall(r'ct_serve_predictions_total\{label="(\w+)",version="2"\} (\d+)', metrics)
        assert sum(float(n) for _, n in per_class) > 0, "predictions per class and version"
        assert "ct_serve_model_swaps_total 2.0" in metrics and "ct_serve_model_load_failures_total 1.0" in metrics

        # SIGTERM while the client is still sending: every answered prediction reaches the log.
        traffic.shutting_down = True
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == -signal.SIGTERM  # uvicorn finishes, runs the shutdown, re-raises SIGTERM
        wait_until(lambda: traffic.ended_by is not None, "the client to find the service gone", timeout=30)
        traffic.finish()
    assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()
    served = traffic.answers
    assert len(served) > 1000
    assert all(row["header"] == row["version"] for row in served), "the header names the version too"
    assert traffic.failures == [], traffic.failures[:5]
    logged = predlog.read(lake, 0, time.time() + 1)
    assert {row["request_id"] for row in served} <= set(logged["request_id"]) and logged["request_id"].is_unique
    row = logged.set_index("request_id").loc[served[0]["request_id"]]
    assert row["version"] == "1" and len(row["sha256"]) == 64 and row["width"] == 8 and 0 <= row["bright"] <= 1
