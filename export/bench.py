"""Benchmark: the exported 10-crop classifier in every CPU runtime and precision, in one run.

    python -m alexnet_server.export.bench                         # paper arch, 1000 classes, random weights
    python -m alexnet_server.export.bench runs/demo/checkpoint.pt --batch-sizes 1,8 --seconds 20 --json bench.json
    python -m alexnet_server.export.bench runs/demo/checkpoint.pt --int8 --calibration fashion-mnist

All run the identical procedure (uint8 IMAGE -> 10 crops -> softmax -> mean) on the same
inputs with the same number of threads: PyTorch eager, ONNX Runtime fp32 (the baseline of
the ratios), OpenVINO f32 and bf16 (where the CPU has AMX or AVX512-BF16), and with --int8
the quantized model in ONNX Runtime and OpenVINO.  The table and the JSON name the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from alexnet_server import imaging
from alexnet_server.contract import cpu, files
from alexnet_server.contract.cli import HelpFormatter
from alexnet_server.runtime import FILES, RuntimeUnavailable, Version
from alexnet_server.export import check, onnx_graph, source
from alexnet_server.train.model import normalisation


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m alexnet_server.export.bench", description=__doc__.split("\n\n")[0], add_help=add_help,
                                     formatter_class=HelpFormatter)  # fmt: skip
    parser.add_argument("checkpoint", nargs="?", type=Path, help="a train/ checkpoint (default: random weights)")
    parser.add_argument("--arch", choices=("paper", "torchvision"), default="paper", help="without a checkpoint")
    parser.add_argument("--classes", type=int, default=1000, help="without a checkpoint")
    parser.add_argument("--crops", type=int, choices=(1, 10), default=10)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per runtime and batch size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=0, help="threads for every runtime (0 = all cores)")
    parser.add_argument("--no-eager", action="store_true", help="leave PyTorch eager out (slow on the CPU)")
    parser.add_argument("--int8", action="store_true", help="also quantize (export --int8) and time the INT8 model in both runtimes")
    parser.add_argument("--calibration", default="fashion-mnist", help="with --int8: calibration images (folder or fashion-mnist)")
    parser.add_argument("--calibration-images", type=int, default=128)
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser


def measure(run, batch: np.ndarray, seconds: float, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        run(batch)
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t0 = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - t0)
    total = sum(times)
    return {"images_per_s": len(times) * len(batch) / total, "latency_ms_p50": 1000 * float(np.median(times)), "runs": len(times)}


def _source(args: argparse.Namespace) -> source.Source:
    if args.checkpoint:
        return source.from_checkpoint(args.checkpoint)
    from alexnet_server.train.model import alexnet

    torch.manual_seed(0)
    net = alexnet(args.arch, args.classes, init="kaiming").eval()
    offset, scale = normalisation(args.arch, np.full((3, imaging.SIZE, imaging.SIZE), 114.0, np.float32), 1 / 64)
    return source.Source(args.arch, [str(i) for i in range(args.classes)], net, offset, scale, f"random {args.arch}")


def runtimes_to_time(args: argparse.Namespace, classifier, folder: Path, threads: int) -> dict:
    """name -> callable, every runtime this machine can run, the baseline (onnxruntime-f32) first.
    The files are fresh (no export.json, no gates): every precision is timed, none is served."""
    torch.set_num_threads(threads)
    scratch = Version(folder)
    found = {"onnxruntime-f32": scratch.open("onnxruntime", "f32", threads=threads, gated=False)}
    if not args.no_eager:
        found["pytorch-eager-f32"] = check.torch_runner(classifier)
    precisions = ["f32"] + (["bf16"] if cpu.has_native_bf16() else [])
    if args.int8:
        from alexnet_server.export import quantize

        calibration, _ = quantize.calibration_images(args.calibration, args.calibration_images, 1)
        quantize.quantize(scratch.file("f32"), scratch.file("int8"), calibration)
        found["onnxruntime-int8"] = scratch.open("onnxruntime", "int8", threads=threads, gated=False)
        precisions.append("int8")
    for precision in precisions:
        try:
            found[f"openvino-{precision}"] = scratch.open("openvino", precision, threads=threads, gated=False)
        except RuntimeUnavailable as exc:
            print(f"(openvino {precision} left out: {exc})", file=sys.stderr)
    return found


def main(args: argparse.Namespace) -> int:
    threads = args.threads or cpu.cores()
    src = _source(args)
    classifier = src.classifier(args.crops)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        onnx_graph.write(classifier, folder / FILES["f32"], len(src.classes), {})
        timed = runtimes_to_time(args, classifier, folder, threads)
        for n in [int(b) for b in args.batch_sizes.split(",")]:
            batch = np.random.default_rng(n).integers(0, 256, (n, 3, imaging.SIZE, imaging.SIZE), dtype=np.uint8)
            results = {name: measure(run, batch, args.seconds, args.warmup) for name, run in timed.items()}
            base = results["onnxruntime-f32"]["images_per_s"]
            for name, r in results.items():
                rows.append({"runtime": name, "batch": n, **r, "ratio_vs_ort_fp32": r["images_per_s"] / base})
    print(f"{src.origin}, {args.crops}-crop, {threads} threads, torch {torch.__version__}")
    print(f"CPU: {cpu.line()}")
    print(f"{'runtime':<20}{'batch':>6}{'images/s':>10}{'p50 ms':>9}{'vs ORT fp32':>13}")
    for r in rows:
        print(f"{r['runtime']:<20}{r['batch']:>6}{r['images_per_s']:>10.2f}{r['latency_ms_p50']:>9.1f}{r['ratio_vs_ort_fp32']:>12.2f}x")
    if args.json:
        meta = {"source": src.origin, "crops": args.crops, "threads": threads, "cpu": cpu.describe(), "torch": torch.__version__}
        files.atomic_write(args.json, json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
