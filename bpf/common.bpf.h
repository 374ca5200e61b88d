/* Shared by every meshcap BPF program: maps, load-time settings, and the
 * environment the decision logic (decision.h) reads. maps.bpf.c defines the
 * maps and settings (MC_DEFINE_MAPS); the other objects declare them extern,
 * and `bpftool gen object` links them into one object with one skeleton. */
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
MC_EXTERN const volatile struct mc_config mc_cfg MC_ZERO;
/* Per destination port: MC_PORT_* bits (-o, -q, -b, -d). */
MC_EXTERN const volatile __u8 mc_port_flags[65536] MC_ZERO;

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
	__uint(max_entries, MC_ORIG_DST_ENTRIES);
	__type(key, struct mc_conn_key);
	__type(value, struct mc_orig);
} orig_dst SEC(".maps");

/* Original destination per proxy-side socket of a redirected connection
 * (outbound, and inbound steered by sk_lookup), freed with the socket: what
 * SO_ORIGINAL_DST answers. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct mc_orig);
} accepted_orig SEC(".maps");

/* The pod's own addresses (v4 mapped): destinations routed over lo. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MC_POD_ADDR_ENTRIES);
	__type(key, struct mc_addr);
	__type(value, __u8);
} pod_addrs SEC(".maps");

/* -x and -i prefixes, one trie each per family: exclusions are checked
 * before inclusions whatever their lengths, as istio's rule order does. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MC_CIDR_ENTRIES);
	__type(key, struct mc_lpm4);
	__type(value, __u8);
} excl_cidr4 SEC(".maps");
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MC_CIDR_ENTRIES);
	__type(key, struct mc_lpm4);
	__type(value, __u8);
} incl_cidr4 SEC(".maps");
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MC_CIDR_ENTRIES);
	__type(key, struct mc_lpm6);
	__type(value, __u8);
} excl_cidr6 SEC(".maps");
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MC_CIDR_ENTRIES);
	__type(key, struct mc_lpm6);
	__type(value, __u8);
} incl_cidr6 SEC(".maps");

/* Owner groups listed in ISTIO_OUTBOUND_OWNER_GROUPS(_EXCLUDE). */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MC_OWNER_GROUP_ENTRIES);
	__type(key, __u32);
	__type(value, __u8);
} owner_gids SEC(".maps");

/* The pod's main routing table (snapshot): prefix -> 1 when its route
 * leaves through a -c interface, 0 otherwise; longest prefix wins, as in
 * the kernel's route lookup. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MC_ROUTE_ENTRIES);
	__type(key, struct mc_lpm4);
	__type(value, __u8);
} route4 SEC(".maps");
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MC_ROUTE_ENTRIES);
	__type(key, struct mc_lpm6);
	__type(value, __u8);
} route6 SEC(".maps");

/* Interfaces of the pod named by -c and -k: ifindex -> MC_IF_* bits. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MC_IFACE_ENTRIES);
	__type(key, __u32);
	__type(value, __u8);
} iface_flags SEC(".maps");

/* The proxy's listening sockets (enum mc_listener_slot), added by sockops
 * when the proxy listens, or by the loader from a running proxy; the kernel
 * removes a socket from the map when it closes. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, MC_LISTENER__MAX);
	__type(key, __u32);
	__type(value, __u64);
} listeners SEC(".maps");

/* Connections sk_lookup steered to a listener: their original destination
 * is their own local address. Like orig_dst, a record moves onto the
 * proxy's socket when the proxy asks for it. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MC_INBOUND_ORIG_ENTRIES);
	__type(key, struct mc_conn_key);
	__type(value, struct mc_orig);
} inbound_orig SEC(".maps");

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
	__type(value, __u32);
} accel_state SEC(".maps");

/* control[0] != 0 once the capture is committed: the loader attaches and
 * pins everything with capture off, then turns it on with this one update,
 * so a loader killed half-way leaves a pod either captured or not at all. */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} control SEC(".maps");

static __always_inline bool mc_enabled(void)
{
	__u32 key = 0;
	__u32 *on = bpf_map_lookup_elem(&control, &key);

	return on && *on;
}

/* One counter per decision and event (enum mc_counter). */
MC_EXTERN struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MC_CNT__MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void mc_count(enum mc_counter c)
{
	__u32 key = c;
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

/* --- the environment decision.h reads --- */
#define MC_INLINE __always_inline

static __always_inline bool mc_env_pod_addr(const struct mc_addr *a)
{
	return bpf_map_lookup_elem(&pod_addrs, a) != 0;
}

static __always_inline bool mc_env_excluded(const struct mc_addr *a, bool v4)
{
	if (v4) {
		struct mc_lpm4 k = {32, a->ip[3]};
		return bpf_map_lookup_elem(&excl_cidr4, &k) != 0;
	}
	struct mc_lpm6 k6 = {128, {a->ip[0], a->ip[1], a->ip[2], a->ip[3]}};
	return bpf_map_lookup_elem(&excl_cidr6, &k6) != 0;
}

static __always_inline bool mc_env_included(const struct mc_addr *a, bool v4)
{
	if (v4) {
		struct mc_lpm4 k = {32, a->ip[3]};
		return bpf_map_lookup_elem(&incl_cidr4, &k) != 0;
	}
	struct mc_lpm6 k6 = {128, {a->ip[0], a->ip[1], a->ip[2], a->ip[3]}};
	return bpf_map_lookup_elem(&incl_cidr6, &k6) != 0;
}

static __always_inline __u8 mc_env_port_flags(__u16 port)
{
	return mc_port_flags[port];
}

static __always_inline bool mc_env_owner_group(__u32 gid)
{
	return bpf_map_lookup_elem(&owner_gids, &gid) != 0;
}

static __always_inline bool mc_env_route_excluded(const struct mc_addr *a, bool v4)
{
	__u8 *v;

	if (!mc_cfg.has_excluded_ifaces)
		return false;
	if (v4) {
		struct mc_lpm4 k = {32, a->ip[3]};
		v = bpf_map_lookup_elem(&route4, &k);
	} else {
		struct mc_lpm6 k6 = {128, {a->ip[0], a->ip[1], a->ip[2], a->ip[3]}};
		v = bpf_map_lookup_elem(&route6, &k6);
	}
	return v && *v;
}

#include "decision.h"

#endif /* MESHCAP_BPF_COMMON_H */
