"""The shape of the project: which stage imports what, a client install without PyTorch, and a non-editable install that runs anywhere."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

from tests.conftest import ROOT

NS = "alexnet_server"  # the one import name; its subpackages are the repository's top-level folders
PROJECT = {"contract", "imaging", "runtime", "train", "export", "server", "clients"}
SHARED = {"contract", "imaging", "runtime"}


def loaded_after(module: str) -> set[str]:
    """What a fresh interpreter holds after ``import alexnet_server.<module>``: the project's
    subpackages by their short names, every other package by its top-level name."""
    short = f"m.split('.')[1] if m.startswith('{NS}.') else m.split('.')[0]"
    code = f"import sys, json, {NS}.{module}; print(json.dumps(sorted({{{short} for m in sys.modules}})))"
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


def _short(module: str) -> str:
    return module.removeprefix(NS + ".")


def imported(paths: list[Path]) -> set[str]:
    """The project modules the files import, by their short names ("train.model", "runtime"), from the AST."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {_short(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module == NS:  # from alexnet_server import imaging
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                module = _short(node.module)
                # "from alexnet_server.train import model" names train.model; "...runtime import Version" the package
                names |= {f"{module}.{a.name}" if (ROOT / module.replace(".", "/") / f"{a.name}.py").is_file() else module for a in node.names}
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
    module.write_text("from alexnet_server import imaging\n\ndef f():\n    from alexnet_server.train import data\n    from alexnet_server.export.check import gate\n")
    assert imported([module]) == {"imaging", "train.data", "export.check"}


@pytest.mark.parametrize("module", ["contract", "imaging", "runtime", "clients", "clients.bench", "clients.label", "server.cli", "export.cli"])
def test_no_torch_where_none_is_needed(module):
    assert "torch" not in loaded_after(module), f"importing {module} loads PyTorch"


@pytest.mark.parametrize("path", ["model_repository/alexnet/model.py", "model_repository/preprocess/1/model.py"])
def test_triton_models_import_only_the_shared_packages(path):
    project = {n.split(".")[0] for n in imported([ROOT / path])}
    assert project <= SHARED, f"{path} imports {sorted(project)}"
    tree = ast.parse((ROOT / path).read_text())
    third_party = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    third_party |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert "torch" not in third_party, f"{path} imports torch (the CPU configs must not load it)"


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


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory) -> Path:
    """``pip install --no-deps .`` (not editable) into a venv that sees this venv's packages through a
    .pth file: the project's own files come from the wheel alone, the dependencies are not fetched."""
    import sysconfig

    folder = tmp_path_factory.mktemp("installed-venv")
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True).stdout.strip()
    visible = [p for p in sys.path if p.endswith("site-packages")] or [sysconfig.get_paths()["purelib"]]
    (Path(site) / "test-venv-packages.pth").write_text("".join(f"{p}\n" for p in visible))
    cache = Path.home() / ".cache" / "pip"
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--cache-dir", str(cache), str(ROOT)],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


def test_a_non_editable_install_exports_serves_and_classifies_outside_the_checkout(installed_venv, tmp_path, photo_path):
    """From a folder outside the checkout, with nothing of it on the path: the template comes from the
    installed package, the default served repository is ./served, one import name is added."""
    from tests import serving
    from tests.helpers import small_checkpoint

    bin_ = installed_venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "ALEXNET_REPOSITORY")}
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(bin_ / "python"), "-c", "import alexnet_server, importlib.util as u; print(alexnet_server.__file__);"
                            "print([n for n in ('contract', 'imaging', 'runtime', 'train', 'export', 'server', 'clients') if u.find_spec(n)])"],
                           capture_output=True, text=True, env=env, cwd=work)  # fmt: skip
    package, generic = where.stdout.splitlines()
    assert str(installed_venv) in package and str(ROOT) not in package, package
    assert generic == "[]", f"generic top-level names importable: {generic}"
    ckpt = small_checkpoint(tmp_path / "small.pt")
    export = subprocess.run([str(bin_ / "alexnet-export"), str(ckpt), "--calibration", "/nonexistent", "--gate-images", "0"],
                            capture_output=True, text=True, env=env, cwd=work, timeout=900)  # fmt: skip
    assert export.returncode == 0, export.stderr[-3000:]
    assert (work / "served" / "alexnet" / "1" / "model.onnx").is_file() and (work / "served" / "alexnet" / "configs" / "cpu.pbtxt").is_file()
    ports = serving.free_ports(3)
    out = tmp_path / "serve.out"
    serve = subprocess.Popen([str(bin_ / "alexnet-serve"), "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]),
                              "--health-interval", "0"], env=env, cwd=work, stdout=open(out, "w"), stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while "alexnet-serve: ready." not in out.read_text() and serve.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "alexnet-serve: ready." in out.read_text(), out.read_text()[-3000:]
        classify = subprocess.run([str(bin_ / "alexnet-classify"), str(photo_path), "--url", f"127.0.0.1:{ports[1]}", "--json"],
                                  capture_output=True, text=True, env=env, cwd=work, timeout=300)  # fmt: skip
        assert classify.returncode == 0, classify.stderr[-2000:]
        assert json.loads(classify.stdout)[0]["top"][0]["label"] in ("cat", "dog", "fish")
    finally:
        code = serving.stop(serve)
    assert code == 0, out.read_text()[-2000:]


def test_no_module_imports_itself_round_about():
    """The modules' import graph, every import statement counted (lazy ones too), has no cycle:
    a cycle is two modules that cannot be understood, tested or moved one without the other."""
    import graphlib

    sys.path.insert(0, str(ROOT / "scripts"))
    import import_walk

    every = [f"{NS}.{path.relative_to(ROOT).with_suffix('').as_posix().replace('/', '.')}".removesuffix(".__init__")
             for package in sorted(PROJECT) for path in sorted((ROOT / package).rglob("*.py"))]  # fmt: skip
    found = import_walk.walk(every, ROOT)
    assert f"{NS}.clients.label_ray" in found.files and len(found.files) > 60, "every module of the project is in the graph"
    graph: dict[str, set[str]] = {}
    for module, path in found.files.items():
        targets = set()
        for target, names, _line, _scope, _guarded in import_walk._imports(path, module):
            if target.split(".")[0] != NS:
                continue
            for name in [f"{target}.{n}" for n in names if import_walk.module_file(f"{target}.{n}", ROOT)] or [target]:
                if name in found.files and name != module and not module.startswith(name + "."):
                    targets.add(name)
        graph[module] = targets
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")
