"""Run ``ml`` steps in forked children, with a test-only hook that kills or cuts them at a chosen point.

The hook lives here, not in production code. It counts two kinds of points in the child:

* **writes** (``kill_at``): every lake write (``write_bytes``, ``write_file``, ``write_view``,
  ``create_exclusive``, ``delete_prefix``) and every MLflow request that changes something
  (POST/PUT/PATCH/DELETE that is not a search). At write ``n`` the child SIGKILLs itself, before
  the write (``when="before"``) or just after it (``when="after"``).
* **external calls** (``cut_at``): every MLflow HTTP request and every S3 API call. At call ``n``
  the hook freezes the named service (SIGSTOP on its process group) and lets the call go on, so the
  step meets a real server that stopped answering. The test thaws it afterwards.

Only the main thread and ingest's shard writer count, so that the lease's renewal thread cannot make
numbering depend on timing. The shard writer publishes one shard at a time while the main thread
scans and writes nothing, so its writes keep their place in the order.
Children are forked from a forkserver that has already imported torch, mlflow and Great
Expectations: each kill point costs the step's own work, not its imports.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LAKE_WRITES = ("write_bytes", "write_file", "write_view", "create_exclusive", "delete_prefix")


@dataclass(frozen=True)
class Fault:
    kill_at: int | None = None  # kill before/after the n-th write (1-based)
    when: str = "before"
    cut_at: int | None = None  # freeze ``cut_pgid`` at the n-th external call of ``cut_service``
    cut_service: str = ""  # "mlflow" or "s3"
    cut_pgid: int = 0
    trace: str = ""  # a file that gets one line per counted point
    start_at: float = 0.0  # wall-clock time to start the step at (to start two steps at the same instant)


class _Counter:
    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.writes = 0
        self.calls = 0

    def _trace(self, kind: str, label: str) -> None:
        if self.fault.trace:
            with open(self.fault.trace, "a") as fh:
                fh.write(f"{kind} {label}\n")

    def write(self, label: str, perform: Callable[[], Any]) -> Any:
        thread = threading.current_thread()
        if thread is not threading.main_thread() and not thread.name.startswith("ct-shard-writer"):
            return perform()
        self.writes += 1
        self._trace("write", f"{self.writes} {label}")
        if self.fault.kill_at == self.writes and self.fault.when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = perform()
        if self.fault.kill_at == self.writes and self.fault.when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    def call(self, service: str, label: str) -> None:
        if service != self.fault.cut_service or threading.current_thread() is not threading.main_thread():
            return
        self.calls += 1
        self._trace("call", f"{self.calls} {service} {label}")
        if self.fault.cut_at == self.calls:
            os.killpg(self.fault.cut_pgid, signal.SIGSTOP)


def _install(counter: _Counter) -> None:
    import requests
    from botocore.client import BaseClient

    from ml import storage

    for cls in (storage.LocalLake, storage.S3Lake):
        for name in LAKE_WRITES:
            original = getattr(cls, name)

            def wrapped(self: Any, key: Any, *args: Any, _original: Any = original, _name: str = name) -> Any:
                return counter.write(f"lake.{_name} {key}", lambda: _original(self, key, *args))

            setattr(cls, name, wrapped)

    session_request = requests.Session.request

    def request(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        path = urlparse(url).path
        counter.call("mlflow", f"{method} {path}")
        if method.upper() in WRITE_METHODS and "/search" not in path:
            return counter.write(f"mlflow {method} {path}", lambda: session_request(self, method, url, *args, **kwargs))
        return session_request(self, method, url, *args, **kwargs)

    requests.Session.request = request  # type: ignore[method-assign]

    make_api_call = BaseClient._make_api_call

    def api_call(self: Any, operation: str, params: dict[str, Any]) -> Any:
        counter.call("s3", f"{operation} {params.get('Key', params.get('Prefix', ''))}")
        return make_api_call(self, operation, params)

    BaseClient._make_api_call = api_call  # type: ignore[method-assign]


def _child_main(argv: list[str], env: dict[str, str], fault: Fault, out_path: str) -> None:
    os.environ.clear()
    os.environ.update(env)
    _install(_Counter(fault))
    from ml.cli import main

    if fault.start_at:
        time.sleep(max(0.0, fault.start_at - time.time()))

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(argv)
    Path(out_path).write_text(buffer.getvalue())
    sys.stderr.flush()
    os._exit(code)


def _call_main(fn: Callable[..., Any], args: tuple[Any, ...], env: dict[str, str], out_path: str) -> None:
    os.environ.clear()
    os.environ.update(env)
    try:
        result = fn(*args)
    except BaseException:  # noqa: BLE001 - the child's failure, whatever it is, goes back to the test
        Path(out_path + ".err").write_text(traceback.format_exc())
        os._exit(1)
    Path(out_path).write_text(json.dumps(result, default=str))
    os._exit(0)


PRELOAD = ["tests.faults.preload"]


@dataclass
class StepRun:
    exitcode: int
    result: dict[str, Any] | None
    trace: list[str]

    @property
    def killed(self) -> bool:
        return self.exitcode == -signal.SIGKILL


class Runner:
    """Forks steps and helpers from one preloaded forkserver."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)
        self._n = 0

    def _paths(self) -> tuple[str, str]:
        self._n += 1
        return str(self.workdir / f"out-{self._n}.txt"), str(self.workdir / f"trace-{self._n}.txt")

    def step(self, env: dict[str, str], *argv: str, fault: Fault | None = None, timeout: float = 300) -> StepRun:
        return self.steps(env, [list(argv)], fault=fault, timeout=timeout)[0]

    def steps(
        self, env: dict[str, str], argvs: list[list[str]], fault: Fault | None = None, timeout: float = 300
    ) -> list[StepRun]:
        """Run several steps as concurrent children; each gets the same fault."""
        started = []
        for argv in argvs:
            out_path, trace_path = self._paths()
            child_fault = Fault(**{**(fault or Fault()).__dict__, "trace": trace_path})
            child = self.ctx.Process(target=_child_main, args=(argv, env, child_fault, out_path))
            child.start()
            started.append((argv, child, out_path, trace_path))
        runs = []
        for argv, child, out_path, trace_path in started:
            child.join(timeout)
            if child.exitcode is None:
                child.kill()
                raise TimeoutError(f"`ml {' '.join(argv)}` did not finish in {timeout}s")
            out = Path(out_path).read_text().splitlines() if Path(out_path).exists() else []
            lines = [line for line in out if line.strip()]
            trace = Path(trace_path).read_text().splitlines() if Path(trace_path).exists() else []
            runs.append(StepRun(int(child.exitcode), json.loads(lines[-1]) if lines else None, trace))
        return runs

    def call(self, env: dict[str, str], fn: Callable[..., Any], *args: Any, timeout: float = 300) -> Any:
        """Run ``fn(*args)`` in a fresh child with ``env``; returns its JSON-able result."""
        out_path, _ = self._paths()
        child = self.ctx.Process(target=_call_main, args=(fn, args, env, out_path))
        child.start()
        child.join(timeout)
        if child.exitcode != 0:
            error = Path(out_path + ".err")
            detail = error.read_text()[-3000:] if error.exists() else "no traceback (killed?)"
            raise RuntimeError(f"{fn.__name__}{args} failed in a child (exit {child.exitcode}):\n{detail}")
        return json.loads(Path(out_path).read_text())


@contextlib.contextmanager
def frozen_until_done(pgid: int) -> Iterator[None]:
    """Whatever happens in the block, the service is thawed afterwards."""
    try:
        yield
    finally:
        os.killpg(pgid, signal.SIGCONT)
