"""A served config of ``alexnet``: every parameter it declares, read once, and the runtime it opens.

A config is Triton's model configuration: ``configs/<name>.pbtxt`` (or ``config.pbtxt``) in a
repository, or what a running Triton answers at ``GET /v2/models/alexnet/config``; both are the
same dict (``runtime.model_config``).  ``ServedConfig`` is its one reader: the served python
model, ``served_configs()`` (the server's choice of config), ``alexnet-bench``'s in-process
line, the Ray engine's actors and export's timing all take the runtime, precision, threads,
streams and images per run from it, and open the version through ``ServedConfig.open``, so a
change to a config changes all of them alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alexnet_server.contract import MODEL, cpu, layout
from alexnet_server.runtime import model_config
from alexnet_server.runtime.engines import Runtime
from alexnet_server.runtime.version import EXPORT_FLAGS, FILES, Version, file_for

# Triton's platform names and the backends that run them (Triton's model_configuration.md).
_PLATFORM_BACKENDS = {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime"}
# The parameters the python model (model_repository/alexnet/model.py) reads; any other is a typo.
PARAMETERS = ("runtime", "precision", "threads", "streams", "max_images_per_run")
# alexnet-tune's config in a served repository (configs/tuned.pbtxt beside preprocess's), and its
# record: the machine it was measured on, the config it was tuned from, the version, the figures.
TUNED = "tuned"
TUNED_RECORD = "tuned.json"


@dataclass(frozen=True)
class ServedConfig:
    """One of alexnet's Triton configs: ``name`` (``cpu``, ``pytorch``, ...; a default
    ``config.pbtxt`` is named after its backend), and what it declares."""

    name: str
    model_config_name: str | None  # Triton's --model-config-name; None: the default config.pbtxt
    backend: str  # python | onnxruntime | tensorrt
    runtime: str  # the python model's "runtime" parameter (auto: the CPU runtime measured fastest), else the backend
    precision: str = "auto"  # auto | f32 | bf16 | int8 (CPU); auto | f32 | bf16 | fp16 (pytorch)
    threads: int = 0  # inference threads per instance; 0: the cores split evenly among the instances
    streams: int = 1  # OpenVINO streams: a run's images split across this many parallel requests
    max_images_per_run: int = 0  # images per runtime call; 0: the whole dynamic batch
    instances: int = 1  # instance_group counts, summed: each instance is its own stub process
    max_batch_size: int = 0

    @classmethod
    def from_model_config(cls, config: dict[str, Any], name: str | None = None, model_config_name: str | None = None) -> "ServedConfig":
        """From Triton's JSON model configuration.  Raises model_config.ConfigError for a parameter
        the model does not read or a number that is not one."""
        params = model_config.parameters(config)
        if unknown := sorted(set(params) - set(PARAMETERS)):
            raise model_config.ConfigError(f"config {name or config.get('name', '?')}: unknown parameter(s) {', '.join(unknown)} (known: {', '.join(PARAMETERS)})")
        backend = config.get("backend") or _PLATFORM_BACKENDS.get(config.get("platform", ""), config.get("platform", ""))
        try:
            numbers = {key: int(params.get(key, default)) for key, default in (("threads", "0"), ("streams", "1"), ("max_images_per_run", "0"))}
        except ValueError as exc:
            raise model_config.ConfigError(f"config {name or config.get('name', '?')}: {exc}") from None
        instances = sum(int(group.get("count", 1)) for group in config.get("instance_group", [])) or 1
        return cls(name or backend, model_config_name, backend, params.get("runtime", backend), params.get("precision", "auto"),
                   instances=instances, max_batch_size=int(config.get("max_batch_size", 0)), **numbers)  # fmt: skip

    @classmethod
    def read(cls, path: str | os.PathLike) -> "ServedConfig":
        """From a pbtxt: ``configs/<name>.pbtxt`` is config ``name``, ``config.pbtxt`` is named after its backend."""
        path = Path(path)
        named = path.parent.name == "configs"
        return cls.from_model_config(model_config.read(path), path.stem if named else None, path.stem if named else None)

    def threads_here(self, cores: int | None = None) -> int:
        """The threads one instance runs with: ``threads``, or this machine's cores split evenly among the instances."""
        return self.threads or max(1, (cores or cpu.cores()) // self.instances)

    def open(self, version: Version, *, device: str = "auto", cores: int | None = None) -> Runtime:
        """The runtime this config serves ``version`` with, as the served model opens it: its
        runtime, precision (``auto``: the fastest measured here among the gated, timed the way
        this config runs), threads (``threads_here(cores)``: ``cores`` is the share of the
        machine the caller has, a Ray actor's, say), streams and images per run.  Raises what
        ``Version.open`` raises."""
        threads = self.threads_here(cores)
        return version.open(self.runtime, self.precision, threads=threads, streams=self.streams, max_images_per_run=self.max_images_per_run,
                            device=device, measure=lambda candidates: self.time_candidates(version, candidates, cores))  # fmt: skip

    def time_candidates(self, version: Version, candidates: list[str], cores: int | None = None) -> dict[str, float]:
        """{``runtime:precision``: images/s} here, each candidate run as this config runs it."""
        return version.time_cpu_candidates(candidates, self.threads_here(cores), self.streams, self.timing_images())

    def timing_images(self) -> int:
        """Images per timed run: the runs this config makes (its images per run, else a full batch)."""
        return self.max_images_per_run or self.max_batch_size or 1

    def needs(self) -> list[str]:
        """The file kinds (keys of ``FILES``) a version must hold for this config."""
        kinds = [file_for(self.runtime, self.precision)]
        return kinds + (["code"] if self.backend == "python" else [])

    def export_flags(self) -> str:
        """What alexnet-export must be told to write this config's files ("" when it always does)."""
        return " ".join(EXPORT_FLAGS[k] for k in self.needs() if k in EXPORT_FLAGS)

    def missing(self, version: Version) -> list[str]:
        """The files this config needs that ``version`` lacks."""
        return [FILES[kind] for kind in self.needs() if not version.has(kind)]


def served_configs(repository: str | os.PathLike = layout.TEMPLATE, model: str = MODEL) -> dict[str, ServedConfig]:
    """alexnet's config variants in ``repository`` (the template by default; a served repository
    holds its copies, as edited there), read with Triton's own schema: the one description of each."""
    folder = Path(repository) / model
    found = {}
    for path in [folder / "config.pbtxt", *sorted((folder / "configs").glob("*.pbtxt"))]:
        if path.is_file():
            config = ServedConfig.read(path)
            found[config.name] = config
    return found


def tuned_record(repository: str | os.PathLike) -> dict | None:
    """alexnet-tune's record beside the tuned config (None where there is none or it cannot be read)."""
    import json

    path = Path(repository) / MODEL / "configs" / TUNED_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
