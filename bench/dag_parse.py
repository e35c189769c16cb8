"""Print each DAG file's parse time under both runners, each in a fresh process that has imported ``airflow.sdk``.

That is the situation in the dag-processor (it parses every file in a process forked from one that
has imported ``airflow.sdk``) and in a worker starting a task. Target: < 0.5 s per file.

With ``runner: kubernetes`` (set here through ``CT_RUNNER``) ``ct_step`` also imports the
cncf-kubernetes provider, because each task is then a ``KubernetesPodOperator``. That import is
timed on its own, before the DAG file, and counted apart: a worker needs it anyway to run the pod
task, but the dag-processor pays it in every parse process unless its parent has imported it
already (it pre-imports only the ``airflow.*`` modules that a DAG file imports at top level).
The verdict counts the DAG file's own parse; the line above it says what the provider adds.

Run: ``make bench`` (or ``.venv/bin/python bench/dag_parse.py``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "mlflow", "evidently", "great_expectations", "pandas", "sklearn")
PROVIDER = "airflow.providers.cncf.kubernetes.operators.pod"
RUNNERS = ("local", "kubernetes")
TARGET_S = 0.5


def parse_once(path: Path) -> float:
    # Forget the DAG module and ct's plugin modules, so every run pays their import again.
    for name in [m for m in sys.modules if m.startswith(("ct_airflow", "ct_dag_"))]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location(f"ct_dag_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    started = time.perf_counter()
    spec.loader.exec_module(module)
    return time.perf_counter() - started


def measure(path: Path) -> dict[str, object]:
    """In this (fresh) process: import airflow.sdk, the provider if the runner needs it, then parse ``path``."""
    sys.path[:0] = [str(REPO / "plugins"), str(REPO)]
    started = time.perf_counter()
    import airflow.sdk  # noqa: F401 - what the dag-processor has loaded already

    sdk_s = time.perf_counter() - started
    provider_s = None
    if os.environ.get("CT_RUNNER") == "kubernetes":
        started = time.perf_counter()
        importlib.import_module(PROVIDER)
        provider_s = time.perf_counter() - started
    first = parse_once(path)
    warm = [parse_once(path) for _ in range(5)]
    return {
        "sdk_s": sdk_s,
        "provider_s": provider_s,
        "first_s": first,
        "median_s": statistics.median(warm),
        "heavy": [m for m in HEAVY if m in sys.modules],
        "provider_loaded": PROVIDER in sys.modules,
    }


def run_child(runner: str, path: Path) -> dict:
    env = {**os.environ, "CT_RUNNER": runner}
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(path)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    paths = sorted((REPO / "dags").glob("*.py"))
    worst = dict.fromkeys(RUNNERS, 0.0)
    worst_with_provider = 0.0
    heavy: set[str] = set()
    stray_provider = False
    for runner in RUNNERS:
        print(f"runner={runner}")
        for path in paths:
            m = run_child(runner, path)
            worst[runner] = max(worst[runner], m["first_s"])
            heavy.update(m["heavy"])
            provider = ""
            if m["provider_s"] is not None:
                worst_with_provider = max(worst_with_provider, m["provider_s"] + m["first_s"])
                provider = f"   + provider import {m['provider_s']:.2f} s"
            elif m["provider_loaded"]:
                stray_provider = True  # the local runner must never import the provider
            print(
                f"  {path.name:18s} first {m['first_s'] * 1000:7.1f} ms   median of 5 re-parses "
                f"{m['median_s'] * 1000:7.1f} ms   (import airflow.sdk, excluded: {m['sdk_s']:.2f} s){provider}"
            )
    print(f"heavy modules loaded by parsing: {sorted(heavy) or 'none'}")
    if stray_provider:
        print("the local runner's parse imported the cncf-kubernetes provider")
    print(
        f"kubernetes runner, a fresh parse process that has not imported the provider: worst "
        f"{worst_with_provider:.2f} s (provider import included)"
    )
    ok = max(worst.values()) < TARGET_S and not heavy and not stray_provider
    verdict = "OK" if ok else "OVER TARGET"
    print(
        f"worst first parse of a DAG file: local {worst['local']:.3f} s, kubernetes {worst['kubernetes']:.3f} s; "
        f"target < {TARGET_S} s: {verdict}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(measure(Path(sys.argv[2]))))
        raise SystemExit(0)
    raise SystemExit(main())
