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
import csv
import json
import os
import stat
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Iterator

from alexnet_server import imaging
from alexnet_server.clients.classifier import Classifier, ClassifierError, Result
from alexnet_server.clients.label_output import NAME_ERRORS, PART_ROWS, Output, open_output, require_pyarrow
from alexnet_server.clients.protocol import DEFAULT_URLS, PROTOCOLS, LocalError, add_credential_arguments, credentials_from
from alexnet_server.contract import ENSEMBLE, layout
from alexnet_server.contract.cli import HelpFormatter

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
# Files with these names are images to the user even when their header is unreadable: they
# get a row (failed, with the reason) instead of silently counting as "not an image".
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".ico"}


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


# --- the walk ----------------------------------------------------------------------------------------


def walk(root: Path, recursive: bool, on_error: Callable[[str, str], None] | None = None) -> Iterator[Path]:
    """Files under ``root`` (symbolic links to files included), produced while scanning.

    Never stops early: a folder that cannot be listed or an entry that cannot be examined
    (a symbolic-link loop, a dangling link) is reported through ``on_error(path, why)`` and
    skipped, and the walk goes on.  Links to folders are not followed (no cycles)."""
    pending = [root]
    while pending:
        folder = pending.pop()
        subfolders = []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if recursive and not entry.name.startswith("."):
                                subfolders.append(entry.path)
                            continue
                        mode = os.stat(entry.path).st_mode  # follows links; raises on loops and dangling links
                    except OSError as exc:
                        if on_error:
                            on_error(entry.path, f"cannot examine: {exc.strerror or exc}")
                        continue
                    if stat.S_ISREG(mode):
                        yield Path(entry.path)
        except OSError as exc:
            if on_error:
                on_error(str(folder), f"cannot read folder: {exc.strerror or exc}")
        pending.extend(sorted(subfolders, reverse=True))


MANIFEST_SUFFIXES = (".txt", ".lst", ".csv", ".parquet")


def is_manifest(source: Path) -> bool:
    return source.is_file() and source.suffix.lower() in MANIFEST_SUFFIXES


def manifest_paths(manifest: Path, chunk: int = 65_536) -> Iterator[str]:
    """The paths a manifest lists, streamed (never the whole list in memory): a text file of one
    path per line, a CSV with a ``path`` column (else its first column), or a Parquet file with a
    ``path`` column.  Paths are used as written (relative ones against the working directory).
    LocalError for a Parquet file without such a column, or one that cannot be read."""
    kind = manifest.suffix.lower()
    if kind == ".parquet":
        pa = require_pyarrow()
        try:
            table = pa.parquet.ParquetFile(manifest)
        except (OSError, pa.ArrowException) as exc:
            raise LocalError(f"{manifest} is not a readable Parquet file: {exc}") from None
        if "path" not in table.schema_arrow.names:
            raise LocalError(f"{manifest} has no 'path' column (columns: {', '.join(table.schema_arrow.names)})")
        for batch in table.iter_batches(batch_size=chunk, columns=["path"]):
            yield from (p for p in batch.column(0).to_pylist() if p)
        return
    with open(manifest, encoding="utf-8", errors=NAME_ERRORS, newline="") as fh:
        if kind == ".csv":
            rows = csv.reader(fh)
            header = next(rows, [])
            column = header.index("path") if "path" in header else 0
            if "path" not in header and header and header[0]:
                yield header[0]  # no header row: the first line is a path
            yield from (row[column] for row in rows if len(row) > column and row[column])
        else:
            yield from (line.rstrip("\r\n") for line in fh if line.strip())


def candidates(source: Path, recursive: bool, on_error: Callable[[str, str], None] | None = None) -> Iterator[tuple[str, bool]]:
    """(path, listed) for every file to label: a folder's files as ``walk`` finds them (listed
    False: the engine first asks whether it is an image), or every path a manifest names (listed
    True: each gets a row, a missing file one that says so)."""
    if is_manifest(source):
        yield from ((p, True) for p in manifest_paths(source))
    else:
        yield from ((str(p), False) for p in walk(source, recursive, on_error))


def is_image(path: Path) -> bool:
    """An image by its header, or by its name (so an unreadable photo still gets a row)."""
    return imaging.sniff(path) is not None or path.suffix.lower() in IMAGE_SUFFIXES


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


def label_all(args: argparse.Namespace, out: Output, bar, counts: dict[str, int]) -> None:
    """Classify every image the walk finds that ``out`` does not hold yet; raises ClassifierError
    when the server stays away longer than --retry-timeout."""

    def images() -> Iterator[str]:
        for path, listed in todo(args, out, bar, counts):
            if listed or is_image(Path(path)):  # by content or by name; a manifest's every path
                yield path
            else:
                counts["not_images"] += 1
                bar.update(1)

    clf = Classifier(args.url, args.protocol, model=args.model, concurrency=args.concurrency, retry_for=args.retry_timeout,
                     credentials=credentials_from(args))  # fmt: skip
    try:
        clf.wait_ready(args.retry_timeout)
        for result in clf.classify_many(images(), args.topk):
            if result.error is not None and (result.error.transient or result.error.kind == "unauthenticated"):
                raise result.error  # the server stayed away longer than --retry-timeout, or refuses this caller
            record(result, out, bar, counts)
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


def label_on_ray(args: argparse.Namespace, out: Output, bar, counts: dict[str, int]) -> None:
    """The same rows through Ray Data (clients/label_ray.py); the bar's total is what Ray was handed."""
    from alexnet_server.clients import label_ray

    def not_image() -> None:
        counts["not_images"] += 1
        bar.update(1)

    def total(n: int) -> None:
        bar.total = n + counts["already_done"] + counts["unreadable"]
        bar.refresh()

    label_ray.label(args, todo(args, out, bar, counts), lambda result: record(result, out, bar, counts), not_image, total)


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    args.batch_size = args.batch_size or (64 if args.url else 16)
    if problem := _check_args(args):
        print(f"alexnet-label: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        out = open_output(args.out, args.resume, args.keep_failed, args.part_rows)
    except (ClassifierError, OSError, ValueError, json.JSONDecodeError) as exc:
        print(f"alexnet-label: error: {args.out}: {exc}", file=sys.stderr)
        return EXIT_USAGE

    counts = {"labelled": 0, "failed": 0, "not_images": 0, "unreadable": 0, "already_done": 0}
    bar = tqdm(total=None, unit="file", desc="labelling", disable=args.no_progress, dynamic_ncols=True)
    counter = Counter(args.source, args.recursive, bar)
    if args.engine == "local":
        counter.start()
    started = time.perf_counter()
    try:
        (label_on_ray if args.engine == "ray" else label_all)(args, out, bar, counts)
    except RuntimeError as exc:  # the Ray job failed
        bar.close()
        print(f"alexnet-label: error: {exc} (rows so far are in {args.out}; rerun with --resume)", file=sys.stderr)
        return EXIT_USAGE
    except ClassifierError as exc:
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
