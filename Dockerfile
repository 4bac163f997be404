#
# tradingd container image. Operator guide: docs/operations.md ("Running with docker").
#
#   docker build -t tradingd:0.1.0 .
#   docker run -d --name tradingd --memory 4g --stop-timeout 30 \
#       -p 127.0.0.1:8787:8787 -v tradingd-state:/var/lib/tradingd tradingd:0.1.0
#
# Two stages: the first installs the dependencies and the tradingd wheel into a
# virtualenv and trims it (no pip/setuptools, no test suites, bytecode compiled,
# matplotlib's font cache built); the second copies only that virtualenv onto a
# clean base, so no build tooling or sources end up in the image.
# No `# syntax=` line: the file needs nothing beyond the classic builder, and a
# syntax directive makes BuildKit fetch a frontend image (fails offline).

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Must equal [project] version in pyproject.toml (tests/integration/test_deploy_docker.py checks).
ARG TRADINGD_VERSION=0.1.0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/opt/tradingd/share/matplotlib
WORKDIR /src
# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when
# the dependencies change, not on every source edit.
COPY pyproject.toml README.md ./
RUN python -m venv /opt/tradingd \
 && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['plots']))" >/tmp/requirements.txt \
 && /opt/tradingd/bin/pip install --no-cache-dir -r /tmp/requirements.txt
COPY daemon ./daemon
# Trim what a running daemon never needs: the installers and every test suite.
# Then compile the bytecode (the image is read-only at run time) and build
# matplotlib's font cache once, here, instead of at every container start.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
 && /opt/tradingd/bin/pip install --no-cache-dir --no-deps \
        "/wheels/tradingd-${TRADINGD_VERSION}-py3-none-any.whl" \
 && site=$(/opt/tradingd/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
 && rm -rf /opt/tradingd/bin/pip* "$site"/pip "$site"/pip-* "$site"/setuptools "$site"/setuptools-* \
        "$site"/pkg_resources "$site"/_distutils_hack "$site"/distutils-precedence.pth \
 && find "$site" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} + \
 && find "$site" \( -name "*.pyx" -o -name "*.pxd" -o -name "*.pxi" \) -delete \
 && /opt/tradingd/bin/python -m compileall -q -j 0 /opt/tradingd/lib \
 && /opt/tradingd/bin/python -c "import matplotlib.font_manager, sklearn.ensemble, pyarrow, tradingd.cli" \
 && ls "$MPLCONFIGDIR"/fontlist-*.json

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

# The font cache directory belongs to the image user: matplotlib uses a config
# directory only if it may write there (else it rebuilds into a temporary one).
COPY --from=build --chown=root:root /opt/tradingd /opt/tradingd
RUN chown -R 10001:10001 /opt/tradingd/share/matplotlib
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
    MPLCONFIGDIR=/opt/tradingd/share/matplotlib

USER 10001:10001
WORKDIR /var/lib/tradingd
# One volume: state and results (<state>/results) together, so a container
# recreated on the same named volume keeps both. Results elsewhere: bind-mount
# over /var/lib/tradingd/results (docs/operations.md).
VOLUME ["/var/lib/tradingd"]
EXPOSE 8787
STOPSIGNAL SIGTERM

# No curl in the image: the interpreter the daemon runs on does the probe.
# /health is 503 when the event loop is stalled; urlopen raises on it, exit 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('TRADINGD_HTTP_PORT', '8787'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["tini", "--"]
CMD ["tradingd", "run", "--config", "/etc/tradingd/tradingd.yaml"]
