"""alexnet-bench --soak SECONDS: the server at saturation for a long time; errors and memory over time.

One level of ``concurrency`` callers runs for the whole duration; every ``--soak-interval``
seconds a sample records the images/s, the errors and the resident memory of the server
(tritonserver and its python stubs, found by --url's port).  The first 10% of the run (at
least one sample) is warm-up: allocators and caches grow there.  The verdict: no errors, and
the RSS at the end within 5% of the RSS after warm-up.  Writes soak.json, soak.csv and soak.png.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import threading
import time
from typing import Callable

from alexnet_server.clients.load import ServerMemory
from alexnet_server.contract import cpu, files

MAX_GROWTH = 0.05


def run(args: argparse.Namespace, images: list[bytes], concurrency: int, served_caller: Callable) -> int:
    make_call, probe = served_caller(args, images)
    memory = ServerMemory(probe.url)
    if memory.rss_mib() is None:
        print("alexnet-bench: warning: the server's processes are not visible from here; RSS is not measured", file=sys.stderr)
    counts = {"ok": 0, "errors": 0}
    first_error: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(k: int) -> None:
        call, i = make_call(), k
        while not stop.is_set():
            try:
                call(i)
                key = "ok"
            except Exception as exc:  # noqa: BLE001 - counted, the first one kept
                key = "errors"
                if not first_error:
                    first_error.append(str(exc))
            with lock:
                counts[key] += 1
            i += concurrency

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    samples = []
    last = {"ok": 0, "errors": 0}
    print(f"soak: {concurrency} callers for {args.soak:.0f} s, a sample every {args.soak_interval:.0f} s; CPU: {cpu.line()}")
    print(f"{'t (s)':>8}{'img/s':>9}{'errors':>8}{'RSS MiB':>10}")
    try:
        while time.monotonic() - started < args.soak:
            time.sleep(min(args.soak_interval, max(0.0, args.soak - (time.monotonic() - started))))
            with lock:
                now = dict(counts)
            elapsed = time.monotonic() - started
            span = elapsed - (samples[-1]["t_s"] if samples else 0.0)
            sample = {"t_s": round(elapsed, 1), "images_per_s": (now["ok"] - last["ok"]) * args.batch / span if span else 0.0,
                      "errors": now["errors"] - last["errors"], "rss_mib": memory.rss_mib()}  # fmt: skip
            last = now
            samples.append(sample)
            rss = "" if sample["rss_mib"] is None else f"{sample['rss_mib']:.0f}"
            print(f"{sample['t_s']:>8.0f}{sample['images_per_s']:>9.2f}{sample['errors']:>8}{rss:>10}", flush=True)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
        probe.close()
    return report(args, samples, counts, first_error, concurrency)


def report(args: argparse.Namespace, samples: list[dict], counts: dict, first_error: list[str], concurrency: int) -> int:
    warm = max(1, len(samples) // 10)
    rss = [s["rss_mib"] for s in samples if s["rss_mib"] is not None]
    base = samples[warm - 1]["rss_mib"] if len(samples) >= warm and samples[warm - 1]["rss_mib"] is not None else None
    growth = (rss[-1] - base) / base if base and rss else None
    summary = {
        "seconds": args.soak, "concurrency": concurrency, "batch": args.batch, "requests_ok": counts["ok"], "errors": counts["errors"],
        "first_error": first_error[0] if first_error else "", "rss_after_warmup_mib": base, "rss_end_mib": rss[-1] if rss else None,
        "rss_max_mib": max(rss) if rss else None, "rss_growth_after_warmup": growth, "max_growth": MAX_GROWTH, "cpu": cpu.describe(),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    files.atomic_write(args.out / "soak.json", json.dumps({"summary": summary, "samples": samples}, indent=2) + "\n")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["t_s", "images_per_s", "errors", "rss_mib"])
    writer.writeheader()
    writer.writerows(samples)
    files.atomic_write(args.out / "soak.csv", text.getvalue())
    _plot(args.out, samples, warm)
    grew = "" if growth is None else f", RSS {base:.0f} -> {rss[-1]:.0f} MiB after warm-up ({growth:+.1%}; limit {MAX_GROWTH:.0%})"
    print(f"soak: {counts['ok']} requests, {counts['errors']} errors{grew}; wrote {args.out / 'soak.json'}, soak.csv, soak.png")
    if counts["errors"]:
        print(f"alexnet-bench: soak had {counts['errors']} error(s); first: {summary['first_error']}", file=sys.stderr)
        return 1
    if growth is not None and growth >= MAX_GROWTH:
        print(f"alexnet-bench: the server's memory grew {growth:.1%} after warm-up (limit {MAX_GROWTH:.0%})", file=sys.stderr)
        return 1
    return 0


def _plot(out, samples: list[dict], warm: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    top.plot(t, [s["images_per_s"] for s in samples], "o-")
    top.set(ylabel="images/s", title="alexnet-bench --soak")
    bottom.plot(t, [s["rss_mib"] if s["rss_mib"] is not None else float("nan") for s in samples], "s-", color="tab:red")
    bottom.set(xlabel="minutes", ylabel="server RSS (MiB)")
    if samples:
        bottom.axvline(t[warm - 1], color="grey", linestyle=":", label="end of warm-up")
        bottom.legend()
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with files.atomic_output(out / "soak.png") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
