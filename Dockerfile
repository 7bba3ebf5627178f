# segserve orchestrator image (the gRPC front end; Triton runs from the NGC image).
#
#   docker build -t segserve:0.1.0 .
#   docker run --rm -p 50051:50051 -p 9464:9464 \
#       -e SEGSERVE_TRITON_URL=triton:8001 segserve:0.1.0
#
# CPU only on purpose: torch comes from the CPU wheel index before anything else is installed,
# so `pip install '.[export,server]'` finds torch==2.13.0 satisfied and never pulls a CUDA build.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler only for dependencies that may have to build from source; it stays in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/segserve
ENV PATH=/opt/segserve/bin:$PATH

# Layer 1: CPU torch, alone, so the heavy layer is cached across source changes.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

# Layer 2: the project and its pinned dependencies: the orchestrator, and the repository Job's export
# and build-repo (the bare package is the client only).
WORKDIR /src
COPY . /src
RUN pip install '.[export,server]' \
 && python -c "import torch, sys; sys.exit('CUDA torch slipped in: %s' % torch.version.cuda if torch.version.cuda else 0)" \
 && segserve --help > /dev/null

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="segserve" \
      org.opencontainers.image.description="segserve gRPC orchestrator for Triton-served segmentation models"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/segserve/bin:$PATH \
    HOME=/home/segserve

# Fixed non-root ids; the Helm chart's orchestrator.securityContext uses the same ones.
RUN groupadd --system --gid 10001 segserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/segserve --create-home \
        --shell /usr/sbin/nologin segserve

COPY --from=build /opt/segserve /opt/segserve

USER 10001:10001
WORKDIR /home/segserve

# gRPC API and Prometheus metrics. The orchestrator binds loopback unless told otherwise; in its
# own container it must listen on every interface.
ENV SEGSERVE_HOST=0.0.0.0
EXPOSE 50051 9464

ENTRYPOINT ["segserve", "orchestrator"]
