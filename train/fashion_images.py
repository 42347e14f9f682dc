"""Write Fashion-MNIST test images as PNG files, one folder per class index (00..09).

    python -m alexnet_server.train.fashion_images runs/demo/test-images --count 1000

Class names hold a "/" ("T-shirt/top"), so folders are named by index; labels.txt of
the exported model maps indices to names.  The sample is the first COUNT of a seeded
permutation of the test set, so it is the same every run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from alexnet_server.train import data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alexnet_server.train.fashion_images", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist or a folder of its IDX files")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        test = data.open_split(args.data, "val")
    except data.DataError as exc:
        print(f"fashion_images: error: {exc}", file=sys.stderr)
        return 2
    if not isinstance(test, data.FashionMNIST):
        print(f"fashion_images: error: {args.data} is not Fashion-MNIST", file=sys.stderr)
        return 2
    indices = data.subset_indices(len(test), args.count, args.seed) or range(len(test))
    for i in indices:
        folder = args.out / f"{int(test.labels[i]):02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[i], "L").save(folder / f"{i:05d}.png")
    print(f"wrote {len(indices)} PNG files under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
