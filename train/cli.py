"""alexnet-train: train AlexNet with the 2012 recipe, or evaluate a checkpoint.

    alexnet-train --data fashion-mnist --preset demo --epochs 2 --train-limit 8000
    torchrun --nproc-per-node 8 -m alexnet_server.train --data /data/imagenet --out runs/paper
    alexnet-train --evaluate runs/paper/checkpoint.pt --data /data/imagenet --crops 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DistributedSampler, Subset

from alexnet_server.contract.cli import HelpFormatter
from alexnet_server.train import accel, checkpoint, data, distributed, engine, report
from alexnet_server.train.budget import PROBE_STEPS, WARMUP_STEPS, TimeBudget
from alexnet_server.train.checkpoint import CheckpointError
from alexnet_server.train.data import DataError
from alexnet_server.train.model import CropAverage, alexnet, count_parameters, normalisation
from alexnet_server.train.recipe import PRESETS, Recipe, RecipeError, resolve
from alexnet_server.train.transforms import random_crops

log = logging.getLogger("alexnet-train")
CHECKPOINT_NAME = "checkpoint.pt"


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexnet-train",
        description="Train AlexNet with the recipe of Krizhevsky et al. 2012, or evaluate a checkpoint.",
        epilog="Recipe flags default to the paper's values; --preset applies a named deviation first.",
        formatter_class=HelpFormatter,
        add_help=add_help,
    )
    parser.add_argument("--data", required=True, help="fashion-mnist, a folder of its IDX files, or an ImageFolder root (DIR/train, DIR/val)")
    parser.add_argument("--out", type=Path, default=Path("runs/alexnet"), help="folder for checkpoint.pt, metrics.jsonl, curves.png")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper", help="named recipe overrides (see README)")
    parser.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT", help="continue from CHECKPOINT (default: OUT/checkpoint.pt)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--evaluate", type=Path, metavar="CHECKPOINT", help="only evaluate CHECKPOINT on the validation split")
    parser.add_argument("--crops", type=int, choices=(1, 10), default=10, help="with --evaluate: centre crop only, or also the 10-crop average")
    parser.add_argument("--json", action="store_true", help="with --evaluate: print the result as JSON")
    parser.add_argument("--time-budget", type=float, default=0, metavar="SECONDS",
                        help="end the run within SECONDS of wall clock (statistics, compile and validation included): the "
                             "steps are capped after timing the first few, and a one-cycle schedule is re-sized to the cap; "
                             "0: no budget, the recipe's epochs and images")  # fmt: skip
    parser.add_argument("--auto-speed", action="store_true",
                        help="set --amp, --compile and --channels-last to what measured fastest on this kind of device "
                             "(docs/RESULTS.md, Training: all three on CPUs with AMX or AVX512-BF16, eager fp32 on other "
                             "CPUs); any of them given explicitly wins")  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true")

    group = parser.add_argument_group("recipe (the paper's numbers; section in brackets)")
    for f in dataclasses.fields(Recipe):
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f"recipe.{f.name}", "default": argparse.SUPPRESS, "help": f"{f.metadata['help']} (default: {f.default})"}
        if f.type in ("bool", bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
        group.add_argument(flag, **kwargs)
    return parser


def _explicit_recipe(args: argparse.Namespace) -> dict[str, Any]:
    return {k.split(".", 1)[1]: v for k, v in vars(args).items() if k.startswith("recipe.")}


def make_optimizer(params, recipe: Recipe) -> torch.optim.Optimizer:
    """[5] SGD with momentum and weight decay; or AdamW (the demo's deviation, with
    ``momentum`` as beta1 and decoupled weight decay)."""
    if recipe.optimizer == "adamw":
        # fused: one kernel over all parameters (CPU and CUDA); the 57M-parameter step is ~5% of
        # a CPU training step with the default foreach implementation.
        return torch.optim.AdamW(params, lr=recipe.lr, betas=(recipe.momentum, 0.999), weight_decay=recipe.weight_decay, fused=True)
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int, total_steps: int | None = None):
    """[5] plateau: lr / 10 when the centre-crop validation error has not improved for ``patience``
    epochs, at most ``max_reductions`` times (stepped once an epoch).  onecycle (the demo's
    deviation): 10% linear warm-up to ``lr``, then cosine annealing to ~0 over the run
    (stepped every batch): a 2-epoch budget never reaches a plateau, and annealing is what
    turns its last steps into accuracy.  ``total_steps``: the cycle's length when a time
    budget capped it (default: every step of every epoch)."""
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.lr, total_steps=max(2, total_steps or recipe.epochs * steps_per_epoch), pct_start=0.1,
            anneal_strategy="cos", cycle_momentum=False, div_factor=10.0, final_div_factor=100.0,
        )  # fmt: skip
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=recipe.lr_factor, patience=recipe.patience,
        min_lr=recipe.lr * recipe.lr_factor**recipe.max_reductions,
    )  # fmt: skip


def _seed_epoch(recipe: Recipe, epoch: int, rank: int) -> torch.Generator:
    """Everything random in epoch ``epoch`` follows from (seed, epoch, rank): resumes are exact."""
    seed = recipe.seed * 1_000_003 + epoch * 1009 + rank
    torch.manual_seed(seed)  # dropout
    return torch.Generator().manual_seed(seed)  # crops, flips, PCA colour


def _shard(indices: list[int], ctx: distributed.Context) -> list[int]:
    return indices[ctx.rank :: ctx.world_size]


@dataclasses.dataclass
class Run:
    """What the phases of ``train`` hand each other."""

    recipe: Recipe
    classes: list[str]
    train_set: Any
    val_set: Any
    train_idx: list[int]
    val_idx: list[int]
    mean_image: Any = None
    eigenvalues: Any = None
    eigenvectors: Any = None
    state: dict | None = None  # the checkpoint resumed from

    @property
    def normalisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(offset, scale) the network trains behind and the checkpoint stores for serving."""
        return normalisation(self.recipe.arch, self.mean_image, self.recipe.input_scale)


def _speed_settings(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """--auto-speed: the settings measured fastest on this device, where no flag names them."""
    if not args.auto_speed:
        return {}
    settings, why = accel.fastest(device)
    chosen = {k: v for k, v in settings.items() if f"recipe.{k}" not in vars(args)}
    given = [f"--{k.replace('_', '-')}" for k in settings if k not in chosen]
    log.info("--auto-speed on %s: %s (%s)%s", device.type, ", ".join(f"{k}={v}" for k, v in chosen.items()) or "nothing", why,
             f"; given explicitly: {' '.join(given)}" if given else "")  # fmt: skip
    return chosen


def resolve_run(args: argparse.Namespace, device: torch.device = torch.device("cpu")) -> Run:
    """Phase 1: the recipe (defaults < preset < --auto-speed < flags; on resume, the checkpoint's
    < --auto-speed < flags), the data and its subsets."""
    explicit = {**_speed_settings(args, device), **_explicit_recipe(args)}
    resume_path = (Path(args.resume) if args.resume else args.out / CHECKPOINT_NAME) if args.resume is not None else None
    state = checkpoint.load(resume_path) if resume_path else None
    if state:
        saved = Recipe.from_dict(state["recipe"])
        if "arch" in explicit and explicit["arch"] != saved.arch:
            raise CheckpointError(f"{resume_path} is a {saved.arch} checkpoint; cannot resume it as --arch {explicit['arch']}")
        # Shape-defining settings come from the checkpoint; the rest may be overridden (e.g. --epochs).
        recipe = Recipe.from_dict({**saved.to_dict(), **explicit})
    else:
        recipe = resolve(args.preset, **explicit)
    train_set, val_set = data.open_split(args.data, "train"), data.open_split(args.data, "val")
    classes = list(train_set.classes)
    if list(val_set.classes) != classes:
        raise DataError(f"train and val have different classes: {classes} vs {list(val_set.classes)}")
    if state and (state["num_classes"] != len(classes) or list(state["classes"]) != classes):
        raise CheckpointError(
            f"{resume_path} was trained on {state['num_classes']} classes; the data has {len(classes)} "
            f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})"
        )
    train_idx = data.subset_indices(len(train_set), recipe.train_limit, recipe.seed) or list(range(len(train_set)))
    val_idx = data.subset_indices(len(val_set), recipe.val_limit, recipe.seed + 1) or list(range(len(val_set)))
    return Run(recipe, classes, train_set, val_set, train_idx, val_idx, state=state)


def statistics(run: Run, args: argparse.Namespace, ctx: distributed.Context) -> None:
    """Phase 2: [2] the mean image and [4.1] the RGB PCA -- from the checkpoint on resume, else
    computed once by rank 0 (cached) and read by the others."""
    if run.state:
        run.mean_image = run.state["mean_image"]
        run.eigenvalues, run.eigenvectors = run.state["pca"]["eigenvalues"], run.state["pca"]["eigenvectors"]
        return
    stats_idx = run.train_idx[: run.recipe.stats_images] if run.recipe.stats_images else run.train_idx
    if ctx.is_main:
        log.info("training-set statistics over %d images", len(stats_idx))
        data.compute_stats(run.train_set, stats_idx, args.out, run.recipe.workers)
    distributed.barrier(ctx)  # the other ranks read rank 0's cache
    mean_np, eval_np, evec_np = data.compute_stats(run.train_set, stats_idx, args.out, run.recipe.workers)
    run.mean_image = torch.from_numpy(mean_np)
    run.eigenvalues, run.eigenvectors = torch.from_numpy(eval_np), torch.from_numpy(evec_np)


def build_model(run: Run, ctx: distributed.Context, memory_format: torch.memory_format, steps_per_epoch: int):
    """Phase 3: the network (paper init, same seed on every rank), SGD and the schedule, restored on resume."""
    recipe = run.recipe
    torch.manual_seed(recipe.seed)  # the same initial weights on every rank
    model = alexnet(recipe.arch, len(run.classes), dropout=recipe.dropout, init=recipe.init, init_std=recipe.init_std, init_bias=recipe.init_bias)
    model = model.to(ctx.device, memory_format=memory_format)
    optimizer = make_optimizer(model.parameters(), recipe)
    scheduler = make_scheduler(optimizer, recipe, steps_per_epoch)
    if run.state:
        model.load_state_dict(run.state["state_dict"])
        optimizer.load_state_dict(run.state["optimizer"])
        saved = dict(run.state["scheduler"])
        if recipe.schedule == "onecycle":
            # Resuming with another --epochs: continue on the cycle of the new length, from the
            # step reached (the cycle's shape comes from the new total, the position from the run).
            saved.pop("total_steps", None)
            saved.pop("_schedule_phases", None)
        scheduler.load_state_dict(saved)
    return model, optimizer, scheduler


def save_epoch(run: Run, args: argparse.Namespace, model, optimizer, scheduler, epoch: int, history: list[dict]) -> None:
    """The checkpoint (atomically), the metrics row and the curves, on rank 0."""
    payload = checkpoint.build(
        arch=run.recipe.arch, classes=run.classes, state_dict=model.state_dict(), mean_image=run.mean_image,
        eigenvalues=run.eigenvalues, eigenvectors=run.eigenvectors, recipe=run.recipe.to_dict(), epoch=epoch,
        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), metrics=history, rng=torch.get_rng_state(),
        normalisation=run.normalisation,
    )  # fmt: skip
    checkpoint.save(args.out / CHECKPOINT_NAME, payload)
    report.append_jsonl(args.out / "metrics.jsonl", history[-1])
    report.plot_curves(args.out / "curves.png", history)


def _resize_cycle(scheduler, optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int, total_steps: int):
    """The one-cycle schedule re-made for ``total_steps``, at the step ``scheduler`` reached."""
    resized = make_scheduler(optimizer, recipe, steps_per_epoch, total_steps)
    resized.last_epoch = scheduler.last_epoch - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "step() before optimizer.step()": it was, on the old scheduler
        resized.step()
    return resized


def train(args: argparse.Namespace, ctx: distributed.Context) -> dict[str, Any]:
    started = time.perf_counter()  # the time budget counts from here: statistics and compile are in it
    run = resolve_run(args, ctx.device)
    statistics(run, args, ctx)
    recipe = run.recipe
    per_rank_batch = max(1, recipe.batch_size // ctx.world_size)
    subset = Subset(run.train_set, run.train_idx)
    sampler = DistributedSampler(subset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=recipe.seed)
    pin = ctx.device.type == "cuda"
    train_loader = data.make_loader(subset, per_rank_batch, sampler, recipe.workers, pin)
    val_loader = data.make_loader(run.val_set, per_rank_batch, _shard(run.val_idx, ctx), recipe.workers, pin)
    memory_format = accel.memory_format(recipe.channels_last)
    # The one-cycle schedule's length is the loader's: batches per epoch on this rank.
    model, optimizer, scheduler = build_model(run, ctx, memory_format, steps_per_epoch=len(train_loader))
    history: list[dict[str, Any]] = list(run.state["metrics"]) if run.state else []
    start_epoch = int(run.state["epoch"]) + 1 if run.state else 0
    if run.state:
        log.info("resumed at epoch %d", start_epoch)

    net = accel.compiled(model, recipe.compile)
    if ctx.enabled:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    offset, scale = (t.to(ctx.device) for t in run.normalisation)
    classifier = CropAverage(model, offset, scale, crops=recipe.eval_crops).to(ctx.device)
    autocast = accel.autocast(ctx.device, recipe.amp)
    if ctx.is_main:
        args.out.mkdir(parents=True, exist_ok=True)
        log.info(
            "%s arch, %d classes, %s parameters; %d train / %d val images; %d rank(s) on %s",
            recipe.arch, len(run.classes), f"{count_parameters(model):,}", len(run.train_idx), len(run.val_idx), ctx.world_size, ctx.device,
        )  # fmt: skip
    budget = None
    if args.time_budget > 0 and start_epoch < recipe.epochs:
        world = ctx.world_size
        budget = TimeBudget(args.time_budget, (recipe.epochs - start_epoch) * len(train_loader), per_rank_batch,
                            eval_images=len(run.val_idx) // world, eval_crops=recipe.eval_crops, epochs_left=recipe.epochs - start_epoch,
                            started=started, reduce=lambda x: distributed.all_reduce_sum([x], ctx)[0] / world)  # fmt: skip
    live = {"scheduler": scheduler}  # a budget may replace it mid-epoch

    def after_step() -> None:
        if recipe.schedule == "onecycle":
            live["scheduler"].step()
        if budget is not None and budget.step():
            if ctx.is_main:
                log.log(logging.INFO if budget.steps == WARMUP_STEPS + PROBE_STEPS else logging.DEBUG, "%s", budget.describe())
            if recipe.schedule == "onecycle":
                first = live["scheduler"].last_epoch - budget.steps  # steps taken before this run (a resume)
                live["scheduler"] = _resize_cycle(live["scheduler"], optimizer, recipe, len(train_loader), first + budget.cap)

    for epoch in range(start_epoch, recipe.epochs):
        generator = _seed_epoch(recipe, epoch, ctx.rank)
        sampler.set_epoch(epoch)
        transform = partial(
            random_crops, offset=offset, scale=scale, eigenvalues=run.eigenvalues, eigenvectors=run.eigenvectors,
            pca_std=recipe.pca_std, flip=recipe.flip, generator=generator,
        )  # fmt: skip
        lr = optimizer.param_groups[0]["lr"]
        result = engine.train_one_epoch(net, train_loader, optimizer, transform, ctx, autocast, memory_format,
                                        f"epoch {epoch + 1}/{recipe.epochs}", after_step, budget)  # fmt: skip
        val = engine.evaluate(classifier, val_loader, ctx, autocast, desc="validate")
        scheduler = live["scheduler"]
        if recipe.schedule == "plateau":
            scheduler.step(val["top1_centre_error"])
        history.append({
            "epoch": epoch + 1, "lr": lr, "train_loss": result.loss, "train_error": result.error,
            "train_images": result.images, "train_img_per_s": result.images / result.seconds,
            "skipped": len(result.problems), **{f"val_{k}": v for k, v in val.items()},
            **({"time_budget": {"seconds": budget.seconds, "steps_cap": budget.cap, "planned_steps": budget.planned_steps,
                                "seconds_per_step": budget.seconds_per_step, "stopped_early": budget.exhausted()}} if budget else {}),
        })  # fmt: skip
        if result.problems:
            shown = "; ".join(result.problems[:10]) + (f"; ... {len(result.problems) - 10} more" if len(result.problems) > 10 else "")
            log.warning("epoch %d: skipped %d unreadable image(s): %s", epoch + 1, len(result.problems), shown)
        if ctx.is_main:
            save_epoch(run, args, model, optimizer, scheduler, epoch, history)
            log.info(
                "epoch %d: train loss %.4f err %.3f (%.1f img/s) | val top-1 %.3f top-5 %.3f (centre) | lr %g",
                epoch + 1, result.loss, result.error, history[-1]["train_img_per_s"], val["top1_centre_error"], val["top5_centre_error"], lr,
            )  # fmt: skip
        distributed.barrier(ctx)
        if budget is not None and budget.exhausted():
            if ctx.is_main:
                log.info("stopped by the time budget after %d of %d steps, %.0f s after the start", budget.steps, budget.planned_steps,
                         time.perf_counter() - started)  # fmt: skip
            break
    digest = distributed.check_replicas(model, ctx)
    if ctx.is_main and ctx.enabled:
        log.info("all %d ranks hold identical weights (sha256 %s)", ctx.world_size, digest[:16])
    return history[-1] if history else {}


def evaluate_checkpoint(args: argparse.Namespace, ctx: distributed.Context) -> dict[str, Any]:
    state = checkpoint.load(args.evaluate)
    val_set = data.open_split(args.data, "val")
    if list(val_set.classes) != list(state["classes"]):
        raise DataError(f"{args.evaluate} was trained on {state['num_classes']} classes; {args.data} has {len(val_set.classes)}")
    recipe = Recipe.from_dict(state["recipe"])
    explicit = _explicit_recipe(args)
    limit = explicit.get("val_limit", 0)
    batch = explicit.get("batch_size", 64)
    val_idx = data.subset_indices(len(val_set), limit, recipe.seed + 1) or list(range(len(val_set)))
    classifier = checkpoint.classifier(state, args.crops).to(ctx.device)
    loader = data.make_loader(val_set, batch, _shard(val_idx, ctx), explicit.get("workers", recipe.workers), ctx.device.type == "cuda")
    return engine.evaluate(classifier, loader, ctx, accel.autocast(ctx.device, recipe.amp), desc="evaluate")


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    ctx = distributed.init(args.device)
    if not ctx.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        if args.evaluate:
            result = evaluate_checkpoint(args, ctx)
            if ctx.is_main:
                print(json.dumps(result, indent=2) if args.json else "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()))
        else:
            train(args, ctx)
    finally:
        distributed.shutdown(ctx)
    return 0


def cli(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        return main(args)
    except (DataError, CheckpointError, RecipeError) as exc:
        print(f"alexnet-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alexnet-train: interrupted; the last finished epoch is in the checkpoint (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(cli())
