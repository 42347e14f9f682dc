#!/usr/bin/env bash
# Re-runs the CPU figures of docs/RESULTS.md on this machine, one after another (no two
# benchmarks share the CPU).  Needs a trained checkpoint (make demo) first.
#   scripts/measure.sh [CHECKPOINT]        # OUT=runs/measure by default
set -euo pipefail
cd "$(dirname "$0")/.."
ckpt=${1:-runs/demo/checkpoint.pt}
out=${OUT:-runs/measure}
py=.venv/bin/python
mkdir -p "$out"
echo "== training throughput: synthetic vs JPEG pipeline (paper arch, batch 128)"
$py -m alexnet_server.train.bench --steps 4 --amp --compile --channels-last --json "$out/train-bench.json" | tee "$out/train-bench.txt"
echo "== every CPU runtime and precision in-process, 10-crop classifier"
$py -m alexnet_server.export.bench "$ckpt" --int8 --batch-sizes 1,8 --seconds 15 --json "$out/export-bench.json" | tee "$out/export-bench.txt"
echo "== export with INT8 and the gates, then accuracy and agreement of each precision"
repo="$out/served"
rm -rf "$repo"
$py -m alexnet_server.export "$ckpt" --repository "$repo" --int8 --calibration fashion-mnist --calibration-images 512 | tee "$out/export.txt"
$py -m alexnet_server.export.evaluate "$repo/alexnet/1" --variants onnxruntime:f32,openvino:f32,openvino:bf16,openvino:int8,onnxruntime:int8 \
    --data fashion-mnist --limit 2000 --json "$out/accuracy.json" | tee "$out/accuracy.txt"
echo "== served (each CPU config) vs in-process, JPEG in"
$py - "$out/jpegs" <<'PY'
import sys
from pathlib import Path
from PIL import Image
from alexnet_server import imaging
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
for k, photo in enumerate(imaging.sample_photographs()):
    img = Image.open(photo).convert("RGB")
    for i in range(16):
        w, h = img.size
        view = img.crop((i * 7 % 60, i * 5 % 50, w - (i * 3 % 40), h - (i * 11 % 60))).resize((500, 375))
        (view.transpose(Image.FLIP_LEFT_RIGHT) if i % 2 else view).save(out / f"p{k}_{i:02d}.jpg", quality=90)
PY
for config in cpu-onnxruntime cpu cpu-f32 cpu-bf16; do
  $py -m alexnet_server.server --repository "$repo" --config $config --http-port 18300 --grpc-port 18301 --metrics-port 18302 --health-interval 0 \
      > "$out/serve-$config.log" 2>&1 &
  pid=$!
  until grep -q "ready\.\|error" "$out/serve-$config.log"; do sleep 1; kill -0 $pid; done
  $py -m alexnet_server.clients.bench --url 127.0.0.1:18301 --concurrency 1,8 --duration 15 --warmup 3 --inprocess --repository "$repo" \
      --images "$out/jpegs" --out "$out/served-$config" | tee "$out/served-$config.txt" || true
  kill $pid; wait $pid || true
done
