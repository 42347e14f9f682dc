"""The deployment's health, checked with a real request: one tiny image through ``classify``.

Triton's ``/v2/health/ready`` stays 200 when a python-backend stub has died (killed by the
OOM killer, say): every request then fails with "Stub process ... is not healthy" while the
server looks ready.  Only a request through the whole ensemble (preprocess -> alexnet) shows
it.  ``alexnet-serve`` runs this check on an interval and restarts Triton when it fails; the
Kubernetes Deployment's liveness probe runs the same check:

    python -m alexnet_server.server.health --url 127.0.0.1:8000      # exit 0 healthy; 1 with one line saying why

Through the front of a server beyond loopback it carries the token and trusts the CA given by
``ALEXNET_TOKEN_FILE`` / ``ALEXNET_CA`` (or --token-file / --ca), as every client does.
"""

from __future__ import annotations

import argparse
import io
import ssl
import sys
import urllib.error
import urllib.request
from functools import lru_cache

import numpy as np

from alexnet_server.contract import ENSEMBLE, IMAGE_BYTES, PROBS, security
from alexnet_server.contract.security import Credentials


# Triton's queue policy (max_queue_size, REJECT on timeout): a server under a flood answers the
# probe with these.  That is overload being refused as designed, not a dead stub.
BUSY = ("Exceeds maximum queue size", "Request timeout expired")


@lru_cache(maxsize=1)
def probe_image() -> bytes:
    """A 32x32 grey PNG: the cheapest image that exercises decode, resize and the network."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def ready_status(url: str, tls: bool = False, timeout: float = 2.0) -> int | None:
    """The HTTP status of ``/v2/health/ready`` at ``url`` (200 ready; 503 up, models not ready), or None
    when nothing answers.  Asked of Triton's own port and of the front's public one (with ``tls``,
    certificate not checked: it is this machine's own front)."""
    context = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"{'https' if tls else 'http'}://{url}/v2/health/ready", timeout=timeout, context=context) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ssl.SSLError):
        return None


def check(url: str, timeout: float = 60.0, credentials: Credentials = Credentials()) -> str | None:
    """None when ``classify`` answers the probe image with probabilities, else why not (one line)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout, **credentials.http_options())
    try:
        inp = httpclient.InferInput(IMAGE_BYTES, [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[probe_image()]], dtype=object))
        outputs = [httpclient.InferRequestedOutput(PROBS)]
        probs = client.infer(ENSEMBLE, [inp], outputs=outputs, headers=credentials.headers() or None).as_numpy(PROBS)
        if probs is None or probs.ndim != 2 or probs.shape[0] != 1 or not np.isfinite(probs).all():
            return f"{ENSEMBLE} answered the probe image with {None if probs is None else probs.shape}"
        return None
    except InferenceServerException as exc:
        message = exc.message() or str(exc)
        if any(words in message for words in BUSY):
            return None  # the queue policy refused it: alive and full, which a restart would only make worse
        return f"{ENSEMBLE} failed the probe image: {message}"
    except Exception as exc:  # noqa: BLE001 - unreachable, timed out, reset: all mean "not healthy"
        return f"no answer from {url}: {type(exc).__name__}: {exc}"
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alexnet_server.server.health", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="127.0.0.1:8000", help="Triton's HTTP address")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer")
    parser.add_argument("--token-file", help=f"file holding the bearer token (default: ${security.TOKEN_FILE_ENV}, else ${security.TOKEN_ENV})")
    parser.add_argument("--ca", help=f"PEM file of the CA that signed the front's certificate; set = TLS (default: ${security.CA_ENV})")
    args = parser.parse_args(argv)
    try:
        credentials = Credentials.resolve(args.token_file, args.ca)
    except security.CredentialError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    problem = check(args.url, args.timeout, credentials)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
