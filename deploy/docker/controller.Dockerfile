# syntax=docker/dockerfile:1
# The lrctl controller: `lrctl serve` from lrctl[controller] only (grpc, prometheus-client,
# health, reflection, the PostgreSQL driver); no torch, no Ray. Build from the repository root:
#   docker build -f deploy/docker/controller.Dockerfile -t lrctl-controller:0.1.0 .
# Configure it with LRCTL_* variables (docs/controller.md); data lives in /var/lib/lrctl.
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lrctl ./lrctl
COPY controller ./controller
COPY worker ./worker
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir "$(find /wheels -name 'lrctl-*.whl')[controller]" \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/lrctl --create-home \
       --shell /usr/sbin/nologin lrctl
USER 10001:10001
WORKDIR /var/lib/lrctl
# Inside a container the controller listens on every interface; outside loopback it needs
# TLS and tokens (LRCTL_SERVER_TLS_*, LRCTL_TOKEN_FILE) or an explicit --insecure.
ENV LRCTL_HOST=0.0.0.0 \
    LRCTL_PORT=50051 \
    LRCTL_METRICS_PORT=9464 \
    LRCTL_DB=/var/lib/lrctl/lrctl.db
EXPOSE 50051 9464
VOLUME ["/var/lib/lrctl"]
# The standard gRPC health service, over the same port and TLS as clients (LRCTL_TLS_CA, ...).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "controller.healthcheck"]
ENTRYPOINT ["lrctl", "serve"]
