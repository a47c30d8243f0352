# The es_workers image: the library, its `es-workers` command and the example app.
# Build: docker build -t es-workers .   (docker-compose.yml builds it for its services)
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY es_workers ./es_workers
COPY examples ./examples
COPY config ./config
RUN pip install .[dashboard] && useradd --system --no-create-home app
USER app

# APP (module:attribute) is imported with /app, the working directory, on sys.path.
CMD ["es-workers", "--help"]
