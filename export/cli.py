"""alexnet-export: a checkpoint (or torchvision's weights) -> the served Triton model repository.

    alexnet-export runs/demo/checkpoint.pt                       # -> served/alexnet/<next version>/
    alexnet-export runs/demo/checkpoint.pt --int8 --calibration fashion-mnist --formats onnx,torchscript
    alexnet-export --torchvision-weights alexnet-owt-7be5be79.pth --repository /srv/models
    alexnet-export runs/demo/checkpoint.pt --tensorrt --fp16 --max-batch 64 --version 1 --force

Exit codes: 0 written; 1 a self-check or an accuracy gate failed (nothing written); 2 bad
input or usage; 3 TensorRT asked for but unavailable here (nothing written).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

import imaging
from contract import cpu, files, gpu, layout, runtimes
from export import check, quantize, repository, tensorrt_engine
from export.check import CheckFailed
from export.repository import RepositoryError

# What exporting a checkpoint needs (PyTorch, the network, the checkpoint reader) is imported
# only then: --plan-only, the GPU container's start, runs without PyTorch.

EXIT_CHECK, EXIT_USAGE, EXIT_NO_TENSORRT = 1, 2, 3
GATE_PHOTO_VIEWS = 16  # shifted and mirrored views of the sample photographs, always in the gate set


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexnet-export",
        description="Export AlexNet as the 10-crop classifier (IMAGE uint8 [N,3,256,256] -> PROBS [N,C]) into the served "
        "Triton model repository: ONNX (checked against PyTorch), its CPU precisions gated against fp32, optionally "
        "INT8, TorchScript and a TensorRT engine.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        add_help=add_help,
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("checkpoint", nargs="?", type=Path, help="a checkpoint written by alexnet-train")
    src.add_argument("--torchvision-weights", type=Path, metavar="FILE.pth", help="torchvision's released AlexNet state_dict (ImageNet, 1000 classes)")
    src.add_argument("--plan-only", action="store_true", help="build model.plan beside the model.onnx already in --version (default: the latest); implies --tensorrt")
    parser.add_argument("--repository", type=Path, default=layout.default_repository(),
                        help=f"the served repository to build (${layout.REPOSITORY_ENV} sets the default); the tracked template is never written")  # fmt: skip
    parser.add_argument("--version", type=int, help="model version folder (default: the next one)")
    parser.add_argument("--force", action="store_true", help="replace an existing version / relabel")
    parser.add_argument("--crops", type=int, choices=(1, 10), default=10, help="10: the paper's test-time average [4.1]; 1: centre crop only")
    parser.add_argument("--check-images", type=Path, metavar="DIR", help="more photographs for the self-checks (default: matplotlib's sample photos)")
    g = parser.add_argument_group("accuracy gates and INT8 (held-back images: top-1 agreement of each reduced precision with fp32)")
    g.add_argument("--calibration", default="fashion-mnist", metavar="DIR|fashion-mnist",
                   help="images for INT8 calibration and the held-back gate set (a folder, or Fashion-MNIST: train / test split); "
                        "without --int8, used for the gates when available, else the sample photographs alone")  # fmt: skip
    g.add_argument("--int8", action="store_true", help="quantize: model.int8.onnx beside model.onnx (with --tensorrt: an INT8 engine)")
    g.add_argument("--calibration-images", type=int, default=512, help="images used for INT8 calibration")
    g.add_argument("--calibration-method", choices=("minmax", "entropy", "percentile"), default="minmax")
    g.add_argument("--gate-images", type=int, default=500, help="held-back images for the gates (plus 16 photo views); 0 = the photo views alone")
    g.add_argument("--accept-disagreement", action="store_true",
                   help=f"write even when a reduced precision agrees with fp32 on under {check.MIN_AGREEMENT * 100:.1f}%% (noted in export.json)")  # fmt: skip
    parser.add_argument("--formats", default="onnx", metavar="onnx,torchscript",
                        help="files to write: onnx (model.onnx: the CPU configs, onnxruntime, TensorRT's source) and/or "
                             "torchscript (model.pt: the pytorch config)")  # fmt: skip
    trt = parser.add_argument_group("TensorRT (GPU hosts)")
    trt.add_argument("--tensorrt", action="store_true", help="also build model.plan with the TensorRT Python API")
    trt.add_argument("--fp16", action="store_true", help="allow FP16 kernels in the engine")
    trt.add_argument("--max-batch", type=int, default=64, help="the engine's optimisation profile: batch 1..MAX, tuned for MAX")
    return parser


def _photos(folder: Path | None) -> list[Path]:
    photos = imaging.sample_photographs()
    if folder is not None:
        if not folder.is_dir():
            raise RepositoryError(f"--check-images {folder} is not a folder")
        photos += sorted(p for p in folder.iterdir() if p.is_file() and imaging.sniff(p))
    return photos


def gate_images(args: argparse.Namespace, photos: list[Path]) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray, str]:
    """(calibration or None, held-back images or None, photo views, where they came from); bad
    input fails here, before the repository is touched.  The photo views always join the gates:
    a broken calibration folder (say, all black) cannot then vouch for itself."""
    views = check.photo_batch(photos, GATE_PHOTO_VIEWS)
    if not args.int8 and args.gate_images == 0:
        return None, None, views, f"{GATE_PHOTO_VIEWS} photo views (--gate-images 0)"
    try:
        calibration, held_back = quantize.calibration_images(args.calibration, args.calibration_images, max(1, args.gate_images))
    except quantize.CalibrationError as exc:
        if args.int8:
            raise
        return None, None, views, f"{GATE_PHOTO_VIEWS} photo views ({args.calibration} unavailable: {exc})"
    if args.gate_images == 0:
        held_back = None
    where = f"{0 if held_back is None else len(held_back)} held-back images of {args.calibration} + {GATE_PHOTO_VIEWS} photo views"
    return calibration, held_back, views, where


def cpu_precision_gates(stage: Path, held_back: np.ndarray | None, views: np.ndarray, photos: list[Path], accept: bool, source_of_images: str) -> dict:
    """OpenVINO, the CPU configs' runtime, on the staged files: f32 by parity with ONNX Runtime,
    bf16 (where this CPU has it) and int8 (where quantized) by agreement with fp32.

    The record lands in export.json; ``alexnet-serve --config cpu`` picks only among the
    precisions that passed (or were accepted with --accept-disagreement)."""
    reference = runtimes.onnxruntime(stage / runtimes.FILES["f32"], max_images_per_run=check.IMAGES_PER_RUN)
    record: dict = {"gate_images": source_of_images, "cpu": cpu.describe()}
    try:
        f32 = runtimes.openvino(stage, "f32")
    except runtimes.RuntimeUnavailable as exc:
        return {**record, "skipped": str(exc)}
    report = check.parity("OpenVINO f32 and ONNX Runtime", reference, f32, photos, check.OPENVINO_F32_TOLERANCE)
    print(f"OpenVINO f32 vs ONNX Runtime: {report.line()}")
    record["f32"] = {"check": report.__dict__, "passed": True}
    expected = {"held_back": None if held_back is None else reference(held_back), "photos": reference(views)}
    for precision in ("bf16", "int8"):
        if precision == "int8" and not (stage / runtimes.FILES["int8"]).is_file():
            continue
        if precision == "bf16" and not cpu.has_native_bf16():
            record[precision] = {"skipped": "this CPU has neither AMX nor AVX512-BF16: bf16 not checked, not served from this export"}
            continue
        candidate = runtimes.openvino(stage, precision)
        on_data = None if held_back is None else check.agreement(expected["held_back"], candidate, held_back)
        on_photos = check.agreement(expected["photos"], candidate, views)
        for name, report in (("held-back images", on_data), ("photo views", on_photos)):
            if report is not None:
                print(f"OpenVINO {precision} vs fp32: top-1 agreement {report['top1_agreement']:.2%} on {report['images']} {name}, "
                      f"max |dPROBS| {report['max_abs_diff']:.4f}")  # fmt: skip
        record[precision] = check.gate(f"OpenVINO {precision}", on_data, on_photos, accept)
    # The cpu config serves the fastest of these on the CPU it runs on: time them here, where
    # they were just built; a server on another kind of CPU times them again at start.
    passed = sorted(runtimes.gated_precisions({"cpu_precisions": record}))
    rates = runtimes.time_cpu_precisions(stage, passed)
    record["timings"] = {"cpu": record["cpu"], "max_images_per_run": runtimes.TIMING_IMAGES_PER_RUN, "images_per_s": rates}
    print("OpenVINO on this CPU, images/s (10-crop, in-process): " + ", ".join(f"{p} {r:.2f}" for p, r in sorted(rates.items(), key=lambda x: -x[1])))
    return record


def main(args: argparse.Namespace) -> int:
    if args.max_batch < 1:
        raise RepositoryError(f"--max-batch must be >= 1, got {args.max_batch}")
    if (args.tensorrt or args.plan_only) and (reason := tensorrt_engine.unavailable()):
        print(f"alexnet-export: {reason}; nothing written", file=sys.stderr)
        return EXIT_NO_TENSORRT
    if args.plan_only:
        return plan_only(args)
    return export_checkpoint(args)


def export_checkpoint(args: argparse.Namespace) -> int:
    """The phases of an export, each checked before the next; everything is staged, then committed."""
    from export import source

    formats = _formats(args)
    src = source.from_checkpoint(args.checkpoint) if args.checkpoint else source.from_torchvision_weights(args.torchvision_weights)
    photos = _photos(args.check_images)
    classifier = src.classifier(args.crops)
    calibration, held_back, views, held_back_source = gate_images(args, photos) if "onnx" in formats else (None, None, None, "")
    repo = repository.prepare(args.repository)
    version = repository.choose_version(repo, args.version, args.force)
    repository.check_labels(repo, src.classes, version, args.force)

    started = time.perf_counter()
    with repository.staging(repo) as stage:
        manifest = {"arch": src.arch, "crops": args.crops, "classes": len(src.classes), "source": src.origin,
                    "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
        if "onnx" in formats:
            manifest.update(write_onnx(args, classifier, stage, manifest, photos, calibration))
            manifest["cpu_precisions"] = cpu_precision_gates(stage, held_back, views, photos, args.accept_disagreement, held_back_source)
            accepted = [p for p in ("bf16", "int8") if manifest["cpu_precisions"].get(p, {}).get("accepted_below_threshold")]
            if accepted:
                manifest["note"] = f"{', '.join(accepted)} written with --accept-disagreement below the {check.MIN_AGREEMENT:.1%} gate"
        if "torchscript" in formats:
            manifest["torchscript"] = write_torchscript(classifier, stage, photos)
        if args.tensorrt:
            manifest["tensorrt"] = _build_plan(args, stage / runtimes.FILES["f32"], stage / runtimes.FILES["plan"], repo, photos,
                                               calibration if args.int8 else None)  # fmt: skip
        repository.write_version_files(stage, manifest)
        target = repository.commit(repo, stage, version, src.classes)
    print(f"wrote {target} ({', '.join(sorted(p.name for p in target.iterdir()))}) from {src.origin}, "
          f"{len(src.classes)} classes, {args.crops}-crop, in {time.perf_counter() - started:.1f} s")  # fmt: skip
    return 0


def _formats(args: argparse.Namespace) -> set[str]:
    formats = {f.strip() for f in args.formats.split(",") if f.strip()}
    unknown = formats - {"onnx", "torchscript"}
    if unknown or not formats:
        raise RepositoryError(f"--formats takes onnx and/or torchscript, got {args.formats!r}")
    if "onnx" not in formats and (args.int8 or args.tensorrt):
        raise RepositoryError("--int8 and --tensorrt are built from the ONNX file: add onnx to --formats")
    return formats


def write_onnx(args: argparse.Namespace, classifier, stage: Path, metadata: dict, photos: list[Path], calibration) -> dict:
    """model.onnx checked against PyTorch; with --int8, model.int8.onnx beside it."""
    from export import onnx_graph

    onnx_path = stage / runtimes.FILES["f32"]
    onnx_graph.write(classifier, onnx_path, metadata["classes"], {k: metadata[k] for k in ("arch", "crops", "classes", "source")})
    report = check.check_onnx(classifier, onnx_path, photos)
    print(f"ONNX Runtime vs PyTorch: {report.line()}")
    record = {"onnx": {"opset": onnx_graph.OPSET, "check": report.__dict__}}
    if args.int8:
        rewrites = quantize.quantize(onnx_path, stage / runtimes.FILES["int8"], calibration, args.calibration_method)
        record["int8"] = {"calibration": args.calibration, "calibration_images": len(calibration),
                          "method": args.calibration_method, "rewrites": rewrites}  # fmt: skip
    return record


def write_torchscript(classifier, stage: Path, photos: list[Path]) -> dict:
    """model.pt (the pytorch config's file) checked against PyTorch eager on the CPU."""
    from export import torchscript

    torchscript.write(classifier, stage / runtimes.FILES["torchscript"])
    traced = runtimes.pytorch(stage / runtimes.FILES["torchscript"], "cpu")
    report = check.parity("TorchScript and PyTorch", check.torch_runner(classifier), traced, photos, check.ONNX_TOLERANCE)
    print(f"TorchScript vs PyTorch: {report.line()}")
    return {"check": report.__dict__}


def _build_plan(args: argparse.Namespace, onnx_path: Path, plan: Path, repo: Path, photos: list[Path], calibration=None) -> dict:
    """Build the engine, check it against ONNX Runtime; raise CheckFailed on a mismatch."""
    built = tensorrt_engine.build(onnx_path, plan, args.max_batch, args.fp16, repo, calibration)
    cases = [(n, b[: args.max_batch]) for n, b in check.input_cases(photos)]
    report = check.compare(runtimes.onnxruntime(onnx_path), tensorrt_engine.runner(plan), cases)
    limit = tensorrt_engine.tolerance(args.fp16, calibration is not None)
    print(f"TensorRT vs ONNX Runtime: {report.line()}")
    if report.top1_agreement < tensorrt_engine.MIN_TOP1_AGREEMENT or report.max_abs_diff > limit:
        raise CheckFailed(f"TensorRT engine disagrees with ONNX Runtime: {report.line()} (allowed {limit:g}, >= 99% top-1)")
    return {**built, "fp16": args.fp16, "int8": calibration is not None, "max_batch": args.max_batch, "check": report.__dict__}


def plan_only(args: argparse.Namespace) -> int:
    """The container's start: an engine for this GPU beside an ONNX file exported elsewhere.

    Built when the version has no plan, or when its plan was built for another GPU or another
    TensorRT (its export.json record does not match this host); kept otherwise."""
    import tensorrt

    repo = Path(args.repository)
    existing = layout.versions(repo)
    version = args.version if args.version is not None else (existing[-1] if existing else None)
    folder = repo / layout.MODEL / str(version)
    if version is None or not (folder / runtimes.FILES["f32"]).is_file():
        raise RepositoryError(f"no model.onnx in {folder if version else repo / layout.MODEL}: run alexnet-export CHECKPOINT first")
    manifest_path = folder / layout.MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if (folder / runtimes.FILES["plan"]).is_file() and not args.force:
        record = manifest.get("tensorrt") or {}
        ok, why = gpu.plan_matches(record, gpu.visible_gpus(), tensorrt.__version__)
        if ok and record.get("max_batch") == args.max_batch and record.get("fp16") == args.fp16:
            print(f"{folder / runtimes.FILES['plan']} is up to date ({record['gpu']}, TensorRT {record['tensorrt_version']})")
            return 0
        print(f"rebuilding {folder / runtimes.FILES['plan']}: {why or 'built with other settings'}")
    with repository.staging(repo) as stage:
        manifest["tensorrt"] = _build_plan(args, folder / runtimes.FILES["f32"], stage / runtimes.FILES["plan"], repo, _photos(args.check_images))
        files.atomic_write(folder / runtimes.FILES["plan"], (stage / runtimes.FILES["plan"]).read_bytes())
        files.atomic_write(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    labels = (repo / layout.MODEL / layout.LABELS).read_text(encoding="utf-8").splitlines()
    repository.sync_template(repo, len(labels))  # the TensorRT config's max_batch_size follows the new profile
    print(f"wrote {folder / runtimes.FILES['plan']} ({manifest['tensorrt']['gpu']}, TensorRT {manifest['tensorrt']['tensorrt_version']})")
    return 0


def cli(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return main(args)
    except (RepositoryError, quantize.CalibrationError, ValueError) as exc:  # CheckpointError is a ValueError
        print(f"alexnet-export: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CheckFailed as exc:
        print(f"alexnet-export: check failed, nothing written: {exc}", file=sys.stderr)
        return EXIT_CHECK
    except tensorrt_engine.TensorRTUnavailable as exc:
        print(f"alexnet-export: {exc}; nothing written", file=sys.stderr)
        return EXIT_NO_TENSORRT
    except OSError as exc:
        print(f"alexnet-export: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(cli())
