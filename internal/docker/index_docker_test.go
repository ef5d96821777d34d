package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/client"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"

	"github.com/per-docker-roles/per-docker-roles/internal/cgroup"
	"github.com/per-docker-roles/per-docker-roles/internal/testenv"
)

// runIndex starts an Index on host ("" = system dockerd) and waits for its
// first sync. hook, if set, runs before each event is handled.
func runIndex(t *testing.T, host string, hook func(events.Message)) (*Index, *prometheus.Registry, time.Duration) {
	t.Helper()
	reg := prometheus.NewRegistry()
	x, err := New(Config{Host: host}, zaptest.NewLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	x.beforeEvent = hook
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- x.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		_ = x.Close()
	})
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := x.WaitSynced(wctx); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if !x.Synced() || metricValue(t, reg, "pdr_index_synced", nil) != 1 {
		t.Error("Synced() or pdr_index_synced not set after WaitSynced")
	}
	return x, reg, took
}

// cgroupOf returns a running container's cgroup2 path and its directory's
// inode, read from the host side (independently of the index).
func cgroupOf(t *testing.T, cli *client.Client, id string) (string, uint64) {
	t.Helper()
	r := testenv.Inspect(t, cli, id)
	p, err := cgroup.ProcPath(r.State.Pid)
	if err != nil {
		t.Fatal(err)
	}
	mount, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(mount, p))
	if err != nil {
		t.Fatal(err)
	}
	return p, inode(t, st)
}

func ipsOf(t *testing.T, cli *client.Client, id string) map[string]netip.Addr {
	t.Helper()
	out := map[string]netip.Addr{}
	for name, ep := range testenv.Inspect(t, cli, id).NetworkSettings.Networks {
		if a, err := netip.ParseAddr(ep.IPAddress); err == nil {
			out[name] = a
		}
	}
	return out
}

func waitIndexed(t *testing.T, x *Index, id string, cond func(Container, bool) bool, what string) time.Duration {
	t.Helper()
	return testenv.WaitFor(t, 10*time.Second, what, func() bool {
		x.mu.RLock()
		e, ok := x.byID[id]
		x.mu.RUnlock()
		var c Container
		if ok {
			c = e.c
		}
		return cond(c, ok)
	})
}

func TestIndexSystemDockerd(t *testing.T) {
	cli := testenv.Docker(t)
	img := testenv.HolderImage(t, cli)
	ctx := context.Background()
	netName := testenv.CreateNetwork(t, cli)

	// Two containers exist before the index starts (initial sync), the
	// rest start after it (events).
	labelled := testenv.RunContainer(t, cli, testenv.ContainerOpts{Image: img,
		Labels: map[string]string{"pdr.role": "arn:aws:iam::123456789012:role/a"}})
	userNet := testenv.RunContainer(t, cli, testenv.ContainerOpts{Image: img, Network: netName})

	x, reg, took := runIndex(t, "", nil)
	t.Logf("initial sync of %d containers took %v", x.Len(), took)

	plain := testenv.RunContainer(t, cli, testenv.ContainerOpts{Image: img})
	hostNet := testenv.RunContainer(t, cli, testenv.ContainerOpts{Image: img, Network: "host"})
	sharer := testenv.RunContainer(t, cli, testenv.ContainerOpts{Image: img, Network: "container:" + plain,
		Labels: map[string]string{"pdr.role": "arn:aws:iam::123456789012:role/sharer"}})
	for _, id := range []string{plain, hostNet, sharer} {
		d := waitIndexed(t, x, id, func(_ Container, ok bool) bool { return ok }, "start event for "+id[:12])
		t.Logf("container %s indexed %v after start returned", id[:12], d)
	}

	for _, tc := range []struct {
		name     string
		id       string
		labels   map[string]string
		mode     string
		hostNet  bool
		wantIPs  int // number of IPs expected in the index for it
		byIPSelf bool
	}{
		{"labelled on default bridge", labelled, map[string]string{"pdr.role": "arn:aws:iam::123456789012:role/a"}, "default", false, 1, true},
		{"unlabelled on user network", userNet, nil, netName, false, 1, true},
		{"plain on default bridge", plain, nil, "default", false, 1, true},
		{"host network", hostNet, nil, "host", true, 0, false},
		{"shares plain's netns", sharer, map[string]string{"pdr.role": "arn:aws:iam::123456789012:role/sharer"}, "container:" + plain, false, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ins := testenv.Inspect(t, cli, tc.id)
			c, ok, err := x.ByID(ctx, tc.id)
			if err != nil || !ok {
				t.Fatalf("ByID = %v %v", ok, err)
			}
			if c.Name != ins.Name[1:] || c.Name[0] == '/' {
				t.Errorf("Name = %q, want %q", c.Name, ins.Name[1:])
			}
			for k, v := range tc.labels {
				if c.Labels[k] != v {
					t.Errorf("label %s = %q, want %q", k, c.Labels[k], v)
				}
			}
			if c.NetworkMode != tc.mode || c.HostNetwork != tc.hostNet {
				t.Errorf("NetworkMode %q HostNetwork %v, want %q %v", c.NetworkMode, c.HostNetwork, tc.mode, tc.hostNet)
			}
			if len(c.IPs) != tc.wantIPs {
				t.Errorf("IPs = %v, want %d", c.IPs, tc.wantIPs)
			}
			if c.Pid != ins.State.Pid {
				t.Errorf("Pid = %d, want %d", c.Pid, ins.State.Pid)
			}
			path, ino := cgroupOf(t, cli, tc.id)
			if c.CgroupPath != path || c.CgroupID != ino {
				t.Errorf("cgroup = %q/%d, want %q/%d (stat)", c.CgroupPath, c.CgroupID, path, ino)
			}
			got, ok, err := x.ByCgroupID(ctx, ino)
			if err != nil || !ok || got.ID != tc.id {
				t.Errorf("ByCgroupID(%d) = %s %v %v", ino, got.ID, ok, err)
			}
			for _, a := range ipsOf(t, cli, tc.id) {
				got, ok := x.ByIP(ctx, a)
				if tc.byIPSelf && (!ok || got.ID != tc.id) {
					t.Errorf("ByIP(%s) = %s %v, want %s", a, got.ID, ok, tc.id[:12])
				}
				// IPv4-mapped form resolves the same.
				if got2, ok2 := x.ByIP(ctx, netip.AddrFrom16(a.As16())); ok2 != ok || got2.ID != got.ID {
					t.Errorf("ByIP(mapped %s) = %s %v, want %s %v", a, got2.ID, ok2, got.ID, ok)
				}
			}
		})
	}

	// The sharer's traffic carries plain's address: by IP that is plain.
	for _, a := range ipsOf(t, cli, plain) {
		if got, ok := x.ByIP(ctx, a); !ok || got.ID != plain {
			t.Errorf("ByIP(%s) = %s %v, want the netns owner %s", a, got.ID, ok, plain[:12])
		}
	}

	t.Run("rename", func(t *testing.T) {
		newName := testenv.UniqueName(t, "renamed")
		if err := cli.ContainerRename(ctx, plain, newName); err != nil {
			t.Fatal(err)
		}
		d := waitIndexed(t, x, plain, func(c Container, ok bool) bool { return ok && c.Name == newName }, "rename")
		t.Logf("rename seen after %v", d)
	})

	t.Run("network connect and disconnect", func(t *testing.T) {
		if err := cli.NetworkConnect(ctx, netName, labelled, nil); err != nil {
			t.Fatal(err)
		}
		added := ipsOf(t, cli, labelled)[netName]
		if !added.IsValid() {
			t.Fatalf("no address on %s after connect", netName)
		}
		d := waitIndexed(t, x, labelled, func(c Container, ok bool) bool { return ok && slices.Contains(c.IPs, added) }, "connect")
		t.Logf("connect seen after %v", d)
		if got, ok := x.ByIP(ctx, added); !ok || got.ID != labelled {
			t.Errorf("ByIP(%s) after connect = %s %v", added, got.ID, ok)
		}
		if err := cli.NetworkDisconnect(ctx, netName, labelled, false); err != nil {
			t.Fatal(err)
		}
		waitIndexed(t, x, labelled, func(c Container, ok bool) bool { return ok && !slices.Contains(c.IPs, added) }, "disconnect")
		x.mu.RLock()
		_, still := x.byIP[added]
		x.mu.RUnlock()
		if still {
			t.Errorf("%s still in the IP index after disconnect", added)
		}
	})

	t.Run("stop and remove", func(t *testing.T) {
		ip := ipsOf(t, cli, userNet)[netName]
		_, ino := cgroupOf(t, cli, userNet)
		timeout := 1
		if err := cli.ContainerStop(ctx, userNet, container.StopOptions{Timeout: &timeout}); err != nil {
			t.Fatal(err)
		}
		// The identity is gone by the time stop returns or shortly after:
		// the die event, or the liveness check in ByIP.
		d := testenv.WaitFor(t, 5*time.Second, "stopped container gone from ByIP", func() bool {
			_, ok := x.ByIP(ctx, ip)
			return !ok
		})
		t.Logf("stopped container gone from ByIP %v after stop returned", d)
		if c, ok, err := x.ByCgroupID(ctx, ino); ok || err != nil {
			t.Errorf("ByCgroupID of stopped container = %s %v %v", c.ID, ok, err)
		}
		if _, ok, err := x.ByID(ctx, userNet); ok || err != nil {
			t.Errorf("ByID of stopped container = %v %v", ok, err)
		}
		testenv.RemoveContainer(t, cli, plain)
		waitIndexed(t, x, plain, func(_ Container, ok bool) bool { return !ok }, "removed container gone")
		if _, ok, err := x.ByID(ctx, plain); ok || err != nil {
			t.Errorf("ByID of removed container = %v %v", ok, err)
		}
	})

	for _, a := range []string{"die", "start", "rename", "connect", "disconnect"} {
		if metricValue(t, reg, "pdr_docker_events_total", map[string]string{"action": a}) == 0 {
			t.Errorf("no %s event counted", a)
		}
	}
	if got, want := metricValue(t, reg, "pdr_index_containers", nil), float64(x.Len()); got != want {
		t.Errorf("pdr_index_containers = %v, want %v", got, want)
	}
}

func TestIndexSubCgroupNearestAncestor(t *testing.T) {
	cli := testenv.Docker(t)
	img := testenv.HolderImage(t, cli)
	ctx := context.Background()
	x, _, _ := runIndex(t, "", nil)
	id := testenv.RunContainer(t, cli, testenv.ContainerOpts{Image: img})
	waitIndexed(t, x, id, func(_ Container, ok bool) bool { return ok }, "start")

	path, _ := cgroupOf(t, cli, id)
	mount, _ := cgroup.Mount()
	sub := filepath.Join(mount, path, "pdrtest-sub", "deeper")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = os.Remove(sub)
		_ = os.Remove(filepath.Dir(sub))
	})
	for _, dir := range []string{filepath.Dir(sub), sub} {
		st, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		got, ok, err := x.ByCgroupID(ctx, inode(t, st))
		if err != nil || !ok || got.ID != id {
			t.Errorf("ByCgroupID(%s) = %s %v %v, want %s", dir, got.ID, ok, err, id[:12])
		}
	}
	// The test's own cgroup is a host process.
	own, err := cgroup.ProcPath(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	ownID, err := cgroup.ID(filepath.Join(mount, own))
	if err != nil {
		t.Fatal(err)
	}
	if c, ok, err := x.ByCgroupID(ctx, ownID); ok || err != nil {
		t.Errorf("ByCgroupID(own cgroup %s) = %s %v %v, want host (false, nil)", own, c.ID, ok, err)
	}
}

// TestIndexStartupRace holds the event stream back, so the index cannot
// learn about a new container from its start event, and checks that the
// container is still identified, by cgroup id (also from a sub-cgroup) and
// by IP, right after ContainerStart returns.
func TestIndexStartupRace(t *testing.T) {
	cli := testenv.Docker(t)
	img := testenv.HolderImage(t, cli)
	ctx := context.Background()

	gate := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(gate) }) }
	held := make(chan events.Message, 100)
	x, reg, _ := runIndex(t, "", func(m events.Message) {
		select {
		case <-gate:
		default:
			select {
			case held <- m:
			default:
			}
			<-gate
		}
	})
	// Registered after runIndex's cleanup, so it runs first: Run cannot
	// stop while an event is held.
	t.Cleanup(release)

	for _, tc := range []struct {
		name string
		sub  bool
		byIP bool
	}{
		{"by cgroup id", false, false},
		{"by sub-cgroup id", true, false},
		{"by IP", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := testenv.RunContainer(t, cli, testenv.ContainerOpts{Image: img,
				Labels: map[string]string{"pdr.role": "arn:aws:iam::123456789012:role/race"}})
			if x.Len() > 0 {
				x.mu.RLock()
				_, known := x.byID[id]
				x.mu.RUnlock()
				if known {
					t.Fatal("index knew the container before any lookup: the event gate leaks")
				}
			}
			start := time.Now()
			var got Container
			var ok bool
			var err error
			switch {
			case tc.byIP:
				ip := ipsOf(t, cli, id)["bridge"]
				got, ok = x.ByIP(ctx, ip)
			case tc.sub:
				path, _ := cgroupOf(t, cli, id)
				mount, _ := cgroup.Mount()
				dir := filepath.Join(mount, path, "pdrtest-race")
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = os.Remove(dir) })
				st, err2 := os.Stat(dir)
				if err2 != nil {
					t.Fatal(err2)
				}
				got, ok, err = x.ByCgroupID(ctx, inode(t, st))
			default:
				_, ino := cgroupOf(t, cli, id)
				got, ok, err = x.ByCgroupID(ctx, ino)
			}
			took := time.Since(start)
			if err != nil || !ok || got.ID != id || got.Labels["pdr.role"] == "" {
				t.Fatalf("lookup right after start = %s %v %v (labels %v), want %s", got.ID, ok, err, got.Labels, id[:12])
			}
			t.Logf("resolved synchronously in %v with the event stream held", took)
		})
	}
	select {
	case <-held:
	default:
		t.Error("no event was held back: the test did not exercise the race")
	}
	for _, by := range []string{"cgroup", "ip"} {
		if metricValue(t, reg, "pdr_index_resolves_total", map[string]string{"by": by, "result": "hit"}) == 0 {
			t.Errorf("no synchronous %s resolve counted", by)
		}
	}
	release()
}

// unixProxy forwards a unix socket to another, and can cut every
// connection and refuse new ones: the index then sees its engine vanish
// while the test still talks to the engine directly.
type unixProxy struct {
	path, upstream string
	mu             sync.Mutex
	ln             net.Listener
	conns          map[net.Conn]bool
}

func newUnixProxy(t *testing.T, upstream string) *unixProxy {
	t.Helper()
	p := &unixProxy{path: filepath.Join(t.TempDir(), "p.sock"), upstream: upstream, conns: map[net.Conn]bool{}}
	p.open(t)
	t.Cleanup(p.cut)
	return p
}

func (p *unixProxy) open(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("unix", p.path)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("unix", p.upstream)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[c], p.conns[u] = true, true
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
}

func (p *unixProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// TestIndexResyncAfterDockerdRestart runs the index against a private
// dockerd behind a proxy. The proxy is cut, the engine is restarted (kill
// -9), and while the index is blind a container is removed and another one
// created; once the proxy is back, the index must resync to the engine's
// real state.
func TestIndexResyncAfterDockerdRestart(t *testing.T) {
	sys := testenv.Docker(t)
	img := testenv.HolderImage(t, sys)
	d := testenv.StartPrivateDockerd(t)
	cli := d.Client(t)
	testenv.CopyImage(t, sys, cli, img)
	ctx := context.Background()

	gone := testenv.RunContainer(t, cli, testenv.ContainerOpts{Image: img, Network: "none"})
	kept := testenv.RunContainer(t, cli, testenv.ContainerOpts{Image: img, Network: "none",
		Labels: map[string]string{"pdr.role": "kept"}})

	proxy := newUnixProxy(t, d.Host[len("unix://"):])
	x, reg, took := runIndex(t, "unix://"+proxy.path, nil)
	t.Logf("initial sync against private dockerd: %v (%d containers)", took, x.Len())
	for _, id := range []string{gone, kept} {
		if _, ok, err := x.ByID(ctx, id); !ok || err != nil {
			t.Fatalf("ByID(%s) before restart = %v %v", id[:12], ok, err)
		}
	}
	_, goneCg := cgroupOf(t, cli, gone)

	proxy.cut()
	d.Restart()
	// While the index cannot see the engine: remove one, create one.
	testenv.RemoveContainer(t, cli, gone)
	created := testenv.RunContainer(t, cli, testenv.ContainerOpts{Image: img, Network: "none",
		Labels: map[string]string{"pdr.role": "created"}})
	// Whether dockerd's restore kept the other container running (it
	// stops containers it cannot live-restore) decides what the index must
	// show for it.
	keptRunning := testenv.Inspect(t, cli, kept).State.Running
	t.Logf("after kill -9 and restart, the old container is running: %v", keptRunning)
	if x.Synced() != true {
		t.Error("Synced turned false while disconnected")
	}

	reconnects := metricValue(t, reg, "pdr_docker_reconnects_total", nil)
	restored := time.Now()
	proxy.open(t)
	testenv.WaitFor(t, 20*time.Second, "resync after reconnect", func() bool {
		return metricValue(t, reg, "pdr_docker_reconnects_total", nil) > reconnects
	})
	t.Logf("reconnected and resynced %v after the engine became reachable (backoff cap %v)", time.Since(restored), backoffMax)

	x.mu.RLock()
	_, goneKnown := x.byID[gone]
	_, createdKnown := x.byID[created]
	_, keptKnown := x.byID[kept]
	x.mu.RUnlock()
	if goneKnown {
		t.Error("container removed while the engine was unreachable is still indexed")
	}
	if !createdKnown {
		t.Error("container created while the engine was unreachable is not indexed")
	}
	if keptKnown != keptRunning {
		t.Errorf("old container indexed = %v, but running = %v", keptKnown, keptRunning)
	}
	if c, ok, err := x.ByCgroupID(ctx, goneCg); ok || err != nil {
		t.Errorf("ByCgroupID of the removed container = %s %v %v", c.ID, ok, err)
	}
	if c, ok, err := x.ByID(ctx, created); !ok || err != nil || c.Labels["pdr.role"] != "created" {
		t.Errorf("ByID(created) = %v %v %v", c.Labels, ok, err)
	}

	// And events flow again on the new stream.
	later := testenv.RunContainer(t, cli, testenv.ContainerOpts{Image: img, Network: "none"})
	waitIndexed(t, x, later, func(_ Container, ok bool) bool { return ok }, "start event after reconnect")
}

// TestIndexFollowsRealDockerdRestart connects the index straight to a
// private dockerd that is killed and restarted: the index must notice,
// reconnect by itself, and follow the new engine's events.
func TestIndexFollowsRealDockerdRestart(t *testing.T) {
	sys := testenv.Docker(t)
	img := testenv.HolderImage(t, sys)
	d := testenv.StartPrivateDockerd(t)
	cli := d.Client(t)
	testenv.CopyImage(t, sys, cli, img)

	before := testenv.RunContainer(t, cli, testenv.ContainerOpts{Image: img, Network: "none"})
	x, reg, _ := runIndex(t, d.Host, nil)
	if _, ok, _ := x.ByID(context.Background(), before); !ok {
		t.Fatal("container not indexed before restart")
	}
	start := time.Now()
	d.Restart()
	t.Logf("private dockerd kill -9 + start took %v", time.Since(start))
	dur := testenv.WaitFor(t, 20*time.Second, "reconnect after restart", func() bool {
		return metricValue(t, reg, "pdr_docker_reconnects_total", nil) >= 1
	})
	t.Logf("index reconnected %v after dockerd answered again", dur)

	after := testenv.RunContainer(t, cli, testenv.ContainerOpts{Image: img, Network: "none"})
	waitIndexed(t, x, after, func(_ Container, ok bool) bool { return ok }, "container started after restart")
	testenv.RemoveContainer(t, cli, before)
	waitIndexed(t, x, before, func(_ Container, ok bool) bool { return !ok }, "container removed after restart")
	if x.Len() != 1 {
		t.Errorf("Len = %d after restart, want 1 (%v)", x.Len(), names(x.Containers()))
	}
}

func names(cs []Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, fmt.Sprintf("%s(%s)", c.Name, c.ID[:12]))
	}
	return out
}

// TestIndexInitInSubCgroup runs a container whose init process moves
// itself into a sub-cgroup (CAP_SYS_ADMIN, private cgroup namespace): the
// index must still record the container's own cgroup, and resolve the
// sub-cgroup to it, also when asked before any event was handled.
func TestIndexInitInSubCgroup(t *testing.T) {
	cli := testenv.Docker(t)
	img := testenv.HolderImage(t, cli)
	ctx := context.Background()
	mount, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	x, _, _ := runIndex(t, "", nil)
	id := testenv.RunContainer(t, cli, testenv.ContainerOpts{Image: img, CapAdd: []string{"SYS_ADMIN"},
		CgroupnsPrivate: true, Cmd: []string{"-subcgroup", "pdrsub", "-cgroupfs", "/sys/fs/cgroup/unified", "-mountcgroup"}})
	var path string
	testenv.WaitFor(t, 10*time.Second, "init to move into its sub-cgroup", func() bool {
		path, _ = cgroupOf(t, cli, id)
		return filepath.Base(path) == "pdrsub"
	})
	own := filepath.Dir(path)
	ownID, err := cgroup.ID(filepath.Join(mount, own))
	if err != nil {
		t.Fatal(err)
	}
	subID, err := cgroup.ID(filepath.Join(mount, path))
	if err != nil {
		t.Fatal(err)
	}
	got, ok, err := x.ByCgroupID(ctx, subID)
	if err != nil || !ok || got.ID != id {
		t.Fatalf("ByCgroupID(sub %s) = %s %v %v", path, got.ID, ok, err)
	}
	// Whether the start event inspected it before or after the move, the
	// index re-inspects on a miss; make sure the final record is right.
	if _, _, err := x.inspectAndApply(ctx, id); err != nil {
		t.Fatal(err)
	}
	c, _, _ := x.ByID(ctx, id)
	if c.CgroupPath != own || c.CgroupID != ownID {
		t.Errorf("container cgroup = %q/%d, want its own %q/%d, not the sub-cgroup", c.CgroupPath, c.CgroupID, own, ownID)
	}
}

// TestCgroupEscapeLooksLikeHost documents a limit of cgroup identity: a
// container with CAP_SYS_ADMIN in the host's cgroup namespace (the default
// on cgroup v1 hosts) can mount cgroup2 and move itself out of its cgroup;
// its cgroup id then belongs to no container. The index must say "host"
// (false, nil), never another container; callers that grant host
// processes anything must combine this with another signal (the network
// namespace).
func TestCgroupEscapeLooksLikeHost(t *testing.T) {
	cli := testenv.Docker(t)
	img := testenv.HolderImage(t, cli)
	ctx := context.Background()
	mount, err := cgroup.Mount()
	if err != nil {
		t.Fatal(err)
	}
	name := testenv.UniqueName(t, "escape")
	dir := filepath.Join(mount, name)
	t.Cleanup(func() {
		// After the container is gone (cleanups run last-in first-out).
		testenv.WaitFor(t, 10*time.Second, "escaped cgroup to empty", func() bool {
			err := os.Remove(dir)
			return err == nil || errors.Is(err, os.ErrNotExist)
		})
	})
	x, _, _ := runIndex(t, "", nil)
	id := testenv.RunContainer(t, cli, testenv.ContainerOpts{Image: img, CapAdd: []string{"SYS_ADMIN"},
		CgroupnsHost: true, Cmd: []string{"-subcgroup", name, "-cgroupfs", "/sys/fs/cgroup/unified", "-mountcgroup"}})
	var path string
	testenv.WaitFor(t, 10*time.Second, "init to move out of its cgroup", func() bool {
		path, _ = cgroupOf(t, cli, id)
		return path == "/"+name
	})
	esc, err := cgroup.ID(dir)
	if err != nil {
		t.Fatal(err)
	}
	if c, ok, err := x.ByCgroupID(ctx, esc); ok || err != nil {
		t.Errorf("ByCgroupID(escaped %s) = %s %v %v, want (false, nil)", path, c.ID, ok, err)
	}
	t.Logf("container %s left its cgroup for %s: by cgroup it looks like a host process", id[:12], path)
}
