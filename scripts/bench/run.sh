#!/usr/bin/env bash
# make bench: every benchmark of the project, each printing a ratio against
# a baseline measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=/usr/local/go/bin:$PATH
[ -x bin/per-docker-roles ] || make build
echo "== warm credential flow: per-docker-roles vs aws_signing_helper serve"
go run ./scripts/bench/warmflow --daemon bin/per-docker-roles "$@"
echo "== connect() + first response: through the eBPF redirect vs direct"
./scripts/bench/redirect.sh 3000
echo "== hot paths (go test -bench)"
go test -run '^$' -bench 'Warm|Vend|Credential' -benchmem -count 1 ./internal/creds/ ./internal/imds/ 2>&1 | grep -E '^(Benchmark|ok)'
