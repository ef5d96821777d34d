package doctor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/per-docker-roles/per-docker-roles/internal/cgroup"
	"github.com/per-docker-roles/per-docker-roles/internal/redirect"
	"github.com/per-docker-roles/per-docker-roles/internal/testenv"
)

// TestThisHost runs the whole doctor with the real kernel probes, the real
// dockerd and a real redirect pinned on a cgroup this test creates; only
// the upstream and STS are loopback fakes.
func TestThisHost(t *testing.T) {
	testenv.RequirePrivileged(t)
	w := newWorld(t) // fakes for upstream, STS and /readyz
	w.deps.Docker = nil
	w.deps.host = nil
	w.deps.readStatus = nil
	w.deps.Timeout = DefaultTimeout

	mnt, err := cgroup.Mount()
	if err != nil {
		testenv.Unsupported(t, "cgroup2", err)
	}
	suffix := randomHex(t)
	cg := filepath.Join(mnt, "pdr-doctor-test-"+suffix)
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(cg); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("remove cgroup %s: %v", cg, err)
		}
	})
	pins := "/sys/fs/bpf/pdr-doctor-test-" + suffix
	t.Cleanup(func() {
		if err := redirect.Detach(pins); err != nil {
			t.Errorf("detach %s: %v", pins, err)
		}
	})
	const port = 19910
	r, err := redirect.New(redirect.Config{
		CgroupPath:  cg,
		PinDir:      pins,
		HostTarget:  netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port),
		NoInterface: true,
		GuardAddrs:  []netip.AddrPort{}, // guard nothing: the cgroup holds no process anyway
	}, zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatalf("redirect.New: %v", err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			r.Close()
		}
	})

	// Two labelled containers of our own: one the default policy allows,
	// one in a foreign account it refuses.
	cli := testenv.Docker(t)
	img := testenv.HolderImage(t, cli)
	allowed, refused := testenv.UniqueName(t, "allowed"), testenv.UniqueName(t, "refused")
	testenv.RunContainer(t, cli, testenv.ContainerOpts{Name: allowed, Image: img, Network: "none",
		Labels: map[string]string{w.cfg.RoleLabel: "app-reader"}})
	testenv.RunContainer(t, cli, testenv.ContainerOpts{Name: refused, Image: img, Network: "none",
		Labels: map[string]string{w.cfg.RoleLabel: "arn:aws:iam::999999999999:role/elsewhere"}})

	w.cfg.CgroupPath = cg
	w.cfg.BPFPinDir = pins
	w.cfg.ProxyPort = port
	w.cfg.AdminListen = "127.0.0.1:1" // no daemon

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	rep := Run(ctx, w.cfg, w.deps)
	var b strings.Builder
	rep.Print(&b)
	t.Logf("doctor on this host (%v):\n%s", time.Since(start), b.String())

	for _, name := range []string{"configuration", "kernel", "capabilities", "bpf programs", "bpf helpers", "btf", "cgroup2", "bpffs", "docker", "cgroup driver", "upstream", "sts", "redirect"} {
		expect(t, rep, name, OK)
	}
	expect(t, rep, "kernel", OK, "(x86_64)", "6.")
	expect(t, rep, "cgroup2", OK, "attach point "+cg)
	expect(t, rep, "docker", OK, "API 1.")
	expect(t, rep, "redirect", OK, "5 of 5 links attached in "+pins, "redirecting: host 127.0.0.1:19910")
	expect(t, rep, "cgroup driver", OK, "driver", "is at /")
	expect(t, rep, "daemon", Warn, "not running")
	// Other tests' containers may be listed too; ours must be judged right.
	e := expect(t, rep, "role labels", Warn, refused+" (running): not allowed", "account 999999999999")
	if strings.Contains(e.Detail, allowed) {
		t.Errorf("the allowed container is listed as refused: %q", e.Detail)
	}
	if rep.ExitCode() != 0 {
		t.Errorf("exit code %d on a working host", rep.ExitCode())
	}

	// A stopped daemon leaves the programs pinned and refusing.
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	rep = Run(ctx, w.cfg, w.deps)
	expect(t, rep, "redirect", Warn, "refusing (no target: fail closed)", "not running")
}

func randomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
