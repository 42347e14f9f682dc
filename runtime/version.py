"""An exported model version: its files, its record (export.json), and how to run it.

A version is a folder ``<repository>/alexnet/<N>/`` that ``alexnet-export`` wrote and Triton
serves (its default version policy serves the latest).  This module is its one owner:

- ``ExportRecord`` is the only reader and writer of ``export.json``: what was exported, from
  what, checked how (export's parity checks and accuracy gates), timed on which CPU, and the
  TensorRT plan's build.  It carries a format number; an old or foreign file is refused with
  one line naming the fix.
- ``Version`` knows the files (``FILES``), the CPU precisions export's gates allowed, and
  ``open``\\s a runnable model for (runtime, precision, threads, ...): the single place that
  maps a request to a file and applies the gates.  The ``alexnet`` Triton model, export's own
  checks, ``python -m alexnet_server.export.evaluate``, ``alexnet-bench --inprocess`` and the GPU check all
  open models here, so a gate, a benchmark and the server never run a file differently.
- ``runtime.served.ServedConfig`` (a served config's parameters) opens versions through
  ``Version.open`` as the server does.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alexnet_server.contract import MODEL, cpu, files, layout
from alexnet_server.runtime import engines, precision
from alexnet_server.runtime.engines import ChoiceError, Runtime, RuntimeUnavailable

FORMAT = 1  # export.json's format; a reader refuses any other
RECORD = "export.json"  # in each version folder
# The files export writes into a version folder, by what they hold.
FILES = {"f32": "model.onnx", "int8": "model.int8.onnx", "torchscript": "model.pt", "plan": "model.plan", "code": "model.py"}
# What alexnet-export must be told to write each file (the others it always writes).
EXPORT_FLAGS = {"int8": "--int8", "torchscript": "--formats onnx,torchscript", "plan": "--tensorrt --fp16"}
RUNTIMES = ("openvino", "onnxruntime", "pytorch")  # the alexnet python model's; Triton's own backends run the rest
CPU_RUNTIMES = ("openvino", "onnxruntime")  # what runtime "auto" chooses among, in this order where they tie


class RecordError(ValueError):
    """export.json is missing, from an older alexnet-export, or not one at all; the message says which and the fix."""


@dataclass
class ExportRecord:
    """export.json, format ``FORMAT``.  The sections are export's own reports, kept as written:

    - ``onnx``: {"opset", "check"}: model.onnx against PyTorch on photographs;
    - ``int8``: {"calibration", "calibration_images", "method", "rewrites"}: model.int8.onnx;
    - ``cpu_precisions``: {"gate_images", "cpu", "f32"|"bf16"|"int8": {"passed" | "accepted_below_threshold"
      | "skipped", ...}, "timings": {"cpu", "max_images_per_run", "images_per_s": {precision: float}}};
    - ``torchscript``: {"check"}: model.pt against PyTorch;
    - ``tensorrt``: {"tensorrt_version", "gpu", "compute_capability", "max_batch", "fp16", "int8", "check", ...}.
    """

    arch: str  # "paper" | "torchvision"
    crops: int  # 10: the paper's test-time average [4.1]; 1: centre crop
    classes: int
    source: str  # the checkpoint or weights file it came from
    exported: str  # ISO 8601, UTC
    onnx: dict | None = None
    int8: dict | None = None
    cpu_precisions: dict | None = None
    torchscript: dict | None = None
    tensorrt: dict | None = None
    note: str | None = None  # e.g. a precision written with --accept-disagreement
    format: int = FORMAT

    @classmethod
    def from_dict(cls, data: Any, where: str = RECORD) -> "ExportRecord":
        if not isinstance(data, dict) or not {"arch", "classes"} <= set(data):
            raise RecordError(f"{where} is not an alexnet-export record")
        if data.get("format") != FORMAT:
            age = "an older alexnet-export (no format number)" if "format" not in data else f"format {data['format']!r}; this reads {FORMAT}"
            raise RecordError(f"{where} was written by {age}: export the checkpoint again (alexnet-export CHECKPOINT)")
        names = {f.name: f for f in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - set(names)):
            raise RecordError(f"{where} has fields this version does not know ({', '.join(unknown)}): not an alexnet-export record")
        kinds = {"str": str, "int": int, "dict | None": (dict, type(None)), "str | None": (str, type(None))}
        for name, value in data.items():
            if not isinstance(value, kinds[str(names[name].type)]) or isinstance(value, bool):
                raise RecordError(f"{where}: {name} is {type(value).__name__}, expected {names[name].type}")
        return cls(**data)

    @classmethod
    def read(cls, folder: str | os.PathLike) -> "ExportRecord":
        """The record in ``folder``; RecordError (one line) if it is missing, unreadable, old or foreign."""
        path = Path(folder) / RECORD
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RecordError(f"{path} is missing: export the checkpoint again (alexnet-export CHECKPOINT)") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecordError(f"{path} cannot be read: {exc}") from None
        return cls.from_dict(data, str(path))

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in dataclasses.asdict(self).items() if v is not None}, indent=2, sort_keys=True) + "\n"

    def write(self, folder: str | os.PathLike) -> Path:
        """Replace ``folder``/export.json with this record, atomically."""
        return files.atomic_write(Path(folder) / RECORD, self.to_json())

    def allowed_precisions(self) -> set[str]:
        """The CPU precisions the version may run in: f32, and bf16 / int8 where export's accuracy
        gate passed them (or --accept-disagreement accepted them)."""
        gates = self.cpu_precisions or {}
        return {"f32"} | {p for p in ("bf16", "int8") if (gates.get(p) or {}).get("passed") or (gates.get(p) or {}).get("accepted_below_threshold")}

    def refusal(self, wanted: str) -> str:
        """Why ``wanted`` is not among the allowed precisions, in a few words."""
        entry = (self.cpu_precisions or {}).get(wanted) or {}
        return entry.get("skipped") or ("its gate failed" if entry else "export did not check it")


def runs_here(runtime: str, wanted: str) -> bool:
    """Whether ``runtime`` runs precision ``wanted`` on this CPU (bf16: OpenVINO, natively only)."""
    return wanted in ("f32", "int8") or (wanted == "bf16" and runtime == "openvino" and cpu.has_native_bf16())


def file_for(runtime: str, wanted: str) -> str:
    """The file kind (a key of ``FILES``) that serves ``runtime`` in precision ``wanted``
    (``auto``: a CPU runtime, chosen at load)."""
    if runtime == "pytorch":
        return "torchscript"
    if runtime in ("openvino", "onnxruntime", "auto"):
        return "int8" if wanted == "int8" else "f32"
    if runtime == "tensorrt":
        return "plan"
    raise ChoiceError(f"unknown runtime {runtime!r} (one of {', '.join(RUNTIMES)})")


@dataclass
class Version:
    """One exported version folder; ``record`` is read from it on first use unless given
    (export hands over the record it is still building, before it is written)."""

    folder: Path
    _record: ExportRecord | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)

    @classmethod
    def latest(cls, repository: str | os.PathLike, model: str = MODEL) -> "Version | None":
        """The newest version of ``model`` in a served repository (what Triton serves), or None."""
        folder = layout.latest_version(repository, model)
        return cls(folder) if folder is not None else None

    @property
    def record(self) -> ExportRecord:
        if self._record is None:
            self._record = ExportRecord.read(self.folder)
        return self._record

    def file(self, kind: str) -> Path:
        return self.folder / FILES[kind]

    def has(self, kind: str) -> bool:
        return self.file(kind).is_file()

    def update(self, **sections: Any) -> Path:
        """Change sections of the record (e.g. ``tensorrt`` after a plan build) and write it back."""
        self._record = dataclasses.replace(self.record, **sections)
        return self._record.write(self.folder)

    # --- which precision --------------------------------------------------------------------------

    def cpu_choice(self, runtime: str = "auto", wanted: str = "auto", here: dict | None = None,
                   measure: Callable[[list[str]], dict[str, float]] | None = None) -> tuple[str, str, str]:  # fmt: skip
        """(runtime, precision, why) for the CPU runtimes.  ``auto`` (either or both): the fastest
        measured on this CPU among the candidates export's gates allowed -- OpenVINO in f32, bf16
        (where the CPU computes it natively) and int8, ONNX Runtime in f32 and int8 -- by
        ``runtime.precision.choose`` (``measure`` defaults to timing them here).  An explicit
        precision must be gated: RuntimeUnavailable names why it is not."""
        allowed = self.record.allowed_precisions()
        if wanted != "auto" and wanted not in allowed:
            raise RuntimeUnavailable(f"precision {wanted} is not served from {self.folder.name}: {self.record.refusal(wanted)} "
                                     f"(re-export on a machine that can check it{', with --int8' if wanted == 'int8' else ''})")  # fmt: skip
        candidates = [precision.key(rt, p) for rt in (CPU_RUNTIMES if runtime == "auto" else (runtime,)) for p in ("f32", "bf16", "int8")
                      if p in allowed and (wanted in ("auto", p)) and runs_here(rt, p)]  # fmt: skip
        if not candidates:
            raise RuntimeUnavailable(f"{runtime} cannot run precision {wanted} on this CPU")
        if len(candidates) == 1 and runtime != "auto" and wanted != "auto":
            return runtime, wanted, "asked for"
        timings = (self.record.cpu_precisions or {}).get("timings")
        chosen, why = precision.choose(candidates, timings, here or cpu.describe(),
                                       measure or (lambda cs: self.time_cpu_candidates(cs, 0, 1, precision.WHOLE_BATCH_TIMING_IMAGES)))  # fmt: skip
        return chosen.partition(":")[0], precision.precision_of(chosen), why

    def time_cpu_candidates(self, candidates: list[str], threads: int, streams: int, images_per_run: int) -> dict[str, float]:
        """{``runtime:precision``: images/s} on this CPU for each candidate, run with ``threads`` and
        ``streams``, ``images_per_run`` at a time (no gate applied: export times the candidates its
        gates just passed).  A served config's parameters: ServedConfig.time_candidates."""
        def opener(candidate: str):
            rt, _, p = candidate.partition(":")
            return self.open(rt, p, threads=threads, streams=streams, max_images_per_run=images_per_run, gated=False)

        return precision.time_precisions(opener, candidates, images_per_run)

    # --- a runnable model -------------------------------------------------------------------------

    def open(self, runtime: str, wanted: str = "auto", *, threads: int = 0, streams: int = 1, max_images_per_run: int = 0,
             device: str = "auto", gated: bool = True, measure: Callable[[list[str]], dict[str, float]] | None = None) -> Runtime:  # fmt: skip
        """The classifier (IMAGE uint8 [N,3,256,256] -> PROBS float32 [N,C]) in ``runtime``:

        - ``auto``: OpenVINO or ONNX Runtime, whichever runs fastest here (``cpu_choice``);
        - ``openvino``: ``wanted`` auto (the fastest measured here, see ``cpu_choice``), f32,
          bf16 or int8, each only where export's gates allowed it (``gated``);
        - ``onnxruntime``: auto, f32 or int8, the same gates;
        - ``pytorch``: model.pt on ``device`` (auto: CUDA where visible), ``wanted`` auto (bf16
          autocast on CUDA, f32 on the CPU), f32, bf16 or fp16.

        ``threads`` 0 = every core; ``max_images_per_run`` bounds the activations one run holds
        (0: the whole batch); ``measure`` times the candidate precisions for ``auto`` (a served
        config's way: ServedConfig.open; by default, runs of ``max_images_per_run`` or of
        ``precision.WHOLE_BATCH_TIMING_IMAGES``).
        The returned runtime's ``why`` says how the precision was chosen.  Raises
        RuntimeUnavailable (package, device or gate), FileNotFoundError (file missing),
        RecordError (export.json), ChoiceError (unknown runtime or precision)."""
        why = ""
        if runtime in ("auto", "openvino", "onnxruntime") and gated:
            runtime, wanted, why = self.cpu_choice(runtime, wanted, measure=measure or (
                lambda cs: self.time_cpu_candidates(cs, threads, streams, max_images_per_run or precision.WHOLE_BATCH_TIMING_IMAGES)))  # fmt: skip
        if runtime == "openvino":
            wanted = "f32" if wanted == "auto" else wanted
            model = engines.openvino(self.file(file_for(runtime, wanted)), wanted, threads, streams, max_images_per_run)
        elif runtime == "onnxruntime":
            wanted = "f32" if wanted == "auto" else wanted
            if wanted not in ("f32", "int8"):
                raise ChoiceError(f"ONNX Runtime runs f32 or int8 here, not {wanted!r}")
            model = engines.onnxruntime(self.file(file_for(runtime, wanted)), threads, max_images_per_run, wanted)
        elif runtime == "pytorch":
            model = engines.pytorch(self.file("torchscript"), device, wanted, max_images_per_run)
        else:
            raise ChoiceError(f"unknown runtime {runtime!r} (one of {', '.join(RUNTIMES)})")
        model.why = why
        return model
