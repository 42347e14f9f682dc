"""What alexnet-label reads, and what a labelling engine yields.

- Sources: a folder walked lazily (``walk``), or a manifest of paths streamed (``manifest_paths``:
  .txt, .csv, .parquet); ``candidates`` gives either as (path, listed); ``is_image`` says whether a
  folder's file gets a row (by its header, or by its name).
- Events: an engine (``alexnet-label``'s local one, clients/label.py; the Ray one,
  clients/label_ray.py) is a function from candidates to an iterator of ``Total`` (how many it
  was handed, where it knows before labelling: the Ray engine's first event), ``NotImage`` (a
  folder's file that gets no row) and ``Result`` (a row: clients.classifier.Result).

The CLI, both engines and ``alexnet-bench`` (its --images folder) import this module; it imports
none of them.
"""

from __future__ import annotations

import csv
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

from alexnet_server import imaging
from alexnet_server.clients.classifier import Result
from alexnet_server.clients.label_output import NAME_ERRORS, require_pyarrow
from alexnet_server.clients.protocol import LocalError

# Files with these names are images to the user even when their header is unreadable: they
# get a row (failed, with the reason) instead of silently counting as "not an image".
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".ico"}


@dataclass(frozen=True)
class Total:
    """How many candidates the engine was handed (the Ray engine knows once they are in its store)."""

    count: int


@dataclass(frozen=True)
class NotImage:
    """A folder's file that is not an image by its header or its name: counted, no row."""

    path: str


Event = Union[Total, NotImage, Result]


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
