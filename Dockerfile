# cpi-monitor: the `cpimon` command line (worker, simulate, rules, dashboards, ...).
#   docker build -t cpi-monitor .
#   docker run --rm -p 6066:6066 -e CPIMON_BROKER=kafka://kafka:9092 cpi-monitor worker
# docker-compose.yml builds and runs it; deploy/kubernetes runs it on a cluster.
FROM python:3.11-slim

# Every dependency ships manylinux wheels: no compiler in the image.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Sources only (see .dockerignore); the package is installed, not run from /app.
COPY pyproject.toml README.md ./
COPY models ./models
COPY streams ./streams
COPY agents ./agents
RUN pip install . && rm -rf build *.egg-info
COPY catalog.example.yaml /etc/cpimon/catalog.yaml

# A non-root user; Faust keeps its data directory (and the checkpoints' local copy) in /data.
RUN useradd --system --uid 10001 --home-dir /data --create-home cpimon
USER 10001
ENV CPIMON_CATALOG=/etc/cpimon/catalog.yaml \
    CPIMON_DATA_DIR=/data \
    CPIMON_METRICS_HOST=0.0.0.0 \
    CPIMON_METRICS_PORT=6066
VOLUME ["/data"]
EXPOSE 6066

ENTRYPOINT ["cpimon"]
CMD ["worker"]
