"""What the server's front and every client agree on: the request size limit and the caller's credentials.

The front (nginx, started by ``alexnet-serve``) refuses a request body over
``MAX_REQUEST_BYTES`` and, where a token is set, any call without ``Authorization: Bearer
<token>`` (HTTP header, or gRPC metadata ``authorization``).  Secrets never come from the
command line, where every local user can read them in ``/proc``: a file named by a flag or
by ``ALEXNET_TOKEN_FILE``, or the ``ALEXNET_TOKEN`` variable.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# One encoded image: preprocess refuses a larger one before decoding it.  64 MiB admits a
# 100 MP JPEG at quality 95 (~40 MB).
MAX_IMAGE_BYTES = 64 * 2**20
# One request body at the front: an image at the limit plus the inference header (a KServe v2
# JSON header or a gRPC ModelInferRequest's fields are a few hundred bytes).  A batch of
# several images shares the same cap.
MAX_REQUEST_BYTES = MAX_IMAGE_BYTES + 2**20
# What an HTTP inference request may hold besides (server/front_check.js checks it before
# Triton): its JSON part -- the inference header of the binary tensor extension, or the whole
# body when tensors travel as JSON -- and the tensors it names.  Our clients send one input and
# one or two outputs with a header of a few hundred bytes; a JSON tensor is an inefficient form
# (an image is ~0.8 MB of JSON numbers), kept small because the check parses it whole.
MAX_JSON_HEADER_BYTES = 64 * 2**10
MAX_JSON_REQUEST_BYTES = 4 * 2**20
MAX_TENSORS = 8  # inputs, and outputs, per request
MAX_TENSOR_DIMS = 8

TOKEN_ENV = "ALEXNET_TOKEN"
TOKEN_FILE_ENV = "ALEXNET_TOKEN_FILE"
CA_ENV = "ALEXNET_CA"  # a PEM bundle the clients trust for the server's certificate
CERT_ENV = "ALEXNET_CLIENT_CERT"  # the client's certificate and key, where the front asks for one
KEY_ENV = "ALEXNET_CLIENT_KEY"

# RFC 6750's b64token: what may follow "Bearer ".  16 characters at least: a token is a secret.
_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]{16,}=*$")


class CredentialError(ValueError):
    """A token or certificate setting is unusable; the message says which and why (never the secret)."""


def check_token(token: str, source: str) -> str:
    token = token.strip()
    if not _TOKEN.match(token):
        raise CredentialError(f"the token from {source} is not usable: it needs 16 or more of A-Z a-z 0-9 - . _ ~ + / (RFC 6750)")
    return token


def read_secret(path: str | os.PathLike, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CredentialError(f"cannot read the {what} file {path}: {(exc.strerror or str(exc)).lower()}") from None
    except UnicodeDecodeError:
        raise CredentialError(f"the {what} file {path} is not text") from None


def token_from(path: str | os.PathLike | None = None, environ: dict | None = None) -> str | None:
    """The bearer token: ``path`` if given, else $ALEXNET_TOKEN_FILE, else $ALEXNET_TOKEN, else None.

    Raises CredentialError for an unreadable file or a token of the wrong form."""
    env = os.environ if environ is None else environ
    if path:
        return check_token(read_secret(path, "token"), str(path))
    if env.get(TOKEN_FILE_ENV):
        return check_token(read_secret(env[TOKEN_FILE_ENV], "token"), f"${TOKEN_FILE_ENV}")
    if env.get(TOKEN_ENV):
        return check_token(env[TOKEN_ENV], f"${TOKEN_ENV}")
    return None


@dataclass(frozen=True)
class Credentials:
    """How a client proves who it is and whom it trusts.

    token: the bearer token (None: send none); ca: PEM file of the CAs that signed the server's
    certificate (set: speak TLS); cert/key: the client's own certificate, for a front that asks."""

    token: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    @property
    def tls(self) -> bool:
        return self.ca is not None

    @classmethod
    def resolve(cls, token_file=None, ca=None, cert=None, key=None, environ: dict | None = None) -> "Credentials":
        """Flags first, then the environment (ALEXNET_TOKEN_FILE / ALEXNET_TOKEN, ALEXNET_CA, ...)."""
        env = os.environ if environ is None else environ
        paths = {name: value or env.get(var) or None for name, value, var in (("ca", ca, CA_ENV), ("cert", cert, CERT_ENV), ("key", key, KEY_ENV))}
        for name, value in paths.items():
            if value and not Path(value).is_file():
                raise CredentialError(f"the {name} file {value} does not exist")
        if bool(paths["cert"]) != bool(paths["key"]):
            raise CredentialError("a client certificate needs both --cert and --key")
        return cls(token_from(token_file, env), **{k: str(v) if v else None for k, v in paths.items()})

    def http_options(self) -> dict:
        """Keyword arguments for ``tritonclient.http.InferenceServerClient`` (geventhttpclient's TLS)."""
        if not self.tls:
            return {}
        options = {"ca_certs": self.ca, **({"certfile": self.cert, "keyfile": self.key} if self.cert else {})}
        return {"ssl": True, "ssl_options": options}

    def grpc_options(self) -> dict:
        """Keyword arguments for ``tritonclient.grpc.InferenceServerClient`` (file paths; it reads them)."""
        if not self.tls:
            return {}
        return {"ssl": True, "root_certificates": self.ca, "private_key": self.key, "certificate_chain": self.cert}

    def headers(self) -> dict[str, str]:
        """Lower-case names: gRPC metadata must be, and HTTP does not care."""
        return {"authorization": f"Bearer {self.token}"} if self.token else {}
