#!/usr/bin/env bash
# The main job (make demo): train -> export -> serve -> label through the server -> bench,
# then keep serving until Ctrl-C.  Settings come from the environment:
#   DEMO_OUT          where runs, images and results go          (runs/demo)
#   DEMO_DATA         fashion-mnist or a folder of its IDX files (fashion-mnist)
#   DEMO_BUDGET_S     seconds from make demo's start (install included) to the report (870; 0: none)
#   DEMO_TRAIN_ARGS   alexnet-train flags                        (below)
#   DEMO_TRAIN_BUDGET_S  training's wall-clock budget, seconds at most (510; 0: none, DEMO_TRAIN_ARGS decide)
#   DEMO_EXPORT_ARGS  extra alexnet-export flags                 (INT8 and its gates, below)
#   DEMO_IMAGES       test images labelled through the server, at most (1000)
#   DEMO_BENCH_S      seconds per benchmark level                (5)
#   DEMO_HTTP_PORT / DEMO_GRPC_PORT / DEMO_METRICS_PORT           (8000 / 8001 / 8002)
#   DEMO_REPOSITORY   the served repository                      (served, alexnet-export's default)
#   DEMO_KEEP_SERVING 0 to stop after the report (default 1: serve until Ctrl-C)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
out=${DEMO_OUT:-runs/demo}
data=${DEMO_DATA:-fashion-mnist}
# The demo ends within 15 minutes of `make demo` on any CPU seen so far (2 cores: AVX2-only Zen 2,
# AVX-512 EPYC, AMX Xeon), the install included, because it works to a deadline, DEMO_BUDGET_S
# after make started (870 s: 30 s of margin):
# - training has a time budget, not an image count: it times its first steps, then caps its pass
#   over Fashion-MNIST's 60,000 images (demo preset: AdamW, one-cycle re-sized to the cap) to end
#   within DEMO_TRAIN_BUDGET_S, or sooner where the install was slow, so that AFTER_TRAINING_S is
#   left for the rest; a faster CPU sees more images and reaches a higher accuracy, and the report
#   says both;
# - the test images labelled through the server are as many as the export's measured speed fits
#   before the deadline, between 500 and DEMO_IMAGES.
# --auto-speed: bf16 autocast, torch.compile and channels_last where the CPU has native bf16,
# eager fp32 elsewhere (each measured fastest there, train/accel.py).  On a GPU:
# DEMO_TRAIN_ARGS="--preset demo --epochs 2 --device cuda --auto-speed" DEMO_TRAIN_BUDGET_S=0 DEMO_BUDGET_S=0.
train_args=${DEMO_TRAIN_ARGS:---preset demo --epochs 1 --val-limit 500 --stats-images 2000 --auto-speed}
train_budget=${DEMO_TRAIN_BUDGET_S:-510}
budget=${DEMO_BUDGET_S:-870}
started_at=${DEMO_STARTED_AT:-$(date +%s)}  # the Makefile passes its own start: the install counts
# What the phases after training took on the slowest CPU measured (the Xeon capped to AVX2,
# docs/RESULTS.md): export 141 s, images and server start 8 s, 500 images labelled 59 s, the
# benchmark 28 s, training's overrun of its budget 11 s.
AFTER_TRAINING_S=250
if [ "$budget" != 0 ] && [ "$train_budget" != 0 ]; then
  gone=$(( $(date +%s) - started_at ))
  fits=$(( budget - gone - AFTER_TRAINING_S ))
  if [ "$fits" -lt "$train_budget" ]; then
    fits=$(( fits > 120 ? fits : 120 ))  # below 2 minutes it would learn nothing: the report comes late instead
    echo "demo: training gets $fits s, not $train_budget: $gone s of the $budget s budget are gone (the install)"
    train_budget=$fits
  fi
fi
[ "$train_budget" = 0 ] || train_args="$train_args --time-budget $train_budget"
export_args=${DEMO_EXPORT_ARGS:---int8 --calibration-images 128 --gate-images 200}
max_images=${DEMO_IMAGES:-1000}
bench_s=${DEMO_BENCH_S:-5}
http=${DEMO_HTTP_PORT:-8000}; grpc=${DEMO_GRPC_PORT:-8001}; metrics=${DEMO_METRICS_PORT:-8002}
repo=${DEMO_REPOSITORY:-served}
mkdir -p "$out"
demo_start=$(date +%s)
say() { printf '\n\033[1m== %s\033[0m (%d s in)\n' "$*" $(( $(date +%s) - demo_start )); }

say "1/5 train AlexNet on $data ($train_args)"
# --resume continues a run cut short; a finished run has nothing left to do.
resume=(); [ -f "$out/checkpoint.pt" ] && resume=(--resume)
$bin/alexnet-train --data "$data" --out "$out" $train_args "${resume[@]}"

say "2/5 export: the 10-crop classifier into $repo (version 1), INT8 and the accuracy gates"
$bin/alexnet-export "$out/checkpoint.pt" --repository "$repo" --version 1 --force --calibration "$data" $export_args

# As many test images as fit before the deadline at 3/4 of the speed export measured in-process
# (labelling through the server measured 0.78-0.91x of it), after the benchmark's levels.
n_images=$max_images
if [ "$budget" != 0 ]; then
  n_images=$($bin/python - "$repo/alexnet/1" "$max_images" $(( budget - ($(date +%s) - started_at) - 4 * (bench_s + 1) - 20 )) <<'PY'
import sys
from alexnet_server.runtime.version import ExportRecord
timings = ((ExportRecord.read(sys.argv[1]).cpu_precisions or {}).get("timings") or {}).get("images_per_s") or {}
most, seconds = int(sys.argv[2]), int(sys.argv[3])
print(most if not timings else max(min(most, 500), min(most, int(0.75 * max(timings.values()) * seconds))))
PY
)
fi

say "3/5 $n_images test images as PNG files"
rm -rf "$out/test-images"
$bin/python -m alexnet_server.train.fashion_images "$out/test-images" --data "$data" --count "$n_images"

pid=
# `|| true`: under set -e a failed kill (the server already gone) inside the EXIT trap would
# turn the script's exit status into 1 -- what CI saw once after a clean Ctrl-C stop.
cleanup() { if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; fi; wait 2>/dev/null || true; }
trap cleanup EXIT
: > "$out/serve.log"
$bin/alexnet-serve --repository "$repo" --config cpu --http-port "$http" --grpc-port "$grpc" --metrics-port "$metrics" > "$out/serve.log" 2>&1 &
pid=$!
until grep -q "ready\." "$out/serve.log"; do
  kill -0 "$pid" 2>/dev/null || { cat "$out/serve.log"; echo "alexnet-serve failed" >&2; exit 1; }
  sleep 1
done
grep -h "config 'cpu'\|alexnet-serve: alexnet_" "$out/serve.log" || true

say "4/5 accuracy through the server (10-crop)"
rm -f "$out/labels-10crop.csv"
$bin/alexnet-label "$out/test-images" --recursive --out "$out/labels-10crop.csv" --url "127.0.0.1:$grpc" --topk 1 --no-progress || true
$bin/python -m alexnet_server.clients.accuracy "$out/labels-10crop.csv" --labels "$repo/alexnet/labels.txt" > "$out/served-accuracy.json"

say "5/5 latency benchmark (served vs in-process, JPEG in)"
$bin/alexnet-bench --url "127.0.0.1:$grpc" --concurrency 1,8 --duration "$bench_s" --warmup 1 --inprocess \
    --repository "$repo" --images "$out/test-images" --out "$out/bench"

say "report"
$bin/python - "$out" "$repo" $(( $(date +%s) - demo_start )) $(( $(date +%s) - started_at )) "$budget" <<'PY'
import json, sys
from pathlib import Path
from alexnet_server.runtime.version import ExportRecord
out, repo, seconds, since_make, budget_s = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
acc = json.loads((out / "served-accuracy.json").read_text())
last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
gates = ExportRecord.read(repo / "alexnet" / "1").cpu_precisions or {}
print(f"Fashion-MNIST test accuracy through Triton, 10-crop: {acc['top1_accuracy']:.4f} on {acc['labelled']} images "
      f"(centre crop in training's validation: {1 - last['val_top1_centre_error']:.4f} on {last['val_images']} images)")
budget = last.get("time_budget")
seen = f"{last['train_images']:,} training images at {last['train_img_per_s']:.1f} img/s"
print(f"trained on {seen}" + (f", capped by the {budget['seconds']:.0f} s time budget ({budget['steps_cap']} of {budget['planned_steps']} steps)"
                              if budget and budget["stopped_early"] else ""))
for precision in ("bf16", "int8"):
    gate = gates.get(precision) or {}
    if gate.get("held_back"):
        print(f"  {precision} gate: {gate['held_back']['top1_agreement']:.2%} top-1 agreement with fp32 on {gate['held_back']['images']} held-back images")
served_as = [line.split(": ", 1)[1] for line in (out / "serve.log").read_text().splitlines() if line.startswith("alexnet-serve: alexnet_")]
print(f"served as: {served_as[0] if served_as else 'unknown (serve.log names no choice)'}")
for lv in json.loads((out / "bench" / "results.json").read_text())["levels"]:
    lat = lv["latency_ms"]
    head = f"  {lv['target']:<9} concurrency {lv['concurrency']}:"
    if "p50" not in lat:  # a slow or busy CPU: nothing finished inside the level's time
        print(f"{head} no request completed within the level's {lv['seconds']:.0f} s ({lv['errors']} errors); raise DEMO_BENCH_S")
        continue
    print(f"{head} {lv['throughput']:.1f} img/s, p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms")
print(f"demo: {seconds / 60:.1f} min; {since_make / 60:.1f} min since make demo started, the install included"
      + (f" (budget {budget_s / 60:.1f} min)" if budget_s else ""))
PY
if [ "${DEMO_KEEP_SERVING:-1}" = 1 ]; then
  # -print -quit, not `| head -1`: under pipefail, find's SIGPIPE from head would end the demo (exit 141).
  sample=$(find "$out/test-images" -name '*.png' -print -quit)
  # Ctrl-C reaches alexnet-serve itself (same process group); a TERM sent to this script alone
  # is passed on.  Either way the script waits for the server's own stop, then exits 130 / 143
  # as an interrupted command does -- or 1, naming the log, if the server did not stop cleanly.
  stop_signal=
  trap 'stop_signal=130' INT
  trap 'stop_signal=143; kill -TERM "$pid" 2>/dev/null' TERM
  cat <<TXT

Serving on 127.0.0.1 (HTTP $http, gRPC $grpc, metrics $metrics) until Ctrl-C.  Try:
  $bin/alexnet-classify $sample --topk 3 --url 127.0.0.1:$grpc
  curl -s localhost:$http/v2/models/classify/config | python3 -m json.tool | head -20
  curl -s localhost:$metrics/metrics | grep nv_inference_count
  $bin/alexnet-label $out/test-images --recursive --out /tmp/labels.csv
TXT
  while :; do
    status=0; wait "$pid" || status=$?
    # A trapped signal ends `wait` early (status > 128) while the server is still stopping.
    [ -n "$stop_signal" ] && kill -0 "$pid" 2>/dev/null || break
  done
  pid=
  if [ -n "$stop_signal" ]; then
    if [ "$status" -ne 0 ] && [ "$status" -le 128 ]; then
      echo "demo: alexnet-serve exited with $status while stopping (see $out/serve.log)" >&2
      exit 1
    fi
    exit "$stop_signal"
  fi
  exit "$status"
fi
