#!/usr/bin/env bash
# Exercises the Ansible role for real: builds a release tarball of this tree
# (scripts/release.sh) and the real aws_signing_helper, serves both from a
# loopback-only HTTP server, and runs the role against localhost into a
# scratch root (pdr_root) with services and users left alone. Asserts every
# installed file (content, owner, mode), that the installed binary runs, that
# a second run reports changed=0 and downloads nothing, and that a download
# whose checksum does not match the pinned one fails without replacing the
# installed binary.
#
# usage: scripts/test-ansible.sh        (needs ansible-playbook, python3, go)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
for tool in ansible-playbook python3 go; do
  command -v "$tool" >/dev/null || { echo "test-ansible: $tool missing" >&2; exit 1; }
done
start=$(date +%s)

tmp=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
www="$tmp/www"
scratch="$tmp/root"
mkdir -p "$www" "$scratch"

fail() { echo "test-ansible: FAIL: $*" >&2; exit 1; }
pass_count=0
ok() { pass_count=$((pass_count + 1)); echo "test-ansible: ok: $*"; }

# 1. Artifacts as a user would download them.
arch=$(go env GOARCH)
version="0.0.0-ansible.$(date +%s)"
VERSION="v$version" ARCHES="$arch" scripts/release.sh "$www" >/dev/null
tarball="per-docker-roles_${version}_linux_${arch}.tar.gz"
[ -f "$www/$tarball" ] || fail "release.sh did not produce $tarball"
pdr_sha=$(awk -v f="$tarball" '$2 == f {print $1}' "$www/SHA256SUMS")
scripts/build-signing-helper.sh "$www/aws_signing_helper" >/dev/null
ash_sha=$(sha256sum "$www/aws_signing_helper" | cut -d' ' -f1)
printf 'not the helper\n' > "$www/tampered_helper"

# 2. A loopback-only HTTP server; its access log counts the downloads.
python3 -u -m http.server --bind 127.0.0.1 --directory "$www" 0 >"$tmp/http.log" 2>&1 &
server_pid=$!
port=""
for _ in $(seq 1 50); do
  port=$(sed -n 's/.*port \([0-9][0-9]*\).*/\1/p' "$tmp/http.log" | head -1)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || fail "http.server did not start: $(cat "$tmp/http.log")"
base="http://127.0.0.1:$port"

cert="-----BEGIN CERTIFICATE-----
TUlJQnRlc3RjZXJ0aWZpY2F0ZQ==
-----END CERTIFICATE-----"
key="-----BEGIN PRIVATE KEY-----
TUlJRXRlc3RrZXktJHJhbmRvbQ==$RANDOM
-----END PRIVATE KEY-----"

# Services and users are never touched in scratch-root mode: the files are
# owned by users that exist everywhere (daemon, nobody).
write_vars() { # $1 = file, $2 = helper url, $3 = helper sha256
  python3 - "$@" <<PY
import json, sys
out, ash_url, ash_sha = sys.argv[1:4]
json.dump({
    "pdr_root": "$scratch",
    "pdr_manage_services": False,
    "pdr_manage_users": False,
    "pdr_user": "daemon", "pdr_group": "daemon",
    "ash_user": "nobody", "ash_group": "nogroup",
    "pdr_arch": "$arch",
    "pdr_version": "$version",
    "pdr_release_base_url": "$base",
    "pdr_release_sha256": {"$arch": "$pdr_sha"},
    "ash_url": ash_url,
    "ash_version": "1.4.0" if ash_url.endswith("/aws_signing_helper") else "1.4.1-tampered",
    "ash_sha256": {"$arch": ash_sha},
    "pdr_region": "eu-west-1",
    "pdr_allowed_roles": ["arn:aws:iam::123456789012:role/app-*"],
    "pdr_config_extra": {"log_format": "console"},
    "ash_trust_anchor_arn": "arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/ta",
    "ash_profile_arn": "arn:aws:rolesanywhere:eu-west-1:123456789012:profile/p",
    "ash_role_arn": "arn:aws:iam::123456789012:role/docker-host-base",
    "ash_certificate": """$cert""",
    "ash_private_key": """$key""",
}, open(out, "w"), indent=1)
PY
}
write_vars "$tmp/vars.json" "$base/aws_signing_helper" "$ash_sha"

play() { # $1 = vars file, $2 = log file
  echo "test-ansible: ansible-playbook $(basename "$1") ($(( $(date +%s) - start ))s)"
  ANSIBLE_CONFIG="$root/scripts/ansible/ansible.cfg" ANSIBLE_NOCOLOR=1 ANSIBLE_PIPELINING=1 ANSIBLE_LOCAL_TEMP="$tmp/ansible-tmp" \
    ansible-playbook -i localhost, -c local -e "@$1" "$root/scripts/ansible/tests/scratch-root.yml" >"$2" 2>&1
}
recap() { # prints "changed failed" from a play log
  sed -n 's/^localhost *: ok=[0-9]* *changed=\([0-9]*\) .*failed=\([0-9]*\).*/\1 \2/p' "$1" | tail -1
}
downloads() { grep -c '"GET /' "$tmp/http.log" || true; }

# 3. First run installs everything.
play "$tmp/vars.json" "$tmp/run1.log" || { cat "$tmp/run1.log"; fail "first run failed"; }
read -r changed1 failed1 < <(recap "$tmp/run1.log")
if [ "$failed1" != 0 ] || [ "$changed1" -eq 0 ]; then cat "$tmp/run1.log"; fail "first run: changed=$changed1 failed=$failed1"; fi
ok "first run changed=$changed1"
dl1=$(downloads)
[ "$dl1" = 2 ] || fail "first run made $dl1 downloads, want 2 (tarball, helper)"

check_file() { # path owner group mode
  local f="$scratch$1" got
  [ -f "$f" ] || fail "$1 not installed"
  got=$(stat -c '%U %G %a' "$f")
  [ "$got" = "$2 $3 $4" ] || fail "$1: owner/group/mode $got, want $2 $3 $4"
  ok "$1 ($got)"
}
check_file /usr/local/bin/per-docker-roles root root 755
check_file /usr/local/bin/aws_signing_helper root root 755
check_file /etc/systemd/system/per-docker-roles.service root root 644
check_file /etc/systemd/system/aws-signing-helper.service root root 644
check_file /etc/systemd/system/per-docker-roles-pin-dir.service root root 644
check_file /etc/per-docker-roles/per-docker-roles.env root daemon 640
check_file /etc/aws-signing-helper/aws-signing-helper.env root nogroup 640
check_file /etc/aws-signing-helper/certificate.pem nobody nogroup 400
check_file /etc/aws-signing-helper/private-key.pem nobody nogroup 400
[ "$(stat -c '%a' "$scratch/etc/aws-signing-helper")" = 750 ] || fail "/etc/aws-signing-helper is not 0750"

got=$("$scratch/usr/local/bin/per-docker-roles" --version)
case $got in *"v$version"*) ok "installed daemon runs: $got" ;; *) fail "installed daemon --version: $got" ;; esac
[ "$(sha256sum < "$scratch/usr/local/bin/aws_signing_helper" | cut -d' ' -f1)" = "$ash_sha" ] || fail "installed helper differs from the served one"
"$scratch/usr/local/bin/aws_signing_helper" version >/dev/null || fail "installed aws_signing_helper does not run"
ok "installed aws_signing_helper runs"
for u in per-docker-roles.service per-docker-roles-pin-dir.service aws-signing-helper.service; do
  cmp -s "scripts/systemd/$u" "$scratch/etc/systemd/system/$u" || fail "$u differs from scripts/systemd/$u"
done
ok "units match scripts/systemd"
printf '%s\n' "$key" | cmp -s - "$scratch/etc/aws-signing-helper/private-key.pem" || fail "private key content differs"
env_file="$scratch/etc/per-docker-roles/per-docker-roles.env"
for want in PDR_UPSTREAM=http://127.0.0.1:9911 PDR_REGION=eu-west-1 \
            'PDR_ALLOWED_ROLES=arn:aws:iam::123456789012:role/app-*' PDR_LOG_FORMAT=console \
            PDR_REDIRECT=ebpf; do
  grep -qxF "$want" "$env_file" || fail "per-docker-roles.env lacks '$want': $(cat "$env_file")"
done
grep -qxF 'ASH_PORT=9911' "$scratch/etc/aws-signing-helper/aws-signing-helper.env" || fail "aws-signing-helper.env lacks ASH_PORT"
if grep -q 'TUlJRXRlc3RrZXkt' "$tmp/run1.log"; then fail "the private key appears in the play output"; fi
ok "environment files, key content, key absent from the log"

# 4. Second run: nothing changes and nothing is downloaded again.
play "$tmp/vars.json" "$tmp/run2.log" || { cat "$tmp/run2.log"; fail "second run failed"; }
read -r changed2 failed2 < <(recap "$tmp/run2.log")
if [ "$changed2" != 0 ] || [ "$failed2" != 0 ]; then
  grep -B2 '^changed' "$tmp/run2.log" >&2 || true
  fail "second run: changed=$changed2 failed=$failed2, want changed=0"
fi
[ "$(downloads)" = "$dl1" ] || fail "second run downloaded again ($(downloads) requests)"
ok "second run changed=0, no downloads"

# 5. An upgrade whose download does not match its pinned checksum fails and
# leaves the installed binary in place (get_url downloads because the pinned
# sum differs from the installed file's, then rejects what it got).
pinned_new=$(printf 'the helper release the operator pinned\n' | sha256sum | cut -d' ' -f1)
write_vars "$tmp/tampered.json" "$base/tampered_helper" "$pinned_new"
if play "$tmp/tampered.json" "$tmp/run3.log"; then fail "run with a tampered download succeeded"; fi
grep -q 'did not match' "$tmp/run3.log" || { cat "$tmp/run3.log"; fail "tampered run failed for another reason"; }
[ "$(sha256sum < "$scratch/usr/local/bin/aws_signing_helper" | cut -d' ' -f1)" = "$ash_sha" ] || fail "tampered download replaced the installed helper"
for f in "$scratch"/var/cache/per-docker-roles/*tampered*; do
  if [ -e "$f" ]; then fail "the rejected download was kept in the cache: $f"; fi
done
ok "tampered download rejected by checksum, installed helper unchanged"

echo "test-ansible: took $(( $(date +%s) - start ))s"
echo "test-ansible: $pass_count passed, 0 failed"
