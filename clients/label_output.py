"""The rows alexnet-label writes, one per file: a CSV or JSON-lines file, or a directory of Parquet parts.

    labels.csv       path,labels,scores,error   (labels and scores joined by ';')
    labels.jsonl     {"path": ..., "top": [{"label": ..., "score": ...}], "error": ...}
    labels.parquet/  part-00000.parquet, part-00001.parquet, ...  (columns: PARQUET_SCHEMA)

The output is the truth of a run: ``--resume`` reads back which paths it holds and labels only
the rest.  CSV and JSONL rows are appended and flushed one by one (a row cut short by a crash
is dropped on resume and redone).  A Parquet part is written whole, atomically, once it holds
``part_rows`` rows or ``part_seconds`` have passed, and at the end: a crash loses at most the
rows not yet in a part, which resume then redoes; no part is ever half-written.  Parquet is for
runs too large for one text file: Spark, pandas, DuckDB and Ray Data read the directory as one
table.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path

from alexnet_server.clients.classifier import Result
from alexnet_server.clients.protocol import LocalError
from alexnet_server.contract import files

FIELDS = ("path", "labels", "scores", "error")
# File names are OS bytes; names that are not UTF-8 travel as Python's surrogate escapes and are
# written back byte for byte (CSV) or as JSON string escapes (JSONL), so every name round-trips.
NAME_ERRORS = "surrogateescape"
PART_ROWS = 65_536  # rows per Parquet part: ~2-4 MB written at a time
PART_SECONDS = 300.0  # ... or fewer rows, when a part has been open this long (a slow run still saves its work)
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


def require_pyarrow():
    """pyarrow with its compute and parquet modules; LocalError naming the install when it is missing."""
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.parquet
    except ImportError:
        raise LocalError("Parquet needs pyarrow: pip install pyarrow (or '.[ray]')") from None
    return pyarrow


def parquet_schema():
    """path: the file system's bytes (``os.fsdecode`` gives the name; any name round-trips, UTF-8 or
    not), labels: list<string> best first, scores: list<float32> (probabilities in [0, 1]),
    error: string, null where the file was labelled."""
    pa = require_pyarrow()
    return pa.schema([("path", pa.binary()), ("labels", pa.list_(pa.string())), ("scores", pa.list_(pa.float32())), ("error", pa.string())])


def open_output(path: Path, resume: bool, keep_failed: bool = False, part_rows: int = PART_ROWS) -> "Output":
    """The writer ``path``'s suffix names: .parquet (a directory of parts), .jsonl/.ndjson/.json, else CSV.
    LocalError when ``path`` exists without ``resume``, is not what its suffix says, or cannot be opened."""
    try:
        if path.suffix.lower() == ".parquet":
            return ParquetOutput(path, resume, keep_failed, part_rows)
        return LineOutput(path, resume, keep_failed)
    except (PermissionError, IsADirectoryError, NotADirectoryError, FileNotFoundError) as exc:  # the file system's answer on --out
        raise LocalError(f"{exc.strerror or exc}: {exc.filename or path}") from None


def _csv_line(row) -> str:
    """One row as the csv module writes it (quoting, \r\n)."""
    buffer = io.StringIO()
    csv.writer(buffer).writerow(row)
    return buffer.getvalue()


class LineOutput:
    """Rows appended and flushed one by one; CSV or JSON lines by the file's suffix.

    On resume, the rows of images that got a label are kept and skipped; failed rows are
    removed (the file is rewritten atomically) so that the retried images get one row each."""

    def __init__(self, path: Path, resume: bool, keep_failed: bool = False) -> None:
        self.path = path
        self.kind = "jsonl" if path.suffix.lower() in JSONL_SUFFIXES else "csv"
        self.done: set[str] = set()
        self.failed_kept = 0
        if path.is_dir():
            raise LocalError(f"{path} is a folder: name a .csv or .jsonl file, or a .parquet directory")
        if resume and path.is_file():
            self._recover(keep_failed)
        elif path.exists() and not resume:
            raise LocalError(f"{path} exists: pass --resume to continue it, or choose another --out")
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.is_file() or path.stat().st_size == 0
        self.fh = open(path, "a", encoding="utf-8", errors=NAME_ERRORS, newline="")
        self.writer = csv.writer(self.fh) if self.kind == "csv" else None
        if new and self.writer:
            self.writer.writerow(FIELDS)
            self.fh.flush()

    def _rows(self, text: str) -> list[tuple[str, str, str]]:
        """(path, error, the row written back) per row.  CSV is parsed as CSV, not by lines: a
        quoted file name may hold a newline; its rows are written back by the csv module."""
        if self.kind == "csv":
            out = []
            for row in list(csv.reader(io.StringIO(text, newline="")))[1:]:
                if row:
                    out.append((row[0], row[3] if len(row) > 3 else "", _csv_line(row)))
            return out
        out = []
        for number, line in enumerate(text.splitlines(keepends=True), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    out.append((row["path"], row.get("error", ""), line))
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                    raise LocalError(f"{self.path} line {number} is not an alexnet-label row: choose another --out, or remove the file") from None
        return out

    def _recover(self, keep_failed: bool) -> None:
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        text = data[:cut].decode("utf-8", NAME_ERRORS)  # a row cut short by a crash is dropped: it is redone
        rows = self._rows(text)
        kept = [r for r in rows if not r[1] or keep_failed]
        self.done = {p for p, _, _ in kept}
        self.failed_kept = sum(1 for r in kept if r[1])
        if len(kept) != len(rows) or cut < len(data):
            header = _csv_line(FIELDS) if self.kind == "csv" else ""
            files.atomic_write(self.path, (header + "".join(line for _, _, line in kept)).encode("utf-8", NAME_ERRORS))

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


class ParquetOutput:
    """``NAME.parquet/``: a directory of ``part-NNNNN.parquet`` files with ``parquet_schema()``.

    Rows are held in memory until a part is written (``part_rows`` rows or PART_SECONDS, and at
    ``close``): memory is bounded by ``part_rows``, whatever the run's size.  On resume, parts are
    read back by their path and error columns; failed rows are removed (each part holding one is
    rewritten atomically, or deleted when nothing is left) unless ``keep_failed``."""

    def __init__(self, path: Path, resume: bool, keep_failed: bool = False, part_rows: int = PART_ROWS, part_seconds: float = PART_SECONDS) -> None:
        self.pa = require_pyarrow()
        self.schema = parquet_schema()
        self.path, self.part_rows, self.part_seconds = path, part_rows, part_seconds
        self.done: set[str] = set()
        self.failed_kept = 0
        if path.exists() and not path.is_dir():
            raise LocalError(f"{path} is a file: --out NAME.parquet is a directory of Parquet parts")
        if path.exists() and not resume:
            raise LocalError(f"{path} exists: pass --resume to continue it, or choose another --out")
        path.mkdir(parents=True, exist_ok=True)
        parts = self._parts()
        if resume:
            for part in parts:
                self._recover(part, keep_failed)
        self.next_part = max((int(p.stem.split("-")[1]) for p in parts), default=-1) + 1
        self.rows: dict[str, list] = {name: [] for name in FIELDS}
        self.opened = time.monotonic()

    def _parts(self) -> list[Path]:
        return parts_of(self.path)

    def _recover(self, part: Path, keep_failed: bool) -> None:
        pq, pc = self.pa.parquet, self.pa.compute
        try:
            table = pq.read_table(part, columns=["path", "error"])
        except (OSError, self.pa.ArrowException) as exc:
            raise LocalError(f"{part} cannot be read back: {exc}") from None
        failed = pc.is_valid(table.column("error"))
        n_failed = pc.sum(failed).as_py() or 0
        if n_failed and not keep_failed:
            table = pq.read_table(part).filter(pc.invert(failed))
            if table.num_rows:
                with files.atomic_output(part) as fh:
                    pq.write_table(table, fh)
            else:
                part.unlink()
        elif keep_failed:
            self.failed_kept += n_failed
        self.done.update(os.fsdecode(p) for p in table.column("path").to_pylist())

    def write(self, result: Result) -> None:
        labels = result.labels or []
        self.rows["path"].append(os.fsencode(result.source))
        self.rows["labels"].append([label for label, _ in labels])
        self.rows["scores"].append([score for _, score in labels])
        self.rows["error"].append(str(result.error) if result.error else None)
        if len(self.rows["path"]) >= self.part_rows or time.monotonic() - self.opened >= self.part_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the rows held so far as the next part (atomically); nothing when none are held."""
        if self.rows["path"]:
            table = self.pa.table(self.rows, schema=self.schema)
            with files.atomic_output(self.path / f"part-{self.next_part:05d}.parquet") as fh:
                self.pa.parquet.write_table(table, fh)
            self.next_part += 1
            self.rows = {name: [] for name in FIELDS}
        self.opened = time.monotonic()

    def close(self) -> None:
        self.flush()


def parts_of(folder: Path) -> list[Path]:
    """A Parquet output's part files, in the order written."""
    parts = [p for p in folder.glob("part-*.parquet") if p.stem.split("-")[1].isdigit()]
    return sorted(parts, key=lambda p: int(p.stem.split("-")[1]))


def read_rows(path: Path) -> list[dict]:
    """Every row an output holds, as dicts with FIELDS (labels and scores as lists, error "" where
    labelled), in the order written: for tests, and for scripts that want one reader for all three."""
    if path.suffix.lower() == ".parquet":
        pq = require_pyarrow().parquet
        out = []
        for part in parts_of(path):
            for row in pq.read_table(part).to_pylist():
                out.append({**row, "path": os.fsdecode(row["path"]), "error": row["error"] or ""})
        return out
    with open(path, encoding="utf-8", errors=NAME_ERRORS, newline="") as fh:
        if path.suffix.lower() in JSONL_SUFFIXES:
            rows = [json.loads(line) for line in fh if line.strip()]
            return [{"path": r["path"], "labels": [t["label"] for t in r["top"]], "scores": [t["score"] for t in r["top"]], "error": r.get("error", "")}
                    for r in rows]  # fmt: skip
        return [{"path": r["path"], "labels": r["labels"].split(";") if r["labels"] else [],
                 "scores": [float(s) for s in r["scores"].split(";")] if r["scores"] else [], "error": r["error"]}
                for r in csv.DictReader(fh)]  # fmt: skip


Output = LineOutput | ParquetOutput  # what open_output gives: done, failed_kept, write(result), close()
