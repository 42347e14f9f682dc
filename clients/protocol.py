"""One small adapter over tritonclient's HTTP and gRPC clients.

Everything above it (the Classifier, the CLIs, the benchmark) speaks to ``Connection``
and never branches on the protocol.  Errors come out as ``ServerError`` with a kind:
``unreachable`` / ``unavailable`` (worth retrying: the server is down, restarting or full),
``refused`` (the server rejected this input; retrying will not help), ``unauthenticated``
(a missing or wrong token, or a certificate not trusted) or ``other``.

Credentials (contract.security.Credentials: the bearer token, the CA to trust) come from the
CLIs' flags or the environment (ALEXNET_TOKEN_FILE / ALEXNET_TOKEN, ALEXNET_CA, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.utils import InferenceServerException

from alexnet_server.contract import security
from alexnet_server.contract.security import Credentials

# gRPC's C core would print a failed TLS handshake on stderr itself, beside the one line the
# CLIs print; its errors still come through (set GRPC_VERBOSITY to see more).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}
PROTOCOLS = tuple(DEFAULT_URLS)


class ClientError(Exception):
    """A readable failure of a client call (``ServerError`` or ``LocalError``); ``kind`` says
    whether retrying can help.

    unreachable: no connection (the server is down or restarting) -- transient
    unavailable: the server answered with a fault of its own (a model not ready, a dead
                 python-backend stub, an internal error, stopping, its queue full) -- transient
    refused:     the server rejected this input (INVALID_ARG, too large); retrying will not help
    unauthenticated: the front refused the token, or TLS with it failed -- fix the credentials
    other:       anything else (an unknown model, a protocol error)
    """

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def transient(self) -> bool:
        return self.kind in ("unreachable", "unavailable")


class ServerError(ClientError):
    """The server (or the way to it) failed or refused the call."""


class LocalError(ClientError):
    """It failed here, without the server's say: a file that cannot be read, an image this client's
    own decode refuses ("refused"), options or a local setup that cannot work ("other")."""


# Triton's error codes as each protocol reports them (grpc: the status code's name; HTTP:
# the status, which Triton 2.51 maps from the same codes: INVALID_ARG 400, NOT_FOUND 404,
# INTERNAL 500, UNAVAILABLE 503).  NOT_FOUND is what a stopping or restarting Triton answers
# while its models unload ("has no available versions"): a model the client found at its
# start (Classifier checks it) that is gone now is coming back, so it is retried too.
# The front (server/front.py) adds UNAUTHENTICATED / 401, RESOURCE_EXHAUSTED / 413 (a body over
# the limit) and 429 (too many connections from one address).
_KINDS = {
    "INVALID_ARGUMENT": "refused", "400": "refused", "RESOURCE_EXHAUSTED": "refused", "413": "refused",
    "UNAUTHENTICATED": "unauthenticated", "401": "unauthenticated",
    "NOT_FOUND": "unavailable", "404": "unavailable",
    "UNAVAILABLE": "unavailable", "INTERNAL": "unavailable", "DEADLINE_EXCEEDED": "unavailable",
    "ABORTED": "unavailable", "CANCELLED": "unavailable",
    "429": "unavailable", "500": "unavailable", "502": "unavailable", "503": "unavailable", "504": "unavailable",
}  # fmt: skip
_TLS_FAILURE = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "Ssl handshake failed", "WRONG_VERSION_NUMBER")
_FIX_CREDENTIALS = f"--token-file or ${security.TOKEN_FILE_ENV}"
_FIX_TLS = f"--ca or ${security.CA_ENV}: the CA that signed the server's certificate"


def _status(exc: InferenceServerException) -> str:
    """'INVALID_ARGUMENT' from a gRPC 'StatusCode.INVALID_ARGUMENT', '400' from HTTP's '400'."""
    return str(exc.status() or "").rsplit(".", 1)[-1]


def _translate(exc: BaseException, url: str, model: str | None = None) -> ServerError:
    if isinstance(exc, ServerError):
        return exc
    if isinstance(exc, ssl.SSLError):
        return ServerError(f"TLS with {url} failed ({getattr(exc, 'reason', None) or exc.__class__.__name__}): {_FIX_TLS}", "unauthenticated")
    if isinstance(exc, (ConnectionError, OSError, TimeoutError)) and not isinstance(exc, InferenceServerException):
        return ServerError(f"cannot reach Triton at {url} ({exc.__class__.__name__}): is alexnet-serve running?", "unreachable")
    if isinstance(exc, json.JSONDecodeError):  # an answer that is not Triton's: a TLS port spoken to in plain text, say
        return ServerError(f"the server at {url} did not answer as Triton does (is it TLS? {_FIX_TLS})", "other")
    if isinstance(exc, InferenceServerException):
        status = _status(exc)
        message = (exc.message() or str(exc)).replace(f"in ensemble '{model}', ", "")
        kind = _KINDS.get(status, "other")
        if any(marker in message for marker in _TLS_FAILURE):
            return ServerError(f"TLS with {url} failed: {_FIX_TLS}", "unauthenticated")
        if kind == "unauthenticated":
            return ServerError(f"the server at {url} refused the call: {message} ({_FIX_CREDENTIALS})", kind)
        if kind == "refused":
            return ServerError(message, kind)
        if kind == "unavailable":
            what = f"model '{model}'" if model else "the server"
            return ServerError(f"{what} is not available at {url} ({status}): {message}", kind)
        return ServerError(f"Triton error ({status or 'no status'}): {message}", kind)
    return ServerError(f"{exc.__class__.__name__}: {exc}", "other")


@dataclass
class ModelInfo:
    name: str
    input_name: str
    input_datatype: str
    input_dims: list[int]
    output_name: str
    max_batch_size: int
    labels: bool


class Connection:
    """A Triton endpoint over one protocol: readiness, model description, inference, statistics."""

    def __init__(
        self, url: str | None = None, protocol: str = "grpc", concurrency: int = 8, timeout: float = 60.0, credentials: Credentials | None = None
    ) -> None:
        """``credentials``: the token and CA to use; None = from the environment (Credentials.resolve)."""
        if protocol not in PROTOCOLS:
            raise LocalError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        self.protocol = protocol
        self.url = url or DEFAULT_URLS[protocol]
        self.timeout = timeout
        self.credentials = credentials if credentials is not None else resolve_credentials()
        self._headers = self.credentials.headers()
        if protocol == "http":
            import tritonclient.http as module

            self._client = module.InferenceServerClient(self.url, concurrency=concurrency, network_timeout=timeout, connection_timeout=timeout,
                                                        **self.credentials.http_options())  # fmt: skip
        else:
            import tritonclient.grpc as module

            self._client = module.InferenceServerClient(self.url, **self.credentials.grpc_options())
        self._module = module

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, fn, *args, model: str | None = None, **kwargs):
        try:
            return fn(*args, headers=self._headers or None, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one readable ServerError
            raise _translate(exc, self.url, model) from None

    def _as_dict(self, result: Any) -> dict:
        return result if isinstance(result, dict) else json.loads(json.dumps(result))

    def server_ready(self) -> bool:
        return bool(self._call(self._client.is_server_ready))

    def model_ready(self, model: str) -> bool:
        return bool(self._call(self._client.is_model_ready, model, model=model))

    def metadata(self, model: str) -> dict:
        kwargs = {"as_json": True} if self.protocol == "grpc" else {}
        return self._call(self._client.get_model_metadata, model, model=model, **kwargs)

    def config(self, model: str) -> dict:
        kwargs = {"as_json": True} if self.protocol == "grpc" else {}
        result = self._call(self._client.get_model_config, model, model=model, **kwargs)
        return result.get("config", result)

    def statistics(self, model: str) -> dict:
        kwargs = {"as_json": True} if self.protocol == "grpc" else {}
        stats = self._call(self._client.get_inference_statistics, model, model=model, **kwargs)
        return stats["model_stats"][0] if stats.get("model_stats") else {}

    def describe(self, model: str) -> ModelInfo:
        """Ask the server what the model takes and returns, instead of hard-coding it."""
        meta, config = self.metadata(model), self.config(model)
        if len(meta["inputs"]) != 1 or len(meta["outputs"]) != 1:
            raise ServerError(f"model '{model}' has {len(meta['inputs'])} inputs and {len(meta['outputs'])} outputs; expected one each")
        inp, out = meta["inputs"][0], meta["outputs"][0]
        max_batch = int(config.get("max_batch_size", 0))
        dims = [int(d) for d in inp["shape"]][1 if max_batch > 0 else 0 :]
        labelled = any(o.get("label_filename") for o in config.get("output", [])) or config.get("platform") == "ensemble"
        return ModelInfo(model, inp["name"], inp["datatype"], dims, out["name"], max_batch, labelled)

    def infer(self, info: ModelInfo, batch: np.ndarray, class_count: int = 0) -> np.ndarray:
        """One request: ``batch`` in, the output array (or top-k strings with ``class_count``) out."""
        inp = self._module.InferInput(info.input_name, list(batch.shape), info.input_datatype)
        inp.set_data_from_numpy(batch)
        out = self._module.InferRequestedOutput(info.output_name, class_count=class_count)
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        result = self._call(self._client.infer, info.name, [inp], outputs=[out], model=info.name, **kwargs)
        return result.as_numpy(info.output_name)


def resolve_credentials(token_file=None, ca=None, cert=None, key=None) -> Credentials:
    """Credentials from flags, else the environment; LocalError naming the problem (an unreadable
    or unusable token or certificate file is the caller's, not the server's)."""
    try:
        return Credentials.resolve(token_file, ca, cert, key)
    except security.CredentialError as exc:
        raise LocalError(str(exc), "unauthenticated") from None


def add_credential_arguments(parser: argparse.ArgumentParser) -> None:
    """--token-file, --ca, --cert, --key: the same four flags on every client CLI."""
    group = parser.add_argument_group("credentials (a server beyond loopback asks for them)")
    group.add_argument("--token-file", help=f"file holding the bearer token (default: ${security.TOKEN_FILE_ENV}, else ${security.TOKEN_ENV})")
    group.add_argument("--ca", help=f"PEM file of the CA that signed the server's certificate; set = use TLS (default: ${security.CA_ENV})")
    group.add_argument("--cert", help=f"client certificate, where the server asks for one (default: ${security.CERT_ENV})")
    group.add_argument("--key", help=f"its private key (default: ${security.KEY_ENV})")


def credentials_from(args: argparse.Namespace) -> Credentials:
    return resolve_credentials(args.token_file, args.ca, args.cert, args.key)


def bytes_batch(items: list[bytes]) -> np.ndarray:
    """Encoded images as the [N,1] BYTES tensor that IMAGE_BYTES takes."""
    return np.array([[item] for item in items], dtype=object)
