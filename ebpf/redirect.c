//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * shunt's eBPF fast path for meshed pods: the outbound capture of ISTIO_OUTPUT done at connect(2)
 * instead of in nat OUTPUT, SO_ORIGINAL_DST answered from what connect saw, and the bytes between
 * the app and its sidecar moved socket to socket with sk_msg instead of through two TCP stacks.
 *
 * A pod is the network namespace the CNI plugin registered in shunt_pods, keyed by its cookie
 * (bpf_get_netns_cookie). Nothing outside a registered namespace is touched. The pod's lists live
 * in shunt_cidrs (an LPM trie) and shunt_sets (ports and group ids), both keyed by cookie and the
 * pod entry's generation, so that user space replaces a pod's settings at once: it writes the new
 * generation's entries, flips the pod entry, then deletes the old generation's.
 *
 * Programs (names are at most 15 characters, the kernel's limit, and start with "shunt_"):
 *   shunt_connect4/6   cgroup/connect4, connect6: capture decision, rewrite to loopback:ProxyPort
 *                      from the pod's own address
 *   shunt_sockops      sockops: hand original dsts to the proxy's accepted sockets, pair
 *                      app<->proxy sockets in shunt_sockhash
 *   shunt_sk_msg       sk_msg: redirect a message to the peer socket's ingress queue
 *   shunt_sockopt      cgroup/getsockopt: SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST
 *   shunt_peername4/6  cgroup/getpeername4, getpeername6: the app sees the peer it dialed
 *   shunt_sendmsg4/6, shunt_recvmsg4/6 and UDP connect: DNS capture, the section at the end
 */

#include "uapi.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

char __license[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define IPPROTO_TCP 6
#define SOL_IP 0
#define SOL_IPV6 41
/* SO_ORIGINAL_DST (linux/netfilter_ipv4.h) and IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h). */
#define SO_ORIGINAL_DST 80

/* How many proxy uids and gids a pod entry holds; unused slots hold (uid_t)-1, which no process has. */
#define MAX_IDS 4

/* The bits of a shunt_cidrs key before the address: kind, cookie, gen, family and pad. */
#define CIDR_FIXED_BITS 128

/* pod.flags */
enum pod_flag {
	/* Never put the pod's sockets in shunt_sockhash (receivers that splice(2) stall on sk_msg). */
	POD_NO_SOCKMSG = 1 << 0,
	/* Capture IPv6 (redirect.Config.IPv6); otherwise only IPv4 and IPv4-mapped destinations. */
	POD_IPV6 = 1 << 1,
	/* OutboundIPRanges is '*'. */
	POD_INCLUDE_ALL = 1 << 2,
	/* An included range is a loopback range: istio-iptables then omits "-o lo ! --uid-owner RETURN". */
	POD_CAPTURE_LOCAL = 1 << 3,
	/* --redirect-dns with servers to capture: TCP port 53 goes to dns_port. */
	POD_DNS = 1 << 4,
	/* --capture-all-dns. */
	POD_DNS_ALL = 1 << 5,
	/* ISTIO_OUTBOUND_OWNER_GROUPS is a list: only those groups are captured. */
	POD_GROUPS_INCLUDE = 1 << 6,
};

/* Per-pod settings, the value of shunt_pods. Ports are in host byte order. */
struct pod {
	enum pod_flag flags;
	__u16 proxy_port;
	__u16 inbound_port;
	__u16 dns_port;
	__u16 gen;
	__u32 uids[MAX_IDS];
	__u32 gids[MAX_IDS];
	__be32 lo4_addr; /* HostIPv4LoopbackCIDR, masked */
	__be32 lo4_mask;
	/* The pod's own addresses a redirected connection is bound to, so that the proxy sees it come
	 * from the pod as with nat REDIRECT (0 / :: when the pod has none of that family). */
	__be32 src4;
	__u32 src6[4];
};

enum cidr_kind {
	CIDR_EXCLUDE = 1, /* OutboundIPRangesExclude */
	CIDR_INCLUDE = 2, /* OutboundIPRanges */
	CIDR_SELF = 3,    /* the pod's own IPs */
	CIDR_DNS = 4,     /* DNSServers */
};

/* Key of shunt_cidrs: everything up to addr is always matched in full (CIDR_FIXED_BITS). */
struct cidr_key {
	__u32 prefixlen;
	enum cidr_kind kind;
	__u64 cookie;
	__u16 gen;
	__u8 family; /* 4 or 6 */
	__u8 pad;
	__u32 addr[4]; /* network byte order; IPv4 in addr[0] */
};

enum set_kind {
	SET_PORT_EXCLUDE = 1, /* OutboundPortsExclude */
	SET_PORT_INCLUDE = 2, /* OutboundPorts: captured whatever the destination */
	SET_GID_EXCLUDE = 3,  /* OwnerGroups.Exclude */
	SET_GID_INCLUDE = 4,  /* OwnerGroups.Include */
};

/* Key of shunt_sets. */
struct set_key {
	__u64 cookie;
	enum set_kind kind;
	__u32 value;
	__u16 gen;
	__u8 pad[6];
};

/* An app socket's original destination, as connect(2) was asked for it. */
struct origdst {
	__u32 addr[4]; /* network byte order; IPv4 in addr[0] */
	__be16 port;
	__u8 family; /* 4, also for an IPv4-mapped IPv6 destination, or 6 */
	__u8 pad;
};

/* Key of shunt_origkey: an app socket's local address, which is the proxy's accepted socket's peer. */
struct peer_key {
	__u64 cookie;
	__u32 addr[4];
	__u16 port; /* host byte order */
	__u8 family;
	__u8 pad[5];
};

/* Key of shunt_sockhash: a socket's own 4-tuple in its namespace. */
struct pair_key {
	__u64 cookie;
	__u32 local[4];
	__u32 remote[4];
	__u16 lport; /* host byte order */
	__u16 rport;
	__u32 family;
};

/* Indexes of shunt_stats. */
enum stat {
	STAT_CONNECT_REDIRECTED = 0,
	STAT_SOCKETS_PAIRED = 1,
	STAT_MSG_REDIRECTED = 2,
	STAT_MSG_BYTES = 3,
	STAT_MSG_MISS = 4,
	STAT_MSG_FALLBACK = 5,
	STAT_ORIGDST_ANSWERED = 6,
	STAT_PEERNAME_ANSWERED = 7,
	STAT_MAX = 8,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct pod);
} shunt_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct cidr_key);
	__type(value, __u8);
} shunt_cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct set_key);
	__type(value, __u8);
} shunt_sets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct origdst);
} shunt_origdst SEC(".maps");

/* A socket whose sk_msg once found no peer sends through TCP from then on, so that bytes never
 * overtake bytes still in the peer's TCP receive queue. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u32);
} shunt_msgstate SEC(".maps");

/* The original destination of the app connection a proxy's accepted socket serves, handed over
 * from shunt_origkey when the proxy's end is established. A map of its own: shunt_origdst on a
 * socket also makes getpeername lie, which the proxy's end must not. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct origdst);
} shunt_accepted SEC(".maps");

/* An entry lives from the app end's establishment to the proxy end's, which moves it to
 * shunt_accepted; LRU so that one the proxy never accepts cannot fill the map. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct peer_key);
	__type(value, struct origdst);
} shunt_origkey SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct pair_key);
	__type(value, __u64);
} shunt_sockhash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, enum stat);
	__type(value, __u64);
} shunt_stats SEC(".maps");

/* Only the first fields of these are written; the rest is zeroed. */
struct sockaddr_in {
	__u16 sin_family;
	__be16 sin_port;
	__be32 sin_addr;
	__u8 sin_zero[8];
};

struct sockaddr_in6 {
	__u16 sin6_family;
	__be16 sin6_port;
	__be32 sin6_flowinfo;
	__u32 sin6_addr[4];
	__u32 sin6_scope_id;
};

/* An address in the form the maps use: IPv4 (also when IPv4-mapped) in a[0], family 4 or 6. */
struct addr {
	__u32 a[4];
	__u8 family;
};

static __always_inline void count(enum stat idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&shunt_stats, &idx);
	/* Atomic: a softirq's sockops can interrupt a task's program on the same CPU. */
	if (v)
		__sync_fetch_and_add(v, n);
}

static __always_inline void addr4(struct addr *out, __u32 ip4)
{
	out->a[0] = ip4;
	out->a[1] = 0;
	out->a[2] = 0;
	out->a[3] = 0;
	out->family = 4;
}

/* addr6 stores an IPv6 address, unmapping an IPv4-mapped one. */
static __always_inline void addr6(struct addr *out, __u32 a0, __u32 a1, __u32 a2, __u32 a3)
{
	if (a0 == 0 && a1 == 0 && a2 == bpf_htonl(0x0000ffff)) {
		addr4(out, a3);
		return;
	}
	out->a[0] = a0;
	out->a[1] = a1;
	out->a[2] = a2;
	out->a[3] = a3;
	out->family = 6;
}

/* port_from_ctx returns a "network byte order" remote port of sock_ops or sk_msg in host order:
 * the kernel stores it shifted into the upper half of the u32 on little-endian machines, and
 * unshifted on others; both forms are accepted. */
static __always_inline __u16 port_from_ctx(__u32 p)
{
	if (p > 0xffff)
		p >>= 16;
	return bpf_ntohs((__u16)p);
}

static __always_inline int is_loopback(const struct addr *a)
{
	if (a->family == 4)
		return (a->a[0] & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000);
	return a->a[0] == 0 && a->a[1] == 0 && a->a[2] == 0 && a->a[3] == bpf_htonl(1);
}

/* is_passthrough reports whether a is 127.0.0.6 or ::6, the source of the proxy's inbound
 * passthrough connections to the app. */
static __always_inline int is_passthrough(const struct addr *a)
{
	if (a->family == 4)
		return a->a[0] == bpf_htonl(0x7f000006);
	return a->a[0] == 0 && a->a[1] == 0 && a->a[2] == 0 && a->a[3] == bpf_htonl(6);
}

static __always_inline int ids_contain(const __u32 *ids, __u32 id)
{
	return ids[0] == id || ids[1] == id || ids[2] == id || ids[3] == id;
}

static __always_inline int set_has(__u64 cookie, __u16 gen, enum set_kind kind, __u32 value)
{
	struct set_key k = {
		.cookie = cookie,
		.kind = kind,
		.gen = gen,
		.value = value,
	};
	return bpf_map_lookup_elem(&shunt_sets, &k) != 0;
}

static __always_inline int cidr_has(__u64 cookie, __u16 gen, enum cidr_kind kind, const struct addr *a)
{
	struct cidr_key k = {
		.prefixlen = CIDR_FIXED_BITS + (a->family == 4 ? 32 : 128),
		.kind = kind,
		.family = a->family,
		.gen = gen,
		.cookie = cookie,
	};
	k.addr[0] = a->a[0];
	k.addr[1] = a->a[1];
	k.addr[2] = a->a[2];
	k.addr[3] = a->a[3];
	return bpf_map_lookup_elem(&shunt_cidrs, &k) != 0;
}

/* is_local reports whether a connection to dst leaves through lo ("-o lo"): loopback addresses,
 * ::6, and the pod's own IPs. Other addresses that happen to be assigned in the namespace are
 * treated as remote. */
static __always_inline int is_local(const struct pod *pod, __u64 cookie, const struct addr *dst)
{
	return is_loopback(dst) || is_passthrough(dst) || cidr_has(cookie, pod->gen, CIDR_SELF, dst);
}

/* ============================================================================================
 * The socket's owner, as the owner match sees it.
 *
 * xt_owner (--uid-owner, --gid-owner) and nft's meta skuid/skgid compare the fsuid and fsgid of
 * the credentials that opened the socket (sk->sk_socket->file->f_cred) with the rule's id mapped
 * into the user namespace that owns the socket's network namespace. sock_owner reads the same
 * credentials and maps them the other way, from the kernel's ids into that user namespace
 * (from_kuid, from_kgid), so that the pod's proxy ids (1337) compare as they are also in a pod
 * whose namespaces are user-namespaced (hostUsers: false, where the proxy's kernel uid is 101337).
 *
 * The kernel's structures are read through bpf_rdonly_cast (an untrusted, read-only BTF pointer:
 * a faulting load reads 0; a map of more than 5 extents with bpf_probe_read_kernel), their field
 * offsets resolved against the running kernel's BTF at load (CO-RE), so this needs
 * /sys/kernel/btf/vmlinux, the kfunc in cgroup sock_addr programs (Linux 6.7) and the privilege
 * to read kernel memory (CAP_PERFMON or CAP_SYS_ADMIN). It works the same for TCP and UDP
 * sockets, and costs no map lookup.
 * ============================================================================================ */

/* An id that no process has: what an id outside the namespace's map becomes, never a proxy's. */
#define NO_ID ((__u32)-1)

/* The most extents a uid_gid_map holds inline (UID_GID_MAP_MAX_BASE_EXTENTS); beyond that it
 * points to sorted arrays of at most UID_GID_MAP_MAX_EXTENTS (340): MAP_SEARCH_STEPS halvings
 * find an extent in up to 4095. */
#define MAP_BASE_EXTENTS 5
#define MAP_SEARCH_STEPS 12

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)
/* The kernel's types, only the fields read (include/linux/uidgid_types.h, user_namespace.h,
 * cred.h, fs.h, net.h, net/sock.h, net/net_namespace.h). */
typedef struct {
	__u32 val;
} kuid_t;
typedef struct {
	__u32 val;
} kgid_t;
struct uid_gid_extent {
	__u32 first;
	__u32 lower_first;
	__u32 count;
};
struct uid_gid_map {
	__u32 nr_extents;
	union {
		struct uid_gid_extent extent[MAP_BASE_EXTENTS];
		struct {
			struct uid_gid_extent *forward;
			struct uid_gid_extent *reverse; /* sorted by lower_first */
		};
	};
};
struct user_namespace {
	struct uid_gid_map uid_map;
	struct uid_gid_map gid_map;
};
struct net {
	struct user_namespace *user_ns;
};
typedef struct {
	struct net *net;
} possible_net_t;
struct sock_common {
	possible_net_t skc_net;
};
struct cred {
	kuid_t fsuid;
	kgid_t fsgid;
};
struct file {
	const struct cred *f_cred;
};
struct socket {
	struct file *file;
};
struct sock {
	struct sock_common __sk_common;
	struct socket *sk_socket;
};
#pragma clang attribute pop

/* extent_up maps id through the extent {first, lower_first, count}, or returns NO_ID when the
 * extent does not hold it. */
static __always_inline __u32 extent_up(__u32 first, __u32 lower_first, __u32 count, __u32 id)
{
	if (id - lower_first < count)
		return id - lower_first + first;
	return NO_ID;
}

/* map_id_up returns what the kernel's id is in the namespace of map m, NO_ID when m does not map
 * it: the kernel's map_id_up. */
static __always_inline __attribute__((unused)) __u32 map_id_up(const struct uid_gid_map *m, __u32 id)
{
	__u32 n = m->nr_extents;
	if (n <= MAP_BASE_EXTENTS) {
		/* Unrolled by hand: the verifier allows only constant offsets into kernel memory. */
#define EXTENT(i)                                                                                     \
	if (n > i) {                                                                                  \
		__u32 up = extent_up(m->extent[i].first, m->extent[i].lower_first, m->extent[i].count, id); \
		if (up != NO_ID)                                                                      \
			return up;                                                                    \
	}
		EXTENT(0)
		EXTENT(1)
		EXTENT(2)
		EXTENT(3)
		EXTENT(4)
#undef EXTENT
		return NO_ID;
	}
	/* Binary search of the reverse array. Read with bpf_probe_read_kernel: the verifier cannot
	 * type a load from the union's other member, nor a variable offset into the array. */
	__u64 rev;
	if (bpf_core_read(&rev, sizeof(rev), &m->reverse))
		return NO_ID;
	__u32 lo = 0, hi = n;
	for (int i = 0; i < MAP_SEARCH_STEPS && lo < hi; i++) {
		__u32 mid = lo + (hi - lo) / 2;
		struct uid_gid_extent e;
		if (bpf_probe_read_kernel(&e, sizeof(e), (const void *)(rev + (__u64)mid * sizeof(e))))
			return NO_ID;
		if (id < e.lower_first)
			hi = mid;
		else if (id - e.lower_first >= e.count)
			lo = mid + 1;
		else
			return id - e.lower_first + e.first;
	}
	return NO_ID;
}

/* sock_owner sets *uid and *gid to the fsuid and fsgid of whoever opened sk, in the user namespace
 * that owns sk's network namespace, NO_ID for an id it does not map or a socket without a file
 * (the owner match then matches neither). */
static __always_inline void sock_owner(struct bpf_sock *sk, __u32 *uid, __u32 *gid)
{
#ifdef SHUNT_TASK_IDS
	/* The object for kernels before 6.7 (redirecttask_bpfel.o, see gen.go): the real ids of the
	 * task calling connect(2) or sendmsg(2), as the initial user namespace sees them. They are
	 * the owner match's for a proxy started as its own user, not for setuid programs and sockets
	 * handed between processes; user-namespaced pods are refused (Node.AddPod). */
	__u64 ugid = bpf_get_current_uid_gid();
	*uid = (__u32)ugid;
	*gid = (__u32)(ugid >> 32);
	return;
#else
	*uid = NO_ID;
	*gid = NO_ID;
	struct sock *s = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct sock));
	struct socket *so = s->sk_socket;
	if (!so)
		return;
	struct file *f = so->file;
	if (!f)
		return;
	const struct cred *c = f->f_cred;
	if (!c)
		return;
	__u32 kuid = c->fsuid.val, kgid = c->fsgid.val;
	struct user_namespace *ns = s->__sk_common.skc_net.net->user_ns;
	if (!ns)
		return;
	*uid = map_id_up(&ns->uid_map, kuid);
	*gid = map_id_up(&ns->gid_map, kgid);
#endif
}

enum verdict {
	VERDICT_PASS = 0,
	VERDICT_PROXY = 1,
	VERDICT_DNS = 2,
};

/*
 * decide mirrors nat ISTIO_OUTPUT of redirect.Build for one TCP connect(2) of socket sk to dst:dport
 * from a socket bound to src (zero when unbound), in the rules' order:
 *
 *   -p tcp --dport <OutboundPortsExclude> RETURN
 *   -o lo -s 127.0.0.6 RETURN
 *   per proxy uid/gid: hairpin to ISTIO_IN_REDIRECT; -o lo ! owner RETURN; owner RETURN
 *   owner groups: excluded gid RETURN / gid not included RETURN
 *   DNS: --dport 53 (to a listed server) REDIRECT :15053
 *   -d <loopback> RETURN
 *   -d <OutboundIPRangesExclude> RETURN
 *   --dport <OutboundPorts> REDIRECT
 *   -d <OutboundIPRanges> (or everything) REDIRECT
 *
 * The proxy's own connections are never touched: its hairpin to its own pod IP stays with the
 * nat rules. The owner is the owner match's (sock_owner): the socket opener's fsuid and fsgid in
 * the pod's user namespace, NO_ID when there is none, which is neither a proxy id nor an owner
 * group (the unused slots of pod->uids and gids hold it too, hence the test).
 */
static __always_inline enum verdict decide(const struct pod *pod, __u64 cookie, struct bpf_sock *sk,
					   const struct addr *dst, __u16 dport, const struct addr *src)
{
	__u32 uid, gid;
	sock_owner(sk, &uid, &gid);
	__u16 gen = pod->gen;
	int dns = (pod->flags & POD_DNS) && dport == 53;

	if (dst->family == 6 && !(pod->flags & POD_IPV6))
		return VERDICT_PASS;
	/* Every rule before the DNS one returns, so their order is free: the proxy's own connections,
	 * one per app connection, are let go first, without a map lookup. */
	if ((uid != NO_ID && ids_contain(pod->uids, uid)) || (gid != NO_ID && ids_contain(pod->gids, gid)))
		return VERDICT_PASS;
	if (set_has(cookie, gen, SET_PORT_EXCLUDE, dport))
		return VERDICT_PASS;
	if (is_passthrough(src))
		return VERDICT_PASS;
	if (!(pod->flags & POD_CAPTURE_LOCAL) && !dns && is_local(pod, cookie, dst))
		return VERDICT_PASS;
	if (pod->flags & POD_GROUPS_INCLUDE) {
		if (!set_has(cookie, gen, SET_GID_INCLUDE, gid))
			return VERDICT_PASS;
	} else if (set_has(cookie, gen, SET_GID_EXCLUDE, gid)) {
		return VERDICT_PASS;
	}
	if (dns && ((pod->flags & POD_DNS_ALL) || cidr_has(cookie, gen, CIDR_DNS, dst)))
		return VERDICT_DNS;
	if (dst->family == 4) {
		if ((dst->a[0] & pod->lo4_mask) == pod->lo4_addr)
			return VERDICT_PASS;
	} else if (is_loopback(dst)) {
		return VERDICT_PASS;
	}
	if (cidr_has(cookie, gen, CIDR_EXCLUDE, dst))
		return VERDICT_PASS;
	if (set_has(cookie, gen, SET_PORT_INCLUDE, dport))
		return VERDICT_PROXY;
	if ((pod->flags & POD_INCLUDE_ALL) || cidr_has(cookie, gen, CIDR_INCLUDE, dst))
		return VERDICT_PROXY;
	return VERDICT_PASS;
}

/*
 * capture decides for a TCP connect(2) in a registered namespace and, when captured, records the
 * original destination in the socket's storage and returns the port to rewrite the destination
 * to (on loopback), or 0 to leave the connect alone. *bind is set to the pod's own address of the
 * destination's family for an unbound socket, family 0 when there is none to bind to.
 */
static __always_inline __u16 capture(struct bpf_sock_addr *ctx, const struct addr *dst, __u16 dport,
				     const struct addr *src, struct addr *bind)
{
	bind->family = 0;
	__u64 cookie = bpf_get_netns_cookie(ctx);
	struct pod *pod = bpf_map_lookup_elem(&shunt_pods, &cookie);
	if (!pod)
		return 0;

	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 0;
	__u16 port = 0;
	switch (decide(pod, cookie, sk, dst, dport, src)) {
	case VERDICT_PROXY:
		port = pod->proxy_port;
		break;
	case VERDICT_DNS:
		port = pod->dns_port;
		break;
	default:
		/* A socket disconnected with AF_UNSPEC and connected again must not keep the
		 * destination of its earlier connection. */
		bpf_sk_storage_delete(&shunt_origdst, sk);
		return 0;
	}
	if (port == 0)
		return 0;

	struct origdst *od = bpf_sk_storage_get(&shunt_origdst, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!od)
		return 0; /* no memory: leave the connection alone rather than lose its destination */
	od->addr[0] = dst->a[0];
	od->addr[1] = dst->a[1];
	od->addr[2] = dst->a[2];
	od->addr[3] = dst->a[3];
	od->port = bpf_htons(dport);
	od->family = dst->family;
	count(STAT_CONNECT_REDIRECTED, 1);

	/* Bound sockets keep their address; unbound ones (src zero) take the pod's, as the route to
	 * dst would have given them. */
	if (src->a[0] | src->a[1] | src->a[2] | src->a[3])
		return port;
	if (dst->family == 4 && pod->src4) {
		addr4(bind, pod->src4);
	} else if (dst->family == 6 && (pod->src6[0] | pod->src6[1] | pod->src6[2] | pod->src6[3])) {
		bind->a[0] = pod->src6[0];
		bind->a[1] = pod->src6[1];
		bind->a[2] = pod->src6[2];
		bind->a[3] = pod->src6[3];
		bind->family = 6;
	}
	return port;
}

static __always_inline int tcp(struct bpf_sock_addr *ctx)
{
	return ctx->type == SOCK_STREAM && ctx->protocol == IPPROTO_TCP;
}

/* UDP connect(2), for DNS: defined in the DNS section at the end. */
static __always_inline int dns_connect4(struct bpf_sock_addr *ctx);
static __always_inline int dns_connect6(struct bpf_sock_addr *ctx);

SEC("cgroup/connect4")
int shunt_connect4(struct bpf_sock_addr *ctx)
{
	if (!tcp(ctx))
		return dns_connect4(ctx);
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct addr dst, src, bind;
	addr4(&dst, ctx->user_ip4);
	addr4(&src, sk->src_ip4);
	__u16 port = capture(ctx, &dst, bpf_ntohs((__u16)ctx->user_port), &src, &bind);
	if (!port)
		return 1;
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(port);
	if (bind.family) {
		/* Port 0: the kernel picks it at connect, as for an unbound socket. A failed bind
		 * leaves the socket unbound: the connection then comes from 127.0.0.1. */
		struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr = bind.a[0]};
		bpf_bind(ctx, (struct sockaddr *)&sin, sizeof(sin));
	}
	return 1;
}

/* shunt_connect6 handles an IPv4-mapped destination (a dual-stack socket dialing IPv4) as IPv4:
 * the IPv4 rules decide, and it goes to ::ffff:127.0.0.1. */
SEC("cgroup/connect6")
int shunt_connect6(struct bpf_sock_addr *ctx)
{
	if (!tcp(ctx))
		return dns_connect6(ctx);
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct addr dst, src, bind;
	addr6(&dst, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
	addr6(&src, sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]);
	__u16 port = capture(ctx, &dst, bpf_ntohs((__u16)ctx->user_port), &src, &bind);
	if (!port)
		return 1;
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	if (dst.family == 4) {
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = bpf_htonl(0x7f000001);
	} else {
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
	}
	ctx->user_port = bpf_htons(port);
	if (bind.family) {
		struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6};
		if (bind.family == 4) {
			sin6.sin6_addr[2] = bpf_htonl(0x0000ffff);
			sin6.sin6_addr[3] = bind.a[0];
		} else {
			sin6.sin6_addr[0] = bind.a[0];
			sin6.sin6_addr[1] = bind.a[1];
			sin6.sin6_addr[2] = bind.a[2];
			sin6.sin6_addr[3] = bind.a[3];
		}
		bpf_bind(ctx, (struct sockaddr *)&sin6, sizeof(sin6));
	}
	return 1;
}

/* peer_key_of returns the shunt_origkey key of a socket's address a in the namespace of cookie. */
static __always_inline struct peer_key peer_key_of(__u64 cookie, const struct addr *a, __u16 port)
{
	struct peer_key pk = {
		.cookie = cookie,
		.port = port,
		.family = a->family,
	};
	pk.addr[0] = a->a[0];
	pk.addr[1] = a->a[1];
	pk.addr[2] = a->a[2];
	pk.addr[3] = a->a[3];
	return pk;
}

/*
 * shunt_sockops runs when a TCP socket of the cgroup is established (and for the kernel's other
 * sockops callbacks, which it ignores). For a socket of a registered pod:
 *
 *   - the app's end of a redirected connection (it has shunt_origdst) publishes its original
 *     destination in shunt_origkey under its own address, which is the proxy end's peer;
 *   - the proxy's end, accepted on loopback at the outbound or DNS listener, takes that entry
 *     into its shunt_accepted storage for shunt_sockopt and deletes it: no state callbacks, and
 *     nothing to clean up when either end closes;
 *   - both ends, and both ends of the proxy's passthrough connection from 127.0.0.6 / ::6 to the
 *     app, go into shunt_sockhash for sk_msg, unless the pod opted out.
 */
SEC("sockops")
int shunt_sockops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;
	if (op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB)
		return 1;
	__u64 cookie = bpf_get_netns_cookie(skops);
	struct pod *pod = bpf_map_lookup_elem(&shunt_pods, &cookie);
	if (!pod)
		return 1;
	struct bpf_sock *sk = skops->sk;
	if (!sk)
		return 1;

	struct addr local, remote;
	__u32 family = skops->family;
	if (family == AF_INET) {
		addr4(&local, skops->local_ip4);
		addr4(&remote, skops->remote_ip4);
	} else if (family == AF_INET6) {
		addr6(&local, skops->local_ip6[0], skops->local_ip6[1], skops->local_ip6[2], skops->local_ip6[3]);
		addr6(&remote, skops->remote_ip6[0], skops->remote_ip6[1], skops->remote_ip6[2],
		      skops->remote_ip6[3]);
	} else {
		return 1;
	}
	__u16 lport = (__u16)skops->local_port;
	__u16 rport = port_from_ctx(skops->remote_port);

	int pair;
	if (op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB) {
		pair = is_passthrough(&local);
		struct origdst *od = bpf_sk_storage_get(&shunt_origdst, sk, 0, 0);
		if (od) {
			struct peer_key pk = peer_key_of(cookie, &local, lport);
			pair = bpf_map_update_elem(&shunt_origkey, &pk, od, BPF_ANY) == 0;
		}
	} else {
		pair = is_passthrough(&remote);
		if (!pair && is_loopback(&local) && (lport == pod->proxy_port || lport == pod->dns_port)) {
			struct peer_key pk = peer_key_of(cookie, &remote, rport);
			struct origdst *od = bpf_map_lookup_elem(&shunt_origkey, &pk);
			if (od) {
				struct origdst *acc =
					bpf_sk_storage_get(&shunt_accepted, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
				if (acc) {
					*acc = *od;
					bpf_map_delete_elem(&shunt_origkey, &pk);
					pair = 1;
				}
			}
		}
	}
	if (!pair || (pod->flags & POD_NO_SOCKMSG))
		return 1;
	struct pair_key key = {
		.cookie = cookie,
		.lport = lport,
		.rport = rport,
		.family = local.family,
	};
	key.local[0] = local.a[0];
	key.local[1] = local.a[1];
	key.local[2] = local.a[2];
	key.local[3] = local.a[3];
	key.remote[0] = remote.a[0];
	key.remote[1] = remote.a[1];
	key.remote[2] = remote.a[2];
	key.remote[3] = remote.a[3];
	if (bpf_sock_hash_update(skops, &shunt_sockhash, &key, BPF_ANY) == 0)
		count(STAT_SOCKETS_PAIRED, 1);
	return 1;
}

SEC("sk_msg")
int shunt_sk_msg(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	if (sk) {
		__u32 *fallback = bpf_sk_storage_get(&shunt_msgstate, sk, 0, 0);
		if (fallback && *fallback) {
			count(STAT_MSG_FALLBACK, 1);
			return SK_PASS;
		}
	}

	struct addr local, remote;
	__u32 family = msg->family;
	if (family == AF_INET) {
		addr4(&local, msg->local_ip4);
		addr4(&remote, msg->remote_ip4);
	} else if (family == AF_INET6) {
		addr6(&local, msg->local_ip6[0], msg->local_ip6[1], msg->local_ip6[2], msg->local_ip6[3]);
		addr6(&remote, msg->remote_ip6[0], msg->remote_ip6[1], msg->remote_ip6[2], msg->remote_ip6[3]);
	} else {
		return SK_PASS;
	}
	/* The peer's key: its local end is our remote end. */
	struct pair_key key = {
		.cookie = bpf_get_netns_cookie(msg),
		.lport = port_from_ctx(msg->remote_port),
		.rport = (__u16)msg->local_port,
		.family = local.family,
	};
	key.local[0] = remote.a[0];
	key.local[1] = remote.a[1];
	key.local[2] = remote.a[2];
	key.local[3] = remote.a[3];
	key.remote[0] = local.a[0];
	key.remote[1] = local.a[1];
	key.remote[2] = local.a[2];
	key.remote[3] = local.a[3];

	__u32 size = msg->size;
	if (bpf_msg_redirect_hash(msg, &shunt_sockhash, &key, BPF_F_INGRESS) == SK_PASS) {
		count(STAT_MSG_REDIRECTED, 1);
		count(STAT_MSG_BYTES, size);
		return SK_PASS;
	}
	count(STAT_MSG_MISS, 1);
	if (sk) {
		__u32 *fallback = bpf_sk_storage_get(&shunt_msgstate, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (fallback)
			*fallback = 1;
	}
	return SK_PASS;
}

/*
 * shunt_sockopt answers SO_ORIGINAL_DST (SOL_IP) and IP6T_SO_ORIGINAL_DST (SOL_IPV6) on a socket
 * whose peer is a redirected app socket (the proxy's accepted socket). Anything else, including a
 * buffer too small for the answer, is left exactly as the kernel answered it.
 */
SEC("cgroup/getsockopt")
int shunt_sockopt(struct bpf_sockopt *ctx)
{
	if (ctx->optname != SO_ORIGINAL_DST)
		return 1;
	int level = ctx->level;
	if (level != SOL_IP && level != SOL_IPV6)
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk || sk->protocol != IPPROTO_TCP)
		return 1;

	/* The proxy's end took the original destination when it was established; the map entry it
	 * took it from answers a proxy that asks before that callback ran. */
	struct origdst *od = bpf_sk_storage_get(&shunt_accepted, sk, 0, 0);
	if (!od) {
		struct addr peer;
		if (sk->family == AF_INET)
			addr4(&peer, sk->dst_ip4);
		else if (sk->family == AF_INET6)
			addr6(&peer, sk->dst_ip6[0], sk->dst_ip6[1], sk->dst_ip6[2], sk->dst_ip6[3]);
		else
			return 1;
		struct peer_key pk = peer_key_of(bpf_get_netns_cookie(ctx), &peer, bpf_ntohs(sk->dst_port));
		od = bpf_map_lookup_elem(&shunt_origkey, &pk);
		if (!od)
			return 1;
	}

	if (level == SOL_IP) {
		struct sockaddr_in *sin = ctx->optval;
		if (od->family != 4 || (void *)(sin + 1) > ctx->optval_end)
			return 1;
		sin->sin_family = AF_INET;
		sin->sin_port = od->port;
		sin->sin_addr = od->addr[0];
		__builtin_memset(sin->sin_zero, 0, sizeof(sin->sin_zero));
		ctx->optlen = sizeof(*sin);
	} else {
		struct sockaddr_in6 *sin6 = ctx->optval;
		if (od->family != 6 || (void *)(sin6 + 1) > ctx->optval_end)
			return 1;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = od->port;
		sin6->sin6_flowinfo = 0;
		sin6->sin6_addr[0] = od->addr[0];
		sin6->sin6_addr[1] = od->addr[1];
		sin6->sin6_addr[2] = od->addr[2];
		sin6->sin6_addr[3] = od->addr[3];
		sin6->sin6_scope_id = 0;
		ctx->optlen = sizeof(*sin6);
	}
	ctx->retval = 0;
	count(STAT_ORIGDST_ANSWERED, 1);
	return 1;
}

SEC("cgroup/getpeername4")
int shunt_peername4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct origdst *od = bpf_sk_storage_get(&shunt_origdst, sk, 0, 0);
	if (!od || od->family != 4)
		return 1;
	ctx->user_ip4 = od->addr[0];
	ctx->user_port = od->port;
	count(STAT_PEERNAME_ANSWERED, 1);
	return 1;
}

/* shunt_peername6 answers an IPv4 destination dialed on a dual-stack socket IPv4-mapped. */
SEC("cgroup/getpeername6")
int shunt_peername6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct origdst *od = bpf_sk_storage_get(&shunt_origdst, sk, 0, 0);
	if (!od)
		return 1;
	if (od->family == 4) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = od->addr[0];
	} else {
		ctx->user_ip6[0] = od->addr[0];
		ctx->user_ip6[1] = od->addr[1];
		ctx->user_ip6[2] = od->addr[2];
		ctx->user_ip6[3] = od->addr[3];
	}
	ctx->user_port = od->port;
	count(STAT_PEERNAME_ANSWERED, 1);
	return 1;
}

/* ============================================================================================
 * DNS capture: UDP port 53 to the pod's DNS proxy (TCP DNS goes there at connect, see capture()).
 *
 *   shunt_sendmsg4/6   cgroup/sendmsg4, sendmsg6: a datagram sent with a destination (sendto(2),
 *                      sendmsg(2) with msg_name) to port 53 that decide() gives VERDICT_DNS goes
 *                      to 127.0.0.1 (::1, ::ffff:127.0.0.1 for an IPv4-mapped server) at the pod's
 *                      dns_port; the server asked is kept in the socket's shunt_dnsdst
 *   dns_connect4/6     UDP connect(2) (Go's, glibc's and c-ares' resolvers connect) decided the same
 *                      way and rewritten the same way; the server goes to shunt_dnsdst and to
 *                      shunt_origdst, so that getpeername(2) answers it (shunt_peername4/6)
 *   shunt_recvmsg4/6   cgroup/recvmsg4, recvmsg6: a datagram from 127.0.0.1 (::1,
 *                      ::ffff:127.0.0.1) at the dns_port a socket's query went to shows the server
 *                      asked, port 53, as its source (recvfrom(2), recvmsg(2) with msg_name), also
 *                      on a connected socket: glibc reads its connected socket with recvfrom and
 *                      drops an answer whose source is not one of its servers
 *
 * The decision is decide()'s, as for TCP: nat ISTIO_OUTPUT sends UDP through the same rules
 * (excluded ports, the proxy's uids and gids, owner groups) to ISTIO_OUTPUT_DNS; only VERDICT_DNS
 * is acted on, since UDP never goes to the outbound proxy. The proxy's own queries (its uid or
 * gid) are never touched, and neither are its answers (from dns_port, not to port 53) nor what it
 * receives (its sockets have no shunt_dnsdst).
 *
 * The mapping is socket storage holding the last server a socket's captured query asked and the
 * port it went to: it goes with the socket, costs no map lookup keyed by anything the reply lacks,
 * and cannot be evicted while the query is in flight. A reply from the DNS proxy carries nothing of
 * the server it answers for (the source is the proxy's address; a cgroup program cannot read the
 * payload's query id), so one unconnected socket asking two captured servers at once sees both
 * answers come from the last one asked. Resolvers that connect their UDP sockets use one socket
 * per server (glibc, Go, c-ares); musl sends to all servers from one socket and accepts an answer
 * from any server of its list, which the last one asked is. A query to a server that is not
 * captured leaves the mapping alone, and its answer comes from that server itself.
 * ============================================================================================ */

#define SOCK_DGRAM 2
#define IPPROTO_UDP 17

/* A socket's captured DNS query: the server asked, and the port of the DNS proxy it went to. */
struct dnsdst {
	struct origdst server; /* port 53, network byte order */
	__u16 dns_port;        /* host byte order */
	__u8 pad[2];
};

/* Indexes of shunt_dnsstats. */
enum dns_stat {
	DNS_STAT_REDIRECTED = 0, /* UDP datagrams and UDP connect(2)s rewritten to the DNS proxy */
	DNS_STAT_ANSWERED = 1,   /* replies whose source was rewritten to the server asked */
	DNS_STAT_MAX = 2,
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct dnsdst);
} shunt_dnsdst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DNS_STAT_MAX);
	__type(key, enum dns_stat);
	__type(value, __u64);
} shunt_dnsstats SEC(".maps");

static __always_inline void dns_count(enum dns_stat idx)
{
	__u64 *v = bpf_map_lookup_elem(&shunt_dnsstats, &idx);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline int udp(struct bpf_sock_addr *ctx)
{
	return ctx->type == SOCK_DGRAM && ctx->protocol == IPPROTO_UDP;
}

/*
 * dns_capture decides for a UDP datagram or connect(2) to dst:dport of a socket bound to src (zero
 * when unbound) and, for VERDICT_DNS, records dst in the socket's shunt_dnsdst and returns it;
 * otherwise it returns 0 and leaves the socket's storage alone.
 */
static __always_inline struct dnsdst *dns_capture(struct bpf_sock_addr *ctx, struct bpf_sock *sk,
						  const struct addr *dst, __u16 dport, const struct addr *src)
{
	if (dport != 53)
		return 0;
	__u64 cookie = bpf_get_netns_cookie(ctx);
	struct pod *pod = bpf_map_lookup_elem(&shunt_pods, &cookie);
	if (!pod || !(pod->flags & POD_DNS) || pod->dns_port == 0)
		return 0;
	if (decide(pod, cookie, sk, dst, dport, src) != VERDICT_DNS)
		return 0;
	struct dnsdst *d = bpf_sk_storage_get(&shunt_dnsdst, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!d)
		return 0; /* no memory: leave the query alone rather than answer from the wrong peer */
	d->server.addr[0] = dst->a[0];
	d->server.addr[1] = dst->a[1];
	d->server.addr[2] = dst->a[2];
	d->server.addr[3] = dst->a[3];
	d->server.port = bpf_htons(dport);
	d->server.family = dst->family;
	d->server.pad = 0;
	d->dns_port = pod->dns_port;
	return d;
}

/* dns_connected records a connected socket's server in shunt_origdst, for getpeername(2). */
static __always_inline int dns_connected(struct bpf_sock *sk, const struct dnsdst *d)
{
	struct origdst *od = bpf_sk_storage_get(&shunt_origdst, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!od)
		return 0;
	*od = d->server;
	return 1;
}

static __always_inline int dns_connect4(struct bpf_sock_addr *ctx)
{
	if (!udp(ctx))
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct addr dst, src;
	addr4(&dst, ctx->user_ip4);
	addr4(&src, sk->src_ip4);
	struct dnsdst *d = dns_capture(ctx, sk, &dst, bpf_ntohs((__u16)ctx->user_port), &src);
	if (!d || !dns_connected(sk, d)) {
		/* A socket connected again must not keep the peer of its earlier connection. */
		bpf_sk_storage_delete(&shunt_origdst, sk);
		return 1;
	}
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(d->dns_port);
	dns_count(DNS_STAT_REDIRECTED);
	return 1;
}

/* set_dns_addr6 writes the loopback address a query to a server of family goes to: ::1, or
 * ::ffff:127.0.0.1 for an IPv4(-mapped) server. */
static __always_inline void set_dns_addr6(struct bpf_sock_addr *ctx, __u8 family)
{
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	if (family == 4) {
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = bpf_htonl(0x7f000001);
	} else {
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
	}
}

static __always_inline int dns_connect6(struct bpf_sock_addr *ctx)
{
	if (!udp(ctx))
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct addr dst, src;
	addr6(&dst, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
	addr6(&src, sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]);
	struct dnsdst *d = dns_capture(ctx, sk, &dst, bpf_ntohs((__u16)ctx->user_port), &src);
	if (!d || !dns_connected(sk, d)) {
		bpf_sk_storage_delete(&shunt_origdst, sk);
		return 1;
	}
	set_dns_addr6(ctx, dst.family);
	ctx->user_port = bpf_htons(d->dns_port);
	dns_count(DNS_STAT_REDIRECTED);
	return 1;
}

SEC("cgroup/sendmsg4")
int shunt_sendmsg4(struct bpf_sock_addr *ctx)
{
	if (!udp(ctx) || ctx->user_port != bpf_htons(53))
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct addr dst, src;
	addr4(&dst, ctx->user_ip4);
	/* The source: IP_PKTINFO's when given, else the address the socket is bound to. */
	__u32 src4 = ctx->msg_src_ip4;
	addr4(&src, src4 ? src4 : sk->src_ip4);
	struct dnsdst *d = dns_capture(ctx, sk, &dst, 53, &src);
	if (!d)
		return 1;
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = bpf_htons(d->dns_port);
	dns_count(DNS_STAT_REDIRECTED);
	return 1;
}

SEC("cgroup/sendmsg6")
int shunt_sendmsg6(struct bpf_sock_addr *ctx)
{
	if (!udp(ctx) || ctx->user_port != bpf_htons(53))
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct addr dst, src;
	addr6(&dst, ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2], ctx->user_ip6[3]);
	__u32 s0 = ctx->msg_src_ip6[0], s1 = ctx->msg_src_ip6[1], s2 = ctx->msg_src_ip6[2],
	      s3 = ctx->msg_src_ip6[3];
	if (s0 | s1 | s2 | s3)
		addr6(&src, s0, s1, s2, s3);
	else
		addr6(&src, sk->src_ip6[0], sk->src_ip6[1], sk->src_ip6[2], sk->src_ip6[3]);
	struct dnsdst *d = dns_capture(ctx, sk, &dst, 53, &src);
	if (!d)
		return 1;
	set_dns_addr6(ctx, dst.family);
	ctx->user_port = bpf_htons(d->dns_port);
	dns_count(DNS_STAT_REDIRECTED);
	return 1;
}

SEC("cgroup/recvmsg4")
int shunt_recvmsg4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct dnsdst *d = bpf_sk_storage_get(&shunt_dnsdst, sk, 0, 0);
	if (!d || d->server.family != 4)
		return 1;
	if (ctx->user_ip4 != bpf_htonl(0x7f000001) || ctx->user_port != bpf_htons(d->dns_port))
		return 1;
	ctx->user_ip4 = d->server.addr[0];
	ctx->user_port = d->server.port;
	dns_count(DNS_STAT_ANSWERED);
	return 1;
}

/* shunt_recvmsg6 also answers for an IPv4 server asked on a dual-stack socket, IPv4-mapped. */
SEC("cgroup/recvmsg6")
int shunt_recvmsg6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct dnsdst *d = bpf_sk_storage_get(&shunt_dnsdst, sk, 0, 0);
	if (!d || ctx->user_port != bpf_htons(d->dns_port))
		return 1;
	if (ctx->user_ip6[0] != 0 || ctx->user_ip6[1] != 0)
		return 1;
	__u32 a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
	if (d->server.family == 4) {
		if (a2 != bpf_htonl(0x0000ffff) || a3 != bpf_htonl(0x7f000001))
			return 1;
		ctx->user_ip6[3] = d->server.addr[0];
	} else {
		if (a2 != 0 || a3 != bpf_htonl(1))
			return 1;
		ctx->user_ip6[0] = d->server.addr[0];
		ctx->user_ip6[1] = d->server.addr[1];
		ctx->user_ip6[2] = d->server.addr[2];
		ctx->user_ip6[3] = d->server.addr[3];
	}
	ctx->user_port = d->server.port;
	dns_count(DNS_STAT_ANSWERED);
	return 1;
}
