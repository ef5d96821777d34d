//go:build linux

package redirect

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/per-docker-roles/per-docker-roles/internal/testenv"
)

var imds4 = netip.MustParseAddrPort("169.254.169.254:80")

func baseConfig(t *testing.T, cg cgroups, pins string, host netip.AddrPort) Config {
	t.Helper()
	return Config{
		CgroupPath:    cg.attach,
		PinDir:        pins,
		HostTarget:    host,
		NoInterface:   true,
		ExemptCgroups: []uint64{cg.exemptID},
		GuardAddrs:    []netip.AddrPort{},
	}
}

func counters(t testing.TB, pins string) Counters {
	t.Helper()
	s, err := ReadStatus(pins)
	if err != nil {
		t.Fatalf("ReadStatus: %v", err)
	}
	return s.Counters
}

func TestRedirectHostNamespace(t *testing.T) {
	testenv.Blackhole(t)
	t.Parallel()
	cg := newCgroups(t)
	pins := pinDir(t)
	ln, host := listen(t, "tcp4", "127.0.0.1:0")
	reg := prometheus.NewRegistry()
	r, err := New(baseConfig(t, cg, pins, host), zaptest.NewLogger(t), reg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })

	// A full exchange through the redirect: what the client and the
	// server see.
	c := startClient(t, dialOpts{cgroup: cg.child, dial: imds4.String()})
	peer := accept(t, ln)
	ev := c.done()
	if ev.Err != "" || ev.Reply != "pong" {
		t.Fatalf("client: %+v", ev)
	}
	if ev.Peer != imds4.String() {
		t.Errorf("getpeername = %s, want the dialled %s", ev.Peer, imds4)
	}
	if ev.Local != peer.String() {
		t.Errorf("client local %s != server peer %s", ev.Local, peer)
	}

	// Held connection: look the record up while the client is connected.
	c = startClient(t, dialOpts{cgroup: cg.child, dial: imds4.String()})
	conn, ok := c.connected()
	if !ok {
		t.Fatalf("connect: %+v", conn)
	}
	local := netip.MustParseAddrPort(conn.Local)
	rec, err := r.Lookup(local)
	if err != nil {
		t.Fatalf("Lookup(%s): %v", local, err)
	}
	want := Record{CgroupID: cg.childID, NetnsCookie: r.hostCookie, HostNetns: true, OrigDst: imds4, Target: host}
	if rec != want {
		t.Errorf("record = %+v, want %+v", rec, want)
	}
	if _, err := r.Lookup(local); !errors.Is(err, ErrNoRecord) {
		t.Errorf("second Lookup = %v, want ErrNoRecord (delete on lookup)", err)
	}
	accept(t, ln)
	if ev := c.done(); ev.Reply != "pong" {
		t.Errorf("client: %+v", ev)
	}

	n := counters(t, pins)
	if n.Redirected != 2 || n.Recorded != 2 || n.Peername < 2 || n.Refused != 0 {
		t.Errorf("counters = %+v, want 2 redirected, 2 recorded, >=2 getpeername, 0 refused", n)
	}
	if got := metricValue(t, reg, "pdr_redirect_lookups_total", "hit"); got != 1 {
		t.Errorf("pdr_redirect_lookups_total{result=hit} = %v, want 1", got)
	}
	if got := metricValue(t, reg, "pdr_redirect_kernel_events_total", "redirected"); got != 2 {
		t.Errorf("pdr_redirect_kernel_events_total{event=redirected} = %v, want 2", got)
	}
}

// TestRecordDeletedOnClose: a record the proxy never looked up goes away
// with the client's socket, so a later connection reusing the address
// cannot find it.
func TestRecordDeletedOnClose(t *testing.T) {
	testenv.Blackhole(t)
	t.Parallel()
	cg := newCgroups(t)
	pins := pinDir(t)
	ln, host := listen(t, "tcp4", "127.0.0.1:0")
	r := newRedirector(t, baseConfig(t, cg, pins, host))
	c := startClient(t, dialOpts{cgroup: cg.child, dial: imds4.String()})
	peer := accept(t, ln) // closes the server side after the reply
	if ev := c.done(); ev.Reply != "pong" {
		t.Fatalf("client: %+v", ev)
	}
	if _, err := r.Lookup(peer); !errors.Is(err, ErrNoRecord) {
		t.Errorf("Lookup after both sides closed = %v, want ErrNoRecord", err)
	}
	s, err := r.Status()
	if err != nil {
		t.Fatal(err)
	}
	if s.PendingRecords != 0 {
		t.Errorf("pending records = %d, want 0", s.PendingRecords)
	}
}

func TestRedirectOtherNamespace(t *testing.T) {
	testenv.Blackhole(t)
	t.Parallel()
	cg := newCgroups(t)
	pins := pinDir(t)
	ns := newNetns(t)
	_, host := listen(t, "tcp4", "127.0.0.1:0")
	cfg := baseConfig(t, cg, pins, host)
	cfg.NoInterface = false
	cfg.Interface = ns.dummy
	// The redirector creates the dummy interface, so listen after New.
	// The dummy address exists only after New, so pick the port by
	// listening on loopback first.
	_, probe := listen(t, "tcp4", "127.0.0.1:0")
	cfg.NSTarget = netip.AddrPortFrom(ns.nsAddr, probe.Port())
	r := newRedirector(t, cfg)
	nsln, nsTarget := listen(t, "tcp4", cfg.NSTarget.String())

	c := startClient(t, dialOpts{cgroup: cg.child, netns: ns.name, dial: imds4.String()})
	conn, ok := c.connected()
	if !ok {
		t.Fatalf("connect from netns: %+v", conn)
	}
	if conn.Peer != imds4.String() {
		t.Errorf("getpeername = %s, want %s", conn.Peer, imds4)
	}
	peer := accept(t, nsln)
	if peer.Addr() != ns.nsIP {
		t.Errorf("server saw %s, want the namespace's own address %s (no NAT)", peer, ns.nsIP)
	}
	rec, err := r.Lookup(peer)
	if err != nil {
		t.Fatalf("Lookup(%s): %v", peer, err)
	}
	if rec.CgroupID != cg.childID || rec.HostNetns || rec.NetnsCookie == r.hostCookie || rec.NetnsCookie == 0 ||
		rec.OrigDst != imds4 || rec.Target != nsTarget {
		t.Errorf("record = %+v; want cgroup %d, other netns, orig %s, target %s", rec, cg.childID, imds4, nsTarget)
	}
	if ev := c.done(); ev.Reply != "pong" {
		t.Errorf("client: %+v", ev)
	}

	// Without a namespace target, container callers are refused, host
	// callers still redirected.
	cfg.NSTarget = netip.AddrPort{}
	cfg.NoInterface = true
	_ = r.Close()
	newRedirector(t, cfg)
	ev := dialOnce(t, dialOpts{cgroup: cg.child, netns: ns.name, dial: imds4.String()})
	if ev.Errno != int(unix.EPERM) {
		t.Errorf("netns caller without NSTarget: %+v, want EPERM", ev)
	}
}

func TestExemptCgroupNotRedirected(t *testing.T) {
	testenv.Blackhole(t)
	t.Parallel()
	cg := newCgroups(t)
	pins := pinDir(t)
	_, host := listen(t, "tcp4", "127.0.0.1:0")
	newRedirector(t, baseConfig(t, cg, pins, host))

	ev := dialOnce(t, dialOpts{cgroup: cg.exempt, dial: imds4.String()})
	// Untouched, it meets the blackhole route: EINVAL, never EPERM.
	if ev.Err == "" || ev.Errno == int(unix.EPERM) {
		t.Errorf("exempt dial = %+v, want a routing failure (not redirected, not refused)", ev)
	}
	n := counters(t, pins)
	if n.Exempt != 1 || n.Redirected != 0 {
		t.Errorf("counters = %+v, want exempt 1, redirected 0", n)
	}
}

func TestUpstreamGuard(t *testing.T) {
	testenv.Blackhole(t)
	t.Parallel()
	cg := newCgroups(t)
	pins := pinDir(t)
	_, host := listen(t, "tcp4", "127.0.0.1:0")
	gln, guard := listen(t, "tcp4", "127.0.0.1:0")
	cfg := baseConfig(t, cg, pins, host)
	cfg.GuardAddrs = []netip.AddrPort{guard}
	newRedirector(t, cfg)

	for _, tc := range []struct {
		name string
		dial string
		fam  int
	}{
		{"loopback", guard.String(), 4},
		{"unspecified", netip.AddrPortFrom(netip.IPv4Unspecified(), guard.Port()).String(), 4},
		{"mapped", netip.AddrPortFrom(netip.MustParseAddr("::ffff:127.0.0.1"), guard.Port()).String(), 6},
	} {
		ev := dialOnce(t, dialOpts{cgroup: cg.child, dial: tc.dial, family: tc.fam})
		if ev.Errno != int(unix.EPERM) {
			t.Errorf("%s: non-exempt dial to guarded %s = %+v, want EPERM", tc.name, tc.dial, ev)
		}
	}
	c := startClient(t, dialOpts{cgroup: cg.exempt, dial: guard.String()})
	accept(t, gln)
	if ev := c.done(); ev.Reply != "pong" {
		t.Errorf("exempt dial to guard: %+v, want through", ev)
	}
	if n := counters(t, pins); n.GuardRefused != 3 {
		t.Errorf("guard refused = %d, want 3", n.GuardRefused)
	}
}

func TestFailClosedWithoutTarget(t *testing.T) {
	testenv.Blackhole(t)
	t.Parallel()
	cg := newCgroups(t)
	pins := pinDir(t)
	_, host := listen(t, "tcp4", "127.0.0.1:0")
	r := newRedirector(t, baseConfig(t, cg, pins, host))
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s, err := ReadStatus(pins)
	if err != nil {
		t.Fatal(err)
	}
	if s.Configured() {
		t.Errorf("after Close the targets are still set: %+v", s)
	}
	for _, tc := range []struct {
		dial string
		fam  int
	}{
		{imds4.String(), 4},
		{"[fd00:ec2::254]:80", 6},
		{"[::ffff:169.254.169.254]:80", 6},
	} {
		ev := dialOnce(t, dialOpts{cgroup: cg.child, dial: tc.dial, family: tc.fam})
		if ev.Errno != int(unix.EPERM) {
			t.Errorf("dial %s with no target = %+v, want EPERM", tc.dial, ev)
		}
	}
	if n := counters(t, pins); n.Refused != 3 || n.Redirected != 0 {
		t.Errorf("counters = %+v, want refused 3", n)
	}
}

func TestOtherDestinationsUntouched(t *testing.T) {
	testenv.Blackhole(t)
	t.Parallel()
	cg := newCgroups(t)
	pins := pinDir(t)
	_, host := listen(t, "tcp4", "127.0.0.1:0")
	r := newRedirector(t, baseConfig(t, cg, pins, host))
	other, otherAddr := listen(t, "tcp4", "127.0.0.1:0")

	c := startClient(t, dialOpts{cgroup: cg.child, dial: otherAddr.String()})
	peer := accept(t, other)
	ev := c.done()
	if ev.Reply != "pong" || ev.Peer != otherAddr.String() {
		t.Errorf("direct dial: %+v, want pong from %s", ev, otherAddr)
	}
	if _, err := r.Lookup(peer); !errors.Is(err, ErrNoRecord) {
		t.Errorf("Lookup of an unredirected connection = %v, want ErrNoRecord", err)
	}
	// Another port on the metadata address is not ours: it meets the
	// blackhole instead of the proxy.
	ev = dialOnce(t, dialOpts{cgroup: cg.child, dial: "169.254.169.254:81"})
	if ev.Err == "" || ev.Errno == int(unix.EPERM) {
		t.Errorf("dial :81 = %+v, want routing failure", ev)
	}
	if n := counters(t, pins); n.Redirected != 0 || n.Refused != 0 {
		t.Errorf("counters = %+v, want nothing redirected or refused", n)
	}
}

func TestIPv6AndMapped(t *testing.T) {
	testenv.Blackhole(t)
	t.Parallel()
	cg := newCgroups(t)
	pins := pinDir(t)
	ln4, host := listen(t, "tcp4", "127.0.0.1:0")
	ln6, host6 := listen(t, "tcp6", "[::1]:0")
	cfg := baseConfig(t, cg, pins, host)
	cfg.HostTarget6 = host6
	r := newRedirector(t, cfg)

	for _, tc := range []struct {
		name   string
		dial   string
		ln     *net.TCPListener
		target netip.AddrPort
	}{
		{"fd00:ec2::254", "[fd00:ec2::254]:80", ln6, host6},
		{"mapped", "[::ffff:169.254.169.254]:80", ln4, host},
	} {
		c := startClient(t, dialOpts{cgroup: cg.child, dial: tc.dial, family: 6})
		conn, ok := c.connected()
		if !ok {
			t.Fatalf("%s: connect: %+v", tc.name, conn)
		}
		if conn.Peer != tc.dial {
			t.Errorf("%s: getpeername = %s, want %s", tc.name, conn.Peer, tc.dial)
		}
		peer := accept(t, tc.ln)
		rec, err := r.Lookup(peer)
		if err != nil {
			t.Fatalf("%s: Lookup(%s): %v", tc.name, peer, err)
		}
		if rec.CgroupID != cg.childID || !rec.HostNetns || rec.OrigDst.String() != tc.dial || rec.Target != tc.target {
			t.Errorf("%s: record = %+v", tc.name, rec)
		}
		if ev := c.done(); ev.Reply != "pong" {
			t.Errorf("%s: client %+v", tc.name, ev)
		}
	}
}

func TestPinnedStateSurvivesRestart(t *testing.T) {
	testenv.Blackhole(t)
	t.Parallel()
	cg := newCgroups(t)
	pins := pinDir(t)
	ln, host := listen(t, "tcp4", "127.0.0.1:0")
	cfg := baseConfig(t, cg, pins, host)
	r1 := newRedirector(t, cfg)
	before := linkIDs(t, pins)

	// A connection made under the first instance...
	c := startClient(t, dialOpts{cgroup: cg.child, dial: imds4.String()})
	conn, ok := c.connected()
	if !ok {
		t.Fatalf("connect: %+v", conn)
	}
	if err := r1.Close(); err != nil {
		t.Fatal(err)
	}
	// ...while the daemon is down, new ones are refused...
	if ev := dialOnce(t, dialOpts{cgroup: cg.child, dial: imds4.String()}); ev.Errno != int(unix.EPERM) {
		t.Errorf("dial while closed = %+v, want EPERM", ev)
	}
	// ...and the restarted daemon finds the first one's record.
	r2 := newRedirector(t, cfg)
	peer := accept(t, ln)
	rec, err := r2.Lookup(peer)
	if err != nil || rec.CgroupID != cg.childID {
		t.Fatalf("Lookup after restart = %+v, %v; want cgroup %d", rec, err, cg.childID)
	}
	c.done()

	after := linkIDs(t, pins)
	for name, id := range before {
		if after[name] != id {
			t.Errorf("%s: link %d replaced by %d; want adopted", name, id, after[name])
		}
	}
	for _, a := range attachments {
		if n := attachedCount(t, cg.attach, a.attach); n != 1 {
			t.Errorf("%s: %d programs attached, want exactly 1", a.pin, n)
		}
	}
	// Redirecting again after the restart.
	c = startClient(t, dialOpts{cgroup: cg.child, dial: imds4.String()})
	accept(t, ln)
	if ev := c.done(); ev.Reply != "pong" {
		t.Errorf("after restart: %+v", ev)
	}
}

func TestDetachRemovesEverything(t *testing.T) {
	testenv.Blackhole(t)
	t.Parallel()
	cg := newCgroups(t)
	pins := pinDir(t)
	_, host := listen(t, "tcp4", "127.0.0.1:0")
	r := newRedirector(t, baseConfig(t, cg, pins, host))
	s, err := r.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range s.Links {
		if !l.Attached || l.CgroupID == 0 {
			t.Errorf("status before detach: %+v", l)
		}
	}
	if !strings.Contains(s.String(), "redirecting") {
		t.Errorf("status text:\n%s", s)
	}
	// Detach while the daemon still holds its handles: the links must go
	// anyway.
	if err := Detach(pins); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	if _, err := os.Stat(pins); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin dir still there: %v", err)
	}
	for _, a := range attachments {
		if n := attachedCount(t, cg.attach, a.attach); n != 0 {
			t.Errorf("%s: %d programs still attached", a.pin, n)
		}
	}
	ev := dialOnce(t, dialOpts{cgroup: cg.child, dial: imds4.String()})
	if ev.Err == "" || ev.Errno == int(unix.EPERM) {
		t.Errorf("dial after detach = %+v, want untouched (blackhole)", ev)
	}
	_ = r.Close()
}

func linkIDs(t *testing.T, pins string) map[string]uint32 {
	t.Helper()
	s, err := ReadStatus(pins)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]uint32{}
	for _, l := range s.Links {
		if !l.Attached {
			t.Errorf("%s not attached", l.Name)
		}
		m[l.Name] = l.LinkID
	}
	return m
}

func attachedCount(t *testing.T, dir string, typ ebpf.AttachType) int {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: typ})
	if err != nil {
		t.Fatalf("query %s: %v", dir, err)
	}
	return len(res.Programs)
}

// metricValue returns the value of the single-label metric name{label}.
func metricValue(t *testing.T, g prometheus.Gatherer, name, label string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == label {
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}

// TestAddressConflictRefusesBoth models an IP takeover: a second namespace
// claims the first one's address and port while its connection waits to
// be accepted. The proxy cannot tell the two apart, so the record must
// come back as a conflict, not as either caller's identity.
func TestAddressConflictRefusesBoth(t *testing.T) {
	testenv.Blackhole(t)
	t.Parallel()
	cg := newCgroups(t)
	pins := pinDir(t)
	victim := newNetns(t)
	attacker := newNetns(t)
	_, host := listen(t, "tcp4", "127.0.0.1:0")
	_, probe := listen(t, "tcp4", "127.0.0.1:0")
	cfg := baseConfig(t, cg, pins, host)
	cfg.NoInterface = false
	cfg.Interface = victim.dummy
	cfg.NSTarget = netip.AddrPortFrom(victim.nsAddr, probe.Port())
	r := newRedirector(t, cfg)
	listen(t, "tcp4", cfg.NSTarget.String())

	for _, args := range [][]string{
		{"-n", attacker.name, "addr", "add", victim.nsIP.String() + "/32", "dev", "eth0"},
		{"-n", attacker.name, "route", "add", victim.nsAddr.String() + "/32", "via", attacker.hostIP.String()},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	shared := netip.AddrPortFrom(victim.nsIP, 41000+uint16(subnetSeq.Add(1)%1000))
	v := startClient(t, dialOpts{cgroup: cg.child, netns: victim.name, dial: imds4.String(), bind: shared.String()})
	if ev, ok := v.connected(); !ok {
		t.Fatalf("victim connect: %+v", ev)
	}
	// The attacker's connect fails or hangs (replies go to the victim);
	// what matters is that its sockops callback saw the claimed address.
	a := startClient(t, dialOpts{cgroup: cg.child, netns: attacker.name, dial: imds4.String(), bind: shared.String()})
	_ = a
	waitFor(t, func() bool { return counters(t, pins).Conflict >= 1 })
	if _, err := r.Lookup(shared); !errors.Is(err, ErrConflict) || !errors.Is(err, ErrNoRecord) {
		t.Errorf("Lookup(%s) = %v, want ErrConflict (wrapping ErrNoRecord)", shared, err)
	}
	if _, err := r.Lookup(shared); !errors.Is(err, ErrNoRecord) {
		t.Errorf("second Lookup = %v, want ErrNoRecord", err)
	}
}

// TestAdoptsOlderVersion: pins left by another version (a different
// program behind a pinned link, a map with another layout) are taken over:
// the link keeps its id, its program is swapped atomically, the map is
// recreated, and there is still exactly one program attached.
func TestAdoptsOlderVersion(t *testing.T) {
	testenv.Blackhole(t)
	t.Parallel()
	cg := newCgroups(t)
	pins := pinDir(t)
	if err := ensurePinDir(pins); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.CGroupSockAddr,
		AttachType:   ebpf.AttachCGroupInet4Connect,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
		License:      "MIT",
	})
	if err != nil {
		t.Fatalf("load stand-in old program: %v", err)
	}
	defer old.Close()
	l, err := link.AttachCgroup(link.CgroupOptions{Path: cg.attach, Attach: ebpf.AttachCGroupInet4Connect, Program: old})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Pin(pins + "/link_connect4"); err != nil {
		t.Fatal(err)
	}
	info, _ := l.Info()
	oldLink := uint32(info.ID)
	l.Close()
	m, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{Name: pdrMapPdrRecords, Type: ebpf.LRUHash, KeySize: 4, ValueSize: 4,
		MaxEntries: 16, Pinning: ebpf.PinByName}, ebpf.MapOptions{PinPath: pins})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()

	ln, host := listen(t, "tcp4", "127.0.0.1:0")
	r := newRedirector(t, baseConfig(t, cg, pins, host))
	ids := linkIDs(t, pins)
	if ids["link_connect4"] != oldLink {
		t.Errorf("link_connect4 id %d, want the pinned %d kept", ids["link_connect4"], oldLink)
	}
	pi, _ := r.objs.PdrConnect4.Info()
	s, err := ReadStatus(pins)
	if err != nil {
		t.Fatal(err)
	}
	if s.Links[0].ProgramTag != pi.Tag {
		t.Errorf("link_connect4 runs program tag %s, want the new %s", s.Links[0].ProgramTag, pi.Tag)
	}
	if n := attachedCount(t, cg.attach, ebpf.AttachCGroupInet4Connect); n != 1 {
		t.Errorf("%d connect4 programs attached, want 1", n)
	}
	c := startClient(t, dialOpts{cgroup: cg.child, dial: imds4.String()})
	conn, ok := c.connected()
	if !ok {
		t.Fatalf("connect: %+v", conn)
	}
	if rec, err := r.Lookup(netip.MustParseAddrPort(conn.Local)); err != nil || rec.CgroupID != cg.childID {
		t.Errorf("Lookup = %+v, %v", rec, err)
	}
	accept(t, ln)
	c.done()
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestIPv6FromOtherNamespace: with NSTarget6 set (an IPv6-enabled network),
// fd00:ec2::254 from a container namespace reaches the proxy on the dummy
// interface's ULA and is recorded like IPv4.
func TestIPv6FromOtherNamespace(t *testing.T) {
	testenv.Blackhole(t)
	t.Parallel()
	cg := newCgroups(t)
	pins := pinDir(t)
	ns := newNetns(t)
	id := randHex(t, 2)
	hostIP6 := netip.MustParseAddr("fd70:" + id + "::1")
	nsIP6 := netip.MustParseAddr("fd70:" + id + "::2")
	target6 := netip.MustParseAddr("fd71:" + id + "::1")
	for _, args := range [][]string{
		{"-6", "addr", "add", hostIP6.String() + "/64", "dev", ns.hostVeth, "nodad"},
		{"-n", ns.name, "-6", "addr", "add", nsIP6.String() + "/64", "dev", "eth0", "nodad"},
		{"-n", ns.name, "-6", "route", "add", target6.String() + "/128", "via", hostIP6.String()},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	_, host := listen(t, "tcp4", "127.0.0.1:0")
	_, probe := listen(t, "tcp4", "127.0.0.1:0")
	cfg := baseConfig(t, cg, pins, host)
	cfg.NoInterface = false
	cfg.Interface = ns.dummy
	cfg.NSTarget6 = netip.AddrPortFrom(target6, probe.Port())
	r := newRedirector(t, cfg)
	ln6, _ := listen(t, "tcp6", cfg.NSTarget6.String())

	dial := "[fd00:ec2::254]:80"
	c := startClient(t, dialOpts{cgroup: cg.child, netns: ns.name, dial: dial, family: 6})
	conn, ok := c.connected()
	if !ok {
		t.Fatalf("connect: %+v", conn)
	}
	if conn.Peer != dial {
		t.Errorf("getpeername = %s, want %s", conn.Peer, dial)
	}
	peer := accept(t, ln6)
	if peer.Addr() != nsIP6 {
		t.Errorf("server saw %s, want %s", peer, nsIP6)
	}
	rec, err := r.Lookup(peer)
	if err != nil {
		t.Fatalf("Lookup(%s): %v", peer, err)
	}
	if rec.CgroupID != cg.childID || rec.HostNetns || rec.OrigDst.String() != dial || rec.Target != cfg.NSTarget6 {
		t.Errorf("record = %+v", rec)
	}
	c.done()
}
