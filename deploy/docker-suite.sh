#!/bin/bash
# The Docker suite of `make deploy-test`: build the Dockerfile unchanged and exercise the image
# the way docs/operations.md ("Running with docker") says to run it. One PASS/FAIL line per check.
# Needs deploy/setup.sh done and the suite's dockerd running (deploy/test.sh does both).
set -uo pipefail
SUITE=docker
. "$(dirname "$0")/lib.sh"
: >"$D/$SUITE-checks.log"
IMG=${IMG:-tradingd:deploy-test}
PORT=${DEPLOY_TEST_PORT:-18787}
NAME=tradingd-deploy-test VOL=tradingd-deploy-test-state
BIND=$D/bind-not-owned
# The recipe under test, plus short health intervals so SIGSTOP turns unhealthy in seconds
# (the check command itself stays the image's HEALTHCHECK).
RUN_ARGS=(--memory 512m --memory-swap 512m --network host
  -e TRADINGD_HTTP_HOST=127.0.0.1 -e TRADINGD_HTTP_PORT="$PORT"
  --health-interval 2s --health-timeout 3s --health-retries 2 --health-start-period 120s)

api() { curl -fsS -m 5 -H "Authorization: Bearer ${TOKEN:-}" "http://127.0.0.1:$PORT$1"; }
health() { docker inspect --format '{{.State.Health.Status}}' "$1" 2>/dev/null; }
is_health() { [ "$(health "$1")" = "$2" ]; }
daemon_pid() { pgrep -P "$(docker inspect --format '{{.State.Pid}}' "$NAME")" | head -1; }
cleanup() {
  docker rm -f "$NAME" "$NAME-ro" "$NAME-bind" >/dev/null 2>&1
  docker volume rm "$VOL" "$VOL-ro" >/dev/null 2>&1
  rm -rf "$BIND"; true
}
cleanup

log "docker build (legacy builder, --network host: this dockerd has no bridge)"
t0=$SECONDS
check "docker build of the Dockerfile as it is (FROM $BASE_TAG)" \
  docker build --network host -t "$IMG" "$REPO"
size=$(docker image inspect "$IMG" --format '{{.Size}}' 2>/dev/null || echo 0)
echo "  image size: $((size / 1000000)) MB (built in $((SECONDS - t0)) s)"
echo "$size" >"$D/image-size"

docker volume create "$VOL" >/dev/null
docker run -d --name "$NAME" "${RUN_ARGS[@]}" -v "$VOL:/var/lib/tradingd" "$IMG" >/dev/null
check "the image's HEALTHCHECK reaches healthy" wait_for 120 is_health "$NAME" healthy
TOKEN=$(docker exec "$NAME" cat /var/lib/tradingd/api_token 2>/dev/null)
check "runs as uid 10001" test "$(docker exec "$NAME" id -u)" = 10001
stats_memory() { api /stats | python3 -c 'import json,sys; m=json.load(sys.stdin)["memory"]; print(m["limit_bytes"], m["limit_source"], m["cgroup_bytes"] is not None)'; }
check "/stats: limit 512 MiB from the cgroup, cgroup usage reported" \
  test "$(stats_memory)" = "536870912 cgroup True"
echo "  /stats memory: $(stats_memory)"

pid=$(daemon_pid)
kill -STOP "$pid"
check "SIGSTOP of the daemon turns the container unhealthy" wait_for 60 is_health "$NAME" unhealthy
kill -CONT "$pid"
check "SIGCONT turns it healthy again" wait_for 60 is_health "$NAME" healthy

# The startup study must be complete before the container is recreated.
run_status() { api /runs | python3 -c 'import json,sys; r=[x for x in json.load(sys.stdin)["runs"] if x["source"]=="startup"]; print(r[0]["status"] if r else "none")'; }
completed() { [ "$(run_status)" = completed ]; }
check "the startup study completes" wait_for 420 completed
RUN_ID=$(api /runs | python3 -c 'import json,sys; print([x for x in json.load(sys.stdin)["runs"] if x["source"]=="startup"][0]["id"])')

t0=$(date +%s.%N); docker stop "$NAME" >/dev/null; t1=$(date +%s.%N)
secs=$(python3 -c "print(round($t1 - $t0, 2))")
echo "  docker stop took $secs s"
check "docker stop within 10 s" python3 -c "import sys; sys.exit(not $secs < 10)"
check "exit code 0 after SIGTERM" test "$(docker inspect --format '{{.State.ExitCode}}' "$NAME")" = 0
check "graceful stop logged" sh -c "docker logs $NAME 2>&1 | grep -Eq 'supervisor.*stopped'"

docker logs "$NAME" >"$D/docker-first.log" 2>&1
font_cache_from_image() {
  ! grep -q 'building the font cache' "$D/docker-first.log" &&
    docker run --rm --network none --entrypoint python "$IMG" -c \
      'import matplotlib, os, sys; d = matplotlib.get_cachedir(); sys.exit(not (d == os.environ["MPLCONFIGDIR"] and any(f.startswith("fontlist") for f in os.listdir(d))))'
}
check "matplotlib's font cache comes with the image (not rebuilt at start)" font_cache_from_image
sed -n '/stopping gracefully/,$p' "$D/docker-first.log" | cut -c1-160 | sed 's/^/  log: /'

# A new container on the same named volume (the documented recipe) keeps everything.
docker rm "$NAME" >/dev/null
docker run -d --name "$NAME" "${RUN_ARGS[@]}" -v "$VOL:/var/lib/tradingd" "$IMG" >/dev/null
check "recreated container healthy" wait_for 120 is_health "$NAME" healthy
check "recreate: API token kept" test "$(docker exec "$NAME" cat /var/lib/tradingd/api_token)" = "$TOKEN"
check "recreate: results of the startup study kept" \
  docker exec "$NAME" test -f "/var/lib/tradingd/results/$RUN_ID/manifest.json"
check "recreate: outcome journal and persisted caches kept" \
  docker exec "$NAME" sh -c 'test -s /var/lib/tradingd/outcomes.sqlite && ls /var/lib/tradingd/caches/* >/dev/null'
not_rerun() {
  completed && docker logs "$NAME" 2>&1 | grep -q 'is already completed' && ! docker logs "$NAME" 2>&1 | grep -q 'queued run'
}
check "recreate: the completed startup study is not run again" not_rerun
check "recreate: no anonymous volume" \
  sh -c "! docker inspect $NAME --format '{{range .Mounts}}{{.Type}}:{{.Name}} {{end}}' | grep -Eq 'volume:[0-9a-f]{64}'"
docker stop "$NAME" >/dev/null

# --read-only root filesystem with a tmpfs /tmp.
docker volume create "$VOL-ro" >/dev/null
docker run -d --name "$NAME-ro" "${RUN_ARGS[@]}" --read-only --tmpfs /tmp -v "$VOL-ro:/var/lib/tradingd" "$IMG" >/dev/null
check "--read-only --tmpfs /tmp: healthy" wait_for 120 is_health "$NAME-ro" healthy
docker stop "$NAME-ro" >/dev/null
check "--read-only --tmpfs /tmp: clean exit" test "$(docker inspect --format '{{.State.ExitCode}}' "$NAME-ro")" = 0

# A bind mount the image user cannot write: one line, exit 2 (no traceback, no restart loop).
rm -rf "$BIND"; install -d -o root -g root -m 0755 "$BIND"
docker run --name "$NAME-bind" "${RUN_ARGS[@]}" -v "$BIND:/var/lib/tradingd" "$IMG" >"$D/bind.log" 2>&1
code=$?
echo "  bind mount not owned by 10001: exit $code: $(head -c 300 "$D/bind.log")"
check "bind mount not owned by the image user: exit 2" test "$code" = 2
check "bind mount not owned by the image user: one line, no traceback" \
  sh -c "[ \$(grep -c . '$D/bind.log') = 1 ] && ! grep -q Traceback '$D/bind.log'"

docker logs "$NAME" >"$D/docker-daemon.log" 2>&1
cleanup
report
