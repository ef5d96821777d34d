//go:build linux

package redirect

// Test scaffolding: a throw-away cgroup tree, network namespaces, and client
// processes (this test binary re-executed) placed into a cgroup with
// CLONE_INTO_CGROUP, so the kernel attributes their connections exactly as
// it would a container's.

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/per-docker-roles/per-docker-roles/internal/cgroup"
	"github.com/per-docker-roles/per-docker-roles/internal/testenv"
)

const helperEnv = "PDR_REDIRECT_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(runHelper())
	}
	os.Exit(m.Run())
}

// helperEvent is one JSON line a client process prints: "connected" once
// connect() returned, then "done".
type helperEvent struct {
	Event string `json:"event"`
	Local string `json:"local,omitempty"` // getsockname
	Peer  string `json:"peer,omitempty"`  // getpeername
	Errno int    `json:"errno,omitempty"` // of the failed step
	Err   string `json:"err,omitempty"`
	Reply string `json:"reply,omitempty"` // first line the server sent
}

// runHelper is the client process: socket, optional bind, connect, report
// names, send a line, read a line.
func runHelper() int {
	out := json.NewEncoder(os.Stdout)
	fail := func(step string, err error) int {
		ev := helperEvent{Event: "done", Err: step + ": " + err.Error()}
		var errno unix.Errno
		if errors.As(err, &errno) {
			ev.Errno = int(errno)
		}
		_ = out.Encode(ev)
		return 0
	}
	dst, err := netip.ParseAddrPort(os.Getenv("PDR_DIAL"))
	if err != nil {
		return fail("parse", err)
	}
	fam := unix.AF_INET
	if os.Getenv("PDR_FAMILY") == "6" {
		fam = unix.AF_INET6
	}
	fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail("socket", err)
	}
	// connect() and read() give up after this (SO_SNDTIMEO bounds connect).
	tv := unix.Timeval{Sec: 3}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if b := os.Getenv("PDR_BIND"); b != "" {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if err := unix.Bind(fd, sockaddr(netip.MustParseAddrPort(b), fam)); err != nil {
			return fail("bind", err)
		}
	}
	if err := unix.Connect(fd, sockaddr(dst, fam)); err != nil {
		return fail("connect", err)
	}
	ev := helperEvent{Event: "connected"}
	if sa, err := unix.Getsockname(fd); err == nil {
		ev.Local = fromSockaddr(sa).String()
	}
	if sa, err := unix.Getpeername(fd); err == nil {
		ev.Peer = fromSockaddr(sa).String()
	}
	_ = out.Encode(ev)
	if _, err := unix.Write(fd, []byte("ping\n")); err != nil {
		return fail("write", err)
	}
	buf := make([]byte, 256)
	n, err := unix.Read(fd, buf)
	if err != nil {
		return fail("read", err)
	}
	ev.Event, ev.Reply = "done", strings.TrimSpace(string(buf[:n]))
	_ = out.Encode(ev)
	return 0
}

func sockaddr(a netip.AddrPort, fam int) unix.Sockaddr {
	if fam == unix.AF_INET6 {
		return &unix.SockaddrInet6{Addr: a.Addr().As16(), Port: int(a.Port())}
	}
	return &unix.SockaddrInet4{Addr: a.Addr().Unmap().As4(), Port: int(a.Port())}
}

func fromSockaddr(sa unix.Sockaddr) netip.AddrPort {
	switch s := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(s.Addr), uint16(s.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(s.Addr), uint16(s.Port))
	}
	return netip.AddrPort{}
}

// procClient is a running helper process.
type procClient struct {
	t     *testing.T
	cmd   *exec.Cmd
	lines *bufio.Scanner
	first *helperEvent
}

type dialOpts struct {
	cgroup string // cgroup2 directory to start the process in
	netns  string // named netns ("" = host)
	dial   string // destination
	family int    // 4 (default) or 6: socket family
	bind   string // optional local address
}

// startClient starts a helper in o.cgroup (and o.netns).
func startClient(t *testing.T, o dialOpts) *procClient {
	t.Helper()
	dir, err := os.Open(o.cgroup)
	if err != nil {
		t.Fatalf("open cgroup: %v", err)
	}
	defer dir.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args := []string{self, "-test.run=^$"}
	if o.netns != "" {
		args = append([]string{"ip", "netns", "exec", o.netns}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), helperEnv+"=1", "PDR_DIAL="+o.dial, "PDR_BIND="+o.bind,
		fmt.Sprintf("PDR_FAMILY=%d", max(o.family, 4)))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	cmd.Stderr = &testWriter{t}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start client in %s: %v", o.cgroup, err)
	}
	c := &procClient{t: t, cmd: cmd, lines: bufio.NewScanner(stdout)}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return c
}

// next returns the next event the client printed.
func (c *procClient) next() helperEvent {
	c.t.Helper()
	if !c.lines.Scan() {
		c.t.Fatalf("client exited without output: %v", c.lines.Err())
	}
	var ev helperEvent
	if err := json.Unmarshal(c.lines.Bytes(), &ev); err != nil {
		c.t.Fatalf("client output %q: %v", c.lines.Text(), err)
	}
	return ev
}

// connected waits until connect() returned; ok=false if it failed (the
// returned event then says why).
func (c *procClient) connected() (helperEvent, bool) {
	c.t.Helper()
	ev := c.next()
	c.first = &ev
	return ev, ev.Event == "connected"
}

// done waits for the final event and the process.
func (c *procClient) done() helperEvent {
	c.t.Helper()
	if c.first == nil {
		if ev, ok := c.connected(); !ok {
			_ = c.cmd.Wait()
			return ev
		}
	}
	if c.first.Event == "done" {
		_ = c.cmd.Wait()
		return *c.first
	}
	ev := c.next()
	_ = c.cmd.Wait()
	ev.Local, ev.Peer = c.first.Local, c.first.Peer
	return ev
}

// dialOnce runs a procClient to completion.
func dialOnce(t *testing.T, o dialOpts) helperEvent {
	t.Helper()
	return startClient(t, o).done()
}

type testWriter struct{ t *testing.T }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Logf("client stderr: %s", strings.TrimSpace(string(p)))
	return len(p), nil
}

func randHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// cgroups is a test-owned cgroup2 subtree: attach/{child,exempt}.
type cgroups struct {
	attach, child, exempt string
	childID, exemptID     uint64
}

func newCgroups(t testing.TB) cgroups {
	t.Helper()
	mnt, err := cgroup.Mount()
	if err != nil {
		testenv.Unsupported(t, "cgroup2", err)
	}
	root := filepath.Join(mnt, "pdr-test-"+randHex(t, 4))
	cg := cgroups{attach: root, child: filepath.Join(root, "child"), exempt: filepath.Join(root, "exempt")}
	for _, d := range []string{cg.attach, cg.child, cg.exempt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatalf("create cgroup: %v", err)
		}
	}
	t.Cleanup(func() {
		for _, d := range []string{cg.child, cg.exempt, cg.attach} {
			// Helper processes may take a moment to leave after Wait.
			for i := 0; i < 50; i++ {
				if err := os.Remove(d); err == nil || errors.Is(err, os.ErrNotExist) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	})
	if cg.childID, err = cgroup.ID(cg.child); err != nil {
		t.Fatal(err)
	}
	if cg.exemptID, err = cgroup.ID(cg.exempt); err != nil {
		t.Fatal(err)
	}
	return cg
}

// pinDir returns a fresh pin dir and detaches everything in it at cleanup.
func pinDir(t testing.TB) string {
	t.Helper()
	if err := ensurePinDir("/sys/fs/bpf"); err != nil {
		testenv.Unsupported(t, "bpffs", err)
	}
	d := "/sys/fs/bpf/pdr-test-" + randHex(t, 4)
	t.Cleanup(func() {
		if err := Detach(d); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return d
}

// listen opens a TCP listener on addr (port 0 = any).
func listen(t testing.TB, network, addr string) (*net.TCPListener, netip.AddrPort) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	tl := ln.(*net.TCPListener)
	return tl, tl.Addr().(*net.TCPAddr).AddrPort()
}

// accept accepts one connection, answers "pong" after reading a line, and
// returns the peer address the server saw.
func accept(t *testing.T, ln *net.TCPListener) netip.AddrPort {
	t.Helper()
	_ = ln.SetDeadline(time.Now().Add(5 * time.Second))
	c, err := ln.AcceptTCP()
	if err != nil {
		t.Fatalf("accept on %s: %v", ln.Addr(), err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	if _, err := c.Read(buf); err != nil {
		t.Fatalf("read from %s: %v", c.RemoteAddr(), err)
	}
	if _, err := c.Write([]byte("pong\n")); err != nil {
		t.Fatalf("write: %v", err)
	}
	p := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	return netip.AddrPortFrom(p.Addr().Unmap(), p.Port())
}

var subnetSeq atomic.Uint32

// netns is a test-owned network namespace joined to the host by a veth
// pair in a link-local /30 the test owns, with a route to nsAddr only (no
// default route: a missed redirect cannot go anywhere).
type netns struct {
	name         string
	hostIP, nsIP netip.Addr
	dummy        string
	nsAddr       netip.Addr // address on a test dummy interface in the host
	hostVeth     string
}

func newNetns(t *testing.T) netns {
	t.Helper()
	n := subnetSeq.Add(1)
	id := randHex(t, 3)
	// 169.254.210-229.x/30: link-local, unused by AWS, owned by this test.
	third := 210 + (int(n)+int(id[0]))%20
	fourth := (int(n) * 4 % 252)
	ns := netns{
		name:     "pdr-t-" + id,
		hostVeth: "pdrh" + id,
		dummy:    "pdrd" + id,
		hostIP:   netip.MustParseAddr(fmt.Sprintf("169.254.%d.%d", third, fourth+1)),
		nsIP:     netip.MustParseAddr(fmt.Sprintf("169.254.%d.%d", third, fourth+2)),
		nsAddr:   netip.MustParseAddr(fmt.Sprintf("169.254.199.%d", 1+int(n)%250)),
	}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", ns.name).Run()
		_ = exec.Command("ip", "link", "del", ns.hostVeth).Run()
		_ = exec.Command("ip", "link", "del", ns.dummy).Run()
	})
	run("ip", "netns", "add", ns.name)
	run("ip", "link", "add", ns.hostVeth, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
	run("ip", "addr", "add", ns.hostIP.String()+"/30", "dev", ns.hostVeth)
	run("ip", "link", "set", ns.hostVeth, "up")
	run("ip", "-n", ns.name, "addr", "add", ns.nsIP.String()+"/30", "dev", "eth0")
	run("ip", "-n", ns.name, "link", "set", "eth0", "up")
	run("ip", "-n", ns.name, "link", "set", "lo", "up")
	run("ip", "-n", ns.name, "route", "add", ns.nsAddr.String()+"/32", "via", ns.hostIP.String())
	return ns
}

// newRedirector starts a Redirector for a test and closes it at cleanup
// (before the pin dir is detached, since cleanups run last-in first-out).
func newRedirector(t *testing.T, cfg Config) *Redirector {
	t.Helper()
	r, err := New(cfg, zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}
