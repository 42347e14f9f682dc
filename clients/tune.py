"""alexnet-tune: the served configuration measured best on this machine, under a p99 latency budget.

    alexnet-tune                                   # the default config auto serves, a quick search, 15 minutes at most
    alexnet-tune --p99-ms 300 --budget-s 3600 --exhaustive
    alexnet-tune --compare                         # the default and the tuned config, measured in turn, side by side

What Triton's Model Analyzer does for a model, for this ensemble: it searches alexnet's and
preprocess's instance counts, alexnet's max batch, preferred batch sizes and queue delay,
preprocess's queue delay, and on the CPU OpenVINO's streams, threads and images per run --
each a parameter of the served config (runtime.ServedConfig) or of Triton's model config.
Every candidate is served by a real Triton, restarted for it (``alexnet-serve --front none`` on
free loopback ports: the python-backend models read their parameters when they load, and a
fresh server per candidate leaves nothing of the last one behind; the repository API would
need model control and the admin key), and measured with the project's own closed-loop
benchmark over gRPC, JPEGs in, at each ``--concurrency`` level.  Its score is the highest
throughput among its levels whose p99 is within ``--p99-ms``.

The quick search (as Model Analyzer's) starts from the default and tries one parameter at a
time, keeping each improvement; ``--exhaustive`` tries every combination.  Both stop at
``--budget-s``.  Every candidate lands in OUT/tune.json and tune.csv as soon as it is measured
(an interrupt keeps them), and OUT/tune.png plots throughput against p99 with the best
candidates' front and the chosen one marked.

The best candidate is written into the served repository as the ``tuned`` config
(alexnet/configs/tuned.pbtxt, preprocess/configs/tuned.pbtxt, and alexnet/configs/tuned.json
recording this machine, the config it was tuned from, the version and the figures), which
``alexnet-serve --config tuned`` serves and ``--config auto`` prefers on this kind of machine.
Never worse: when no candidate beats the default by more than the measurement's noise, nothing
is written and the report says so.  Exit 0 done, 1 no candidate could be served, 2 usage, 130
interrupted (the report kept).
"""

from __future__ import annotations

import argparse
import copy
import csv
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from alexnet_server.clients.bench import load_images
from alexnet_server.clients.load import Level, run_level, server_split
from alexnet_server.clients.protocol import ClientError, Connection, LocalError, bytes_batch
from alexnet_server.contract import ENSEMBLE, MODEL, PREPROCESS, files, layout, machine
from alexnet_server.contract.cli import HelpFormatter
from alexnet_server.runtime import TUNED, Version, model_config
from alexnet_server.runtime.model_config import ConfigError
from alexnet_server.runtime.served import TUNED_RECORD

EXIT_OK, EXIT_NOTHING_SERVED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
CANDIDATE = "tune-candidate"  # the config name each candidate is served as, removed afterwards
NOISE = 0.03  # a candidate must beat the default by more than this to replace it (runs repeat within ~3%)
READY_TIMEOUT_S = 300


@dataclass(frozen=True)
class Knob:
    """One setting the search turns: ``path`` into a model's config dict (Triton's JSON form)."""

    model: str  # MODEL or PREPROCESS
    name: str  # as reports show it
    path: tuple[str, ...]  # keys into the config; ("parameters", "streams") is a python-model parameter
    values: tuple
    unset: object = None  # what the config means where it does not say (protobuf leaves defaults out)

    def get(self, config: dict):
        """The value in ``config``, in the form ``values`` uses (a list as a tuple)."""
        node = config
        for key in self.path[:-1]:
            node = node.get(key, {})
        if self.path[0] == "parameters":
            value = (node.get(self.path[-1]) or {}).get("string_value")
        elif self.path == ("instance_group", "count"):
            value = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        else:
            value = node.get(self.path[-1])
        value = self.unset if value is None else value
        return tuple(value) if isinstance(value, list) else value

    def set(self, config: dict, value) -> None:
        if self.path == ("instance_group", "count"):
            config["instance_group"] = [{**(config.get("instance_group") or [{}])[0], "count": value}]
            return
        node = config
        for key in self.path[:-1]:
            node = node.setdefault(key, {})
        if self.path[0] == "parameters":
            node[self.path[-1]] = {"string_value": str(value)}
        elif value in (None, [], ()):
            node.pop(self.path[-1], None)
        else:
            node[self.path[-1]] = list(value) if isinstance(value, tuple) else value


def knobs(served: dict, on_gpu: bool, cores: int) -> list[Knob]:
    """The search space for this machine, most influential first (the quick search's order)."""
    batch = int(served.get("max_batch_size", 16))
    if on_gpu:
        return [
            Knob(MODEL, "alexnet queue delay (us)", ("dynamic_batching", "max_queue_delay_microseconds"), ("0", "500", "2000", "5000"), "0"),
            Knob(MODEL, "alexnet preferred batch", ("dynamic_batching", "preferred_batch_size"), ((), (16, 32), (32, 64)), ()),
            Knob(PREPROCESS, "preprocess instances", ("instance_group", "count"), (1, 2, 4)),
            Knob(MODEL, "alexnet instances", ("instance_group", "count"), (1, 2)),
            Knob(MODEL, "alexnet max batch", ("max_batch_size",), (batch, 2 * batch)),
        ]
    threads = sorted({0, *(t for t in (1, cores // 2) if 0 < t < cores)})
    return [
        Knob(MODEL, "alexnet queue delay (us)", ("dynamic_batching", "max_queue_delay_microseconds"), ("0", "500", "2000", "8000"), "0"),
        Knob(PREPROCESS, "preprocess queue delay (us)", ("dynamic_batching", "max_queue_delay_microseconds"), ("0", "1000"), "0"),
        Knob(MODEL, "alexnet preferred batch", ("dynamic_batching", "preferred_batch_size"), ((), (4,), (4, 8), (8, 16)), ()),
        Knob(MODEL, "alexnet images per run", ("parameters", "max_images_per_run"), ("2", "4", "8"), "0"),
        Knob(MODEL, "alexnet instances", ("instance_group", "count"), tuple(range(1, min(cores, 4) + 1))),
        Knob(PREPROCESS, "preprocess instances", ("instance_group", "count"), tuple(range(1, min(cores, 4) + 1))),
        Knob(MODEL, "OpenVINO streams", ("parameters", "streams"), ("1", "2"), "1"),
        Knob(MODEL, "alexnet threads per instance (0: cores / instances)", ("parameters", "threads"), tuple(str(t) for t in threads), "0"),
        Knob(MODEL, "alexnet max batch", ("max_batch_size",), (batch, 2 * batch)),
    ]


@dataclass
class Candidate:
    settings: dict[str, object]  # knob name -> value
    levels: list[dict] = field(default_factory=list)
    score: float = 0.0  # img/s: the best throughput within the p99 budget
    p50_1_ms: float | None = None  # p50 at the lowest concurrency
    p99_ms: float | None = None  # p99 of the scoring level
    problem: str = ""  # why it could not be served or measured

    def row(self) -> dict:
        return {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in self.settings.items()}, "score": round(self.score, 2),
                "p50_low_ms": self.p50_1_ms, "p99_ms": self.p99_ms, "levels": self.levels, "problem": self.problem}  # fmt: skip


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alexnet-tune", description=__doc__.split("\n\n")[0], add_help=add_help, formatter_class=HelpFormatter)
    parser.add_argument("--repository", type=Path, default=layout.default_repository(),
                        help=f"the served repository (${layout.REPOSITORY_ENV} sets the default); the tuned config is written into it")  # fmt: skip
    parser.add_argument("--config", default="auto", help="the config to tune from: auto = what alexnet-serve --config auto picks here, never a tuned one")
    parser.add_argument("--p99-ms", type=float, default=500.0, help="the latency budget: a level counts only if its p99 is within it")
    parser.add_argument("--budget-s", type=float, default=900.0, help="seconds the search may take (it stops after the candidate that passes it)")
    parser.add_argument("--exhaustive", action="store_true", help="every combination of the settings instead of the quick search")
    parser.add_argument("--concurrency", default="1,4,8", help="closed-loop levels each candidate is measured at")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    parser.add_argument("--images", type=Path, help="folder of images to send (default: the sample photographs)")
    parser.add_argument("--out", type=Path, default=Path("tune-results"), help="folder for tune.json, tune.csv and tune.png")
    parser.add_argument("--compare", action="store_true", help="measure the default and the tuned config in turn, ROUNDS times each, and print both")
    parser.add_argument("--rounds", type=int, default=3, help="with --compare: rounds of default then tuned")
    parser.add_argument("--no-progress", action="store_true")
    return parser


# --- one candidate, served and measured ---------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    held = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


class Served:
    """``alexnet-serve --config NAME --front none`` on free loopback ports, for one measurement."""

    def __init__(self, repository: Path, config: str, log: Path) -> None:
        self.http, self.grpc, self.metrics = _free_ports(3)
        cmd = [sys.executable, "-m", "alexnet_server.server", "--repository", str(repository), "--config", config, "--front", "none",
               "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics), "--health-interval", "0",
               "--ready-timeout", str(READY_TIMEOUT_S), "--log-file", str(log)]  # fmt: skip
        self.out = log.with_suffix(".out")
        self.proc = subprocess.Popen(cmd, stdout=open(self.out, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self) -> str | None:
        """None when ready, else why not (the server's last words)."""
        deadline = time.monotonic() + READY_TIMEOUT_S + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"alexnet-serve exited {self.proc.returncode}: " + " | ".join(self.out.read_text(errors="replace").strip().splitlines()[-4:])
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        return None
            except OSError:
                pass
            time.sleep(0.5)
        return f"not ready after {READY_TIMEOUT_S} s"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def measure(url: str, images: list[bytes], levels: list[int], duration: float, warmup: float) -> list[dict]:
    """Each closed-loop level against ``classify`` at ``url`` (gRPC, one JPEG a request), with
    Triton's own split of each model's time (queue, compute) over the level."""
    probe = Connection(url, "grpc")
    try:
        info = probe.describe(ENSEMBLE)
        tensors = [bytes_batch([image]) for image in images]

        def make_call():
            conn = Connection(url, "grpc", concurrency=1)
            return lambda i: conn.infer(info, tensors[i % len(tensors)])

        out = []
        for concurrency in levels:
            before = {m: probe.statistics(m) for m in (ENSEMBLE, PREPROCESS, MODEL)}
            level: Level = run_level("served", concurrency, make_call, duration, warmup)
            time.sleep(0.2)  # Triton records statistics just after it answers
            after = {m: probe.statistics(m) for m in (ENSEMBLE, PREPROCESS, MODEL)}
            out.append({"concurrency": concurrency, "throughput": round(level.throughput, 2), "errors": level.errors, "first_error": level.first_error,
                        **{k: round(v, 1) for k, v in level.latency_ms.items()},
                        "server_ms": {m: server_split(before[m], after[m]) for m in (ENSEMBLE, PREPROCESS, MODEL)}})  # fmt: skip
        return out
    finally:
        probe.close()


def score(candidate: Candidate, budget_ms: float) -> None:
    ok = [lv for lv in candidate.levels if not lv["errors"] and lv.get("p99") is not None and lv["p99"] <= budget_ms]
    best = max(ok, key=lambda lv: lv["throughput"], default=None)
    candidate.score = best["throughput"] if best else 0.0
    candidate.p99_ms = best["p99"] if best else None
    candidate.p50_1_ms = candidate.levels[0].get("p50") if candidate.levels else None


# --- the configs written -----------------------------------------------------------------------------------


@dataclass
class Base:
    """The config tuned from: alexnet's and preprocess's JSON configs, as the repository holds them."""

    name: str
    configs: dict[str, dict]  # model -> Triton's JSON model config
    paths: dict[str, Path]

    def apply(self, settings: dict[str, object], space: list[Knob]) -> dict[str, dict]:
        out = copy.deepcopy(self.configs)
        for knob in space:
            if knob.name in settings:
                knob.set(out[knob.model], settings[knob.name])
        return out

    def defaults(self, space: list[Knob]) -> dict[str, object]:
        return {knob.name: knob.get(self.configs[knob.model]) for knob in space}


def read_base(repository: Path, name: str) -> Base:
    """The base config ``name``'s files (preprocess has only its config.pbtxt): ConfigError, LocalError."""
    alexnet = repository / MODEL / "configs" / f"{name}.pbtxt"
    if not alexnet.is_file():
        raise LocalError(f"{repository} has no config {name} of {MODEL} ({alexnet} is missing): alexnet-export first")
    paths = {MODEL: alexnet, PREPROCESS: repository / PREPROCESS / "config.pbtxt"}
    return Base(name, {model: model_config.read(path) for model, path in paths.items()}, paths)


def write_configs(repository: Path, name: str, configs: dict[str, dict], header: str) -> None:
    """``configs`` as config ``name`` of alexnet and preprocess (configs/NAME.pbtxt each), atomically."""
    for model, config in configs.items():
        target = repository / model / "configs" / f"{name}.pbtxt"
        target.parent.mkdir(exist_ok=True)
        files.atomic_write(target, model_config.to_pbtxt(config, header))


def remove_configs(repository: Path, name: str) -> None:
    for model in (MODEL, PREPROCESS):
        (repository / model / "configs" / f"{name}.pbtxt").unlink(missing_ok=True)


# --- the search -----------------------------------------------------------------------------------------


def quick(base: dict[str, object], space: list[Knob]):
    """Model Analyzer's quick search, in its simplest form: from ``base``, one knob at a time, each
    value tried with the best of the others so far.  A generator: it is sent each candidate's
    score and yields the next settings."""
    best, best_score = dict(base), (yield dict(base))
    for knob in space:
        for value in knob.values:
            if value == best.get(knob.name):
                continue
            trial = {**best, knob.name: value}
            got = yield trial
            if got > best_score:
                best, best_score = trial, got


def exhaustive(base: dict[str, object], space: list[Knob]):
    """Every combination, the base first."""
    yield dict(base)
    for values in itertools.product(*(knob.values for knob in space)):
        trial = dict(zip((k.name for k in space), values))
        if trial != base:
            yield trial


def write_report(out: Path, report: dict) -> None:
    """tune.json and tune.csv, rewritten whole (atomically) after every candidate."""
    out.mkdir(parents=True, exist_ok=True)
    files.atomic_write(out / "tune.json", json.dumps(report, indent=2) + "\n")
    import io

    buffer = io.StringIO()
    names = sorted({k for c in report["candidates"] for k in c["settings"]})
    writer = csv.writer(buffer)
    writer.writerow(["candidate", *names, "score_img_per_s", "p99_ms", "p50_low_ms", "problem"])
    for i, c in enumerate(report["candidates"]):
        writer.writerow([i, *(json.dumps(c["settings"].get(n)) for n in names), c["score"], c["p99_ms"], c["p50_low_ms"], c["problem"]])
    files.atomic_write(out / "tune.csv", buffer.getvalue())


def plot(out: Path, report: dict) -> Path | None:
    """tune.png: every candidate's best throughput against its p99, the front of the best marked, the chosen ringed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    points = [(c["levels"][-1]["p99"], c["levels"][-1]["throughput"], i) for i, c in enumerate(report["candidates"])
              if c["levels"] and c["levels"][-1].get("p99") is not None]  # fmt: skip
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if points:
        ax.scatter([p for p, _, _ in points], [t for _, t, _ in points], color="#888", label="candidates (highest concurrency)")
        front, best = [], -1.0
        for p99, thr, i in sorted(points):
            if thr > best:
                front.append((p99, thr))
                best = thr
        ax.plot([p for p, _ in front], [t for _, t in front], color="#1f77b4", marker="o", label="front: no faster one with a lower p99")
        chosen = report.get("chosen")
        if chosen is not None and chosen < len(report["candidates"]) and report["candidates"][chosen]["levels"]:
            lv = report["candidates"][chosen]["levels"][-1]
            ax.scatter([lv["p99"]], [lv["throughput"]], s=180, facecolors="none", edgecolors="#d62728", linewidths=2, label="chosen")
    ax.axvline(report["p99_budget_ms"], color="#d62728", linestyle=":", label=f"p99 budget {report['p99_budget_ms']:g} ms")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("throughput (images/s)")
    ax.set_title(f"alexnet-tune: {report['machine_line']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "tune.png", dpi=120)
    plt.close(fig)
    return out / "tune.png"


def default_config(repository: Path) -> str:
    """What alexnet-serve --config auto would serve here, leaving any tuned config out (cpu or pytorch)."""
    from alexnet_server.contract import gpu

    latest = Version.latest(repository)
    return "pytorch" if gpu.visible_gpus() and latest is not None and latest.has("torchscript") else "cpu"


def tune(args: argparse.Namespace, images: list[bytes], levels: list[int], bar) -> int:
    repository = args.repository.resolve()
    name = default_config(repository) if args.config == "auto" else args.config
    if name == TUNED:
        raise LocalError("tune from a default config (cpu, pytorch, ...), not from the tuned one")
    base = read_base(repository, name)
    latest = Version.latest(repository)
    here = machine.describe()
    space = knobs(base.configs[MODEL], bool(here["gpus"]), here["cpu"]["cores"])
    search = exhaustive(base.defaults(space), space) if args.exhaustive else quick(base.defaults(space), space)
    combinations = 1
    for knob in space:
        combinations *= len(knob.values)
    total = combinations if args.exhaustive else 1 + sum(len(k.values) - 1 for k in space)
    bar.total = total
    report = {"tool": "alexnet-tune", "repository": str(repository), "tuned_from": name, "version": int(latest.folder.name) if latest else None,
              "machine": here, "machine_line": machine.line(here), "p99_budget_ms": args.p99_ms, "concurrency": levels,
              "search": "exhaustive" if args.exhaustive else "quick", "candidates": [], "chosen": None, "outcome": "searching"}  # fmt: skip
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="alexnet-tune-"))
    settings = next(search)
    try:
        while settings is not None:
            candidate = Candidate(settings)
            write_configs(repository, CANDIDATE, base.apply(settings, space), f"alexnet-tune's candidate {len(report['candidates'])}")
            server = Served(repository, CANDIDATE, work / f"candidate-{len(report['candidates'])}.log")
            try:
                problem = server.wait_ready()
                if problem:
                    candidate.problem = problem
                else:
                    candidate.levels = measure(f"127.0.0.1:{server.grpc}", images, levels, args.duration, args.warmup)
                    score(candidate, args.p99_ms)
            except ClientError as exc:
                candidate.problem = str(exc)
            finally:
                server.stop()
            report["candidates"].append(candidate.row())
            write_report(args.out, report)
            best = max(range(len(report["candidates"])), key=lambda i: report["candidates"][i]["score"])
            left = args.budget_s - (time.monotonic() - started)
            bar.set_postfix_str(f"best {report['candidates'][best]['score']:.1f} img/s (candidate {best}), {max(0, left):.0f} s left", refresh=False)
            bar.update(1)
            if left <= 0:
                report["stopped"] = f"the budget of {args.budget_s:g} s was spent after {len(report['candidates'])} of {total} candidates"
                break
            try:
                settings = search.send(candidate.score) if not args.exhaustive else next(search)
            except StopIteration:
                settings = None
    except KeyboardInterrupt:
        report["outcome"] = "interrupted"
        write_report(args.out, report)
        remove_configs(repository, CANDIDATE)
        print(f"alexnet-tune: interrupted after {len(report['candidates'])} candidate(s); measured so far: {args.out / 'tune.json'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        remove_configs(repository, CANDIDATE)
    return decide(args, report, base, space, repository)


def decide(args: argparse.Namespace, report: dict, base: Base, space: list[Knob], repository: Path) -> int:
    """Write the tuned config when the best candidate beats the default; the report says what happened."""
    candidates = report["candidates"]
    default = candidates[0]
    best = max(range(len(candidates)), key=lambda i: candidates[i]["score"])
    if default["problem"] and not any(c["score"] for c in candidates):
        report["outcome"] = f"nothing could be served: {default['problem']}"
        write_report(args.out, report)
        print(f"alexnet-tune: error: the default config could not be served or measured: {default['problem']}", file=sys.stderr)
        return EXIT_NOTHING_SERVED
    if candidates[best]["score"] <= default["score"] * (1 + NOISE) or best == 0:
        report["outcome"] = (f"the default is kept: no candidate beat it by more than {NOISE:.0%} "
                             f"(best {candidates[best]['score']:.1f} img/s, default {default['score']:.1f} within p99 {args.p99_ms:g} ms)")  # fmt: skip
        report["chosen"] = 0
        (repository / MODEL / "configs" / TUNED_RECORD).unlink(missing_ok=True)
        remove_configs(repository, TUNED)
    else:
        chosen = candidates[best]
        settings = {k: tuple(v) if isinstance(v, list) else v for k, v in chosen["settings"].items()}
        header = (f"Written by alexnet-tune ({time.strftime('%Y-%m-%d')}) from the {report['tuned_from']} config for {report['machine_line']}:\n"
                  f"{chosen['score']:.1f} img/s within p99 {args.p99_ms:g} ms against the default's {default['score']:.1f}.\n"
                  f"alexnet/configs/{TUNED_RECORD} has the figures; alexnet-serve --config auto serves it on this kind of machine only.")  # fmt: skip
        write_configs(repository, TUNED, base.apply(settings, space), header)
        record = {"format": 1, "machine": report["machine"], "tuned_from": report["tuned_from"], "version": report["version"],
                  "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "p99_budget_ms": args.p99_ms, "settings": chosen["settings"],
                  "tuned": {"score": chosen["score"], "p99_ms": chosen["p99_ms"]}, "default": {"score": default["score"], "p99_ms": default["p99_ms"]}}  # fmt: skip
        files.atomic_write(repository / MODEL / "configs" / TUNED_RECORD, json.dumps(record, indent=2) + "\n")
        report["chosen"] = best
        report["outcome"] = f"tuned: candidate {best}, {chosen['score']:.1f} img/s against the default's {default['score']:.1f} ({chosen['score'] / max(default['score'], 1e-9):.2f}x)"
    write_report(args.out, report)
    png = plot(args.out, report)
    print(f"alexnet-tune: {report['outcome']}")
    print(f"alexnet-tune: wrote {args.out / 'tune.json'}, {args.out / 'tune.csv'}" + (f", {png}" if png else ""))
    return EXIT_OK


def compare(args: argparse.Namespace, images: list[bytes], levels: list[int]) -> int:
    """The default and the tuned config on this machine and images, in turn, ``--rounds`` times each."""
    repository = args.repository.resolve()
    if not (repository / MODEL / "configs" / f"{TUNED}.pbtxt").is_file():
        raise LocalError(f"{repository} has no tuned config: run alexnet-tune first")
    name = (json.loads((repository / MODEL / "configs" / TUNED_RECORD).read_text()).get("tuned_from") if
            (repository / MODEL / "configs" / TUNED_RECORD).is_file() else default_config(repository))  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="alexnet-tune-compare-"))
    results: dict[str, list[Candidate]] = {name: [], TUNED: []}
    for round_ in range(args.rounds):
        for config in (name, TUNED):
            server = Served(repository, config, work / f"{config}-{round_}.log")
            candidate = Candidate({"config": config})
            try:
                problem = server.wait_ready()
                if problem:
                    raise LocalError(f"config {config} could not be served: {problem}")
                candidate.levels = measure(f"127.0.0.1:{server.grpc}", images, levels, args.duration, args.warmup)
                score(candidate, args.p99_ms)
            finally:
                server.stop()
            results[config].append(candidate)
            print(f"round {round_ + 1}: {config}: {candidate.score:.1f} img/s within p99 {args.p99_ms:g} ms"
                  + "".join(f"; c={lv['concurrency']} {lv['throughput']:.1f} img/s p50 {lv.get('p50', 0):.1f} p99 {lv.get('p99', 0):.1f} ms" for lv in candidate.levels), flush=True)  # fmt: skip
    here = machine.describe()
    summary = {config: sum(c.score for c in runs) / len(runs) for config, runs in results.items()}
    print(f"\n{machine.line(here)}; p99 budget {args.p99_ms:g} ms; {args.rounds} round(s), levels {levels}")
    print(f"{'config':<10} {'img/s within budget':>20}")
    for config, value in summary.items():
        print(f"{config:<10} {value:>20.1f}")
    ratio = summary[TUNED] / max(summary[name], 1e-9)
    print(f"tuned / {name}: {ratio:.3f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    files.atomic_write(args.out / "compare.json", json.dumps({"machine": here, "p99_budget_ms": args.p99_ms, "levels": levels, "rounds": args.rounds,
                                                              "mean_score": summary, "ratio_tuned_to_default": round(ratio, 3),
                                                              "runs": {c: [r.row() for r in runs] for c, runs in results.items()}}, indent=2) + "\n")  # fmt: skip
    return EXIT_OK


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    try:
        levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
        if not levels or min(levels) < 1:
            raise ValueError
    except ValueError:
        print(f"alexnet-tune: error: --concurrency must be positive integers like 1,4,8, got {args.concurrency!r}", file=sys.stderr)
        return EXIT_USAGE
    if args.p99_ms <= 0 or args.budget_s <= 0 or args.duration <= 0 or args.rounds < 1:
        print("alexnet-tune: error: --p99-ms, --budget-s, --duration and --rounds must be positive", file=sys.stderr)
        return EXIT_USAGE
    try:
        images = load_images(args.images, 16)
        if args.compare:
            return compare(args, images, levels)
        with tqdm(total=None, unit="candidate", desc="tuning", disable=args.no_progress, dynamic_ncols=True) as bar:
            return tune(args, images, levels, bar)
    except (ClientError, ConfigError) as exc:
        print(f"alexnet-tune: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def cli(argv: list[str] | None = None) -> int:
    return main(get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
