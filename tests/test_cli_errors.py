"""Each CLI says the project's own errors in one line with their exit code, and lets anything else
-- a bug -- end with its traceback and exit 1, never dressed up as a usage error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# module: (arguments that make a project error, its exit code, what its one line says, the function a bug is injected into)
CLIS = {
    "alexnet_server.train.cli": (["--data", "{tmp}/no-such-data", "--out", "{tmp}/run"], 2, "alexnet-train: error:", "main"),
    "alexnet_server.export.cli": (["{tmp}/missing.pt", "--repository", "{tmp}/repo"], 2, "alexnet-export: error:", "main"),
    "alexnet_server.server.cli": (["--repository", "{tmp}/no-such-repository"], 2, "alexnet-serve: error:", "serve"),
    "alexnet_server.clients.classify_cli": (["{tmp}/photo.jpg", "--token-file", "{tmp}/no-such-token"], 2, "alexnet-classify: error:", "main"),
    "alexnet_server.clients.label": (["{tmp}", "--out", "{tmp}/labels.csv", "--token-file", "{tmp}/no-such-token", "--no-progress"], 2, "alexnet-label: error:", "label"),
    "alexnet_server.clients.bench": (["--token-file", "{tmp}/no-such-token", "--out", "{tmp}/bench"], 2, "alexnet-bench: error:", "measure_levels"),
}


def _run(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "ALEXNET_TOKEN_FILE": "", "ALEXNET_TOKEN": ""})  # fmt: skip


@pytest.fixture
def place(tmp_path, photo_path):
    (tmp_path / "photo.jpg").write_bytes(photo_path.read_bytes())
    return tmp_path


@pytest.mark.parametrize("module", list(CLIS))
def test_a_project_error_is_one_line_and_its_code(module, place):
    argv, code, words, _ = CLIS[module]
    argv = [a.format(tmp=place) for a in argv]
    proc = _run(f"import sys; from {module} import cli; sys.exit(cli({argv!r}))", place)
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("alexnet-")]
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(lines) == 1 and lines[0].startswith(words), proc.stderr[-2000:]


@pytest.mark.parametrize("module", list(CLIS))
def test_an_unexpected_exception_keeps_its_traceback_and_exits_1(module, place):
    argv, _, _, target = CLIS[module]
    argv = [a.format(tmp=place) for a in argv]
    code = (f"import sys, {module} as m\n"
            f"def broken(*args, **kwargs):\n    raise ValueError('an injected bug')\n"
            f"m.{target} = broken\nsys.exit(m.cli({argv!r}))\n")  # fmt: skip
    proc = _run(code, place)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback (most recent call last)" in proc.stderr and "ValueError: an injected bug" in proc.stderr, proc.stderr[-2000:]
