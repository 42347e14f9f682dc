"""alexnet-label: label every image in a folder through the AlexNet Triton server.

    alexnet-label photos/ --recursive --out labels.csv --concurrency 8
    alexnet-label photos/ --out labels.jsonl --resume       # after an interruption

Walks the folder lazily (the first request goes out before the folder is listed), skips
files that are not images by their content, keeps up to N requests in flight, and writes
one row per image as it completes, flushed, so a crash loses nothing already labelled.
While the server is unreachable or restarting, requests are retried with backoff.
Exit codes: 0 all labelled, 1 some images failed, 2 usage error or no server answered.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import imaging
from clients.classifier import Classifier, ClassifierError, Result
from clients.protocol import DEFAULT_URLS, PROTOCOLS

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alexnet-label", description=__doc__.split("\n\n")[0], add_help=add_help,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("folder", type=Path, metavar="DIR")
    parser.add_argument("--out", type=Path, default=Path("labels.csv"), help="FILE.csv or FILE.jsonl")
    parser.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--resume", action="store_true", help="skip images already in --out and append")
    parser.add_argument("--url", help=f"Triton address (default: {DEFAULT_URLS['grpc']} grpc, {DEFAULT_URLS['http']} http)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    parser.add_argument("--model", default="classify")
    parser.add_argument("--retry-timeout", type=float, default=120.0, help="seconds to keep retrying while the server is down")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def walk(root: Path, recursive: bool) -> Iterator[Path]:
    """Files under ``root``, produced while scanning (os.scandir), never listed up front."""
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as entries:
                subfolders = []
                for entry in entries:
                    if entry.is_file(follow_symlinks=True):
                        yield Path(entry.path)
                    elif recursive and entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                        subfolders.append(entry.path)
                pending.extend(reversed(sorted(subfolders)))
        except OSError as exc:
            print(f"alexnet-label: cannot read folder {folder}: {exc.strerror or exc}", file=sys.stderr)


class Output:
    """Rows appended and flushed one by one; CSV or JSON lines by the file's suffix."""

    FIELDS = ("path", "labels", "scores", "error")

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.kind = "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson", ".json") else "csv"
        self.done: set[str] = set()
        if resume and path.is_file():
            self._recover()
        elif path.exists() and not resume:
            raise ClassifierError(f"{path} exists: pass --resume to continue it, or choose another --out")
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.is_file() or path.stat().st_size == 0
        self.fh = open(path, "a", encoding="utf-8", newline="")
        self.writer = csv.writer(self.fh) if self.kind == "csv" else None
        if new and self.writer:
            self.writer.writerow(self.FIELDS)
            self.fh.flush()

    def _recover(self) -> None:
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut < len(data):  # a row cut short by a crash: drop it, it is redone
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)
            data = data[:cut]
        text = data.decode("utf-8")
        if self.kind == "csv":
            self.done = {row["path"] for row in csv.DictReader(io.StringIO(text)) if row.get("path")}
        else:
            self.done = {json.loads(line)["path"] for line in text.splitlines() if line.strip()}

    def write(self, result: Result) -> None:
        labels = result.labels or []
        error = str(result.error) if result.error else ""
        if self.writer:
            self.writer.writerow([result.source, ";".join(l for l, _ in labels), ";".join(f"{s:.6f}" for _, s in labels), error])
        else:
            row = {"path": result.source, "top": [{"label": l, "score": round(s, 6)} for l, s in labels]}
            if error:
                row["error"] = error
            self.fh.write(json.dumps(row) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


class Counter(threading.Thread):
    """Counts the files in the background so the progress bar learns its total."""

    def __init__(self, root: Path, recursive: bool, bar) -> None:
        super().__init__(daemon=True)
        self.root, self.recursive, self.bar = root, recursive, bar
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        for n, _ in enumerate(walk(self.root, self.recursive), 1):
            if self.stop.is_set():
                return
        self.bar.total = n
        self.bar.refresh()


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if not args.folder.is_dir():
        print(f"alexnet-label: error: {args.folder} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    if args.concurrency < 1 or args.topk < 1:
        print("alexnet-label: error: --concurrency and --topk must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        out = Output(args.out, args.resume)
    except (ClassifierError, OSError, ValueError, json.JSONDecodeError) as exc:
        print(f"alexnet-label: error: {args.out}: {exc}", file=sys.stderr)
        return EXIT_USAGE

    counts = {"labelled": 0, "failed": 0, "not_images": 0, "already_done": 0}
    bar = tqdm(total=None, unit="file", desc="labelling", disable=args.no_progress, dynamic_ncols=True)
    counter = Counter(args.folder, args.recursive, bar)
    counter.start()

    def todo() -> Iterator[Path]:
        for path in walk(args.folder, args.recursive):
            if str(path) in out.done:
                counts["already_done"] += 1
                bar.update(1)
            elif imaging.sniff(path) is None:  # by content: the header, not the name
                counts["not_images"] += 1
                bar.update(1)
            else:
                yield path

    started = time.perf_counter()
    clf = Classifier(args.url, args.protocol, model=args.model, concurrency=args.concurrency, retry_for=args.retry_timeout)
    try:
        clf.wait_ready(args.retry_timeout)
        for result in clf.classify_many(todo(), args.topk):
            if result.error is not None and result.error.transient:
                raise result.error  # the server stayed away longer than --retry-timeout
            out.write(result)
            counts["failed" if result.error else "labelled"] += 1
            bar.update(1)
            if result.error:
                bar.write(f"alexnet-label: {result.source}: {result.error}")
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
        clf.close()
        out.close()
    bar.close()
    seconds = time.perf_counter() - started
    done = counts["labelled"] + counts["failed"]
    print(
        f"alexnet-label: {counts['labelled']} labelled, {counts['failed']} failed, {counts['not_images']} not images, "
        f"{counts['already_done']} already in {args.out}; {done / seconds if seconds else 0:.1f} img/s over {seconds:.1f} s",
        file=sys.stderr,
    )
    return EXIT_SOME_FAILED if counts["failed"] else EXIT_OK


def cli(argv: list[str] | None = None) -> int:
    return main(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
