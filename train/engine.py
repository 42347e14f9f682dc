"""The two phases: ``train_one_epoch`` and ``evaluate``, with explicit arguments."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm import tqdm

from alexnet_server import imaging
from alexnet_server.train import distributed
from alexnet_server.train.budget import TimeBudget
from alexnet_server.train.model import CropAverage


@dataclass
class EpochResult:
    loss: float
    error: float
    images: int
    seconds: float
    problems: list[str] = field(default_factory=list)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    batch_transform: Callable[[torch.Tensor], torch.Tensor],
    ctx: distributed.Context,
    autocast: Callable[[], contextlib.AbstractContextManager],
    memory_format: torch.memory_format,
    desc: str,
    after_step: Callable[[], None] | None = None,
    budget: TimeBudget | None = None,
) -> EpochResult:
    """One pass over ``loader``; ``after_step`` (a per-step lr schedule) runs after every optimiser
    step; a time ``budget`` (counted by ``after_step``) ends the pass early once exhausted, and
    the progress bar shows its cap once it is known."""
    model.train()
    criterion = nn.CrossEntropyLoss()
    loss_sum, wrong, seen, problems = 0.0, 0, 0, []
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, unit="batch", disable=not ctx.is_main, dynamic_ncols=True, leave=True)
    for images, labels, bad in bar:
        problems.extend(bad)
        images = images.to(ctx.device, non_blocking=True)
        labels = labels.to(ctx.device, non_blocking=True)
        n = len(labels)
        # Every rank takes every step, even when all of its files in this batch were unreadable:
        # under DDP a rank that skipped would miss the gradient all-reduce and the ranks would
        # drift apart.  An empty batch contributes a zero loss (zero gradients) to the average.
        x = batch_transform(images) if n else images.new_zeros((0, 3, imaging.CROP, imaging.CROP), dtype=torch.float32)
        x = x.contiguous(memory_format=memory_format)
        with autocast():
            logits = model(x)
            loss = criterion(logits.float(), labels) if n else logits.float().sum() * 0.0
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        stop = budget is not None and budget.exhausted()
        if budget is not None and budget.cap is not None and bar.total != budget.cap - budget.steps + bar.n + 1:
            bar.total = budget.cap - budget.steps + bar.n + 1  # this pass's steps under the cap
            bar.refresh()

        if n == 0:
            if stop:
                break
            continue
        loss_sum += loss.item() * n
        wrong += (logits.argmax(dim=1) != labels).sum().item()
        seen += n
        elapsed = time.perf_counter() - start
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", err=f"{wrong / seen:.3f}", img_s=f"{seen * ctx.world_size / elapsed:.1f}")
        if stop:
            break
    bar.close()
    loss_sum, wrong, seen = distributed.all_reduce_sum([loss_sum, wrong, seen], ctx)
    seconds = time.perf_counter() - start
    return EpochResult(loss_sum / max(seen, 1), wrong / max(seen, 1), int(seen), seconds, problems)


@torch.no_grad()
def evaluate(
    classifier: CropAverage,
    loader: Iterable,
    ctx: distributed.Context,
    autocast: Callable[[], contextlib.AbstractContextManager],
    desc: str = "eval",
) -> dict[str, float]:
    """Top-1/top-5 error of the centre crop, and of the 10-crop average when the classifier has 10.

    One forward pass of all crops gives both: the centre crop is one of the ten.
    """
    classifier.eval()
    sums = {"top1_centre": 0.0, "top5_centre": 0.0, "top1_10crop": 0.0, "top5_10crop": 0.0, "loss": 0.0, "n": 0.0}
    problems: list[str] = []
    for images, labels, bad in tqdm(loader, desc=desc, unit="batch", disable=not ctx.is_main, leave=False):
        problems.extend(bad)
        if len(images) == 0:
            continue
        images, labels = images.to(ctx.device), labels.to(ctx.device)
        with autocast():
            per_crop = classifier.crop_probs(images).float()
        centre = per_crop[:, imaging.CENTRE if per_crop.shape[1] == 10 else 0]
        outputs = {"centre": centre}
        if per_crop.shape[1] == 10:
            outputs["10crop"] = per_crop.mean(dim=1)
        for name, probs in outputs.items():
            k = min(5, probs.shape[1])
            topk = probs.topk(k, dim=1).indices
            sums[f"top1_{name}"] += (topk[:, 0] != labels).sum().item()
            sums[f"top5_{name}"] += (~(topk == labels[:, None]).any(dim=1)).sum().item()
        sums["loss"] += -torch.log(centre.gather(1, labels[:, None]).clamp_min(1e-12)).sum().item()
        sums["n"] += len(labels)
    keys = list(sums)
    totals = dict(zip(keys, distributed.all_reduce_sum([sums[k] for k in keys], ctx)))
    n = max(totals.pop("n"), 1.0)
    crops = 10 if len(classifier.boxes) == 10 else 1
    result = {"images": int(n), "loss": totals.pop("loss") / n}
    for key, value in totals.items():
        if crops == 1 and key.endswith("10crop"):
            continue
        result[f"{key}_error"] = value / n
    result["skipped"] = len(problems)
    return result
