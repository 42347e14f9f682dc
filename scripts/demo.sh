#!/usr/bin/env bash
# The main job (make demo): train -> export -> serve -> label through the server -> bench,
# then keep serving until Ctrl-C.  Settings come from the environment (Makefile defaults):
#   DEMO_OUT          where runs, images and results go          (runs/demo)
#   DEMO_DATA         fashion-mnist or a folder of its IDX files (fashion-mnist)
#   DEMO_TRAIN_ARGS   alexnet-train flags: the CPU budget        (see Makefile)
#   DEMO_IMAGES       test images labelled through the server    (1000)
#   DEMO_BENCH_S      seconds per benchmark level                (10)
#   DEMO_HTTP_PORT / DEMO_GRPC_PORT / DEMO_METRICS_PORT           (8000 / 8001 / 8002)
#   DEMO_REPOSITORY   the model repository served                (model_repository)
#   DEMO_KEEP_SERVING 0 to stop after the report (used by the test of this script)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
out=${DEMO_OUT:-runs/demo}
data=${DEMO_DATA:-fashion-mnist}
train_args=${DEMO_TRAIN_ARGS:---preset demo --epochs 2 --train-limit 12000 --val-limit 1000 --stats-images 6000}
n_images=${DEMO_IMAGES:-1000}
bench_s=${DEMO_BENCH_S:-10}
http=${DEMO_HTTP_PORT:-8000}; grpc=${DEMO_GRPC_PORT:-8001}; metrics=${DEMO_METRICS_PORT:-8002}
repo=${DEMO_REPOSITORY:-model_repository}
mkdir -p "$out"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "1/6 train AlexNet on $data ($train_args)"
start=$(date +%s)
# --resume continues a run cut short; a finished run has nothing left to do.
resume=(); [ -f "$out/checkpoint.pt" ] && resume=(--resume)
$bin/alexnet-train --data "$data" --out "$out" $train_args "${resume[@]}"
echo "training took $(( $(date +%s) - start )) s"

say "2/6 export: 10-crop classifier into $repo (version 1), centre-crop variant beside it"
$bin/alexnet-export "$out/checkpoint.pt" --repository "$repo" --version 1 --force
centre_repo="$out/centre_repository"
$bin/alexnet-export "$out/checkpoint.pt" --repository "$centre_repo" --version 1 --force --crops 1 > /dev/null

say "3/6 test images as PNG files"
rm -rf "$out/test-images"
$bin/python -m train.fashion_images "$out/test-images" --data "$data" --count "$n_images"

pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
serve() {  # serve REPOSITORY HTTP GRPC METRICS LOG
  : > "$5"
  $bin/alexnet-serve --repository "$1" --config cpu --http-port "$2" --grpc-port "$3" --metrics-port "$4" > "$5" 2>&1 &
  pids+=($!)
  local pid=$!
  until grep -q "ready\." "$5"; do
    kill -0 "$pid" 2>/dev/null || { cat "$5"; echo "alexnet-serve failed" >&2; exit 1; }
    sleep 1
  done
}

say "4/6 accuracy through the server: centre crop, then 10-crop"
serve "$centre_repo" $((http + 100)) $((grpc + 100)) $((metrics + 100)) "$out/serve-centre.log"
rm -f "$out/labels-centre.csv" "$out/labels-10crop.csv"
$bin/alexnet-label "$out/test-images" --recursive --out "$out/labels-centre.csv" --url "127.0.0.1:$((grpc + 100))" --topk 1 || true
kill -TERM "${pids[-1]}"; wait "${pids[-1]}" || true; unset 'pids[-1]'
serve "$repo" "$http" "$grpc" "$metrics" "$out/serve.log"
$bin/alexnet-label "$out/test-images" --recursive --out "$out/labels-10crop.csv" --url "127.0.0.1:$grpc" --topk 1 || true
centre=$($bin/python -m clients.accuracy "$out/labels-centre.csv" --labels "$repo/alexnet/labels.txt")
ten=$($bin/python -m clients.accuracy "$out/labels-10crop.csv" --labels "$repo/alexnet/labels.txt")
echo "{\"centre\": $centre, \"10crop\": $ten}" > "$out/served-accuracy.json"

say "5/6 latency benchmark (served vs in-process, JPEG in)"
$bin/alexnet-bench --url "127.0.0.1:$grpc" --concurrency 1,4 --duration "$bench_s" --warmup 2 --inprocess \
    --repository "$repo" --images "$out/test-images" --out "$out/bench"

say "6/6 report"
$bin/python - "$out" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
acc = json.loads((out / "served-accuracy.json").read_text())
print(f"Fashion-MNIST test accuracy through Triton ({acc['10crop']['labelled']} images): "
      f"centre crop {acc['centre']['top1_accuracy']:.4f}, 10-crop {acc['10crop']['top1_accuracy']:.4f}")
for lv in json.loads((out / "bench" / "results.json").read_text())["levels"]:
    lat = lv["latency_ms"]
    print(f"  {lv['target']:<9} concurrency {lv['concurrency']}: {lv['throughput']:.1f} img/s, p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms")
EOF
if [ "${DEMO_KEEP_SERVING:-1}" = 1 ]; then
  sample=$(find "$out/test-images" -name '*.png' | head -1)
  cat <<TXT

Serving on 127.0.0.1 (HTTP $http, gRPC $grpc, metrics $metrics) until Ctrl-C.  Try:
  $bin/alexnet-classify $sample --topk 3 --url 127.0.0.1:$grpc
  curl -s localhost:$http/v2/models/classify/config | python3 -m json.tool | head -20
  curl -s localhost:$metrics/metrics | grep nv_inference_count
  $bin/alexnet-label $out/test-images --recursive --out /tmp/labels.csv
TXT
  wait "${pids[@]}"
fi
