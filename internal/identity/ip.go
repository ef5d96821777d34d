package identity

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/per-docker-roles/per-docker-roles/internal/docker"
)

// IPIndex is what the IP strategy needs from the container index.
type IPIndex interface {
	Synced() bool
	ByIP(ctx context.Context, addr netip.Addr) (docker.Container, bool)
}

// IPConfig configures the source-IP strategy.
type IPConfig struct {
	// HostAddrs returns the host's own addresses. Nil means the addresses
	// of every interface (net.InterfaceAddrs).
	HostAddrs func() ([]netip.Addr, error)
	// Refresh is how long the host's addresses are cached. Zero means 30s.
	// A peer that matches nothing also refreshes them, at most once per
	// MinRefresh, so a bridge created a moment ago is recognised.
	Refresh time.Duration
	// MinRefresh bounds refreshes caused by misses. Zero means 1s.
	MinRefresh time.Duration
}

// IP identifies callers by their source address: loopback and the host's
// own addresses are host processes; an address a container holds is that
// container. It is the fallback strategy: it cannot tell apart containers
// that share a network namespace (--network container:<id>: the owner is
// reported), it sees host-network containers as the host, and it trusts
// the source address, which a container can spoof on its bridge.
type IP struct {
	idx IPIndex
	cfg IPConfig
	now func() time.Time

	mu      sync.Mutex
	host    map[netip.Addr]bool
	fetched time.Time // when host was last refreshed (zero: never)
}

// NewIP returns the source-IP strategy over idx.
func NewIP(idx IPIndex, cfg IPConfig) *IP {
	if cfg.HostAddrs == nil {
		cfg.HostAddrs = interfaceAddrs
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 30 * time.Second
	}
	if cfg.MinRefresh <= 0 {
		cfg.MinRefresh = time.Second
	}
	return &IP{idx: idx, cfg: cfg, now: time.Now}
}

// Identify maps the peer's address to a caller. It returns ErrNotSynced
// until the index has completed its first sync.
func (s *IP) Identify(ctx context.Context, peer, local netip.AddrPort) (Caller, error) {
	if !s.idx.Synced() {
		return Caller{}, ErrNotSynced
	}
	addr := peer.Addr().Unmap().WithZone("") // host addresses are stored without zones
	caller := Caller{Kind: KindUnknown, Peer: netip.AddrPortFrom(addr, peer.Port())}
	if addr.IsLoopback() || s.isHost(addr, s.cfg.Refresh) {
		caller.Kind = KindHost
		return caller, nil
	}
	if c, ok := s.idx.ByIP(ctx, addr); ok {
		caller.Kind = KindContainer
		caller.CgroupID = c.CgroupID
		caller.Container = c
		return caller, nil
	}
	// Nobody we know: perhaps an address the host gained since the last
	// refresh (a new bridge's gateway).
	if s.isHost(addr, s.cfg.MinRefresh) {
		caller.Kind = KindHost
	}
	return caller, nil
}

// isHost reports whether addr is one of the host's addresses, refreshing
// them first when they are older than maxAge.
func (s *IP) isHost(addr netip.Addr, maxAge time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now := s.now(); s.fetched.IsZero() || now.Sub(s.fetched) >= maxAge {
		s.fetched = now
		if addrs, err := s.cfg.HostAddrs(); err == nil {
			s.host = make(map[netip.Addr]bool, len(addrs))
			for _, a := range addrs {
				s.host[a.Unmap()] = true
			}
		}
		// On error keep the last good set: failing to list interfaces must
		// not turn host processes into strangers.
	}
	return s.host[addr]
}

func interfaceAddrs() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("list host addresses: %w", err)
	}
	out := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().WithZone(""))
		}
	}
	return out, nil
}
