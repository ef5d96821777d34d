package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/per-docker-roles/per-docker-roles/internal/cgroup"
	"github.com/per-docker-roles/per-docker-roles/internal/redirect"
	"github.com/per-docker-roles/per-docker-roles/internal/testenv"
)

// bpf status shows what a daemon left pinned; bpf detach removes it.
func TestBPFStatusAndDetach(t *testing.T) {
	testenv.RequirePrivileged(t)
	mnt, err := cgroup.Mount()
	if err != nil {
		testenv.Unsupported(t, "cgroup2", err)
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	name := "pdr-cmdtest-" + hex.EncodeToString(suffix)
	cg := filepath.Join(mnt, name) // a cgroup of our own: never the root
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	pins := filepath.Join("/sys/fs/bpf", name)
	t.Cleanup(func() {
		_ = redirect.Detach(pins)
		_ = os.Remove(cg)
	})
	r, err := redirect.New(redirect.Config{
		CgroupPath:  cg,
		PinDir:      pins,
		HostTarget:  netip.MustParseAddrPort("127.0.0.1:1"),
		NoInterface: true,
		GuardAddrs:  []netip.AddrPort{},
	}, nil, nil)
	if err != nil {
		testenv.Unsupported(t, "eBPF redirect", err)
	}
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := realMain(args, &out, &errb)
		return code, out.String(), errb.String()
	}
	code, out, errOut := run("bpf", "status", "--bpf-pin-dir", pins)
	if code != 0 || !strings.Contains(out, "state: redirecting") || !strings.Contains(out, "attached: link") || !strings.Contains(out, "counters: redirected=0") {
		t.Fatalf("status while running: exit %d\n%s%s", code, out, errOut)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := run("bpf", "status", "--bpf-pin-dir", pins); code != 0 || !strings.Contains(out, "fail closed") {
		t.Fatalf("status after the daemon stopped: exit %d\n%s", code, out)
	}
	if code, out, errOut := run("bpf", "detach", "--bpf-pin-dir", pins); code != 0 || !strings.Contains(out, "detached") {
		t.Fatalf("detach: exit %d %s%s", code, out, errOut)
	}
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Errorf("pin dir %s still there after detach: %v", pins, err)
	}
	if code, _, _ := run("bpf", "status", "--bpf-pin-dir", pins); code != 1 {
		t.Errorf("status after detach: exit %d, want 1", code)
	}
}
