# The es_workers image: the library, its `es-workers` command and the example app.
#   docker build -t es-workers-app:local .     (the compose files build it once, under that tag)
#   docker run --rm -e ES_REDIS_URL=redis://HOST:6379/0 es-workers-app:local publish examples.bank:store
# Runtime dependencies only (RabbitMQ, the dashboard and the OpenTelemetry API included; no
# fakeredis, no test tools), pinned in requirements.lock. Regenerate the lock with the same
# Python as the image:
#   pip-compile --extra=rabbitmq --extra=dashboard --extra=otel --extra=personal --extra=archive --no-emit-find-links \
#     --no-emit-index-url --no-emit-trusted-host --output-file=requirements.lock --strip-extras pyproject.toml
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    APP=examples.bank:store

WORKDIR /app

# Dependencies in a layer of their own: rebuilt only when the lock file changes, not on
# every change of the source.
COPY requirements.lock ./
RUN pip install --no-cache-dir --requirement requirements.lock

# The package itself, without resolving dependencies again: what runs is what was locked.
COPY pyproject.toml README.md LICENSE ./
COPY es_workers ./es_workers
COPY examples ./examples
COPY config ./config
RUN pip install --no-cache-dir --no-deps . \
    && pip check \
    && groupadd --system --gid 10001 app \
    && useradd --system --no-create-home --uid 10001 --gid 10001 app
# Numeric, so that a platform can check it is not root (e.g. Kubernetes runAsNonRoot).
USER 10001:10001

# Prometheus metrics when ES_METRICS_PORT is set: every es_workers process of the container
# on that one port (`es-workers worker` shares its worker processes' metrics through a
# PROMETHEUS_MULTIPROC_DIR of its own).
EXPOSE 9191

# APP (module:attribute naming the Store) is imported with /app, the working directory, on
# sys.path; set APP to your own app. `es-workers health` exits 1 unless Redis and the broker
# answer and a process of this container (publisher or worker) beat in the last 30 s.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["sh", "-c", "exec es-workers health \"$APP\""]

ENTRYPOINT ["es-workers"]
CMD ["--help"]
