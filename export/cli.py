"""alexnet-export: a checkpoint (or torchvision's weights) -> the 10-crop ONNX classifier in the Triton repository.

    alexnet-export runs/demo/checkpoint.pt
    alexnet-export --torchvision-weights alexnet-owt-7be5be79.pth --repository /srv/models
    alexnet-export runs/demo/checkpoint.pt --tensorrt --fp16 --max-batch 64 --version 1 --force

Exit codes: 0 written; 1 a self-check failed (nothing written); 2 bad input or usage;
3 TensorRT asked for but unavailable here (nothing written).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from export import check, onnx_graph, quantize, repository, source, tensorrt_engine
from export.check import CheckFailed
from export.repository import RepositoryError
from train.checkpoint import CheckpointError

EXIT_CHECK, EXIT_USAGE, EXIT_NO_TENSORRT = 1, 2, 3


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexnet-export",
        description="Export AlexNet as the 10-crop ONNX classifier (IMAGE uint8 [N,3,256,256] -> PROBS [N,C]) "
        "into a Triton model repository, check it against PyTorch, optionally build a TensorRT engine.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        add_help=add_help,
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("checkpoint", nargs="?", type=Path, help="a checkpoint written by alexnet-train")
    src.add_argument("--torchvision-weights", type=Path, metavar="FILE.pth", help="torchvision's released AlexNet state_dict (ImageNet, 1000 classes)")
    src.add_argument("--plan-only", action="store_true", help="build model.plan beside the model.onnx already in --version (default: the latest); implies --tensorrt")
    parser.add_argument("--repository", type=Path, default=repository.PROJECT_REPOSITORY, help="the Triton model repository to write into")
    parser.add_argument("--version", type=int, help="model version folder (default: the next one)")
    parser.add_argument("--force", action="store_true", help="replace an existing version / relabel")
    parser.add_argument("--crops", type=int, choices=(1, 10), default=10, help="10: the paper's test-time average [4.1]; 1: centre crop only")
    parser.add_argument("--check-images", type=Path, metavar="DIR", help="more photographs for the self-check (default: matplotlib's sample photos)")
    q = parser.add_argument_group("INT8 (static post-training quantization; also writes model.int8.onnx)")
    q.add_argument("--int8", action="store_true", help="quantize: model.int8.onnx beside model.onnx (with --tensorrt: an INT8 engine)")
    q.add_argument("--calibration", default="fashion-mnist", metavar="DIR|fashion-mnist", help="calibration images (a folder, or Fashion-MNIST's training set)")
    q.add_argument("--calibration-images", type=int, default=512, help="images used for calibration")
    q.add_argument("--calibration-method", choices=("minmax", "entropy", "percentile"), default="minmax")
    q.add_argument("--int8-check-images", type=int, default=200, help="held-back images for the agreement check (Fashion-MNIST: test set)")
    q.add_argument("--accept-int8-disagreement", action="store_true", help="write the INT8 model even below 98%% top-1 agreement (noted in export.json)")
    trt = parser.add_argument_group("TensorRT (GPU hosts)")
    trt.add_argument("--tensorrt", action="store_true", help="also build model.plan with the TensorRT Python API")
    trt.add_argument("--fp16", action="store_true", help="allow FP16 kernels in the engine")
    trt.add_argument("--max-batch", type=int, default=64, help="the engine's optimisation profile: batch 1..MAX, tuned for MAX")
    return parser


def _photos(folder: Path | None) -> list[Path]:
    photos = check.sample_photographs()
    if folder is not None:
        if not folder.is_dir():
            raise RepositoryError(f"--check-images {folder} is not a folder")
        photos += sorted(p for p in folder.iterdir() if p.is_file() and check.imaging.sniff(p))
    return photos


def main(args: argparse.Namespace) -> int:
    if args.max_batch < 1:
        raise RepositoryError(f"--max-batch must be >= 1, got {args.max_batch}")
    if (args.tensorrt or args.plan_only) and (reason := tensorrt_engine.unavailable()):
        print(f"alexnet-export: {reason}; nothing written", file=sys.stderr)
        return EXIT_NO_TENSORRT
    if args.plan_only:
        return plan_only(args)
    src = source.from_checkpoint(args.checkpoint) if args.checkpoint else source.from_torchvision_weights(args.torchvision_weights)
    photos = _photos(args.check_images)
    classifier = src.classifier(args.crops)
    if args.int8:  # read the calibration set first: bad input fails before the repository is touched
        calibration, held_back = quantize.calibration_images(args.calibration, args.calibration_images, args.int8_check_images)
        # Real photographs always join the held-back set: a broken calibration folder
        # (say, all black) cannot then vouch for itself.
        held_back = np.concatenate([held_back, check.photo_batch(photos, 8)])
    repo = repository.prepare(args.repository)
    version = repository.choose_version(repo, args.version, args.force)
    repository.check_labels(repo, src.classes, version, args.force)

    started = time.perf_counter()
    with repository.staging(repo) as stage:
        onnx_path = stage / "model.onnx"
        metadata = {"arch": src.arch, "crops": args.crops, "classes": len(src.classes), "source": src.origin}
        onnx_graph.write(classifier, onnx_path, len(src.classes), metadata)
        report = check.check_onnx(classifier, onnx_path, photos)
        print(f"ONNX Runtime vs PyTorch: {report.line()}")
        manifest = {
            **metadata,
            "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "onnx": {"opset": onnx_graph.OPSET, "check": report.__dict__},
        }
        if args.int8:
            int8_path = stage / "model.int8.onnx"
            rewrites = quantize.quantize(onnx_path, int8_path, calibration, args.calibration_method)
            agreement = quantize.agreement(onnx_path, int8_path, held_back)
            print(f"INT8 vs fp32 (ONNX Runtime): top-1 agreement {agreement['top1_agreement']:.2%} on {agreement['images']} "
                  f"held-back images, max |dPROBS| {agreement['max_abs_diff']:.3f}")  # fmt: skip
            quantize.check(agreement, args.accept_int8_disagreement)
            manifest["int8"] = {
                "calibration": args.calibration, "calibration_images": len(calibration), "method": args.calibration_method,
                "rewrites": rewrites, "check": agreement,
                "accepted_below_threshold": agreement["top1_agreement"] < quantize.MIN_AGREEMENT,
            }  # fmt: skip
            if manifest["int8"]["accepted_below_threshold"]:
                manifest["note"] = "model.int8.onnx was written with --accept-int8-disagreement below the 98% agreement check"
        if args.tensorrt:
            manifest["tensorrt"] = _build_plan(args, onnx_path, stage / "model.plan", repo, photos,
                                               calibration if args.int8 else None)  # fmt: skip
        repository.write_manifest(stage, manifest)
        target = repository.commit(repo, stage, version, src.classes)
    print(f"wrote {target} ({', '.join(sorted(p.name for p in target.iterdir()))}) from {src.origin}, "
          f"{len(src.classes)} classes, {args.crops}-crop, in {time.perf_counter() - started:.1f} s")  # fmt: skip
    return 0


def _build_plan(args: argparse.Namespace, onnx_path: Path, plan: Path, repo: Path, photos: list[Path], calibration=None) -> dict:
    """Build the engine, check it against ONNX Runtime; raise CheckFailed on a mismatch."""
    tensorrt_engine.build(onnx_path, plan, args.max_batch, args.fp16, repo / ".tensorrt-timing.cache", calibration)
    cases = [(n, b[: args.max_batch]) for n, b in check.input_cases(photos)]
    report = check.compare(check.onnxruntime_runner(onnx_path), tensorrt_engine.runner(plan), cases)
    limit = tensorrt_engine.INT8_TOLERANCE if calibration is not None else tensorrt_engine.FP16_TOLERANCE if args.fp16 else tensorrt_engine.FP32_TOLERANCE
    print(f"TensorRT vs ONNX Runtime: {report.line()}")
    if report.top1_agreement < tensorrt_engine.MIN_TOP1_AGREEMENT or report.max_abs_diff > limit:
        raise CheckFailed(f"TensorRT engine disagrees with ONNX Runtime: {report.line()} (allowed {limit:g}, >= 99% top-1)")
    return {"fp16": args.fp16, "max_batch": args.max_batch, "check": report.__dict__}


def plan_only(args: argparse.Namespace) -> int:
    """The container's start: an engine for this GPU beside an ONNX file exported elsewhere."""
    repo = Path(args.repository)
    existing = repository.versions(repo)
    version = args.version if args.version is not None else (existing[-1] if existing else None)
    folder = repo / repository.MODEL / str(version)
    if version is None or not (folder / "model.onnx").is_file():
        raise RepositoryError(f"no model.onnx in {folder if version else repo / repository.MODEL}: run alexnet-export CHECKPOINT first")
    if (folder / "model.plan").is_file() and not args.force:
        raise RepositoryError(f"{folder / 'model.plan'} already exists (pass --force to rebuild it)")
    with repository.staging(repo) as stage:
        info = _build_plan(args, folder / "model.onnx", stage / "model.plan", repo, _photos(args.check_images))
        manifest_path = folder / "export.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        manifest["tensorrt"] = info
        (stage / "export.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.replace(stage / "model.plan", folder / "model.plan")
        os.replace(stage / "export.json", manifest_path)
    print(f"wrote {folder / 'model.plan'}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return main(args)
    except (CheckpointError, RepositoryError, quantize.CalibrationError) as exc:
        print(f"alexnet-export: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CheckFailed as exc:
        print(f"alexnet-export: check failed, nothing written: {exc}", file=sys.stderr)
        return EXIT_CHECK
    except OSError as exc:
        print(f"alexnet-export: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(cli())
