"""Clients against the real Triton: the library, alexnet-classify, alexnet-label (with a restart), alexnet-bench."""

from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet_server import imaging
from alexnet_server.clients import Classifier, ClassifierError
from alexnet_server.export.source import from_checkpoint
from tests import serving
from tests.conftest import ROOT

LABELS = ["cat", "dog", "fish"]


def run(module: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def expected_top(served_repository):
    classifier = from_checkpoint(served_repository.parent / "small.pt").classifier(10)

    def top(data: bytes) -> list[str]:
        with torch.no_grad():
            probs = classifier(torch.from_numpy(imaging.load(data))[None]).numpy()[0]
        return [LABELS[i] for i in np.argsort(-probs)]

    return top


def make_folder(root: Path, photo_path: Path, n: int = 10) -> tuple[Path, list[Path]]:
    """Nested folders of real images, plus a text file, an image-named text file and a corrupt JPEG."""
    photo = Image.open(photo_path).convert("RGB")
    images = []
    for i in range(n):
        folder = root / ("a" if i % 2 else "b/c")
        folder.mkdir(parents=True, exist_ok=True)
        j = i % 10
        view = photo.crop((j * 20, j * 10, photo.width - j * 5, photo.height - j * 15)).resize((200 + 10 * j + i, 240))
        path = folder / (f"img{i}.jpg" if i % 3 else f"img{i}.png")
        view.save(path)
        images.append(path)
    (root / "README.txt").write_text("not an image")
    (root / "a" / "fake.jpg").write_text("a text file wearing a .jpg name")
    data = photo_path.read_bytes()
    (root / "b" / "broken.jpg").write_bytes(data[: len(data) // 4])
    return root, images


# --- library ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_classifier_library(triton_server, photo_path, expected_top, protocol):
    data = photo_path.read_bytes()
    with Classifier(triton_server.url(protocol), protocol=protocol) as clf:
        (from_path, from_bytes) = clf.classify([photo_path, data], topk=2)
        assert [label for label, _ in from_path] == expected_top(data)[:2]
        assert from_path == from_bytes and 0 < from_path[0][1] <= 1
        assert clf.classify_async(data, topk=1).result(timeout=60)[0][0] == expected_top(data)[0]
        with pytest.raises(ClassifierError, match="image refused: not a recognised image"):
            clf.classify([b"definitely not an image"])
        # calls come and go (a Ray actor makes one per batch): they share the Classifier's threads
        # and so its connections, one per thread, never one per call
        for _ in range(6):
            assert len(list(clf.classify_many([data] * 3, topk=1))) == 3
        assert len(clf._connections) <= clf.concurrency + 1, len(clf._connections)


def test_classifier_against_alexnet_decodes_locally(triton_server, photo_path, expected_top):
    with Classifier(triton_server.grpc_url, model="alexnet") as clf:
        assert clf.info.input_datatype == "UINT8" and clf.info.input_dims == [3, 256, 256]
        assert [l for l, _ in clf.classify([photo_path], topk=3)[0]] == expected_top(photo_path.read_bytes())


def test_classifier_unreachable_server():
    port = serving.free_ports(1)[0]
    with Classifier(f"127.0.0.1:{port}", protocol="http") as clf:
        with pytest.raises(ClassifierError, match="cannot reach Triton"):
            clf.classify([b"x"])


# --- alexnet-classify ------------------------------------------------------------------------------------


def test_classify_cli(triton_server, photo_path, expected_top, tmp_path):
    proc = run("alexnet_server.clients", str(photo_path), "--url", triton_server.grpc_url, "--topk", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{photo_path}: {expected_top(photo_path.read_bytes())[0]} ")
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    proc = run("alexnet_server.clients", str(photo_path), str(bad), "--url", triton_server.http_url, "--protocol", "http", "--json")
    assert proc.returncode == 1
    rows = json.loads(proc.stdout)
    assert rows[0]["top"][0]["label"] in LABELS and "image refused" in rows[1]["error"]
    proc = run("alexnet_server.clients", str(photo_path), "--url", f"127.0.0.1:{serving.free_ports(1)[0]}")
    assert proc.returncode == 2 and "is not available at 127.0.0.1" in proc.stderr and "Traceback" not in proc.stderr
    # An image decoded here (--model alexnet) whose metadata is over Pillow's limit: one line, no traceback.
    proc = run("alexnet_server.clients", str(ztxt_png(tmp_path / "ztxt.png")), "--url", triton_server.grpc_url, "--model", "alexnet")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("ztxt.png") == 1 and "metadata too large" in proc.stderr, proc.stderr


def ztxt_png(path: Path) -> Path:
    """A small PNG with a 2 MB compressed text chunk, over Pillow's MAX_TEXT_CHUNK (../shared/cases/ztxt_2mb.png)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (2 * 2**20), zip=True)
    Image.new("RGB", (32, 32), (40, 80, 120)).save(path, pnginfo=info)
    return path


# --- alexnet-label --------------------------------------------------------------------------------------


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_label_folder(triton_server, photo_path, expected_top, tmp_path, suffix):
    root, images = make_folder(tmp_path / "photos", photo_path)
    out = tmp_path / f"labels{suffix}"
    proc = run("alexnet_server.clients.label", str(root), "--recursive", "--out", str(out), "--url", triton_server.grpc_url, "--concurrency", "4", "--topk", "2")
    assert proc.returncode == 1, f"a corrupt image means exit 1\n{proc.stderr[-2000:]}"
    rows = read_rows(out)
    by_path = {r["path"]: r for r in rows}
    assert len(rows) == len(by_path) == len(images) + 2, "every image once, plus the corrupt one and the text file named .jpg"
    for path in images:
        row = by_path[str(path)]
        labels = row["labels"].split(";") if suffix == ".csv" else [t["label"] for t in row["top"]]
        assert labels == expected_top(path.read_bytes())[:2], path
    broken = by_path[str(root / "b" / "broken.jpg")]
    assert "truncated" in broken["error"] and str(root) not in broken["error"], "the row's error does not repeat the path"
    assert "not a recognised image format" in by_path[str(root / "a" / "fake.jpg")]["error"]
    assert "1 not images" in proc.stderr and f"{len(images)} labelled, 2 failed" in proc.stderr
    assert proc.stderr.count("broken.jpg") == 1, "the path is said once"

    # --resume retries the failed rows (they fail again: replaced, not duplicated) and skips the rest
    proc = run("alexnet_server.clients.label", str(root), "--recursive", "--out", str(out), "--url", triton_server.grpc_url, "--resume")
    assert proc.returncode == 1, proc.stderr[-2000:]
    again = read_rows(out)
    assert sorted(r["path"] for r in again) == sorted(by_path), "one row per image after the retry"
    assert "0 labelled, 2 failed" in proc.stderr and f"{len(images)} already in" in proc.stderr
    # --keep-failed leaves them and says so, exit 1
    before = out.read_bytes()
    proc = run("alexnet_server.clients.label", str(root), "--recursive", "--out", str(out), "--url", triton_server.grpc_url, "--resume", "--keep-failed")
    assert proc.returncode == 1 and "2 failed rows kept (not retried" in proc.stderr, proc.stderr[-2000:]
    assert out.read_bytes() == before


def test_label_resume_finishes_the_job(triton_server, photo_path, tmp_path):
    """Rows that failed (here: files unreadable during the first run) get their label on --resume."""
    root = tmp_path / "photos"
    root.mkdir()
    data = photo_path.read_bytes()
    paths = [root / f"img{i}.jpg" for i in range(4)]
    for path in paths[:2]:
        path.write_bytes(data)
    for path in paths[2:]:
        path.write_bytes(data[:200])  # cut short: the server refuses them
    out = tmp_path / "labels.csv"
    assert run("alexnet_server.clients.label", str(root), "--out", str(out), "--url", triton_server.grpc_url).returncode == 1
    for path in paths[2:]:
        path.write_bytes(data)  # repaired
    proc = run("alexnet_server.clients.label", str(root), "--out", str(out), "--url", triton_server.grpc_url, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 labelled, 0 failed" in proc.stderr and "2 already in" in proc.stderr
    rows = read_rows(out)
    assert sorted(r["path"] for r in rows) == sorted(map(str, paths)) and not any(r["error"] for r in rows)


@pytest.fixture()
def open_dir():
    """A folder in /tmp that an unprivileged user may use (pytest's tmp_path is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="alexnet-label-"))
    os.chmod(folder, 0o777)
    yield folder
    for path in folder.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(folder, ignore_errors=True)


AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _as_nobody(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """This interpreter as the user nobody, importing this checkout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": "/tmp"}
    return subprocess.run([*AS_NOBODY, sys.executable, *argv], capture_output=True, text=True, env=env, cwd="/tmp", timeout=timeout)


@functools.cache
def _nobody_cannot_run() -> str | None:
    """Why the user nobody cannot run this checkout's alexnet-label (None when it can)."""
    probe = _as_nobody("-c", "import alexnet_server.clients.label")
    if probe.returncode == 0:
        return None
    closed = next((str(p) for p in (ROOT, *ROOT.parents) if not os.stat(p).st_mode & 0o001), None)
    return ("as root these cases run alexnet-label as the user nobody, who cannot use this checkout"
            + (f" ({closed} is closed to other users, e.g. a mktemp -d folder)" if closed else f": {probe.stderr.strip()[-200:]}")
            + "; run the tests from a folder others may enter, or as a non-root user")  # fmt: skip


def label_as_user(*args: str) -> subprocess.CompletedProcess:
    """alexnet-label as the user nobody when the tests run as root (root reads everything, so
    permissions would not show), else as ourselves.  Skips, saying why, where nobody cannot
    reach the checkout."""
    if os.geteuid() != 0:
        return run("alexnet_server.clients.label", *args)
    if why := _nobody_cannot_run():
        pytest.skip(why)
    return _as_nobody("-m", "alexnet_server.clients.label", *args)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_label_hostile_folder(triton_server, photo_path, open_dir, suffix):
    """A symlink loop, a dangling link, an unreadable sub-folder, a file name that is not UTF-8, a text
    chunk over Pillow's limit: every image gets one row, each bad entry is named once, the walk goes on."""
    root = open_dir / "photos"
    (root / "sub").mkdir(parents=True)
    data = photo_path.read_bytes()
    for name in ("a.jpg", "m.jpg", "sub/z.jpg", "t.jpg"):
        (root / name).write_bytes(data)
    os.symlink("loop", root / "loop")  # points at itself
    os.symlink("missing.jpg", root / "dangling.jpg")
    raw = os.fsencode(root) + b"/caf\xe9.jpg"  # Latin-1 bytes: not UTF-8
    with open(raw, "wb") as fh:
        fh.write(data)
    ztxt_png(root / "ztxt.png")
    (root / "locked").mkdir()
    (root / "locked" / "x.jpg").write_bytes(data)
    os.chmod(root / "locked", 0)
    out = open_dir / f"labels{suffix}"
    proc = label_as_user(str(root), "--recursive", "--out", str(out), "--url", triton_server.grpc_url, "--no-progress")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    rows = read_rows_raw(out)
    paths = [r["path"] for r in rows]
    expected = {str(root / n) for n in ("a.jpg", "m.jpg", "sub/z.jpg", "t.jpg", "ztxt.png", "dangling.jpg")} | {os.fsdecode(raw)}
    assert set(paths) - {str(root / "dangling.jpg")} == expected - {str(root / "dangling.jpg")} and len(paths) == len(set(paths)), paths
    by_path = {r["path"]: r for r in rows}
    assert "metadata too large" in by_path[str(root / "ztxt.png")]["error"]
    assert not by_path[os.fsdecode(raw)].get("error"), "a name that is not UTF-8 is classified and written"
    assert proc.stderr.count("loop") == 1 and "Too many levels of symbolic links" in proc.stderr, proc.stderr
    assert proc.stderr.count("locked") == 1 and "cannot read folder" in proc.stderr, proc.stderr
    # --resume recognises every name, the one that is not UTF-8 included
    proc = label_as_user(str(root), "--recursive", "--out", str(out), "--url", triton_server.grpc_url, "--resume", "--keep-failed")
    assert "0 labelled" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def read_rows_raw(path: Path) -> list[dict]:
    """Rows with the names exactly as written (CSV: the file system's bytes, read back as surrogate escapes)."""
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
            return list(csv.DictReader(fh))
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_label_unreadable_file_gets_a_row(triton_server, photo_path, open_dir):
    """Permission denied (as a non-root user): a failed row saying so, exit 1 -- not "not an image"."""
    root = open_dir / "photos"
    root.mkdir()
    (root / "ok.jpg").write_bytes(photo_path.read_bytes())
    (root / "secret.jpg").write_bytes(photo_path.read_bytes())
    os.chmod(root / "secret.jpg", 0)
    out = open_dir / "labels.csv"
    proc = label_as_user(str(root), "--out", str(out), "--url", triton_server.grpc_url, "--no-progress")
    assert proc.returncode == 1, proc.stderr[-2000:]
    rows = {Path(r["path"]).name: r for r in read_rows(out)}
    assert set(rows) == {"ok.jpg", "secret.jpg"} and not rows["ok.jpg"]["error"]
    assert "permission denied" in rows["secret.jpg"]["error"], rows["secret.jpg"]


def test_label_usage_errors(triton_server, tmp_path):
    proc = run("alexnet_server.clients.label", str(tmp_path / "missing"), "--out", str(tmp_path / "o.csv"))
    assert proc.returncode == 2 and "is neither a folder nor a manifest" in proc.stderr
    (tmp_path / "d").mkdir()
    (tmp_path / "o.csv").write_text("path,labels,scores,error\n")
    proc = run("alexnet_server.clients.label", str(tmp_path / "d"), "--out", str(tmp_path / "o.csv"), "--url", triton_server.grpc_url)
    assert proc.returncode == 2 and "--resume" in proc.stderr
    proc = run("alexnet_server.clients.label", str(tmp_path / "d"), "--out", str(tmp_path / "n.csv"), "--url", f"127.0.0.1:{serving.free_ports(1)[0]}", "--retry-timeout", "2")
    assert proc.returncode == 2 and "no answer" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_label_survives_a_server_restart(served_repository, photo_path, tmp_path):
    """Stop and restart Triton in the middle of a run: the output ends with every image exactly once."""
    root, images = make_folder(tmp_path / "photos", photo_path, n=300)
    (root / "b" / "broken.jpg").unlink()
    (root / "a" / "fake.jpg").unlink()
    http, grpc, metrics = serving.free_ports(3)

    def start():
        cmd = [sys.executable, "-m", "alexnet_server.server", "--repository", str(served_repository), "--config", "cpu",
               "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]  # fmt: skip
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_ready(proc):
        for line in proc.stdout:
            if "ready." in line:
                return
        raise AssertionError("server did not become ready")

    server = start()
    wait_ready(server)
    out = tmp_path / "labels.jsonl"
    label = subprocess.Popen([sys.executable, "-m", "alexnet_server.clients.label", str(root), "--recursive", "--out", str(out),
                              "--url", f"127.0.0.1:{grpc}", "--concurrency", "1", "--retry-timeout", "240", "--no-progress"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while (not out.exists() or len(out.read_text().splitlines()) < 5) and time.monotonic() < deadline:
            time.sleep(0.2)
        server.terminate()
        assert server.wait(timeout=60) == 0
        rows_while_down = len(out.read_text().splitlines())
        assert rows_while_down < len(images), "the run must still be going when the server stops"
        time.sleep(2)
        server = start()
        wait_ready(server)
        stdout, stderr = label.communicate(timeout=400)
    finally:
        label.kill()
        server.terminate()
        server.wait(timeout=60)
    assert label.returncode == 0, stderr[-3000:]
    paths = [json.loads(line)["path"] for line in out.read_text().splitlines()]
    assert sorted(paths) == sorted(str(p) for p in images), "every image exactly once"
    assert all("error" not in json.loads(line) for line in out.read_text().splitlines())


# --- alexnet-bench ------------------------------------------------------------------------------------------


def test_bench_numbers_and_files(triton_server, tmp_path):
    out = tmp_path / "bench"
    proc = run("alexnet_server.clients.bench", "--url", triton_server.grpc_url, "--concurrency", "1,4", "--duration", "3", "--warmup", "1",
               "--inprocess", "--repository", str(triton_server.repository), "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    levels = data["levels"]
    assert [(lv["target"], lv["concurrency"]) for lv in levels] == [("served", 1), ("inprocess", 1), ("served", 4), ("inprocess", 4)]
    for lv in levels:
        assert lv["throughput"] > 0 and lv["errors"] == 0, lv
        lat = lv["latency_ms"]
        assert lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"], lat
    served = levels[2]
    assert served["server_ms"]["alexnet"]["compute_infer"] > 0 and served["server_rss_mib"] > 0
    assert (out / "results.csv").read_text().count("\n") == 5
    assert (out / "latency.png").read_bytes()[:4] == b"\x89PNG"
    assert "served" in proc.stdout and "inprocess" in proc.stdout
    # What runs, beside the numbers: the served config's runtime, and the in-process model it is compared with.
    said = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if line.startswith(("served: ", "in-process: ")))
    meta = data["meta"]
    assert said["served"] == meta["served_runtime"] and said["in-process"] == meta["inprocess_runtime"] and " on CPU" in said["in-process"]


def test_bench_finds_images_wherever_they_sort_and_skips_broken_ones(triton_server, photo_path, tmp_path):
    folder = tmp_path / "mixed"
    (folder / "deep" / "er").mkdir(parents=True)
    for i in range(300):
        (folder / f"a{i:03d}.txt").write_text("not an image")
    (folder / "deep" / "er" / "zz.jpg").write_bytes(photo_path.read_bytes())
    png = encode_png(photo_path)
    (folder / "broken.png").write_bytes(png[: len(png) // 2])
    proc = run("alexnet_server.clients.bench", "--url", triton_server.grpc_url, "--images", str(folder), "--concurrency", "1", "--duration", "1",
               "--warmup", "0", "--out", str(tmp_path / "b"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "skipping" in proc.stderr and "broken.png" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "b" / "results.json").read_text())["meta"]["images"] == 1


def encode_png(photo_path: Path) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.open(photo_path).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bench_measures_only_its_server(triton_server):
    from alexnet_server.clients.load import ServerMemory

    memory = ServerMemory(triton_server.grpc_url)
    triton = [pid for pid in serving.descendants(triton_server.proc.pid) if Path(f"/proc/{pid}/comm").read_text().startswith("tritonserver")]
    assert memory.pid == triton_server.proc.pid and triton, "alexnet-serve (front and Triton below it) is the server measured"
    assert 50 < memory.rss_mib() < 8000


def test_bench_exits_non_zero_when_requests_fail(served_repository, photo_path, tmp_path):
    """A server that refuses every image (its preprocess limited to 100 pixels): exit 1 and the reason."""
    import re
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(served_repository, repo)
    config = repo / "preprocess" / "config.pbtxt"
    config.write_text(re.sub(r'(key: "max_pixels"\s*value: \{ string_value: ")\d+', r"\g<1>100", config.read_text()))
    server = serving.start(repo, tmp_path / "triton.log")
    try:
        proc = run("alexnet_server.clients.bench", "--url", server.grpc_url, "--concurrency", "1", "--duration", "1", "--warmup", "0", "--out", str(tmp_path / "b"))
    finally:
        server.stop()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "request(s) failed" in proc.stderr and "image too large" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_loadgen_singlestream(triton_server, tmp_path):
    out = tmp_path / "lg"
    proc = run("alexnet_server.clients.bench", "--url", triton_server.grpc_url, "--scenario", "singlestream", "--duration", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = (out / "mlperf_log_summary.txt").read_text()
    assert "SingleStream" in summary and ("Result is : VALID" in summary or "Result is : INVALID" in summary)
    assert "90th percentile latency" in summary or "90.00 percentile latency" in summary
    assert "Result is" in proc.stdout, "LoadGen's summary is printed"


@pytest.mark.parametrize(
    "status, kind",
    [("400", "refused"), ("StatusCode.INVALID_ARGUMENT", "refused"), ("500", "unavailable"), ("StatusCode.INTERNAL", "unavailable"),
     ("503", "unavailable"), ("StatusCode.UNAVAILABLE", "unavailable"), ("404", "unavailable"), ("StatusCode.NOT_FOUND", "unavailable"),
     ("StatusCode.UNIMPLEMENTED", "other")],
)
def test_error_kinds_come_from_status_codes(status, kind):
    """Whether a failure is retried is decided by the code each protocol reports, not by the message."""
    from tritonclient.utils import InferenceServerException

    from alexnet_server.clients.protocol import _translate

    error = _translate(InferenceServerException("a message that says nothing useful", status=status), "127.0.0.1:8001", "classify")
    assert error.kind == kind, (status, error.kind)


def test_bench_open_loop_counts_accepted_and_refused(triton_server, tmp_path):
    """--arrival-rates: requests on a schedule whatever the answers; a line per rate, JSON with the rate."""
    out = tmp_path / "open"
    proc = run("alexnet_server.clients.bench", "--url", triton_server.grpc_url, "--arrival-rates", "4", "--duration", "3", "--warmup", "0", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4/s accepted" in proc.stdout and "refused 0" in proc.stdout, proc.stdout
    (level,) = json.loads((out / "results.json").read_text())["levels"]
    assert level["arrival_rate"] == 4 and level["requests"] >= 8, level
