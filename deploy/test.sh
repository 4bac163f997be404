#!/bin/bash
# `make deploy-test`: set up what is needed (idempotent), with a dockerd of our own that is
# stopped at the end; run the Docker and systemd suites; print "N passed, N failed" and exit
# non-zero on any failure. Root only (debootstrap, dockerd, nspawn): otherwise a skip, or a
# failure with CI=true. Cache between runs: $TRADINGD_DEPLOY_DIR (/var/tmp/tradingd-deploy).
# SUITES="docker systemd" (the default) picks the suites.
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
if ! "$HERE/setup.sh"; then
  echo "FAIL deploy-test setup (logs in $D)"
  echo "0 passed, 1 failed"
  exit 1
fi
echo "setup took $((SECONDS - t0)) s"
total_pass=0 total_fail=0
for suite in ${SUITES:-docker systemd}; do
  rm -f "$D/$suite.tally"
  s0=$SECONDS
  "$HERE/$suite-suite.sh"
  if [ -s "$D/$suite.tally" ]; then read -r p f <"$D/$suite.tally"; else p=0 f=1; echo "FAIL $suite suite did not finish"; fi
  echo "$suite suite took $((SECONDS - s0)) s"
  total_pass=$((total_pass + p)) total_fail=$((total_fail + f))
done
stop_dockerd
echo "deploy-test took $((SECONDS - t0)) s"
echo "$total_pass passed, $total_fail failed"
[ "$total_fail" = 0 ]
