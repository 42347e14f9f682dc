"""Triton's model configuration (``config.pbtxt``) read as Triton itself reads it.

``read(path)`` parses a pbtxt with Triton's own ``ModelConfig`` schema (protobuf text format)
and returns the same dict a running Triton serves at ``GET /v2/models/<model>/config``
(protobuf's JSON mapping with the proto field names: ``max_batch_size``, ``dynamic_batching``,
``parameters: {key: {string_value: ...}}``; 64-bit integers as strings).  So a config read from
a repository and one asked of the live server are the same value.

The schema is the generated ``model_config_pb2`` that ships in the ``tritonclient``
distribution.  Importing it as ``tritonclient.grpc.model_config_pb2`` would first run
``tritonclient.grpc``'s ``__init__``, which loads the whole gRPC client (grpcio, ml_dtypes,
rapidjson) only to reach a module that needs protobuf alone; the stages that read configs (the
server's config choice, export, the GPU check on a machine without grpcio) need the schema, not
the client.  So the module is loaded from its file under its own name; a later ``import
tritonclient.grpc`` finds it in ``sys.modules`` and uses the same module.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

_PB2 = "tritonclient.grpc.model_config_pb2"


class ConfigError(ValueError):
    """A pbtxt that Triton's schema does not accept; the message names the file and the line."""


def _schema():
    """Triton's generated ``model_config_pb2`` module (protobuf and the tritonclient distribution, not grpcio)."""
    module = sys.modules.get(_PB2)
    if module is None:
        import tritonclient  # the distribution that ships the generated schema

        spec = importlib.util.spec_from_file_location(_PB2, Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[_PB2] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[_PB2]
            raise
    return module


def parse(text: str, where: str = "config.pbtxt") -> dict[str, Any]:
    """``text`` (protobuf text format) as Triton's JSON model config.  Raises ConfigError naming ``where``."""
    from google.protobuf import json_format, text_format

    try:
        message = text_format.Parse(text, _schema().ModelConfig())
    except text_format.ParseError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def read(path: str | os.PathLike) -> dict[str, Any]:
    """The pbtxt at ``path`` as Triton's JSON model config.  Raises ConfigError or OSError."""
    return parse(Path(path).read_text(encoding="utf-8"), str(path))


def parameters(config: dict[str, Any]) -> dict[str, str]:
    """The config's ``parameters`` as plain strings (Triton's ``{key: {string_value: v}}``)."""
    return {key: value.get("string_value", "") for key, value in (config.get("parameters") or {}).items()}


def to_pbtxt(config: dict[str, Any], header: str = "") -> str:
    """Triton's JSON model config back as a pbtxt (protobuf text format), with ``header`` as
    leading comment lines.  Raises ConfigError for a dict the schema does not accept."""
    from google.protobuf import json_format, text_format

    try:
        message = json_format.ParseDict(config, _schema().ModelConfig())
    except json_format.ParseError as exc:
        raise ConfigError(f"not a Triton model config: {exc}") from None
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comments + text_format.MessageToString(message)
