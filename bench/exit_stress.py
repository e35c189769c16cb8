"""Exit stress: does ``python -m ml ingest`` ever die after it has printed a successful result?

pyarrow's thread pools can abort the interpreter at exit (SIGABRT, "terminate called without an
active exception"; apache/arrow#34314). A step that crashes *after* printing its JSON result looks
like a failure to Airflow although its work is done. ``ml/__main__.py`` therefore flushes and leaves
with ``os._exit``. This bench runs many real ingests (each on its own small committed landing batch
in a temporary ``CT_HOME``) and counts:

* ``runs``: processes started;
* ``valid_json``: processes whose last stdout line is one JSON object (the step contract);
* ``after_success``: processes that exited non-zero (or by a signal) although that line was a
  successful, non-error result: the crash the fix removes. Must be 0; the bench exits 1 otherwise;
* ``exits``: every exit code seen (signals by name).

``--baseline`` runs the same ingests as ``python -c "from ml.cli import main; raise SystemExit(main())"``,
i.e. with a normal interpreter exit (no ``os._exit``), to show the crash rate the fix removes.
A baseline run reports its figures but exits 0 whatever it finds.

Run: ``.venv/bin/python bench/exit_stress.py [--runs 300] [--jobs 2] [--baseline]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES_PER_BATCH = 40
BASELINE_CODE = "from ml.cli import main; raise SystemExit(main())"


@dataclass(frozen=True)
class Outcome:
    batch_id: str
    returncode: int
    result: dict | None  # the parsed last stdout line, if it is a JSON object
    stderr_tail: str
    seconds: float

    @property
    def succeeded(self) -> bool:
        """The step printed a successful result (curated, quarantined or a skip: anything but an error)."""
        return self.result is not None and "error" not in self.result

    @property
    def crashed_after_success(self) -> bool:
        return self.succeeded and self.returncode != 0


def exit_name(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def write_batches(home: Path, count: int) -> list[str]:
    """``count`` committed landing batches of ``IMAGES_PER_BATCH`` digits, each perturbed with its own seed.

    The light noise makes every batch's bytes unique, so most batches are curated; an occasional
    duplicate is quarantined, which is still a successful step.
    """
    os.environ["CT_HOME"] = str(home)
    from ml.config import load_settings
    from ml.demo import digits, drift, write_batch
    from ml.storage import Lake

    lake = Lake.from_uri(load_settings().lake_uri)
    images, labels = digits()
    ids = []
    for i in range(count):
        start = (i * IMAGES_PER_BATCH) % (len(images) - IMAGES_PER_BATCH)
        chunk = slice(start, start + IMAGES_PER_BATCH)
        batch_id = f"stress-{i:04d}"
        write_batch(lake, batch_id, drift(images[chunk], seed=i, brightness=0, noise=4), labels[chunk])
        ids.append(batch_id)
    return ids


def run_one(batch_id: str, env: dict[str, str], baseline: bool) -> Outcome:
    entry = ["-c", BASELINE_CODE] if baseline else ["-m", "ml"]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, *entry, "ingest", "--batch-id", batch_id],
                          env=env, cwd=REPO, capture_output=True, text=True, check=False)  # fmt: skip
    lines = proc.stdout.strip().splitlines()
    result = None
    if lines:
        try:
            parsed = json.loads(lines[-1])
        except ValueError:
            parsed = None
        result = parsed if isinstance(parsed, dict) else None
    return Outcome(batch_id, proc.returncode, result, proc.stderr[-2000:], time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="ingest processes to run (default 300)")
    parser.add_argument("--jobs", type=int, default=2, help="how many run at once (default 2)")
    parser.add_argument("--baseline", action="store_true",
                        help="normal interpreter exit (python -c ... main()), without ml/__main__.py's os._exit")  # fmt: skip
    args = parser.parse_args(argv)

    mode = "baseline: python -c 'from ml.cli import main; ...' (normal exit)" if args.baseline else "python -m ml"
    with tempfile.TemporaryDirectory(prefix="ct-exit-stress-") as tmp:
        home = Path(tmp) / "ct"
        started = time.perf_counter()
        batch_ids = write_batches(home, args.runs)
        env = {**os.environ, "CT_HOME": str(home), "GX_ANALYTICS_ENABLED": "false", "TQDM_DISABLE": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}  # fmt: skip
        print(f"exit stress: {args.runs} ingests of {IMAGES_PER_BATCH} images, {args.jobs} at a time; {mode}",
              flush=True)  # fmt: skip
        outcomes: list[Outcome] = []
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for n, outcome in enumerate(pool.map(lambda b: run_one(b, env, args.baseline), batch_ids), start=1):
                outcomes.append(outcome)
                if outcome.returncode != 0:
                    last = outcome.stderr_tail.strip().splitlines()[-1:] or [""]
                    print(f"  {outcome.batch_id}: {exit_name(outcome.returncode)} after "
                          f"{'a successful result' if outcome.succeeded else 'no successful result'}; "
                          f"stderr ends {last[0][:160]!r}", flush=True)  # fmt: skip
                if n % 50 == 0:
                    print(f"  {n}/{args.runs} done", flush=True)
        elapsed = time.perf_counter() - started

    valid = sum(o.result is not None for o in outcomes)
    succeeded = sum(o.succeeded for o in outcomes)
    after_success = sum(o.crashed_after_success for o in outcomes)
    statuses = Counter(
        b.get("status", "?") for o in outcomes if o.result for b in o.result.get("batches", [])
    )  # curated / quarantined
    exits = Counter(exit_name(o.returncode) for o in outcomes)
    aborts = sum("terminate called" in o.stderr_tail for o in outcomes)
    per_run = sorted(o.seconds for o in outcomes)
    print()
    print(f"mode                     {mode}")
    print(f"runs                     {len(outcomes)}")
    print(f"valid JSON last line     {valid}")
    print(f"successful results       {succeeded} ({', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))})")
    print(f"non-zero after success   {after_success} ({after_success / max(len(outcomes), 1):.1%})")
    print(f"'terminate called' seen  {aborts}")
    print(f"exits                    {', '.join(f'{k}: {v}' for k, v in sorted(exits.items()))}")
    print(f"time                     {elapsed:.0f} s in all; median {per_run[len(per_run) // 2]:.1f} s a run")
    if args.baseline:
        return 0
    return 1 if after_success else 0


if __name__ == "__main__":
    raise SystemExit(main())
