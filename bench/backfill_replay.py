"""Backfill cost: a 30-day replay of the demo's history reuses the curated shards and re-ingests nothing.

In a temporary ``CT_HOME`` with its own embedded PostgreSQL (MLflow's backend store), the demo's four
days are landed (each dated by its producer), ingested once, and decided by live ct at 04:00 of each
day, step by step as the operator runs them (``python -m ml drift|decide|train|evaluate|gate``,
in-process: Airflow's task overhead is left out on both sides). Then a backfill replays 30 days at
their 03:00 ticks (``drift --replay``). It prints:

* seconds per run, live and replayed, for runs that retrain and runs that skip, and their ratio;
* the 30-day replay's total;
* what the replay wrote under ``curated/`` (objects added or changed: must be 0; the bench exits 1
  otherwise) and how many curated shards it read instead.

Run: ``.venv/bin/python bench/backfill_replay.py [--days 30]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO)]


def step(*argv: str) -> dict[str, Any]:
    """Run one ``python -m ml`` step in this process; its last stdout line is its result."""
    from ml.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    result = json.loads(out.getvalue().strip().splitlines()[-1])
    if code != 0:
        raise SystemExit(f"python -m ml {' '.join(argv)} failed ({code}): {result}")
    return dict(result)


def run(key: str, when: datetime, *flags: str) -> tuple[bool, float]:
    """One ct_retrain run as its tasks would run it; returns (retrained, seconds)."""
    started = time.perf_counter()
    step("drift", "--run-key", key, "--as-of", when.isoformat(), *flags)
    decided = step("decide", "--run-key", key)
    if "skip" not in decided:
        for name in ("train", "evaluate", "gate"):
            step(name, "--run-key", key)
    return "skip" not in decided, time.perf_counter() - started


def curated_state(lake_root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(lake_root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in (lake_root / "curated").rglob("*") if p.is_file()}  # fmt: skip


def summary(label: str, runs: list[tuple[bool, float]]) -> dict[str, float | None]:
    retrained = [s for r, s in runs if r]
    skipped = [s for r, s in runs if not r]
    figures = {"retrain": statistics.median(retrained) if retrained else None,
               "skip": statistics.median(skipped) if skipped else None}  # fmt: skip
    print(
        f"{label:<8} runs {len(runs):>3}  retrained {len(retrained):>2} (median {figures['retrain'] or 0:6.2f} s)"
        f"  skipped {len(skipped):>3} (median {figures['skip'] or 0:6.2f} s)  total {sum(s for _, s in runs):7.1f} s"
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    from ct_airflow.launcher import postgres
    from ct_airflow.launcher.local import embedded_env

    home = Path(tempfile.mkdtemp(prefix="ct-bench-backfill-")) / "ct"
    home.mkdir(parents=True)
    os.environ.update(embedded_env(home))
    os.environ.update({"GX_ANALYTICS_ENABLED": "false", "TQDM_DISABLE": "1", "CT_LOG_LEVEL": "WARNING"})
    postgres.start(home)
    try:
        from ml import demo
        from ml.config import load_settings
        from ml.data import curated
        from ml.storage import Lake

        lake = Lake.from_uri(load_settings().lake_uri)
        for batch in demo.SCENARIO:
            demo.write_demo_batch(lake, batch)
        step("ingest")
        live = [run(f"live-{batch.batch_id}", datetime.fromisoformat(batch.batch_id).replace(hour=4, tzinfo=UTC))
                for batch in demo.SCENARIO]  # fmt: skip

        before = curated_state(home / "lake")
        opened = 0
        shard_path = curated.ShardReader.path

        def counted(self: Any, *a: Any, **k: Any) -> Any:
            nonlocal opened
            opened += 1
            return shard_path(self, *a, **k)

        curated.ShardReader.path = counted  # type: ignore[method-assign]
        first = datetime(2026, 1, 1, 3, tzinfo=UTC)
        replay = [run(f"backfill__{(first + timedelta(days=d)).date()}.bench", first + timedelta(days=d),
                      "--replay", "bench") for d in range(args.days)]  # fmt: skip
        after = curated_state(home / "lake")
        changed = sorted(k for k in after if before.get(k) != after[k])

        print(
            f"backfill replay of the demo's history ({len(live)} live days, then {args.days} replayed days), in-process steps"
        )
        live_figures = summary("live", live)
        replay_figures = summary("replay", replay)
        for kind in ("retrain", "skip"):
            if live_figures[kind] and replay_figures[kind]:
                print(f"replay/live seconds per {kind} run: {replay_figures[kind] / live_figures[kind]:.2f}")
        print(
            f"curated objects: {len(before)} before, {len(after)} after; added or changed by the replay: {len(changed)}"
        )
        print(f"curated shards the replay read (each checked against its manifest's hash): {opened}")
        if changed:
            print(f"FAIL: the replay wrote under curated/: {changed[:5]}")
            return 1
        return 0
    finally:
        postgres.stop(home)


if __name__ == "__main__":
    raise SystemExit(main())
