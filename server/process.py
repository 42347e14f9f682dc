"""A supervised child process (Triton, or the nginx front): its own session, its log, its stop.

Started in its own session so that Ctrl-C reaches alexnet-serve, which stops its children in
order; everything it started (Triton's python-backend stubs, nginx's workers) shares its
process group and goes with it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

ERROR_LINE = re.compile(r"^E\d{4} |UNAVAILABLE|error|failed|emerg|alert|crit", re.I)
# Printed by every Triton on a machine without a GPU; not why a model failed.
BENIGN = re.compile(r"CudaDriverHelper|NVML|DCGM|cuda_memory_manager|pinned memory pool", re.I)


def wait_ready(proc: subprocess.Popen, probe: Callable[[], bool], timeout: float, stop: threading.Event) -> bool:
    """Poll ``probe`` until it says ready (True), the process exits or a stop is asked for (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        if proc.poll() is not None:
            return False
        if probe():
            return True
        time.sleep(0.25)
    return False


def _pump(stream, log_path: Path, echo: bool) -> None:
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        for line in iter(stream.readline, ""):
            log.write(line)
            log.flush()
            if echo:
                sys.stderr.write(line)


def _error_lines(lines: list[str], limit: int = 20) -> list[str]:
    hits = [line for line in lines if ERROR_LINE.search(line) and not BENIGN.search(line)]
    return (hits or lines)[-limit:]


class Process:
    """One child: its output appended to ``log_path`` (and echoed with ``echo``)."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path, echo: bool) -> None:
        self.log_path = log_path
        self.log_start = len(log_path.read_text(errors="replace").splitlines()) if log_path.is_file() else 0
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.pump = threading.Thread(target=_pump, args=(self.proc.stdout, log_path, echo), daemon=True)
        self.pump.start()

    def errors(self) -> list[str]:
        self.pump.join(timeout=2 if self.proc.poll() is not None else 0)
        return _error_lines(self.log_lines())

    def stop(self, drain: float, sig: int = signal.SIGTERM) -> int:
        """Ask it to stop with ``sig`` and wait; its exit code (1 when it had to be killed).

        Triton (SIGTERM) refuses new requests, lets those in flight finish (up to its exit
        timeout, ``--drain-timeout``), unloads the models and exits; nginx (SIGQUIT) stops
        accepting and exits once the requests in flight are answered.

        Triton 2.51's stop first waits, up to the same timeout, for its HTTP connections to
        close -- idle keep-alive connections among them -- and the models' unloading then has
        no time left: it exits 1 ("Exit timeout expired") though nothing was lost.  When its
        last count shows no model version with inferences in flight, that is a clean stop."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=drain + 30)
        except subprocess.TimeoutExpired:
            code = None
        self.reap()
        log = "\n".join(self.log_lines())
        if code not in (0, None) and "Exit timeout expired" in log:
            counts = re.findall(r"Timeout \d+: Found (\d+) model versions that have in-flight inferences", log)
            if counts and counts[-1] == "0":
                return 0
        return 1 if code is None else code

    def log_lines(self) -> list[str]:
        """This process's part of the log (a restarted Triton appends to the same file)."""
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines() if self.log_path.is_file() else []
        return lines[self.log_start :]

    def reap(self) -> None:
        """Nothing left running: Triton and its python-backend stubs share its process group."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.pump.join(timeout=5)
