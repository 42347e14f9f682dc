#!/usr/bin/env bash
# Re-runs every figure in the README's "Results" on this machine, one after another (no
# two benchmarks share the CPU).  Needs a trained checkpoint (make demo) first.
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=${1:-runs/demo/checkpoint.pt}
out=${OUT:-runs/measure}
mkdir -p "$out"
py=.venv/bin/python
echo "== training throughput: synthetic vs JPEG pipeline (paper arch, batch 128)"
$py -m train.bench --steps 4 --json "$out/train-bench.json" | tee "$out/train-bench.txt"
echo "== ONNX Runtime vs PyTorch eager, 10-crop classifier"
$py -m export.bench "$ckpt" --batch-sizes 1,8 --seconds 15 --json "$out/export-bench.json" | tee "$out/export-bench.txt"
echo "== served (Triton, cpu config) vs in-process, JPEG in"
repo=$(mktemp -d)/model_repository
$py -m export "$ckpt" --repository "$repo" > /dev/null
$py -m server --repository "$repo" --config cpu --http-port 18100 --grpc-port 18101 --metrics-port 18102 > "$out/serve.log" 2>&1 &
serve=$!
trap 'kill $serve 2>/dev/null; wait $serve 2>/dev/null || true' EXIT
until grep -q "ready\." "$out/serve.log"; do sleep 1; kill -0 $serve; done
$py -m clients.bench --url 127.0.0.1:18101 --concurrency 1,8 --duration 30 --warmup 5 --inprocess --repository "$repo" \
    --out "$out/serve-bench" | tee "$out/serve-bench.txt"
