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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alexnet_server.clients.label_bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
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
    if args.json:
        summary = {"cpu": cpu.describe(), "ray_cpus": args.ray_cpus, "ray_start_s": round(ray_start_s, 2), "rounds": args.rounds, "runs": results,
                   "images_per_s": rate, "ratio_to_local": {n: r / base for n, r in rate.items()}}  # fmt: skip
        files.atomic_write(args.json, json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
