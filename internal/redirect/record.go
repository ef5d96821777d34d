package redirect

import (
	"errors"
	"net/netip"
)

// Record is what the kernel remembered about one redirected connection.
type Record struct {
	CgroupID    uint64         // bpf_get_current_cgroup_id() of the connecting task
	NetnsCookie uint64         // bpf_get_netns_cookie() of its socket
	HostNetns   bool           // NetnsCookie equals the host's
	OrigDst     netip.AddrPort // what the application dialled
	// Target is the proxy address the kernel sent the connection to
	// (IPv4 unmapped): the proxy can check it equals the address it
	// accepted on.
	Target netip.AddrPort
}

// ErrNoRecord means the kernel holds no record for that peer address.
var ErrNoRecord = errors.New("no redirect record")
