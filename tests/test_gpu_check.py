"""The GPU check's first minute, on a CPU: a bundle made for another Python than the tests'
unpacks, and the bundled Triton's python-backend stub starts with that interpreter installed
outside the system paths (a pyenv build, as on machines with Python from pyenv, uv or /opt).

Without torch: the full run needs a GPU (or a torch for that Python), the stub's start does not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PYVER = "3.12"  # the GPU machine's Python; the tests' venv is 3.11


def _pyenv_python() -> Path | None:
    found = sorted(Path.home().glob(f".pyenv/versions/{PYVER}.*/bin/python{PYVER}"))
    return found[-1] if found else None


@pytest.fixture(scope="module")
def bundle(module_tmp) -> Path:
    if _pyenv_python() is None:
        pytest.skip(f"needs a pyenv build of Python {PYVER} (~/.pyenv/versions/{PYVER}.*)")
    dest = module_tmp / "bundle"
    env = {**os.environ, "PYVER": PYVER, "XZ_LEVEL": "0", "GPU_CHECK_DATA": "0"}
    proc = subprocess.run(["bash", "scripts/gpu_check", "bundle", str(dest)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dest


def _in_bundle_python(bundle: Path, work: Path, body: str) -> dict:
    """Run ``body`` under the pyenv Python with scripts/gpu_check.py imported; it prints JSON."""
    script = f"import json, sys\nfrom pathlib import Path\nsys.path.insert(0, {str(ROOT / 'scripts')!r})\nimport gpu_check\n{body}"
    proc = subprocess.run([str(_pyenv_python()), "-c", script, str(bundle), str(work)], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH")})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_stub_starts_under_a_python_outside_the_system_paths(bundle, tmp_path):
    got = _in_bundle_python(bundle, tmp_path, """
paths = gpu_check.unpack(Path(sys.argv[1]), Path(sys.argv[2]))
import subprocess
numpy = subprocess.run([str(paths["stub_python"]), "-c", "import numpy; print(numpy.__version__)"], capture_output=True, text=True,
                       env=gpu_check.server_env(paths)).stdout.strip()
print(json.dumps({"libpython": paths["libpython"], "stub": gpu_check.stub_problem(paths),
                  "without_libdir": gpu_check.stub_problem({**paths, "libpy": None}), "stub_numpy": numpy}))
""")
    assert got["libpython"].startswith("this Python's"), got
    assert got["stub"] is None, f"the stub did not start: {got['stub']}"
    # Item 1 of the GPU-check review: without LIBDIR on the loader path the stub cannot load.
    assert got["without_libdir"] and "libpython3.12.so.1.0" in got["without_libdir"], got
    assert got["stub_numpy"] == "1.26.4", "the stub's NumPy is the bundle's 1.x"


def test_a_bundle_for_another_python_is_refused_at_once(bundle, tmp_path):
    """The tests' own Python (3.11) with the 3.12 bundle: one line saying so, no minutes lost."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_check

    with pytest.raises(gpu_check.CheckFailed, match=r"made for Python 3\.12, this is Python 3\.11"):
        gpu_check.unpack(bundle, tmp_path)


def test_every_failure_writes_the_report(bundle, tmp_path):
    """A run that cannot start (wrong Python) still writes gpu_check.json with the reason and exits 1."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--bundle", str(bundle), "--out", str(out), "--work", str(tmp_path / "w")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    report = json.loads((out / "gpu_check.json").read_text())
    assert proc.returncode == 1 and report["ok"] is False and report["stage"] == "unpack"
    assert "made for Python 3.12" in report["error"] and proc.stdout.strip().splitlines()[-1].startswith("gpu_check: FAILED")



@pytest.mark.parametrize(
    "lines, ok",
    [
        (['"alexnet_0_0: pytorch bf16 on NVIDIA H200 (0 thread(s)), model.pt"', '"preprocess_0_0: decoding on GPU (nvJPEG) for JPEGs, CPU for the rest, 8 CPU thread(s)"'], True),
        # A silent CPU fallback: every served figure would still come out, and this must fail.
        (['"alexnet_0_0: pytorch f32 on CPU (16 thread(s)), model.pt"', '"preprocess_0_0: decoding on GPU (nvJPEG) for JPEGs, CPU for the rest, 8 CPU thread(s)"'], False),
        (['"alexnet_0_0: pytorch bf16 on NVIDIA H200 (0 thread(s)), model.pt"', '"preprocess_0_0: decoding on CPU (torchvision has no CUDA decoder), 8 CPU thread(s)"'], False),
        (['"alexnet_0_0: pytorch bf16 on NVIDIA H200 (0 thread(s)), model.pt"', '"preprocess_0_0: decoding on GPU (nvJPEG) for JPEGs, CPU for the rest, 8 CPU thread(s)"',
          '"GPU decode failed (RuntimeError: nvjpeg); this batch is decoded on the CPU"'], False),
        ([], False),  # no words from the models at all
    ],
)
def test_serving_on_the_gpu_is_read_from_the_models_own_log_lines(tmp_path, lines, ok):
    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_check

    log = tmp_path / "triton.log"
    log.write_text("".join(f"I1201 12:00:00.000000 1 pb_stub.cc:1] {line}\n" for line in lines))
    report: dict = {"checks": {}}
    gpu_check.served_on_device(report, log, "NVIDIA H200")
    assert report["checks"]["served_on_device"]["ok"] is ok
    gpu_check.served_on_device(report, log, None)
    assert report["checks"]["served_on_device"]["ok"] is None, "a CPU dry run skips the check: never counted as passed"


@pytest.mark.parametrize("debian", [True, False])
def test_libpython_fallback_only_where_the_standard_library_fits(tmp_path, monkeypatch, debian):
    """No libpython on the machine: the carried one (a pyenv build, math in lib-dynload) is used,
    unless this Python builds math in (Debian/Ubuntu), whose lib-dynload then lacks it; that
    fails in the first second with the reason, not as "No module named 'math'" minutes later."""
    import lzma

    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_check

    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    (tmp_path / f"libpython{pyver}.so.1.0.xz").write_bytes(lzma.compress(b"not really a library"))
    monkeypatch.setattr(gpu_check.sysconfig, "get_config_var", lambda name: str(tmp_path / "no-libdir"))
    monkeypatch.setattr(gpu_check, "sh", lambda cmd, timeout=30: "")  # ldconfig -p knows no libpython
    builtins = tuple(m for m in sys.builtin_module_names if m != "math") + (("math",) if debian else ())
    monkeypatch.setattr(gpu_check.sys, "builtin_module_names", builtins)
    if debian:
        with pytest.raises(gpu_check.CheckFailed, match=r"builds math.* in \(a Debian/Ubuntu build\)"):
            gpu_check._libpython(tmp_path, tmp_path, pyver)
    else:
        folder, source = gpu_check._libpython(tmp_path, tmp_path, pyver)
        assert source.startswith("the bundle's") and (Path(folder) / f"libpython{pyver}.so.1.0").read_bytes() == b"not really a library"


# --- the GPU machine's bare stack, on this CPU ---------------------------------------------------------------

# What the GPU machine is known to have: torch with its torchvision (which brings Pillow) and NumPy 2.
# torch 2.14.1 is the release on this machine's disk for the tests' Python (the GPU machine has 2.11
# for 3.12: other releases would download gigabytes).
BARE_STACK = ["torch==2.14.1", "torchvision==0.29.1", "numpy>=2"]


def _cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alexnet-server"


@pytest.fixture(scope="session")
def bare_venv() -> Path:
    """A venv holding exactly BARE_STACK (and what torch itself requires), built once (~1.5 min,
    5.5 GB) and kept in the user's cache, keyed by the tests' Python and the stack."""
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    folder = _cache() / f"bare-venv-py{pyver}-{'-'.join(p.replace('==', '').replace('>=', 'ge') for p in BARE_STACK)}"
    if not (folder / ".complete").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        free_gb = shutil.disk_usage(folder.parent).free / 2**30
        assert free_gb > 7, f"the bare venv takes 5.5 GB under {folder.parent}, which has {free_gb:.1f} GB free (set XDG_CACHE_HOME elsewhere)"
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(folder)], check=True, timeout=300)
        pip = subprocess.run([str(folder / "bin" / "python"), "-m", "pip", "install", "-q", *BARE_STACK], capture_output=True, text=True, timeout=1800)
        assert pip.returncode == 0, pip.stderr[-2000:]
        (folder / ".complete").write_text("")
    return folder


@pytest.fixture(scope="module")
def bare_bundle(module_tmp) -> Path:
    """A bundle for the tests' own Python, with the Fashion-MNIST subset the run trains on."""
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file():
        pytest.skip("needs Debian's dataset-fashion-mnist (make test installs it)")
    dest = module_tmp / "bundle-here"
    env = {**os.environ, "PYVER": f"{sys.version_info.major}.{sys.version_info.minor}", "XZ_LEVEL": "0", "VENV_PY": sys.executable}
    proc = subprocess.run(["bash", "scripts/gpu_check", "bundle", str(dest)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dest


def _bare_run(venv: Path, bundle: Path, tmp: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """scripts/gpu_check.py as on the GPU machine: that venv's python first on PATH, nothing of
    the tests' environment, and no nginx on PATH (the GPU machine has none)."""
    dirs = [str(venv / "bin")] + [d for d in ("/usr/local/bin", "/usr/bin", "/bin") if not Path(d, "nginx").exists()]
    env = {"HOME": str(Path.home()), "PATH": os.pathsep.join(dirs), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
    out = tmp / "out"
    cmd = ["python", str(ROOT / "scripts" / "gpu_check.py"), "--bundle", str(bundle), "--out", str(out), "--work", str(tmp / "work"),
           "--device", "cpu", "--quick", "--level-seconds", "3", *extra]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=1200)
    report = json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").is_file() else {}
    return proc, report


@pytest.mark.slow
def test_the_dry_run_passes_on_the_gpu_machines_bare_stack(bare_venv, bare_bundle, tmp_path):
    """Issue 32's dry run: train, export, serve and check with only torch, torchvision, Pillow and
    NumPy 2 installed; everything else the stages import comes from the bundle."""
    proc, report = _bare_run(bare_venv, bare_bundle, tmp_path)
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0 and report.get("ok") is True, tail
    assert report["stage"] == "done" and report["env"]["numpy"].startswith("2."), report["env"]
    imports = report["preflight"]["imports"]
    assert set(imports) == {"train", "export", "serve", "check"} and all(v["checked"] > 0 and v["failed"] == [] for v in imports.values()), imports
    # No nginx on PATH: the check serves Triton alone and says why.
    assert report["server"]["front"] == "none" and "no nginx on PATH" in report["server"]["front_why"], report["server"]
    assert "front: no nginx on PATH" in proc.stdout
    # What a CPU cannot check is reported as skipped, never counted as passed.
    assert set(report["skipped"]) == {"gpu_decode_pixels", "served_on_device"}, report["skipped"]
    ran = {name for name, c in report["checks"].items() if c.get("ok") is not None}
    assert ran == {"served_parity", "dynamic_batching", "served_jpeg_vs_cpu_decode", "bad_image"}
    assert report["bench"]["inprocess_model_only"]["fraction_of_bf16_peak"] is None, "no peak without a GPU"


def test_a_package_the_bundle_lacks_fails_in_the_preflight(bare_venv, bare_bundle, tmp_path):
    """Without the carried protobuf: one line naming the stage and the module, before training starts."""
    bundle = tmp_path / "bundle"
    shutil.copytree(bare_bundle, bundle, copy_function=os.link)
    for wheel in (bundle / "wheels").glob("protobuf-*.whl"):
        wheel.unlink()
    proc, report = _bare_run(bare_venv, bundle, tmp_path)
    assert proc.returncode == 1 and report["stage"] == "preflight" and "train" not in report, report.get("error")
    assert re.match(r"pre-flight: the (train|export|serve|check) stage cannot import \S+ \(.+\): ModuleNotFoundError: No module named 'google'", report["error"]), report["error"]
    failed = {stage: [m for m, _, _ in v["failed"]] for stage, v in report["preflight"]["imports"].items()}
    assert "alexnet_server.server.config_choice" in failed["serve"], failed  # it reads the configs on import
    assert failed["train"] == [], "training reads no Triton config"
    assert proc.stdout.strip().splitlines()[-1].startswith("gpu_check: FAILED")


def test_the_bundle_carries_what_the_stages_import_and_the_gpu_machine_lacks():
    sys.path.insert(0, str(ROOT / "scripts"))
    import gpu_check

    carried = {line.split("==")[0] for line in gpu_check.carried_distributions()}
    assert {"protobuf", "tritonclient", "tqdm"} <= carried, carried
    assert not carried & {"torch", "torchvision", "numpy", "pillow", "Pillow"}, "the GPU machine has those"
    # Nothing the check does not run is carried: ONNX, OpenVINO, TensorRT, gRPC.
    assert not carried & {"onnx", "onnxruntime", "openvino", "tensorrt", "grpcio"}, carried


@pytest.mark.parametrize(
    "name, peak",
    [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0), ("NVIDIA H100 NVL", None), ("NVIDIA A100-SXM4-80GB", None)],
)
def test_the_peak_comes_from_the_gpus_name(name, peak):
    from alexnet_server.contract import gpu

    got, why = gpu.bf16_peak_tflops(name)
    assert got == peak, why
    assert why, "the report says where the peak came from, or why there is none"


def test_device_command_is_one_prepared_line(tmp_path):
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "bundle.json").write_text(json.dumps({"python": "3.11", "carried": []}))
    wrong = subprocess.run(["bash", "scripts/gpu_check", "device-command", str(bundle)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and "PYVER=3.12 scripts/gpu_check bundle" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1
    (bundle / "bundle.json").write_text(json.dumps({"python": "3.12", "carried": []}))
    got = subprocess.run(["bash", "scripts/gpu_check", "device-command", str(bundle)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    comments, command = [line for line in got.stdout.splitlines() if line.startswith("#")], [line for line in got.stdout.splitlines() if line and not line.startswith("#")]
    assert len(command) == 1 and len(command[0]) <= 2000, "the device tool takes one command of at most 2,000 characters"
    assert f"--bundle {bundle}" in command[0] and '--out "$OUT"' in command[0] and "timeout" in command[0]
    assert f'carry=["{bundle}"]' in comments[0] and "timeout_s=600" in comments[0]


def test_the_import_walk_tells_eager_lazy_and_guarded_imports(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import import_walk

    pkg = tmp_path / "stage"
    pkg.mkdir()
    (tmp_path / "alexnet_server").mkdir()
    (tmp_path / "alexnet_server" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text("from alexnet_server.stage import cli\n")
    (pkg / "cli.py").write_text(
        "import json\nimport eagerpkg.sub\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import typed_only\n"
        "try:\n    import optional_pkg\nexcept ImportError:\n    optional_pkg = None\n"
        "def main():\n    import lazypkg\n    from alexnet_server.stage import heavy\n")
    (pkg / "heavy.py").write_text("import heavypkg\n")
    found = import_walk.walk(["alexnet_server.stage"], tmp_path)
    uses = {u.module: u for u in found.uses}
    assert set(uses) == {"eagerpkg.sub", "optional_pkg", "lazypkg", "heavypkg"}, "stdlib and TYPE_CHECKING imports are not packages to carry"
    assert uses["eagerpkg.sub"].eager and not uses["eagerpkg.sub"].guarded
    assert uses["optional_pkg"].guarded
    assert not uses["lazypkg"].eager and uses["lazypkg"].scope == "in main"
    # a module only a function imports: its module-level imports run only when that function does
    assert not uses["heavypkg"].eager and "alexnet_server.stage.heavy" in found.modules and "alexnet_server.stage.heavy" not in found.eager
    assert "alexnet_server.stage.__main__" in found.eager and "alexnet_server.stage.cli" in found.eager
