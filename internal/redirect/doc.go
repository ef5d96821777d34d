// Package redirect loads and manages the eBPF programs that send
// connections for the instance metadata address to the local proxy and
// remember which cgroup made each one (DESIGN.md §3; C source in bpf/).
//
// # What the kernel does
//
// cgroup/connect4 and cgroup/connect6 see every connect() under the attach
// point. A TCP connection to 169.254.169.254:80 (or [fd00:ec2::254]:80, or
// [::ffff:169.254.169.254]:80 from an IPv6 socket) is rewritten to the
// proxy, and {cgroup id, netns cookie, original destination, target} is
// stored under the socket cookie. sockops (TCP_CONNECT_CB) files that
// record under the client's local address and port, which is the peer the
// proxy sees on accept; [Redirector.Lookup] reads and deletes it. When the
// socket closes, both entries go, so a later connection that reuses the
// port finds nothing stale. cgroup/getpeername4/6 answer with the dialled
// address, so the application never sees the proxy's. Everything else
// (other addresses, other ports, UDP) proceeds untouched.
//
// # Targets
//
// Callers whose socket is in the host network namespace (compared by
// netns cookie with the one the daemon writes) go to HostTarget
// (127.0.0.1:<port>): sending them to a bridge address would have Docker's
// MASQUERADE rule rewrite their source, and the record key would miss.
// Callers in other namespaces go to NSTarget, by default 169.254.170.254
// on a dummy interface the redirector creates (or a port-less bridge on
// kernels without the dummy driver). Containers reach it through their
// default route on the default bridge, user-defined bridges and
// --network container:<id> alike, and packets to it are delivered locally
// without NAT, so the proxy sees the container's own address. Being
// link-local it is not routed beyond the host's links; a neighbour on the
// LAN that routes to it anyway gains nothing, because a connection without
// a record is refused (and identity checks that the connection arrived on
// the address the kernel chose).
//
// # IPv6
//
// fd00:ec2::254 from the host namespace goes to HostTarget6 ([::1]:<port>).
// Docker's default bridge has no IPv6, so by default NSTarget6 is unset and
// IPv6 metadata connections from containers are refused (fail closed, like
// the IMDS IPv6 endpoint that is off by default on EC2). On an
// IPv6-enabled user network set NSTarget6 to a ULA on the dummy interface;
// the same record path applies. An IPv6 socket dialling the IPv4-mapped
// metadata address is sent to the IPv4 target in mapped form, and its
// record is keyed like an IPv4 one, because the proxy sees an IPv4 peer.
//
// # Failing closed
//
// Until New has written the targets, and again after Close, the targets are
// zero and metadata connections get EPERM rather than reaching the real
// IMDS. Links and maps are pinned under PinDir, so the programs keep
// refusing while the daemon is down or restarting; New adopts the pinned
// links (swapping in its own programs with an atomic link update) and
// maps (recreating one only if its layout changed). [Detach] removes it
// all. A connection whose local address is claimed by a socket in another
// namespace at the same time (an IP takeover) gets [ErrConflict]: both are
// refused rather than one getting the other's identity.
//
// # Exemptions and the upstream guard
//
// Cgroups in ExemptCgroups (by default the daemon's own) are never
// redirected, so the daemon on EC2 reaches the real IMDS as its upstream.
// Connections to GuardAddrs (by default 127.0.0.1:9911, where
// aws_signing_helper serve listens; 0.0.0.0 and :: count as loopback) are
// refused for every non-exempt cgroup, so a host-network container cannot
// take the base role from the helper directly. The guard applies to every
// process under the attach point: attached at the cgroup2 root that
// includes host processes and operators' shells (use the daemon's
// credentials through the proxy instead). Exemption is by exact cgroup id,
// not subtree. The guard cannot protect a helper that listens on a
// non-loopback or wildcard address: keep it on loopback.
//
// # Limits
//
// Config is one array entry read without a lock; a read torn by a
// concurrent update sees a zero address or port and refuses. Record maps
// are LRU hashes of 65536 entries: a burst beyond that evicts the oldest
// unaccepted records, whose connections are then refused.
package redirect
