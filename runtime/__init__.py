"""Running an exported model version in this process, shared by every stage that does.

- ``runtime.version``: the exported version (its files, export.json, the gates) and
  ``Version.open``, the one place a (runtime, precision) request becomes a loaded model;
- ``runtime.precision``: the CPU precision policy (the fastest measured among the gated);
- ``runtime.engines``: the runtime constructors (ONNX Runtime, OpenVINO, PyTorch);
- ``runtime.served``: a served config's parameters (``ServedConfig``), which open a version as
  the server runs it; ``runtime.model_config`` reads Triton's config files.

Imports ``contract`` and ``imaging`` only; the runtime packages themselves are imported
when a model is opened, so ``import runtime`` needs neither NumPy nor PyTorch.
"""

from alexnet_server.runtime.engines import ChoiceError, Runtime, RuntimeUnavailable
from alexnet_server.runtime.served import TUNED, ServedConfig, served_configs, tuned_record
from alexnet_server.runtime.version import FILES, ExportRecord, RecordError, Version

__all__ = ["ChoiceError", "FILES", "ExportRecord", "RecordError", "Runtime", "RuntimeUnavailable", "ServedConfig", "TUNED", "Version", "served_configs", "tuned_record"]
