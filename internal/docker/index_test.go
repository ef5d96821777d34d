package docker

import (
	"context"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/network"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
)

const (
	idA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	idB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	idC = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)

func TestContainerIDsInPath(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		path string
		want []string
	}{
		{"/docker/" + idA, []string{idA}},
		{"/docker/" + idA + "/sub", []string{idA}},
		{"/docker/" + idA + "/sub/deeper/x", []string{idA}},
		{"/system.slice/docker-" + idA + ".scope", []string{idA}},
		{"/system.slice/docker-" + idA + ".scope/init.scope", []string{idA}},
		{"/custom-parent/" + idA, []string{idA}},
		// docker-in-docker: the inner container first, then the outer one.
		{"/docker/" + idA + "/docker/" + idB, []string{idB, idA}},
		{"/", nil},
		{"/user.slice/user-0.slice/session-1.scope", nil},
		{"/system.slice/docker.service", nil},
		{"/docker/" + strings.ToUpper(idA), nil},                 // ids are lowercase
		{"/docker/" + idA[:63], nil},                             // too short
		{"/docker/docker-" + idA, nil},                           // prefix without .scope
		{"/docker/" + idA + ".scope", nil},                       // suffix without prefix
		{"/kubepods/pod1/cri-containerd-" + idC + ".scope", nil}, // not docker's
	} {
		got := containerIDsInPath(tc.path)
		if !slices.Equal(got, tc.want) {
			t.Errorf("containerIDsInPath(%q) = %v, want %v", tc.path, got, tc.want)
		}
	}
}

func TestContainerCgroup(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ path, id, want string }{
		{"/docker/" + idA, idA, "/docker/" + idA},
		{"/docker/" + idA + "/sub/x", idA, "/docker/" + idA},
		{"/system.slice/docker-" + idA + ".scope/init", idA, "/system.slice/docker-" + idA + ".scope"},
		{"/docker/" + idA + "/docker/" + idB, idA, "/docker/" + idA},
	} {
		if got := containerCgroup(tc.path, tc.id); got != tc.want {
			t.Errorf("containerCgroup(%q, %s) = %q, want %q", tc.path, tc.id[:4], got, tc.want)
		}
	}
}

func TestUnderPath(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		p, dir string
		want   bool
	}{
		{"/docker/a", "/docker/a", true},
		{"/docker/a/b", "/docker/a", true},
		{"/docker/ab", "/docker/a", false},
		{"/docker", "/docker/a", false},
		{"/docker/a", "", false},
	} {
		if got := underPath(tc.p, tc.dir); got != tc.want {
			t.Errorf("underPath(%q, %q) = %v, want %v", tc.p, tc.dir, got, tc.want)
		}
	}
}

// offlineIndex is an Index whose engine is never reached: for the pure
// bookkeeping tests.
func offlineIndex(t *testing.T, cfg Config) (*Index, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	if cfg.Host == "" {
		cfg.Host = "unix:///nonexistent/pdr-test.sock"
	}
	if cfg.CgroupRoot == "" {
		cfg.CgroupRoot = t.TempDir()
	}
	x, err := New(cfg, zaptest.NewLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = x.Close() })
	return x, reg
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestFromInspect(t *testing.T) {
	t.Parallel()
	x, _ := offlineIndex(t, Config{})
	self := os.Getpid() // a live pid whose cgroup does not name the container
	base := func(id, name string, mode container.NetworkMode, nets map[string]*network.EndpointSettings) container.InspectResponse {
		return container.InspectResponse{
			ContainerJSONBase: &container.ContainerJSONBase{
				ID: id, Name: "/" + name,
				State:      &container.State{Running: true, Pid: self},
				HostConfig: &container.HostConfig{NetworkMode: mode},
			},
			Config:          &container.Config{Labels: map[string]string{"role": name}},
			NetworkSettings: &container.NetworkSettings{Networks: nets},
		}
	}
	for _, tc := range []struct {
		name     string
		in       container.InspectResponse
		ok       bool
		wantIPs  []netip.Addr
		wantHost bool
	}{
		{
			name: "bridge v4 and v6 on two networks",
			in: base(idA, "a", "bridge", map[string]*network.EndpointSettings{
				"bridge": {IPAddress: "172.17.0.5", GlobalIPv6Address: "fd00:1::5"},
				"other":  {IPAddress: "10.99.0.3"},
				"nil":    nil,
			}),
			ok:      true,
			wantIPs: []netip.Addr{mustAddr("10.99.0.3"), mustAddr("172.17.0.5"), mustAddr("fd00:1::5")},
		},
		{
			name:     "host network has no IPs",
			in:       base(idA, "h", "host", map[string]*network.EndpointSettings{"host": {}}),
			ok:       true,
			wantHost: true,
		},
		{
			name: "container: sharer gets none of the owner's IPs",
			in: base(idA, "s", container.NetworkMode("container:"+idB), map[string]*network.EndpointSettings{
				"bridge": {IPAddress: "172.17.0.9"},
			}),
			ok: true,
		},
		{
			name: "not running",
			in: func() container.InspectResponse {
				r := base(idA, "x", "bridge", nil)
				r.State.Running = false
				return r
			}(),
		},
		{
			name: "pid 0",
			in: func() container.InspectResponse {
				r := base(idA, "x", "bridge", nil)
				r.State.Pid = 0
				return r
			}(),
		},
		{
			name: "exited",
			in: func() container.InspectResponse {
				r := base(idA, "x", "bridge", map[string]*network.EndpointSettings{"bridge": {IPAddress: "172.17.0.5"}})
				r.State.Running, r.State.Pid, r.State.Status = false, 0, "exited"
				return r
			}(),
		},
		{
			// The start-up race: the process already runs, dockerd has
			// not recorded it; network and labels are there already.
			name: "starting (created, no pid yet)",
			in: func() container.InspectResponse {
				r := base(idA, "starting", "bridge", map[string]*network.EndpointSettings{"bridge": {IPAddress: "172.17.0.7"}})
				r.State.Running, r.State.Pid, r.State.Status = false, 0, "created"
				return r
			}(),
			ok:      true,
			wantIPs: []netip.Addr{mustAddr("172.17.0.7")},
		},
		{name: "empty response", in: container.InspectResponse{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, ok := x.fromInspect(tc.in)
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v", ok, tc.ok)
			}
			if !ok {
				return
			}
			c := e.c
			if !slices.Equal(c.IPs, tc.wantIPs) {
				t.Errorf("IPs = %v, want %v", c.IPs, tc.wantIPs)
			}
			if c.HostNetwork != tc.wantHost {
				t.Errorf("HostNetwork = %v, want %v", c.HostNetwork, tc.wantHost)
			}
			if strings.HasPrefix(c.Name, "/") || c.Labels["role"] != c.Name {
				t.Errorf("Name %q / labels %v", c.Name, c.Labels)
			}
			// Our own pid's cgroup does not name the container: no cgroup
			// identity, and no liveness check on it.
			if c.CgroupID != 0 || c.CgroupPath != "" || e.checkLive {
				t.Errorf("cgroup = %d %q live=%v, want none", c.CgroupID, c.CgroupPath, e.checkLive)
			}
		})
	}
}

func testEntry(id, name string, cg uint64, ips ...string) *entry {
	c := Container{ID: id, Name: name, CgroupID: cg, CgroupPath: "/docker/" + id, Labels: map[string]string{"n": name}}
	for _, s := range ips {
		c.IPs = append(c.IPs, mustAddr(s))
	}
	return &entry{c: c}
}

func TestIndexBookkeeping(t *testing.T) {
	t.Parallel()
	var started, removed []string
	x, reg := offlineIndex(t, Config{
		OnStart:  func(c Container) { started = append(started, c.Name) },
		OnRemove: func(c Container) { removed = append(removed, c.Name) },
	})
	ctx := context.Background()

	if !x.upsert(testEntry(idA, "a", 101, "172.17.0.2", "fd00::2"), x.version) {
		t.Fatal("upsert a refused")
	}
	if !x.upsert(testEntry(idB, "b", 102, "172.17.0.3"), x.version) {
		t.Fatal("upsert b refused")
	}
	if got := metricValue(t, reg, "pdr_index_containers", nil); got != 2 {
		t.Errorf("pdr_index_containers = %v, want 2", got)
	}
	if c, ok := x.lookupIP(mustAddr("172.17.0.2")); !ok || c.ID != idA {
		t.Errorf("lookupIP(a) = %v %v", c.ID, ok)
	}
	if c, ok := x.lookupIP(mustAddr("fd00::2")); !ok || c.ID != idA {
		t.Errorf("lookupIP(a v6) = %v %v", c.ID, ok)
	}
	if c, ok, err := x.ByCgroupID(ctx, 102); err != nil || !ok || c.ID != idB {
		t.Errorf("ByCgroupID(102) = %v %v %v", c.ID, ok, err)
	}

	// Values handed out are copies: changing them does not change the index.
	c, _, _ := x.ByID(ctx, idA)
	c.Labels["n"] = "changed"
	c.IPs[0] = mustAddr("1.2.3.4")
	if c2, _, _ := x.ByID(ctx, idA); c2.Labels["n"] != "a" || c2.IPs[0] != mustAddr("172.17.0.2") {
		t.Errorf("index changed through a returned value: %+v", c2)
	}

	// Re-upsert (rename, network change) replaces every entry atomically.
	x.upsert(testEntry(idA, "a2", 101, "172.17.0.4"), x.version)
	if _, ok := x.lookupIP(mustAddr("172.17.0.2")); ok {
		t.Error("old IP still maps after update")
	}
	if c, ok := x.lookupIP(mustAddr("172.17.0.4")); !ok || c.Name != "a2" {
		t.Errorf("new IP: %v %v", c.Name, ok)
	}

	// Two live containers claiming one address: identify neither.
	x.upsert(testEntry(idC, "c", 103, "172.17.0.3"), x.version)
	if c, ok := x.lookupIP(mustAddr("172.17.0.3")); ok {
		t.Errorf("ambiguous address resolved to %s", c.Name)
	}

	// A removal wins over an inspect that began before it.
	v0 := x.version
	x.remove(idB, "die")
	if x.upsert(testEntry(idB, "b", 102, "172.17.0.3"), v0) {
		t.Error("stale upsert after removal accepted")
	}
	if c, ok := x.lookupIP(mustAddr("172.17.0.3")); !ok || c.ID != idC {
		t.Errorf("after b removed, 172.17.0.3 = %v %v, want c", c.Name, ok)
	}
	// ... but an inspect that began after it (a restart) is accepted.
	if !x.upsert(testEntry(idB, "b", 102, "172.17.0.3"), x.version) {
		t.Error("fresh upsert after removal refused")
	}

	for _, id := range []string{idA, idB, idC} {
		x.remove(id, "test")
	}
	x.remove(idA, "twice") // idempotent
	x.mu.RLock()
	sizes := []int{len(x.byID), len(x.byIP), len(x.byCg), len(x.subCg)}
	x.mu.RUnlock()
	if !slices.Equal(sizes, []int{0, 0, 0, 0}) {
		t.Errorf("maps not empty after removing all: %v", sizes)
	}
	if want := []string{"a", "b", "c", "b"}; !slices.Equal(started, want) {
		t.Errorf("OnStart calls = %v, want %v", started, want)
	}
	if want := []string{"b", "a2", "b", "c"}; !slices.Equal(removed, want) {
		t.Errorf("OnRemove calls = %v, want %v", removed, want)
	}
	if got := metricValue(t, reg, "pdr_index_containers", nil); got != 0 {
		t.Errorf("pdr_index_containers = %v after removing all, want 0", got)
	}
}

func TestHandleDropsDeadContainers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		action events.Action
		attrs  map[string]string
		drop   bool
	}{
		{events.ActionDie, nil, true},
		{events.ActionStop, nil, true},
		{events.ActionDestroy, nil, true},
		{events.ActionKill, map[string]string{"signal": "9"}, true},
		{events.ActionKill, map[string]string{"signal": "15"}, false}, // may be handled; die follows if not
		{events.ActionKill, map[string]string{"signal": "1"}, false},
		{events.ActionPause, nil, false},
		{events.ActionCreate, nil, false},
	} {
		t.Run(string(tc.action)+tc.attrs["signal"], func(t *testing.T) {
			t.Parallel()
			x, reg := offlineIndex(t, Config{})
			x.upsert(testEntry(idA, "a", 7, "172.17.0.2"), x.version)
			x.handle(context.Background(), events.Message{
				Type: events.ContainerEventType, Action: tc.action,
				Actor: events.Actor{ID: idA, Attributes: tc.attrs},
			})
			_, still := x.lookupIP(mustAddr("172.17.0.2"))
			if still == tc.drop {
				t.Errorf("after %s %v: still indexed = %v", tc.action, tc.attrs, still)
			}
			if got := metricValue(t, reg, "pdr_docker_events_total", map[string]string{"action": actionLabel(tc.action)}); got != 1 {
				t.Errorf("events metric = %v, want 1", got)
			}
		})
	}
}

func TestByCgroupIDHostProcessAndNegativeCache(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	if err := os.MkdirAll(root+"/user.slice/session-1.scope", 0o755); err != nil {
		t.Fatal(err)
	}
	x, _ := offlineIndex(t, Config{CgroupRoot: root})
	st, err := os.Stat(root + "/user.slice/session-1.scope")
	if err != nil {
		t.Fatal(err)
	}
	id := inode(t, st)
	for _, probe := range []uint64{id, 1 << 62} { // a host cgroup, and an id that exists nowhere
		c, ok, err := x.ByCgroupID(context.Background(), probe)
		if err != nil || ok {
			t.Errorf("ByCgroupID(%d) = %v %v %v, want host process (false, nil)", probe, c.ID, ok, err)
		}
		x.mu.RLock()
		_, cached := x.negCg[probe]
		x.mu.RUnlock()
		if !cached {
			t.Errorf("cgroup %d not in the negative cache", probe)
		}
	}
}

func inode(t *testing.T, fi os.FileInfo) uint64 {
	t.Helper()
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		t.Fatalf("no inode for %s", fi.Name())
	}
	return st.Ino
}
