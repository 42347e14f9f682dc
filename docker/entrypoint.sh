#!/usr/bin/env bash
# Build (or rebuild) the TensorRT engine for this GPU and this TensorRT, then serve.
# alexnet-export --plan-only keeps a plan whose export.json record matches this host and
# rebuilds one made for another GPU or TensorRT (e.g. copied from a shared volume); the
# served config's max_batch_size follows the engine's profile (ALEXNET_MAX_BATCH).
set -euo pipefail
repo=${ALEXNET_REPOSITORY:-/opt/alexnet/served}
latest=$(find "$repo/alexnet" -mindepth 1 -maxdepth 1 -type d -regex '.*/[0-9]+' -printf '%f\n' 2>/dev/null | sort -n | tail -1)
if [ -z "$latest" ] || [ ! -f "$repo/alexnet/$latest/model.onnx" ]; then
  echo "alexnet-entrypoint: no exported model in $repo/alexnet: run alexnet-export CHECKPOINT --repository <mounted folder> first" >&2
  exit 2
fi
alexnet-export --plan-only --fp16 --max-batch "${ALEXNET_MAX_BATCH:-64}" --repository "$repo" --version "$latest" || {
  code=$?
  # 3: no GPU or no TensorRT here -- serve what runs without an engine (auto picks it).
  [ "$code" = 3 ] || exit "$code"
}
exec "$@" --repository "$repo"
