"""The run step of scripts/gpu_check: batched 10-crop classification on a GPU through a real Triton.

On the GPU machine, from the checkout, with the bundle beside it (scripts/gpu_check bundle):

    python3 scripts/gpu_check.py --bundle .gpu-check --out $OUT            # ~8 minutes on an H100 or H200
    python3 scripts/gpu_check.py --bundle .gpu-check --out /tmp/x --device cpu --quick   # a dry run on a CPU

Steps: train the demo preset on the GPU (AMP, channels_last, bounded time); export the
TorchScript classifier; serve it with the pytorch config through the wheel's tritonserver
(alexnet-serve, its python stubs on NumPy 1.26); check parity with the fp32 CPU reference,
GPU JPEG decode against the CPU pipeline, that dynamic batching forms batches, that a bad
image is refused while the server stays ready; benchmark in-process (model only, and with
GPU decode) against served (HTTP, several processes, 8 JPEGs a request) at concurrency 1,
16 and 64.  Writes OUT/gpu_check.json (and train.log, triton.log); exit 0 when every check
passed.  Uses only the standard library, NumPy, PyTorch and the project.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import import_walk  # noqa: E402 - beside this script; standard library only
from alexnet_server.contract import ENSEMBLE, IMAGE_BYTES, MODEL, PREPROCESS, PROBS, gpu  # noqa: E402 - the checkout first on the path; stdlib only

HTTP_PORT = 18600
GFLOP_PER_CROP = 1.44  # paper AlexNet at 224: ~0.72 G multiply-adds per crop (conv 666 M, fc 55 M)
EXPORT_TIMEOUT_S = 300
READY_TIMEOUT_S = 240
PREFLIGHT_TIMEOUT_S = 120


class CheckFailed(RuntimeError):
    """A stage cannot go on; the message says why in one line (it ends up in gpu_check.json)."""


# The stages this check runs, by their entry points.  The pre-flight imports what the code of each
# imports (scripts/import_walk.py reads it, nothing is listed by hand), in the interpreter and
# environment the stage will run in; the bundle carries every such package the GPU machine is not
# known to have.
STAGES: dict[str, list[str | Path]] = {
    "train": ["alexnet_server.train"],
    "export": ["alexnet_server.export"],
    # alexnet-serve, and the two python-backend models its Triton runs in the stub's Python
    "serve": ["alexnet_server.server", ROOT / "model_repository" / "alexnet" / "model.py", ROOT / "model_repository" / "preprocess" / "1" / "model.py"],
    "check": [Path(__file__).resolve()],  # this script: the reference, GPU decode, the served checks and benchmarks
}
# What the GPU machine is known to have (the device tool's page): never carried.
GPU_MACHINE_HAS = {"torch", "torchvision", "PIL", "numpy"}
# What the bundle's Triton itself provides: its python backend's utilities, the wheel's layout.
FROM_TRITON = {"triton_python_backend_utils", "pytriton"}
# Imports on code paths this check does not run (dotted prefixes), and why.  Every other import
# the walk finds must succeed in the pre-flight: a new one fails there in seconds, not minutes in.
NOT_RUN_HERE = {
    "onnx": "export writes TorchScript only here (--formats torchscript)",
    "onnxruntime": "the check serves the pytorch config and exports no ONNX",
    "openvino": "the CPU configs' runtime; the check serves the pytorch config",
    "tensorrt": "the GPU machine has no TensorRT; export writes TorchScript only",
    "cuda": "cuda-python drives TensorRT engines only",
    "matplotlib": "plots only; the sample photographs travel in the bundle",
    "tritonclient.http": "alexnet-serve's periodic health probe; the check serves with --health-interval 0",
    "tritonclient.utils": "alexnet-serve's periodic health probe; the check serves with --health-interval 0",
}


def stage_needs(stage: str) -> tuple[list[tuple[str, str, str]], dict[str, str]]:
    """What importing and running ``stage`` needs: ([(kind, name, where)] to import in the pre-flight:
    the project modules its entries import, then the other packages its code imports), and
    {other package's module: where it is first imported}.  Guarded imports, Triton's own
    modules and NOT_RUN_HERE are left out."""
    found = import_walk.walk(STAGES[stage], ROOT)
    others: dict[str, str] = {}
    for use in sorted(found.uses, key=lambda u: not u.eager):  # where an import runs on import, say so
        if use.guarded or use.top in FROM_TRITON or any(use.module == p or use.module.startswith(p + ".") for p in NOT_RUN_HERE):
            continue
        when = "on import" if use.eager else use.scope if use.scope != "module level" else "in a module imported lazily"
        others.setdefault(use.module, f"{use.where}, {when}")
    todo = [("file" if name.startswith("<") else "module", str(found.files[name]) if name.startswith("<") else name, "imported by the entry")
            for name in found.eager if not name.endswith(".__main__")]  # fmt: skip - a __main__ would run the stage
    return todo + [("module", module, where) for module, where in others.items()], others


def carried_distributions() -> list[str]:
    """``name==version`` (as installed here) of every distribution the stages import that the GPU
    machine may lack: what the bundle carries.  Raises CheckFailed for one not installed here."""
    from importlib import metadata

    owners = metadata.packages_distributions()
    wanted = {m for stage in STAGES for m in stage_needs(stage)[1] if m.split(".")[0] not in GPU_MACHINE_HAS}
    found = set()
    for module in sorted(wanted):
        candidates = owners.get(module.split(".")[0], [])
        if len(candidates) > 1:  # a namespace (google.*): the distribution holding this module's folder
            prefix = module.replace(".", "/")
            candidates = [d for d in candidates if any(str(f).startswith(prefix + "/") or str(f) == prefix + ".py" for f in metadata.files(d) or [])]
        if not candidates:
            raise CheckFailed(f"{module} is imported by a stage but not installed in this environment: it cannot be carried")
        found |= {f"{d}=={metadata.version(d)}" for d in candidates}
    return sorted(found)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def sh(cmd: list[str], timeout: float = 30) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"<{type(exc).__name__}>"


# --- the bundle -------------------------------------------------------------------------------------------


def unpack(bundle: Path, work: Path) -> dict:
    """Triton's site folder, a stub venv with NumPy 1.26 first, the carried packages, the libpython to load.

    Raises CheckFailed when the bundle was made for another Python, or when the stub could only
    run on the carried libpython with a standard library that does not fit it."""
    pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
    made_for = json.loads((bundle / "bundle.json").read_text())["python"] if (bundle / "bundle.json").is_file() else None
    if made_for != pyver:
        raise CheckFailed(f"the bundle was made for Python {made_for}, this is Python {pyver}: PYVER={pyver} scripts/gpu_check bundle")
    libpy, source = _libpython(bundle, work, pyver)
    site = work / "triton"
    if not site.is_dir():
        with tarfile.open(bundle / "triton.tar.xz") as tar:
            tar.extractall(site)
    # The packages the stages import that the GPU machine may lack (carried_distributions): first
    # on every stage's path, so the versions tested with the project are the ones that run.
    carried = work / "carried"
    if not carried.is_dir():
        carried.mkdir()
        for wheel in sorted((bundle / "wheels").glob("*.whl")):
            zipfile.ZipFile(wheel).extractall(carried)
    venv = work / "stubenv"
    packages = venv / "lib" / f"python{pyver}" / "site-packages"
    if not packages.is_dir():
        base = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "python3").symlink_to(base)
        (venv / "pyvenv.cfg").write_text(f"home = {base.parent}\ninclude-system-site-packages = false\nversion = {sys.version.split()[0]}\n")
        packages.mkdir(parents=True)
        with tarfile.open(bundle / "numpy.tar.xz") as tar:
            tar.extractall(packages)
        import site as pysite

        ours = [p for p in pysite.getsitepackages() if Path(p).is_dir()]
        # NumPy 1.26 (this folder), the project, the carried packages, then this interpreter's (torch, torchvision, Pillow).
        (packages / "zz_project.pth").write_text(f"{ROOT}\n{carried}\n" + "".join(f"import site; site.addsitedir({p!r})\n" for p in ours))
    sys.path.insert(1, str(carried))  # after the checkout (sys.path[0])
    return {"site": site / "site", "stub_python": venv / "bin" / "python3", "libpy": libpy, "libpython": source, "carried": carried,
            "stub": site / "site" / "pytriton" / "tritonserver" / "python_backend_stubs" / pyver / "triton_python_backend_stub"}  # fmt: skip


def _libpython(bundle: Path, work: Path, pyver: str) -> tuple[str | None, str]:
    """(folder to put on the loader path or None, where the stub's libpython comes from)."""
    soname = f"libpython{pyver}.so.1.0"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if Path(libdir, soname).is_file():
        # Outside the system paths (pyenv, uv, /opt) the loader does not look there by itself.
        libpy, source = libdir, f"this Python's ({libdir})"
    elif soname in sh(["ldconfig", "-p"]):
        libpy, source = None, "the system's"
    else:
        packed = bundle / f"{soname}.xz"
        if not packed.is_file():
            raise CheckFailed(f"the stub needs {soname}: this Python has no shared library and the bundle carries none")
        # The carried libpython (a pyenv build) keeps math, _struct, ... in lib-dynload; a
        # Debian/Ubuntu Python builds them in, so its standard library cannot serve it.
        builtin = [m for m in ("math", "_struct", "_json") if m in sys.builtin_module_names]
        if builtin:
            raise CheckFailed(f"this Python has no {soname} and builds {', '.join(builtin)} in (a Debian/Ubuntu build): "
                              "the carried libpython would find no such modules in its standard library")  # fmt: skip
        import lzma

        (work / "libpy").mkdir(exist_ok=True)
        (work / "libpy" / soname).write_bytes(lzma.decompress(packed.read_bytes()))
        libpy, source = str(work / "libpy"), "the bundle's (stripped, from a pyenv build)"
    return libpy, source


def server_env(paths: dict) -> dict:
    """The environment alexnet-serve and its stubs run with: the wheel's Triton importable, libpython loadable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(paths["site"]), str(ROOT)])}
    if paths["libpy"]:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [paths["libpy"], env.get("LD_LIBRARY_PATH")]))
    return env


def stage_env(paths: dict) -> dict:
    """The environment train, export and this script's own steps run with: the checkout, then the carried packages."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(paths["carried"])])}


# Run in a stage's interpreter: import each of argv[1]'s (kind, name, where), collect what fails.
_IMPORT_PROBE = """
import importlib, importlib.util, json, sys
problems = []
for k, (kind, name, where) in enumerate(json.loads(sys.argv[1])):
    try:
        if kind == "file":  # as when run: its folder first on the path
            sys.path.insert(0, name.rpartition("/")[0])
            spec = importlib.util.spec_from_file_location(f"_preflight_{k}", name)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            sys.path.pop(0)
        else:
            importlib.import_module(name)
    except BaseException as exc:
        problems.append([name, where, (f"{type(exc).__name__}: {exc}".splitlines() or ["?"])[0][:300]])
print(json.dumps(problems))
"""


def import_problems(paths: dict) -> dict[str, list[list[str]]]:
    """{stage: [[module, where, error]]} after importing, in each stage's own interpreter and
    environment, everything ``stage_needs`` lists: the stages run at once, in seconds."""
    backend = paths["site"] / "pytriton" / "tritonserver" / "backends" / "python"  # triton_python_backend_utils, as the stub has it
    serve_env = server_env(paths)
    serve_env["PYTHONPATH"] = os.pathsep.join([serve_env["PYTHONPATH"], str(backend)])
    runs = {stage: ([str(paths["stub_python"]) if stage == "serve" else sys.executable, "-c", _IMPORT_PROBE, json.dumps(stage_needs(stage)[0])],
                    serve_env if stage == "serve" else stage_env(paths)) for stage in STAGES}  # fmt: skip

    def run(stage: str) -> list[list[str]]:
        cmd, env = runs[stage]
        try:
            got = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=PREFLIGHT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return [["(all)", STAGES[stage][0], f"the imports took over {PREFLIGHT_TIMEOUT_S} s"]]
        try:
            return json.loads(got.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            return [["(all)", str(STAGES[stage][0]), (got.stderr.strip().splitlines() or [f"exit {got.returncode}"])[-1][:300]]]

    with ThreadPoolExecutor(len(runs)) as pool:
        return dict(zip(runs, pool.map(run, runs)))


def stub_problem(paths: dict) -> str | None:
    """Why the python-backend stub cannot start here (None when it loads): run once with no
    arguments, it either exits on its usage or stops at the loader (a missing libpython)."""
    try:
        stub = subprocess.run([str(paths["stub"])], capture_output=True, text=True, env=server_env(paths), timeout=PREFLIGHT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None  # it started and waited for its parent: it loaded
    words = (stub.stdout + stub.stderr).strip()
    if "error while loading shared libraries" in words or stub.returncode == 127:
        return f"the python-backend stub does not start: {(words.splitlines() or ['exit 127'])[0]}"
    return None


def preflight(paths: dict, device: str, out: dict) -> None:
    """Seconds, not minutes: the stub loads, the stub's Python has NumPy < 2 and torch, CUDA is
    visible where asked, and every stage imports what its code imports.  Fills ``out`` as it
    goes (the report keeps it when a step fails); raises CheckFailed with the first problem."""
    env = server_env(paths)
    out["libpython"] = paths["libpython"]
    if problem := stub_problem(paths):
        raise CheckFailed(problem)
    out["stub_loads"] = True
    probe = ("import sys, numpy, torch; print(numpy.__version__, torch.__version__, torch.cuda.is_available())")
    try:
        got = subprocess.run([str(paths["stub_python"]), "-c", probe], capture_output=True, text=True, env=env, timeout=PREFLIGHT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"the stub's Python did not import numpy and torch within {PREFLIGHT_TIMEOUT_S} s") from None
    if got.returncode != 0:
        raise CheckFailed(f"the stub's Python cannot import numpy and torch: {(got.stderr.strip().splitlines() or ['?'])[-1]}")
    numpy_version, torch_version, cuda = got.stdout.split()
    out.update(stub_numpy=numpy_version, stub_torch=torch_version, stub_cuda=cuda == "True")
    if int(numpy_version.split(".")[0]) >= 2:
        raise CheckFailed(f"the stub's Python has NumPy {numpy_version}; the 24.10 stub needs NumPy < 2")
    if device == "cuda" and not out["stub_cuda"]:
        raise CheckFailed("the stub's Python sees no CUDA device: serving would fall back to the CPU")
    problems = import_problems(paths)
    out["imports"] = {stage: {"checked": len(stage_needs(stage)[0]), "failed": found} for stage, found in problems.items()}
    for stage, found in problems.items():
        if found:
            module, where, error = found[0]
            more = f" (and {len(found) - 1} more, in gpu_check.json)" if len(found) > 1 else ""
            raise CheckFailed(f"pre-flight: the {stage} stage cannot import {module} ({where}): {error}{more}")


# --- a small KServe-v2 HTTP client (the GPU machine has no tritonclient) -------------------------------------


class Client:
    """One keep-alive HTTP connection; ``infer`` sends BYTES or UINT8 with the binary tensor extension."""

    def __init__(self, port: int, timeout: float = 120) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def infer(self, model: str, name: str, value, output: str = PROBS):
        import numpy as np

        if isinstance(value, list):
            blob = b"".join(len(b).to_bytes(4, "little") + b for b in value)
            spec = {"name": name, "shape": [len(value), 1], "datatype": "BYTES"}
        else:
            blob = np.ascontiguousarray(value).tobytes()
            spec = {"name": name, "shape": list(value.shape), "datatype": "UINT8"}
        spec["parameters"] = {"binary_data_size": len(blob)}
        head = json.dumps({"inputs": [spec], "outputs": [{"name": output, "parameters": {"binary_data": True}}]}).encode()
        self.conn.request("POST", f"/v2/models/{model}/infer", body=head + blob,
                          headers={"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"})  # fmt: skip
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {body[:300].decode(errors='replace')}")
        length = int(response.getheader("Inference-Header-Content-Length", len(body)))
        out = json.loads(body[:length])["outputs"][0]
        return np.frombuffer(body[length:], dtype=np.float32).reshape(out["shape"])

    def get(self, path: str) -> dict:
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        return json.loads(response.read() or b"null")


def _load_worker(port: int, threads: int, requests: list[list[bytes]], seconds: float) -> tuple[int, int, list[float]]:
    """One load process: ``threads`` connections sending ``requests`` in turn for ``seconds``."""
    started = time.perf_counter()
    stop_at = started + seconds
    images, errors, latencies, lock = [0], [0], [], threading.Lock()

    def run(k: int) -> None:
        client, i = Client(port), k
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                client.infer(ENSEMBLE, IMAGE_BYTES, requests[i % len(requests)])
                with lock:
                    images[0] += len(requests[i % len(requests)])
                    latencies.append(time.perf_counter() - t0)
            except Exception:  # noqa: BLE001 - counted
                with lock:
                    errors[0] += 1
                client = Client(port)
            i += threads

    pool = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    # The last requests finish after stop_at: the rate divides by the time they actually took.
    return images[0], errors[0], latencies, time.perf_counter() - started


def served_level(port: int, concurrency: int, requests: list[list[bytes]], seconds: float, processes: int) -> dict:
    procs = max(1, min(processes, concurrency))
    per = [concurrency // procs + (1 if k < concurrency % procs else 0) for k in range(procs)]
    started = time.perf_counter()
    with ProcessPoolExecutor(procs) as pool:
        results = list(pool.map(_load_worker, [port] * procs, per, [requests] * procs, [seconds] * procs))
    wall = time.perf_counter() - started
    images = sum(r[0] for r in results)
    latencies = sorted(x for r in results for x in r[2])
    pick = lambda q: round(1e3 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None
    measured = max(r[3] for r in results)
    return {"concurrency": concurrency, "processes": procs, "images_per_request": len(requests[0]), "images_per_s": round(images / measured, 1),
            "wall_s": round(wall, 1), "errors": sum(r[1] for r in results), "p50_ms": pick(0.5), "p99_ms": pick(0.99)}  # fmt: skip


# --- the check --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / ".gpu-check")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "gpu-check")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gpu-check-work")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--quick", action="store_true", help="small sizes: a dry run of the flow on a CPU")
    parser.add_argument("--train-seconds", type=float, default=150, help="training's bound (it stops after the epoch that passes it)")
    parser.add_argument("--level-seconds", type=float, default=15)
    parser.add_argument("--list-carried", action="store_true", help="print the distributions the bundle carries (name==version, one a line) and exit")
    parser.add_argument("--list-imports", action="store_true", help="print what the pre-flight imports for each stage and exit")
    args = parser.parse_args()
    if args.list_carried or args.list_imports:
        try:
            lines = carried_distributions() if args.list_carried else [f"{stage}: {name}  ({where})" for stage in STAGES for _, name, where in stage_needs(stage)[0]]
        except CheckFailed as exc:
            print(f"gpu_check: {exc}", file=sys.stderr)
            return 1
        print("\n".join(lines))
        return 0
    args.bundle, args.out = args.bundle.resolve(), args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report: dict = {"checks": {}}

    def on_term(signum, _frame):
        raise CheckFailed(f"stopped by signal {signum} (a timeout around the check?)")

    signal.signal(signal.SIGTERM, on_term)
    # Whatever happens, gpu_check.json says what ran, what failed and why.
    try:
        return check(args, report, t0)
    except CheckFailed as exc:
        return finish(report, args, t0, str(exc))
    except Exception as exc:  # noqa: BLE001 - reported, with the stage it happened in
        return finish(report, args, t0, f"{type(exc).__name__}: {exc}")


def check(args, report: dict, t0: float) -> int:
    report["stage"] = "unpack"
    paths = unpack(args.bundle, args.work)
    sys.path.insert(0, str(paths["site"]))
    import numpy as np
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    peak, peak_source = gpu.bf16_peak_tflops(name) if name else (None, "no GPU")
    report["env"] = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__, "device": device, "gpu": name,
                     "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if name else None,
                     "bf16_peak_tflops": peak, "bf16_peak_source": peak_source, "cpus": os.cpu_count(),
                     "nvidia_smi": sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])}  # fmt: skip
    log(f"env: {report['env']}")
    report["stage"] = "preflight"
    report["preflight"] = {}
    preflight(paths, device, report["preflight"])
    log(f"preflight: {report['preflight']}")

    from alexnet_server import imaging
    from alexnet_server.imaging import gpu as gpu_decode
    from alexnet_server.runtime import Version

    report["env"]["gpu_decode"] = gpu_decode.unavailable() or "available"
    n_test, epochs, limit, workers = (64, 1, 256, 2) if args.quick else (2000, 2, 12000, min(12, os.cpu_count() or 4))

    # 1. train, bounded (the loader's workers decode; AMP + channels_last on CUDA)
    report["stage"] = "train"
    run = args.work / "run"
    shutil.rmtree(run, ignore_errors=True)
    cmd = [sys.executable, "-m", "alexnet_server.train", "--data", str(args.bundle / "fmnist"), "--out", str(run), "--preset", "demo",
           "--epochs", str(epochs), "--train-limit", str(limit), "--val-limit", "1000" if not args.quick else "64",
           "--stats-images", "4000" if not args.quick else "128", "--workers", str(workers), "--device", device]  # fmt: skip
    if device == "cuda":
        cmd += ["--amp", "--channels-last"]
    started = time.perf_counter()
    env = stage_env(paths)
    with open(args.out / "train.log", "w") as fh:
        try:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env, timeout=args.train_seconds).returncode
        except subprocess.TimeoutExpired:
            rc = "stopped at the time bound"  # the last finished epoch's checkpoint is used
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").is_file() else []
    report["train"] = {"rc": rc, "seconds": round(time.perf_counter() - started, 1), "epochs": rows}
    if not (run / "checkpoint.pt").is_file() or (rc != 0 and not rows):
        return finish(report, args, t0, "training failed: see train.log")
    log(f"train: {report['train']['seconds']} s, {[round(r['train_img_per_s'], 1) for r in rows]} img/s")

    # 2. export the TorchScript classifier into a served repository
    report["stage"] = "export"
    served = args.work / "served"
    shutil.rmtree(served, ignore_errors=True)
    try:
        exp = subprocess.run([sys.executable, "-m", "alexnet_server.export", str(run / "checkpoint.pt"), "--repository", str(served), "--formats", "torchscript",
                              "--check-images", str(args.bundle / "photos")],
                             capture_output=True, text=True, cwd=ROOT, env=env, timeout=EXPORT_TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"export did not finish within {EXPORT_TIMEOUT_S} s") from None
    report["export"] = {"rc": exp.returncode, "stdout": exp.stdout[-800:], "stderr": exp.stderr[-800:]}
    if exp.returncode != 0:
        return finish(report, args, t0, "export failed")
    version = Version(served / MODEL / "1")

    # 3. test images: Fashion-MNIST PNGs (labelled), and JPEG photos at ImageNet-like sizes
    report["stage"] = "reference"
    from PIL import Image

    from alexnet_server.train import data

    test = data.open_split(str(args.bundle / "fmnist"), "val")
    idx = np.random.default_rng(1).permutation(len(test))[:n_test]
    pngs, labels = [], np.array([int(test.labels[i]) for i in idx])
    for i in idx:
        buffer = io.BytesIO()
        Image.fromarray(test.images[i], "L").save(buffer, "PNG")
        pngs.append(buffer.getvalue())
    jpegs = []
    photos = imaging.sample_photographs() or sorted((args.bundle / "photos").iterdir())  # the bundle's copies where matplotlib is absent
    for k, photo in enumerate(photos):
        img = Image.open(photo).convert("RGB")
        for j, size in enumerate([(500, 375), (375, 500), (640, 480), (800, 600), (1024, 768), (333, 500)] * 3):
            view = img.rotate(3 * j, expand=False).resize(size)
            buffer = io.BytesIO()
            view.save(buffer, "JPEG", quality=90)
            jpegs.append(buffer.getvalue())
    cpu_ref = version.open("pytorch", "f32", device="cpu", max_images_per_run=16)
    ref_png = cpu_ref(np.stack([imaging.load(b) for b in pngs]))
    ref_jpeg = cpu_ref(np.stack([imaging.load(b) for b in jpegs]))
    report["reference"] = {"device": "cpu fp32 (TorchScript)", "top1_10crop": float((ref_png.argmax(1) == labels).mean()), "images": len(pngs)}
    log(f"reference: {report['reference']}")

    # 4. GPU decode against the CPU pipeline (pixels), in-process
    report["stage"] = "gpu decode"
    if gpu_decode.unavailable() is None:
        try:
            plans = [gpu_decode.plan(b, imaging.MAX_PIXELS) for b in jpegs]
            got = gpu_decode.load_batch(jpegs, plans)
            diffs = [np.abs(g.astype(int) - imaging.load(b).astype(int)) for g, b in zip(got, jpegs) if g is not None]
            c = {"images": len(diffs), "of": len(jpegs), "tolerance_mean": gpu_decode.MEAN_TOLERANCE}
            if diffs:
                c.update(mean_abs=round(float(np.mean([d.mean() for d in diffs])), 3), max_abs=int(max(d.max() for d in diffs)))
            c["ok"] = c["images"] == len(jpegs) and c.get("mean_abs", 1e9) <= gpu_decode.MEAN_TOLERANCE
        except Exception as exc:  # noqa: BLE001 - an nvJPEG failure is a failed check, not a lost report
            c = {"error": f"{type(exc).__name__}: {exc}"[:500], "ok": False}
        report["checks"]["gpu_decode_pixels"] = c
    else:
        # Skipped, not passed: ok None on a CPU dry run (listed under "skipped"); on a GPU it must run.
        report["checks"]["gpu_decode_pixels"] = {"skipped": gpu_decode.unavailable(), "ok": None if device == "cpu" else False}

    # 5. serve with the pytorch config (the stubs on NumPy 1.26), then the served checks
    report["stage"] = "serve"
    env = server_env(paths)
    # The GPU machine has no nginx and nothing can be installed there: then Triton alone on loopback.
    nginx = shutil.which("nginx")
    front = "nginx" if nginx else "none"
    front_why = f"nginx on PATH ({nginx})" if nginx else "no nginx on PATH (the GPU machine has none): Triton alone on loopback, --front none"
    log(f"front: {front_why}")
    launched = time.perf_counter()
    serve = subprocess.Popen([str(paths["stub_python"]), "-m", "alexnet_server.server", "--repository", str(served), "--config", "pytorch",
                              "--http-port", str(HTTP_PORT), "--grpc-port", str(HTTP_PORT + 1), "--metrics-port", str(HTTP_PORT + 2),
                              "--health-interval", "0", "--ready-timeout", str(READY_TIMEOUT_S), "--log-file", str(args.out / "triton.log"),
                              "--front", front],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    output: list[str] = []
    ready = threading.Event()

    def read_output() -> None:  # every line kept: a failed start is explained by them
        for line in serve.stdout:
            output.append(line.rstrip())
            if "ready." in line:
                ready.set()

    threading.Thread(target=read_output, daemon=True).start()
    deadline = time.monotonic() + READY_TIMEOUT_S + 30
    while time.monotonic() < deadline and serve.poll() is None and not ready.wait(0.5):
        pass
    report["server"] = {"ready": ready.is_set(), "start_to_ready_s": round(time.perf_counter() - launched, 1), "front": front, "front_why": front_why}
    if not ready.is_set():
        report["server"]["exit"] = _stop(serve)
        report["server"]["output"] = output[-40:]
        return finish(report, args, t0, "the server did not become ready (server.output and triton.log say why)")
    try:
        report["stage"] = "served checks"
        served_checks(report, args, pngs, jpegs, labels, ref_png, ref_jpeg)
        served_on_device(report, args.out / "triton.log", report["env"]["gpu"] if device == "cuda" else None)
        report["stage"] = "benchmarks"
        benchmarks(report, args, version, device, jpegs)
    except Exception as exc:  # noqa: BLE001 - keep what was measured
        report["error"] = f"{report['stage']}: {type(exc).__name__}: {exc}"
    finally:
        report["server"]["exit"] = _stop(serve)
        report["server"]["output"] = output[-15:]
    return finish(report, args, t0)


def served_on_device(report: dict, log_path: Path, gpu: str | None) -> None:
    """The models' own words in Triton's log: alexnet ran on the GPU named ``gpu`` (its runtime
    says "pytorch PRECISION on NAME"), preprocess decoded on the GPU, and no batch fell back to
    the CPU decoder.  A silent CPU fallback fails here.  ``gpu`` None: a CPU dry run, skipped."""
    text = log_path.read_text(errors="replace") if log_path.is_file() else ""
    model_lines = [line for line in text.splitlines() if MODEL in line and " on " in line and "thread(s)" in line]
    decode_lines = [line for line in text.splitlines() if "decoding on" in line]
    fallbacks = text.count("GPU decode failed")
    c = {MODEL: [line.split("] ", 1)[-1][:200] for line in model_lines[:2]], PREPROCESS: [line.split("] ", 1)[-1][:200] for line in decode_lines[:2]],
         "gpu_decode_fallbacks": fallbacks}  # fmt: skip
    precisions = {line.split("pytorch ", 1)[1].split()[0] for line in model_lines if "pytorch " in line}
    c["precision"] = sorted(precisions)
    if gpu is None:
        c.update(skipped="serving on the CPU (dry run)", ok=None)
    else:
        c["ok"] = (bool(model_lines) and all(f" on {gpu} " in line for line in model_lines)
                   and bool(decode_lines) and all("GPU (nvJPEG)" in line for line in decode_lines) and fallbacks == 0)  # fmt: skip
    report["checks"]["served_on_device"] = c


def served_checks(report: dict, args, pngs, jpegs, labels, ref_png, ref_jpeg) -> None:
    import numpy as np

    client = Client(HTTP_PORT)
    before = client.get("/v2/models/alexnet/stats")["model_stats"][0]
    spans = [(i, min(i + 8, len(pngs))) for i in range(0, len(pngs), 8)]
    results: dict[int, np.ndarray] = {}
    lock = threading.Lock()

    def send(worker: int) -> None:
        mine = Client(HTTP_PORT)
        for a, b in spans[worker::16]:
            probs = mine.infer(ENSEMBLE, IMAGE_BYTES, pngs[a:b])
            with lock:
                results[a] = probs

    threads = [threading.Thread(target=send, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    served = np.concatenate([results[a] for a, _ in spans])
    after = client.get("/v2/models/alexnet/stats")["model_stats"][0]
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    agree = float((served.argmax(1) == ref_png.argmax(1)).mean())
    report["checks"]["served_parity"] = {"images": len(served), "top1_agreement": agree, "max_abs_diff": float(np.abs(served - ref_png).max()),
                                         "served_top1_accuracy": float((served.argmax(1) == labels).mean()), "ok": agree >= 0.995}  # fmt: skip
    report["checks"]["dynamic_batching"] = {"inferences": inferences, "executions": executions, "avg_batch": round(inferences / max(executions, 1), 2),
                                            "ok": inferences / max(executions, 1) > 8.0}  # fmt: skip
    jpeg_served = np.concatenate([client.infer(ENSEMBLE, IMAGE_BYTES, jpegs[i : i + 8]) for i in range(0, len(jpegs), 8)])
    jagree = float((jpeg_served.argmax(1) == ref_jpeg.argmax(1)).mean())
    report["checks"]["served_jpeg_vs_cpu_decode"] = {"images": len(jpegs), "top1_agreement": jagree,
                                                     "max_abs_diff": float(np.abs(jpeg_served - ref_jpeg).max()), "ok": jagree >= 0.9}  # fmt: skip
    try:
        client.infer(ENSEMBLE, IMAGE_BYTES, [pngs[0], b"not an image", pngs[1]])
        refused = False
    except RuntimeError as exc:
        refused = "400" in str(exc) and "not a recognised image format" in str(exc)
    ready = Client(HTTP_PORT).conn
    ready.request("GET", "/v2/health/ready")
    report["checks"]["bad_image"] = {"refused_with_reason": refused, "ready_after": ready.getresponse().status == 200}
    report["checks"]["bad_image"]["ok"] = all(report["checks"]["bad_image"].values())
    log(f"checks: { {k: v.get('ok') for k, v in report['checks'].items()} }")


def benchmarks(report: dict, args, version, device: str, jpegs: list[bytes]) -> None:
    import numpy as np
    import torch

    from alexnet_server import imaging
    from alexnet_server.imaging import gpu as gpu_decode

    bench: dict = {}
    batch = 8 if args.quick else 64
    model = version.open("pytorch", device=device)
    x = np.random.default_rng(0).integers(0, 256, (batch, 3, 256, 256), dtype=np.uint8)

    def timed(fn, seconds: float) -> float:
        fn()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            fn()
            n += batch
        return n / (time.perf_counter() - started)

    rate = timed(lambda: model(x), args.level_seconds / 3)
    tflops = rate * 10 * GFLOP_PER_CROP / 1e3  # 10 crops per image
    peak = report["env"]["bf16_peak_tflops"]  # by the GPU's name; None (said why in env) for one not in the table
    bench["inprocess_model_only"] = {"batch": batch, "images_per_s": round(rate, 1), "precision": model.precision, "tflops": round(tflops, 1),
                                     "fraction_of_bf16_peak": round(tflops / peak, 4) if peak else None,
                                     "peak": report["env"]["bf16_peak_source"]}  # fmt: skip
    pipeline_jpegs = [jpegs[i % len(jpegs)] for i in range(batch)]
    if gpu_decode.unavailable() is None:
        plans = [gpu_decode.plan(b, imaging.MAX_PIXELS) for b in pipeline_jpegs]
        decode = lambda: np.stack(gpu_decode.load_batch(pipeline_jpegs, plans))
    else:
        decode = lambda: np.stack([imaging.load(b) for b in pipeline_jpegs])
    rate = timed(lambda: model(decode()), args.level_seconds / 3)
    bench["inprocess_with_decode"] = {"batch": batch, "images_per_s": round(rate, 1), "decode": "gpu" if gpu_decode.unavailable() is None else "cpu"}
    log(f"in-process: {bench['inprocess_model_only']}, {bench['inprocess_with_decode']}")
    requests = [[jpegs[(i + k) % len(jpegs)] for k in range(8)] for i in range(len(jpegs))]
    processes = max(1, min(16, (os.cpu_count() or 4) - 2))
    bench["served"] = []
    for concurrency in (1, 4) if args.quick else (1, 16, 64):
        level = served_level(HTTP_PORT, concurrency, requests, args.level_seconds, processes)
        level["gpu_memory"] = sh(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader"])
        bench["served"].append(level)
        log(f"served: {level}")
    best = max(level["images_per_s"] for level in bench["served"])
    bench["served_vs_inprocess_with_decode"] = round(best / max(bench["inprocess_with_decode"]["images_per_s"], 1e-9), 3)
    report["bench"] = bench


def _stop(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def finish(report: dict, args, t0: float, error: str | None = None) -> int:
    if error:
        report["error"] = error
    elif "error" not in report:
        report["stage"] = "done"
    report["total_s"] = round(time.perf_counter() - t0, 1)
    ran = {name: c for name, c in report["checks"].items() if c.get("ok") is not None}
    report["skipped"] = {name: c.get("skipped") for name, c in report["checks"].items() if c.get("ok") is None}
    report["ok"] = "error" not in report and bool(ran) and all(c["ok"] for c in ran.values())
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report, indent=2, default=str)[-6000:], flush=True)
    failed = [name for name, c in ran.items() if not c["ok"]]
    print(f"gpu_check: {'ok' if report['ok'] else 'FAILED'} on {report.get('env', {}).get('device')}: {len(ran)} checks ran"
          + (f", failed: {', '.join(failed)}" if failed else "") + (f"; error: {error}" if error else "")
          + "".join(f"; skipped {name}: {why}" for name, why in report["skipped"].items()), flush=True)  # fmt: skip
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
