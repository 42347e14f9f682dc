"""The training stage end to end on small real files: statistics, augmentation, loop, checkpoints, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet_server import imaging
from tests.conftest import ROOT, make_fashion_like, make_image_folder
from alexnet_server.train import checkpoint, data
from alexnet_server.train.model import alexnet
from alexnet_server.train.recipe import Recipe, RecipeError, resolve
from alexnet_server.train.model import CropAverage, normalisation
from alexnet_server.train.transforms import random_crops

FAST = ["--workers", "0", "--batch-size", "16", "--stats-images", "32"]


def run_cli(*args: str, cwd: Path = ROOT, env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "alexnet_server.train", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, f"expected exit 2, got {proc.returncode}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("alexnet-train: error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


# --- recipe -------------------------------------------------------------------------------


def test_recipe_defaults_are_the_papers():
    r = Recipe()
    assert (r.batch_size, r.lr, r.momentum, r.weight_decay, r.epochs) == (128, 0.01, 0.9, 5e-4, 90)
    assert (r.lr_factor, r.max_reductions, r.dropout, r.init, r.init_std, r.init_bias, r.pca_std) == (0.1, 3, 0.5, "paper", 0.01, 1.0, 0.1)


def test_recipe_unknown_and_invalid_settings():
    with pytest.raises(RecipeError, match="unknown recipe setting.*learning_rate"):
        Recipe.from_dict({"learning_rate": 0.1})
    with pytest.raises(RecipeError, match="batch_size must be >= 1"):
        resolve(batch_size=0)
    assert resolve("demo", lr=0.02).init == "kaiming" and resolve("demo", lr=0.02).lr == 0.02
    with pytest.raises(RecipeError, match="optimizer must be one of sgd, adamw, got 'adam'"):
        resolve(optimizer="adam")


def test_optimizer_from_the_recipe():
    """The paper's SGD by default; AdamW (fused, momentum as beta1) where the recipe names it.
    A checkpoint's recipe from before the setting existed resolves to SGD."""
    from alexnet_server.train.cli import make_optimizer

    params = [torch.nn.Parameter(torch.zeros(3))]
    sgd = make_optimizer(params, Recipe())
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 5e-4
    adamw = make_optimizer(params, resolve("demo", optimizer="adamw", lr=3e-4, momentum=0.8))
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["betas"] == (0.8, 0.999) and adamw.defaults["lr"] == 3e-4 and adamw.defaults["fused"]
    old = {k: v for k, v in Recipe().to_dict().items() if k != "optimizer"}
    assert Recipe.from_dict(old).optimizer == "sgd"


def test_every_recipe_field_is_a_flag():
    from alexnet_server.train.cli import get_args_parser

    import dataclasses

    help_text = get_args_parser().format_help()
    for f in dataclasses.fields(Recipe):
        assert "--" + f.name.replace("_", "-") in help_text, f"--{f.name} missing from --help"


def test_auto_speed_settings_per_kind_of_device():
    """--auto-speed: what measured fastest per kind (train/accel.py): all three with native bf16,
    eager fp32 on an AVX2-only CPU (or one with AVX-512 but no bf16), bf16 + channels_last on CUDA."""
    from alexnet_server.train import accel

    amx = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"}
    assert accel.fastest(torch.device("cpu"), amx)[0] == {"amp": True, "channels_last": True, "compile": True}
    assert accel.fastest(torch.device("cpu"), {"avx2", "avx512f", "avx512_bf16"})[0]["compile"]
    for flags in ({"avx2", "fma"}, {"avx2", "avx512f", "avx512_vnni"}):
        settings, why = accel.fastest(torch.device("cpu"), flags)
        assert settings == {"amp": False, "channels_last": False, "compile": False} and "eager fp32" in why
    assert accel.fastest(torch.device("cuda"), set())[0] == {"amp": True, "channels_last": True, "compile": False}


def test_auto_speed_fills_only_what_no_flag_names(fashion_dir, caplog):
    """The recipe takes --auto-speed's settings for this CPU, except a flag given explicitly;
    without --auto-speed the recipe's defaults stand.  The log names the choice."""
    import logging

    from alexnet_server.contract import cpu
    from alexnet_server.train import accel
    from alexnet_server.train.cli import get_args_parser, resolve_run

    expected, _ = accel.fastest(torch.device("cpu"))
    base = ["--data", str(fashion_dir), "--preset", "demo"]
    caplog.set_level(logging.INFO, logger="alexnet-train")
    recipe = resolve_run(get_args_parser().parse_args([*base, "--auto-speed"])).recipe
    assert {k: getattr(recipe, k) for k in expected} == expected
    assert "--auto-speed on cpu" in caplog.text and ("eager fp32" in caplog.text) != cpu.has_native_bf16()
    flip = "--no-compile" if expected["compile"] else "--compile"
    recipe = resolve_run(get_args_parser().parse_args([*base, "--auto-speed", flip])).recipe
    assert recipe.compile is not expected["compile"] and recipe.amp is expected["amp"]
    assert "given explicitly: --compile" in caplog.text
    recipe = resolve_run(get_args_parser().parse_args(base)).recipe
    assert (recipe.amp, recipe.channels_last, recipe.compile) == (False, False, False)


# --- statistics and augmentation -------------------------------------------------------------


def test_mean_image_and_pca_match_a_direct_computation(fashion_dir, tmp_path):
    ds = data.open_split(str(fashion_dir), "train")
    idx = list(range(16))
    mean, eigvals, eigvecs = data.compute_stats(ds, idx, tmp_path)
    stack = np.stack([ds[i][0] for i in idx]).astype(np.float64)
    np.testing.assert_allclose(mean, stack.mean(axis=0), rtol=1e-5, atol=1e-3)
    pixels = stack.transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
    expected = np.linalg.eigvalsh(np.cov(pixels, bias=True))
    np.testing.assert_allclose(np.sort(eigvals), np.clip(expected, 0, None), rtol=1e-3, atol=1e-6)
    # cached: a second call reads the file instead of recomputing
    assert len(list(tmp_path.glob("stats-*.npz"))) == 1
    again = data.compute_stats(ds, idx, tmp_path)
    np.testing.assert_array_equal(again[0], mean)


def test_pca_colour_noise_statistics():
    """[4.1] noise = V (alpha * lambda), alpha ~ N(0, 0.1): its covariance is V diag((0.1 lambda)^2) V^T."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    eigvecs = torch.tensor(q, dtype=torch.float32)
    eigvals = torch.tensor([0.2, 0.05, 0.01])
    images = torch.full((2000, 3, 256, 256), 128, dtype=torch.uint8)
    offset, scale = torch.zeros(3, 256, 256), torch.ones(3, 1, 1)
    g = torch.Generator().manual_seed(0)
    out = random_crops(images, offset, scale, eigvals, eigvecs, 0.1, False, g)
    shift = (out.mean(dim=(2, 3)) - 128.0).double() / 255.0  # per image colour shift, 0-1 scale
    expected = q @ np.diag((0.1 * eigvals.numpy()) ** 2) @ q.T
    measured = np.cov(shift.numpy().T, bias=True)
    np.testing.assert_allclose(measured, expected, atol=2.5e-5, rtol=0.15)
    assert abs(float(shift.mean())) < 2e-3, "the noise has zero mean"


def test_random_crops_are_crops_and_flips():
    image = torch.arange(256, dtype=torch.float32).repeat(3, 256, 1).to(torch.uint8)[None].repeat(64, 1, 1, 1)
    g = torch.Generator().manual_seed(1)
    zeros = torch.zeros(3)
    out = random_crops(image, torch.zeros(3, 256, 256), torch.ones(3, 1, 1), zeros, torch.eye(3), 0.0, True, g)
    assert out.shape == (64, 3, 224, 224)
    rows = out[:, 0, 0]  # a column-index ramp: increasing (plain) or decreasing (mirrored)
    increasing = (rows[:, 1:] - rows[:, :-1] == 1).all(dim=1)
    decreasing = (rows[:, 1:] - rows[:, :-1] == -1).all(dim=1)
    assert bool((increasing | decreasing).all()), "every crop is a contiguous window, maybe mirrored"
    assert 10 < int(decreasing.sum()) < 54, f"about half mirrored, got {int(decreasing.sum())}/64"
    lefts = torch.where(increasing, rows[:, 0], rows[:, -1])
    assert lefts.min() >= 0 and lefts.max() <= 32 and len(set(lefts.tolist())) > 5


def test_ten_crop_classifier_averages_softmax_of_the_ten_crops(photo_path):
    torch.manual_seed(0)
    net = alexnet("paper", 7, init="kaiming").eval()
    offset, scale = normalisation("paper", np.full((3, 256, 256), 120.0, dtype=np.float32), 1 / 64)
    image = imaging.load(photo_path)
    c = imaging.CROP
    crops = torch.from_numpy(np.stack([image[:, t : t + c, l : l + c][:, :, ::-1] if m else image[:, t : t + c, l : l + c]
                                       for t, l, m in imaging.ten_crop_boxes()]).copy()).float()  # fmt: skip
    expected = torch.softmax(net((crops - 120.0) / 64), dim=1).mean(0)
    with torch.no_grad():
        got = CropAverage(net, offset, scale, 10)(torch.from_numpy(image)[None])[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# --- the loop ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_overfits_64_images():
    """The network and optimiser can learn: 64 fixed images, random labels, >= 95% train accuracy."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 256, 256), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (64,), generator=g)
    model = alexnet("paper", 10, init="kaiming", dropout=0.0)
    offset, scale = normalisation("paper", images.float().mean(0), 1 / 64)
    classifier = CropAverage(model, offset, scale, crops=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = ((images.float() - offset) * scale)[:, :, 16:240, 16:240]
    accuracy = 0.0
    for step in range(60):
        model.train()
        for chunk in range(0, 64, 32):
            loss = torch.nn.functional.cross_entropy(model(x[chunk : chunk + 32]), labels[chunk : chunk + 32])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if step % 5 == 4:
            with torch.no_grad():
                accuracy = (classifier.eval()(images).argmax(1) == labels).float().mean().item()
            if accuracy >= 0.95:
                break
    assert accuracy >= 0.95, f"train accuracy {accuracy:.3f} after {step + 1} epochs"


@pytest.fixture(scope="module")
def trained_run(fashion_dir, module_tmp):
    out = module_tmp / "run"
    proc = run_cli("--data", str(fashion_dir), "--out", str(out), "--preset", "demo", "--epochs", "1", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_training_writes_checkpoint_metrics_and_plot(trained_run):
    out, proc = trained_run
    state = checkpoint.load(out / "checkpoint.pt")
    assert state["arch"] == "paper" and state["num_classes"] == 10 and state["epoch"] == 0
    assert state["mean_image"].shape == (3, 256, 256) and state["mean_image"].dtype == torch.float32
    assert state["pca"]["eigenvalues"].shape == (3,) and state["pca"]["eigenvectors"].shape == (3, 3)
    assert state["recipe"]["init"] == "kaiming" and state["recipe"]["epochs"] == 1
    torch.load(out / "checkpoint.pt", weights_only=True)  # the contract: loadable with weights_only
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and {"train_loss", "val_top1_centre_error", "val_top5_centre_error", "lr"} <= set(rows[0])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "img_s=" in proc.stderr, "the progress bar shows images per second"
    assert not list(out.glob(".*.tmp")), "no temporary files left behind"


def test_evaluate_reports_centre_and_10crop(trained_run, fashion_dir):
    out, _ = trained_run
    proc = run_cli("--evaluate", str(out / "checkpoint.pt"), "--data", str(fashion_dir), "--crops", "10", "--json", "--workers", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    # The same errors computed here, directly from the checkpoint and the 20 validation images.
    state = checkpoint.load(out / "checkpoint.pt")
    offset, scale = normalisation("paper", state["mean_image"], state["recipe"]["input_scale"])
    classifier = CropAverage(checkpoint.build_model(state), offset, scale, 10).eval()
    val = data.open_split(str(fashion_dir), "val")
    images = torch.from_numpy(np.stack([val[i][0] for i in range(len(val))]))
    labels = torch.tensor([val[i][1] for i in range(len(val))])
    with torch.no_grad():
        per_crop = classifier.crop_probs(images)
    for name, probs in (("centre", per_crop[:, imaging.CENTRE]), ("10crop", per_crop.mean(1))):
        top5 = probs.topk(5, dim=1).indices
        assert result[f"top1_{name}_error"] == pytest.approx((top5[:, 0] != labels).float().mean().item()), (name, result)
        assert result[f"top5_{name}_error"] == pytest.approx((~(top5 == labels[:, None]).any(1)).float().mean().item()), (name, result)
    assert result["images"] == 20


def test_resume_equals_uninterrupted(fashion_dir, tmp_path):
    # The paper's plateau schedule: its state does not depend on --epochs, so 1 + 1 epochs equal 2.
    common = ["--data", str(fashion_dir), "--preset", "demo", "--schedule", "plateau", "--train-limit", "32", "--val-limit", "8", "--seed", "3", *FAST]
    straight, split = tmp_path / "straight", tmp_path / "split"
    from alexnet_server.train.cli import cli

    assert cli([*common, "--out", str(straight), "--epochs", "2"]) == 0
    assert cli([*common, "--out", str(split), "--epochs", "1"]) == 0
    assert cli([*common, "--out", str(split), "--epochs", "2", "--resume"]) == 0
    a, b = checkpoint.load(straight / "checkpoint.pt"), checkpoint.load(split / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 1
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), f"{key} differs after resume"
    assert len(b["metrics"]) == 2


@pytest.mark.slow
def test_onecycle_resume_with_more_epochs_continues(fashion_dir, tmp_path):
    """The demo's one-cycle schedule, extended on resume: it goes on from the step reached (no error)."""
    common = ["--data", str(fashion_dir), "--preset", "demo", "--train-limit", "32", "--val-limit", "8", "--out", str(tmp_path), *FAST]
    from alexnet_server.train.cli import cli

    assert cli([*common, "--epochs", "1"]) == 0
    assert cli([*common, "--epochs", "2", "--resume"]) == 0
    rows = checkpoint.load(tmp_path / "checkpoint.pt")["metrics"]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["lr"] > 0


@pytest.mark.slow
def test_torchrun_two_ranks_end_identical(fashion_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "alexnet_server.train",
        "--data", str(fashion_dir), "--out", str(tmp_path), "--preset", "demo", "--epochs", "1",
        "--train-limit", "32", "--val-limit", "8", *FAST,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all 2 ranks hold identical weights" in proc.stderr, proc.stderr[-2000:]
    state = checkpoint.load(tmp_path / "checkpoint.pt")
    assert state["metrics"][0]["train_images"] == 32, "the two ranks together saw the whole subset once"


@pytest.mark.slow
def test_torchrun_ranks_stay_in_step_when_one_rank_gets_only_unreadable_files(tmp_path):
    """Global batch 2 (one image a rank) with unreadable files: some step gives one rank nothing to
    train on.  That rank must still take the step (its all-reduce), or the ranks desynchronise."""
    root = make_image_folder(tmp_path / "imgs", classes=2, per_class=3)
    for name in ("broken_a.jpg",):
        (root / "train" / "class_0" / name).write_bytes(b"\xff\xd8\xff not a jpeg")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "alexnet_server.train",
        "--data", str(root), "--out", str(tmp_path / "run"), "--preset", "demo", "--epochs", "1", "--device", "cpu",
        "--workers", "0", "--batch-size", "2", "--stats-images", "8",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "all 2 ranks hold identical weights" in proc.stderr, proc.stderr[-2000:]
    assert "skipped" in proc.stderr and "broken_" in proc.stderr


# --- bad input -------------------------------------------------------------------------------


def test_missing_and_empty_data(tmp_path):
    assert "does not exist" in one_line_error(run_cli("--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")))
    (tmp_path / "empty").mkdir()
    assert "no train folder" in one_line_error(run_cli("--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")))
    (tmp_path / "noclass" / "train").mkdir(parents=True)
    assert "no class folders" in one_line_error(run_cli("--data", str(tmp_path / "noclass"), "--out", str(tmp_path / "o")))


def test_class_folder_without_images(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=2, per_class=2)
    (root / "train" / "class_9").mkdir()
    (root / "train" / "class_9" / "notes.txt").write_text("no images here")
    line = one_line_error(run_cli("--data", str(root), "--out", str(tmp_path / "o")))
    assert "class_9" in line and "has no images" in line


def test_corrupt_images_are_skipped_and_named(tmp_path):
    root = make_image_folder(tmp_path / "d", classes=2, per_class=3)
    (root / "train" / "class_0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    good = (root / "train" / "class_1" / "img_0.jpg").read_bytes()
    (root / "train" / "class_1" / "cut.jpg").write_bytes(good[: len(good) // 2])
    proc = run_cli("--data", str(root), "--out", str(tmp_path / "o"), "--preset", "demo", "--epochs", "1", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped 2 unreadable image(s)" in proc.stderr and "broken.jpg" in proc.stderr and "cut.jpg" in proc.stderr
    row = json.loads((tmp_path / "o" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["skipped"] == 2 and row["train_images"] == 6


def test_resume_with_other_arch_or_class_count(trained_run, tmp_path):
    out, _ = trained_run
    line = one_line_error(
        run_cli("--data", str(make_fashion_like(tmp_path / "f", 20, 10)), "--out", str(out), "--resume", "--arch", "torchvision", *FAST)
    )
    assert "paper checkpoint" in line and "torchvision" in line
    other = make_image_folder(tmp_path / "three", classes=3, per_class=2)
    line = one_line_error(run_cli("--data", str(other), "--out", str(tmp_path / "o"), "--resume", str(out / "checkpoint.pt"), *FAST))
    assert "10 classes" in line and "3" in line


@pytest.mark.parametrize("kind", ["truncated", "foreign", "state_dict"])
def test_bad_checkpoint_files(trained_run, fashion_dir, tmp_path, kind):
    out, _ = trained_run
    bad = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        blob = (out / "checkpoint.pt").read_bytes()
        bad.write_bytes(blob[: len(blob) // 2])
    elif kind == "foreign":
        bad.write_text("this is a text file, not a checkpoint\n")
    else:
        torch.save(alexnet("paper", 10).state_dict(), bad)
    line = one_line_error(run_cli("--evaluate", str(bad), "--data", str(fashion_dir)))
    assert str(bad) in line
    assert {"truncated": "not a readable checkpoint", "foreign": "not a readable checkpoint", "state_dict": "missing"}[kind] in line


# --- the time budget ------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_time_budget_caps_the_steps_from_the_measured_pace():
    from alexnet_server.train.budget import PROBE_STEPS, RECHECK_STEPS, WARMUP_STEPS, TimeBudget

    clock = FakeClock()
    budget = TimeBudget(600, planned_steps=1000, batch_size=32, eval_images=500, eval_crops=10, epochs_left=1, started=0.0, clock=clock)
    clock.now = 60.0  # statistics and compile
    decided = []
    for _ in range(WARMUP_STEPS + PROBE_STEPS):
        clock.now += 1.0  # 1 s per step of 32 images
        decided.append(budget.step())
    assert decided == [False] * (WARMUP_STEPS + PROBE_STEPS - 1) + [True]
    # Validation: 500 images x 10 crops x 1/3 of a training image's 1/32 s = 52 s kept back.
    assert budget.eval_reserve_s == pytest.approx(500 * 10 / 3 / 32)
    left = 600 - clock.now - budget.eval_reserve_s
    assert budget.cap == budget.steps + int(left / 1.0) and not budget.exhausted()
    budget.steps = budget.cap
    assert budget.exhausted() and f"{budget.cap} of 1000 steps fit" in budget.describe()
    # The CPU slows (it warms, or another process wakes): the next check moves the cap down.
    slow = TimeBudget(600, planned_steps=1000, batch_size=32, eval_images=0, eval_crops=1, epochs_left=1, started=0.0, clock=clock)
    clock.now = 0.0
    for _ in range(WARMUP_STEPS + PROBE_STEPS):
        clock.now += 1.0
        slow.step()
    first = slow.cap
    while slow.steps < WARMUP_STEPS + RECHECK_STEPS - 1:  # the next check: 25 timed steps
        clock.now += 2.0
        assert not slow.step()
    clock.now += 2.0
    assert slow.step() and slow.cap < first
    assert slow.cap == slow.steps + int((600 - clock.now) / slow.seconds_per_step)
    roomy = TimeBudget(10_000, planned_steps=100, batch_size=32, eval_images=0, eval_crops=10, epochs_left=1, started=0.0, clock=clock)
    for _ in range(WARMUP_STEPS + PROBE_STEPS):
        clock.now += 1.0
        roomy.step()
    assert roomy.cap == 100, "a budget never adds steps to the recipe's"


def test_training_stops_inside_its_budget_and_anneals_to_the_end(tmp_path):
    """A budget too small for the run: it stops right after the probe steps, and the one-cycle
    schedule, re-sized to the cap, has reached its end on the last step."""
    from alexnet_server.train.budget import PROBE_STEPS, WARMUP_STEPS
    from alexnet_server.train.cli import cli

    out = tmp_path / "run"
    data_dir = make_fashion_like(tmp_path / "data", n_train=640, n_val=16)
    args = ["--data", str(data_dir), "--preset", "demo", "--epochs", "1", "--val-limit", "8", "--out", str(out), "--time-budget", "1",
            *FAST, "--batch-size", "8"]  # fmt: skip
    assert cli(args) == 0
    state = checkpoint.load(out / "checkpoint.pt")
    (row,) = state["metrics"]
    steps = WARMUP_STEPS + PROBE_STEPS
    assert row["time_budget"]["stopped_early"] and row["time_budget"]["steps_cap"] == steps and row["time_budget"]["planned_steps"] == 80
    assert row["train_images"] == steps * 8
    # The cycle was re-sized to the cap and ran to its end on the last step (without the budget
    # it would stand at step 13 of 80, its learning rate near the top).
    assert state["scheduler"]["total_steps"] == state["scheduler"]["last_epoch"] == steps
