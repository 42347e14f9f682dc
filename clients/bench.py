"""alexnet-bench: latency and throughput of the AlexNet Triton server, against an in-process baseline.

    alexnet-bench --concurrency 1,2,4,8 --duration 20 --inprocess
    alexnet-bench --model alexnet --protocol http --images photos/ --out bench-results
    alexnet-bench --batch 8 --concurrency 64 --duration 30                  # heavy load (GPU servers)
    alexnet-bench --soak 1800 --concurrency 8                                # saturation, errors and RSS over time
    alexnet-bench --arrival-rates 30,120 --duration 60                       # open loop: 1x and 4x what 2 cores take
    alexnet-bench --scenario singlestream --duration 30      # MLPerf LoadGen, the server as SUT

Per concurrency level: throughput (images/s), latency p50/p90/p95/p99/max and errors;
Triton's own split of the time (queue, compute) from its statistics extension; the resident
memory of this server (the process listening on --url's port, with its python stubs) when
it runs on this host.  A table on the terminal, results.json, results.csv and latency.png
in --out, each naming the CPU.  With --inprocess, the same decode and the same model file
run in this process opened as the served alexnet config opens them (its runtime, precision,
threads, streams and images per run, read from the running server's config), so the serving
overhead shows side by side.  Exit 1 when any level had errors (the first error is
printed), 2 for bad input or no server.  (perf_analyzer, the usual tool, is not on PyPI.)
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from alexnet_server import imaging
from alexnet_server.clients import loadgen, report
from alexnet_server.clients.label_sources import walk
from alexnet_server.clients.load import Level, ServerMemory, run_level, run_open_level, server_split
from alexnet_server.clients.protocol import DEFAULT_URLS, PROTOCOLS, ClientError, Connection, LocalError, ServerError, add_credential_arguments, bytes_batch, credentials_from
from alexnet_server.contract import ENSEMBLE, MODEL, PREPROCESS, cpu, layout
from alexnet_server.contract.cli import HelpFormatter
from alexnet_server.runtime import ChoiceError, RecordError, RuntimeUnavailable, ServedConfig, Version
from alexnet_server.runtime.model_config import ConfigError


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alexnet-bench", description=__doc__.split("\n\n")[0], add_help=add_help,
                                     formatter_class=HelpFormatter)  # fmt: skip
    parser.add_argument("--url", help=f"Triton address (default: {DEFAULT_URLS['grpc']} grpc, {DEFAULT_URLS['http']} http)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    parser.add_argument("--model", choices=(ENSEMBLE, MODEL), default=ENSEMBLE,
                        help="classify: JPEG bytes in (decode on the server); alexnet: uint8 256 images in")  # fmt: skip
    parser.add_argument("--concurrency", default="1,2,4,8,16", help="comma-separated numbers of requests in flight")
    parser.add_argument("--batch", type=int, default=1, help="images per request")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    parser.add_argument("--images", type=Path, help="folder of images to send, searched recursively (default: sample photographs)")
    parser.add_argument("--max-images", type=int, default=64, help="images read from --images and sent in turn")
    parser.add_argument("--inprocess", action="store_true", help="also run the in-process baseline (same decode, model file and runtime)")
    parser.add_argument("--runtimes", metavar="all|RUNTIME:PRECISION,...",
                        help="also time these in-process (e.g. onnxruntime:f32,openvino:bf16,openvino:int8; all = every one "
                             "this machine and the latest version can run), each level beside the served one")  # fmt: skip
    parser.add_argument("--repository", type=Path, default=layout.default_repository(),
                        help="where the in-process baseline finds alexnet's latest version")  # fmt: skip
    parser.add_argument("--soak", type=float, metavar="SECONDS", help="run the first --concurrency level for this long; report errors and RSS over time")
    parser.add_argument("--soak-interval", type=float, default=30.0, help="seconds per soak sample")
    parser.add_argument("--scenario", choices=("singlestream", "server", "offline"), help="run MLPerf LoadGen instead")
    parser.add_argument("--target-qps", type=float, default=5.0, help="LoadGen server scenario's arrival rate")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="folder for results.json/csv and latency.png")
    parser.add_argument("--arrival-rates", metavar="R,R,...",
                        help="instead of --concurrency: open-loop levels, R requests/s each sent on schedule whatever the answers "
                             "(offer 1x and 4x what the server takes to see overload refused: accepted latency, refusals, peak memory)")  # fmt: skip
    parser.add_argument("--baseline-url", metavar="URL",
                        help="also run each level against this address of the same server, e.g. Triton's own loopback port behind "
                             "alexnet-serve's front (printed at its start): the front's cost, side by side")  # fmt: skip
    add_credential_arguments(parser)
    return parser


# --- inputs ---------------------------------------------------------------------------------------


def load_images(folder: Path | None, limit: int = 64) -> list[bytes]:
    """Up to ``limit`` images as JPEG bytes (as cameras and browsers send them: others re-encoded).

    Searches the whole folder (any name, any depth); files that are not images are passed
    over, broken images are skipped and named on stderr.  LocalError when none is found."""
    if folder is not None and not folder.is_dir():
        raise LocalError(f"--images {folder} is not a folder")
    paths = imaging.sample_photographs() if folder is None else walk(folder, recursive=True)
    out: list[bytes] = []
    skipped = 0
    for path in paths:
        if len(out) >= limit:
            break
        if imaging.sniff(path) is None:
            continue
        try:
            data = Path(path).read_bytes()
            if imaging.sniff(data) != "JPEG":
                buffer = io.BytesIO()
                imaging.decode(data, draft=True).save(buffer, format="JPEG", quality=90)
                data = buffer.getvalue()
            else:
                imaging.load(data)  # a truncated JPEG would fail every request it is in
            out.append(data)
        except (imaging.ImageError, OSError) as exc:
            skipped += 1
            print(f"alexnet-bench: skipping {path}: {exc}", file=sys.stderr)
    if not out:
        raise LocalError(f"no usable images found in {folder}" + (f" ({skipped} broken)" if skipped else ""))
    return out


# --- the two targets ---------------------------------------------------------------------------------


def served_caller(args: argparse.Namespace, images: list[bytes], url: str | None = None) -> tuple[Callable, Connection]:
    """Requests to ``url`` (default --url), each worker thread on its own connection."""
    url = url or args.url
    credentials = credentials_from(args)
    probe = Connection(url, args.protocol, credentials=credentials)
    if not probe.model_ready(args.model):
        raise ServerError(f"model '{args.model}' is not ready at {probe.url}", "unavailable")
    info = probe.describe(args.model)
    if info.max_batch_size and args.batch > info.max_batch_size:
        raise LocalError(f"--batch {args.batch} is over model '{args.model}''s max_batch_size {info.max_batch_size}")
    if info.input_datatype == "BYTES":
        tensors = [bytes_batch([images[(i + k) % len(images)] for k in range(args.batch)]) for i in range(len(images))]
    else:
        arrays = [imaging.load(img) for img in images]
        tensors = [np.stack([arrays[(i + k) % len(images)] for k in range(args.batch)]) for i in range(len(images))]

    def make_call():
        conn = Connection(url, args.protocol, concurrency=1, credentials=credentials)
        return lambda i: conn.infer(info, tensors[i % len(tensors)])

    return make_call, probe


def served_config(probe: Connection) -> ServedConfig:
    """The served alexnet config, as the running server answers for it (its /config): what the
    in-process line opens the model with.  LocalError when it is not one this version knows."""
    try:
        return ServedConfig.from_model_config(probe.config(MODEL), "served")
    except ConfigError as exc:
        raise LocalError(f"the served {MODEL} config: {exc}") from None


def runtime_specs(text: str, version: Version) -> list[tuple[str, str]]:
    """--runtimes: the (runtime, precision) pairs asked for; ``all`` = every CPU one this version and machine allow."""
    if text != "all":
        return [(spec.partition(":")[0], spec.partition(":")[2] or "f32") for spec in text.split(",") if spec.strip()]
    gated = version.record.allowed_precisions()
    specs = [("onnxruntime", p) for p in ("f32", "int8") if p in gated]
    return specs + [("openvino", p) for p in ("f32", "bf16", "int8") if p in gated and (p != "bf16" or cpu.has_native_bf16())]


def inprocess_caller(args: argparse.Namespace, images: list[bytes], config: ServedConfig) -> tuple[Callable, str]:
    """The served pipeline in this process: imaging's decode, then the same file opened by
    ``config`` (runtime, precision, threads, streams, images per run; openvino "auto" picks as
    the cpu config does, from export's timings when they were taken on this kind of CPU)."""
    version = Version.latest(args.repository)
    if version is None:
        raise LocalError(f"no exported model in {args.repository / MODEL} for --inprocess: run alexnet-export first")
    try:
        model = config.open(version)
    except (RuntimeUnavailable, RecordError, ChoiceError, FileNotFoundError) as exc:
        raise LocalError(f"in-process {config.runtime} {config.precision}: {exc}") from None
    why = model.why
    decode = args.model == ENSEMBLE  # the ensemble's baseline decodes in each call; alexnet's gets arrays
    arrays = [] if decode else [imaging.load(img) for img in images]
    lock = threading.Lock()  # one model instance, like the server's; callers queue for it

    def make_call():
        def call(i: int) -> None:
            picks = [(i + k) % len(images) for k in range(args.batch)]
            batch = np.stack([imaging.load(images[j]) if decode else arrays[j] for j in picks])
            with lock:
                model(batch)

        return call

    return make_call, model.describe() + (f"; precision {why}" if why and why != "asked for" else "")


def parse_levels(text: str) -> list[int]:
    levels = [int(c) for c in text.split(",") if c.strip()]
    if not levels or min(levels) < 1:
        raise ValueError
    return levels


def measure_levels(args: argparse.Namespace, images: list[bytes], levels_wanted: list[int]) -> tuple[list[Level], dict]:
    make_served, probe = served_caller(args, images)
    make_baseline = served_caller(args, images, args.baseline_url)[0] if args.baseline_url else None
    memory = ServerMemory(probe.url)
    served = served_config(probe)
    make_local, local = inprocess_caller(args, images, served) if args.inprocess else (None, "")
    others = []
    if args.runtimes:
        version = Version.latest(args.repository)
        if version is None:
            raise LocalError(f"no exported model in {args.repository / MODEL} for --runtimes: run alexnet-export first")
        try:
            specs = runtime_specs(args.runtimes, version)
        except RecordError as exc:
            raise LocalError(str(exc)) from None
        for name, prec in specs:
            others.append((f"{name}-{prec}", inprocess_caller(args, images, dataclasses.replace(served, runtime=name, precision=prec))[0]))
    levels: list[Level] = []
    watch = [ENSEMBLE, PREPROCESS, MODEL] if args.model == ENSEMBLE else [MODEL]
    if args.arrival_rates:
        try:
            for rate in (float(r) for r in args.arrival_rates.split(",") if r.strip()):
                peak: list[float] = []
                sample = lambda: peak.append(memory.rss_mib() or 0.0)  # noqa: E731
                level = run_open_level("served-open", rate, make_served, args.duration, args.warmup, args.batch, on_sample=sample)
                level.server_rss_mib = max(peak) if any(peak) else None
                levels.append(level)
        finally:
            probe.close()
        return levels, {"served_runtime": f"{served.runtime} {served.precision}", "inprocess_runtime": local}
    try:
        for c in levels_wanted:
            before = {m: probe.statistics(m) for m in watch}
            level = run_level("served", c, make_served, args.duration, args.warmup, args.batch)
            time.sleep(0.2)  # Triton records statistics just after it answers
            after = {m: probe.statistics(m) for m in watch}
            level.server_ms = {m: server_split(before[m], after[m]) for m in watch}
            level.server_rss_mib = memory.rss_mib()
            levels.append(level)
            if make_baseline is not None:
                levels.append(run_level("baseline-url", c, make_baseline, args.duration, args.warmup, args.batch))
            if make_local is not None:
                levels.append(run_level("inprocess", c, make_local, args.duration, args.warmup, args.batch))
            for target, make in others:
                levels.append(run_level(target, c, make, args.duration, args.warmup, args.batch))
    finally:
        probe.close()
    return levels, {"served_runtime": f"{served.runtime} {served.precision}", "inprocess_runtime": local}


def main(args: argparse.Namespace) -> int:
    try:
        levels_wanted = parse_levels(args.concurrency)
    except ValueError:
        print(f"alexnet-bench: error: --concurrency must be positive integers like 1,2,4, got {args.concurrency!r}", file=sys.stderr)
        return 2
    if args.batch < 1:
        print("alexnet-bench: error: --batch must be >= 1", file=sys.stderr)
        return 2
    print(f"CPU: {cpu.line()}")
    try:
        images = load_images(args.images, args.max_images)
        if args.scenario:
            make_call, probe = served_caller(args, images)
            try:
                return loadgen.run(make_call, len(images), args.scenario, args.duration, args.target_qps, args.out)
            finally:
                probe.close()
        if args.soak:
            from alexnet_server.clients import soak

            return soak.run(args, images, levels_wanted[0], served_caller)
        levels, runtimes_used = measure_levels(args, images, levels_wanted)
    except ClientError as exc:
        print(f"alexnet-bench: error: {exc}", file=sys.stderr)
        return 2
    for key, label in (("served_runtime", "served"), ("inprocess_runtime", "in-process")):
        if runtimes_used.get(key):
            print(f"{label}: {runtimes_used[key]}")
    report.print_table(levels)
    if args.baseline_url:
        report.print_ratios(levels, "served", "baseline-url")
    meta = {"model": args.model, "protocol": args.protocol, "url": args.url or DEFAULT_URLS[args.protocol], "baseline_url": args.baseline_url, "batch": args.batch,
            "duration_s": args.duration, "warmup_s": args.warmup, "images": len(images), "cpu": cpu.describe(),
            **runtimes_used, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
    report.write_outputs(args.out, levels, meta)
    print(f"wrote {args.out / 'results.json'}, {args.out / 'results.csv'}, {args.out / 'latency.png'}")
    failed = [lv for lv in levels if lv.errors]
    if failed:
        worst = failed[0]
        print(f"alexnet-bench: {sum(lv.errors for lv in failed)} request(s) failed in {len(failed)} level(s); "
              f"first ({worst.target}, concurrency {worst.concurrency}): {worst.first_error}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def cli(argv: list[str] | None = None) -> int:
    return main(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
