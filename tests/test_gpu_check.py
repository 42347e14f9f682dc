"""The GPU check's first minute, on a CPU: a bundle made for another Python than the tests'
unpacks, and the bundled Triton's python-backend stub starts with that interpreter installed
outside the system paths (a pyenv build, as on machines with Python from pyenv, uv or /opt).

Without torch: the full run needs a GPU (or a torch for that Python), the stub's start does not.
"""

from __future__ import annotations

import json
import os
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
