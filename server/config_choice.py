"""Which of alexnet's configs to serve, and whether the served repository holds what it needs.

The configs are the served repository's (``runtime.served_configs``: the template's copies, and
alexnet-tune's ``tuned`` where it wrote one); ``auto`` picks by what the Triton found can run
(its backends), this host's GPUs and what the latest exported version holds, then prefers the
tuned config where it was measured on this kind of machine, for that config and version (else
it warns and serves the default).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alexnet_server.contract import MODEL, cpu, gpu, layout, machine
from alexnet_server.runtime import TUNED, RecordError, ServedConfig, Version, served_configs, tuned_record
from alexnet_server.server.triton import ServeError

CONFIGS = served_configs()  # alexnet's variants, as the template's pbtxt files describe them


@dataclass(frozen=True)
class Choice:
    config: ServedConfig
    why: str
    warning: str | None = None  # said at start: a tuned config not used, and why


def configs_of(repository: Path) -> dict[str, ServedConfig]:
    """The configs a served repository holds (the template's where it has none yet)."""
    found = served_configs(repository) if (Path(repository) / MODEL).is_dir() else {}
    return found or CONFIGS


def tuned_applies(repository: Path, default: str) -> tuple[bool, str]:
    """Whether alexnet-tune's config is for this machine, this default config and the latest version; (ok, why)."""
    record = tuned_record(repository)
    if record is None:
        return False, f"{repository / MODEL / 'configs'} holds tuned.pbtxt without alexnet-tune's record"
    ok, why = machine.same(record.get("machine"), machine.describe())
    if not ok:
        return False, f"it was measured on {why}"
    if record.get("tuned_from") != default:
        return False, f"it was tuned from the {record.get('tuned_from')} config, and this machine's default is {default}"
    latest = Version.latest(repository)
    if latest is None or record.get("version") != int(latest.folder.name):
        return False, f"it was tuned on version {record.get('version')}; the latest is {latest.folder.name if latest else 'none'} (run alexnet-tune again)"
    return True, f"measured here on {record.get('when', '?')}: {record.get('tuned', {}).get('score', '?')} img/s against the default's {record.get('default', {}).get('score', '?')} within p99 {record.get('p99_budget_ms')} ms"


def choose_config(choice: str, repository: Path, backends: set[str], gpus: list[dict], tensorrt_version: str | None) -> Choice:
    """The config to serve -- by what the Triton found can run (its backends), this host's GPUs,
    what the latest version holds, and alexnet-tune's config where it applies.  An explicit
    choice the repository lacks or the Triton cannot run is refused."""
    configs = configs_of(repository)
    if choice != "auto":
        if choice not in configs:
            raise ServeError(f"--config {choice}: {repository} has no such config of {MODEL} (it has {', '.join(sorted(configs))})")
        needed = configs[choice].backend
        if needed not in backends:
            raise ServeError(f"--config {choice} needs Triton's {needed} backend; this Triton has only {', '.join(sorted(backends)) or 'none'} "
                             f"(the nvidia-pytriton wheel ships only python: use --config cpu or pytorch, or the NGC container)")  # fmt: skip
        if configs[choice].precision == "bf16" and configs[choice].runtime == "openvino" and not cpu.has_native_bf16():
            raise ServeError(f"--config {choice} needs a CPU with AMX or AVX512-BF16; this one has neither (use --config cpu)")
        return Choice(configs[choice], "asked for")
    default, why = _default(repository, backends, gpus, tensorrt_version)
    if TUNED not in configs:
        return Choice(configs[default], why)
    ok, tuned_why = tuned_applies(repository, default)
    if ok:
        return Choice(configs[TUNED], f"alexnet-tune's config, {tuned_why} (the default would be {default}: {why})")
    return Choice(configs[default], why, f"the tuned config is not used: {tuned_why}; serving the default, {default}")


def _default(repository: Path, backends: set[str], gpus: list[dict], tensorrt_version: str | None) -> tuple[str, str]:
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


def check_repository(repository: Path, config: ServedConfig) -> None:
    """Refuse to start, naming the command that fixes it, when something the models need is missing."""
    flags = config.export_flags()
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
    missing = config.missing(version)
    if not (repository / MODEL / layout.LABELS).is_file():
        missing.append(f"../{layout.LABELS}")
    if missing:
        raise ServeError(f"{version.folder} lacks {', '.join(missing)} for the {config.name} config: {fix}")
