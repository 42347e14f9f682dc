#!/usr/bin/env bash
# Build the TensorRT engine for this GPU when the latest exported version lacks one, then serve.
set -euo pipefail
repo=${ALEXNET_REPOSITORY:-/opt/alexnet/model_repository}
latest=$(find "$repo/alexnet" -mindepth 1 -maxdepth 1 -type d -regex '.*/[0-9]+' -printf '%f\n' 2>/dev/null | sort -n | tail -1)
if [ -z "$latest" ] || [ ! -f "$repo/alexnet/$latest/model.onnx" ]; then
  echo "alexnet-entrypoint: no exported model in $repo/alexnet: run alexnet-export CHECKPOINT --repository <mounted folder> first" >&2
  exit 2
fi
if [ ! -f "$repo/alexnet/$latest/model.plan" ]; then
  echo "alexnet-entrypoint: building the TensorRT engine for this GPU (version $latest)..."
  alexnet-export --plan-only --fp16 --max-batch "${ALEXNET_MAX_BATCH:-64}" --repository "$repo" --version "$latest"
fi
exec "$@" --repository "$repo"
