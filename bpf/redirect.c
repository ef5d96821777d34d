//go:build ignore

// Socket-layer redirect of instance-metadata connections to the
// per-docker-roles proxy (DESIGN.md §3).
//
// connect4/connect6 rewrite the destination of TCP connections to the
// metadata address and remember who dialled (cgroup id, netns cookie,
// original destination) under the socket cookie. sockops copies that record,
// when the kernel has chosen the local port, into a map keyed by the
// client's local address and port: exactly the peer address the proxy sees
// on accept. getpeername4/6 undo the rewrite so the application sees the
// address it dialled.
//
// Only UAPI definitions are used (no kernel structs are read), so no
// vmlinux.h and no CO-RE relocations are needed.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char __license[] SEC("license") = "Dual MIT/GPL";

// Verdicts of cgroup sock_addr programs. Rejecting makes connect() fail
// with EPERM.
#define SYS_REJECT 0
#define SYS_PROCEED 1

// UAPI constants from socket headers that pull in libc; spelled out here.
#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define IPPROTO_TCP 6
// include/net/tcp_states.h is not UAPI.
#define TCP_CLOSE 7
#ifndef EEXIST
#define EEXIST 17
#endif

#define IMDS_PORT 80

// Context fields must be read with a fixed offset from the context pointer;
// volatile keeps clang from merging loads of different fields into one
// computed address, which the verifier rejects.
#define CTX(field) (*(volatile typeof(field) *)&(field))

// Counter indexes into pdr_counters. Shared with Go through generated types.
enum pdr_counter {
	PDR_C_REDIRECTED = 0,  // connection rewritten to the proxy
	PDR_C_EXEMPT,          // metadata connection from an exempt cgroup, untouched
	PDR_C_REFUSED,         // metadata connection refused: no proxy target (fail closed)
	PDR_C_GUARD_REFUSED,   // connection to the upstream helper from a non-exempt cgroup
	PDR_C_RECORDED,        // record stored under the client's local address
	PDR_C_CONFLICT,        // two sockets claimed one local address: both refused
	PDR_C_PEERNAME,        // getpeername answered with the dialled address
	PDR_C_MAX,
};

// Record flags.
enum pdr_flag {
	PDR_F_HOST_NETNS = 1,  // the caller's socket is in the host network namespace
	PDR_F_V6_SOCKET = 2,   // dialled from an AF_INET6 socket (orig is IPv6 or IPv4-mapped)
	PDR_F_CONFLICT = 4,    // another socket claimed the same local address
};

// An address and port. IPv4 is stored IPv4-mapped (::ffff:a.b.c.d) so that
// IPv4 sockets and IPv4-mapped IPv6 sockets share one key space: the proxy
// sees the same peer for both.
struct pdr_addr {
	__be32 addr[4];
	__be16 port;
	__u16 _pad;
};

struct pdr_target4 {
	__be32 addr;
	__be16 port;  // 0 = no target: refuse (fail closed)
	__u16 _pad;
};

struct pdr_target6 {
	__be32 addr[4];
	__be16 port;  // 0 = no target: refuse (fail closed)
	__u16 _pad;
};

// Written by userspace; all zero until the daemon is ready and again after it
// stops, so metadata connections are refused, never passed to the real IMDS.
struct pdr_config {
	__u64 host_netns_cookie;   // bpf_get_netns_cookie() of the host namespace
	struct pdr_target4 host4;  // for host-netns callers: 127.0.0.1:<port>
	struct pdr_target4 ns4;    // for other namespaces: the dummy-interface address
	struct pdr_target6 host6;  // [::1]:<port>
	struct pdr_target6 ns6;    // optional; port 0 refuses IPv6 callers in containers
};

// What the kernel remembers about one redirected connection.
struct pdr_record {
	__u64 cgroup_id;     // bpf_get_current_cgroup_id() at connect()
	__u64 netns_cookie;  // bpf_get_netns_cookie() of the socket
	__u64 sock_cookie;   // owner socket, so only it can delete the record
	struct pdr_addr orig;    // what the application dialled
	struct pdr_addr target;  // where it was sent instead
	struct pdr_addr local;   // the client's local address (set by sockops)
	__u32 flags;             // enum pdr_flag
	__u32 _pad;
};

// Make the enums and structs visible in BTF so bpf2go generates Go types.
const enum pdr_counter *_unused_counter __attribute__((unused));
const enum pdr_flag *_unused_flag __attribute__((unused));

// Proxy targets and the host netns cookie; one entry, written by userspace.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pdr_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pdr_conf SEC(".maps");

// Cgroup ids left alone (the daemon itself, so it can reach the real IMDS
// and the upstream helper). Written by userspace.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u64);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pdr_exempt SEC(".maps");

// Upstream helper addresses (IPv4-mapped for IPv4) that only exempt cgroups
// may connect to. Written by userspace.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct pdr_addr);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pdr_guard SEC(".maps");

// Records by socket cookie, from connect() until the socket closes; also
// what getpeername reverses. LRU so sockets that never reach sockops (a
// failed connect) cannot fill it.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct pdr_record);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pdr_socks SEC(".maps");

// Records by the client's local address and port, written by sockops, read
// and deleted by the proxy on accept. Sized for bursts of connects.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct pdr_addr);
	__type(value, struct pdr_record);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pdr_records SEC(".maps");

// Per-CPU event counters indexed by enum pdr_counter.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PDR_C_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pdr_counters SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&pdr_counters, &idx);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline int is_exempt(__u64 cgroup_id)
{
	return bpf_map_lookup_elem(&pdr_exempt, &cgroup_id) != NULL;
}

static __always_inline void set_mapped(struct pdr_addr *a, __be32 v4, __be16 port)
{
	a->addr[0] = 0;
	a->addr[1] = 0;
	a->addr[2] = bpf_htonl(0x0000ffff);
	a->addr[3] = v4;
	a->port = port;
	a->_pad = 0;
}

static __always_inline int is_mapped(const __be32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

// guarded reports whether dst is an upstream-helper address. The unspecified
// address is looked up as loopback because connect() to 0.0.0.0 or :: reaches
// the loopback listener.
static __always_inline int guarded(struct pdr_addr *dst)
{
	if (dst->addr[0] == 0 && dst->addr[1] == 0) {
		if (dst->addr[2] == 0 && dst->addr[3] == 0)
			dst->addr[3] = bpf_htonl(1);  // :: -> ::1
		else if (dst->addr[2] == bpf_htonl(0x0000ffff) && dst->addr[3] == 0)
			dst->addr[3] = bpf_htonl(0x7f000001);  // 0.0.0.0 -> 127.0.0.1
	}
	return bpf_map_lookup_elem(&pdr_guard, dst) != NULL;
}

static __always_inline int is_imds6(const __be32 *a)
{
	// fd00:ec2::254
	return a[0] == bpf_htonl(0xfd000ec2) && a[1] == 0 && a[2] == 0 &&
	       a[3] == bpf_htonl(0x00000254);
}

#define IMDS4 bpf_htonl(0xa9fea9fe)  // 169.254.169.254

// remember stores the record that sockops will publish and getpeername will
// reverse. It fails closed: no record, no redirect.
static __always_inline int remember(void *ctx, __u64 cgroup_id, __u64 netns,
				    int host, const struct pdr_addr *orig,
				    const struct pdr_addr *target, __u32 flags)
{
	struct pdr_record rec = {};
	__u64 cookie = bpf_get_socket_cookie(ctx);

	rec.cgroup_id = cgroup_id;
	rec.netns_cookie = netns;
	rec.sock_cookie = cookie;
	rec.orig = *orig;
	rec.target = *target;
	rec.flags = flags | (host ? PDR_F_HOST_NETNS : 0);
	return bpf_map_update_elem(&pdr_socks, &cookie, &rec, BPF_ANY);
}

// Loads both candidates at constant offsets and selects on scalars: a
// pointer chosen by a branch into a map value is "pointer arithmetic from
// different paths", which the verifier forbids without CAP_PERFMON.
static __always_inline void target4_of(struct pdr_config *cfg, int host, __be32 *addr, __be16 *port)
{
	__be32 ha = cfg->host4.addr, na = cfg->ns4.addr;
	__be16 hp = cfg->host4.port, np = cfg->ns4.port;
	*addr = host ? ha : na;
	*port = host ? hp : np;
}

static __always_inline void target6_of(struct pdr_config *cfg, int host, struct pdr_addr *t)
{
#pragma unroll
	for (int i = 0; i < 4; i++) {
		__be32 h = cfg->host6.addr[i], n = cfg->ns6.addr[i];
		t->addr[i] = host ? h : n;
	}
	__be16 hp = cfg->host6.port, np = cfg->ns6.port;
	t->port = host ? hp : np;
}

SEC("cgroup/connect4")
int pdr_connect4(struct bpf_sock_addr *ctx)
{
	struct pdr_addr dst, target;
	__u32 zero = 0;
	__be32 ip = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;
	__u64 cg = bpf_get_current_cgroup_id();

	if (ctx->type != SOCK_STREAM)
		return SYS_PROCEED;

	set_mapped(&dst, ip, port);
	if (guarded(&dst)) {
		if (is_exempt(cg))
			return SYS_PROCEED;
		count(PDR_C_GUARD_REFUSED);
		return SYS_REJECT;
	}

	if (ip != IMDS4 || port != bpf_htons(IMDS_PORT))
		return SYS_PROCEED;
	if (is_exempt(cg)) {
		count(PDR_C_EXEMPT);
		return SYS_PROCEED;
	}
	// A stream socket that is not plain TCP (MPTCP) cannot be recorded by
	// sockops the same way: refuse rather than let it reach the real IMDS.
	if (ctx->protocol != IPPROTO_TCP)
		goto refuse;

	struct pdr_config *cfg = bpf_map_lookup_elem(&pdr_conf, &zero);
	if (!cfg)
		goto refuse;
	__u64 netns = bpf_get_netns_cookie(ctx);
	int host = cfg->host_netns_cookie != 0 && netns == cfg->host_netns_cookie;
	__be32 taddr;
	__be16 tport;
	target4_of(cfg, host, &taddr, &tport);
	if (taddr == 0 || tport == 0)
		goto refuse;

	set_mapped(&dst, ip, port);
	set_mapped(&target, taddr, tport);
	if (remember(ctx, cg, netns, host, &dst, &target, 0))
		goto refuse;
	ctx->user_ip4 = taddr;
	ctx->user_port = (__u32)tport;
	count(PDR_C_REDIRECTED);
	return SYS_PROCEED;

refuse:
	count(PDR_C_REFUSED);
	return SYS_REJECT;
}

SEC("cgroup/connect6")
int pdr_connect6(struct bpf_sock_addr *ctx)
{
	struct pdr_addr dst = {}, target = {};
	__u32 zero = 0;
	__be16 port = (__be16)ctx->user_port;
	__u64 cg = bpf_get_current_cgroup_id();

	if (ctx->type != SOCK_STREAM)
		return SYS_PROCEED;

	dst.addr[0] = CTX(ctx->user_ip6[0]);
	dst.addr[1] = CTX(ctx->user_ip6[1]);
	dst.addr[2] = CTX(ctx->user_ip6[2]);
	dst.addr[3] = CTX(ctx->user_ip6[3]);
	dst.port = port;

	struct pdr_addr g = dst;
	if (guarded(&g)) {
		if (is_exempt(cg))
			return SYS_PROCEED;
		count(PDR_C_GUARD_REFUSED);
		return SYS_REJECT;
	}

	int mapped = is_mapped(dst.addr);
	if (port != bpf_htons(IMDS_PORT))
		return SYS_PROCEED;
	if (mapped ? dst.addr[3] != IMDS4 : !is_imds6(dst.addr))
		return SYS_PROCEED;
	if (is_exempt(cg)) {
		count(PDR_C_EXEMPT);
		return SYS_PROCEED;
	}
	if (ctx->protocol != IPPROTO_TCP)
		goto refuse;

	struct pdr_config *cfg = bpf_map_lookup_elem(&pdr_conf, &zero);
	if (!cfg)
		goto refuse;
	__u64 netns = bpf_get_netns_cookie(ctx);
	int host = cfg->host_netns_cookie != 0 && netns == cfg->host_netns_cookie;

	if (mapped) {
		// An IPv6 socket dialling ::ffff:169.254.169.254 sends IPv4: send
		// it to the IPv4 target, IPv4-mapped.
		__be32 taddr;
		__be16 tport;
		target4_of(cfg, host, &taddr, &tport);
		if (taddr == 0 || tport == 0)
			goto refuse;
		set_mapped(&target, taddr, tport);
	} else {
		target6_of(cfg, host, &target);
		if (target.port == 0)
			goto refuse;
	}

	if (remember(ctx, cg, netns, host, &dst, &target, PDR_F_V6_SOCKET))
		goto refuse;
	CTX(ctx->user_ip6[0]) = target.addr[0];
	CTX(ctx->user_ip6[1]) = target.addr[1];
	CTX(ctx->user_ip6[2]) = target.addr[2];
	CTX(ctx->user_ip6[3]) = target.addr[3];
	ctx->user_port = (__u32)target.port;
	count(PDR_C_REDIRECTED);
	return SYS_PROCEED;

refuse:
	count(PDR_C_REFUSED);
	return SYS_REJECT;
}

// publish runs when the kernel has picked the local port of a connecting
// socket: it files the socket's record under that address for the proxy.
static __always_inline void publish(struct bpf_sock_ops *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct pdr_record *sr = bpf_map_lookup_elem(&pdr_socks, &cookie);
	if (!sr)
		return;

	struct pdr_record rec = *sr;
	struct pdr_addr key = {};
	__be16 lport = bpf_htons((__u16)CTX(ctx->local_port));
	if (CTX(ctx->family) == AF_INET) {
		set_mapped(&key, CTX(ctx->local_ip4), lport);
	} else {
		key.addr[0] = CTX(ctx->local_ip6[0]);
		key.addr[1] = CTX(ctx->local_ip6[1]);
		key.addr[2] = CTX(ctx->local_ip6[2]);
		key.addr[3] = CTX(ctx->local_ip6[3]);
		key.port = lport;
	}
	rec.local = key;
	sr->local = key;

	long err = bpf_map_update_elem(&pdr_records, &key, &rec, BPF_NOEXIST);
	if (err == -EEXIST) {
		struct pdr_record *old = bpf_map_lookup_elem(&pdr_records, &key);
		if (old && old->sock_cookie != cookie) {
			// Another live socket (another namespace using the same
			// address, e.g. an IP takeover) holds this key. The proxy
			// cannot tell the two connections apart: poison the record
			// so both are refused instead of one getting the other's
			// identity.
			old->flags |= PDR_F_CONFLICT;  // a lost race only delays the poisoning
			count(PDR_C_CONFLICT);
		} else {
			bpf_map_update_elem(&pdr_records, &key, &rec, BPF_ANY);
		}
	} else if (err) {
		return;
	}
	count(PDR_C_RECORDED);
	// Ask for state changes so the records go when the socket closes.
	bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

// forget removes a closed socket's records, so a later connection that
// reuses the address does not find a stale one.
static __always_inline void forget(struct bpf_sock_ops *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct pdr_record *sr = bpf_map_lookup_elem(&pdr_socks, &cookie);
	if (!sr)
		return;
	struct pdr_addr key = sr->local;
	struct pdr_record *r = bpf_map_lookup_elem(&pdr_records, &key);
	if (r && r->sock_cookie == cookie)
		bpf_map_delete_elem(&pdr_records, &key);
	bpf_map_delete_elem(&pdr_socks, &cookie);
}

SEC("sockops")
int pdr_sockops(struct bpf_sock_ops *ctx)
{
	switch (ctx->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		publish(ctx);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (ctx->args[1] == TCP_CLOSE)
			forget(ctx);
		break;
	}
	return 1;
}

SEC("cgroup/getpeername4")
int pdr_getpeername4(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct pdr_record *r = bpf_map_lookup_elem(&pdr_socks, &cookie);
	if (!r)
		return SYS_PROCEED;
	if (ctx->user_ip4 != r->target.addr[3] || (__be16)ctx->user_port != r->target.port)
		return SYS_PROCEED;
	ctx->user_ip4 = r->orig.addr[3];
	ctx->user_port = (__u32)r->orig.port;
	count(PDR_C_PEERNAME);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername6")
int pdr_getpeername6(struct bpf_sock_addr *ctx)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct pdr_record *r = bpf_map_lookup_elem(&pdr_socks, &cookie);
	if (!r)
		return SYS_PROCEED;
	if (CTX(ctx->user_ip6[0]) != r->target.addr[0] || CTX(ctx->user_ip6[1]) != r->target.addr[1] ||
	    CTX(ctx->user_ip6[2]) != r->target.addr[2] || CTX(ctx->user_ip6[3]) != r->target.addr[3] ||
	    (__be16)ctx->user_port != r->target.port)
		return SYS_PROCEED;
	CTX(ctx->user_ip6[0]) = r->orig.addr[0];
	CTX(ctx->user_ip6[1]) = r->orig.addr[1];
	CTX(ctx->user_ip6[2]) = r->orig.addr[2];
	CTX(ctx->user_ip6[3]) = r->orig.addr[3];
	ctx->user_port = (__u32)r->orig.port;
	count(PDR_C_PEERNAME);
	return SYS_PROCEED;
}
