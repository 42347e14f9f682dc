"""Which of alexnet's configs to serve, and whether the served repository holds what it needs.

The configs are the template's (``runtime.served_configs``: one description each, read from
the pbtxt files); ``auto`` picks by what the Triton found can run (its backends), this host's
GPUs and what the latest exported version holds.
"""

from __future__ import annotations

from pathlib import Path

from alexnet_server.contract import MODEL, cpu, gpu, layout
from alexnet_server.runtime import RecordError, Version, served_configs
from alexnet_server.server.triton import ServeError

CONFIGS = served_configs()  # alexnet's variants, as the template's pbtxt files describe them


def choose_config(choice: str, repository: Path, backends: set[str], gpus: list[dict], tensorrt_version: str | None) -> tuple[str, str]:
    """(config, why) -- by what the Triton found can run (its backends), this host's GPUs, and
    what the latest version holds.  An explicit choice the Triton cannot run is refused."""
    if choice != "auto":
        needed = CONFIGS[choice].backend
        if needed not in backends:
            raise ServeError(f"--config {choice} needs Triton's {needed} backend; this Triton has only {', '.join(sorted(backends)) or 'none'} "
                             f"(the nvidia-pytriton wheel ships only python: use --config cpu or pytorch, or the NGC container)")  # fmt: skip
        if choice == "cpu-bf16" and not cpu.has_native_bf16():
            raise ServeError("--config cpu-bf16 needs a CPU with AMX or AVX512-BF16; this one has neither (use --config cpu)")
        return choice, "asked for"
    version = Version.latest(repository)
    if version is not None and "tensorrt" in backends and version.has("plan"):
        try:
            ok, why = gpu.plan_matches(version.record.tensorrt or {}, gpus, tensorrt_version)
        except RecordError as exc:
            ok, why = False, str(exc)
        if ok:
            return "tensorrt", f"a TensorRT backend and a plan built for {gpus[0]['name']}"
        skipped = f"not tensorrt: {why}; "
    else:
        skipped = "not tensorrt: " + ("no TensorRT backend in this Triton; " if "tensorrt" not in backends else "no model.plan; ")
    if gpus and version is not None and version.has("torchscript"):
        return "pytorch", skipped + f"a GPU ({gpus[0]['name']}) and model.pt"
    reason = "no GPU visible" if not gpus else "no model.pt (alexnet-export --formats onnx,torchscript)"
    return "cpu", skipped + f"not pytorch: {reason}"


def check_repository(repository: Path, config: str) -> None:
    """Refuse to start, naming the command that fixes it, when something the models need is missing."""
    flags = CONFIGS[config].export_flags()
    fix = f"run `alexnet-export CHECKPOINT --repository {repository}{' ' + flags if flags else ''}`"
    if repository.resolve() == layout.TEMPLATE.resolve():
        raise ServeError(f"{repository} is the tracked template, not a served repository: {fix}")
    if not repository.is_dir():
        raise ServeError(f"model repository {repository} does not exist: {fix}")
    for needed in ("preprocess/config.pbtxt", "preprocess/1/model.py", "classify/config.pbtxt", "classify/1"):
        if not (repository / needed).exists():
            raise ServeError(f"{repository / needed} is missing: the repository is incomplete ({fix} into a new folder)")
    version = Version.latest(repository)
    if version is None:
        raise ServeError(f"no exported model in {repository / MODEL}: {fix}")
    try:
        version.record  # an old or foreign export.json is refused here, not by a model that fails to load
    except RecordError as exc:
        raise ServeError(str(exc)) from None
    missing = CONFIGS[config].missing(version)
    if not (repository / MODEL / layout.LABELS).is_file():
        missing.append(f"../{layout.LABELS}")
    if missing:
        raise ServeError(f"{version.folder} lacks {', '.join(missing)} for the {config} config: {fix}")
