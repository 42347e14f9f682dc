"""alexnet-classify: top-k labels for a few images, from a running AlexNet Triton server.

    alexnet-classify photo.jpg other.png
    alexnet-classify --protocol http --url 127.0.0.1:8000 --topk 3 --json *.jpg
"""

from __future__ import annotations

import argparse
import json
import sys

from alexnet_server import imaging
from alexnet_server.contract import ENSEMBLE, MODEL
from alexnet_server.clients.classifier import Classifier, ClassifierError
from alexnet_server.clients.protocol import DEFAULT_URLS, PROTOCOLS, add_credential_arguments, credentials_from
from alexnet_server.contract.cli import HelpFormatter


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alexnet-classify", description=__doc__.split("\n\n")[0], add_help=add_help,
                                     formatter_class=HelpFormatter)  # fmt: skip
    parser.add_argument("images", nargs="+", metavar="IMAGE", help=f"image files ({imaging.FORMAT_NAMES})")
    parser.add_argument("--url", help=f"Triton address (default: {DEFAULT_URLS['grpc']} for grpc, {DEFAULT_URLS['http']} for http)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    parser.add_argument("--model", default=ENSEMBLE, help=f"{ENSEMBLE} (bytes in) or {MODEL} (the client decodes)")
    parser.add_argument("--topk", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    add_credential_arguments(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    if args.topk < 1:
        print("alexnet-classify: error: --topk must be >= 1", file=sys.stderr)
        return 2
    failed = 0
    rows = []
    try:
        with Classifier(args.url, args.protocol, model=args.model, credentials=credentials_from(args)) as clf:
            results = list(clf.classify_many(args.images, args.topk, ordered=True))
    except ClassifierError as exc:
        print(f"alexnet-classify: error: {exc}", file=sys.stderr)
        return 2
    for result in results:
        if result.error is not None:
            failed += 1
            rows.append({"image": result.source, "error": str(result.error)})
            if not args.json:
                print(f"alexnet-classify: {result.source}: {result.error}", file=sys.stderr)
            continue
        rows.append({"image": result.source, "top": [{"label": l, "score": s} for l, s in result.labels]})
        if not args.json:
            print(f"{result.source}: " + ", ".join(f"{label} {score:.3f}" for label, score in result.labels))
    if args.json:
        print(json.dumps(rows, indent=2))
    return 1 if failed else 0


def cli(argv: list[str] | None = None) -> int:
    try:
        return main(get_args_parser().parse_args(argv))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(cli())
