#!/usr/bin/env bash
# Proves the linux/arm64 build works without arm64 hardware: the static
# daemon binary runs under qemu-aarch64-static and prints its stamped
# version, and the unit tests of ./internal/... pass when cross-compiled for
# arm64 and run under qemu.
#
# usage: scripts/test-arm64.sh [PACKAGES...]
#   default: ./internal/... except internal/testenv, whose own tests build
#   and run host tools (the real aws_signing_helper, with cgo) rather than
#   test our code on arm64.
#
# The tests run as the unprivileged user nobody with PDR_REQUIRE_PRIVILEGED
# unset, so tests that need root (real eBPF, dockerd, network namespaces)
# skip through testenv.RequirePrivileged: qemu-user cannot emulate bpf(2)
# or netlink for a foreign architecture, and those tests run natively
# elsewhere in `make test`. -short lets packages skip slow cases.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
qemu=$(command -v qemu-aarch64-static) || { echo "test-arm64: qemu-aarch64-static missing (apt-get install qemu-user-static)" >&2; exit 1; }
setpriv=$(command -v setpriv) || { echo "test-arm64: setpriv missing (util-linux)" >&2; exit 1; }

tmp=$(mktemp -d)
chmod 0755 "$tmp"
trap 'rm -rf "$tmp"' EXIT

# 1. The daemon binary itself.
want="arm64-test-$(date +%s)"
CGO_ENABLED=0 GOOS=linux GOARCH=arm64 go build -trimpath \
  -ldflags "-s -w -X main.version=$want -X main.commit=qemu -X main.date=now" \
  -o "$tmp/per-docker-roles" ./cmd/per-docker-roles
machine=$(od -An -tx1 -j18 -N2 "$tmp/per-docker-roles" | tr -d ' ')
[ "$machine" = "b700" ] || { echo "test-arm64: built binary is not aarch64 (e_machine $machine)" >&2; exit 1; }
got=$("$qemu" "$tmp/per-docker-roles" --version)
case $got in
  *"$want"*) echo "test-arm64: daemon runs under qemu: $got" ;;
  *) echo "test-arm64: --version printed '$got', want '$want'" >&2; exit 1 ;;
esac

# 2. The unit tests. go test builds the test binaries into a root-only
# directory; the wrapper copies each one where nobody can read it, then runs
# it unprivileged under qemu (no capabilities, no supplementary groups).
cat > "$tmp/exec" <<WRAP
#!/bin/sh
set -e
bin=\$(mktemp -p "$tmp" -d)
chmod 0755 "\$bin"
cp "\$1" "\$bin/test"
chmod 0755 "\$bin/test"
shift
exec "$setpriv" --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all --bounding-set=-all \\
  env -u GOOS -u GOARCH -u CGO_ENABLED HOME="$tmp" TMPDIR="$tmp" "$qemu" "\$bin/test" "\$@"
WRAP
chmod 0755 "$tmp/exec"
chmod 1777 "$tmp"

if [ $# -eq 0 ]; then
  mapfile -t pkgs < <(go list ./internal/... | grep -vx 'github.com/per-docker-roles/per-docker-roles/internal/testenv')
  set -- "${pkgs[@]}"
fi
env -u PDR_REQUIRE_PRIVILEGED CGO_ENABLED=0 GOOS=linux GOARCH=arm64 \
  go test -short -count=1 -exec "$tmp/exec" "$@"
