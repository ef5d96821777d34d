#!/usr/bin/env bash
# make demo: install what is missing, start dockerd if needed, then run the
# demo (scripts/demo) against the freshly built daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
if [ "$(id -u)" != 0 ]; then
  echo "demo: run as root (it loads eBPF programs and talks to dockerd)" >&2
  exit 1
fi
need=()
command -v dockerd >/dev/null || need+=(docker.io)
dpkg -s python3-boto3 >/dev/null 2>&1 || need+=(python3-boto3)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! docker version >/dev/null 2>&1; then
  echo "==> starting dockerd (log: /var/log/pdr-demo-dockerd.log)"
  (dockerd >/var/log/pdr-demo-dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do docker version >/dev/null 2>&1 && break; sleep 1; done
  docker version >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/pdr-demo-dockerd.log" >&2; exit 1; }
fi
# A missed redirect must fail here, never reach a real metadata service.
ip route add blackhole 169.254.169.254/32 2>/dev/null || true
ip -6 route add blackhole fd00:ec2::254/128 2>/dev/null || true
[ -x bin/per-docker-roles ] || make build
exec go run ./scripts/demo --daemon bin/per-docker-roles "$@"  # --keep keeps logs, -v shows the harness log
