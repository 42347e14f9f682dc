# AlexNet on Triton, GPU host.  Triton 2.51 = the same release as the CPU wheel's binary.
#   docker build -t alexnet-triton .
#   docker run --gpus all --shm-size=1g -p 127.0.0.1:8000-8002:8000-8002 \
#       -v $PWD/served:/opt/alexnet/served -v $PWD/secrets:/run/secrets/alexnet:ro alexnet-triton
# Clients reach the nginx front (alexnet-serve starts it), which asks for the bearer token in
# secrets/token and serves TLS with secrets/tls.crt and tls.key; without them the server refuses
# to start (README, "Security").  Triton itself listens on the container's loopback only.
# The mounted folder is a served repository alexnet-export built (model.onnx, labels.txt,
# configs).  A TensorRT engine is tied to the GPU model and the TensorRT version, so the
# entrypoint builds it here, at start, when the latest version has none or has one built for
# another GPU or TensorRT (alexnet-export --plan-only).
# --shm-size: the python-backend models (preprocess) pass tensors through /dev/shm; Docker's
# 64 MB default is too small (one 64-image batch of IMAGE is 12.6 MB, and the python
# backend's default arena starts at 1 MB and grows; its README uses 1g too).
FROM nvcr.io/nvidia/tritonserver:24.10-py3

# nginx: the front door alexnet-serve puts before Triton (server/front.py).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/alexnet
COPY pyproject.toml README.md ./
COPY contract contract
COPY imaging imaging
COPY train train
COPY export export
COPY server server
COPY clients clients
COPY model_repository model_repository
# .[gpu]: the tensorrt wheel pinned to this image's libnvinfer, cuda-python for the engine's
# buffers, onnxruntime-gpu; no PyTorch (the image's driver floor, R560, predates the CUDA 13
# builds of torch, and nothing served here needs it).  The build fails if the pin drifts from
# the libnvinfer the image ships: a plan built by one TensorRT does not load in another.
RUN python3 -m pip install --no-cache-dir -e '.[gpu]' \
 && python3 - <<'PY'
import glob, re, sys, tensorrt
libs = [re.search(r"\.so\.(\d+\.\d+\.\d+)$", p).group(1) for p in glob.glob("/usr/lib/x86_64-linux-gnu/libnvinfer.so.*.*.*")]
if not libs or tensorrt.__version__.split(".")[:3] != libs[0].split("."):
    sys.exit(f"tensorrt wheel {tensorrt.__version__} does not match this image's libnvinfer {libs}: fix the [gpu] pin")
print(f"tensorrt {tensorrt.__version__} matches libnvinfer {libs[0]}")
PY
COPY docker/entrypoint.sh /usr/local/bin/alexnet-entrypoint

ENV ALEXNET_REPOSITORY=/opt/alexnet/served \
    ALEXNET_TOKEN_FILE=/run/secrets/alexnet/token
EXPOSE 8000 8001 8002
# The same check as the Kubernetes liveness probe: a real request through classify, on Triton's
# own loopback port (fixed here with --triton-ports); alexnet-serve itself watches the front.
HEALTHCHECK --interval=30s --timeout=35s --start-period=600s --retries=3 \
  CMD python3 -m server.health --url 127.0.0.1:18000 --timeout 30 || exit 1

ENTRYPOINT ["alexnet-entrypoint"]
CMD ["alexnet-serve", "--config", "auto", "--host", "0.0.0.0", "--triton-ports", "18000,18001,18002", \
     "--tls-cert", "/run/secrets/alexnet/tls.crt", "--tls-key", "/run/secrets/alexnet/tls.key"]
