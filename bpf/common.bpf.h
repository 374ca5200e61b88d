/* Shared by every meshcap BPF program: maps, load-time settings, and the
 * environment the decision logic (decision.h) reads. maps.bpf.c defines the
 * maps and settings (MC_DEFINE_MAPS); the other objects declare them extern,
 * and `bpftool gen object` links them into one object with one skeleton.
 *
 * One data path serves every pod attached below its cgroup: a pod's
 * settings live in maps keyed by its network-namespace cookie (pods) or by
 * its index (the per-pod tables), so a socket in a namespace that is not
 * enrolled costs one lookup and is left alone. A per-pod capture is the
 * same data path attached to one pod's cgroup with that one pod enrolled. */
#ifndef MESHCAP_BPF_COMMON_H
#define MESHCAP_BPF_COMMON_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/socket.h>
#include <stdbool.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "meshcap.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#ifndef SOCK_STREAM
#define SOCK_STREAM 1
#endif
#ifndef SOCK_DGRAM
#define SOCK_DGRAM 2
#endif
#ifndef SOL_IP
#define SOL_IP 0
#endif
#ifndef SOL_IPV6
#define SOL_IPV6 41
#endif
/* linux/netfilter_ipv4.h and linux/netfilter_ipv6/ip6_tables.h */
#define SO_ORIGINAL_DST 80
#define IP6T_SO_ORIGINAL_DST 80
#define MC_PAGE_SIZE 4096

/* Verdicts of the cgroup socket hooks. */
#define MC_SYS_PROCEED 1 /* let the call go on (with what the program rewrote) */
#define MC_SYS_REJECT 0  /* refuse the call (EPERM) */

#ifdef MESHCAP_DEBUG
#define mc_debug(fmt, ...) bpf_printk("meshcap: " fmt, ##__VA_ARGS__)
#else
#define mc_debug(fmt, ...) do { } while (0)
#endif

#ifdef MC_DEFINE_MAPS
#define MC_EXTERN
#define MC_ZERO = {}
#else
#define MC_EXTERN extern
#define MC_ZERO
#endif

/* Load-time settings, set through skel->rodata before load. */
MC_EXTERN const volatile struct mc_node mc_node MC_ZERO;

/* --- per pod --- (sizes set by the loader) */

/* Enrolled pods: netns cookie -> settings. A plain hash: a running pod's
 * settings are never evicted. Writing the entry is the commit of an
 * enrolment; deleting it, the first step of removing one. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MC_DEFAULT_MAX_PODS);
	__type(key, __u64);
	__type(value, struct mc_pod);
} pods SEC(".maps");

/* The pods' own addresses: for sk_lookup (which has no netns cookie), the
 * address a connection arrived for -> the pod's cookie. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MC_DEFAULT_MAX_PODS * MC_ADDRS_PER_POD);
	__type(key, struct mc_addr);
	__type(value, __u64);
} pod_by_addr SEC(".maps");

/* A pod's own addresses (destinations routed over lo). */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MC_DEFAULT_MAX_PODS * MC_ADDRS_PER_POD);
	__type(key, struct mc_pod_addr);
	__type(value, __u8);
} pod_addrs SEC(".maps");

/* A pod's ports: MC_PORT_* bits (-o, -q, -b, -d). */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MC_DEFAULT_MAX_PODS * MC_PORTS_PER_POD);
	__type(key, struct mc_pod_port);
	__type(value, __u8);
} pod_ports SEC(".maps");

/* A pod's -x and -i prefixes and its main routing table (for -c), one trie
 * per family; the key's tag names the pod and the kind. Exclusions are
 * checked before inclusions whatever their lengths, as istio's rule order
 * does; routes: the longest match wins, as in the kernel's lookup. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MC_DEFAULT_MAX_PODS * MC_CIDRS_PER_POD);
	__type(key, struct mc_lpm4);
	__type(value, __u8);
} cidrs4 SEC(".maps");
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MC_DEFAULT_MAX_PODS * MC_CIDRS_PER_POD);
	__type(key, struct mc_lpm6);
	__type(value, __u8);
} cidrs6 SEC(".maps");

/* A pod's owner groups (ISTIO_OUTBOUND_OWNER_GROUPS(_EXCLUDE)). */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MC_DEFAULT_MAX_PODS * MC_GROUPS_PER_POD);
	__type(key, struct mc_pod_u32);
	__type(value, __u8);
} owner_gids SEC(".maps");

/* A pod's interfaces named by -c and -k: ifindex -> MC_IF_* bits. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MC_DEFAULT_MAX_PODS * MC_IFACES_PER_POD);
	__type(key, struct mc_pod_u32);
	__type(value, __u8);
} iface_flags SEC(".maps");

/* The proxies' listening sockets, by pod and slot: added by sockops when a
 * proxy listens (the socket was tagged at bind), or by the loader from a
 * running proxy; the kernel removes a socket from the map when it closes. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, MC_DEFAULT_MAX_PODS * MC_LISTENER__MAX);
	__type(key, struct mc_listener_key);
	__type(value, __u64);
} listeners SEC(".maps");

/* The loader's own bookkeeping, never read by the programs: which pod holds
 * each index (its cookie, 0 for none) and whether rows under the index may
 * be stale (MC_SLOT_DIRTY: an enrolment or removal was killed half-way; the
 * next enrolment that takes the index clears its rows first). Enrolling
 * picks a free index from it in one read, without walking the pods. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MC_DEFAULT_MAX_PODS);
	__type(key, __u32);
	__type(value, struct mc_pod_slot);
} pod_slots SEC(".maps");

/* One counter per decision and event, per pod (row = pod index; the last
 * row is the node's, for events no pod can be named for). */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, (MC_DEFAULT_MAX_PODS + 1) * MC_CNT__MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Netns cookies asked for by the loader: process id -> cookie (see
 * MC_COOKIE_PROBE_ADDR). */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u64);
} cookie_probe SEC(".maps");

/* --- per connection, shared by the node --- */

/* Original destination per redirected application socket, freed with it. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct mc_orig);
} orig_store SEC(".maps");

/* Original destination per redirected connection from the application's
 * SYN until the proxy asks for it with SO_ORIGINAL_DST; then it moves to the
 * proxy's accepted socket (accepted_orig). LRU: the record of a connection
 * the proxy never asks about (refused, reset, or a proxy that does not ask)
 * is reused. Preallocated, so sized for connections the proxy has not asked
 * about yet (a proxy asks right after accept()), not for open connections. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MC_DEFAULT_MAX_CONNECTIONS);
	__type(key, struct mc_conn_key);
	__type(value, struct mc_orig);
} orig_dst SEC(".maps");

/* The connection table a data path had before `meshcap node start`
 * resized it: getsockopt looks here when the current table has no record,
 * so no connection in its handshake is lost to an upgrade (a one-entry
 * table otherwise). */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1);
	__type(key, struct mc_conn_key);
	__type(value, struct mc_orig);
} orig_dst_prev SEC(".maps");

/* Connections sk_lookup steered to a listener: their original destination
 * is their own local address. Like orig_dst, a record moves onto the
 * proxy's socket when the proxy asks for it. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MC_DEFAULT_MAX_CONNECTIONS);
	__type(key, struct mc_conn_key);
	__type(value, struct mc_orig);
} inbound_orig SEC(".maps");

/* Original destination per proxy-side socket of a redirected connection
 * (outbound, and inbound steered by sk_lookup), freed with the socket: what
 * SO_ORIGINAL_DST answers. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct mc_orig);
} accepted_orig SEC(".maps");

/* A proxy's socket bound to one of its pod's listener ports. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct mc_sock_pod);
} sock_pod SEC(".maps");

/* --accelerate: the application's and the proxy's sockets of redirected
 * connections, keyed by their own view (mc_sock_key). The sk_msg program
 * is attached to this map; the kernel removes a socket when it closes. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, MC_ACCEL_ENTRIES);
	__type(key, struct mc_sock_key);
	__type(value, __u64);
} accel_socks SEC(".maps");

/* --accelerate: the send decision of a socket in accel_socks. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct mc_accel_state);
} accel_state SEC(".maps");

/* --redirect-dns: where each socket's redirected UDP queries were going
 * (mc_dns_key), written when a query is redirected (sendmsg, or connect for
 * a connected socket), read when a reply arrives from the DNS listener, so
 * the application sees it come from the resolver it addressed. LRU and
 * bounded: a closed socket's entry ages out; one socket keeps one entry per
 * proxy address (the last resolver it queried). */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MC_DNS_REPLIES_MIN);
	__type(key, struct mc_dns_key);
	__type(value, struct mc_dns_orig);
} dns_reverse SEC(".maps");

/* The enrolled pod a network-namespace cookie names, or NULL. */
static __always_inline struct mc_pod *mc_pod_of(__u64 netns)
{
	return bpf_map_lookup_elem(&pods, &netns);
}

/* Counts event `c` for pod `index` (the node's row: mc_node.max_pods). */
static __always_inline void mc_count(__u32 index, enum mc_counter c)
{
	__u32 key = index * MC_CNT__MAX + c;
	__u64 *v = bpf_map_lookup_elem(&counters, &key);

	if (v)
		*v += 1; /* per-CPU: no atomics needed */
}

/* Loads a context field into a scalar and stops clang from merging it with
 * a neighbouring load into one access at a variable offset, which the
 * verifier rejects ("dereference of modified ctx ptr", "pointer arithmetic
 * on sock prohibited"). */
#define MC_LOAD(dst, field) \
	do { \
		(dst) = (field); \
		barrier_var(dst); \
	} while (0)

/* Copies four 32-bit context words (an IPv6 address) into an mc_addr. */
#define MC_LOAD_ADDR6(a, words) \
	do { \
		MC_LOAD((a)->ip[0], (words)[0]); \
		MC_LOAD((a)->ip[1], (words)[1]); \
		MC_LOAD((a)->ip[2], (words)[2]); \
		MC_LOAD((a)->ip[3], (words)[3]); \
	} while (0)

static __always_inline void mc_addr_from4(struct mc_addr *a, __u32 ip4)
{
	a->ip[0] = 0;
	a->ip[1] = 0;
	a->ip[2] = bpf_htonl(0xffff);
	a->ip[3] = ip4;
}

/* Copies an mc_addr into four 32-bit words (a context's or a sockaddr's). */
#define MC_STORE_ADDR6(words, a) \
	do { \
		(words)[0] = (a)->ip[0]; \
		(words)[1] = (a)->ip[1]; \
		(words)[2] = (a)->ip[2]; \
		(words)[3] = (a)->ip[3]; \
	} while (0)

/* --- the environment decision.h reads --- */
#define MC_INLINE __always_inline

static __always_inline bool mc_env_pod_addr(const struct mc_pod *pod, const struct mc_addr *a)
{
	struct mc_pod_addr k = {pod->index, *a};

	return bpf_map_lookup_elem(&pod_addrs, &k) != 0;
}

/* The trie entry of `kind` for `a` in `pod`'s prefixes, or NULL. */
static __always_inline __u8 *__mc_cidr(const struct mc_pod *pod, enum mc_cidr_kind kind,
				       const struct mc_addr *a, bool v4)
{
	__u32 tag = MC_LPM_TAG(pod->index, kind);

	if (v4) {
		struct mc_lpm4 k = {64, tag, a->ip[3]};
		return bpf_map_lookup_elem(&cidrs4, &k);
	}
	struct mc_lpm6 k6 = {160, tag, {a->ip[0], a->ip[1], a->ip[2], a->ip[3]}};
	return bpf_map_lookup_elem(&cidrs6, &k6);
}

static __always_inline bool mc_env_excluded(const struct mc_pod *pod, const struct mc_addr *a, bool v4)
{
	return __mc_cidr(pod, MC_CIDR_EXCLUDE, a, v4) != 0;
}

static __always_inline bool mc_env_included(const struct mc_pod *pod, const struct mc_addr *a, bool v4)
{
	return __mc_cidr(pod, MC_CIDR_INCLUDE, a, v4) != 0;
}

static __always_inline __u8 mc_env_port_flags(const struct mc_pod *pod, __u16 port)
{
	struct mc_pod_port k = {pod->index, port};
	__u8 *v;

	if (!(pod->flags & MC_POD_PORTS))
		return 0;
	v = bpf_map_lookup_elem(&pod_ports, &k);
	return v ? *v : 0;
}

static __always_inline bool mc_env_owner_group(const struct mc_pod *pod, __u32 gid)
{
	struct mc_pod_u32 k = {pod->index, gid};

	return (pod->flags & MC_POD_OWNER_GROUPS) && bpf_map_lookup_elem(&owner_gids, &k) != 0;
}

static __always_inline bool mc_env_route_excluded(const struct mc_pod *pod, const struct mc_addr *a, bool v4)
{
	__u8 *v;

	if (!(pod->flags & MC_POD_EXCLUDED_IFACES))
		return false;
	v = __mc_cidr(pod, MC_CIDR_ROUTE, a, v4);
	return v && *v;
}

static __always_inline bool mc_env_dns_server(const struct mc_pod *pod, const struct mc_addr *a, bool v4)
{
	return __mc_cidr(pod, MC_CIDR_DNS, a, v4) != 0;
}

#include "decision.h"

/* Records where a UDP query redirected to the DNS listener was going, under
 * the socket and the listener's address as its reply's source will read
 * (127.0.0.1 v4 mapped, or ::1). */
static __always_inline void mc_dns_remember(void *ctx, const struct mc_pod *pod, const struct mc_connect *c,
					    __u16 family)
{
	struct mc_dns_key k = {};
	struct mc_dns_orig v = {};

	k.cookie = bpf_get_socket_cookie(ctx);
	if (c->v4)
		mc_addr_from4(&k.proxy, bpf_htonl(0x7f000001));
	else
		k.proxy.ip[3] = bpf_htonl(1);
	k.proxy_port = MC_DNS_PROXY_PORT;
	v.addr = c->dst;
	v.port = bpf_htons(c->dport);
	v.family = family;
	v.pod = pod->index;
	bpf_map_update_elem(&dns_reverse, &k, &v, BPF_ANY);
}

#endif /* MESHCAP_BPF_COMMON_H */
