"""alexnet-bench's outputs: the terminal table, same-run ratios, results.json, results.csv and latency.png.

Each level is a ``clients.load.Level``; ``meta`` (written into results.json) names the CPU,
the server's runtime and what was measured.  Files are written atomically.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from alexnet_server.clients.load import PERCENTILES, Level
from alexnet_server.contract import MODEL, files


def print_table(levels: list[Level]) -> None:
    head = f"{'target':<18}{'conc':>5}{'img/s':>9}{'p50':>9}{'p90':>9}{'p95':>9}{'p99':>9}{'max':>9}{'err':>5}  server split (ms/request: queue, infer, batch)"
    print(head)
    for lv in levels:
        lat = lv.latency_ms
        split = lv.server_ms.get(MODEL, {})
        extra = f"  q {split.get('queue', 0):.1f}  infer {split.get('compute_infer', 0):.1f}  b {split.get('avg_batch', 0):.1f}" if split else ""
        if lv.arrival_rate is not None:  # open loop: the offered rate, accepted and refused requests, peak memory
            rss = f"  peak RSS {lv.server_rss_mib:.0f} MiB" if lv.server_rss_mib else ""
            print(f"{lv.target:<18}{lv.arrival_rate:>4g}/s accepted {lv.requests} ({lv.throughput:.2f} img/s), refused {lv.errors}; accepted latency "
                  + (f"p50 {lat['p50']:.0f} p99 {lat['p99']:.0f} max {lat['max']:.0f} ms" if lat else "none") + rss)  # fmt: skip
            continue
        if not lat:  # a slow or busy machine: no request finished inside the level's time
            print(f"{lv.target:<18}{lv.concurrency:>5}  no request completed within {lv.seconds:.0f} s ({lv.errors} errors): raise --duration")
            continue
        print(f"{lv.target:<18}{lv.concurrency:>5}{lv.throughput:>9.2f}" + "".join(f"{lat.get(k, float('nan')):>9.1f}" for k in ("p50", "p90", "p95", "p99", "max"))
              + f"{lv.errors:>5}{extra}")  # fmt: skip


def print_ratios(levels: list[Level], target: str, baseline: str) -> None:
    """Per concurrency: ``target``'s throughput over ``baseline``'s and its p50 minus the baseline's,
    each level against the baseline level run right after it.  A concurrency listed more than once
    (``--concurrency 8,8,8``) is pooled: throughput summed over its rounds, the median p50 difference."""
    pairs: dict[int, list[tuple[Level, Level]]] = {}
    for i, lv in enumerate(levels):
        if lv.target != target:
            continue
        base = next((b for b in levels[i + 1 :] if b.target == baseline and b.concurrency == lv.concurrency), None)
        if base is not None:
            pairs.setdefault(lv.concurrency, []).append((lv, base))
    for c, rounds in pairs.items():
        done = [(a, b) for a, b in rounds if "p50" in a.latency_ms and "p50" in b.latency_ms and b.throughput]
        if not done:
            print(f"{target} vs {baseline} at {c} client(s): no completed requests to compare")
            continue
        ratio = sum(a.throughput for a, _ in done) / sum(b.throughput for _, b in done)
        delta = float(np.median([a.latency_ms["p50"] - b.latency_ms["p50"] for a, b in done]))
        print(f"{target} vs {baseline} at {c} client(s), {len(done)} round(s): throughput {ratio:.3f}x, p50 {delta:+.1f} ms")


def write_outputs(out: Path, levels: list[Level], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files.atomic_write(out / "results.json", json.dumps({"meta": meta, "levels": [asdict(lv) for lv in levels]}, indent=2) + "\n")
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["target", "concurrency", "requests", "errors", "throughput", *[f"p{p}_ms" for p in PERCENTILES], "max_ms",
                     "alexnet_queue_ms", "alexnet_infer_ms", "alexnet_avg_batch", "server_rss_mib"])  # fmt: skip
    for lv in levels:
        split = lv.server_ms.get(MODEL, {})
        writer.writerow([lv.target, lv.concurrency, lv.requests, lv.errors, f"{lv.throughput:.3f}",
                         *[f"{lv.latency_ms.get(f'p{p}', float('nan')):.2f}" for p in PERCENTILES], f"{lv.latency_ms.get('max', float('nan')):.2f}",
                         f"{split.get('queue', 0):.2f}", f"{split.get('compute_infer', 0):.2f}", f"{split.get('avg_batch', 0):.2f}",
                         "" if lv.server_rss_mib is None else f"{lv.server_rss_mib:.0f}"])  # fmt: skip
    files.atomic_write(out / "results.csv", text.getvalue())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for target in dict.fromkeys(lv.target for lv in levels):
        rows = [lv for lv in levels if lv.target == target and lv.latency_ms]
        for key, style in (("p50", "o-"), ("p99", "s--")):
            ax.plot([lv.throughput for lv in rows], [lv.latency_ms[key] for lv in rows], style, label=f"{target} {key}")
            for lv in rows:
                ax.annotate(str(lv.concurrency), (lv.throughput, lv.latency_ms[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="throughput (images/s)", ylabel="latency (ms)", title=f"AlexNet {meta['model']} ({meta['protocol']}); labels: concurrency")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with files.atomic_output(out / "latency.png") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
