"""alexnet-label --engine ray on a real local Ray cluster: the local engine's rows, manifests, a killed
actor, a killed driver resumed.  The model runs in-process on the actors (the served repository's
latest version) or through the test Triton (--url)."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT

ray = pytest.importorskip("ray", reason="--engine ray needs Ray: make install adds the [ray] extra")
LABEL = "alexnet_server.clients.label"


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", LABEL, *args, "--no-progress"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def rows_of(path: Path) -> dict[str, dict]:
    """The rows of any output (CSV, JSONL, a Parquet directory) by path; a path twice fails."""
    from alexnet_server.clients.label_output import read_rows

    rows = read_rows(path)
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == len(rows), "a path written twice"
    return by_path


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A local Ray cluster as `ray start --head` makes one: 4 logical CPUs over the 2 real ones, a
    small object store, no dashboard.  Yields its address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tmp_path_factory.mktemp("ray")
    ray_bin = Path(sys.executable).parent / "ray"
    start = subprocess.run([str(ray_bin), "start", "--head", f"--port={port}", "--num-cpus=4", "--object-store-memory=200000000",
                            "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
                           capture_output=True, text=True, timeout=180)  # fmt: skip
    assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
    address = re.search(r"ray start --address='([^']+)'", start.stdout + start.stderr)
    yield address.group(1) if address else f"127.0.0.1:{port}"
    subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def hostile(module_tmp, photo_path) -> Path:
    """Photos in nested folders, a text file named .jpg, a cut JPEG, a plain text file, a symbolic-link
    loop, a dangling link, a name that is not UTF-8 and a PNG whose text chunk is over Pillow's limit."""
    from PIL import PngImagePlugin

    root = module_tmp / "hostile"
    photo = Image.open(photo_path).convert("RGB")
    for i in range(8):
        folder = root / ("a" if i % 2 else "b/c")
        folder.mkdir(parents=True, exist_ok=True)
        photo.crop((i * 20, i * 10, photo.width - i * 5, photo.height - i * 15)).save(folder / f"img{i}.{'png' if i % 3 == 0 else 'jpg'}")
    data = photo_path.read_bytes()
    (root / "README.txt").write_text("not an image")
    (root / "a" / "fake.jpg").write_text("a text file wearing a .jpg name")
    (root / "b" / "cut.jpg").write_bytes(data[: len(data) // 3])
    os.symlink("loop", root / "loop")
    os.symlink("missing.jpg", root / "dangling.jpg")
    with open(os.fsencode(root) + b"/caf\xe9.jpg", "wb") as fh:
        fh.write(data)
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (2 * 2**20), zip=True)
    Image.new("RGB", (32, 32), (40, 80, 120)).save(root / "ztxt.png", pnginfo=info)
    return root


def _summary(stderr: str) -> tuple[str, ...]:
    """The summary's counts: labelled, failed, unreadable entries, not images, already done."""
    found = re.search(r"(\d+) labelled, (\d+) failed, (\d+) unreadable entries, (\d+) not images, (\d+) already in", stderr)
    assert found, stderr[-1000:]
    return found.groups()


def test_ray_engine_writes_the_local_engines_rows(hostile, triton_server, ray_cluster, served_repository, tmp_path):
    """One hostile folder, three ways: the local engine, the ray engine through the same Triton (rows
    identical), the ray engine with the model in-process on its actors into Parquet parts (same
    paths, same failures, the labels of the served config run in this process)."""
    local = run(str(hostile), "--recursive", "--out", str(tmp_path / "local.csv"), "--url", triton_server.grpc_url)
    assert local.returncode == 1 and "Traceback" not in local.stderr, local.stderr[-3000:]
    through = run(str(hostile), "--recursive", "--out", str(tmp_path / "ray-url.csv"), "--engine", "ray", "--address", ray_cluster,
                  "--url", triton_server.grpc_url)  # fmt: skip
    assert through.returncode == 1 and "Traceback" not in through.stderr, through.stderr[-3000:]
    expected, got = rows_of(tmp_path / "local.csv"), rows_of(tmp_path / "ray-url.csv")
    assert got == expected, {p: (expected.get(p), got.get(p)) for p in set(expected) | set(got) if expected.get(p) != got.get(p)}
    assert _summary(through.stderr) == _summary(local.stderr), (local.stderr[-500:], through.stderr[-500:])
    assert through.stderr.count("Too many levels of symbolic links") == 1, through.stderr

    inproc = run(str(hostile), "--recursive", "--out", str(tmp_path / "ray-in.parquet"), "--part-rows", "4", "--engine", "ray",
                 "--address", ray_cluster, "--repository", str(served_repository))  # fmt: skip
    assert inproc.returncode == 1 and "Traceback" not in inproc.stderr, inproc.stderr[-3000:]
    mine = rows_of(tmp_path / "ray-in.parquet")
    assert len(list((tmp_path / "ray-in.parquet").glob("part-*.parquet"))) == -(-len(mine) // 4)
    assert set(mine) == set(expected) and _summary(inproc.stderr) == _summary(local.stderr)
    for path, row in expected.items():
        assert bool(row["error"]) == bool(mine[path]["error"]), (path, row, mine[path])
        if row["error"]:
            assert mine[path]["error"] == row["error"], (path, row["error"], mine[path]["error"])  # the same decode, the same reason
    from alexnet_server import imaging
    from alexnet_server.runtime import Version, served_configs

    model = served_configs(served_repository)["cpu"].open(Version.latest(served_repository))
    labels = (served_repository / "alexnet" / "labels.txt").read_text().splitlines()
    for path, row in mine.items():
        if not row["error"]:
            probs = model(imaging.load(Path(path).read_bytes())[None])[0]
            assert row["labels"] == [labels[i] for i in (-probs).argsort(kind="stable")[:5]], path


def test_manifests_name_what_to_label(hostile, ray_cluster, served_repository, tmp_path):
    """.txt, .csv and .parquet manifests: every listed path gets one row (a missing file one that says
    so), nothing unlisted is labelled; both engines read them the same way."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    listed = [str(hostile / "a" / "img1.jpg"), str(hostile / "b" / "c" / "img2.jpg"), str(hostile / "b" / "cut.jpg"), str(hostile / "gone.jpg")]
    (tmp_path / "m.txt").write_text("".join(f"{p}\n" for p in listed))
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "note"], *[[p, "x"] for p in listed]])
    pq.write_table(pa.table({"path": listed}), tmp_path / "m.parquet")
    for manifest in ("m.txt", "m.csv", "m.parquet"):
        out = tmp_path / f"{manifest}.csv"
        proc = run(str(tmp_path / manifest), "--out", str(out), "--engine", "ray", "--address", ray_cluster, "--repository", str(served_repository))
        assert proc.returncode == 1, (manifest, proc.stderr[-2000:])
        rows = rows_of(out)
        assert set(rows) == set(listed), (manifest, sorted(rows))
        assert rows[str(hostile / "gone.jpg")]["error"] == "cannot read: no such file or directory"
        assert "truncated" in rows[str(hostile / "b" / "cut.jpg")]["error"] and not rows[listed[0]]["error"]


def _many(root: Path, photo_path: Path, n: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"p{i:04d}.jpg" for i in range(n)]
    for path in paths:
        shutil.copyfile(photo_path, path)
    return paths


def _count(out: Path) -> int:
    """Rows written so far: lines after a CSV's header, or the rows of the Parquet parts written."""
    from alexnet_server.clients.label_output import read_rows

    if out.suffix == ".parquet":
        return len(read_rows(out)) if out.is_dir() else 0
    return max(0, out.read_text(errors="replace").count("\n") - 1) if out.is_file() else 0


def _wait_for_rows(out: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if _count(out) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} rows before the run ended or {timeout:.0f} s passed")


def test_a_killed_actor_is_replaced_and_nothing_is_lost_or_twice(ray_cluster, served_repository, photo_path, tmp_path):
    import psutil

    paths = _many(tmp_path / "many", photo_path, 120)
    out = tmp_path / "labels.csv"
    proc = subprocess.Popen([sys.executable, "-m", LABEL, str(tmp_path / "many"), "--out", str(out), "--engine", "ray", "--address", ray_cluster,
                             "--repository", str(served_repository), "--batch-size", "4", "--no-progress"],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for_rows(out, 5, proc)
    actors = [p for p in psutil.process_iter(["cmdline"]) if any("InProcessModel" in part for part in (p.info["cmdline"] or []))]
    assert actors, "no model actor process found"
    for actor in actors:
        actor.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    rows = rows_of(out)
    assert set(rows) == {str(p) for p in paths} and not any(r["error"] for r in rows.values())


def test_a_killed_driver_resumes_from_its_output(ray_cluster, served_repository, photo_path, tmp_path):
    paths = _many(tmp_path / "many", photo_path, 400)  # ~20 s of work here: the kill comes mid-run
    out = tmp_path / "labels.parquet"
    args = [sys.executable, "-m", LABEL, str(tmp_path / "many"), "--out", str(out), "--part-rows", "8", "--engine", "ray", "--address", ray_cluster,
            "--repository", str(served_repository), "--batch-size", "2", "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    _wait_for_rows(out, 16, proc)  # two parts written
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    before = _count(out)
    assert 0 < before < len(paths), before
    again = subprocess.run([*args, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(rows_of(out)) == sorted(map(str, paths)), "every file exactly once"
    assert f"{len(paths) - before} labelled" in again.stderr or "already in" in again.stderr, again.stderr[-1000:]


def test_a_local_ray_for_the_run(served_repository, photo_path, tmp_path):
    """Without --address the engine starts its own Ray (beside any other on the machine) and stops it."""
    paths = _many(tmp_path / "few", photo_path, 6)
    proc = run(str(tmp_path / "few"), "--out", str(tmp_path / "l.csv"), "--engine", "ray", "--ray-cpus", "2", "--repository", str(served_repository))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(rows_of(tmp_path / "l.csv")) == {str(p) for p in paths} and "6 labelled, 0 failed" in proc.stderr


def test_usage_errors_are_one_line(tmp_path):
    proc = run(str(tmp_path), "--out", str(tmp_path / "l.csv"), "--address", "auto")
    assert proc.returncode == 2 and "--address and --ray-cpus go with --engine ray" in proc.stderr and "Traceback" not in proc.stderr
    proc = run(str(tmp_path / "nope.json"), "--out", str(tmp_path / "l.csv"), "--engine", "ray")
    assert proc.returncode == 2 and "neither a folder nor a manifest" in proc.stderr
