# AlexNet on Triton, GPU host.  Triton 2.51 = the same release as the CPU wheel's binary.
#   docker build -t alexnet-triton .
#   docker run --gpus all -p 8000-8002:8000-8002 \
#       -v $PWD/model_repository:/opt/alexnet/model_repository alexnet-triton
# The mounted repository holds what alexnet-export wrote (model.onnx, labels.txt).  A
# TensorRT engine is tied to the GPU model and TensorRT version, so it is built here, at
# container start, when the latest version has none (alexnet-export --plan-only --fp16).
FROM nvcr.io/nvidia/tritonserver:24.10-py3

WORKDIR /opt/alexnet
COPY pyproject.toml README.md ./
COPY imaging imaging
COPY train train
COPY export export
COPY server server
COPY clients clients
COPY model_repository model_repository
# .[gpu]: onnxruntime-gpu and tensorrt (the Python API used to build the engine).
RUN python3 -m pip install --no-cache-dir -e '.[gpu]'
COPY docker/entrypoint.sh /usr/local/bin/alexnet-entrypoint

EXPOSE 8000 8001 8002
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
  CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)" || exit 1

ENTRYPOINT ["alexnet-entrypoint"]
CMD ["alexnet-serve", "--config", "tensorrt", "--host", "0.0.0.0"]
