# segserve's Triton image for the fleet: NGC Triton with exactly what segserve's Python models import.
#
#   docker build -f docker/triton.Dockerfile -t <registry>/segserve-triton:0.1.0-24.10 .
#   docker push <registry>/segserve-triton:0.1.0-24.10
#
# The base brings the server and its backends (onnxruntime, tensorrt, openvino, python, ...). Graphs
# run on those backends; the Python models (sessions, glue, pre/post-processing) need only the
# packages of requirements/triton.txt (+ CuPy for the GPU-resident video memory bank), on the base's
# Python (3.10 in 24.10). No torch, transformers or onnxruntime Python package goes in.
# `tests/test_fleet_cpu.py` serves the fleet repository with this release's Triton (2.51), this
# Python version and exactly these packages; `tests/test_fleet_image.py` keeps the two in step.

# NGC release 24.10 = Triton 2.51.0, Python 3.10, CUDA 12.6, TensorRT 10.5.
ARG TRITON_RELEASE=24.10
FROM nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3

LABEL org.opencontainers.image.title="segserve-triton" \
      org.opencontainers.image.description="NVIDIA Triton Inference Server with segserve's Python models"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# --no-deps: the lists are the whole set, pinned, not seeds for a resolver.
COPY requirements/triton.txt requirements/triton-gpu.txt /tmp/segserve-requirements/
RUN python3 -m pip install --no-deps -r /tmp/segserve-requirements/triton.txt \
        -r /tmp/segserve-requirements/triton-gpu.txt \
 && python3 -c "import numpy, PIL, pycocotools.mask, tokenizers, cupy; assert numpy.__version__ < '2'" \
 && rm -rf /tmp/segserve-requirements

# The part of the segserve package that runs inside Triton (what the models' model.py import).
COPY segserve/__init__.py /opt/segserve/lib/segserve/__init__.py
COPY segserve/common /opt/segserve/lib/segserve/common
COPY segserve/triton_models /opt/segserve/lib/segserve/triton_models
ENV PYTHONPATH=/opt/segserve/lib
RUN python3 -c "import segserve.triton_models.common" 2>&1 | grep -q triton_python_backend_utils \
 && python3 -c "import segserve.common.rle, segserve.common.grounding, segserve.common.segments"

# The base image's entrypoint; the chart passes `tritonserver --model-repository=...`.
