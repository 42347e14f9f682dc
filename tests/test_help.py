"""--help of every console script and every ``python -m`` entry point: exit 0, usage printed (the first thing a newcomer types)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import ROOT

SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
MODULES = [f"alexnet_server.{m}" for m in ("train", "export", "server", "clients", "clients.label", "clients.bench", "server.health", "export.bench", "export.evaluate", "clients.label_bench")]


@pytest.mark.parametrize("target", [f"script:{name}" for name in SCRIPTS] + [f"module:{name}" for name in MODULES])
def test_help_works(target):
    kind, name = target.split(":")
    if kind == "script":
        module, _, function = SCRIPTS[name].partition(":")
        cmd = [sys.executable, "-c", f"import sys; sys.argv[0] = {name!r}; from {module} import {function}; sys.exit({function}(['--help']))"]
    else:
        cmd = [sys.executable, "-m", name, "--help"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, f"{name} --help: exit {proc.returncode}\n{proc.stderr[-2000:]}"
    assert "usage:" in proc.stdout and "Traceback" not in proc.stderr, proc.stdout[:500] + proc.stderr[-1000:]
    # an option without a default says what happens without it, in words (contract.cli.HelpFormatter)
    assert "(default: None)" not in " ".join(proc.stdout.split()), proc.stdout
