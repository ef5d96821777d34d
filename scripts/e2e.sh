#!/usr/bin/env bash
# make e2e: the end-to-end scenarios against the daemon make build produced.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
ip route add blackhole 169.254.169.254/32 2>/dev/null || true
ip -6 route add blackhole fd00:ec2::254/128 2>/dev/null || true
PDR_DAEMON="$PWD/bin/per-docker-roles" exec go test -tags e2e -count=1 -timeout 20m -v ./e2e/ "$@"
