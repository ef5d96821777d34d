package identity

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/per-docker-roles/per-docker-roles/internal/docker"
	"github.com/per-docker-roles/per-docker-roles/internal/redirect"
)

// RecordLookup is what the cgroup strategy needs from the eBPF redirect:
// the record of the redirected connection whose client address is peer
// (deleted on lookup). *redirect.Redirector implements it.
type RecordLookup interface {
	Lookup(peer netip.AddrPort) (redirect.Record, error)
}

// CgroupIndex is what the cgroup strategy needs from the container index.
type CgroupIndex interface {
	Synced() bool
	// ByCgroupID returns the container whose cgroup (or an ancestor of
	// it, for sub-cgroups made inside a container) has this id.
	ByCgroupID(ctx context.Context, id uint64) (docker.Container, bool, error)
}

// Cgroup identifies callers by the cgroup id the kernel recorded when they
// dialled the metadata address. Unlike the source-IP strategy it tells
// apart containers that share a network namespace, identifies
// host-network containers, and cannot be fooled by a spoofed source
// address: a connection without a record is refused, never guessed at.
type Cgroup struct {
	rec RecordLookup
	idx CgroupIndex
}

// NewCgroup returns the cgroup strategy.
func NewCgroup(rec RecordLookup, idx CgroupIndex) *Cgroup {
	return &Cgroup{rec: rec, idx: idx}
}

// Identify resolves an accepted connection. ErrNotSynced until the index
// has synced; ErrNoRecord when the connection did not come through the
// redirect (or two sockets claimed its address, or it arrived on another
// address than the kernel sent it to).
func (s *Cgroup) Identify(ctx context.Context, peer, local netip.AddrPort) (Caller, error) {
	if !s.idx.Synced() {
		return Caller{}, ErrNotSynced
	}
	peer = unmap(peer)
	rec, err := s.rec.Lookup(peer)
	if errors.Is(err, redirect.ErrNoRecord) {
		return Caller{}, fmt.Errorf("peer %s: %w: %w", peer, ErrNoRecord, err)
	}
	if err != nil {
		return Caller{}, fmt.Errorf("identify peer %s: %w", peer, err)
	}
	// The kernel sent this connection to rec.Target. One arriving on
	// another proxy address with the same source (a host on the LAN
	// routing to the link-local target with a forged source) is not the
	// one the record describes.
	if local.IsValid() && rec.Target.IsValid() && unmap(local) != unmap(rec.Target) {
		return Caller{}, fmt.Errorf("peer %s reached %s, redirected to %s: %w", peer, local, rec.Target, ErrNoRecord)
	}
	caller := Caller{Kind: KindHost, Peer: peer, CgroupID: rec.CgroupID}
	c, ok, err := s.idx.ByCgroupID(ctx, rec.CgroupID)
	if err != nil {
		return Caller{}, fmt.Errorf("identify cgroup %d (peer %s): %w", rec.CgroupID, peer, err)
	}
	switch {
	case ok:
		caller.Kind = KindContainer
		caller.Container = c
	case !rec.HostNetns:
		// Not a container's cgroup, yet not in the host's network
		// namespace: a process that left its container's cgroup (possible
		// with CAP_SYS_ADMIN in the host cgroup namespace) or a foreign
		// namespace. Host-caller rights belong to the host namespace only.
		caller.Kind = KindUnknown
	}
	return caller, nil
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}
