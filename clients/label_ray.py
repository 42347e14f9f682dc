"""alexnet-label --engine ray: the local engine's rows, computed on a Ray cluster with Ray Data.

    alexnet-label photos/ --recursive --engine ray --out labels.csv              # a local Ray for the run
    alexnet-label manifest.parquet --engine ray --address auto --actors 8         # an existing cluster
    alexnet-label photos/ --engine ray --url triton.alexnet.svc:8001 --actors 4   # a Triton fleet

The driver lists the source (a folder's walk, or a manifest read as a stream), skips what the
output already holds, and hands the paths to Ray in Arrow chunks (``from_arrow_refs``: the
object store holds them, not the driver).  Ray Data then runs two stages:

1. CPU tasks read each file and, for the in-process model, decode it with the project's own
   ``imaging.load_or_reason`` (the preprocess model's decode: same limits, same reasons);
   Ray's image reader is not used, because it fails a whole job on one corrupt file.  With
   ``--url`` reading is only fetching bytes, and Ray Data fuses it into the actors' calls.
2. An actor pool (``ActorPoolStrategy``) runs the model: either the served repository's latest
   version opened by ``runtime.Version`` with the served config's runtime and precision
   (OpenVINO on CPUs, the pytorch config's model on GPUs, ``num_gpus`` where Ray sees GPUs), or,
   with ``--url``, the project's ``Classifier`` against Triton with its retries and token.

Rows stream back to the driver as events (clients/label_sources.py), which alexnet-label writes
exactly as the local engine's (CSV or JSONL flushed row by row, or Parquet parts:
clients/label_output.py); ``--resume`` skips the paths the output already holds.  A killed actor
or task is retried by Ray: its rows come once, from the retry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from alexnet_server import imaging
from alexnet_server.clients.classifier import Result, read_image
from alexnet_server.clients.label_sources import Event, NotImage, Total, is_image
from alexnet_server.clients.protocol import ClientError, LocalError, ServerError
from alexnet_server.clients.topk import from_probs
from alexnet_server.contract.security import MAX_IMAGE_BYTES

# Paths per Arrow block the driver puts into the object store: a block is one read task's input,
# so small blocks spread the reading over the cluster from the start (10^7 paths: ~40k refs).
CHUNK = 256
BLOCK_BYTES = 16 * 2**20  # Ray Data's output blocks: ~80 decoded images, so rows reach the driver as they are done
READ_BATCH = 16  # files per read task call
READ_CPUS = 0.5  # logical CPUs a read task asks for: decoding waits on I/O part of the time


class RayUnavailable(LocalError):
    """Ray is not installed or the cluster cannot be reached; the message says which."""


class RayJobFailed(LocalError):
    """A stage of the Ray job failed (Ray's own error, its cause named in one line)."""


def _status(path: str, listed: bool) -> tuple[str, str]:
    """("ok" | "not_image" | "failed", why) before reading: a folder's file that is not an image by
    its header or its name gets no row, as in the local engine; a manifest's every path does."""
    if listed or is_image(Path(path)):
        return "ok", ""
    return "not_image", ""


def read_files(batch: dict[str, np.ndarray], decode: bool) -> dict[str, np.ndarray]:
    """Stage 1 (a Ray task): path, listed -> path, status, error, and either image uint8
    [B,3,256,256] (``decode``: zeros where status is not "ok") or data (the encoded bytes)."""
    paths, statuses, errors, payload = [], [], [], []
    for raw, listed in zip(batch["path"], batch["listed"]):
        path = os.fsdecode(bytes(raw))
        status, error, item = (*_status(path, bool(listed)), None)
        if status == "ok":
            try:
                data = read_image(path)
            except LocalError as exc:
                status, error = "failed", str(exc)
            else:
                if decode:
                    item, why = imaging.load_or_reason(data, MAX_IMAGE_BYTES)
                    if why:
                        status, error = "failed", f"image refused: {why}"
                else:
                    item = data
        paths.append(bytes(raw))
        statuses.append(status)
        errors.append(error)
        payload.append(item)
    out = {"path": np.array(paths, dtype=object), "status": np.array(statuses, dtype=object), "error": np.array(errors, dtype=object)}
    if decode:
        blank = np.zeros((3, imaging.SIZE, imaging.SIZE), np.uint8)
        out["image"] = np.stack([blank if item is None else item for item in payload])
    else:
        out["data"] = np.array([b"" if item is None else item for item in payload], dtype=object)
    return out


def _rows(batch: dict[str, np.ndarray], top: dict[int, list[tuple[str, float]]]) -> dict[str, np.ndarray]:
    """The stage-2 output: path, status, error, and the top-k as two list columns (labels,
    scores: Arrow list<string> and list<double> through the object store), empty where not labelled."""
    n = len(batch["path"])
    labels, scores = np.empty(n, dtype=object), np.empty(n, dtype=object)
    for i in range(n):
        labels[i] = [label for label, _ in top.get(i, [])]
        scores[i] = [score for _, score in top.get(i, [])]
    return {"path": batch["path"], "status": batch["status"], "error": batch["error"], "labels": labels, "scores": scores}


class InProcessModel:
    """Stage 2 (a Ray actor): the served repository's latest version, opened by its served config
    (runtime.ServedConfig) as the server opens it: ``cpu`` (OpenVINO, the precision measured
    fastest here among the gated, its streams and images per run) or, on a GPU actor,
    ``pytorch``.  Top-k from PROBS with the repository's labels."""

    def __init__(self, repository: str, topk: int, cores: int, gpu: bool) -> None:
        from alexnet_server.contract import MODEL, layout
        from alexnet_server.runtime import Version, served_configs

        version = Version.latest(repository)
        if version is None:
            raise RuntimeError(f"no exported model in {Path(repository) / MODEL}: run alexnet-export first")
        # The served repository's own config, as edited there: what its server runs, its threads
        # taken from this actor's share of the machine where the config leaves them to the cores.
        config = served_configs(repository)["pytorch" if gpu else "cpu"]
        self.model = config.open(version, cores=cores or None, device="cuda" if gpu else "auto")
        self.labels = (Path(repository) / MODEL / layout.LABELS).read_text(encoding="utf-8").splitlines()
        self.topk = topk

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = [i for i, s in enumerate(batch["status"]) if s == "ok"]
        top: dict[int, list[tuple[str, float]]] = {}
        if ok:
            probs = self.model(np.ascontiguousarray(batch["image"][ok]))
            top = {i: from_probs(row, self.labels, self.topk) for i, row in zip(ok, probs)}
        return _rows(batch, top)


class TritonModel:
    """Stage 2 (a Ray actor): the project's Classifier against a Triton fleet (--url), with its
    retries, token and TLS; a failure on the server's side past --retry-timeout fails the run.

    Ray Data runs CALLS_PER_ACTOR calls of one actor at once, all feeding one pool of
    ``concurrency`` requests: the next batch's requests queue while the last of this batch's
    are still in flight, so the server never waits on a batch boundary."""

    CALLS_PER_ACTOR = 2

    def __init__(self, url: str, protocol: str, model: str, topk: int, retry: float, credentials, concurrency: int) -> None:
        from alexnet_server.clients.classifier import Classifier

        self.clf = Classifier(url, protocol, model=model, concurrency=concurrency, retry_for=retry, credentials=credentials)
        self.clf.wait_ready(retry)
        self.topk = topk

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        status, errors = batch["status"].copy(), batch["error"].copy()
        pending = {i: self.clf.classify_async(bytes(batch["data"][i]), self.topk) for i, s in enumerate(status) if s == "ok"}
        top: dict[int, list[tuple[str, float]]] = {}
        for i, future in pending.items():
            try:
                top[i] = future.result()
            except ClientError as exc:
                if exc.transient or exc.kind == "unauthenticated":
                    raise  # the fleet stayed away past --retry-timeout, or refuses this caller
                status[i], errors[i] = "failed", str(exc)
        return _rows({**batch, "status": status, "error": errors}, top)


def connect(address: str | None, cpus: int | None):
    """ray.init: a local Ray for this run (``address`` None: ``cpus`` logical CPUs, no dashboard),
    or the cluster at ``address`` ("auto", "HOST:PORT" or "ray://HOST:10001").  RayUnavailable."""
    if address and "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").is_file()):
        # A cluster started with token authentication (Ray's default) wants its token from a driver
        # that names its address: Ray's own $RAY_AUTH_TOKEN or ~/.ray/auth_token.  Ray reads the
        # mode when it is imported.
        os.environ["RAY_AUTH_MODE"] = "token"
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--engine ray needs Ray: pip install '.[ray]'") from None
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            # "local": a new Ray for this run even where another runs on this machine
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailable(f"cannot start or reach Ray{f' at {address}' if address else ''}: {str(exc).splitlines()[0]}") from None
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # the driver's own bar says images/s, failures and ETA
    context.target_max_block_size = BLOCK_BYTES
    context.print_on_execution_start = False
    for name in ("ray.data", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled": on purpose
    return ray


def put_paths(ray, todo: Iterator[tuple[str, bool]]) -> tuple[list, int]:
    """The paths to label, as Arrow tables in the object store (CHUNK paths each); (refs, count).
    Paths travel as the file system's bytes: a name that is not UTF-8 is no Arrow string."""
    import pyarrow as pa

    refs, paths, listed, count = [], [], [], 0

    def put() -> None:
        refs.append(ray.put(pa.table({"path": pa.array(paths, pa.binary()), "listed": pa.array(listed, pa.bool_())})))

    for path, was_listed in todo:
        paths.append(os.fsencode(path))
        listed.append(was_listed)
        if len(paths) == CHUNK:
            put()
            count, paths, listed = count + len(paths), [], []
    if paths:
        put()
        count += len(paths)
    return refs, count


def ray_engine(args, todo: Iterator[tuple[str, bool]]) -> Iterator[Event]:
    """The Ray engine: the two stages over ``todo`` ((path, listed) not yet in the output).  Yields
    Total once the paths are in the object store, then NotImage and Result events as the rows
    arrive.  Raises RayUnavailable, ServerError (the Triton fleet failed past --retry-timeout) or
    RayJobFailed (a stage failed in Ray)."""
    from alexnet_server.clients.protocol import credentials_from

    ray = connect(args.address, args.ray_cpus)
    try:
        import ray.data
        from ray.data import ActorPoolStrategy
        from ray.exceptions import RayError

        refs, count = put_paths(ray, todo)
        yield Total(count)
        if not count:
            return
        gpus = int(ray.cluster_resources().get("GPU", 0)) if args.url is None else 0
        decode = args.url is None
        # For the in-process model, reading and decoding run in their own tasks (their resources
        # differ from the actors', so Ray Data does not fuse the two): decoding scales with the
        # cluster's CPUs, the actors only run the model.  With --url the read only fetches bytes,
        # and Ray Data fuses it into the actors' calls.
        ds = ray.data.from_arrow_refs(refs).map_batches(read_files, batch_size=READ_BATCH, batch_format="numpy", fn_kwargs={"decode": decode},
                                                        num_cpus=READ_CPUS)  # fmt: skip
        if decode:
            pool = ActorPoolStrategy(size=args.actors)
            cores = 0 if gpus else max(1, int(ray.cluster_resources().get("CPU", 1)) // args.actors)
            stage = ds.map_batches(InProcessModel, batch_size=args.batch_size, batch_format="numpy", compute=pool,
                                   fn_constructor_kwargs={"repository": str(args.repository), "topk": args.topk, "cores": cores, "gpu": bool(gpus)},
                                   num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)  # fmt: skip
        else:
            pool = ActorPoolStrategy(size=args.actors, max_concurrent_calls_per_actor=TritonModel.CALLS_PER_ACTOR, enable_true_multi_threading=True)
            stage = ds.map_batches(TritonModel, batch_size=args.batch_size, batch_format="numpy", compute=pool, num_cpus=0.5,
                                   fn_constructor_kwargs={"url": args.url, "protocol": args.protocol, "model": args.model, "topk": args.topk,
                                                          "retry": args.retry_timeout, "credentials": credentials_from(args),
                                                          "concurrency": args.concurrency})  # fmt: skip
        try:
            for batch in stage.iter_batches(batch_size=None, batch_format="numpy"):
                for path, status, error, labels, scores in zip(batch["path"], batch["status"], batch["error"], batch["labels"], batch["scores"]):
                    name = os.fsdecode(bytes(path))
                    if status == "not_image":
                        yield NotImage(name)
                    elif status == "ok":
                        yield Result(0, name, [(str(label), float(score)) for label, score in zip(labels, scores)], None)
                    else:
                        yield Result(0, name, None, LocalError(str(error), "refused"))
        except RayError as exc:  # a stage's failure, in Ray's own types; the fleet's ServerError is said as it is
            cause = getattr(exc, "cause", None) or exc
            if isinstance(cause, ServerError):
                raise cause from None
            words = str(cause).strip().splitlines()
            raise RayJobFailed(f"the Ray job failed: {type(cause).__name__}: {words[-1] if words else ''}") from None
    finally:
        ray.shutdown()
