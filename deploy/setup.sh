#!/bin/bash
# Idempotent host setup for `make deploy-test` (Debian bookworm, root; no image registry
# reachable; package registries reached through the host's network). Steps, by argument:
#   packages  docker.io, mmdebstrap, systemd-container from Debian
#   base      a stand-in for the Dockerfile's FROM (python:*-slim-bookworm): a minbase bookworm
#             with Python 3.11, cached as a tarball and `docker import`ed under the FROM tag;
#             starts the suite's own dockerd (pid in $D/dockerd.started; deploy/test.sh stops it)
#   rootfs    a rootfs that boots systemd (for systemd-nspawn --boot) with tradingd's dependencies
#             in /opt/tradingd, cached; the project itself is reinstalled from this checkout every run
#   (none)    all three, in that order.
# base and rootfs are independent once the packages are there: deploy/test.sh runs them (and
# their suites) side by side. Steps already done are skipped.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
mkdir -p "$D"
STEP=${1:-all}

# 1. packages
if ! command -v dockerd >/dev/null || ! command -v mmdebstrap >/dev/null || ! command -v systemd-nspawn >/dev/null; then
  log "installing docker.io mmdebstrap systemd-container"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    docker.io mmdebstrap systemd-container curl >/dev/null
fi
if [ "$STEP" = packages ]; then exit 0; fi

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

# bootstrap DIR [PACKAGE,...]: a minbase bookworm with Python 3.11 (and the packages) in DIR.
# mmdebstrap rather than debootstrap: apt fetches in parallel and dpkg runs once (about 80 s
# here against debootstrap's 170 s, at load 8), and with the host's sources (bookworm-updates,
# security) there is nothing left to upgrade afterwards. No Recommends, and /usr merged with
# usr-is-merged (not usrmerge, which pulls in perl), as debootstrap and the official images do.
bootstrap() {
  local dir=$1 extra=${2:-} sources=/etc/apt/sources.list.d/debian.sources
  [ -f "$sources" ] || sources=http://deb.debian.org/debian
  mmdebstrap --mode=root --variant=minbase --aptopt='APT::Install-Recommends "false"' \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include="python3,python3-venv,python3-pip,python-is-python3,ca-certificates${extra:+,$extra}" \
    bookworm "$dir" "$sources"
  # The host's CAs, so apt and pip inside builds trust whatever the host's network needs.
  cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/" 2>/dev/null || true
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    rm -f "$dir/etc/apt/sources.list" "$dir"/etc/apt/sources.list.d/*
    cp /etc/apt/sources.list.d/debian.sources "$dir/etc/apt/sources.list.d/"
  fi
  chroot_run "$dir" 'update-ca-certificates >/dev/null'
}

# 2. the base image: the rootfs cached as a tarball (cold: about a minute and a half)
BASE_TAR=$D/base-bookworm.tar
if [ "$STEP" != rootfs ]; then
  start_dockerd
  if [ ! -s "$BASE_TAR" ]; then
    log "mmdebstrap bookworm (the base image)"
    T=$D/base.tmp; rm -rf "$T"
    bootstrap "$T" >"$D/bootstrap-base.log" 2>&1
    # As the official Debian images: no apt caches left in layers.
    cat >"$T/etc/apt/apt.conf.d/docker-clean" <<'CONF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CONF
    rm -rf "$T"/var/lib/apt/lists/* "$T"/var/cache/apt/*
    tar -C "$T" -cf "$BASE_TAR.part" . && mv "$BASE_TAR.part" "$BASE_TAR"
    rm -rf "$T"
  fi
  if ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    log "docker import $BASE_TAG"
    docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$BASE_TAR" "$BASE_TAG" >/dev/null
  fi
  log "base image ready"
  if [ "$STEP" = base ]; then exit 0; fi
fi

# 3. the systemd rootfs with the dependencies installed as docs/operations.md says. Its own
# bootstrap (the base's packages and systemd), so it does not wait for the base image.
R=$D/rootfs-systemd
DEPS_STAMP=deps-$(cksum <"$REPO/pyproject.toml" | cut -d' ' -f1)
if [ ! -f "$R/.$DEPS_STAMP" ]; then
  log "building the systemd rootfs ($DEPS_STAMP)"
  rm -rf "$R"
  bootstrap "$R" systemd,systemd-sysv,dbus,procps,curl,iproute2 >"$D/bootstrap-rootfs.log" 2>&1
  mkdir -p "$R/tmp/src"; tar -C "$REPO" -c pyproject.toml README.md daemon | tar -C "$R/tmp/src" -x
  chroot_run "$R" 'useradd --system --user-group --home-dir /var/lib/tradingd --no-create-home \
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
