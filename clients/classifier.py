"""The client library: ``Classifier(url, protocol).classify(images, topk=5)``.

    from alexnet_server.clients import Classifier, ClassifierError
    with Classifier("127.0.0.1:8001", protocol="grpc") as clf:
        for labels in clf.classify(["cat.jpg", open("dog.png", "rb").read()], topk=3):
            print(labels)            # [("tabby", 0.61), ("tiger cat", 0.22), ...]

The model is described by the server (input name and type, batch limit, labels); against
``classify`` the client sends encoded bytes, against ``alexnet`` it decodes with the same
``imaging`` module the server uses and sends the uint8 256 image.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Union

import numpy as np

from alexnet_server import imaging
from alexnet_server.clients.protocol import ClientError, Connection, LocalError, ModelInfo, ServerError, bytes_batch, resolve_credentials
from alexnet_server.clients.topk import parse_top
from alexnet_server.contract import ENSEMBLE
from alexnet_server.contract.security import Credentials

ClassifierError = ClientError  # the one exception type users catch: ServerError or LocalError
Image = Union[str, os.PathLike, bytes]


@dataclass
class Result:
    index: int
    source: str
    labels: list[tuple[str, float]] | None
    error: ClientError | None = None


def _source(image: Image) -> str:
    return "<bytes>" if isinstance(image, (bytes, bytearray, memoryview)) else str(image)


def read_image(image: Image) -> bytes:
    """The encoded bytes of a path or of bytes; LocalError "cannot read: <reason>" (the row both
    label engines write for a file that cannot be read)."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    try:
        return Path(image).read_bytes()
    except OSError as exc:
        raise LocalError(f"cannot read: {(exc.strerror or str(exc)).lower()}", "refused") from None


class Classifier:
    def __init__(
        self,
        url: str | None = None,
        protocol: str = "grpc",
        model: str = ENSEMBLE,
        timeout: float = 60.0,
        concurrency: int = 8,
        retry_for: float = 0.0,
        credentials: Credentials | None = None,
    ) -> None:
        """``retry_for``: seconds to keep retrying a request while the server is unreachable or restarting;
        ``credentials``: token and CA (None: from the environment, ALEXNET_TOKEN_FILE / ALEXNET_CA)."""
        self.credentials = credentials if credentials is not None else resolve_credentials()
        self.retry_for = retry_for
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._lock = threading.Lock()
        self.url, self.protocol, self.model_name, self.timeout, self.concurrency = url, protocol, model, timeout, concurrency
        self._info: ModelInfo | None = None
        self._pool: ThreadPoolExecutor | None = None

    # One connection per thread: gRPC channels are thread-safe, but the HTTP client is bound to the
    # thread that made it.  Requests run on one pool of ``concurrency`` threads for the Classifier's
    # life (``_executor``), so the connections stay as many as its threads, however many calls
    # come and go (a Ray actor calls once per batch).
    def connection(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = Connection(self.url, self.protocol, concurrency=1, timeout=self.timeout, credentials=self.credentials)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            conn = self.connection()
            if not conn.model_ready(self.model_name):
                raise ServerError(f"model '{self.model_name}' is not ready at {conn.url}", "unavailable")
            info = conn.describe(self.model_name)
            if info.input_datatype not in ("BYTES", "UINT8"):
                raise ServerError(f"model '{self.model_name}' takes {info.input_datatype}; expected encoded images (BYTES) or uint8 pixels")
            self._info = info
        return self._info

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tensor(self, data: bytes) -> np.ndarray:
        if self.info.input_datatype == "BYTES":
            return bytes_batch([data])
        try:
            return imaging.load(data)[None]
        except imaging.ImageError as exc:
            raise LocalError(str(exc), "refused") from None

    def wait_ready(self, timeout: float) -> None:
        """Block until the model answers ready, retrying with backoff; ServerError after ``timeout``."""
        deadline, delay = time.monotonic() + timeout, 0.25
        while True:
            try:
                if self.connection().model_ready(self.model_name):
                    self.info
                    return
                error = ServerError(f"model '{self.model_name}' is not ready at {self.connection().url}", "unavailable")
            except ServerError as exc:
                if not exc.transient:
                    raise
                error = exc
            if time.monotonic() + delay > deadline:
                raise ServerError(f"no answer after {timeout:.0f} s: {error}", error.kind)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def classify_one(self, image: Image, topk: int = 5) -> list[tuple[str, float]]:
        """Top-k of one image.  Server faults and lost connections (transient) are retried with
        backoff for ``retry_for`` seconds; a refused image raises at once.  The error's message
        does not repeat the image's name: callers that show it add it once."""
        data = read_image(image)
        deadline, delay = time.monotonic() + self.retry_for, 0.25
        while True:
            try:
                entries = self.connection().infer(self.info, self._tensor(data), class_count=topk)
                return parse_top(entries)
            except ClientError as exc:
                if exc.kind == "refused":
                    raise type(exc)(f"image refused: {exc}", "refused") from None
                if not exc.transient or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def classify(self, images: Iterable[Image], topk: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k (label, score) per image, in order; the first failure raises ClassifierError naming the image."""
        results = []
        for result in self.classify_many(images, topk, ordered=True):
            if result.error is not None:
                raise type(result.error)(f"{result.source}: {result.error}", result.error.kind)
            results.append(result.labels)
        return results

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="classify")
            return self._pool

    def classify_async(self, image: Image, topk: int = 5) -> Future:
        """A Future of one image's top-k; many in flight keep the server's batcher busy.  Up to
        ``concurrency`` run at once, from all callers together; the rest wait their turn."""
        return self._executor().submit(self.classify_one, image, topk)

    def classify_many(self, images: Iterable[Image], topk: int = 5, concurrency: int | None = None, ordered: bool = False) -> Iterator[Result]:
        """Classify a (possibly endless, lazily produced) stream with up to ``concurrency`` requests in flight.

        Yields a Result per image (errors included, never raised), in completion order
        unless ``ordered``.  At most ``concurrency`` images are read ahead; they run on the
        Classifier's threads, shared with other calls (so at most the Classifier's ``concurrency``
        requests are in flight from all of them together).
        """
        width = concurrency or self.concurrency
        self.info  # fail fast, once, when the server or model is not there
        pending: set[Future] = set()
        done_early: dict[int, Result] = {}
        next_out = 0

        def run(index: int, image: Image) -> Result:
            source = _source(image)
            try:
                return Result(index, source, self.classify_one(image, topk))
            except ClientError as exc:
                return Result(index, source, None, exc)

        pool = self._executor()
        iterator = enumerate(images)
        exhausted = False
        try:
            while pending or not exhausted:
                while not exhausted and len(pending) < width:
                    try:
                        index, image = next(iterator)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.add(pool.submit(run, index, image))
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    pending.discard(future)
                    result = future.result()
                    if not ordered:
                        yield result
                    else:
                        done_early[result.index] = result
                while ordered and next_out in done_early:
                    yield done_early.pop(next_out)
                    next_out += 1
        finally:
            for future in pending:  # the caller stopped early: what has not started never will
                future.cancel()
