#!/usr/bin/env bash
# Boots a real systemd (PID 1 of a systemd-nspawn container whose root is a
# throw-away overlay of this machine's own file system) and runs the shipped
# units in it: per-docker-roles.service with the daemon built from this tree,
# per-docker-roles-pin-dir.service and aws-signing-helper.service with the real
# aws_signing_helper. Asserts readiness through sd_notify, the process's
# user, groups, capabilities, no_new_privs and seccomp, the private view of
# bpffs, fail-closed pins after stop, recovery after `bpf detach` and after
# SIGKILL, no restart loop on a configuration error, the helper's sandbox,
# and the exposure scores of the running units.
#
# usage: scripts/systemd/test-units.sh     (root; needs systemd-container)
#
# Isolation: the container has its own network namespace (loopback only:
# nothing it starts can reach any network), a fresh bpffs instance at
# /sys/fs/bpf, and its own cgroup namespace rooted in a cgroup this script
# creates, so the daemon's "cgroup2 root" attach point is that cgroup and
# never the machine's (checked inside before the daemon starts). It reads
# the host's Docker API through the bound socket (list, inspect, events) and
# changes nothing there. Every mount and the cgroup are removed on exit.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
[ "$(id -u)" = 0 ] || { echo "test-units: needs root" >&2; exit 1; }
command -v systemd-nspawn >/dev/null || { echo "test-units: systemd-nspawn missing (apt-get install systemd-container)" >&2; exit 1; }
for tool in capsh openssl setpriv nsenter findmnt go; do
  command -v "$tool" >/dev/null || { echo "test-units: $tool missing (Debian: libcap2-bin, openssl, util-linux, golang)" >&2; exit 1; }
done
[ -S /run/docker.sock ] || { echo "test-units: no dockerd socket at /run/docker.sock (the daemon's index needs one)" >&2; exit 1; }
start=$(date +%s)

# Highest accepted exposure of the running units (x10), as in lint-packaging.sh.
declare -A max_exposure=([per-docker-roles.service]=19 [aws-signing-helper.service]=11 [per-docker-roles-pin-dir.service]=14)

base=$(mktemp -d /tmp/pdr-units.XXXXXX)
cg2=$(findmnt -n -o TARGET -t cgroup2 | head -1)
[ -n "$cg2" ] || { echo "test-units: no cgroup2 mount" >&2; exit 1; }
cg="$cg2/pdr-test-units-$$"
cleanup() {
  set +e
  for m in "$base/root" "$base/bpf" "$base"; do
    mountpoint -q "$m" && umount "$m"
  done
  rm -rf "$base"
  if [ -d "$cg" ]; then
    find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
  fi
}
trap cleanup EXIT

mount -t tmpfs -o size=2g,mode=0700 tmpfs "$base"
mkdir -p "$base/upper" "$base/work" "$base/root" "$base/bpf" "$base/out"
# The upper layer lives on the tmpfs: overlayfs refuses an upper directory
# inside its own lower file system.
mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$base/root"
# systemd mounts bpffs with mode 0700; so does this test, so the daemon's
# access to its pins is tested as on a real host.
mount -t bpf -o mode=0700 bpf "$base/bpf"
R="$base/root"

# Only what the test needs starts in the container.
for u in docker.socket docker.service containerd.service apparmor.service systemd-pstore.service \
         systemd-timesyncd.service timers.target postgresql.service e2scrub_reap.service; do
  ln -sf /dev/null "$R/etc/systemd/system/$u"
done

version="v0.0.0-units.$(date +%s)"
CGO_ENABLED=0 go build -trimpath -ldflags "-X main.version=$version" -o "$R/usr/local/bin/per-docker-roles" ./cmd/per-docker-roles
scripts/build-signing-helper.sh "$R/usr/local/bin/aws_signing_helper" >/dev/null
units=(per-docker-roles.service per-docker-roles-pin-dir.service aws-signing-helper.service)
for u in "${units[@]}"; do cp "scripts/systemd/$u" "$R/etc/systemd/system/"; done
mkdir -p "$R/etc/sysusers.d" "$R/etc/per-docker-roles" "$R/etc/aws-signing-helper"
cp scripts/systemd/per-docker-roles.sysusers.conf "$R/etc/sysusers.d/per-docker-roles.conf"
# STS and Roles Anywhere endpoints point at a closed loopback port; the
# container has no other network anyway.
cat > "$R/etc/per-docker-roles/per-docker-roles.env" <<'EOF'
PDR_UPSTREAM=http://127.0.0.1:9911
PDR_REGION=eu-west-1
PDR_STS_ENDPOINT=http://127.0.0.1:9
PDR_DOCKER_HOST=unix:///run/host-docker.sock
PDR_LOG_FORMAT=console
EOF
sed 's|^ASH_EXTRA_ARGS=.*|ASH_EXTRA_ARGS=--endpoint http://127.0.0.1:9|' scripts/systemd/aws-signing-helper.env > "$R/etc/aws-signing-helper/aws-signing-helper.env"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=pdr-test-units -days 2 \
  -keyout "$R/etc/aws-signing-helper/private-key.pem" -out "$R/etc/aws-signing-helper/certificate.pem" 2>/dev/null
want_caps=$(sed -n 's/^AmbientCapabilities=//p' scripts/systemd/per-docker-roles.service | tr ' ' '\n' | tr '[:upper:]' '[:lower:]' | sort | paste -sd, -)

cat > "$R/usr/local/sbin/pdr-test-units" <<EOF
#!/bin/bash
# Runs inside the container as a oneshot service; writes ok/FAIL lines.
exec 3>/out/results 1>/out/trace.log 2>&1
set -x
ok() { echo "ok \$*" >&3; }
bad() { echo "FAIL \$*" >&3; }
check() { local what=\$1; shift; if "\$@"; then ok "\$what"; else bad "\$what"; fi; }
refused() { local what=\$1; shift; if "\$@"; then bad "\$what"; else ok "\$what"; fi; }
show() { systemctl show -p "\$2" --value "\$1"; }

ino=\$(stat -c %i /sys/fs/cgroup/unified 2>/dev/null || stat -c %i /sys/fs/cgroup)
if [ "\$ino" = 1 ]; then bad "container cgroup root is the machine's cgroup root: refusing"; systemctl poweroff; exit 0; fi

systemd-sysusers
chown aws-signing-helper:aws-signing-helper /etc/aws-signing-helper/*.pem
chmod 0400 /etc/aws-signing-helper/*.pem
chgrp per-docker-roles /etc/per-docker-roles/per-docker-roles.env
chmod 0640 /etc/per-docker-roles/per-docker-roles.env
systemctl daemon-reload

systemctl start aws-signing-helper.service
sleep 1
check "aws-signing-helper active" [ "\$(show aws-signing-helper.service ActiveState)" = active ]
hp=\$(show aws-signing-helper.service MainPID)
check "helper runs as its own user" [ "\$(stat -c %U /proc/\$hp)" = aws-signing-helper ]
check "helper has no capabilities" grep -qx \$'CapEff:\t0000000000000000' /proc/\$hp/status
check "helper has no_new_privs" grep -qx \$'NoNewPrivs:\t1' /proc/\$hp/status
check "helper key readable by its user only" [ "\$(stat -c '%U %a' /etc/aws-signing-helper/private-key.pem)" = "aws-signing-helper 400" ]
refused "per-docker-roles cannot read the helper key" setpriv --reuid=per-docker-roles --regid=per-docker-roles --clear-groups cat /etc/aws-signing-helper/private-key.pem

systemctl start per-docker-roles.service
check "per-docker-roles start returns success (READY=1)" [ \$? = 0 ]
check "per-docker-roles active" [ "\$(show per-docker-roles.service ActiveState)" = active ]
check "sd_notify status line" [ "\$(show per-docker-roles.service StatusText | cut -d' ' -f1)" = serving ]
pid=\$(show per-docker-roles.service MainPID)
check "daemon runs as per-docker-roles" [ "\$(stat -c %U /proc/\$pid)" = per-docker-roles ]
check "daemon has group docker" grep -Eq "^Groups:.*\\b\$(getent group docker | cut -d: -f3)\\b" /proc/\$pid/status
eff=\$(awk '/^CapEff/{print \$2}' /proc/\$pid/status)
got=\$(capsh --decode=\$eff | cut -d= -f2 | tr ',' '\n' | sort | paste -sd, -)
check "daemon capabilities are exactly $want_caps (got \$got)" [ "\$got" = "$want_caps" ]
check "daemon has no_new_privs" grep -qx \$'NoNewPrivs:\t1' /proc/\$pid/status
check "daemon has a seccomp filter" grep -qx \$'Seccomp:\t2' /proc/\$pid/status
check "pins on the real bpffs, owned by the service user" [ "\$(stat -c %U /sys/fs/bpf/per-docker-roles/link_connect4)" = per-docker-roles ]
check "daemon sees its pins at /run/per-docker-roles/bpf" nsenter -t \$pid -m test -e /run/per-docker-roles/bpf/link_connect4
refused "daemon cannot list the rest of bpffs" nsenter -t \$pid -m setpriv --reuid=per-docker-roles --regid=per-docker-roles --clear-groups ls /sys/fs/bpf
check "redirect attached and redirecting" sh -c 'per-docker-roles bpf status | grep -q "^state: redirecting"'
check "daemon sees / read-only" sh -c "findmnt --task \$pid -n -o OPTIONS / | grep -q '^ro'"
check "daemon sees /etc read-only" sh -c "findmnt --task \$pid -n -o OPTIONS -T /etc | grep -q '^ro'"
for u in ${units[*]}; do
  s=\$(systemd-analyze security --no-pager \$u | sed -n 's/.*exposure level for .*: \([0-9.]*\).*/\1/p')
  echo "score \$u \$s" >&3
done

systemctl stop per-docker-roles.service
check "stop is clean" [ "\$(show per-docker-roles.service Result)" = success ]
check "after stop the pins fail closed" sh -c 'per-docker-roles bpf status | grep -q "^state: refusing"'

per-docker-roles bpf detach
systemctl start per-docker-roles.service
check "starts again after bpf detach removed the pin directory" [ "\$(show per-docker-roles.service ActiveState)" = active ]

kill -9 "\$(show per-docker-roles.service MainPID)"
for i in \$(seq 1 30); do [ "\$(show per-docker-roles.service NRestarts)" = 1 ] && [ "\$(show per-docker-roles.service ActiveState)" = active ] && break; sleep 0.5; done
check "restarted after SIGKILL" [ "\$(show per-docker-roles.service NRestarts)" = 1 ]
check "active again after SIGKILL" [ "\$(show per-docker-roles.service ActiveState)" = active ]

echo PDR_REDIRECT=bogus >> /etc/per-docker-roles/per-docker-roles.env
systemctl restart per-docker-roles.service
sleep 4
check "configuration error: exit status 2" [ "\$(show per-docker-roles.service ExecMainStatus)" = 2 ]
check "configuration error: failed, no restart loop" [ "\$(show per-docker-roles.service ActiveState)/\$(show per-docker-roles.service NRestarts)" = failed/0 ]

journalctl --no-pager -b -u per-docker-roles.service -u per-docker-roles-pin-dir.service -u aws-signing-helper.service
per-docker-roles bpf detach
echo done >&3
systemctl poweroff
EOF
chmod 0755 "$R/usr/local/sbin/pdr-test-units"
cat > "$R/etc/systemd/system/pdr-test-units.service" <<'EOF'
[Unit]
Description=per-docker-roles unit test
After=basic.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/pdr-test-units
EOF
cat > "$R/etc/systemd/system/pdr-test-units.target" <<'EOF'
[Unit]
Description=per-docker-roles unit test
Requires=basic.target pdr-test-units.service
After=basic.target
EOF

mkdir "$cg"
echo "test-units: booting systemd in a container ($(( $(date +%s) - start ))s)"
# --keep-unit and --register=no: this machine's PID 1 is not systemd, so
# nspawn must not ask it for a scope; the subshell first moves itself into
# the test's own cgroup, which becomes the container's cgroup root.
rc=0
( echo "$BASHPID" > "$cg/cgroup.procs" && exec timeout 150 systemd-nspawn -q -D "$R" --register=no --keep-unit \
    --private-network --capability=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN --system-call-filter=bpf \
    --bind="$base/out:/out" --bind=/run/docker.sock:/run/host-docker.sock --bind="$base/bpf:/sys/fs/bpf" \
    --console=pipe -b -- systemd.unit=pdr-test-units.target ) >"$base/boot.log" 2>&1 || rc=$?

results="$base/out/results"
if [ ! -f "$results" ] || ! grep -qx 'done' "$results"; then
  echo "test-units: the test did not finish (nspawn rc=$rc)" >&2
  tail -30 "$base/boot.log" >&2 || true
  [ -f "$base/out/trace.log" ] && tail -60 "$base/out/trace.log" >&2
  [ -f "$results" ] && cat "$results" >&2
  echo "test-units: 0 passed, 1 failed"
  exit 1
fi
while read -r kind unit score; do
  [ "$kind" = score ] || continue
  max=${max_exposure[$unit]}
  if [ -n "$score" ] && [ "${score/./}" -le "$max" ]; then
    echo "ok $unit running exposure $score (max $((max / 10)).$((max % 10)))" >> "$results"
  else
    echo "FAIL $unit running exposure '$score' above $((max / 10)).$((max % 10))" >> "$results"
  fi
done < <(grep '^score ' "$results")
grep -E '^(ok|FAIL) ' "$results" | sed 's/^/test-units: /'
passed=$(grep -c '^ok ' "$results" || true)
failed=$(grep -c '^FAIL ' "$results" || true)
if [ "$failed" != 0 ]; then
  grep -E 'per-docker-roles\[|aws_signing_helper\[|install\[' "$base/out/trace.log" | tail -20 >&2 || true
fi
echo "test-units: took $(( $(date +%s) - start ))s"
echo "test-units: $passed passed, $failed failed"
[ "$failed" = 0 ]
