// Package docker keeps an index of the host's containers, fed by the Docker
// Engine API (initial list + inspect, then the events stream), so the proxy
// can map a caller (by cgroup id or by IP) to a container and its labels.
package docker

import "net/netip"

// Container is what the proxy needs to know about one running container.
// Values are copied out of the index; callers may keep them.
type Container struct {
	ID     string // full 64-hex id
	Name   string // without the leading "/"
	Labels map[string]string

	// IPs holds the container's addresses on every network it is attached
	// to, IPv4 and IPv6. Empty for host-network containers.
	IPs []netip.Addr

	// NetworkMode is HostConfig.NetworkMode ("bridge", "host",
	// "container:<id>", a network name, ...). HostNetwork is true when the
	// container shares the host's network namespace.
	NetworkMode string
	HostNetwork bool

	Pid        int    // State.Pid of the init process
	CgroupPath string // cgroup2 path relative to the cgroup2 mount, e.g. /docker/<id>
	CgroupID   uint64 // inode of that cgroup2 directory (= bpf_get_current_cgroup_id)
}
