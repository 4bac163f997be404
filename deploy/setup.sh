#!/bin/bash
# Idempotent host setup for `make deploy-test` (Debian bookworm, root; no image registry
# reachable; package registries reached through the host's network):
#   1. docker.io, debootstrap, systemd-container from Debian
#   2. a stand-in for the Dockerfile's FROM (python:*-slim-bookworm): a debootstrapped bookworm
#      with Python 3.11, cached as a tarball and `docker import`ed under the FROM tag
#   3. a rootfs that boots systemd (for systemd-nspawn --boot) with tradingd's dependencies in
#      /opt/tradingd, cached; the project itself is reinstalled from this checkout every run.
# It starts the suite's own dockerd (pid in $D/dockerd.started); deploy/test.sh stops it.
# `setup.sh base` stops after step 2 (what the Docker suite needs); steps done are skipped.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
mkdir -p "$D"

# 1. packages
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null; then
  log "installing docker.io debootstrap systemd-container"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    docker.io debootstrap systemd-container curl >/dev/null
fi

start_dockerd

# chroot_run ROOT SCRIPT: run SCRIPT in ROOT with /proc and the host's DNS (for apt and pip).
chroot_run() {
  local root=$1; shift
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  mount --bind /proc "$root/proc"
  # Without the host's pip settings (find-links and indexes that exist only on the host).
  local rc=0; env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
    chroot "$root" /bin/sh -ec "$*" || rc=$?
  umount "$root/proc"
  : >"$root/etc/resolv.conf"
  return $rc
}

# 2. the base rootfs (what debootstrap costs: ~5 min cold), cached as a tarball
BASE_TAR=$D/base-bookworm.tar
if [ ! -s "$BASE_TAR" ]; then
  log "debootstrap bookworm (cold: a few minutes)"
  MIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources | head -1)
  T=$D/base.tmp; rm -rf "$T"
  debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    bookworm "$T" "${MIRROR:-http://deb.debian.org/debian}" >"$D/debootstrap.log" 2>&1
  # The host's CAs, so apt and pip inside builds trust whatever the host's network needs.
  cp /usr/local/share/ca-certificates/*.crt "$T/usr/local/share/ca-certificates/" 2>/dev/null || true
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    rm -f "$T/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/debian.sources "$T/etc/apt/sources.list.d/"
  fi
  # As the official Debian images: no apt caches left in layers.
  cat >"$T/etc/apt/apt.conf.d/docker-clean" <<'CONF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CONF
  chroot_run "$T" 'update-ca-certificates >/dev/null
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -qq upgrade >/dev/null
    apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*'
  tar -C "$T" -cf "$BASE_TAR.part" . && mv "$BASE_TAR.part" "$BASE_TAR"
  rm -rf "$T"
fi
if ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
  log "docker import $BASE_TAG"
  docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$BASE_TAR" "$BASE_TAG" >/dev/null
fi

if [ "${1:-all}" = base ]; then log "base image ready"; exit 0; fi

# 3. the systemd rootfs with the dependencies installed as docs/operations.md says
R=$D/rootfs-systemd
DEPS_STAMP=deps-$(cksum <"$REPO/pyproject.toml" | cut -d' ' -f1)
if [ ! -f "$R/.$DEPS_STAMP" ]; then
  log "building the systemd rootfs ($DEPS_STAMP)"
  rm -rf "$R"; mkdir -p "$R"; tar -C "$R" -xf "$BASE_TAR"
  rm -f "$R/etc/apt/apt.conf.d/docker-clean"
  mkdir -p "$R/tmp/src"; tar -C "$REPO" -c pyproject.toml README.md daemon | tar -C "$R/tmp/src" -x
  chroot_run "$R" 'apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      systemd systemd-sysv dbus procps curl iproute2 >/dev/null
    apt-get clean && rm -rf /var/lib/apt/lists/*
    useradd --system --user-group --home-dir /var/lib/tradingd --no-create-home \
      --shell /usr/sbin/nologin tradingd
    python3 -m venv /opt/tradingd
    PIP_NO_CACHE_DIR=1 /opt/tradingd/bin/pip install -q "tradingd[plots] @ file:///tmp/src"
    systemctl mask systemd-networkd-wait-online.service getty@tty1.service >/dev/null 2>&1 || true'
  echo tradingd-nspawn >"$R/etc/hostname"; : >"$R/etc/machine-id"
  rm -rf "$R/tmp/src"; touch "$R/.$DEPS_STAMP"
fi
# This checkout, installed the way docs/operations.md says (dependencies are already there).
log "installing this checkout into the systemd rootfs"
rm -rf "$R/tmp/src"; mkdir -p "$R/tmp/src"
tar -C "$REPO" -c pyproject.toml README.md daemon config systemd | tar -C "$R/tmp/src" -x
chroot_run "$R" 'PIP_NO_CACHE_DIR=1 /opt/tradingd/bin/pip install -q --no-deps --force-reinstall \
      "tradingd[plots] @ file:///tmp/src"
    /opt/tradingd/bin/python -m compileall -q /opt/tradingd/lib
    install -d -m 0755 /etc/tradingd
    install -m 0644 /tmp/src/config/tradingd.yaml /etc/tradingd/tradingd.yaml
    rm -rf /etc/tradingd/workflows && cp -r /tmp/src/config/workflows /etc/tradingd/
    sed -i "s/^  format: text /  format: json /" /etc/tradingd/tradingd.yaml
    /opt/tradingd/bin/tradingd check-config /etc/tradingd/tradingd.yaml
    install -m 0644 /tmp/src/systemd/tradingd.service /etc/systemd/system/tradingd.service
    rm -rf /etc/systemd/system/tradingd.service.d
    systemctl enable tradingd >/dev/null 2>&1'
rm -rf "$R/tmp/src"
log "setup done: base $BASE_TAG, rootfs $R"
