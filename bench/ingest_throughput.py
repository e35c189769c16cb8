"""Ingest throughput and memory at scale, next to a bare decode + hash + resize loop on the same cores.

For each size (default 20k and 100k synthetic 256 px RGB PNGs, :mod:`ml.data.synthetic`):

* ``bare``: a thread pool (one thread per core) that reads each file, hashes it, decodes it with
  PIL and resizes it to ``image.store_size``: the floor for what ingest has to do;
* ``ct``: ``ingest_batch`` on the same landing batch in its own process: listing checks, the same
  work in ``ingest.workers`` threads, shards, Great Expectations, the manifest and the hash index.

It prints img/s for both, their ratio (target >= 0.7) and ct's peak RSS at each size (target: the
largest within 10% of the smallest). The two alternate for ``--rounds`` rounds at each size (one at
100k and over) and the target is on the median ratio: on a shared 2-core VM the same ingest took
from 25 to 29 s in three runs in a row, so one pair of runs says little. Then the duplicate check:
50 batches ingested one after the other, the last five against batches 2 to 6, as medians (target:
within 20%). With ``--s3`` it repeats the ratio (at 10k), the peak RSS (20k against 10k) and the
duplicate check with the lake in moto's S3 server over HTTP; there the floor GETs each object from
the same server first (moto runs on the same cores, so both pay for it). Each round also prints the
CPU seconds each side used and, on S3, moto's: ct also stores its shards there (about 2 GB per 10k
images), which moto pays for on these cores and a real bucket would not. One ingest makes the same
S3 calls whatever the lake holds (9 listings, 9 HEADs, a GET per image and at most 16 for the hash
index's uncovered segments), but moto scans every key in the bucket to answer a listing: 4 ms at 500
keys, 28 ms at 25k. The bucket gains 400 landing keys a batch, so on S3 part of the late batches'
extra time is moto's.

The PNGs are generated once into ``.ct/bench/ingest`` and reused. Run:
``.venv/bin/python bench/ingest_throughput.py`` (about 30 minutes on 2 cores the first time, most of
it writing 100k PNGs); ``--sizes 2000 10000`` for a quicker, indicative run.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO / ".ct" / "bench" / "ingest"
STORE = 256
LABELS = tuple(str(i) for i in range(10))


def _write_chunk(args: tuple[str, int, int, int, int]) -> int:
    from PIL import Image

    from ml.data import synthetic

    folder, start, count, size, seed = args
    images, labels = synthetic.images(count, size, len(LABELS), seed=seed)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = Path(folder) / "images" / str(label) / f"{start + i:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, "PNG", compress_level=1)
    return count


def landing(lake_root: Path, batch_id: str, count: int, size: int = 256, seed: int = 0) -> Path:
    """A committed landing batch of ``count`` synthetic PNGs (made once, then reused)."""
    folder = lake_root / "landing" / batch_id
    marker = folder / "_COMMITTED"
    if marker.exists():
        return folder
    chunk = 500
    jobs = [(str(folder), s, min(chunk, count - s), size, seed * 1_000_003 + s) for s in range(0, count, chunk)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write_chunk, jobs))
    marker.write_bytes(b"")
    return folder


def _bare_work(data: bytes) -> int:
    from PIL import Image

    hashlib.sha256(data).hexdigest()
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB").resize((STORE, STORE), Image.Resampling.BILINEAR).width


def _timed(work: Any, items: list[Any]) -> dict[str, float]:
    """``work`` over ``items`` in one thread per core; img/s."""
    started = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        for _ in pool.map(work, items, chunksize=16):
            pass
    seconds = time.perf_counter() - started
    return {"images": len(items), "seconds": seconds, "img_per_s": len(items) / seconds}


def bare(folder: Path) -> dict[str, float]:
    """The floor: read each file, hash it, decode it with PIL and resize it to the store size."""
    return _timed(lambda path: _bare_work(path.read_bytes()), sorted((folder / "images").rglob("*.png")))


def bare_s3(client: Any, bucket: str, prefix: str) -> dict[str, float]:
    """The same floor with every file fetched from S3 first: one GET, then hash, decode and resize."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"].endswith(".png")]
    return _timed(lambda key: _bare_work(client.get_object(Bucket=bucket, Key=key)["Body"].read()), keys)


def _settings_env(lake_uri: str, home: Path) -> dict[str, str]:
    return {**os.environ, "CT_HOME": str(home), "CT_LAKE_URI": lake_uri, "CT_IMAGE__SIZE": "224",
            "CT_IMAGE__STORE_SIZE": str(STORE), "CT_IMAGE__CHANNELS": "3", "CT_INGEST__MAX_ROWS": "10000000",
            "PYTHONPATH": str(REPO)}  # fmt: skip


def _steal() -> int:
    """Ticks the hypervisor gave to other guests (``steal`` in /proc/stat): how shared the cores were."""
    try:
        return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[8])
    except (OSError, IndexError, ValueError):
        return 0


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) another process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rounds(what: str, count: int, floor: Any, mine: Any, fresh: Any, server: int | None = None) -> tuple[float, float]:
    """``count`` rounds of the floor and ct, alternating which goes first; (median ratio, ct's largest peak RSS).

    Each round also prints the CPU seconds each side used, and with ``server`` (the pid of the S3
    server, on the same cores) what the server used while serving it.
    """
    ratios, rss = [], 0.0

    def timed_floor() -> dict[str, float]:
        cpu, served = time.process_time(), _cpu_of(server) if server else 0.0
        out = floor()
        return {**out, "cpu_s": time.process_time() - cpu, "server_s": _cpu_of(server) - served if server else 0.0}

    def timed_mine() -> dict[str, float]:
        served = _cpu_of(server) if server else 0.0
        return {**mine(), "server_s": _cpu_of(server) - served if server else 0.0}

    for r in range(count):
        fresh()
        steal = _steal()
        if r % 2:
            b = timed_mine()
            a = timed_floor()
        else:
            a = timed_floor()
            b = timed_mine()
        ratios.append(b["img_per_s"] / a["img_per_s"])
        rss = max(rss, b["peak_rss_mb"])
        served = f" (+ server {a['server_s']:.0f} s, {b['server_s']:.0f} s)" if server else ""
        print(f"{what}  round {r + 1}: bare {a['img_per_s']:6.0f} img/s   ct {b['img_per_s']:6.0f} img/s   "
              f"ratio {ratios[-1]:.2f}   ct peak RSS {b['peak_rss_mb']:.0f} MB   steal {_steal() - steal} ticks   "
              f"CPU bare {a['cpu_s']:.0f} s, ct {b['cpu_s']:.0f} s{served}", flush=True)  # fmt: skip
    median = statistics.median(ratios)
    print(f"{what}  median ratio {median:.2f} over {count} round(s)", flush=True)
    return median, rss


def ct_child(batch_id: str) -> None:
    """In a child process: ingest one batch, print seconds, images and peak RSS as JSON."""
    import great_expectations  # noqa: F401 - imported before the clock starts, as in a warm worker

    from ml.config import load_settings
    from ml.data.ingest import ingest_batch
    from ml.storage import Lake

    settings = load_settings()
    lake = Lake.from_uri(settings.lake_uri)
    started, cpu = time.perf_counter(), time.process_time()
    result = ingest_batch(lake, batch_id, settings)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"status": result["status"], "images": result.get("images", 0), "seconds": seconds,
                      "img_per_s": result.get("images", 0) / seconds, "peak_rss_mb": rss, "cpu_s": cpu}))  # fmt: skip


def ct(batch_id: str, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--child", batch_id], env=env, capture_output=True, text=True,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["status"] != "curated":
        raise RuntimeError(f"{batch_id} was not curated: {result}")
    return result


def duplicate_check(lake_uri: str, home: Path, write: Any, batches: int = 50, per_batch: int = 400) -> dict[str, float]:
    """Ingest ``batches`` small batches one after another; the 2nd and the last, alone and as medians of five.

    One small ingest's time moves by 20% from run to run on a shared VM, so the target compares the
    median of batches 2 to 6 with that of the last five: the same question, asked of five samples each.
    """
    env = {**_settings_env(lake_uri, home), "CT_IMAGE__SIZE": "32", "CT_IMAGE__STORE_SIZE": "32"}
    times = []
    for b in range(batches):
        write(f"dup-{b:03d}", per_batch, b)
        times.append(ct(f"dup-{b:03d}", env)["seconds"])
    early, late = statistics.median(times[1:6]), statistics.median(times[-5:])
    return {"second_s": times[1], "last_s": times[-1], "early_s": early, "late_s": late, "ratio": late / early}


def _dups_line(what: str, dups: dict[str, float], batches: int) -> str:
    return (f"{what}duplicate check: batch 2 {dups['second_s']:.2f} s, batch {batches} {dups['last_s']:.2f} s; "
            f"median of batches 2-6 {dups['early_s']:.2f} s, of the last five {dups['late_s']:.2f} s")  # fmt: skip


def _moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(150):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--dup-batches", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="bare/ct rounds per size under 100k (median taken)")
    parser.add_argument("--s3", action="store_true", help="also measure on moto's S3 server (10k images)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        ct_child(args.child)
        return 0
    lake_root = DATA / "lake"
    ok = True
    rows = []
    for count in args.sizes:
        home = DATA / f"home-{count}"
        folder = landing(lake_root, f"png-{count}", count)

        def fresh(home: Path = home) -> None:
            subprocess.run(["rm", "-rf", str(lake_root / "curated"), str(lake_root / "state"), str(home)], check=True)

        ratio, rss = rounds(
            f"{count:>7,} PNGs", args.rounds if count < 100_000 else 1,
            lambda folder=folder: bare(folder),
            lambda count=count, home=home: ct(f"png-{count}", _settings_env(lake_root.as_uri(), home)),
            fresh,
        )  # fmt: skip
        rows.append((count, ratio, rss))
    worst = min(ratio for _, ratio, _ in rows)
    ok &= _target(f"ingest / bare >= 0.7 at every size (median of rounds): min {worst:.2f}", worst >= 0.7)
    if len(rows) > 1:
        growth = rows[-1][2] / rows[0][2]
        ok &= _target(f"peak RSS at {rows[-1][0]:,} within 10% of {rows[0][0]:,}: x{growth:.3f}", growth <= 1.10)

    def write_local(batch_id: str, count: int, seed: int) -> None:
        landing(DATA / "dups" / "lake", batch_id, count, size=32, seed=1000 + seed)

    subprocess.run(["rm", "-rf", str(DATA / "dups" / "lake" / "curated"), str(DATA / "dups" / "lake" / "state")],
                   check=True)  # fmt: skip
    dups = duplicate_check((DATA / "dups" / "lake").as_uri(), DATA / "dups" / "home", write_local, args.dup_batches)
    print(_dups_line("", dups, args.dup_batches))
    ok &= _target(f"last five batches within 20% of batches 2-6 (medians): x{dups['ratio']:.2f}", dups["ratio"] <= 1.2)
    if args.s3:
        ok &= s3_run(args.dup_batches, args.rounds)
    return 0 if ok else 1


def s3_run(dup_batches: int, rounds_: int, count: int = 10_000) -> bool:
    import boto3

    proc, endpoint = _moto()
    try:
        creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        os.environ.update({**creds, "CT_S3_ENDPOINT_URL": endpoint})
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench")

        def upload(n: int) -> None:
            folder = landing(DATA / "lake", f"png-{n}", n)
            files = [p for p in sorted(folder.rglob("*")) if p.is_file()]
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda p: s3.upload_file(str(p), "bench", f"lake/landing/png-{n}/{p.relative_to(folder)}"),
                              files))  # fmt: skip

        upload(count)

        def fresh() -> None:
            subprocess.run(["rm", "-rf", str(DATA / "home-s3")], check=True)
            for prefix in ("lake/curated/", "lake/state/"):
                pages = s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix)
                for page in pages:
                    if keys := [{"Key": o["Key"]} for o in page.get("Contents", [])]:
                        s3.delete_objects(Bucket="bench", Delete={"Objects": keys, "Quiet": True})

        ratio, rss = rounds(
            f"S3 {count:,} PNGs", rounds_,
            # The floor fetches the same objects from the same server, on the same cores (moto's among them).
            lambda: bare_s3(s3, "bench", f"lake/landing/png-{count}/"),
            lambda: ct(f"png-{count}", _settings_env("s3://bench/lake", DATA / "home-s3")),
            fresh, proc.pid,
        )  # fmt: skip
        ok = _target(f"S3: ingest / bare >= 0.7 (median of rounds): {ratio:.2f}", ratio >= 0.7)
        # Memory at twice the size: 100k would need about 35 GB in moto on this machine.
        fresh()
        upload(2 * count)
        big = ct(f"png-{2 * count}", _settings_env("s3://bench/lake", DATA / "home-s3"))
        growth = big["peak_rss_mb"] / rss
        print(f"S3 {2 * count:,} PNGs  ct {big['img_per_s']:6.0f} img/s  peak RSS {big['peak_rss_mb']:.0f} MB "
              f"(at {count:,}: {rss:.0f} MB)", flush=True)  # fmt: skip
        ok &= _target(f"S3: peak RSS at {2 * count:,} within 10% of {count:,}: x{growth:.3f}", growth <= 1.10)
        fresh()

        def write_s3(batch_id: str, n: int, seed: int) -> None:
            local = landing(DATA / "dups-s3", batch_id, n, size=32, seed=2000 + seed)
            for p in local.rglob("*"):
                if p.is_file():
                    s3.upload_file(str(p), "bench", f"dups/landing/{batch_id}/{p.relative_to(local)}")

        dups = duplicate_check("s3://bench/dups", DATA / "dups-s3-home", write_s3, dup_batches)
        print(_dups_line("S3 ", dups, dup_batches))
        return ok & _target(
            f"S3: last five batches within 20% of batches 2-6 (medians): x{dups['ratio']:.2f}", dups["ratio"] <= 1.2
        )
    finally:
        proc.terminate()


def _target(text: str, ok: bool) -> bool:
    print(f"{'PASS' if ok else 'FAIL'}  {text}", flush=True)
    return ok


if __name__ == "__main__":
    sys.exit(main())
