"""alexnet-bench --scenario: MLPerf LoadGen (mlcommons-loadgen) drives the server as its system under test.

LoadGen issues queries by its scenario's rules and measures them; each query sample is one
request of the benchmark's images, answered from a pool of worker threads.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable


def run(make_call: Callable[[], Callable[[int], object]], samples: int, scenario: str, duration: float, target_qps: float, out: Path) -> int:
    """Run one LoadGen performance test: ``make_call()`` gives each worker thread its own caller
    of sample indices 0..``samples``-1; ``scenario`` singlestream, server or offline; ``duration``
    seconds at least; LoadGen's logs (mlperf_log_summary.txt, ...) land in ``out``.  0 when
    LoadGen wrote its summary, else 1."""
    import mlperf_loadgen as lg

    pool = ThreadPoolExecutor(16)
    local = threading.local()

    def call(index: int) -> None:
        if not hasattr(local, "call"):
            local.call = make_call()
        local.call(index)

    def answer(sample) -> None:
        try:
            call(sample.index)
        finally:
            lg.QuerySamplesComplete([lg.QuerySampleResponse(sample.id, 0, 0)])

    def issue(samples) -> None:
        for sample in samples:
            pool.submit(answer, sample)

    settings = lg.TestSettings()
    settings.scenario = {"singlestream": lg.TestScenario.SingleStream, "server": lg.TestScenario.Server, "offline": lg.TestScenario.Offline}[scenario]
    settings.mode = lg.TestMode.PerformanceOnly
    settings.min_duration_ms = int(duration * 1000)
    settings.max_duration_ms = int(duration * 1000 * 4)
    settings.min_query_count = 8
    settings.server_target_qps = target_qps
    settings.server_target_latency_ns = int(2e9)
    settings.offline_expected_qps = target_qps
    settings.single_stream_expected_latency_ns = int(2e8)
    log_settings = lg.LogSettings()
    out.mkdir(parents=True, exist_ok=True)
    log_settings.log_output.outdir = str(out.resolve())
    log_settings.log_output.copy_summary_to_stdout = True
    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(samples, samples, lambda _: None, lambda _: None)
    try:
        lg.StartTestWithLogSettings(sut, qsl, settings, log_settings)
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
        pool.shutdown(wait=True)
    summary = out / "mlperf_log_summary.txt"
    return 0 if summary.is_file() else 1
