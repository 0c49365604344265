# The image a stackrec worker runs: the `stackrec` CLI, by default `stackrec serve` (the Prefect
# deployments of prefect.yaml and a worker that runs them), on CPU.
#
# Build and run (from the repository root):
#   docker build -t stackrec:0.1.0 .
#   docker run --rm --name stackrec \
#     -v stackrec-home:/var/lib/stackrec \
#     -e STACKREC_KAFKA_BOOTSTRAP=kafka:9092 \
#     -e STACKREC_REDIS_URL=redis://redis:6379/0 \
#     -e STACKREC_PUSHGATEWAY=pushgateway:9091 \
#     -e PREFECT_API_URL=http://prefect:4200/api \
#     stackrec:0.1.0
#   docker run --rm stackrec:0.1.0 --help            # any other subcommand, e.g. `cycle --json`
#
# Environment (all optional; the defaults point at a local stack on 127.0.0.1):
#   STACKREC_HOME             run directory: interaction log, model registry, Prefect state
#                             (default here /var/lib/stackrec, a volume)
#   STACKREC_KAFKA_BOOTSTRAP  Kafka bootstrap servers; STACKREC_TOPIC, STACKREC_GROUP_ID
#   STACKREC_KAFKA_SECURITY_PROTOCOL, STACKREC_KAFKA_SASL_MECHANISM, STACKREC_KAFKA_SASL_USERNAME,
#   STACKREC_KAFKA_SASL_PASSWORD, STACKREC_KAFKA_SSL_CAFILE    Kafka security (SASL/SSL)
#   STACKREC_REDIS_URL        redis:// or rediss:// (TLS); STACKREC_REDIS_PASSWORD
#   STACKREC_MODEL            model name (registry folder and Redis prefix stackrec:<model>)
#   STACKREC_PUSHGATEWAY      host:port of a Prometheus Pushgateway for short flow runs
#   STACKREC_METRICS_PORT     port of /metrics (default 9464; the healthcheck reads it)
#   STACKREC_METRICS_HOST     address /metrics binds (0.0.0.0 in the image, so Prometheus can scrape it)
#   PREFECT_API_URL           a Prefect server; without it `stackrec serve` starts a local one
# An unknown STACKREC_* variable is an error (a typo must not fall back to a default silently).
# Secrets (STACKREC_KAFKA_SASL_PASSWORD, STACKREC_REDIS_PASSWORD) belong in `docker run
# --env-file` or an orchestrator's secrets, never in this file.

# --- build: a virtualenv with pinned dependencies and the project --------------------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# torch alone from the CPU-only index: the default PyPI wheel pulls in gigabytes of CUDA libraries.
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /src
COPY pyproject.toml README.md ./
COPY stackrec ./stackrec
COPY streaming ./streaming
COPY monitoring ./monitoring
COPY flows ./flows
# The other dependencies are pinned in pyproject.toml (with confluent-kafka for
# STACKREC_KAFKA_CLIENT=confluent); torch==2.13.0 is already satisfied.
RUN pip install --no-cache-dir "/src[kafka-fast]"

# --- runtime: the virtualenv, the deployments, a non-root user ------------------------------------
FROM python:3.11-slim

LABEL org.opencontainers.image.title="stackrec" \
      org.opencontainers.image.description="Continual learning for sequential recommenders (StackRec) on event streams: Prefect worker and CLI" \
      org.opencontainers.image.version="0.1.0"

RUN groupadd --system --gid 10001 stackrec \
    && useradd --system --uid 10001 --gid stackrec --home-dir /var/lib/stackrec \
        --shell /usr/sbin/nologin stackrec \
    && mkdir -p /var/lib/stackrec \
    && chown stackrec:stackrec /var/lib/stackrec

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    STACKREC_HOME=/var/lib/stackrec \
    STACKREC_METRICS_HOST=0.0.0.0 \
    PREFECT_HOME=/var/lib/stackrec/prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

# The process work pool runs flows from their entrypoints in prefect.yaml, relative to /app.
WORKDIR /app
COPY prefect.yaml pyproject.toml ./
COPY stackrec ./stackrec
COPY streaming ./streaming
COPY monitoring ./monitoring
COPY flows ./flows

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
VOLUME ["/var/lib/stackrec"]
EXPOSE 9464

# Healthy while the process serves /metrics (on loopback inside the container).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/metrics' % os.environ.get('STACKREC_METRICS_PORT', '9464'), timeout=4)"]

ENTRYPOINT ["stackrec"]
CMD ["serve"]
