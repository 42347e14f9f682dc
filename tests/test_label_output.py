"""alexnet-label's Parquet output: parts written whole, any name round-trips, resume keeps what
was labelled and retries what failed.  (The CSV and JSONL outputs are tested through the CLI in
test_clients.py; the Ray engine writes Parquet in test_label_ray.py.)"""

from __future__ import annotations

import os

import pytest

from alexnet_server.clients.classifier import Result
from alexnet_server.clients.label_output import ParquetOutput, open_output, parquet_schema, parts_of, read_rows
from alexnet_server.clients.protocol import LocalError

pq = pytest.importorskip("pyarrow.parquet", reason="the Parquet output needs pyarrow ([ray] extra)")

NOT_UTF8 = os.fsdecode(b"/photos/caf\xe9.jpg")


def _results() -> list[Result]:
    return [
        Result(0, "/photos/a.jpg", [("cat", 0.75), ("dog", 0.25)]),
        Result(1, NOT_UTF8, [("dog", 0.5), ("cat", 0.5)]),
        Result(2, "/photos/cut.jpg", None, LocalError("image refused: truncated", "refused")),
        Result(3, "/photos/b.png", [("fish", 1.0)]),
        Result(4, "/photos/gone.jpg", None, LocalError("cannot read: no such file or directory", "refused")),
    ]


def _write(path, part_rows=2, **kwargs) -> ParquetOutput:
    out = ParquetOutput(path, resume=False, part_rows=part_rows, **kwargs)
    for result in _results():
        out.write(result)
    out.close()
    return out


def test_parts_hold_every_row_once_with_the_schema(tmp_path):
    out = tmp_path / "labels.parquet"
    _write(out)
    parts = parts_of(out)
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert all(pq.read_schema(p).remove_metadata() == parquet_schema() for p in parts)
    rows = read_rows(out)
    assert [r["path"] for r in rows] == [r.source for r in _results()]  # the name that is not UTF-8 included
    assert pq.read_table(parts[0]).column("path").to_pylist()[1] == b"/photos/caf\xe9.jpg"  # the file system's bytes
    assert rows[0]["labels"] == ["cat", "dog"] and rows[0]["scores"] == [0.75, 0.25] and rows[0]["error"] == ""
    assert rows[2]["labels"] == [] and rows[2]["error"] == "image refused: truncated"
    # the directory is one table to the readers people use
    assert pq.read_table(out).num_rows == 5


def test_resume_keeps_the_labelled_and_retries_the_failed(tmp_path):
    out = tmp_path / "labels.parquet"
    _write(out)
    again = open_output(out, resume=True)
    assert again.done == {"/photos/a.jpg", NOT_UTF8, "/photos/b.png"} and again.failed_kept == 0
    # the failed rows are gone from the parts (part-00002 held only a failed row: deleted); new parts follow the old
    assert [r["path"] for r in read_rows(out)] == ["/photos/a.jpg", NOT_UTF8, "/photos/b.png"]
    assert [p.name for p in parts_of(out)] == ["part-00000.parquet", "part-00001.parquet"]
    again.write(Result(0, "/photos/cut.jpg", [("cat", 0.9)]))
    again.close()
    assert parts_of(out)[-1].name == "part-00003.parquet"
    assert sorted(r["path"] for r in read_rows(out)) == sorted(["/photos/a.jpg", NOT_UTF8, "/photos/b.png", "/photos/cut.jpg"])


def test_resume_keep_failed_counts_them(tmp_path):
    out = tmp_path / "labels.parquet"
    _write(out)
    before = {p.name: p.read_bytes() for p in parts_of(out)}
    again = ParquetOutput(out, resume=True, keep_failed=True)
    again.close()
    assert again.failed_kept == 2 and len(again.done) == 5
    assert {p.name: p.read_bytes() for p in parts_of(out)} == before  # nothing rewritten, nothing added


def test_rows_not_yet_in_a_part_are_redone_and_temporaries_ignored(tmp_path):
    """A crash between parts: the held rows were never written, so resume does not count them
    done; a writer's temporary file left by a kill is no part."""
    out = tmp_path / "labels.parquet"
    writer = ParquetOutput(out, resume=False, part_rows=3)
    for result in _results():
        writer.write(result)  # 3 rows in part-00000, 2 held in memory: then the process dies
    (out / ".part-00001.parquet.x1y2.tmp").write_bytes(b"PAR1 half a part")
    again = ParquetOutput(out, resume=True, keep_failed=True)
    assert again.done == {"/photos/a.jpg", NOT_UTF8, "/photos/cut.jpg"} and again.next_part == 1
    assert len(read_rows(out)) == 3 and pq.read_table(out).num_rows == 3


def test_a_slow_run_still_writes_parts(tmp_path):
    out = tmp_path / "labels.parquet"
    _write(out, part_rows=1000, part_seconds=0.0)  # every row past the time limit: a part each
    assert len(parts_of(out)) == 5 and len(read_rows(out)) == 5


def test_misuse_is_one_clear_error(tmp_path):
    _write(tmp_path / "labels.parquet")
    with pytest.raises(LocalError, match="exists: pass --resume"):
        ParquetOutput(tmp_path / "labels.parquet", resume=False)
    (tmp_path / "file.parquet").write_bytes(b"x")
    with pytest.raises(LocalError, match="is a file"):
        open_output(tmp_path / "file.parquet", resume=True)
    (tmp_path / "broken.parquet").mkdir()
    (tmp_path / "broken.parquet" / "part-00000.parquet").write_bytes(b"not parquet")
    with pytest.raises(LocalError, match="cannot be read back"):
        open_output(tmp_path / "broken.parquet", resume=True)
    with pytest.raises(LocalError, match="is a folder"):
        open_output(tmp_path, resume=True)
