"""Supervision: alexnet-serve's children (nginx, Triton) started, watched and restarted in place.

A ``Child`` is what supervision needs to know of one process: how to start it, when it is
ready, and what is wrong with it while it runs (a real request through ``classify`` for
Triton, the readiness answer on the public port for the front).  ``Supervisor.run`` starts
them in order, then reacts to one ``Event`` at a time -- a stop asked for, a child that exited,
a child that failed its checks ``health_failures`` times in a row -- by stopping cleanly or by
restarting that child, at most ``max_restarts`` times in all; then it gives up (exit 1) so that
the supervisor above it (Kubernetes, systemd) takes over.
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

from alexnet_server.server.process import Process, wait_ready

EXIT_OK, EXIT_FAILED = 0, 1


@dataclass
class Child:
    name: str  # "front" | "triton": events name it
    label: str  # "the front (nginx)" | "Triton": messages name it
    start: Callable[[], Process]
    ready: Callable[[], bool]
    problem: Callable[[], str | None]  # None: healthy; else why not, in a few words
    log: Path
    ready_timeout: float
    stop_signal: int = signal.SIGTERM
    process: Process | None = field(default=None, repr=False)


@dataclass(frozen=True)
class StopAsked:
    pass


@dataclass(frozen=True)
class Exited:
    child: Child
    code: int


@dataclass(frozen=True)
class Unhealthy:
    child: Child
    why: str
    checks: int


Event = Union[StopAsked, Exited, Unhealthy]


def say(line: str, error: bool = False) -> None:
    print(f"alexnet-serve: {line}", file=sys.stderr if error else sys.stdout, flush=True)


def print_errors(headline: str, child: Child, show_path: bool) -> None:
    print(headline, file=sys.stderr)
    for line in child.process.errors():
        print(f"  {line}", file=sys.stderr)
    if show_path:
        print(f"  (full log: {child.log})", file=sys.stderr)


class Supervisor:
    """``children`` in start order (the front first: it answers 503 while Triton starts)."""

    def __init__(self, children: list[Child], stop: threading.Event, *, health_interval: float, health_failures: int, max_restarts: int,
                 drain_s: float, show_log_paths: bool) -> None:  # fmt: skip
        self.children, self.stop = children, stop
        self.health_interval, self.health_failures, self.max_restarts = health_interval, health_failures, max_restarts
        self.drain_s, self.show_log_paths = drain_s, show_log_paths
        self.restarts = 0

    def start(self, child: Child) -> bool:
        """Start ``child`` and wait until it is ready; False (its errors printed) when it exits or times out first."""
        child.process = child.start()
        if wait_ready(child.process.proc, child.ready, child.ready_timeout, self.stop):
            return True
        if not self.stop.is_set():
            why = "exited" if child.process.proc.poll() is not None else f"was not ready after {child.ready_timeout:.0f} s"
            child.process.reap()
            print_errors(f"alexnet-serve: {child.label} {why}; its errors:", child, self.show_log_paths)
        return False

    def watch(self) -> Event:
        """Block until a stop is asked for, a child exits, or one fails its checks too often.
        The checks run in their own thread, so a stop never waits for one."""
        verdict: list[Event] = []
        done = threading.Event()

        def checks() -> None:
            failures = {child.name: 0 for child in self.children}
            while not done.wait(self.health_interval):
                for child in self.children:
                    problem = child.problem()
                    failures[child.name] = failures[child.name] + 1 if problem else 0
                    if failures[child.name] >= self.health_failures and not done.is_set():
                        verdict.append(Unhealthy(child, problem, failures[child.name]))
                        return

        if self.health_interval > 0:
            threading.Thread(target=checks, daemon=True, name="health").start()
        try:
            while not self.stop.wait(0.2):
                for child in self.children:
                    if child.process.proc.poll() is not None:
                        return Exited(child, child.process.proc.returncode)
                if verdict:
                    return verdict[0]
            return StopAsked()
        finally:
            done.set()

    def run(self, on_ready: Callable[[], None]) -> int:
        """Start every child, call ``on_ready`` once, then supervise until a stop (its exit code) or giving up (1)."""
        for child in self.children:
            if not self.start(child):
                return self.shutdown() if self.stop.is_set() else EXIT_FAILED
        on_ready()
        while True:
            event = self.watch()
            if isinstance(event, StopAsked):
                return self.shutdown()
            child = event.child
            if isinstance(event, Exited):
                print_errors(f"alexnet-serve: {child.label} exited unexpectedly with code {event.code}; last errors:", child, False)
            else:
                say(f"{child.name} unhealthy: {event.why} ({event.checks} checks in a row)", error=True)
            child.process.reap()
            if self.restarts >= self.max_restarts:
                say(f"giving up after {self.restarts} restart(s); exiting for a supervisor to restart", error=True)
                return EXIT_FAILED
            self.restarts += 1
            say(f"restarting {'the front' if child.name == 'front' else child.label} ({self.restarts} of {self.max_restarts})", error=True)
            if not self.start(child):
                return self.shutdown() if self.stop.is_set() else EXIT_FAILED
            say(f"the front is back after restart {self.restarts} of {self.max_restarts}" if child.name == "front"
                else f"ready again after restart {self.restarts} of {self.max_restarts}")  # fmt: skip

    def shutdown(self) -> int:
        """The front first (no new requests; those in flight are answered), then Triton; 0 when both stopped cleanly."""
        codes = {child.name: child.process.stop(self.drain_s, child.stop_signal) for child in self.children if child.process is not None}
        if codes.get("front", 0) != 0:
            say(f"the front (nginx) exited with code {codes['front']} on stop", error=True)
        if "triton" in codes:
            say(f"stopped (Triton exit code {codes['triton']})")
        return EXIT_OK if all(code == 0 for code in codes.values()) else EXIT_FAILED

    def reap(self) -> None:
        for child in self.children:
            if child.process is not None:
                child.process.reap()
