"""alexnet-label: label every image in a folder (or a manifest of paths) with the AlexNet Triton server.

    alexnet-label photos/ --recursive --out labels.csv --concurrency 8
    alexnet-label photos/ --out labels.jsonl --resume       # after an interruption, or to retry failures
    alexnet-label paths.parquet --engine ray --address auto --actors 8   # on a Ray cluster (clients/label_ray.py)

Walks the folder lazily (the first request goes out before the folder is listed) and keeps
up to N requests in flight.  Every file that is an image by its header or by its name gets
exactly one row, written and flushed as it completes: its labels, or why it failed
(permission denied, truncated, too large, unsupported format).  A folder or entry that
cannot be read is named once and counted; the walk goes on.  While the server is
unreachable or failing on its side (a restart, a dead stub), requests are retried with
backoff and never written as failed rows.
A manifest (a .txt of one path per line, a .csv or .parquet with a ``path`` column) is read
as a stream and every path it names gets a row.  ``--engine ray`` computes the same rows on a
Ray cluster; the output, resume and exit codes are the same.
Exit codes: 0 all labelled, 1 some images failed or some entries could not be read,
2 usage error or no server answered.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from alexnet_server.clients.classifier import Classifier, ClassifierError, Result
from alexnet_server.clients.label_output import PART_ROWS, Output, open_output
from alexnet_server.clients.label_sources import MANIFEST_SUFFIXES, Event, NotImage, Total, candidates, is_image, is_manifest
from alexnet_server.clients.protocol import DEFAULT_URLS, PROTOCOLS, add_credential_arguments, credentials_from
from alexnet_server.contract import ENSEMBLE, layout
from alexnet_server.contract.cli import HelpFormatter

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alexnet-label", description=__doc__.split("\n\n")[0], add_help=add_help,
                                     epilog="Any file name is written: in CSV as the file system's own bytes (read it back "
                                            "with encoding='utf-8', errors='surrogateescape'), in JSONL as a JSON string "
                                            "(names that are not UTF-8 appear as \\udcXX escapes), in Parquet as binary (os.fsdecode gives the name).",
                                     formatter_class=HelpFormatter)  # fmt: skip
    parser.add_argument("source", type=Path, metavar="SOURCE",
                        help="a folder, or a manifest of paths: .txt (one per line), .csv or .parquet (a 'path' column)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("labels.csv"),
                        help="FILE.csv, FILE.jsonl, or NAME.parquet: a directory of Parquet parts, for runs too large for one file")  # fmt: skip
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders (symbolic links to folders are not followed)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--resume", action="store_true",
                        help="continue --out: images with a label are skipped; failed rows are removed and retried")  # fmt: skip
    parser.add_argument("--keep-failed", action="store_true", help="with --resume: do not retry failed rows (exit 1 says they remain)")
    parser.add_argument("--url", help=f"Triton address (default: {DEFAULT_URLS['grpc']} grpc, {DEFAULT_URLS['http']} http)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    parser.add_argument("--model", default=ENSEMBLE)
    parser.add_argument("--retry-timeout", type=float, default=120.0, help="seconds to keep retrying while the server is down or failing")
    parser.add_argument("--part-rows", type=int, default=PART_ROWS,
                        help="rows per Parquet part (--out NAME.parquet); a part is also written every 5 minutes and at the end")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true")
    add_credential_arguments(parser)
    ray = parser.add_argument_group("--engine ray (pip install '.[ray]')")
    ray.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local: this process through one Triton (--url); ray: Ray Data on a cluster, the model in-process on its "
                          "actors, or through a Triton fleet when --url is given")  # fmt: skip
    ray.add_argument("--address", help="the Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: start a local Ray for this run)")
    ray.add_argument("--repository", type=Path, default=layout.default_repository(),
                     help=f"the served repository whose latest version the in-process actors run (${layout.REPOSITORY_ENV} sets the default)")  # fmt: skip
    ray.add_argument("--actors", type=int, default=1, help="model actors (each on a GPU where Ray sees GPUs, else on CPUs)")
    ray.add_argument("--batch-size", type=int, help="images per actor call (default: 16 in-process, 64 with --url: 8 in flight each)")
    ray.add_argument("--ray-cpus", type=int, help="logical CPUs of the local Ray started for the run (default: this machine's)")
    return parser


class Counter(threading.Thread):
    """Counts the files in the background so the progress bar learns its total."""

    def __init__(self, source: Path, recursive: bool, bar) -> None:
        super().__init__(daemon=True)
        self.source, self.recursive, self.bar = source, recursive, bar
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        for n, _ in enumerate(candidates(self.source, self.recursive), 1):
            if self.stop.is_set():
                return
        self.bar.total = n
        self.bar.refresh()


# --- the run ----------------------------------------------------------------------------------------------


def _check_args(args: argparse.Namespace) -> str | None:
    if not args.source.is_dir() and not is_manifest(args.source):
        return f"{args.source} is neither a folder nor a manifest ({', '.join(MANIFEST_SUFFIXES)})"
    if min(args.concurrency, args.topk, args.actors, args.batch_size, args.part_rows) < 1:
        return "--concurrency, --topk, --actors, --batch-size and --part-rows must be >= 1"
    if args.keep_failed and not args.resume:
        return "--keep-failed goes with --resume"
    if args.engine == "local" and (args.address or args.ray_cpus):
        return "--address and --ray-cpus go with --engine ray"
    return None


def todo(args: argparse.Namespace, out: Output, bar, counts: dict[str, int]) -> Iterator[tuple[str, bool]]:
    """(path, listed) for everything to label that ``out`` does not hold yet, in walk or manifest order."""

    def skipped(path: str, why: str) -> None:
        counts["unreadable"] += 1
        bar.write(f"alexnet-label: {path}: {why}", file=sys.stderr)

    for path, listed in candidates(args.source, args.recursive, skipped):
        if path in out.done:
            counts["already_done"] += 1
            bar.update(1)
        else:
            yield path, listed


def local_engine(args: argparse.Namespace, todo: Iterator[tuple[str, bool]]) -> Iterator[Event]:
    """The local engine: every candidate through one Triton (--url), up to --concurrency requests
    in flight.  Yields NotImage and Result events (its total comes from the background Counter);
    raises ClassifierError when the server stays away longer than --retry-timeout or refuses
    this caller."""
    not_images: list[str] = []

    def images() -> Iterator[str]:
        for path, listed in todo:
            if listed or is_image(Path(path)):  # by content or by name; a manifest's every path
                yield path
            else:
                not_images.append(path)

    clf = Classifier(args.url, args.protocol, model=args.model, concurrency=args.concurrency, retry_for=args.retry_timeout,
                     credentials=credentials_from(args))  # fmt: skip
    try:
        clf.wait_ready(args.retry_timeout)
        for result in clf.classify_many(images(), args.topk):
            while not_images:
                yield NotImage(not_images.pop(0))
            if result.error is not None and (result.error.transient or result.error.kind == "unauthenticated"):
                raise result.error  # the server stayed away longer than --retry-timeout, or refuses this caller
            yield result
        while not_images:
            yield NotImage(not_images.pop(0))
    finally:
        clf.close()


def record(result: Result, out: Output, bar, counts: dict[str, int]) -> None:
    """One row written, counted (the bar shows files/s, ETA and the failures so far), its failure said on stderr."""
    out.write(result)
    counts["failed" if result.error else "labelled"] += 1
    if result.error:
        bar.set_postfix_str(f"{counts['failed']} failed", refresh=False)
        bar.write(f"alexnet-label: {result.source}: {result.error}", file=sys.stderr)
    bar.update(1)


def label(args: argparse.Namespace, out: Output, bar, counts: dict[str, int]) -> None:
    """Every event of the engine, in the order it comes: rows written, the rest counted."""
    if args.engine == "ray":
        from alexnet_server.clients.label_ray import ray_engine as engine
    else:
        engine = local_engine
    for event in engine(args, todo(args, out, bar, counts)):
        if isinstance(event, Total):
            bar.total = event.count + counts["already_done"] + counts["unreadable"]
            bar.refresh()
        elif isinstance(event, NotImage):
            counts["not_images"] += 1
            bar.update(1)
        else:
            record(event, out, bar, counts)


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    args.batch_size = args.batch_size or (64 if args.url else 16)
    if problem := _check_args(args):
        print(f"alexnet-label: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        out = open_output(args.out, args.resume, args.keep_failed, args.part_rows)
    except ClassifierError as exc:  # LocalError: --out exists, is a folder, cannot be read back or opened
        print(f"alexnet-label: error: {args.out}: {exc}", file=sys.stderr)
        return EXIT_USAGE

    counts = {"labelled": 0, "failed": 0, "not_images": 0, "unreadable": 0, "already_done": 0}
    bar = tqdm(total=None, unit="file", desc="labelling", disable=args.no_progress, dynamic_ncols=True)
    counter = Counter(args.source, args.recursive, bar)
    if args.engine == "local":
        counter.start()
    started = time.perf_counter()
    try:
        label(args, out, bar, counts)
    except ClassifierError as exc:  # the server (or the Ray job, RayJobFailed) failed past --retry-timeout
        bar.close()
        print(f"alexnet-label: error: {exc} (rows so far are in {args.out}; rerun with --resume)", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        bar.close()
        print(f"alexnet-label: interrupted; rows so far are in {args.out} (rerun with --resume)", file=sys.stderr)
        return 130
    finally:
        counter.stop.set()
        out.close()
    bar.close()
    seconds = time.perf_counter() - started
    done = counts["labelled"] + counts["failed"]
    kept = f", {out.failed_kept} failed rows kept (not retried: --keep-failed)" if out.failed_kept else ""
    print(
        f"alexnet-label: {counts['labelled']} labelled, {counts['failed']} failed, {counts['unreadable']} unreadable entries, "
        f"{counts['not_images']} not images, {counts['already_done']} already in {args.out}{kept}; "
        f"{done / seconds if seconds else 0:.1f} img/s over {seconds:.1f} s",
        file=sys.stderr,
    )
    return EXIT_SOME_FAILED if counts["failed"] or counts["unreadable"] or out.failed_kept else EXIT_OK


def cli(argv: list[str] | None = None) -> int:
    return main(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
