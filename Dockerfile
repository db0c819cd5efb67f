# syntax=docker/dockerfile:1
# shadowd image: `shadowd run -c /etc/shadowd/config.yaml` by default, and the
# Ray head/worker image for the Helm chart's KubeRay RayService (KubeRay
# replaces the command with its own `ray start ...`).
#
# CPU torch by default. For NVIDIA GPUs pass the CUDA wheel index, e.g.
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
# (the CUDA wheels carry their own CUDA libraries; the host supplies the driver),
# and BASE_IMAGE for another Debian-based Python 3.11 image if you need one.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, from its own index: a plain `pip install .` would resolve the
# multi-GB CUDA build from PyPI. Its pin must equal pyproject.toml's (a test checks).
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shadowd ./shadowd
RUN pip install --no-cache-dir . \
 && pip check

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="shadowd" \
      org.opencontainers.image.description="Shadow-test ML models on Ray Serve" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed, high uid so the chart's runAsUser and file ownership agree, and it
# cannot clash with a host user.
RUN groupadd --system --gid 10001 shadowd \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/shadowd --create-home --shell /usr/sbin/nologin shadowd \
 && mkdir -p /var/lib/shadowd /etc/shadowd \
 && chown 10001:10001 /var/lib/shadowd
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/shadowd
USER 10001:10001
WORKDIR /var/lib/shadowd
VOLUME ["/var/lib/shadowd"]
# 8000: Ray Serve HTTP (/predict, /feedback, /healthz, /shadow/*); 9100: /metrics
EXPOSE 8000 9100
# Ray start-up takes a while; a python one-liner because the slim image has no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["shadowd"]
CMD ["run", "-c", "/etc/shadowd/config.yaml"]
