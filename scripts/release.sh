#!/usr/bin/env bash
# Builds the release artifacts: static per-docker-roles binaries for
# linux/amd64 and linux/arm64 stamped with version, commit and date, one
# tarball per architecture (binary, systemd units and env samples, sysusers
# file, LICENSE, README.md, install docs) and SHA256SUMS over the tarballs.
#
# usage: scripts/release.sh [OUTDIR]          (default: dist)
#   VERSION  version string (default: git describe --tags --always --dirty)
#   COMMIT   commit id     (default: git rev-parse --short HEAD)
#   DATE     build date    (default: the commit's date, so a rebuild of the
#                           same commit yields identical tarballs)
#   ARCHES   architectures (default: "amd64 arm64")
#
# Each binary is run once after the build (natively, or under
# qemu-aarch64-static for arm64 when available) and must print the stamped
# version; a release whose binaries cannot start is not a release.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

out=${1:-dist}
case $out in /*) ;; *) out="$root/$out" ;; esac
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
commit=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
date=${DATE:-$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)}
arches=${ARCHES:-amd64 arm64}
name=per-docker-roles
fileversion=${version#v}

ldflags="-s -w -X main.version=$version -X main.commit=$commit -X main.date=$date"
files=(LICENSE README.md)
units=(scripts/systemd/per-docker-roles.service scripts/systemd/per-docker-roles-pin-dir.service
       scripts/systemd/aws-signing-helper.service
       scripts/systemd/per-docker-roles.env scripts/systemd/aws-signing-helper.env
       scripts/systemd/per-docker-roles.sysusers.conf)
docs=()
for d in docs/install.md docs/systemd.md docs/upgrading.md docs/security.md docs/configuration.md docs/troubleshooting.md; do
  [ -f "$d" ] && docs+=("$d")
done

# runner prints the command prefix that executes a linux/$1 binary here.
runner() {
  local host
  host=$(go env GOHOSTARCH)
  if [ "$1" = "$host" ]; then
    echo ""
  elif [ "$1" = arm64 ] && command -v qemu-aarch64-static >/dev/null; then
    echo qemu-aarch64-static
  elif [ "$1" = amd64 ] && command -v qemu-x86_64-static >/dev/null; then
    echo qemu-x86_64-static
  else
    echo none
  fi
}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$out"
tarballs=()
for arch in $arches; do
  dir="${name}_${fileversion}_linux_${arch}"
  mkdir -p "$stage/$dir/systemd" "$stage/$dir/docs"
  echo "release: building linux/$arch $version ($commit, $date)" >&2
  CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -ldflags "$ldflags" \
    -o "$stage/$dir/$name" ./cmd/per-docker-roles

  # Static means no cgo: go version -m records the build settings.
  if ! go version -m "$stage/$dir/$name" | grep -q 'CGO_ENABLED=0'; then
    echo "release: $arch binary was not built with CGO_ENABLED=0" >&2
    exit 1
  fi
  run=$(runner "$arch")
  if [ "$run" = none ]; then
    echo "release: cannot run linux/$arch binaries here (install qemu-user-static); refusing to ship an untested binary" >&2
    exit 1
  fi
  got=$($run "$stage/$dir/$name" --version)
  case $got in
    *"$version"*"$commit"*) echo "release: linux/$arch runs: $got" >&2 ;;
    *) echo "release: linux/$arch --version printed '$got', want version $version and commit $commit" >&2; exit 1 ;;
  esac

  cp "${files[@]}" "$stage/$dir/"
  cp "${units[@]}" "$stage/$dir/systemd/"
  [ ${#docs[@]} -gt 0 ] && cp "${docs[@]}" "$stage/$dir/docs/"
  chmod 0755 "$stage/$dir/$name"
  find "$stage/$dir" -type f ! -name "$name" -exec chmod 0644 {} +
  find "$stage/$dir" -type d -exec chmod 0755 {} +

  # Reproducible archive: fixed order, owner and mtime; gzip without name/time.
  tgz="$dir.tar.gz"
  tar -C "$stage" --sort=name --owner=0 --group=0 --numeric-owner \
      --mtime="@$epoch" --format=gnu -cf - "$dir" | gzip -n -9 > "$out/$tgz.tmp"
  mv -f "$out/$tgz.tmp" "$out/$tgz"
  tarballs+=("$tgz")
done

(cd "$out" && sha256sum "${tarballs[@]}" > SHA256SUMS.tmp && mv -f SHA256SUMS.tmp SHA256SUMS)
echo "release: wrote $out:" >&2
(cd "$out" && cat SHA256SUMS)
