"""The CPU precisions: INT8 quantization, the accuracy gates, bad calibration input, the
choice of precision from CPU flags, and every CPU config served through the real Triton."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from alexnet_server import imaging
from alexnet_server.runtime import RuntimeUnavailable, Version, engines, precision as policy
from alexnet_server.export import check, quantize
from tests import serving
from tests.helpers import run_export, small_checkpoint, snapshot, varied_checkpoint


@pytest.fixture(scope="module")
def calibration_folder(module_tmp, photo_path) -> Path:
    """Real-photo views: crops, scales and mirrors of a photograph, plus the other sample photo."""
    folder = module_tmp / "calibration"
    folder.mkdir()
    photo = Image.open(photo_path).convert("RGB")
    for i in range(24):
        j = i % 8
        view = photo.crop((j * 25, j * 20, photo.width - (7 - j) * 10, photo.height - j * 15)).resize((256 + 8 * i, 300))
        (view.transpose(Image.FLIP_LEFT_RIGHT) if i % 2 else view).save(folder / f"view{i:02d}.jpg", quality=92)
    for extra in imaging.sample_photographs():
        Image.open(extra).convert("RGB").save(folder / f"{extra.stem}.png")
    return folder


@pytest.fixture(scope="module")
def int8_export(module_tmp, calibration_folder):
    folder = module_tmp / "int8"
    ckpt = small_checkpoint(folder / "small.pt", num_classes=3)
    repo = folder / "model_repository"
    proc = run_export(str(ckpt), "--repository", str(repo), "--int8", "--calibration", str(calibration_folder),
                      "--calibration-images", "16", "--gate-images", "10")  # fmt: skip
    return ckpt, repo, proc


def test_quantized_model_is_written_and_checked(int8_export):
    _, repo, proc = int8_export
    assert proc.returncode == 0, proc.stderr[-3000:]
    version = repo / "alexnet" / "1"
    assert (version / "model.int8.onnx").is_file() and (version / "model.onnx").is_file()
    manifest = json.loads((version / "export.json").read_text())
    gate = manifest["cpu_precisions"]["int8"]
    assert gate["passed"] and gate["held_back"]["top1_agreement"] >= check.MIN_AGREEMENT and gate["held_back"]["images"] == 10, gate
    assert gate["photos"]["images"] == 16 and gate["photos"]["top1_agreement"] >= check.PHOTO_FLOOR, gate
    assert manifest["int8"]["calibration_images"] == 16 and "OpenVINO int8 vs fp32" in proc.stdout
    # The paper arch's crops run on uint8 and both LRN divisions became quantized products.
    assert manifest["int8"]["rewrites"] == {"crops_on_uint8": 1, "factors_on_uint8": 2}
    model = onnx.load(str(version / "model.int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # Only convolutions and matrix products are quantized: softmax and the crop average stay float.
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    for node in model.graph.node:
        if node.op_type in ("Softmax", "ReduceMean"):
            assert all(producers.get(i) != "DequantizeLinear" for i in node.input), f"{node.op_type} reads quantized data"
    assert (version / "model.int8.onnx").stat().st_size < (version / "model.onnx").stat().st_size / 3, "int8 weights"
    batch = check.photo_batch(imaging.sample_photographs(), 3)
    probs = Version(version).open("openvino", "int8")(batch)
    assert probs.shape == (3, 3) and np.allclose(probs.sum(1), 1, atol=1e-3)


def test_gates_run_a_bounded_number_of_images_at_a_time(int8_export, monkeypatch):
    """Every run in the gates -- the fp32 reference included -- sees at most IMAGES_PER_RUN
    images: one run of all the held-back images held every crop's activations at once (16.7 GiB
    for the demo's 200).  The real runtimes run; the spy only records each run's size."""

    _, repo, _ = int8_export
    sizes: list[tuple[str, int]] = []

    def spy(factory):
        def make(*args, **kwargs):
            runtime = factory(*args, **kwargs)
            run = runtime._run
            runtime._run = lambda images: (sizes.append((runtime.describe(), len(images))), run(images))[1]
            return runtime

        return make

    monkeypatch.setattr(engines, "onnxruntime", spy(engines.onnxruntime))
    monkeypatch.setattr(engines, "openvino", spy(engines.openvino))
    photos = imaging.sample_photographs()
    held_back = check.photo_batch(photos, 3 * check.IMAGES_PER_RUN + 1)
    record = check.cpu_precision_gates(Version(repo / "alexnet" / "1"), held_back, check.photo_batch(photos, 4), photos, True, "test")
    assert record["int8"]["held_back"]["images"] == len(held_back), record
    reference_runs = [n for name, n in sizes if name.startswith("onnxruntime f32")]
    assert sum(reference_runs) >= len(held_back) and max(reference_runs) <= check.IMAGES_PER_RUN, reference_runs
    assert max(n for _, n in sizes) <= check.IMAGES_PER_RUN, sizes


@pytest.fixture(scope="module")
def varied_ckpt(module_tmp, calibration_folder) -> Path:
    images, _ = quantize.calibration_images(str(calibration_folder), 16, 1)
    return varied_checkpoint(module_tmp / "varied.pt", images)


def test_broken_calibration_is_rejected(varied_ckpt, tmp_path):
    """All-black calibration images squash the activation ranges; the agreement check catches it."""
    black = tmp_path / "black"
    black.mkdir()
    for i in range(12):
        Image.new("RGB", (300, 300), (0, 0, 0)).save(black / f"{i}.png")
    repo = tmp_path / "repo"
    args = [
        str(varied_ckpt),
        "--repository",
        str(repo),
        "--int8",
        "--calibration",
        str(black),
        "--calibration-images",
        "8",
        "--gate-images",
        "4",
    ]
    proc = run_export(*args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "OpenVINO int8 agrees with fp32 on" in proc.stderr and "nothing written" in proc.stderr
    assert not (repo / "alexnet" / "1").exists()
    # With the override it is written, and export.json says so.
    proc = run_export(*args, "--accept-disagreement")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((repo / "alexnet" / "1" / "export.json").read_text())
    assert manifest["cpu_precisions"]["int8"]["accepted_below_threshold"] and "accept-disagreement" in manifest["note"]
    assert "int8" in Version(repo / "alexnet" / "1").record.allowed_precisions(), "an accepted precision may be served"


def test_real_calibration_beats_black(varied_ckpt, tmp_path, calibration_folder):
    """The same model through the library: real photographs calibrate far better than black images."""
    from alexnet_server.export import onnx_graph, source

    fp32 = tmp_path / "model.onnx"
    onnx_graph.write(source.from_checkpoint(varied_ckpt).classifier(10), fp32, 10, {})
    calibration, held_back = quantize.calibration_images(str(calibration_folder), 16, 10)
    quantize.quantize(fp32, tmp_path / "good.int8.onnx", calibration)
    quantize.quantize(fp32, tmp_path / "black.int8.onnx", np.zeros((8, 3, 256, 256), dtype=np.uint8))
    expected = engines.onnxruntime(fp32)(held_back)
    good = check.agreement(expected, engines.openvino(tmp_path / "good.int8.onnx", "int8"), held_back)
    black = check.agreement(expected, engines.openvino(tmp_path / "black.int8.onnx", "int8"), held_back)
    assert good["top1_agreement"] > black["top1_agreement"] and good["max_abs_diff"] < black["max_abs_diff"], (good, black)
    with pytest.raises(check.CheckFailed, match="agrees with fp32"):
        check.gate("int8", black, black, accept=False)


@pytest.mark.parametrize("kind", ["empty", "unreadable", "missing"])
def test_bad_calibration_input(int8_export, tmp_path, kind):
    ckpt, _, _ = int8_export
    folder = tmp_path / "cal"
    if kind != "missing":
        folder.mkdir()
    if kind == "unreadable":
        for i in range(3):
            (folder / f"{i}.jpg").write_bytes(b"not a jpeg at all")
    repo = tmp_path / "repo"
    repo.mkdir()
    before = snapshot(repo)
    proc = run_export(str(ckpt), "--repository", str(repo), "--int8", "--calibration", str(folder))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert ("does not exist" if kind == "missing" else "readable image") in lines[0]
    assert snapshot(repo) == before


# --- the choice of precision from the CPU's flags (fake flag sets) --------------------------------------

AMX = {"avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}
ZEN4 = {"avx512f", "avx512_vnni", "avx512_bf16"}
AVX2_ONLY = {"avx2", "fma"}
ALL = {"f32", "bf16", "int8"}


@pytest.mark.parametrize(
    "flags, allowed, expected",
    [
        (AMX, ALL, "int8"),
        (AMX, {"f32", "bf16"}, "bf16"),
        (ZEN4, ALL, "int8"),
        (ZEN4, {"f32", "bf16"}, "bf16"),
        (AVX2_ONLY, ALL, "f32"),  # no int8 unit, no bf16 unit
        (AVX2_ONLY | {"avx_vnni"}, ALL, "int8"),
        (AMX, {"f32"}, "f32"),  # nothing gated: f32 whatever the CPU
    ],
)
def test_the_cpu_flags_order_the_candidates(flags, allowed, expected):
    """The flags only say which candidate goes first (it wins a tie within 3%)."""
    order = policy.flag_order(flags, allowed)
    assert order[0] == expected and sorted(order) == sorted(allowed), order


def _write_record(folder: Path, **sections) -> Version:
    from alexnet_server.runtime import ExportRecord

    ExportRecord(arch="paper", crops=10, classes=3, source="test", exported="2026-12-01T00:00:00+00:00", **sections).write(folder)
    return Version(folder)


def test_a_precision_the_gate_did_not_pass_is_refused(tmp_path):
    version = _write_record(tmp_path, cpu_precisions={"bf16": {"skipped": "this CPU has neither AMX nor AVX512-BF16"}})
    with pytest.raises(RuntimeUnavailable, match="bf16 is not served .* neither AMX"):
        version.cpu_choice("openvino", "bf16")
    with pytest.raises(RuntimeUnavailable, match="int8 is not served .* export did not check it"):
        version.open("onnxruntime", "int8")


def _cpu(name: str, flags: set[str], cores: int = 2) -> dict:
    """A cpu.describe() record."""
    from alexnet_server.contract import cpu

    return {"model": name, "machine": "x86_64", "cores": cores, "flags": {f: f in flags for f in cpu.FLAGS_THAT_MATTER}}


ZEN2 = _cpu("AMD EPYC 7B12", AVX2_ONLY)
SAPPHIRE = _cpu("Intel(R) Xeon(R) Processor", AMX)


class Timer:
    """A stand-in for timing OpenVINO: fixed rates, and a record of what it was asked."""

    def __init__(self, rates: dict[str, float]) -> None:
        self.rates, self.asked = rates, []

    def __call__(self, candidates: list[str]) -> dict[str, float]:
        self.asked.append(sorted(candidates))
        return {p: self.rates[p] for p in candidates}


def _record(cpu: dict, rates: dict[str, float]) -> dict:
    return {"cpu": cpu, "max_images_per_run": 4, "images_per_s": rates}


def test_record_from_this_cpu_decides_without_timing_again():
    """AVX2-only Zen 2: no VNNI, yet int8 measured 1.37x f32 there (issue "Right on every CPU"),
    so int8 it is, where the flag rule said f32."""
    timer = Timer({})
    precision, why = policy.choose(ALL - {"bf16"}, _record(ZEN2, {"f32": 7.53, "int8": 10.32}), ZEN2, timer)
    assert (precision, timer.asked) == ("int8", [])
    assert why == "int8: fastest measured at export on this CPU, images/s: int8 10.32, f32 7.53"


def test_another_cpu_times_again_at_start():
    timer = Timer({"f32": 20.0, "bf16": 31.0, "int8": 30.5})
    precision, why = policy.choose(ALL, _record(ZEN2, {"f32": 7.53, "int8": 10.32}), SAPPHIRE, timer)
    # bf16 is fastest by 1.6%: within 3% the CPU's flags order the candidates (int8 on AMX-INT8).
    assert precision == "int8" and timer.asked == [["bf16", "f32", "int8"]]
    assert "measured at start (export's timings are from another CPU)" in why


def test_flags_never_decide_alone():
    """On an AMX CPU where int8 measured clearly slower, the measurement wins over the flags."""
    precision, _ = policy.choose(ALL, None, SAPPHIRE, Timer({"f32": 20.0, "bf16": 40.0, "int8": 30.0}))
    assert precision == "bf16"


def test_missing_timings_are_measured():
    timer = Timer({"f32": 7.5, "int8": 10.3})
    precision, why = policy.choose({"f32", "int8"}, {"cpu": ZEN2}, ZEN2, timer)
    assert (precision, timer.asked) == ("int8", [["f32", "int8"]]) and "export recorded no timings" in why


def test_only_f32_gated_needs_no_timing(tmp_path):
    version = _write_record(tmp_path, cpu_precisions={"int8": {"passed": False}})
    timer = Timer({})
    assert version.cpu_choice("openvino", "auto", SAPPHIRE, timer) == ("openvino", "f32", "openvino:f32: the only candidate export's gates passed")
    assert timer.asked == []


def test_the_runtime_is_chosen_by_measurement_too(tmp_path):
    """runtime auto (the cpu config): OpenVINO and ONNX Runtime in every gated precision, the
    fastest measured wins -- on an AVX2 CPU ONNX Runtime's f32 beat OpenVINO's (issue "alexnet-tune")."""
    version = _write_record(tmp_path, cpu_precisions={"int8": {"passed": True}})
    timer = Timer({"openvino:f32": 6.1, "onnxruntime:f32": 8.7, "openvino:int8": 8.0, "onnxruntime:int8": 5.0})
    runtime, precision, why = version.cpu_choice("auto", "auto", ZEN2, timer)
    assert (runtime, precision) == ("onnxruntime", "f32") and timer.asked == [sorted(timer.rates)], why
    assert why.startswith("onnxruntime:f32: fastest measured at start (export recorded no timings)"), why
    # An old record's bare precisions are OpenVINO's: still read, and the rest timed.
    old = {"cpu": ZEN2, "images_per_s": {"f32": 6.1, "int8": 8.0}}
    assert policy.choose(["openvino:f32", "openvino:int8"], old, ZEN2, Timer({}))[0] == "openvino:int8"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="scripts/emulate_avx2 needs root and unshare")
def test_the_avx2_emulation_shows_an_avx2_only_cpu_of_another_kind():
    """scripts/emulate_avx2 (docs/RESULTS.md's AVX2 figures): this project's CPU record, PyTorch's
    kernels and Inductor see an AVX2-only CPU of another model, so export's timings from the host
    do not count there; the host's own /proc/cpuinfo is untouched."""
    import subprocess
    import sys

    from alexnet_server.contract import cpu
    from tests.conftest import ROOT

    def model_and_flags() -> list[str]:  # not the whole file: its "cpu MHz" lines change between reads
        return [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith(("model name", "flags"))]

    before = model_and_flags()
    probe = ("import json, os, torch; from alexnet_server.contract import cpu; "
             "print(json.dumps([cpu.describe(), torch.backends.cpu.get_cpu_capability(), os.environ['TORCHINDUCTOR_CACHE_DIR']]))")  # fmt: skip
    proc = subprocess.run([str(ROOT / "scripts" / "emulate_avx2"), sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen, capability, cache = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [name for name, on in seen["flags"].items() if on] == ["avx2"] and capability == "AVX2"
    assert seen["model"].endswith("[ISA capped to AVX2]") and not policy.same_cpu(seen, cpu.describe())
    assert "emulate_avx2" in cache
    assert model_and_flags() == before


# --- every CPU config through the real Triton -----------------------------------------------------------

CPU_CONFIGS = {  # config -> (runtime, precision) it must run
    "cpu": ("auto", "auto"),
    "cpu-f32": ("openvino", "f32"),
    "cpu-bf16": ("openvino", "bf16"),
    "cpu-int8": ("openvino", "int8"),
    "cpu-onnxruntime": ("onnxruntime", "f32"),
}
# Served vs the same runtime in this process: the same kernels on the same images.  Against the
# fp32 reference: f32 within float rounding; bf16/int8 within what their gates allowed.
SAME_RUNTIME = 1e-5
AGAINST_FP32 = {"f32": 1e-4, "bf16": 2e-2, "int8": 1e-1}


@pytest.mark.parametrize("config", list(CPU_CONFIGS))
def test_each_cpu_config_served_equals_its_in_process_run(int8_export, tmp_path, config):
    import tritonclient.grpc as grpcclient

    from alexnet_server.contract import cpu

    _, repo, proc = int8_export
    assert proc.returncode == 0, proc.stderr[-2000:]
    if config == "cpu-bf16" and not cpu.has_native_bf16():
        pytest.skip("bf16 needs AMX or AVX512-BF16; this CPU has neither (alexnet-serve refuses the config here)")
    version = repo / "alexnet" / "1"
    runtime, precision = CPU_CONFIGS[config]
    runtime, precision, _ = Version(version).cpu_choice(runtime, precision)
    local = Version(version).open(runtime, precision, max_images_per_run=4)
    batch = check.photo_batch(imaging.sample_photographs(), 6)
    server = serving.start(repo, tmp_path / "triton.log", config=config)
    try:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        inp = grpcclient.InferInput("IMAGE", list(batch.shape), "UINT8")
        inp.set_data_from_numpy(batch)
        served = client.infer("alexnet", [inp]).as_numpy("PROBS")
        client.close()
    finally:
        assert server.stop() == 0
    log = (tmp_path / "triton.log").read_text()
    assert re.search(rf"alexnet_0_0: {runtime} {precision} on CPU", log), f"the log names the runtime and precision:\n{log[-2000:]}"
    said = (tmp_path / "triton.out").read_text()
    assert re.search(rf"alexnet-serve: alexnet_0_0: {runtime} {precision} on CPU", said), f"alexnet-serve says what runs:\n{said[-2000:]}"
    if config == "cpu":
        assert re.search(rf"precision {runtime}:{precision}: fastest measured at export on this CPU, images/s: {runtime}:{precision} ", said), said[-2000:]
    np.testing.assert_allclose(served, local(batch), atol=SAME_RUNTIME, err_msg=f"{config}: served != in-process")
    reference = Version(version).open("onnxruntime", "f32")(batch)
    assert np.abs(served - reference).max() <= AGAINST_FP32[precision], (config, np.abs(served - reference).max())
    assert (served.argmax(1) == reference.argmax(1)).mean() >= 5 / 6, config
