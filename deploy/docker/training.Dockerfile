# syntax=docker/dockerfile:1
# Training image for Ray clusters (KubeRay RayJob, `ray job submit`): Ray's own image plus
# lrctl[worker,ray] (torch and RemoteLRScheduler) and examples/. Build from the repository root:
#   docker build -f deploy/docker/training.Dockerfile -t lrctl-training:0.1.0 .
# The Ray version and Python of the base image must match the cluster (rayVersion in the
# RayJob). For GPUs use a -gpu / -cuXXX tag of rayproject/ray; for a smaller CPU-only image,
# pass PyTorch's CPU wheel index as --build-arg PIP_EXTRA_INDEX_URL=...
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu
FROM ${RAY_IMAGE}
ARG PIP_EXTRA_INDEX_URL=""
WORKDIR /home/ray/lrctl
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users lrctl ./lrctl
COPY --chown=ray:users controller ./controller
COPY --chown=ray:users worker ./worker
COPY --chown=ray:users examples ./examples
# The image's Ray already satisfies the [ray] extra; pip adds only what is missing.
RUN PIP_EXTRA_INDEX_URL="${PIP_EXTRA_INDEX_URL}" \
    pip install --no-cache-dir "./[worker,ray]" \
    && python -c "import torch, ray, worker; print('torch', torch.__version__, 'ray', ray.__version__)"
ENV PYTHONUNBUFFERED=1
