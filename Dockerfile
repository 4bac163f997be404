# syntax=docker/dockerfile:1
#
# tradingd container image. Operator guide: docs/operations.md.
#
#   docker build -t tradingd:0.1.0 .
#   docker run -d --name tradingd --memory 4g --stop-timeout 30 \
#       -p 127.0.0.1:8787:8787 -v tradingd-state:/var/lib/tradingd tradingd:0.1.0
#
# Two stages: the first builds the tradingd wheel and installs it with its
# dependencies into a virtualenv; the second copies only that virtualenv onto a
# clean base, so no build tooling or sources end up in the image.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Must equal [project] version in pyproject.toml (tests/integration/test_deploy_docker.py checks).
ARG TRADINGD_VERSION=0.1.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY daemon ./daemon
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/tradingd \
 && /opt/tradingd/bin/pip install --no-cache-dir \
        "/wheels/tradingd-${TRADINGD_VERSION}-py3-none-any.whl[plots]" \
 && /opt/tradingd/bin/python -m compileall -q /opt/tradingd/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="tradingd" \
      org.opencontainers.image.description="Long-running trading-research daemon with bounded memory" \
      org.opencontainers.image.licenses="MIT"

# tini is PID 1: it forwards SIGTERM to the daemon and reaps orphaned worker
# processes, so `docker run --init` is not needed (it is harmless if given).
# A fixed UID/GID lets operators chown bind-mounted directories in advance.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tradingd \
 && useradd --system --uid 10001 --gid tradingd --no-create-home \
        --home-dir /var/lib/tradingd --shell /usr/sbin/nologin tradingd \
 && install -d -o tradingd -g tradingd -m 0750 /var/lib/tradingd /var/lib/tradingd/results

COPY --from=build /opt/tradingd /opt/tradingd
# The default config and the sample workflows it may name (paths resolve against it).
COPY config/ /etc/tradingd/

# STATE_DIRECTORY: the daemon keeps state there and results in <state>/results,
# as under systemd. TRADINGD_HTTP_HOST=0.0.0.0: listen on every interface of the
# container's own network namespace; publish with -p to choose host exposure.
ENV PATH=/opt/tradingd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STATE_DIRECTORY=/var/lib/tradingd \
    TRADINGD_HTTP_HOST=0.0.0.0 \
    TRADINGD_HTTP_PORT=8787 \
    MPLCONFIGDIR=/tmp/matplotlib

USER 10001:10001
WORKDIR /var/lib/tradingd
VOLUME ["/var/lib/tradingd", "/var/lib/tradingd/results"]
EXPOSE 8787
STOPSIGNAL SIGTERM

# No curl in the image: the interpreter the daemon runs on does the probe.
# /health is 503 when the event loop is stalled; urlopen raises on it, exit 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('TRADINGD_HTTP_PORT', '8787'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["tini", "--"]
CMD ["tradingd", "run", "--config", "/etc/tradingd/tradingd.yaml"]
