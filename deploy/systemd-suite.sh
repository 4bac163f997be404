#!/bin/bash
# The systemd suite of `make deploy-test`: boot the rootfs deploy/setup.sh built (tradingd
# installed as docs/operations.md says, the unit from this checkout unchanged) with
# `systemd-nspawn --boot` and exercise the unit. One PASS/FAIL line per check.
# The machine shares the host's network, so the daemon's loopback port is reachable from here.
set -uo pipefail
SUITE=systemd
. "$(dirname "$0")/lib.sh"
: >"$D/$SUITE-checks.log"
R=$D/rootfs-systemd
PORT=${DEPLOY_TEST_SYSTEMD_PORT:-18788}
MACHINE=tradingd-deploy-test
CONF=$R/etc/tradingd/tradingd.yaml
api() { curl -fsS -m 5 -H "Authorization: Bearer $(cat "$R/var/lib/tradingd/api_token" 2>/dev/null)" "http://127.0.0.1:$PORT$1"; }
prop() { in_ct systemctl show -p "$1" --value tradingd; }
journal() { in_ct journalctl -b -u tradingd --no-pager -o cat; }
limit() { api /stats | python3 -c 'import json,sys; m=json.load(sys.stdin)["memory"]; print(m["limit_bytes"], m["limit_source"])'; }
startup_run() { api /runs | python3 -c 'import json,sys; r=[x for x in json.load(sys.stdin)["runs"] if x["source"]=="startup"]; print(r[0]["status"], r[0]["progress"]["completed"]) if r else print("none 0")'; }

# Fresh state, the default config on a port of its own, thread executor first.
rm -rf "$R/etc/systemd/system/tradingd.service.d" "$R/var/lib/tradingd" "$R/var/lib/private/tradingd" \
  "$R/var/cache/tradingd" "$R/var/log/tradingd"
sed -i -E "s/^(  port: )[0-9]+/\1$PORT/; s/^(  kind: )(thread|process) /\1thread  /" "$CONF"
grep -q "port: $PORT" "$CONF" || { echo "FAIL config port"; exit 1; }

# No systemd/machined on the host: without --keep-unit nspawn fails ("Failed to open system bus").
# A tmpfs on /run/systemd/nspawn lets nspawn clean up its propagate dir at exit.
mkdir -p /run/systemd/nspawn
mounted_run=no
mountpoint -q /run/systemd/nspawn || { mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn && mounted_run=yes; }
setsid systemd-nspawn --boot --register=no --keep-unit --console=read-only -D "$R" --machine="$MACHINE" \
  >"$D/nspawn.log" 2>&1 </dev/null &
NSPAWN=$!
echo "$NSPAWN" >"$D/nspawn.pid"
L=
find_init() {  # systemd (the machine's PID 1): a child or grandchild of nspawn
  local p
  for p in $(pgrep -P "$NSPAWN") $(for c in $(pgrep -P "$NSPAWN"); do pgrep -P "$c"; done); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = systemd ] && { L=$p; return 0; }
  done
  return 1
}
in_ct() { nsenter -t "$L" -a "$@"; }
booted() { case $(in_ct systemctl is-system-running 2>/dev/null) in running|degraded) return 0;; esac; return 1; }
stop_machine() {
  [ -n "$L" ] && in_ct systemctl poweroff >/dev/null 2>&1
  for _ in $(seq 1 30); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 1; done
  kill -0 "$NSPAWN" 2>/dev/null && kill -TERM "$NSPAWN"
  wait "$NSPAWN" 2>/dev/null
  [ "$mounted_run" = yes ] && umount /run/systemd/nspawn
  rm -f "$D/nspawn.pid"
}
trap stop_machine EXIT

wait_for 60 find_init
check "systemd boots in the machine" wait_for 90 booted
echo "  system state: $(in_ct systemctl is-system-running 2>&1)"
# nspawn mounts the v1 memory and pids hierarchies read-only, so systemd drops those controllers
# (MemoryMax/TasksMax silently not applied). Make them writable and re-execute PID 1.
if [ -d /sys/fs/cgroup/memory ]; then
  nsenter -t "$L" -m sh -c 'mount -o remount,bind,rw /sys/fs/cgroup/memory && mount -o remount,bind,rw /sys/fs/cgroup/pids'
  in_ct systemctl daemon-reexec
  wait_for 30 booted
fi

# The unit is enabled, so it started at boot, before the controllers above were usable: restart.
t0=$SECONDS
in_ct systemctl restart tradingd
# Type=notify: restart returns once READY=1 arrived, and the daemon sends it after HTTP listens.
active_and_answering() { [ "$(prop ActiveState)" = active ] && curl -fsS -m 5 "http://127.0.0.1:$PORT/ready"; }
check "Type=notify: active once READY=1 arrived, and HTTP answers then" active_and_answering
echo "  start took $((SECONDS - t0)) s"
status_line() { in_ct systemctl status tradingd --no-pager | grep -Eq 'Status: "mem [0-9]+/[0-9]+ MB'; }
check "systemctl status shows the daemon's STATUS= line" status_line
check "MemoryMax=4G: /stats limit 4 GiB from the cgroup" test "$(limit)" = "4294967296 cgroup"

in_ct sh -c 'mkdir -p /etc/systemd/system/tradingd.service.d
  printf "[Service]\nMemoryMax=512M\nMemoryHigh=480M\n" >/etc/systemd/system/tradingd.service.d/50-memory.conf
  systemctl daemon-reload && systemctl restart tradingd'
check "drop-in MemoryMax=512M: /stats limit 512 MiB" test "$(limit)" = "536870912 cgroup"
in_ct sh -c 'rm -rf /etc/systemd/system/tradingd.service.d && systemctl daemon-reload'

# Watchdog: a frozen main process is killed after WatchdogSec=30s and restarted.
in_ct kill -STOP "$(prop MainPID)"
restarted() { [ "$(prop NRestarts)" -ge 1 ] && [ "$(prop ActiveState)" = active ] && api /ready >/dev/null; }
check "watchdog: SIGSTOPped daemon is restarted (NRestarts >= 1) and ready again" wait_for 90 restarted
watchdog_logged() { journal | grep -q 'Watchdog timeout'; }
check "journal: watchdog timeout" wait_for 30 watchdog_logged

# Stop with the thread executor while the startup study runs.
kills() { journal | grep -Ec 'SIGKILL|Killing process'; }
k0=$(kills)
in_ct systemctl stop tradingd
clean_stop() { [ "$(prop Result)" = success ] && [ "$(prop ExecMainStatus)" = 0 ] && [ "$(prop ActiveState)" = inactive ]; }
check "stop (thread executor): Result=success, status 0" clean_stop
check "stop (thread executor): nothing SIGKILLed" test "$(kills)" = "$k0"

# The process executor: workers busy with the startup study, then stop.
sed -i -E "s/^(  kind: )thread /\1process/" "$CONF"
in_ct systemctl start tradingd
progressing() { set -- $(startup_run); [ "$1" = running ] && [ "$2" -ge 3 ]; }
check "process executor: the startup study resumes and makes progress" wait_for 180 progressing
before=$(startup_run); echo "  startup run before stop: $before"
echo "  processes in the unit: $(in_ct systemctl show -p TasksCurrent --value tradingd) tasks"
k0=$(kills)
t0=$SECONDS
in_ct systemctl stop tradingd
echo "  stop took $((SECONDS - t0)) s"
check "stop (process executor): Result=success, status 0" clean_stop
no_kills() { [ "$(kills)" = "$k0" ] && ! journal | grep -q 'left-over process'; }
check "stop (process executor): nothing SIGKILLed, no process left" no_kills

# The interrupted run resumes after a restart and makes progress. The study may also have finished
# inside the stop's graceful wait (the engine got fast enough for that): then it must say completed,
# not be lost or left interrupted. (The start above already resumed a run the thread executor's stop
# had interrupted.)
in_ct systemctl start tradingd
resumed() {
  journal | grep -q 'resuming run' && set -- $(startup_run) && { [ "$1" = completed ] || [ "$2" -gt "${before#* }" ]; }
}
check "an interrupted run resumes after restart and makes progress (or has completed)" wait_for 180 resumed
in_ct systemctl stop tradingd
journal >"$D/systemd-journal.log" 2>&1
sed -i -E "s/^(  kind: )process/\1thread /" "$CONF"
report
