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
import sys
import time
from pathlib import Path

import numpy as np

from alexnet_server import imaging
from alexnet_server.contract import layout
from alexnet_server.contract.cli import HelpFormatter
from alexnet_server.imaging.datasets import DataError
from alexnet_server.runtime import ExportRecord, RecordError, Version
from alexnet_server.runtime.model_config import ConfigError
from alexnet_server.export import check, plan, quantize, repository, tensorrt_engine
from alexnet_server.export.check import CheckFailed
from alexnet_server.export.repository import RepositoryError

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
        formatter_class=HelpFormatter,
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
    g.add_argument("--int8", action="store_true", help="quantize: model.int8.onnx beside model.onnx, for the CPU runtimes (TensorRT engines are FP32 or --fp16)")
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
    trt.add_argument("--fp16", action="store_true", help="an FP16 engine, built strongly typed from an FP16 copy of model.onnx")
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


def main(args: argparse.Namespace) -> int:
    if args.max_batch < 1:
        raise RepositoryError(f"--max-batch must be >= 1, got {args.max_batch}")
    if (args.tensorrt or args.plan_only) and (reason := tensorrt_engine.unavailable()):
        print(f"alexnet-export: {reason}; nothing written", file=sys.stderr)
        return EXIT_NO_TENSORRT
    if args.plan_only:
        return plan.refresh(Path(args.repository), args.version, args.max_batch, args.fp16, args.force, _photos(args.check_images))
    return export_checkpoint(args)


def export_checkpoint(args: argparse.Namespace) -> int:
    """The phases of an export, each checked before the next; everything is staged, then committed."""
    from alexnet_server.export import source

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
        record = ExportRecord(arch=src.arch, crops=args.crops, classes=len(src.classes), source=src.origin,
                              exported=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))  # fmt: skip
        staged = Version(stage, record)  # the record is written last, with the files it describes
        if "onnx" in formats:
            record.onnx, record.int8 = write_onnx(args, classifier, staged, record, photos, calibration)
            record.cpu_precisions = check.cpu_precision_gates(staged, held_back, views, photos, args.accept_disagreement, held_back_source)
            accepted = [p for p in ("bf16", "int8") if record.cpu_precisions.get(p, {}).get("accepted_below_threshold")]
            if accepted:
                record.note = f"{', '.join(accepted)} written with --accept-disagreement below the {check.MIN_AGREEMENT:.1%} gate"
        if "torchscript" in formats:
            record.torchscript = write_torchscript(classifier, staged, photos)
        if args.tensorrt:
            record.tensorrt = plan.build_checked(staged.file("f32"), staged.file("plan"), args.max_batch, args.fp16, repo, photos)
        repository.write_version_files(staged)
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


def write_onnx(args: argparse.Namespace, classifier, staged: Version, record: ExportRecord, photos: list[Path], calibration) -> tuple[dict, dict | None]:
    """(the record's onnx and int8 sections): model.onnx checked against PyTorch; with --int8,
    model.int8.onnx beside it."""
    from alexnet_server.export import onnx_graph

    onnx_graph.write(classifier, staged.file("f32"), record.classes, {k: getattr(record, k) for k in ("arch", "crops", "classes", "source")})
    report = check.check_onnx(classifier, staged, photos)
    print(f"ONNX Runtime vs PyTorch: {report.line()}")
    int8 = None
    if args.int8:
        rewrites = quantize.quantize(staged.file("f32"), staged.file("int8"), calibration, args.calibration_method)
        int8 = {"calibration": args.calibration, "calibration_images": len(calibration), "method": args.calibration_method, "rewrites": rewrites}
    return {"opset": onnx_graph.OPSET, "check": report.__dict__}, int8


def write_torchscript(classifier, staged: Version, photos: list[Path]) -> dict:
    """model.pt (the pytorch config's file) checked against PyTorch eager on the CPU."""
    from alexnet_server.export import torchscript

    torchscript.write(classifier, staged.file("torchscript"))
    traced = staged.open("pytorch", "f32", device="cpu")
    report = check.parity("TorchScript and PyTorch", check.torch_runner(classifier), traced, photos, check.ONNX_TOLERANCE)
    print(f"TorchScript vs PyTorch: {report.line()}")
    return {"check": report.__dict__}


def cli(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return main(args)
    except (RepositoryError, quantize.CalibrationError, RecordError, ConfigError, imaging.ImageError, DataError) as exc:
        print(f"alexnet-export: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        # A checkpoint's problems (train.checkpoint.CheckpointError); that module brings torch, which
        # --plan-only does without, so it is named only where it was loaded.  Any other ValueError is a bug.
        checkpoint = sys.modules.get("alexnet_server.train.checkpoint")
        if checkpoint is None or not isinstance(exc, checkpoint.CheckpointError):
            raise
        print(f"alexnet-export: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CheckFailed as exc:
        print(f"alexnet-export: check failed, nothing written: {exc}", file=sys.stderr)
        return EXIT_CHECK
    except tensorrt_engine.TensorRTUnavailable as exc:
        print(f"alexnet-export: {exc}; nothing written", file=sys.stderr)
        return EXIT_NO_TENSORRT
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:  # a path the user named
        print(f"alexnet-export: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(cli())
