#!/bin/bash
# `make deploy-test`: set up what is needed (idempotent), with a dockerd of our own that is
# stopped at the end; run the Docker and systemd suites; print "N passed, N failed" and exit
# non-zero on any failure. Root only (debootstrap, dockerd, nspawn): otherwise a skip, or a
# failure with CI=true. Cache between runs: $TRADINGD_DEPLOY_DIR (/var/tmp/tradingd-deploy).
# SUITES="docker systemd" (the default) picks the suites. Once the packages are installed, the
# two branches run side by side: base image then Docker suite (build, containers), and systemd
# rootfs then systemd suite; neither waits for the other's setup.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
if [ "$(id -u)" != 0 ]; then
  echo "deploy-test needs root (debootstrap, dockerd, systemd-nspawn)"
  if [ "${CI:-}" = true ]; then exit 1; fi
  exit 0
fi
mkdir -p "$D"
t0=$SECONDS
trap stop_dockerd EXIT
if ! "$HERE/setup.sh" packages; then
  echo "FAIL deploy-test setup: packages"
  echo "0 passed, 1 failed"
  exit 1
fi

run_suite() {  # run_suite NAME: its setup step, then the suite; output to $D/NAME-suite.out
  local s0=$SECONDS step=base
  rm -f "$D/$1.tally"
  [ "$1" = systemd ] && step=rootfs
  "$HERE/setup.sh" "$step" || { echo "FAIL $1 setup: $step (logs in $D)"; return; }
  echo "$1 setup ($step) took $((SECONDS - s0)) s"
  "$HERE/$1-suite.sh"
  echo "$1 setup and suite took $((SECONDS - s0)) s"
}
pids=()
for suite in ${SUITES:-docker systemd}; do
  run_suite "$suite" >"$D/$suite-suite.out" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done

total_pass=0 total_fail=0
for suite in ${SUITES:-docker systemd}; do
  grep -v '^WARNING: Location' "$D/$suite-suite.out"
  if [ -s "$D/$suite.tally" ]; then read -r p f <"$D/$suite.tally"; else p=0 f=1; echo "FAIL $suite suite did not finish"; fi
  total_pass=$((total_pass + p)) total_fail=$((total_fail + f))
done
stop_dockerd
echo "deploy-test took $((SECONDS - t0)) s"
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" = 0 ]
