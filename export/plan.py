"""The TensorRT plan of an exported version: built, checked against ONNX Runtime, recorded.

``build_checked`` is export's step when it writes a version with ``--tensorrt``;
``refresh`` is ``--plan-only``: the GPU host's start, keeping a plan that matches the host.
The engine itself is ``export.tensorrt_engine``'s (the TensorRT Python API).
"""

from __future__ import annotations

from pathlib import Path

from alexnet_server.contract import files, gpu, layout
from alexnet_server.export import check, repository, tensorrt_engine
from alexnet_server.export.check import CheckFailed
from alexnet_server.export.repository import RepositoryError
from alexnet_server.runtime import FILES, Version


def build_checked(onnx_path: Path, plan: Path, max_batch: int, fp16: bool, cache_folder: Path, photos: list[Path]) -> dict:
    """Build the engine (profile batch 1..``max_batch``; from an FP16 copy of ``onnx_path`` with
    ``fp16``, made beside ``plan`` and not kept), check it against ONNX Runtime's FP32 on the
    photographs; raise CheckFailed on a mismatch.  Returns export.json's ``tensorrt`` section."""
    graph = tensorrt_engine.fp16_graph(onnx_path, plan.with_name("model.fp16.onnx")) if fp16 else onnx_path
    try:
        built = tensorrt_engine.build(graph, plan, max_batch, cache_folder)
    finally:
        if fp16:
            graph.unlink(missing_ok=True)
    cases = [(n, b[:max_batch]) for n, b in check.input_cases(photos)]
    reference = Version(onnx_path.parent).open("onnxruntime", "f32", gated=False)
    report = check.compare(reference, tensorrt_engine.runner(plan), cases)
    limit = tensorrt_engine.tolerance(fp16)
    print(f"TensorRT vs ONNX Runtime: {report.line()}")
    if report.top1_agreement < tensorrt_engine.MIN_TOP1_AGREEMENT or report.max_abs_diff > limit:
        raise CheckFailed(f"TensorRT engine disagrees with ONNX Runtime: {report.line()} (allowed {limit:g}, >= 99% top-1)")
    return {**built, "fp16": fp16, "int8": False, "max_batch": max_batch, "check": report.__dict__}


def refresh(repo: Path, number: int | None, max_batch: int, fp16: bool, force: bool, photos: list[Path]) -> int:
    """alexnet-export --plan-only, the container's start: an engine for this GPU beside the ONNX
    file of version ``number`` (default: the latest), exported elsewhere.

    Built when the version has no plan, or when its plan was built for another GPU, another
    TensorRT or other settings (its export.json record does not match); kept otherwise.  The
    record is updated through ``runtime.Version``, the plan replaced atomically."""
    import tensorrt

    existing = layout.versions(repo)
    number = number if number is not None else (existing[-1] if existing else None)
    version = Version(repo / layout.MODEL / str(number))
    if number is None or not version.has("f32"):
        raise RepositoryError(f"no model.onnx in {version.folder if number else repo / layout.MODEL}: run alexnet-export CHECKPOINT first")
    plan = version.file("plan")
    if plan.is_file() and not force:
        record = version.record.tensorrt or {}
        ok, why = gpu.plan_matches(record, gpu.visible_gpus(), tensorrt.__version__)
        if ok and record.get("max_batch") == max_batch and record.get("fp16") == fp16:
            print(f"{plan} is up to date ({record['gpu']}, TensorRT {record['tensorrt_version']})")
            return 0
        print(f"rebuilding {plan}: {why or 'built with other settings'}")
    version.record  # an old or foreign export.json is refused before the build, not after
    with repository.staging(repo) as stage:
        built = build_checked(version.file("f32"), stage / FILES["plan"], max_batch, fp16, repo, photos)
        files.atomic_write(plan, (stage / FILES["plan"]).read_bytes())
        version.update(tensorrt=built)
    labels = (repo / layout.MODEL / layout.LABELS).read_text(encoding="utf-8").splitlines()
    repository.sync_template(repo, len(labels))  # the TensorRT config's max_batch_size follows the new profile
    print(f"wrote {plan} ({built['gpu']}, TensorRT {built['tensorrt_version']})")
    return 0
