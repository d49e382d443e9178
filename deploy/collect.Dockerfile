# syntax=docker/dockerfile:1
# The summary service, `maeltrace collect`, built from this checkout (used by deploy/compose.yaml;
# for Kubernetes, push it to your registry and set its name in deploy/kubernetes/kustomization.yaml):
#
#   docker build -f deploy/collect.Dockerfile -t maeltrace-collect:0.1.0 .
#
# The build context is the repository root; deploy/collect.Dockerfile.dockerignore keeps it to
# the package's sources. The service is pure Python: the compiled recorder (a C extension that
# only the training processes' hot path uses) is not built, so the image needs no compiler.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MAELTRACE_NO_EXTENSION=1 \
    MAELTRACE_OUTPUT_DIR=/var/lib/maeltrace

COPY . /src
RUN pip install "/src[collect]" \
    && rm -rf /src \
    && useradd --uid 10001 --no-create-home --home-dir /var/lib/maeltrace maeltrace \
    && mkdir -p /var/lib/maeltrace \
    && chown 10001:10001 /var/lib/maeltrace

# Pending summaries (those MLflow has not taken yet) live here: mount a volume to keep them.
WORKDIR /var/lib/maeltrace
USER 10001:10001
EXPOSE 4320
CMD ["maeltrace", "collect", "--host", "0.0.0.0", "--port", "4320"]
