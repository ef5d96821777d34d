#!/usr/bin/env bash
# Builds the real IAM Roles Anywhere credential helper (aws_signing_helper)
# from its Go module at the version pinned in tools/signinghelper/go.mod.
# It lives in its own module so its cgo/pkcs11 dependencies never enter ours.
#
# usage: scripts/build-signing-helper.sh [OUT]
#   OUT defaults to bin/aws_signing_helper. The build is cached under
#   ${PDR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/per-docker-roles}, keyed
#   by the pinned go.sum, the Go version and the target platform, so a second
#   call copies the cached binary instead of rebuilding (about 40 s cold).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mod="$root/tools/signinghelper"
out=${1:-$root/bin/aws_signing_helper}
case $out in /*) ;; *) out="$PWD/$out" ;; esac

goversion=$(go env GOVERSION)
goos=$(go env GOOS)
goarch=$(go env GOARCH)
sum=$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-16)
cache=${PDR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/per-docker-roles}
cached="$cache/signing-helper/$sum-$goversion-$goos-$goarch/rolesanywhere-credential-helper"

if [ ! -x "$cached" ]; then
  mkdir -p "$(dirname "$cached")"
  tmp=$(mktemp "$cached.XXXXXX")
  trap 'rm -f "$tmp"' EXIT
  echo "build-signing-helper: building (cgo) into $cached" >&2
  # pkcs11 needs cgo; miekg/pkcs11 ships the PKCS#11 headers, so only gcc
  # and libc headers are needed, no libp11-kit-dev.
  (cd "$mod" && CGO_ENABLED=1 GOFLAGS=-mod=readonly go build -trimpath -o "$tmp" github.com/aws/rolesanywhere-credential-helper)
  mv -f "$tmp" "$cached"
  trap - EXIT
fi
mkdir -p "$(dirname "$out")"
cp -f "$cached" "$out.tmp.$$" && mv -f "$out.tmp.$$" "$out"
echo "$out"
