#!/usr/bin/env bash
# The INT8 figures of the README: accuracy (fp32 vs int8, centre and 10-crop), in-process
# speed, served throughput.  Needs the demo checkpoint (make demo).  One thing at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=${1:-runs/demo/checkpoint.pt}
out=${OUT:-runs/measure-int8}
n=${N_IMAGES:-2000}
py=.venv/bin/python
mkdir -p "$out"
for crops in 10 1; do
  repo="$out/repo-$crops"
  rm -rf "$repo"
  $py -m export "$ckpt" --repository "$repo" --crops $crops --int8 --calibration fashion-mnist --calibration-images 512 \
      | tee "$out/export-$crops.txt"
  $py -m export.evaluate "$repo/alexnet/1/model.onnx" "$repo/alexnet/1/model.int8.onnx" --data fashion-mnist --limit "$n" \
      --json "$out/accuracy-$crops.json" | tee "$out/accuracy-$crops.txt"
done
$py -m export.bench "$ckpt" --int8 --batch-sizes 1,8 --seconds 15 --json "$out/inprocess.json" | tee "$out/inprocess.txt"
for config in cpu cpu-int8; do
  $py -m server --repository "$out/repo-10" --config $config --http-port 18300 --grpc-port 18301 --metrics-port 18302 > "$out/serve-$config.log" 2>&1 &
  pid=$!
  until grep -q "ready\." "$out/serve-$config.log"; do sleep 1; kill -0 $pid; done
  $py -m clients.bench --url 127.0.0.1:18301 --concurrency 1,8 --duration 30 --warmup 5 --out "$out/served-$config" | tee "$out/served-$config.txt"
  kill $pid; wait $pid || true
done
