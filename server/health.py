"""The deployment's health, checked with a real request: one tiny image through ``classify``.

Triton's ``/v2/health/ready`` stays 200 when a python-backend stub has died (killed by the
OOM killer, say): every request then fails with "Stub process ... is not healthy" while the
server looks ready.  Only a request through the whole ensemble (preprocess -> alexnet) shows
it.  ``alexnet-serve`` runs this check on an interval and restarts Triton when it fails; the
Kubernetes Deployment's liveness probe runs the same check:

    python -m server.health --url 127.0.0.1:8000      # exit 0 healthy; 1 with one line saying why
"""

from __future__ import annotations

import argparse
import io
import sys
from functools import lru_cache

import numpy as np

from contract import ENSEMBLE, IMAGE_BYTES, PROBS


@lru_cache(maxsize=1)
def probe_image() -> bytes:
    """A 32x32 grey PNG: the cheapest image that exercises decode, resize and the network."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def check(url: str, timeout: float = 60.0) -> str | None:
    """None when ``classify`` answers the probe image with probabilities, else why not (one line)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
    try:
        inp = httpclient.InferInput(IMAGE_BYTES, [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[probe_image()]], dtype=object))
        probs = client.infer(ENSEMBLE, [inp], outputs=[httpclient.InferRequestedOutput(PROBS)]).as_numpy(PROBS)
        if probs is None or probs.ndim != 2 or probs.shape[0] != 1 or not np.isfinite(probs).all():
            return f"{ENSEMBLE} answered the probe image with {None if probs is None else probs.shape}"
        return None
    except InferenceServerException as exc:
        return f"{ENSEMBLE} failed the probe image: {exc.message() or exc}"
    except Exception as exc:  # noqa: BLE001 - unreachable, timed out, reset: all mean "not healthy"
        return f"no answer from {url}: {type(exc).__name__}: {exc}"
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.health", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="127.0.0.1:8000", help="Triton's HTTP address")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer")
    args = parser.parse_args(argv)
    problem = check(args.url, args.timeout)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
