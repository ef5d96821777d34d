package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

const (
	// DefaultPinDir is where programs, links and maps are pinned so they
	// outlive the daemon.
	DefaultPinDir = "/sys/fs/bpf/per-docker-roles"
	// DefaultInterface is the dummy interface that carries the address
	// callers in other network namespaces are sent to.
	DefaultInterface = "pdr0"
)

var (
	// DefaultNSAddr is the address that callers outside the host network
	// namespace are redirected to. It is link-local (RFC 3927: never
	// forwarded by routers, so it is not reachable from beyond the host's
	// own links) and AWS uses none of 169.254.170.254: its services sit on
	// 169.254.169.254 (IMDS), .169.253 (DNS), .169.123 (NTP), .170.2 (ECS
	// credentials) and .170.23 (EKS Pod Identity). A bridge gateway would
	// also be reachable, but differs per network; and host-network callers
	// dialling it are MASQUERADEd (DESIGN.md §4), which is why host callers
	// use loopback instead.
	DefaultNSAddr = netip.MustParseAddr("169.254.170.254")
	// DefaultGuardAddr is where aws_signing_helper serve listens: only
	// exempt cgroups may connect to it.
	DefaultGuardAddr = netip.MustParseAddrPort("127.0.0.1:9911")
)

// Config says where to attach and where to send metadata connections.
type Config struct {
	// CgroupPath is the cgroup2 directory the programs attach to; they
	// apply to every process in it and below. "" = the cgroup2 root.
	CgroupPath string
	// PinDir is the bpffs directory for pins; "" = DefaultPinDir.
	PinDir string

	// HostTarget receives IPv4 callers in the host network namespace,
	// normally 127.0.0.1:<port>. Required.
	HostTarget netip.AddrPort
	// NSTarget receives IPv4 callers in other network namespaces
	// (containers), e.g. 169.254.170.254:<port>. Invalid (zero) = refuse
	// them.
	NSTarget netip.AddrPort
	// HostTarget6 receives IPv6 callers (fd00:ec2::254) in the host
	// namespace, normally [::1]:<port>. Zero = refuse them.
	HostTarget6 netip.AddrPort
	// NSTarget6 receives IPv6 callers in other namespaces. Zero = refuse
	// them (Docker's default bridge has no IPv6; see doc.go).
	NSTarget6 netip.AddrPort

	// Interface is the dummy interface the redirector creates to carry
	// NSTarget's (and NSTarget6's) address; "" = DefaultInterface.
	Interface string
	// NoInterface leaves interfaces alone: the operator provides
	// NSTarget's address.
	NoInterface bool

	// ExemptCgroups are cgroup ids whose connections are never redirected
	// or guarded. nil = the calling process's own cgroup (the daemon, so
	// it reaches the real IMDS or the helper upstream); an empty non-nil
	// slice exempts nobody.
	ExemptCgroups []uint64
	// GuardAddrs are the upstream helper addresses that only exempt
	// cgroups may connect to. nil = DefaultGuardAddr; empty non-nil =
	// no guard. The guard applies to every cgroup under CgroupPath,
	// including host processes when attached at the root.
	GuardAddrs []netip.AddrPort
}

// withDefaults fills in the documented defaults.
func (c Config) withDefaults() Config {
	if c.PinDir == "" {
		c.PinDir = DefaultPinDir
	}
	if c.Interface == "" {
		c.Interface = DefaultInterface
	}
	if c.GuardAddrs == nil {
		c.GuardAddrs = []netip.AddrPort{DefaultGuardAddr}
	}
	return c
}

// ErrInvalidConfig is wrapped by Validate's errors.
var ErrInvalidConfig = errors.New("invalid redirect config")

// Validate reports the first problem in c (after defaults).
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	if !c.HostTarget.IsValid() || !c.HostTarget.Addr().Is4() || c.HostTarget.Port() == 0 {
		return bad("host target %s must be an IPv4 address with a port", c.HostTarget)
	}
	if c.NSTarget.IsValid() && (!c.NSTarget.Addr().Is4() || c.NSTarget.Port() == 0 || c.NSTarget.Addr().IsLoopback()) {
		return bad("namespace target %s must be a non-loopback IPv4 address with a port", c.NSTarget)
	}
	if c.HostTarget6.IsValid() && (!c.HostTarget6.Addr().Is6() || c.HostTarget6.Addr().Is4In6() || c.HostTarget6.Port() == 0) {
		return bad("IPv6 host target %s must be an IPv6 address with a port", c.HostTarget6)
	}
	if c.NSTarget6.IsValid() && (!c.NSTarget6.Addr().Is6() || c.NSTarget6.Addr().Is4In6() || c.NSTarget6.Port() == 0 || c.NSTarget6.Addr().IsLoopback()) {
		return bad("IPv6 namespace target %s must be a non-loopback IPv6 address with a port", c.NSTarget6)
	}
	for _, g := range c.GuardAddrs {
		if !g.IsValid() || g.Port() == 0 {
			return bad("guard address %s needs an address and a port", g)
		}
	}
	if strings.ContainsAny(c.Interface, "/ \t\n") || len(c.Interface) > 15 {
		return bad("interface name %q", c.Interface)
	}
	if len(c.ExemptCgroups) > 256 || len(c.GuardAddrs) > 64 {
		return bad("at most 256 exempt cgroups and 64 guard addresses")
	}
	return nil
}

// Counters are the kernel's event counts, summed over CPUs. They are kept
// in a pinned map, so they count across daemon restarts.
type Counters struct {
	Redirected   uint64 // metadata connections sent to the proxy
	Exempt       uint64 // metadata connections from exempt cgroups, untouched
	Refused      uint64 // metadata connections refused: no target (fail closed)
	GuardRefused uint64 // upstream-helper connections refused
	Recorded     uint64 // records published for the proxy
	Conflict     uint64 // local addresses claimed by two sockets (both refused)
	Peername     uint64 // getpeername answers rewritten to the dialled address
}

// LinkStatus describes one pinned attachment.
type LinkStatus struct {
	Name       string // pin name, e.g. "link_connect4"
	Attached   bool
	LinkID     uint32
	ProgramID  uint32
	ProgramTag string
	CgroupID   uint64
	Err        string // why it could not be read, if it could not
}

// Status is what ReadStatus finds in a pin directory.
type Status struct {
	PinDir          string
	Links           []LinkStatus
	HostNetnsCookie uint64
	HostTarget      netip.AddrPort // zero: refusing (fail closed)
	NSTarget        netip.AddrPort
	HostTarget6     netip.AddrPort
	NSTarget6       netip.AddrPort
	Exempt          []uint64
	Guard           []netip.AddrPort
	PendingRecords  int // records not yet looked up by the proxy
	Counters        Counters
}

// Configured reports whether any target is set (the redirect is live).
func (s Status) Configured() bool {
	return s.HostTarget.IsValid() || s.NSTarget.IsValid() || s.HostTarget6.IsValid() || s.NSTarget6.IsValid()
}

// String renders the status for `per-docker-roles bpf status`.
func (s Status) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "pin dir: %s\n", s.PinDir)
	for _, l := range s.Links {
		switch {
		case l.Err != "":
			fmt.Fprintf(&b, "  %-18s error: %s\n", l.Name, l.Err)
		case l.Attached:
			fmt.Fprintf(&b, "  %-18s attached: link %d, program %d (tag %s), cgroup %d\n", l.Name, l.LinkID, l.ProgramID, l.ProgramTag, l.CgroupID)
		default:
			fmt.Fprintf(&b, "  %-18s not attached\n", l.Name)
		}
	}
	state := "refusing metadata connections (no target: fail closed)"
	if s.Configured() {
		state = "redirecting"
	}
	fmt.Fprintf(&b, "state: %s\n", state)
	show := func(name string, a netip.AddrPort) {
		v := "-"
		if a.IsValid() {
			v = a.String()
		}
		fmt.Fprintf(&b, "  %-13s %s\n", name, v)
	}
	show("host target:", s.HostTarget)
	show("ns target:", s.NSTarget)
	show("host target6:", s.HostTarget6)
	show("ns target6:", s.NSTarget6)
	fmt.Fprintf(&b, "host netns cookie: %d\n", s.HostNetnsCookie)
	fmt.Fprintf(&b, "exempt cgroups: %v\n", s.Exempt)
	fmt.Fprintf(&b, "guarded: %v\n", s.Guard)
	fmt.Fprintf(&b, "pending records: %d\n", s.PendingRecords)
	c := s.Counters
	fmt.Fprintf(&b, "counters: redirected=%d exempt=%d refused=%d guard_refused=%d recorded=%d conflict=%d getpeername=%d\n",
		c.Redirected, c.Exempt, c.Refused, c.GuardRefused, c.Recorded, c.Conflict, c.Peername)
	return b.String()
}

// ErrConflict means two sockets (in different network namespaces) claimed
// the same local address and port, so the proxy cannot tell which one it
// accepted; both are refused. It wraps ErrNoRecord.
var ErrConflict = fmt.Errorf("address claimed by two sockets: %w", ErrNoRecord)

// ErrUnsupported is returned on systems without the eBPF redirect.
var ErrUnsupported = errors.New("eBPF redirect is only supported on Linux")
