# kpms-job: the whole Keypoint-MoSeq pipeline from one manifest.
#
#   docker build -t kpms-job .                                   # CUDA 12 JAX (the default)
#   docker build --build-arg JAX=cpu -t kpms-job:cpu .           # CPU JAX
#   docker run --rm --gpus all -v /data:/data kpms-job /data/manifest.yml
#
# BASE_IMAGE is pinned; CI substitutes a local Debian bookworm base with Debian's own
# python3.11 (deploy/container/local-base.sh), which is why Python is used only through
# the venv at /opt/venv, created from whichever python3.11 the base has.
#
# The official python:3.11.14-slim-bookworm, pinned by its multi-platform index digest.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
FROM ${BASE_IMAGE}

# cuda12: jax[cuda12], whose wheels carry the CUDA libraries (the host needs only the
# NVIDIA driver); cpu: CPU-only JAX. Both install exactly the files in the lock files, checked
# against their hashes; the test tools (requirements-dev.lock) never enter the image.
ARG JAX=cuda12
ARG VERSION=0.1.0
ARG VCS_REF=unknown
# the name the image is built as (make image passes it); with the revision it goes into
# /opt/kpms-job/image.json, which each run's report.html and summary.json quote
ARG IMAGE_NAME=kpms-job
ARG BASE_IMAGE

LABEL org.opencontainers.image.title="kpms-job" \
      org.opencontainers.image.description="Runs the whole Keypoint-MoSeq pipeline from one manifest as an idempotent, resumable batch job" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      kpms-job.jax="${JAX}"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# tini is PID 1: it forwards SIGTERM to the job (which then saves a snapshot and exits 75)
# and reaps zombies.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
 && rm -rf /var/lib/apt/lists/*

# PIP_CERT: the system CA bundle, so a build that mounts the host's CA folder over
# /etc/ssl/certs (behind a TLS-inspecting proxy) reaches the index. ARGs, not ENV: the pip
# settings are for the build only.
ARG PIP_CERT=/etc/ssl/certs/ca-certificates.crt
ARG PIP_DISABLE_PIP_VERSION_CHECK=1
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

COPY requirements.lock requirements-cuda.lock /opt/kpms-job/
RUN python3.11 -m venv /opt/venv \
 && pip install --quiet --no-cache-dir --no-deps --require-virtualenv --require-hashes -r /opt/kpms-job/requirements.lock \
 && if [ "${JAX}" = cuda12 ]; then \
        pip install --quiet --no-cache-dir --no-deps --require-virtualenv --require-hashes -r /opt/kpms-job/requirements-cuda.lock; \
    elif [ "${JAX}" != cpu ]; then \
        echo "build arg JAX must be cuda12 or cpu, not '${JAX}'" >&2; exit 2; \
    fi \
 && pip check

# Any UID works (OpenShift-style: group 0 owns what must be shared); nothing in the image
# needs to be writable: caches go to a per-UID folder in /tmp (kpms-job-entry), HOME too.
RUN useradd --uid 10001 --gid 0 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin kpms \
 && mkdir -p /data && chmod 0775 /data && chgrp 0 /data

# The application last: a change to it rebuilds only these layers.
COPY entrypoint.py manifest.schema.json apply.schema.json /opt/kpms-job/
COPY kpms_job /opt/kpms-job/kpms_job
COPY --chmod=0755 deploy/container/kpms-job-entry.sh /usr/local/bin/kpms-job-entry
RUN echo /opt/kpms-job > /opt/venv/lib/python3.11/site-packages/kpms-job.pth \
 && printf '#!/bin/sh\nexec /usr/local/bin/kpms-job-entry "$@"\n' > /usr/local/bin/kpms-job \
 && chmod 0755 /usr/local/bin/kpms-job \
 && printf '{"image": "%s", "version": "%s", "revision": "%s", "jax": "%s", "built": "%s"}\n' \
        "${IMAGE_NAME}" "${VERSION}" "${VCS_REF}" "${JAX}" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > /opt/kpms-job/image.json \
 && python -m compileall -q /opt/kpms-job/kpms_job \
 && kpms-job --version

ENV HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg
USER 10001:0
WORKDIR /data
ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/usr/local/bin/kpms-job-entry"]
CMD ["--help"]
