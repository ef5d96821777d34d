package identity

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/per-docker-roles/per-docker-roles/internal/docker"
)

// fakeIPIndex is an IPIndex over a fixed map.
type fakeIPIndex struct {
	synced bool
	mu     sync.Mutex
	byIP   map[netip.Addr]docker.Container
	asked  []netip.Addr
}

func (f *fakeIPIndex) Synced() bool { return f.synced }

func (f *fakeIPIndex) ByIP(_ context.Context, a netip.Addr) (docker.Container, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, a)
	c, ok := f.byIP[a]
	return c, ok
}

// fakeHost serves a changeable list of host addresses and counts calls.
type fakeHost struct {
	mu    sync.Mutex
	addrs []netip.Addr
	err   error
	calls int
}

func (h *fakeHost) get() ([]netip.Addr, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls++
	return h.addrs, h.err
}

func (h *fakeHost) set(addrs []netip.Addr, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.addrs, h.err = addrs, err
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
func ip(s string) netip.Addr     { return netip.MustParseAddr(s) }

func TestIPIdentify(t *testing.T) {
	t.Parallel()
	web := docker.Container{ID: "aaaa", Name: "web", CgroupID: 42, Labels: map[string]string{"role": "web"}}
	v6 := docker.Container{ID: "bbbb", Name: "v6"}
	idx := &fakeIPIndex{synced: true, byIP: map[netip.Addr]docker.Container{
		ip("172.17.0.2"): web,
		ip("fd00:1::2"):  v6,
	}}
	host := &fakeHost{addrs: []netip.Addr{ip("192.0.2.10"), ip("172.17.0.1"), ip("2001:db8::10")}}
	s := NewIP(idx, IPConfig{HostAddrs: host.get})
	local := ap("172.17.0.1:80")

	for _, tc := range []struct {
		name string
		peer string
		kind Kind
		id   string
		want string // peer as reported (unmapped)
	}{
		{"container v4", "172.17.0.2:40000", KindContainer, "aaaa", "172.17.0.2:40000"},
		{"container v4-mapped v6", "[::ffff:172.17.0.2]:40000", KindContainer, "aaaa", "172.17.0.2:40000"},
		{"container v6", "[fd00:1::2]:5000", KindContainer, "bbbb", "[fd00:1::2]:5000"},
		{"loopback v4", "127.0.0.1:1234", KindHost, "", "127.0.0.1:1234"},
		{"loopback other", "127.3.2.1:1234", KindHost, "", "127.3.2.1:1234"},
		{"loopback v6", "[::1]:1234", KindHost, "", "[::1]:1234"},
		{"loopback v4-mapped", "[::ffff:127.0.0.1]:1234", KindHost, "", "127.0.0.1:1234"},
		{"host address", "192.0.2.10:999", KindHost, "", "192.0.2.10:999"},
		{"bridge gateway is the host", "172.17.0.1:999", KindHost, "", "172.17.0.1:999"},
		{"host v6", "[2001:db8::10]:999", KindHost, "", "[2001:db8::10]:999"},
		{"stranger", "172.17.0.99:1", KindUnknown, "", "172.17.0.99:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := s.Identify(context.Background(), ap(tc.peer), local)
			if err != nil {
				t.Fatal(err)
			}
			if c.Kind != tc.kind || c.Container.ID != tc.id || c.Peer != ap(tc.want) {
				t.Errorf("Identify(%s) = %v %q peer %s, want %v %q peer %s", tc.peer, c.Kind, c.Container.ID, c.Peer, tc.kind, tc.id, tc.want)
			}
			if tc.kind == KindContainer && tc.id == "aaaa" && (c.CgroupID != 42 || c.Container.Labels["role"] != "web") {
				t.Errorf("container fields not carried: %+v", c)
			}
		})
	}
}

func TestIPNotSynced(t *testing.T) {
	t.Parallel()
	idx := &fakeIPIndex{synced: false}
	s := NewIP(idx, IPConfig{HostAddrs: (&fakeHost{}).get})
	for _, peer := range []string{"127.0.0.1:1", "172.17.0.2:1"} {
		if _, err := s.Identify(context.Background(), ap(peer), ap("127.0.0.1:80")); !errors.Is(err, ErrNotSynced) {
			t.Errorf("Identify(%s) before sync: err = %v, want ErrNotSynced", peer, err)
		}
	}
	if len(idx.asked) != 0 {
		t.Errorf("index asked %v before it synced", idx.asked)
	}
}

func TestIPHostAddressRefresh(t *testing.T) {
	t.Parallel()
	idx := &fakeIPIndex{synced: true, byIP: map[netip.Addr]docker.Container{}}
	host := &fakeHost{addrs: []netip.Addr{ip("192.0.2.10")}}
	s := NewIP(idx, IPConfig{HostAddrs: host.get, Refresh: time.Minute, MinRefresh: time.Second})
	now := time.Unix(1_000_000, 0)
	s.now = func() time.Time { return now }
	ctx := context.Background()
	kind := func(peer string) Kind {
		t.Helper()
		c, err := s.Identify(ctx, ap(peer), ap("127.0.0.1:80"))
		if err != nil {
			t.Fatal(err)
		}
		return c.Kind
	}

	if k := kind("192.0.2.10:1"); k != KindHost {
		t.Fatalf("host address = %v", k)
	}
	// A new bridge appears: its gateway is recognised on the first miss
	// after MinRefresh, not only after the full Refresh period.
	host.set([]netip.Addr{ip("192.0.2.10"), ip("10.200.0.1")}, nil)
	if k := kind("10.200.0.1:1"); k != KindUnknown {
		t.Errorf("within MinRefresh: %v, want unknown (cached)", k)
	}
	now = now.Add(2 * time.Second)
	if k := kind("10.200.0.1:1"); k != KindHost {
		t.Errorf("after MinRefresh: %v, want host", k)
	}
	// Strangers cannot make us list interfaces more than once per MinRefresh.
	before := host.calls
	for range 100 {
		kind("10.9.9.9:1")
	}
	if host.calls != before {
		t.Errorf("%d host address refreshes for 100 misses within MinRefresh", host.calls-before)
	}
	// A failed refresh keeps the last good set.
	host.set(nil, errors.New("netlink down"))
	now = now.Add(2 * time.Minute)
	if k := kind("192.0.2.10:1"); k != KindHost {
		t.Errorf("after failed refresh: %v, want host", k)
	}
	// Removed addresses stop being the host after a refresh.
	host.set([]netip.Addr{ip("10.200.0.1")}, nil)
	now = now.Add(2 * time.Minute)
	if k := kind("192.0.2.10:1"); k != KindUnknown {
		t.Errorf("removed host address: %v, want unknown", k)
	}
}

func TestIPRealInterfaces(t *testing.T) {
	t.Parallel()
	addrs, err := interfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, a := range addrs {
		if a.IsLoopback() {
			found = true
		}
		if a.Zone() != "" {
			t.Errorf("address %s keeps its zone", a)
		}
	}
	if !found {
		t.Errorf("no loopback among the host's addresses %v", addrs)
	}
}
