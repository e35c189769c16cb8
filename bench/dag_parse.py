"""Print each DAG file's parse time in a process where ``airflow.sdk`` is already imported.

That is the situation in the dag-processor and in a worker starting a task. Target: < 0.5 s per
file. Run: ``make bench`` (or ``.venv/bin/python bench/dag_parse.py``).
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "mlflow", "evidently", "great_expectations", "pandas", "sklearn")
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


def main() -> int:
    sys.path[:0] = [str(REPO / "plugins"), str(REPO)]
    started = time.perf_counter()
    import airflow.sdk  # noqa: F401 - what the dag-processor has loaded already

    print(f"import airflow.sdk (excluded): {time.perf_counter() - started:.2f} s")
    worst = 0.0
    for path in sorted((REPO / "dags").glob("*.py")):
        first = parse_once(path)
        warm = [parse_once(path) for _ in range(5)]
        worst = max(worst, first)
        print(
            f"{path.name:20s} first {first * 1000:7.1f} ms   median of 5 re-parses {statistics.median(warm) * 1000:7.1f} ms"
        )
    heavy = [m for m in HEAVY if m in sys.modules]
    print(f"heavy modules loaded by parsing: {heavy or 'none'}")
    verdict = "OK" if worst < TARGET_S and not heavy else "OVER TARGET"
    print(f"worst first parse {worst:.3f} s; target < {TARGET_S} s: {verdict}")
    return 0 if verdict == "OK" else 1


if __name__ == "__main__":
    raise SystemExit(main())
