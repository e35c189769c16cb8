"""Backfills replay history as it was, on the real scheduler: "what would ct have decided?"

A fresh ``make up`` stack (PostgreSQL, ``mlflow server``, Airflow's scheduler, dag-processor, triggerer
and api-server). Five dated batches are landed at once, their producer stating each one's day in
``_COMMITTED``. Live ct then runs on them day by day (manual runs at noon of each day), with a
forced promotion and a rollback in the evening of day 3. Then ``airflow backfill create`` replays the
same days at their 03:00 ticks, again under other settings, and once more for one day with
``force_retrain``. Each replayed day must see exactly the world of its date, decide what live ct
decided where the settings are the same, and leave everything live byte-for-byte as it was. The
browser reads the dashboard's backfill view, side by side with live, and takes the README's screenshot.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ct_airflow.launcher import postgres
from ct_airflow.runkey import run_key_from_run_id
from tests.conftest import free_port
from tests.integration import test_operating as operating
from tests.integration.test_operating import Stack, log_in, open_ct, running_stack, shoot, stack_env
from tests.integration.test_server_profile import query

pytestmark = pytest.mark.integration
browser = operating.browser  # the browser's fixture, on this module's stack
RUN_TIMEOUT_S = 600
DAYS = [datetime(2026, 11, day, tzinfo=UTC) for day in range(2, 7)]
#: Images per day: 300 is enough new data to retrain (about 210 train rows >= policy.min_new_images 200), 150 is not.
SIZES = [300, 150, 300, 150, 300]
LIVE_HOUR, TICK_HOUR = 12, 3


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """A fresh ``make up`` stack with no data and nothing running but what the test starts."""
    root = Path(tempfile.mkdtemp(prefix="ct-replay-"))
    home = root / "ct"
    port, mlflow_port = free_port(), free_port()
    env = stack_env(root, home, port, mlflow_port)
    env.update({
        # No landing watcher (ct_ingest stays paused), so no asset-triggered retrain at today's date.
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
        "CT_GATE__FLOOR_ACCURACY": "0.5",  # a first model trained on 207 images
    })  # fmt: skip
    (home / "airflow").mkdir(parents=True, exist_ok=True)  # embedded_env keeps its fernet key there
    postgres.start(home)
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    postgres.stop(home)
    with running_stack(root, home, env, port, mlflow_port) as running:
        yield running


def airflow(stack: Stack, *args: str) -> str:
    done = subprocess.run([str(Path(sys.executable).parent / "airflow"), *args], env=stack.env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def ml(stack: Stack, *args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "ml", *args], env=stack.env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def lake(stack: Stack) -> Path:
    return stack.home / "lake"


def read(stack: Stack, key: str) -> Any:
    return json.loads((lake(stack) / key).read_text())


def wait_for_run(stack: Stack, run_id: str) -> str:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        rows = query(stack.home, "SELECT state FROM dag_run WHERE dag_id = 'ct_retrain' AND run_id = %s", run_id)
        if rows and rows[0][0] in ("success", "failed"):
            return str(rows[0][0])
        time.sleep(2)
    pytest.fail(f"{run_id} did not finish in {RUN_TIMEOUT_S} s:\n{stack.tail()}")


def backfill(stack: Stack, first: datetime, last: datetime, *extra: str) -> None:
    """The README's command, one run at a time; returns when the scheduler has finished every run."""
    before = query(stack.home, "SELECT coalesce(max(id), 0) FROM backfill")[0][0]
    airflow(stack, "backfill", "create", "--dag-id", "ct_retrain", "--from-date", first.date().isoformat(),
            "--to-date", last.replace(hour=TICK_HOUR).isoformat(), "--max-active-runs", "1", *extra)  # fmt: skip
    backfill_id = query(stack.home, "SELECT max(id) FROM backfill")[0][0]
    assert backfill_id > before
    deadline = time.monotonic() + len(DAYS) * RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        if query(stack.home, "SELECT completed_at FROM backfill WHERE id = %s", backfill_id)[0][0] is not None:
            return
        time.sleep(2)
    pytest.fail(f"backfill {backfill_id} did not complete:\n{stack.tail()}")


def run_dir(stack: Stack, prefix: str) -> list[str]:
    """Run keys under reports/ct_retrain/ that start with ``prefix``."""
    return sorted(p.name for p in (lake(stack) / "reports" / "ct_retrain").iterdir() if p.name.startswith(prefix))


def key_of(when: datetime, kind: str) -> str:
    return run_key_from_run_id(f"{kind}__{when.isoformat()}")


def outcome(stack: Stack, run_key: str) -> dict[str, Any]:
    """What a run decided and what it saw: its window, its retrain decision and (when it retrained) its gate."""
    base = f"reports/ct_retrain/{run_key}"
    gate_path = lake(stack) / base / "gate.json"
    return {"window": read(stack, f"{base}/window.json"), "decide": read(stack, f"{base}/decision.json"),
            "gate": json.loads(gate_path.read_text()) if gate_path.exists() else None}  # fmt: skip


def live_state(stack: Stack) -> dict[str, bytes]:
    state = lake(stack) / "state"
    return {name: (state / name).read_bytes() for name in ("policy.json", "reign.json")}


#: A replay's gate says what the live gate would have said.
WOULD = {"promote": "would-promote", "reject": "would-reject"}


@pytest.mark.timeout(3600)
def test_a_backfill_replays_each_day_as_it_was_and_moves_nothing(stack: Stack, browser: Any) -> None:
    # The daily cron's first run (today, no data yet) comes with unpausing: let it finish before any data lands.
    deadline = time.monotonic() + 240
    while not query(stack.home, "SELECT 1 FROM dag WHERE dag_id = 'ct_retrain'") and time.monotonic() < deadline:
        time.sleep(2)
    airflow(stack, "dags", "unpause", "ct_retrain")
    while time.monotonic() < deadline + 240:
        cron = query(
            stack.home, "SELECT run_id, state FROM dag_run WHERE dag_id = 'ct_retrain' AND run_type = 'scheduled'"
        )
        if cron and cron[0][1] in ("success", "failed"):
            break
        time.sleep(2)
    assert cron and cron[0][1] == "success", (cron, stack.tail())

    # Five days of data, landed at once; each batch's producer says which day it belongs to.
    code = ("import sys, json; from ml.config import load_settings; from ml.storage import Lake; "
            "from ml.demo import digits, write_batch; images, labels = digits(); "
            "lake = Lake.from_uri(load_settings().lake_uri); start = 0\n"
            "for name, size, when in json.loads(sys.argv[1]):\n"
            "    write_batch(lake, name, images[start:start + size], labels[start:start + size], event_time=when)\n"
            "    start += size")  # fmt: skip
    batches = [
        (f"day{i}", size, day.replace(hour=1).isoformat())
        for i, (day, size) in enumerate(zip(DAYS, SIZES, strict=True), 1)
    ]
    subprocess.run([sys.executable, "-c", code, json.dumps(batches)], env=stack.env, check=True)
    assert sorted(ml(stack, "ingest")["curated"]) == [f"day{i}" for i in range(1, 6)]

    # Live ct, day by day at noon; on the evening of day 3, v2 is put in place by hand and rolled back.
    live, live_keys = {}, []
    for i, day in enumerate(DAYS, 1):
        when = day.replace(hour=LIVE_HOUR)
        airflow(stack, "dags", "trigger", "ct_retrain", "--logical-date", when.isoformat())
        [(run_id,)] = query(stack.home, "SELECT run_id FROM dag_run WHERE dag_id = 'ct_retrain' AND logical_date = %s",
                            when)  # fmt: skip
        assert wait_for_run(stack, run_id) == "success", stack.tail()
        live_keys.append(run_key_from_run_id(run_id))
        live[i] = outcome(stack, live_keys[-1])
        if i == 3:
            assert live[3]["gate"] is not None and live[3]["gate"]["candidate_version"] == "2", live[3]
            if live[3]["gate"]["decision"] != "promote":
                ml(stack, "promote", "--version", "2", "--reason", "trying v2 on camera B by hand",
                   "--as-of", day.replace(hour=18).isoformat())  # fmt: skip
            ml(stack, "rollback", "--to", "1", "--reason", "v2 misreads sevens from camera B",
               "--as-of", day.replace(hour=20).isoformat())  # fmt: skip
    assert [bool(live[i]["decide"]["retrain"]) for i in range(1, 6)] == [True, False, True, False, True]
    before = live_state(stack)
    from mlflow import MlflowClient

    tracking = stack.env["CT_MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)  # never a registry URI left by another test
    champion_before = client.get_model_version_by_alias("ct-classifier", "champion").version

    # The replay of the same days, at their 03:00 ticks, with the same settings.
    backfill(stack, DAYS[0], DAYS[-1])
    [replay] = {k.rsplit(".", 1)[1] for k in run_dir(stack, "backfill__")}
    expected_champion = [None, "1", "1", "1", "1"]  # none yet; v1; v1; v1 again after the rollback; v1
    for i, day in enumerate(DAYS, 1):
        replayed = outcome(stack, f"{key_of(day.replace(hour=TICK_HOUR), 'backfill')}.{replay}")
        window, lived = replayed["window"], live[i]
        # Exactly the batches available at that date, the champion of that date, the policy memory of that date.
        assert window["train_batches"] == [f"day{d}" for d in range(1, i + 1)], window["train_batches"]
        assert sorted(window["sources"]["batches"]["not_yet_available"]) == [f"day{d}" for d in range(i + 1, 6)]
        assert window["champion_version"] == expected_champion[i - 1], (i, window["sources"]["champion"])
        if i == 4:
            assert "rollback" in window["sources"]["champion"]["source"], window["sources"]["champion"]
        policy = window["sources"]["policy"]
        if i == 1:
            assert policy["state"]["considered_batches"] == [] and "no live retrain decision" in policy["source"]
        else:
            assert live_keys[i - 2] in policy["source"], policy  # the memory the previous day's live run left
            bookkeeping = ("revision", "updated_by")  # how policy.json is written, not what it remembers
            remembered = {k: v for k, v in policy["state"].items() if k not in bookkeeping}
            assert remembered == {k: v for k, v in lived["decide"]["state_before"].items() if k not in bookkeeping}
        # The same world and the same settings decide the same. What must match, and why:
        # - the data, champion and new batches: the point-in-time rules above;
        # - the retrain decision and its reasons: the policy is a pure function of those, the memory and the
        #   drift scores (seeded resamples); the 9 hours between tick and noon matter to no rule in use;
        # - the gate's numbers: training is deterministic on the CPU with the same seed and rows, so the candidate
        #   predicts the same on the same evaluation rows, against the same champion at the same alpha_k.
        assert window["new_batches"] == lived["window"]["new_batches"]
        assert window["eval_batches"] == lived["window"]["eval_batches"]
        assert window["champion_version"] == lived["window"]["champion_version"]
        assert replayed["decide"]["retrain"] == lived["decide"]["retrain"]
        assert replayed["decide"]["reasons"] == lived["decide"]["reasons"]
        if lived["gate"] is None:
            assert replayed["gate"] is None
            continue
        gate, live_gate = replayed["gate"], lived["gate"]
        assert gate["decision"] == WOULD[live_gate["decision"]], (gate["reasons"], live_gate["reasons"])
        assert gate["eval_rows"] == live_gate["eval_rows"] and gate["champion_version"] == live_gate["champion_version"]
        assert gate["metrics"]["candidate"]["accuracy"] == live_gate["metrics"]["candidate"]["accuracy"]
        assert gate["metrics"]["champion"] == live_gate["metrics"]["champion"]
        assert gate["checks"].get("significance") == live_gate["checks"].get("significance")
        for field in ("k", "alpha", "champion_version"):
            assert (gate["spending"] or {}).get(field) == (live_gate["spending"] or {}).get(field), field
        assert gate["spending"] is None or gate["spending"]["consumed"] is False

    # The same days under other settings: a replay needing 1,000 new images retrains on none of them.
    backfill(stack, DAYS[1], DAYS[-1], "--reprocess-behavior", "completed", "--dag-run-conf",
             json.dumps({"settings": {"policy": {"min_new_images": 1000}}}))  # fmt: skip
    strict = {k.rsplit(".", 1)[1] for k in run_dir(stack, "backfill__")} - {replay}
    assert len(strict) == 1, strict
    for day in DAYS[1:]:
        decided = read(
            stack,
            f"reports/ct_retrain/{key_of(day.replace(hour=TICK_HOUR), 'backfill')}.{next(iter(strict))}/decision.json",
        )
        assert not decided["retrain"] and "new images < 1,000" in decided["summary"], decided

    # Rerun means rerun: force_retrain on day 2 (which skipped) is a new attempt that retrains; the first stays.
    backfill(stack, DAYS[1], DAYS[1], "--reprocess-behavior", "completed", "--dag-run-conf", '{"force_retrain": true}')
    day2 = run_dir(stack, key_of(DAYS[1].replace(hour=TICK_HOUR), "backfill"))
    assert len(day2) == 3, day2
    forced = [k for k in day2 if k.rsplit(".", 1)[1] not in (replay, *strict)]
    assert outcome(stack, forced[0])["decide"]["reasons"][0] == "forced by run parameter"
    assert outcome(stack, forced[0])["gate"]["decision"] in WOULD.values()

    # Nothing live moved: the alias, the error budget and the policy memory, byte for byte.
    assert live_state(stack) == before
    assert client.get_model_version_by_alias("ct-classifier", "champion").version == champion_before
    decisions = [json.loads(p.read_text()) for p in (lake(stack) / "state" / "decisions").iterdir()]
    assert all(d["decision"] not in ("promote", "rollback") for d in decisions if d.get("backfill"))

    # The dashboard's backfill view: one column per replay beside live, and where each decided otherwise.
    page = log_in(browser, stack, "admin")
    frame = open_ct(page, "Backfill")
    frame.locator("#replay-days").wait_for()
    days = frame.locator("#replay-days tbody tr")
    shown = [row.get_attribute("data-day") for row in days.all()]
    assert [d for d in shown if d.startswith("2026-11")] == [d.date().isoformat() for d in reversed(DAYS)], shown
    cards = {c.get_attribute("data-replay"): c.inner_text() for c in frame.locator("section.replay").all()}
    assert "decided as live did on all 5 days" in cards[replay], cards
    [strict_id] = strict
    assert (
        "policy.min_new_images=1000" in cards[strict_id] and "decided otherwise than live on 2 of 4" in cards[strict_id]
    )
    day3 = frame.locator(f"#replay-days tr[data-day='{DAYS[2].date().isoformat()}']")
    assert day3.locator(f"td[data-column='{strict_id}'] .outcome").first.get_attribute("data-decision") == "skip"
    assert day3.locator("td[data-column='live'] .outcome").first.get_attribute("data-decision") in WOULD
    shoot(page, "backfill")
    page.context.close()
