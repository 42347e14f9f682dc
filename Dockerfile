# AlexNet on Triton, GPU host: NGC release 26.07 (Triton 2.71.0, CUDA 13.3.1, Python 3.12,
# Ubuntu 24.04), the first image with every published Triton bulletin of 2025 and 2026 fixed
# (their "updated version" columns: 26.06 for 5865, 26.07 for 5875; README, "Security").
# Versions and their sources: README, "NGC container".
#   docker build -t alexnet-triton .
#   docker run --gpus all --read-only --tmpfs /tmp --shm-size=1g -p 127.0.0.1:8000-8002:8000-8002 \
#       -v $PWD/served:/opt/alexnet/served -v $PWD/secrets:/run/secrets/alexnet:ro alexnet-triton
# Clients reach the nginx front (alexnet-serve starts it), which asks for the bearer token in
# secrets/token and serves TLS with secrets/tls.crt and tls.key; without them the server refuses
# to start (README, "Security").  Triton itself listens on the container's loopback only.
# The image runs as uid 10001 (not root) and needs only /tmp, /dev/shm and the mounted
# repository writable, so --read-only works; the served folder must be writable by uid 10001
# (the engine is written there).
# The mounted folder is a served repository alexnet-export built (model.onnx, labels.txt,
# configs).  A TensorRT engine is tied to the GPU model and the TensorRT version, so the
# entrypoint builds it here, at start, when the latest version has none or has one built for
# another GPU or TensorRT (alexnet-export --plan-only).
# --shm-size: the python-backend models (preprocess) pass tensors through /dev/shm; Docker's
# 64 MB default is too small (one 64-image batch of IMAGE is 12.6 MB, and the python
# backend's default arena starts at 1 MB and grows; its README uses 1g too).
FROM nvcr.io/nvidia/tritonserver:26.07-py3

# nginx and its JavaScript module: the front door alexnet-serve puts before Triton, which checks
# every inference request before Triton reads it (server/front.py, server/front_check.js).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx libnginx-mod-http-js \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/alexnet
COPY pyproject.toml README.md ./
COPY alexnet_server alexnet_server
COPY contract contract
COPY imaging imaging
COPY runtime runtime
COPY train train
COPY export export
COPY server server
COPY clients clients
COPY model_repository model_repository
COPY docker/check_tensorrt.py docker/check_tensorrt.py
# Ubuntu 24.04 marks its Python "externally managed" (PEP 668); the image is the environment
# and Triton's python-backend stub imports from that Python, so the project is installed into it.
ENV PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# The tensorrt wheel is the exact version of the image's libnvinfer, read from the library
# itself: a plan built by one TensorRT does not load in another, and Triton's TensorRT backend
# loads with that libnvinfer (libnvinfer.so.X.Y.Z; the wheel adds a build number, hence .*).
# The build fails if the two ever differ.  Then .[gpu]:
# cuda-python for the engine's buffers, onnxruntime-gpu; no PyTorch (nothing served needs it).
RUN trt=$(find /usr/lib/x86_64-linux-gnu -name 'libnvinfer.so.*.*.*' -printf '%f\n' | sed -E 's/^libnvinfer\.so\.//' | sort -V | tail -1) \
 && test -n "$trt" || { echo "no libnvinfer in this image" >&2; exit 1; } \
 && cuda=${CUDA_VERSION:?the base image names its CUDA release in CUDA_VERSION} \
 && python3 -m pip install "tensorrt-cu${cuda%%.*}==${trt}.*" \
 && python3 -m pip install '.[gpu]' \
 && python3 docker/check_tensorrt.py
COPY docker/entrypoint.sh /usr/local/bin/alexnet-entrypoint

# Not root: uid/gid 10001 (the Kubernetes Deployment runs the pod as the same ids), no login,
# home in /tmp (the one writable place besides /dev/shm and the repository).
RUN groupadd --gid 10001 alexnet \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin alexnet \
 && mkdir -p /opt/alexnet/served && chown 10001:10001 /opt/alexnet/served
USER 10001:10001
ENV HOME=/tmp \
    ALEXNET_REPOSITORY=/opt/alexnet/served \
    ALEXNET_TOKEN_FILE=/run/secrets/alexnet/token
EXPOSE 8000 8001 8002
# The same check as the Kubernetes liveness probe: a real request through classify, on Triton's
# own loopback port (fixed here with --triton-ports); alexnet-serve itself watches the front.
HEALTHCHECK --interval=30s --timeout=35s --start-period=600s --retries=3 \
  CMD python3 -m alexnet_server.server.health --url 127.0.0.1:18000 --timeout 30 || exit 1

ENTRYPOINT ["alexnet-entrypoint"]
CMD ["alexnet-serve", "--config", "auto", "--host", "0.0.0.0", "--triton-ports", "18000,18001,18002", \
     "--tls-cert", "/run/secrets/alexnet/tls.crt", "--tls-key", "/run/secrets/alexnet/tls.key"]
