"""alexnet-bench: latency and throughput of the AlexNet Triton server, against an in-process baseline.

    alexnet-bench --concurrency 1,2,4,8 --duration 20 --inprocess
    alexnet-bench --model alexnet --protocol http --images photos/ --out bench-results
    alexnet-bench --scenario singlestream --duration 30      # MLPerf LoadGen, the server as SUT

Per concurrency level: throughput, latency p50/p90/p95/p99/max and errors; Triton's own
split of the time (queue, compute input/infer/output) from its statistics extension; the
resident memory of tritonserver and its python stubs when they run on this host.  A table
on the terminal, results.json, results.csv and latency.png in --out.  With --inprocess,
the same decode and the same ONNX file run in this process at the same concurrency, so the
serving overhead shows side by side.  (perf_analyzer, the usual tool, is not on PyPI.)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

import imaging
from clients.protocol import DEFAULT_URLS, PROTOCOLS, Connection, ServerError, bytes_batch

PERCENTILES = (50, 90, 95, 99)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alexnet-bench", description=__doc__.split("\n\n")[0], add_help=add_help,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("--url", help=f"Triton address (default: {DEFAULT_URLS['grpc']} grpc, {DEFAULT_URLS['http']} http)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    parser.add_argument("--model", choices=("classify", "alexnet"), default="classify",
                        help="classify: JPEG bytes in (decode on the server); alexnet: uint8 256 images in")  # fmt: skip
    parser.add_argument("--concurrency", default="1,2,4,8,16", help="comma-separated numbers of clients in flight")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    parser.add_argument("--images", type=Path, help="folder of images to send (default: sample photographs)")
    parser.add_argument("--inprocess", action="store_true", help="also run the in-process baseline (same decode, same ONNX)")
    parser.add_argument("--repository", type=Path, default=Path(__file__).resolve().parents[1] / "model_repository",
                        help="where the in-process baseline finds alexnet's latest model.onnx")  # fmt: skip
    parser.add_argument("--scenario", choices=("singlestream", "server", "offline"), help="run MLPerf LoadGen instead")
    parser.add_argument("--target-qps", type=float, default=5.0, help="LoadGen server scenario's arrival rate")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for results.json/csv and latency.png")
    return parser


# --- inputs ---------------------------------------------------------------------------------------


def load_images(folder: Path | None, limit: int = 64) -> list[bytes]:
    if folder is None:
        from export.check import sample_photographs

        paths = sample_photographs()
    else:
        if not folder.is_dir():
            raise ServerError(f"--images {folder} is not a folder")
        paths = [p for p in sorted(folder.rglob("*"))[: limit * 4] if p.is_file() and imaging.sniff(p)][:limit]
    if not paths:
        raise ServerError(f"no images found in {folder}")
    # JPEG in, as cameras and browsers send it: re-encode anything else.
    out = []
    for p in paths:
        data = p.read_bytes()
        if imaging.sniff(data) != "JPEG":
            import io

            buf = io.BytesIO()
            imaging.decode(data).save(buf, format="JPEG", quality=90)
            data = buf.getvalue()
        out.append(data)
    return out


# --- one measured level -----------------------------------------------------------------------------


@dataclass
class Level:
    target: str
    concurrency: int
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    throughput: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    server_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    server_rss_mib: float | None = None
    first_error: str = ""


def run_level(target: str, concurrency: int, make_call: Callable[[], Callable[[int], None]], duration: float, warmup: float) -> Level:
    """``concurrency`` threads call their own ``call(i)`` back to back; latencies of the measured window count."""
    start_at = time.perf_counter() + warmup
    stop_at = start_at + duration
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    first_error: list[str] = []

    def worker(k: int) -> None:
        call = make_call()
        i = k
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                call(i)
                ok = True
            except Exception as exc:  # noqa: BLE001 - counted, the first one reported
                ok = False
                if not first_error:
                    first_error.append(str(exc))
            t1 = time.perf_counter()
            if t0 >= start_at and t1 <= stop_at:
                (latencies[k].append(t1 - t0) if ok else None)
                errors[k] += 0 if ok else 1
            i += concurrency

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = np.array([x for per in latencies for x in per]) * 1000
    level = Level(target, concurrency, requests=int(flat.size), errors=sum(errors), seconds=duration,
                  first_error=first_error[0] if first_error else "")  # fmt: skip
    level.throughput = flat.size / duration
    if flat.size:
        level.latency_ms = {f"p{p}": float(np.percentile(flat, p)) for p in PERCENTILES}
        level.latency_ms["max"] = float(flat.max())
        level.latency_ms["mean"] = float(flat.mean())
    return level


def server_split(before: dict, after: dict) -> dict[str, float]:
    """Average ms per request in each phase between two statistics snapshots."""
    out = {}
    b, a = before.get("inference_stats", {}), after.get("inference_stats", {})
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        count = int(a.get(phase, {}).get("count", 0)) - int(b.get(phase, {}).get("count", 0))
        ns = int(a.get(phase, {}).get("ns", 0)) - int(b.get(phase, {}).get("ns", 0))
        out[phase] = ns / count / 1e6 if count else 0.0
    inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    out["avg_batch"] = inferences / executions if executions else 0.0
    return out


def triton_rss_mib() -> float | None:
    """Resident memory of every tritonserver and python-backend stub process on this host."""
    total, found = 0, False
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            if comm.startswith("tritonserver") or comm.startswith("triton_python_b"):
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        found = True
        except OSError:
            continue
    return total / 1024 if found else None


# --- the two targets ---------------------------------------------------------------------------------


def served_caller(args: argparse.Namespace, images: list[bytes]) -> tuple[Callable, Connection]:
    probe = Connection(args.url, args.protocol)
    if not probe.model_ready(args.model):
        raise ServerError(f"model '{args.model}' is not ready at {probe.url}", "unavailable")
    info = probe.describe(args.model)
    tensors = [bytes_batch([img]) for img in images] if info.input_datatype == "BYTES" else [imaging.load(img)[None] for img in images]

    def make_call():
        conn = Connection(args.url, args.protocol, concurrency=1)
        return lambda i: conn.infer(info, tensors[i % len(tensors)])

    return make_call, probe


def inprocess_caller(args: argparse.Namespace, images: list[bytes]) -> Callable:
    import onnxruntime as ort

    from server.cli import latest_version

    version = latest_version(args.repository)
    if version is None:
        raise ServerError(f"no exported model in {args.repository / 'alexnet'} for --inprocess: run alexnet-export first")
    path = version / "model.onnx"
    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    decode = args.model == "classify"
    arrays = None if decode else [imaging.load(img)[None] for img in images]

    def make_call():
        def call(i: int) -> None:
            image = imaging.load(images[i % len(images)])[None] if decode else arrays[i % len(arrays)]
            session.run(["PROBS"], {"IMAGE": image})

        return call

    return make_call


# --- reporting ------------------------------------------------------------------------------------------


def print_table(levels: list[Level]) -> None:
    head = f"{'target':<10}{'conc':>5}{'img/s':>9}{'p50':>9}{'p90':>9}{'p95':>9}{'p99':>9}{'max':>9}{'err':>5}  server split (ms/request: queue, infer, batch)"
    print(head)
    for lv in levels:
        lat = lv.latency_ms
        split = lv.server_ms.get("alexnet", {})
        extra = f"  q {split.get('queue', 0):.1f}  infer {split.get('compute_infer', 0):.1f}  b {split.get('avg_batch', 0):.1f}" if split else ""
        print(f"{lv.target:<10}{lv.concurrency:>5}{lv.throughput:>9.2f}" + "".join(f"{lat.get(k, float('nan')):>9.1f}" for k in ("p50", "p90", "p95", "p99", "max"))
              + f"{lv.errors:>5}{extra}")  # fmt: skip


def write_outputs(out: Path, levels: list[Level], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "levels": [asdict(lv) for lv in levels]}, indent=2) + "\n")
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["target", "concurrency", "requests", "errors", "throughput", *[f"p{p}_ms" for p in PERCENTILES], "max_ms",
                         "alexnet_queue_ms", "alexnet_infer_ms", "alexnet_avg_batch", "server_rss_mib"])  # fmt: skip
        for lv in levels:
            split = lv.server_ms.get("alexnet", {})
            writer.writerow([lv.target, lv.concurrency, lv.requests, lv.errors, f"{lv.throughput:.3f}",
                             *[f"{lv.latency_ms.get(f'p{p}', float('nan')):.2f}" for p in PERCENTILES], f"{lv.latency_ms.get('max', float('nan')):.2f}",
                             f"{split.get('queue', 0):.2f}", f"{split.get('compute_infer', 0):.2f}", f"{split.get('avg_batch', 0):.2f}",
                             "" if lv.server_rss_mib is None else f"{lv.server_rss_mib:.0f}"])  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for target in dict.fromkeys(lv.target for lv in levels):
        rows = [lv for lv in levels if lv.target == target and lv.latency_ms]
        for key, style in (("p50", "o-"), ("p99", "s--")):
            ax.plot([lv.throughput for lv in rows], [lv.latency_ms[key] for lv in rows], style, label=f"{target} {key}")
            for lv in rows:
                ax.annotate(str(lv.concurrency), (lv.throughput, lv.latency_ms[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="throughput (images/s)", ylabel="latency (ms)", title=f"AlexNet {meta['model']} ({meta['protocol']}); labels: concurrency")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)
    plt.close(fig)


# --- MLPerf LoadGen --------------------------------------------------------------------------------------


def run_loadgen(args: argparse.Namespace, images: list[bytes]) -> int:
    import mlperf_loadgen as lg
    from concurrent.futures import ThreadPoolExecutor

    make_call, probe = served_caller(args, images)
    pool = ThreadPoolExecutor(16)
    local = threading.local()

    def call(index: int) -> None:
        if not hasattr(local, "call"):
            local.call = make_call()
        local.call(index)

    def answer(sample) -> None:
        try:
            call(sample.index)
        finally:
            lg.QuerySamplesComplete([lg.QuerySampleResponse(sample.id, 0, 0)])

    def issue(samples) -> None:
        for sample in samples:
            pool.submit(answer, sample)

    settings = lg.TestSettings()
    settings.scenario = {"singlestream": lg.TestScenario.SingleStream, "server": lg.TestScenario.Server, "offline": lg.TestScenario.Offline}[args.scenario]
    settings.mode = lg.TestMode.PerformanceOnly
    settings.min_duration_ms = int(args.duration * 1000)
    settings.max_duration_ms = int(args.duration * 1000 * 4)
    settings.min_query_count = 8
    settings.server_target_qps = args.target_qps
    settings.server_target_latency_ns = int(2e9)
    settings.offline_expected_qps = args.target_qps
    settings.single_stream_expected_latency_ns = int(2e8)
    log_settings = lg.LogSettings()
    args.out.mkdir(parents=True, exist_ok=True)
    log_settings.log_output.outdir = str(args.out.resolve())
    log_settings.log_output.copy_summary_to_stdout = True
    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(len(images), len(images), lambda _: None, lambda _: None)
    try:
        lg.StartTestWithLogSettings(sut, qsl, settings, log_settings)
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
        pool.shutdown(wait=True)
        probe.close()
    summary = args.out / "mlperf_log_summary.txt"
    return 0 if summary.is_file() else 1


def main(args: argparse.Namespace) -> int:
    try:
        levels_wanted = [int(c) for c in args.concurrency.split(",") if c.strip()]
        if not levels_wanted or min(levels_wanted) < 1:
            raise ValueError
    except ValueError:
        print(f"alexnet-bench: error: --concurrency must be positive integers like 1,2,4, got {args.concurrency!r}", file=sys.stderr)
        return 2
    try:
        images = load_images(args.images)
        if args.scenario:
            return run_loadgen(args, images)
        make_served, probe = served_caller(args, images)
        make_local = inprocess_caller(args, images) if args.inprocess else None
        levels: list[Level] = []
        watch = ["classify", "preprocess", "alexnet"] if args.model == "classify" else ["alexnet"]
        for c in levels_wanted:
            before = {m: probe.statistics(m) for m in watch}
            level = run_level("served", c, make_served, args.duration, args.warmup)
            after = {m: probe.statistics(m) for m in watch}
            level.server_ms = {m: server_split(before[m], after[m]) for m in watch}
            level.server_rss_mib = triton_rss_mib()
            levels.append(level)
            if make_local is not None:
                levels.append(run_level("inprocess", c, make_local, args.duration, args.warmup))
        probe.close()
    except ServerError as exc:
        print(f"alexnet-bench: error: {exc}", file=sys.stderr)
        return 2
    print_table(levels)
    meta = {"model": args.model, "protocol": args.protocol, "url": args.url or DEFAULT_URLS[args.protocol], "duration_s": args.duration,
            "warmup_s": args.warmup, "images": len(images), "cpu_count": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
    write_outputs(args.out, levels, meta)
    print(f"wrote {args.out / 'results.json'}, {args.out / 'results.csv'}, {args.out / 'latency.png'}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    return main(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
