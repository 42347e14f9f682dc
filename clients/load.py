"""Making load and measuring it: levels of concurrent callers, Triton's split of the time, server memory."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass
class Level:
    target: str
    concurrency: int
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    throughput: float = 0.0  # images/s over the measured window
    latency_ms: dict[str, float] = field(default_factory=dict)
    server_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    server_rss_mib: float | None = None
    first_error: str = ""
    arrival_rate: float | None = None  # requests/s of an open-loop level (None: closed loop, ``concurrency`` callers)


def run_level(target: str, concurrency: int, make_call: Callable[[], Callable[[int], int]], duration: float, warmup: float,
              images_per_call: int = 1) -> Level:  # fmt: skip
    """``concurrency`` threads call their own ``call(i)`` back to back; calls inside the measured window count.

    Throughput counts images (``images_per_call`` per call); errors are counted and the first
    one is kept, never raised."""
    start_at = time.perf_counter() + warmup
    stop_at = start_at + duration
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    first_error: list[str] = []

    def worker(k: int) -> None:
        call = make_call()
        i = k
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                call(i)
                ok = True
            except Exception as exc:  # noqa: BLE001 - counted, the first one reported
                ok = False
                if not first_error:
                    first_error.append(str(exc))
            t1 = time.perf_counter()
            if t0 >= start_at and t1 <= stop_at:
                if ok:
                    latencies[k].append(t1 - t0)
                else:
                    errors[k] += 1
            i += concurrency

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = np.array([x for per in latencies for x in per]) * 1000
    level = Level(target, concurrency, errors=sum(errors), seconds=duration, first_error=first_error[0] if first_error else "")
    return _summarise(level, flat, images_per_call)


def _summarise(level: Level, latencies_ms: np.ndarray, images_per_call: int) -> Level:
    """Fill in the completed requests, images/s and latency percentiles from the accepted requests' latencies."""
    level.requests = int(latencies_ms.size)
    level.throughput = latencies_ms.size * images_per_call / level.seconds
    if latencies_ms.size:
        level.latency_ms = {f"p{p}": float(np.percentile(latencies_ms, p)) for p in PERCENTILES}
        level.latency_ms["max"] = float(latencies_ms.max())
        level.latency_ms["mean"] = float(latencies_ms.mean())
    return level


def run_open_level(target: str, rate: float, make_call: Callable[[], Callable[[int], int]], duration: float, warmup: float,
                   images_per_call: int = 1, max_in_flight: int = 512, on_sample: Callable[[], None] | None = None) -> Level:  # fmt: skip
    """Open loop: one request every 1/``rate`` s whatever the answers (up to ``max_in_flight`` at once),
    as independent users arrive; the way to offer a server more than it can take.

    Latency counts only the accepted requests (answered without error); errors (refusals) are
    counted, the first kept.  ``on_sample`` is called about once a second (e.g. to sample memory)."""
    from concurrent.futures import ThreadPoolExecutor

    local = threading.local()
    lock = threading.Lock()
    ok: list[float] = []
    errors = [0]
    first_error: list[str] = []
    start_at = time.perf_counter() + warmup
    stop_at = start_at + duration

    def one(i: int, due: float) -> None:
        if not hasattr(local, "call"):
            local.call = make_call()
        try:
            local.call(i)
            failed = None
        except Exception as exc:  # noqa: BLE001 - counted, the first one reported
            failed = str(exc)
        done = time.perf_counter()
        if due < start_at or done > stop_at:
            return
        with lock:
            if failed is None:
                ok.append(done - due)  # from when it was due: a client-side wait counts too
            else:
                errors[0] += 1
                if not first_error:
                    first_error.append(failed)

    with ThreadPoolExecutor(max_workers=max_in_flight) as pool:
        i, next_sample = 0, time.perf_counter()
        while True:
            due = start_at - warmup + i / rate
            if due >= stop_at:
                break
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            pool.submit(one, i, due)
            i += 1
            if on_sample is not None and time.perf_counter() >= next_sample:
                on_sample()
                next_sample += 1.0
    level = Level(target, 0, errors=errors[0], seconds=duration, first_error=first_error[0] if first_error else "", arrival_rate=rate)
    return _summarise(level, np.array(ok) * 1000, images_per_call)


def server_split(before: dict, after: dict) -> dict[str, float]:
    """Average ms per request in each phase between two statistics snapshots, and the average batch."""
    out = {}
    b, a = before.get("inference_stats", {}), after.get("inference_stats", {})
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        count = int(a.get(phase, {}).get("count", 0)) - int(b.get(phase, {}).get("count", 0))
        ns = int(a.get(phase, {}).get("ns", 0)) - int(b.get(phase, {}).get("ns", 0))
        out[phase] = ns / count / 1e6 if count else 0.0
    inferences = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    executions = int(after.get("execution_count", 0)) - int(before.get("execution_count", 0))
    out["avg_batch"] = inferences / executions if executions else 0.0
    return out


class ServerMemory:
    """Resident memory of the server behind ``url``: alexnet-serve with its front (nginx) and
    Triton with its python-backend stubs, or a Triton started some other way with its stubs.

    Found once, with psutil: the process listening on the URL's port on this host, then up
    through an nginx and the alexnet-serve that started it.  None when the server runs
    elsewhere or is not found."""

    def __init__(self, url: str) -> None:
        self.pid = None
        parts = urlsplit(url if "//" in url else f"//{url}")
        if parts.hostname not in ("127.0.0.1", "localhost", "::1", "0.0.0.0", None):
            return
        try:
            import psutil

            for conn in psutil.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == parts.port and conn.pid:
                    self.pid = conn.pid
                    break
            if self.pid is not None:
                for parent in psutil.Process(self.pid).parents():
                    if parent.name() != "nginx" and not any(arg.endswith(("alexnet-serve", "server")) for arg in parent.cmdline()[:3]):
                        break
                    self.pid = parent.pid
        except Exception:  # noqa: BLE001 - no permission to see sockets: memory is then unknown
            self.pid = None

    def rss_mib(self) -> float | None:
        if self.pid is None:
            return None
        import psutil

        try:
            server = psutil.Process(self.pid)
            processes = [server, *server.children(recursive=True)]
            total = 0
            for process in processes:
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            return total / 2**20
        except psutil.NoSuchProcess:
            return None
