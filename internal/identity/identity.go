// Package identity turns an accepted connection into the caller behind it: a
// container (with its labels), a host process, or nobody we know. Strategies
// (source IP, cgroup id from the eBPF redirect) plug in behind Strategy.
package identity

import (
	"context"
	"errors"
	"net/netip"

	"github.com/per-docker-roles/per-docker-roles/internal/docker"
)

// Kind says what sort of process a Caller is.
type Kind int

const (
	// KindUnknown is a caller that maps to no container and is not a host
	// process (for example an IP no container holds).
	KindUnknown Kind = iota
	// KindContainer is a process inside a Docker container (including
	// host-network containers when the strategy can tell them apart).
	KindContainer
	// KindHost is a process in the host itself, outside any container.
	KindHost
)

func (k Kind) String() string {
	switch k {
	case KindContainer:
		return "container"
	case KindHost:
		return "host"
	default:
		return "unknown"
	}
}

// Caller is the identity of the process on the other end of a connection,
// resolved once when the connection is accepted.
type Caller struct {
	Kind      Kind
	Peer      netip.AddrPort   // the remote address the proxy saw
	CgroupID  uint64           // 0 when the strategy does not know it
	Container docker.Container // valid only when Kind == KindContainer
}

// Key is the stable identity that IMDS tokens are bound to: a token minted
// for one Key is refused when presented under another.
func (c Caller) Key() string {
	switch c.Kind {
	case KindContainer:
		return "container:" + c.Container.ID
	case KindHost:
		return "host"
	default:
		return "peer:" + c.Peer.Addr().String()
	}
}

// Strategy resolves the peer of an accepted connection to a Caller. local
// is the address the connection was accepted on.
type Strategy interface {
	Identify(ctx context.Context, peer, local netip.AddrPort) (Caller, error)
}

var (
	// ErrNotSynced means the container index has never completed a sync:
	// the proxy cannot tell who is asking and must answer 503, never guess.
	ErrNotSynced = errors.New("container index not synced yet")
	// ErrNoRecord means the cgroup strategy found no redirect record for
	// the peer: the connection did not come through the eBPF redirect
	// (answer 403).
	ErrNoRecord = errors.New("no redirect record for connection")
)
