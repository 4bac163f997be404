# Shared by deploy/*.sh: where the deploy test keeps its cache, how it talks to its own dockerd,
# and the PASS/FAIL bookkeeping. Sourced, never run.
# shellcheck shell=bash

# Cache kept between runs (base rootfs tarball, docker data-root, nspawn rootfs): a warm run
# skips debootstrap and the dependency install. Delete it to measure a cold run.
D=${TRADINGD_DEPLOY_DIR:-/var/tmp/tradingd-deploy}
REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
# Our own engine on our own socket: never the host's /var/run/docker.sock.
export DOCKER_HOST=unix://$D/docker.sock
# No buildx on these machines; the legacy builder needs no frontend image.
export DOCKER_BUILDKIT=0
# The Dockerfile's FROM, which the debootstrapped stand-in is tagged as.
BASE_TAG=$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$REPO/Dockerfile")
SUITE=${SUITE:-deploy}
pass=0 fail=0

log() { printf '%s %s\n' "$(date -u +%T)" "$*" >&2; }

# check NAME COMMAND...: run COMMAND, print one PASS/FAIL line, count it.
check() {
  local name=$1; shift
  if "$@" >>"$D/$SUITE-checks.log" 2>&1; then echo "PASS $name"; pass=$((pass + 1))
  else echo "FAIL $name"; fail=$((fail + 1)); fi
}

# wait_for SECONDS COMMAND...: poll COMMAND once a second until it succeeds.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 1
  done
}

# The suite's tally, read by deploy/test.sh.
report() { echo "$SUITE: $pass passed, $fail failed"; echo "$pass $fail" >"$D/$SUITE.tally"; }

# A dockerd of our own: no iptables/NAT and no bridge (test containers use the host network and
# bind loopback), overlay2, data-root in the cache (images survive between runs), pid recorded.
start_dockerd() {
  if [ -s "$D/dockerd.pid" ] && kill -0 "$(cat "$D/dockerd.pid")" 2>/dev/null; then
    log "dockerd already running (pid $(cat "$D/dockerd.pid"))"; return 0
  fi
  command -v dockerd >/dev/null || { log "dockerd not installed"; return 1; }
  dockerd --iptables=false --ip6tables=false --ip-masq=false --bridge=none \
    --storage-driver=overlay2 --data-root="$D/docker-data" --exec-root="$D/docker-exec" \
    --pidfile="$D/dockerd.pid" -H "$DOCKER_HOST" >>"$D/dockerd.log" 2>&1 </dev/null &
  echo $! >"$D/dockerd.started"
  wait_for 60 docker info || { log "dockerd did not come up (see $D/dockerd.log)"; return 1; }
  log "dockerd up (pid $(cat "$D/dockerd.started"))"
}

# Stop the dockerd this script started (its managed containerd goes with it), by pid.
stop_dockerd() {
  [ -s "$D/dockerd.started" ] || return 0
  local pid; pid=$(cat "$D/dockerd.started")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$D/dockerd.started"
  # dockerd leaves its default network namespace mounted.
  if mountpoint -q "$D/docker-exec/netns/default" 2>/dev/null; then umount "$D/docker-exec/netns/default"; fi
  log "dockerd (pid $pid) stopped"
}
