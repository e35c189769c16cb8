"""Time the README's "Your own data" path: a folder of photos to a first champion, command by command.

The photos are tests/photoset.py's (5 labels, mixed sizes and aspect ratios, JPEG and PNG, grey and
EXIF-rotated files, one truncated, one misplaced), the configuration is ``ml/profiles/photos.yaml``
as it ships, and every command runs as the README writes it, in its own process, in a fresh home
with its own embedded PostgreSQL. Printed: each command's wall time and peak memory (the process's
largest resident set), and the gate's result.

    .venv/bin/python bench/your_data.py [--per-class 640] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO)]

from ct_airflow.launcher import postgres  # noqa: E402 - after the path above
from tests import photoset  # noqa: E402


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, dict]:
    """(seconds, peak RSS in MB, the last JSON line) of one command."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    lines = out.strip().splitlines()
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {process.returncode}: {result}")
    return seconds, usage.ru_maxrss / 1024, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=640, help="photos per label (5 labels)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home and photos")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ct-bench-yourdata-"))
    home = work / "ct"
    made = photoset.write(work / "photos", per_class=args.per_class)
    (made.root / made.corrupt).unlink()  # as the README's dry run tells the user to
    shutil.move(made.root / made.misplaced, made.root / Path(made.misplaced).parent.parent / "IMG_old.jpg")
    shutil.copy(REPO / "ml" / "profiles" / "photos.yaml", work / "ct.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CT_", "AIRFLOW"))}
    env.update(CT_HOME=str(home), CT_CONFIG=str(work / "ct.yaml"), PYTHONPATH=f"{REPO / 'plugins'}:{REPO}")
    python = [sys.executable, "-m", "ml"]
    print(
        f"{made.files - 1} photos of 5 labels under {made.root}; {os.cpu_count()} CPU cores; load {os.getloadavg()[0]:.1f}"
    )
    postgres.start(home)
    try:
        rows = []
        for name, argv in [
            ("config check", [*python, "config", "check"]),
            ("land --dry-run", [*python, "land", str(made.root), "--batch-id", "photos-1", "--dry-run"]),
            ("land", [*python, "land", str(made.root), "--batch-id", "photos-1"]),
            ("ingest", [*python, "ingest", "--batch-id", "photos-1"]),
            ("retrain", [*python, "retrain", "--run-key", "first"]),
        ]:
            seconds, rss, result = timed(argv, env)
            rows.append((name, seconds, rss))
            print(f"{name:<16} {seconds:8.1f} s  {rss:8.0f} MB peak RSS", flush=True)
        train = result.get("steps", {}).get("train", {})
        print(f"gate: {result.get('decision')} v{result.get('candidate_version')}, accuracy "
              f"{result.get('candidate_accuracy'):.3f} on {result.get('eval_rows')} rows; trained "
              f"{train.get('epochs')} epochs on {train.get('train_rows')} rows in {train.get('seconds')} s; "
              f"load {os.getloadavg()[0]:.1f}")  # fmt: skip
        print(f"total {sum(s for _, s, _ in rows):.0f} s")
    finally:
        postgres.stop(home)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
