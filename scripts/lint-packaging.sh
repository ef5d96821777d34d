#!/usr/bin/env bash
# Lints everything that ships besides Go code (called by `make lint`):
#   - GitHub workflows: actionlint (with shellcheck on their run: blocks)
#   - shell scripts of the release and packaging path: shellcheck
#   - systemd units: systemd-analyze verify, and `systemd-analyze security
#     --offline` must not rise above the exposure recorded in docs/systemd.md
#   - sysusers.d file: systemd-sysusers into a scratch root
#   - Ansible: ansible-playbook --syntax-check and ansible-lint
# Needs: go, shellcheck, systemd (systemd-analyze, systemd-sysusers; PID 1
# need not be systemd), ansible, ansible-lint (Debian packages).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Highest accepted `systemd-analyze security` exposure, x10 (the --threshold
# scale). Lower them when a unit gets tighter; never raise them silently.
declare -A max_exposure=([per-docker-roles.service]=19 [aws-signing-helper.service]=11 [per-docker-roles-pin-dir.service]=14)

missing=()
for tool in go shellcheck systemd-analyze systemd-sysusers ansible-playbook ansible-lint; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "lint-packaging: missing ${missing[*]} (apt-get install shellcheck systemd ansible ansible-lint)" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
step() { echo "lint-packaging: $*"; }
bad() { echo "lint-packaging: FAIL: $*" >&2; failed=1; }

step "actionlint"
go run github.com/rhysd/actionlint/cmd/actionlint@v1.7.12 -no-color || bad "actionlint"

step "shellcheck"
shellcheck scripts/release.sh scripts/test-arm64.sh scripts/test-ansible.sh scripts/lint-packaging.sh scripts/systemd/test-units.sh || bad "shellcheck"

# systemd-analyze verify checks that every ExecStart binary exists, so the
# units are verified inside a scratch root holding the stock unit files
# (for sysinit.target and friends) and placeholder binaries.
step "systemd-analyze verify"
units=(per-docker-roles.service per-docker-roles-pin-dir.service aws-signing-helper.service)
sroot="$tmp/root"
mkdir -p "$sroot/etc/systemd/system" "$sroot/usr/lib/systemd" "$sroot/usr/local/bin" "$sroot/usr/bin"
cp -a /usr/lib/systemd/system "$sroot/usr/lib/systemd/"
for u in "${units[@]}"; do cp "scripts/systemd/$u" "$sroot/etc/systemd/system/"; done
while read -r b; do
  mkdir -p "$sroot$(dirname "$b")"
  printf '#!/bin/sh\n' > "$sroot$b"
  chmod 0755 "$sroot$b"
done < <(sed -n 's/^Exec[A-Za-z]*=[-+!@:]*\(\/[^ ]*\).*/\1/p' "${units[@]/#/scripts/systemd/}" | sort -u)
# verify exits 0 on unknown keys and bad values, so any output is a failure.
if ! out=$(systemd-analyze verify --root="$sroot" --man=no "${units[@]}" 2>&1) || [ -n "$out" ]; then
  printf '%s\n' "$out" >&2
  bad "systemd-analyze verify"
fi

step "systemd-analyze security --offline"
for u in "${units[@]}"; do
  max=${max_exposure[$u]}
  if ! out=$(systemd-analyze security --offline=true --root="$sroot" --threshold="$max" "$u" 2>&1); then
    printf '%s\n' "$out" | grep -E '✗|Overall' >&2 || printf '%s\n' "$out" >&2
    bad "$u exposure above $((max / 10)).$((max % 10))"
  else
    step "  $(printf '%s\n' "$out" | grep Overall)"
  fi
done

step "systemd-sysusers"
mkdir -p "$tmp/sysusers/etc" "$tmp/sysusers/usr/lib/sysusers.d"
cp scripts/systemd/per-docker-roles.sysusers.conf "$tmp/sysusers/usr/lib/sysusers.d/per-docker-roles.conf"
out=$(systemd-sysusers --root="$tmp/sysusers" 2>&1) || bad "systemd-sysusers"
if printf '%s\n' "$out" | grep -v '^Creating ' | grep -q .; then printf '%s\n' "$out" >&2; bad "systemd-sysusers warnings"; fi
for u in per-docker-roles aws-signing-helper; do
  grep -q "^$u:" "$tmp/sysusers/etc/passwd" || bad "sysusers did not create $u"
done

step "ansible-playbook --syntax-check"
export ANSIBLE_CONFIG="$root/scripts/ansible/ansible.cfg" ANSIBLE_NOCOLOR=1 ANSIBLE_LOCAL_TEMP="$tmp/ansible"
(cd scripts/ansible && ansible-playbook --syntax-check -i inventory.ini site.yml tests/scratch-root.yml) || bad "ansible syntax"

step "ansible-lint"
(cd scripts/ansible && ansible-lint --nocolor -q site.yml tests/scratch-root.yml roles/per_docker_roles) || bad "ansible-lint"

if [ "$failed" != 0 ]; then
  echo "lint-packaging: failed" >&2
  exit 1
fi
step "all clean"
