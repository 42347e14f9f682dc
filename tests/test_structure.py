"""The shape of the project: which stage imports what, and a client install without PyTorch."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import ROOT

PROJECT = {"contract", "imaging", "runtime", "train", "export", "server", "clients"}
SHARED = {"contract", "imaging", "runtime"}


def loaded_after(module: str) -> set[str]:
    """The top-level packages a fresh interpreter holds after ``import module``."""
    code = f"import sys, json, {module}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout))


@pytest.mark.parametrize(
    "module, allowed",
    [
        ("contract", set()),
        ("imaging", {"contract"}),
        ("runtime", {"contract", "imaging"}),
        ("clients", SHARED),
        ("clients.bench", SHARED),
        ("clients.label", SHARED),
        ("server.cli", SHARED),
        ("train.cli", SHARED),
        ("export.cli", SHARED),  # --plan-only runs without torch; a checkpoint's export loads train then
        ("export.source", SHARED | {"train"}),  # the one stage-to-stage import: export reads what training wrote
    ],
)
def test_stages_import_only_the_shared_packages(module, allowed):
    top = module.split(".")[0]
    project = loaded_after(module) & PROJECT - {top}
    assert project <= allowed, f"{module} loads {sorted(project - allowed)}"


# What each package's code may import, read from every import statement in it -- the lazy
# ones inside functions too, which a fresh interpreter's modules after import do not show.
IMPORTS_ALLOWED = {
    "contract": set(),
    "imaging": {"contract"},
    "runtime": {"contract", "imaging"},
    "train": {"contract", "imaging"},
    "export": SHARED | {"train.model", "train.checkpoint"},  # export reads the network and the checkpoint, nothing else of training
    "server": SHARED,
    "clients": SHARED,
}


def imported(paths: list[Path]) -> set[str]:
    """The project modules the files import, as written ("train.model", "runtime"), from the AST."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top = node.module.split(".")[0]
                # "from train import model" names the module train.model; "from runtime import Version" the package
                names |= {f"{node.module}.{a.name}" if (ROOT / node.module.replace(".", "/") / f"{a.name}.py").is_file() else node.module
                          for a in node.names} if top in PROJECT else {node.module}  # fmt: skip
    return {n for n in names if n.split(".")[0] in PROJECT}


@pytest.mark.parametrize("package", sorted(IMPORTS_ALLOWED))
def test_every_import_statement_stays_inside_the_design(package):
    found = imported(sorted((ROOT / package).rglob("*.py")))
    allowed = IMPORTS_ALLOWED[package] | {package}
    outside = sorted(n for n in found if n.split(".")[0] not in allowed and n not in allowed)
    assert not outside, f"{package}/ imports {outside} (allowed: {sorted(allowed - {package})})"


def test_the_import_walk_sees_lazy_imports(tmp_path):
    """A function-level import is found as well as a top-level one (the case the fresh interpreter misses)."""
    module = tmp_path / "m.py"
    module.write_text("import imaging\n\ndef f():\n    from train import data\n    from export.check import gate\n")
    assert imported([module]) == {"imaging", "train.data", "export.check"}


@pytest.mark.parametrize("module", ["contract", "imaging", "runtime", "clients", "clients.bench", "clients.label", "server.cli", "export.cli"])
def test_no_torch_where_none_is_needed(module):
    assert "torch" not in loaded_after(module), f"importing {module} loads PyTorch"


@pytest.mark.parametrize("path", ["model_repository/alexnet/model.py", "model_repository/preprocess/1/model.py"])
def test_triton_models_import_only_the_shared_packages(path):
    tree = ast.parse((ROOT / path).read_text())
    names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert names & PROJECT <= SHARED, f"{path} imports {sorted(names & PROJECT)}"
    assert "torch" not in names, f"{path} imports torch at the top (the CPU configs must not load it)"


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """A fresh venv with the base install alone (`pip install .`): what a client machine gets."""
    folder = tmp_path_factory.mktemp("client-venv")
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    cache = Path.home() / ".cache" / "pip"
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--cache-dir", str(cache), str(ROOT)],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


def test_a_client_install_has_no_torch_and_talks_to_the_server(client_venv, triton_server, photo_path, tmp_path):
    bin_ = client_venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    out = subprocess.run([str(bin_ / "python"), "-c", "import torch"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode != 0 and "No module named 'torch'" in out.stderr, "the base install must not bring PyTorch"
    classify = subprocess.run([str(bin_ / "alexnet-classify"), str(photo_path), "--url", triton_server.grpc_url, "--json"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)  # fmt: skip
    assert classify.returncode == 0, classify.stderr[-2000:]
    assert json.loads(classify.stdout)[0]["top"][0]["label"] in ("cat", "dog", "fish")
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(photo_path.read_bytes())
    label = subprocess.run([str(bin_ / "alexnet-label"), str(folder), "--out", str(tmp_path / "l.csv"), "--url", triton_server.grpc_url,
                            "--no-progress"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)  # fmt: skip
    assert label.returncode == 0 and "1 labelled" in label.stderr, label.stderr[-2000:]
    bench = subprocess.run([str(bin_ / "alexnet-bench"), "--url", triton_server.grpc_url, "--concurrency", "1", "--duration", "2",
                            "--warmup", "0.5", "--out", str(tmp_path / "b")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)  # fmt: skip
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert json.loads((tmp_path / "b" / "results.json").read_text())["levels"][0]["throughput"] > 0
