"""Compare alexnet-label's engines on one folder and machine: the local engine against --engine ray.

    python -m alexnet_server.clients.label_bench photos/ --url 127.0.0.1:8001 --repository served --rounds 2

Runs, one after another and ``--rounds`` times each, on the same folder (a fresh output each run):
local (through Triton at --url), ray through the same Triton (--url), and ray with the model
in-process on its actors (--repository).  The ray runs use one local Ray cluster started for the
benchmark (``ray start --head`` with --ray-cpus logical CPUs, default this machine's cores: the
CPUs the local engine has), as a cluster is already running where the engine is used; its start
is timed and printed apart.  Prints images/s (labelled + failed rows over each whole run: the
driver's listing, the actors' model load and the output included) and each ray run's ratio to
the local engine, with the CPU; --json writes the same.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alexnet_server.contract import cpu, files, layout
from alexnet_server.contract.cli import HelpFormatter

LABEL = [sys.executable, "-m", "alexnet_server.clients.label"]
_SUMMARY = re.compile(r"(\d+) labelled, (\d+) failed")


def run_once(source: Path, extra: list[str]) -> dict:
    """One alexnet-label run into a fresh output: {seconds, rows, images_per_s, exit}."""
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        proc = subprocess.run([*LABEL, str(source), "--recursive", "--out", str(Path(tmp) / "rows.csv"), "--no-progress", *extra],
                              capture_output=True, text=True)  # fmt: skip
        seconds = time.perf_counter() - started
    found = _SUMMARY.search(proc.stderr)
    if proc.returncode not in (0, 1) or not found:
        raise RuntimeError(f"alexnet-label {' '.join(extra)} exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
    rows = int(found.group(1)) + int(found.group(2))
    return {"seconds": round(seconds, 2), "rows": rows, "images_per_s": round(rows / seconds, 3), "exit": proc.returncode}


def _rate(n: int, work) -> float:
    """n / the seconds ``work()`` takes, repeated until at least 1 s has passed."""
    done, started = 0, time.perf_counter()
    while True:
        work()
        done += n
        if (seconds := time.perf_counter() - started) >= 1.0:
            return done / seconds


def stages(source: Path, address: str) -> dict[str, float]:
    """Per-second rates of the stages around the model, on this machine, one core each:
    walk (files), put (paths into the object store), write_csv/_jsonl/_parquet (rows), decode (images)."""
    from alexnet_server import imaging
    from alexnet_server.clients.classifier import Result
    from alexnet_server.clients.label_sources import candidates
    from alexnet_server.clients.label_output import open_output
    from alexnet_server.clients.label_ray import connect, put_paths
    from alexnet_server.contract.security import MAX_IMAGE_BYTES

    listed = [path for path, _ in candidates(source, True)]
    rates = {"walk": _rate(len(listed), lambda: sum(1 for _ in candidates(source, True)))}
    many = [(p, False) for p in (listed * (100_000 // max(1, len(listed)) + 1))[:100_000]]
    ray = connect(address, None)  # before any other import of ray: it sets the cluster's auth mode
    try:
        rates["put"] = _rate(len(many), lambda: put_paths(ray, iter(many)))
    finally:
        ray.shutdown()
    rows = [Result(0, p, [("tabby", 0.5), ("tiger cat", 0.2), ("Egyptian cat", 0.1), ("lynx", 0.05), ("cougar", 0.01)]) for p, _ in many[:50_000]]
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("csv", "jsonl", "parquet"):
            def write(kind=kind) -> None:
                out = open_output(Path(tmp) / f"{time.perf_counter_ns()}.{kind}", resume=False)
                for row in rows:
                    out.write(row)
                out.close()

            rates[f"write_{kind}"] = _rate(len(rows), write)
    images = [Path(p).read_bytes() for p in listed[:200]]
    rates["decode"] = _rate(len(images), lambda: [imaging.load_or_reason(data, MAX_IMAGE_BYTES) for data in images])
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alexnet_server.clients.label_bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)  # fmt: skip
    parser.add_argument("source", type=Path, help="a folder of images (recursive)")
    parser.add_argument("--url", required=True, help="the Triton server (gRPC) the local engine and ray --url use")
    parser.add_argument("--repository", type=Path, default=layout.default_repository(), help="what ray's in-process actors run")
    parser.add_argument("--ray-cpus", type=int, default=cpu.cores(), help="logical CPUs of each run's local Ray")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (local engine, and each ray --url actor)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    ray_bin = Path(sys.executable).parent / "ray"
    started = time.perf_counter()
    start = subprocess.run([str(ray_bin), "start", "--head", "--port=0", f"--num-cpus={args.ray_cpus}", "--include-dashboard=false",
                            "--disable-usage-stats"], capture_output=True, text=True)  # fmt: skip
    address = re.search(r"ray start --address='([^']+)'", start.stdout + start.stderr)
    if start.returncode != 0 or not address:
        print(f"label_bench: error: ray start failed: {(start.stderr or start.stdout).strip().splitlines()[-1:]}", file=sys.stderr)
        return 2
    ray_start_s = time.perf_counter() - started
    ray = ["--engine", "ray", "--address", address.group(1)]
    targets = {
        "local (Triton)": ["--url", args.url, "--concurrency", str(args.concurrency)],
        "ray (Triton)": [*ray, "--url", args.url, "--concurrency", str(args.concurrency)],
        "ray (in-process)": [*ray, "--repository", str(args.repository)],
    }
    results: dict[str, list[dict]] = {name: [] for name in targets}
    try:
        for _ in range(args.rounds):
            for name, extra in targets.items():
                results[name].append(run_once(args.source, extra))
        stage_rates = stages(args.source, address.group(1))
    except RuntimeError as exc:
        print(f"label_bench: error: {exc}", file=sys.stderr)
        return 2
    finally:
        subprocess.run([str(ray_bin), "stop"], capture_output=True)
    rate = {name: sum(r["rows"] for r in runs) / sum(r["seconds"] for r in runs) for name, runs in results.items()}
    base = rate["local (Triton)"]
    print(f"CPU: {cpu.line()}; {os.cpu_count()} logical CPUs here, Ray given {args.ray_cpus}; {args.rounds} round(s) each, runs interleaved; "
          f"the Ray cluster started in {ray_start_s:.1f} s (not in the runs)")
    print(f"{'engine':<20}{'images/s':>10}{'vs local':>10}   seconds per run")
    for name, runs in results.items():
        print(f"{name:<20}{rate[name]:>10.2f}{rate[name] / base:>9.2f}x   " + ", ".join(f"{r['seconds']:.1f}" for r in runs))
    units = {"walk": "files", "put": "paths", "decode": "images"}
    print("the stages around the model, one core each: " + ", ".join(f"{name} {value:,.0f} {units.get(name, 'rows')}/s" for name, value in stage_rates.items()))
    if args.json:
        summary = {"cpu": cpu.describe(), "ray_cpus": args.ray_cpus, "ray_start_s": round(ray_start_s, 2), "rounds": args.rounds, "runs": results,
                   "images_per_s": rate, "ratio_to_local": {n: r / base for n, r in rate.items()}, "stages_per_s": stage_rates}  # fmt: skip
        files.atomic_write(args.json, json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
