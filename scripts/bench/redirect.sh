#!/usr/bin/env bash
# Compares connect()+first byte through the eBPF redirect with a direct
# connection to the same listener, in one run, and prints the ratio.
# Needs root (it attaches to a cgroup it creates, never the root).
# Usage: scripts/bench/redirect.sh [connections per path, default 5000]
set -euo pipefail
cd "$(dirname "$0")/../.."
n="${1:-5000}"
out="$(PDR_REQUIRE_PRIVILEGED=1 go test -run '^$' -bench '^BenchmarkRedirectConnect$' \
	-benchtime "${n}x" -count 1 ./internal/redirect/)"
echo "$out" | grep -E '^Benchmark' || { echo "$out"; exit 1; }
echo "$out" | awk '/^BenchmarkRedirectConnect/ {
	for (i = 1; i <= NF; i++) {
		if ($(i+1) == "direct-ns/conn") d = $i
		if ($(i+1) == "redirect-ns/conn") r = $i
		if ($(i+1) == "ratio") q = $i
	}
	printf "direct %.1f us/conn, redirected %.1f us/conn, ratio redirected/direct = %s\n", d/1000, r/1000, q
}'
