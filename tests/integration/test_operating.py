"""Operating ct from the Airflow UI in a real browser: Debian's chromium, headless, driven by Playwright.

``make demo``'s scenario is played into a fresh home, then ``make up``'s services start on it
(PostgreSQL, ``mlflow server``, Airflow's scheduler, dag-processor, triggerer and api-server). The
browser logs in through Airflow's own login form, opens **ct** from Airflow's navigation, reads the
dashboard the way an ops engineer would, and rolls the champion back from the Actions page; the
scheduler runs the ``ct_ops`` run that asks for. A viewer's attempt is refused by Airflow. Last, the
README's forced promotion and rollback run in a plain shell that evaluated ``env``, as a person would.
Screenshots land in ``.ct/screenshots/`` (the README shows them).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ct_airflow.launcher import postgres
from ct_airflow.launcher.local import (
    Ports,
    embedded_env,
    server_env,
    service_commands,
    start_services,
    stop_services,
)
from tests.conftest import TEST_ENV, free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / ".ct" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
USERS = {"admin": ("admin", "ops-admin-pw"), "viewer": ("viewer", "just-looking-pw")}
START_TIMEOUT_S = 240
RUN_TIMEOUT_S = 300


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    services: list[Any]
    log_path: Path
    url: str

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def champion(self) -> str | None:
        code = ("from ml.release import registry; from ml.config import load_settings; s = load_settings(); "
                "c = registry.champion(registry.client(s), s.model_name); print(c.version if c else '')")  # fmt: skip
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, check=True)
        return out.stdout.strip().splitlines()[-1] or None


def _wait_for(url: str, stack_log: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{url} did not answer in {timeout:.0f} s:\n{stack_log.read_text(errors='replace')[-3000:]}")


def stack_env(root: Path, home: Path, port: int, mlflow_port: int) -> dict[str, str]:
    """``make up``'s environment for a stack in ``root``, with the test users and their passwords."""
    env = {k: v for k, v in os.environ.items() if k not in ("CT_MLFLOW_TRACKING_URI", "CT_MLFLOW_UI_URL")}
    env.update(embedded_env(home, refresh_interval=2, ports=Ports(airflow=port, mlflow=mlflow_port)))
    env.update(TEST_ENV)
    env.update({
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{role}" for u, (role, _) in USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(root / "passwords.json"),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
    })  # fmt: skip
    (root / "passwords.json").write_text(json.dumps({u: pw for u, (_, pw) in USERS.items()}))
    return env


@contextmanager
def running_stack(root: Path, home: Path, env: dict[str, str], port: int, mlflow_port: int) -> Iterator[Stack]:
    """``make up``'s services on ``home`` (its PostgreSQL, ``mlflow server``, Airflow), stopped and removed after."""
    postgres.start(home)
    log_path = root / "services.log"
    log = open(log_path, "w")  # the services write to it until they are stopped
    services = start_services(
        service_commands(env, mlflow_port=mlflow_port, serve_port=free_port()), server_env(env, mlflow_port), log
    )
    stack = Stack(home, server_env(env, mlflow_port), services, log_path, f"http://127.0.0.1:{port}")
    try:
        _wait_for(f"{stack.url}/api/v2/monitor/health", log_path, START_TIMEOUT_S)
        _wait_for(f"http://127.0.0.1:{mlflow_port}/health", log_path, START_TIMEOUT_S)
        yield stack
    finally:
        stop_services(services, timeout=60)
        log.close()
        postgres.stop(home)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def headless_chromium() -> Iterator[Any]:
    """Debian's chromium under Playwright, headless; skips the test where it is missing."""
    if CHROMIUM is None:
        pytest.skip("no chromium here and `make test` could not install it (it needs root and apt-get): "
                    "apt-get install chromium, then run this test again")  # fmt: skip
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])  # fmt: skip
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """The demo's story in a fresh home, then ``make up``'s services on it."""
    if CHROMIUM is None:
        pytest.skip("no chromium here and `make test` could not install it (it needs root and apt-get): "
                    "apt-get install chromium, then run this test again")  # fmt: skip
    root = Path(tempfile.mkdtemp(prefix="ct-operating-"))
    home = root / "ct"
    port, mlflow_port = free_port(), free_port()
    env = stack_env(root, home, port, mlflow_port)
    demo = subprocess.run([sys.executable, "-m", "ct_airflow.launcher.local", "demo"], env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    with running_stack(root, home, env, port, mlflow_port) as running:
        yield running


@pytest.fixture(scope="module")
def browser(stack: Stack) -> Iterator[Any]:
    with headless_chromium() as chromium:
        yield chromium


def log_in(browser: Any, stack: Stack, user: str) -> Any:
    """A fresh browser session, logged in through Airflow's own login form."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(stack.url + "/")
    page.get_by_label(re.compile("username", re.I)).fill(user)
    page.get_by_label(re.compile("password", re.I)).fill(USERS[user][1])
    page.get_by_role("button", name=re.compile("sign in|log in|login", re.I)).click()
    page.wait_for_url(re.compile(r"^(?!.*login).*$"))
    return page


def open_ct(page: Any, view: str = "Overview") -> Any:
    """Open ct from Airflow's navigation, then one of its views; returns the dashboard's frame."""
    page.get_by_test_id("nav-sidebar").get_by_role("link", name="ct", exact=True).click()
    frame = page.frame_locator("iframe")
    frame.locator("header nav").get_by_role("link", name=view, exact=True).click()
    return frame


def shoot(page: Any, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def api_token(stack: Stack, user: str) -> str:
    import httpx

    reply = httpx.post(f"{stack.url}/auth/token", json={"username": user, "password": USERS[user][1]}, timeout=30)
    reply.raise_for_status()
    return str(reply.json()["access_token"])


def wait_until_idle(stack: Stack) -> None:
    """Let the runs the scheduler starts on its own (the demo's asset events, the daily cron) finish."""
    import httpx

    headers = {"Authorization": f"Bearer {api_token(stack, 'admin')}"}
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        runs = httpx.get(f"{stack.url}/api/v2/dags/~/dagRuns", params={"state": ["queued", "running"]},
                         headers=headers, timeout=30).json()["dag_runs"]  # fmt: skip
        if not runs:
            return
        time.sleep(3)
    raise AssertionError(f"runs still going after {RUN_TIMEOUT_S} s: {runs}\n{stack.tail()}")


def test_the_dashboard_tells_the_demo_story(stack: Stack, browser: Any) -> None:
    wait_until_idle(stack)
    page = log_in(browser, stack, "admin")
    frame = open_ct(page)

    champion = stack.champion()
    assert frame.locator("#champion .big").inner_text() == f"v{champion}"
    rows = frame.locator("#decisions tbody tr")
    decisions = [row.get_attribute("data-decision") for row in rows.all()]
    reasons = frame.locator("#decisions td.reason").all_inner_texts()
    # The demo's days, newest first: day 4's drifted data promotes, day 2's clean batch is rejected, day 1 bootstraps.
    assert decisions == ["promote", "reject", "promote"], decisions
    assert reasons[-1].startswith("first model: accuracy") and reasons[1].startswith("not significant"), reasons
    # Day 4 retrained because its drift hurts the champion, and its decision says so.
    retrains = stack.home / "lake" / "reports" / "ct_retrain"
    on_drift = [reason for path in retrains.glob("*/decision.json") for reason in json.loads(path.read_text())["reasons"]
                if reason.startswith("drift on")]  # fmt: skip
    assert len(on_drift) == 1 and ", and it hurts: champion accuracy on the " in on_drift[0], on_drift
    shoot(page, "overview")

    rows.nth(1).get_by_role("link", name="decision").click()
    frame.locator("#classes").wait_for()
    classes = frame.locator("#classes tbody tr")
    assert classes.count() == 10 and frame.locator("#checks").is_visible()
    assert frame.locator("#reasons li").first.inner_text().startswith("not significant")
    shoot(page, "decision")

    frame.locator("header nav").get_by_role("link", name="Drift", exact=True).click()
    frame.locator("svg.chart").first.wait_for()
    assert frame.locator("svg.chart").count() >= 3
    assert frame.locator("svg.chart path.threshold").count() >= 3, "each chart draws its threshold line"
    shoot(page, "drift")

    frame.locator("header nav").get_by_role("link", name="Data", exact=True).click()
    quarantined = frame.locator("section.quarantined[data-batch='2026-01-03']")
    quarantined.wait_for()
    rules = [r.get_attribute("data-rule") for r in quarantined.locator("tr[data-rule]").all()]
    report = json.loads((stack.home / "lake" / "quarantine" / "2026-01-03" / "report.json").read_text())
    assert sorted(set(rules)) == sorted(report["failed_rules"]) and "label_in_set" in rules
    assert '"batch_ids": ["2026-01-03"]' in quarantined.inner_text()
    shoot(page, "data")
    page.context.close()


def ask_for_rollback(browser: Any, stack: Stack, user: str, version: str, reason: str) -> tuple[Any, Any]:
    """Log in as ``user`` and send the Actions form: roll back to ``version`` because ``reason``."""
    page = log_in(browser, stack, user)
    frame = open_ct(page, "Actions")
    frame.locator("#action").select_option("rollback")
    frame.locator("#version").select_option(version)
    frame.locator("#reason").fill(reason)
    frame.get_by_role("button", name="Trigger ct_ops").click()
    return page, frame


def test_a_viewer_may_look_but_airflow_refuses_their_rollback(stack: Stack, browser: Any) -> None:
    wait_until_idle(stack)
    before = stack.champion()
    page, frame = ask_for_rollback(browser, stack, "viewer", "1", "a viewer trying their luck")
    alert = frame.get_by_role("alert")
    assert "Airflow refused: you may not trigger ct_ops" in alert.inner_text()
    assert stack.champion() == before
    page.context.close()


def test_a_rollback_from_the_actions_page_moves_the_champion(stack: Stack, browser: Any) -> None:
    wait_until_idle(stack)
    before = stack.champion()
    assert before not in (None, "1"), "the demo ends with a champion newer than v1"
    page, frame = ask_for_rollback(browser, stack, "admin", "1", "v3 misreads the new camera's sevens")
    # The result page refreshes itself until the scheduler has run ct_ops.
    frame.locator("#result[data-state='success']").wait_for(timeout=RUN_TIMEOUT_S * 1000)
    assert f"moved from v{before} to v1" in frame.locator("#result").inner_text()
    assert stack.champion() == "1"
    shoot(page, "actions")

    frame.locator("header nav").get_by_role("link", name="Overview", exact=True).click()
    frame.locator("#decisions").wait_for()
    assert frame.locator("#champion .big").inner_text() == "v1"
    newest = frame.locator("#decisions tbody tr").first
    assert newest.get_attribute("data-decision") == "rollback"
    assert "v3 misreads the new camera's sevens" in newest.inner_text() and "by admin" in newest.inner_text()
    page.context.close()


def test_the_readmes_promote_and_rollback_run_in_a_shell_that_evaluated_env(stack: Stack, tmp_path: Path) -> None:
    """A person's second shell: nothing of the checkout in it but what ``env`` exports (the stack's home and
    ports, as ``make up`` would have them), then the README's commands, word for word but the versions."""
    wait_until_idle(stack)
    assert stack.champion() == "1", "the Actions page's rollback left v1 the champion"
    shell = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
             "CT_HOME": str(stack.home), "AIRFLOW_PORT": stack.url.rsplit(":", 1)[1],
             "MLFLOW_PORT": stack.env["CT_MLFLOW_TRACKING_URI"].rsplit(":", 1)[1]}  # fmt: skip
    python = shlex.quote(sys.executable)
    script = (f'eval "$({python} -m ct_airflow.launcher.local env)" && '
              f'{python} -m ml promote --version 3 --reason "v1 was a test of the rollback; v3 is back" && '
              f'{python} -m ml rollback --to 2 --reason "v3 misreads sevens from camera B"')  # fmt: skip
    done = subprocess.run(["bash", "-c", script], env=shell, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r.get("error") for r in results] == [None, None], results
    assert stack.champion() == "2"
