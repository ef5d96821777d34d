//go:build linux

package redirect

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/per-docker-roles/per-docker-roles/internal/cgroup"
	"github.com/per-docker-roles/per-docker-roles/internal/testenv"
)

// BenchmarkRedirectConnect compares, in one run, connect() plus the first
// response byte through the redirect (dialling 169.254.169.254:80) with the
// same exchange dialled straight at the listener. The server does the
// proxy's per-connection work (one record Lookup) for both, so the ratio
// is the kernel-side cost of the redirect. Reports ns per exchange for
// each path and their ratio.
func BenchmarkRedirectConnect(b *testing.B) {
	testenv.Blackhole(b)
	cg := newCgroups(b)
	pins := pinDir(b)
	ln, host := listen(b, "tcp4", "127.0.0.1:0")
	r, err := New(Config{CgroupPath: cg.attach, PinDir: pins, HostTarget: host, NoInterface: true,
		ExemptCgroups: []uint64{}, GuardAddrs: []netip.AddrPort{}}, zap.NewNop(), nil)
	if err != nil {
		b.Fatalf("New: %v", err)
	}
	defer r.Close()

	go func() {
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			p := c.RemoteAddr().(*net.TCPAddr).AddrPort()
			// Direct dials have no record; the miss costs the same work.
			_, _ = r.Lookup(netip.AddrPortFrom(p.Addr().Unmap(), p.Port()))
			// The server closes first so TIME_WAIT stays on its side and
			// the client's ephemeral ports are not exhausted.
			_, _ = c.Write([]byte{'!'})
			c.Close()
		}
	}()

	back := moveSelf(b, cg.child)
	defer back()

	exchange := func(dst string) {
		c, err := net.DialTimeout("tcp4", dst, 2*time.Second)
		if err != nil {
			b.Fatalf("dial %s: %v", dst, err)
		}
		var one [1]byte
		if _, err := io.ReadFull(c, one[:]); err != nil {
			b.Fatalf("read from %s: %v", dst, err)
		}
		c.Close()
	}
	// Warm up both paths once.
	exchange(host.String())
	exchange(imds4.String())

	var direct, redirected time.Duration
	b.ResetTimer()
	timed := func(dst string) time.Duration {
		t0 := time.Now()
		exchange(dst)
		return time.Since(t0)
	}
	for i := 0; i < b.N; i++ {
		// Alternate the order so neither path always runs on a warm cache.
		if i%2 == 0 {
			direct += timed(host.String())
			redirected += timed(imds4.String())
		} else {
			redirected += timed(imds4.String())
			direct += timed(host.String())
		}
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(direct.Nanoseconds())/n, "direct-ns/conn")
	b.ReportMetric(float64(redirected.Nanoseconds())/n, "redirect-ns/conn")
	b.ReportMetric(float64(redirected)/float64(direct), "ratio")
	if c := counters(b, pins); c.Redirected < uint64(b.N) {
		b.Errorf("only %d of %d dials were redirected", c.Redirected, b.N)
	}
}

// moveSelf moves this process into dir (cgroup2) and returns a function
// that moves it back. Sockets created meanwhile belong to dir.
func moveSelf(b *testing.B, dir string) func() {
	b.Helper()
	mnt, err := cgroup.Mount()
	if err != nil {
		b.Fatal(err)
	}
	orig, err := cgroup.ProcPath(os.Getpid())
	if err != nil {
		b.Fatal(err)
	}
	write := func(d string) error {
		return os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0)
	}
	if err := write(dir); err != nil {
		b.Fatalf("move into %s: %v", dir, err)
	}
	return func() {
		if err := write(filepath.Join(mnt, orig)); err != nil {
			panic(fmt.Sprintf("move back to %s: %v", orig, err))
		}
	}
}
