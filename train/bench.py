"""Benchmark: training throughput of the paper arch, synthetic tensors vs the real JPEG pipeline, same run.

    python -m alexnet_server.train.bench                        # batch 128, a generated folder of camera-sized JPEGs
    python -m alexnet_server.train.bench --images /data/imagenet --steps 20 --json train-bench.json
    python -m alexnet_server.train.bench --device cuda --amp --channels-last

(a) uint8 batches already in memory; (b) the loader decoding JPEGs from a folder in worker
processes.  Both then run the same step (augmentation, forward, backward, SGD).  The ratio
b/a says whether the input pipeline keeps the model fed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from alexnet_server import imaging
from alexnet_server.contract.cli import HelpFormatter
from alexnet_server.train import accel, data, distributed
from alexnet_server.train.model import alexnet
from alexnet_server.train.model import normalisation
from alexnet_server.train.transforms import random_crops


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m alexnet_server.train.bench", description=__doc__.split("\n\n")[0], add_help=add_help,
                                     formatter_class=HelpFormatter)  # fmt: skip
    parser.add_argument("--images", type=Path, help="an ImageFolder root (DIR/train/<class>/*.jpg); default: generated JPEGs")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="measured steps per mode (after one warm-up step)")
    parser.add_argument("--workers", type=int, default=max(1, len(os.sched_getaffinity(0))), help="loader worker processes")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA; CPUs with AMX or AVX512-BF16)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (the warm-up step pays the compile)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser


def make_jpeg_folder(root: Path, count: int, size=(500, 375)) -> Path:
    """Camera-like JPEGs (ImageNet's typical 500x375), smooth noise so they compress like photos."""
    rng = np.random.default_rng(0)
    from PIL import Image

    for i in range(count):
        folder = root / "train" / f"class_{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def main(args: argparse.Namespace) -> int:
    ctx = distributed.init(args.device)
    torch.manual_seed(0)
    model = alexnet("paper", 1000).to(ctx.device)
    memory_format = accel.memory_format(args.channels_last)
    model = model.to(memory_format=memory_format)
    net = accel.compiled(model, args.compile)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    criterion = torch.nn.CrossEntropyLoss()
    offset, scale = (t.to(ctx.device) for t in normalisation("paper", np.full((3, imaging.SIZE, imaging.SIZE), 114.0, np.float32)))
    augment = partial(random_crops, offset=offset, scale=scale, eigenvalues=torch.tensor([0.02, 0.005, 0.001]),
                      eigenvectors=torch.eye(3), pca_std=0.1, flip=True, generator=torch.Generator().manual_seed(0))  # fmt: skip
    autocast = accel.autocast(ctx.device, args.amp)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        images, labels = images.to(ctx.device, non_blocking=True), labels.to(ctx.device, non_blocking=True)
        with autocast():
            loss = criterion(net(augment(images).contiguous(memory_format=memory_format)).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()

    def timed(batches) -> float:
        it = iter(batches)
        step(*next(it)[:2])  # warm-up: allocator, kernels, worker start-up
        n, start = 0, time.perf_counter()
        for images, labels, *_ in itertools.islice(it, args.steps):
            step(images, labels)
            n += len(labels)
        return n / (time.perf_counter() - start)

    b = args.batch_size
    synthetic = torch.randint(0, 256, (b, 3, imaging.SIZE, imaging.SIZE), dtype=torch.uint8)
    labels = torch.randint(0, 1000, (b,))
    results = {"synthetic": timed(itertools.repeat((synthetic, labels), args.steps + 1))}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.images or make_jpeg_folder(Path(tmp), b * (args.steps + 1))
        dataset = data.open_split(str(root), "train")
        order = [i % len(dataset) for i in range(b * (args.steps + 1))]
        loader = data.make_loader(dataset, b, order, args.workers, pin=ctx.device.type == "cuda")
        results["jpeg_pipeline"] = timed(loader)
    ratio = results["jpeg_pipeline"] / results["synthetic"]
    print(f"paper AlexNet, batch {b}, {ctx.device}, amp={args.amp}, channels_last={args.channels_last}, "
          f"{args.workers} workers, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs")  # fmt: skip
    print(f"(a) synthetic tensors : {results['synthetic']:8.1f} img/s")
    print(f"(b) JPEG pipeline     : {results['jpeg_pipeline']:8.1f} img/s")
    print(f"    ratio b/a         : {ratio:8.2f}")
    if args.json:
        args.json.write_text(json.dumps({**results, "ratio": ratio, "batch_size": b, "device": str(ctx.device), "workers": args.workers}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
