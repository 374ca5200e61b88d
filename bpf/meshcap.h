/* Types shared by meshcap's BPF programs and its C++ loader: one definition,
 * fixed-width fields, explicit padding, sizes checked on both sides. */
#ifndef MESHCAP_BPF_MESHCAP_H
#define MESHCAP_BPF_MESHCAP_H

#include <linux/types.h>

/* Largest -u / -g list the eBPF path takes (istio's defaults have one). */
#define MC_MAX_IDS 16
/* Default sizes; a data path sets its own at load (meshcap node start
 * --max-pods, --max-connections; one pod for a per-pod capture). */
#define MC_DEFAULT_MAX_PODS 256
/* Entries of the connection table: original destinations of redirected
 * connections the proxy has not asked about yet (its SO_ORIGINAL_DST moves
 * a record onto its socket). */
#define MC_DEFAULT_MAX_CONNECTIONS 16384
/* Entries the per-pod tables hold, per pod the data path takes: CIDR
 * prefixes and routes, ports, addresses, owner groups, interfaces. A node's
 * pods share each table, so one pod may hold more than its share while
 * others hold less; a table always has room for one pod with the most a pod
 * may have (the _MAX figures). None is preallocated: a hash table costs its
 * buckets (16 bytes per entry it may hold, in powers of two) and the rows
 * written, so the shares are what a sidecar pod typically holds (istio's
 * defaults: 3 ports, no groups or interfaces; a dual-stack pod has five
 * addresses with loopback and link-local ones), not the most it may. */
#define MC_CIDRS_PER_POD 1024
#define MC_PORTS_PER_POD 16
#define MC_PORTS_MAX 256
#define MC_ADDRS_PER_POD 8
#define MC_ADDRS_MAX 16
#define MC_GROUPS_PER_POD 4
#define MC_GROUPS_MAX 64
#define MC_IFACES_PER_POD 4
#define MC_IFACES_MAX 16
/* Sockets of accelerated application<->proxy connections (--accelerate):
 * two per open connection. */
#define MC_ACCEL_ENTRIES 65536

/* DNS capture (istio's --redirect-dns): queries to port 53 go to the
 * proxy's DNS listener on 15053 (istio fixes both). Replies to a redirected
 * UDP query are mapped back to the resolver the application addressed by a
 * bounded LRU table (dns_reverse): one entry per socket and proxy address,
 * MC_DNS_REPLIES_PER_POD per pod the data path takes, within these bounds. */
#define MC_DNS_PORT 53
#define MC_DNS_PROXY_PORT 15053
#define MC_DNS_REPLIES_PER_POD 64
#define MC_DNS_REPLIES_MIN 1024
#define MC_DNS_REPLIES_MAX 65536

/* Learning a namespace's cookie where the kernel has no SO_NETNS_COOKIE
 * (before 5.14): a process of the loader, inside the data path's cgroup and
 * the namespace, connects a socket marked MC_COOKIE_MARK to this address and
 * port; connect4 records bpf_get_netns_cookie() under the process's id in
 * cookie_probe and refuses the connect, so nothing is sent. */
#define MC_COOKIE_PROBE_ADDR 0x7ffffffe /* 127.255.255.254, host order */
#define MC_COOKIE_PROBE_PORT 9
#define MC_COOKIE_MARK 0x6d636b31 /* "mck1" */

/* Bits of an interface's flags (iface_flags). */
#define MC_IF_EXCLUDE 0x01 /* -c */
#define MC_IF_VIRT 0x02    /* -k */

/* The proxy's listeners a pod can have (listeners is keyed by pod and slot). */
enum mc_listener_slot {
	MC_LISTENER_IN4 = 0,  /* inbound listener (-z), AF_INET */
	MC_LISTENER_IN6 = 1,  /* inbound listener, AF_INET6 */
	MC_LISTENER_OUT4 = 2, /* outbound listener (-p), AF_INET */
	MC_LISTENER_OUT6 = 3, /* outbound listener, AF_INET6 */
	MC_LISTENER__MAX,
};

/* Bits of a pod's port flags (pod_ports). */
#define MC_PORT_OUT_EXCLUDE 0x01 /* -o */
#define MC_PORT_OUT_INCLUDE 0x02 /* -q */
#define MC_PORT_IN_INCLUDE 0x04  /* -b */
#define MC_PORT_IN_EXCLUDE 0x08  /* -d */

/* Where a connection goes. */
enum mc_verdict {
	MC_PASS = 0,        /* its real destination */
	MC_TO_OUTBOUND = 1, /* the outbound listener (-p) */
	MC_TO_INBOUND = 2,  /* the inbound listener (-z) */
	MC_TO_DNS = 3,      /* the proxy's DNS listener (--redirect-dns) */
};

/* Per-CPU counters, one per decision and event: X(ID, name, what). The enum
 * here and the loader's counter names (what status prints) both come from
 * this one table. */
#define MC_COUNTERS(X) \
	X(REDIRECTED_OUT, redirected_outbound, "to the outbound listener") \
	X(REDIRECTED_IN, redirected_inbound, "proxy to the pod's own address: inbound listener") \
	X(PASSTHROUGH_SRC, passthrough_source, "bound to 127.0.0.6 / ::6") \
	X(EXEMPT_UID, exempt_uid, "-u") \
	X(EXEMPT_GID, exempt_gid, "-g") \
	X(OWNER_GROUP, owner_group, "ISTIO_OUTBOUND_OWNER_GROUPS(_EXCLUDE)") \
	X(EXCLUDED_PORT, excluded_port, "-o") \
	X(EXCLUDED_CIDR, excluded_cidr, "-x") \
	X(LOCAL_DST, local_destination, "loopback or the pod's own address") \
	X(NOT_INCLUDED, not_included, "matched no include (-i / -q)") \
	X(ORIG_ANSWERED, orig_dst_answered, "SO_ORIGINAL_DST answered") \
	X(ORIG_NOT_FOUND, orig_dst_not_found, "SO_ORIGINAL_DST asked, no record") \
	X(MAP_FULL, map_full, "could not record in the connection table") \
	X(STORAGE_FAIL, storage_failed, "no socket storage: left uncaptured") \
	X(BIND_FAIL, bind_failed, "could not keep the source address") \
	X(EXCLUDED_IFACE, excluded_interface, "-c: routed out of an excluded interface") \
	X(IN_REDIRECTED, in_redirected, "arriving: to the inbound listener") \
	X(IN_VIRT_REDIRECTED, in_virt_redirected, "arriving on a -k interface: to the outbound listener") \
	X(IN_EXCLUDED_IFACE, in_excluded_interface, "arriving on -c, or -k without a matching -i") \
	X(IN_TUNNEL, in_tunnel_port, "arriving at -e") \
	X(IN_EXCLUDED_PORT, in_excluded_port, "arriving at a -d port with -b '*'") \
	X(IN_NOT_INCLUDED, in_not_included, "arriving at a port not in -b") \
	X(IN_PROXY_DOWN, in_proxy_down, "no proxy listener: refused") \
	X(IN_ASSIGN_FAIL, in_assign_failed, "listener unusable for the packet: refused") \
	X(ACCEL_SOCKETS, accel_sockets, "--accelerate: sockets added to the accelerated set") \
	X(ACCEL_REDIRECTED, accel_redirected, "--accelerate: sockets whose sends go straight to the peer") \
	X(ACCEL_TCP, accel_tcp, "--accelerate: sockets left on TCP (no peer at first send)") \
	X(DNS_UDP_REDIRECTED, dns_udp_redirected, "--redirect-dns: UDP query to the DNS listener") \
	X(DNS_TCP_REDIRECTED, dns_tcp_redirected, "--redirect-dns: TCP query to the DNS listener") \
	X(DNS_REPLY_MAPPED, dns_reply_mapped, "--redirect-dns: reply source mapped back to the resolver") \
	X(UDP_NOT_DNS, udp_not_dns, "--redirect-dns: UDP to port 53 left alone (not a captured resolver)")

enum mc_counter {
#define MC_COUNTER_ENUM(id, name, what) MC_CNT_##id,
	MC_COUNTERS(MC_COUNTER_ENUM)
#undef MC_COUNTER_ENUM
	MC_CNT__MAX,
};

/* mc_config.inbound: which inbound ports sk_lookup captures. */
enum mc_inbound {
	MC_INBOUND_NONE = 0, /* -b '' */
	MC_INBOUND_LIST = 1, /* -b LIST: only those */
	MC_INBOUND_ALL = 2,  /* -b '*': all but -d */
};

/* Bits of mc_pod.flags. */
#define MC_POD_INCLUDE_ALL (1u << 0)        /* -i '*' */
#define MC_POD_INCLUDE_HAS_LOOPBACK (1u << 1) /* -i holds a loopback prefix */
#define MC_POD_OWNER_EXCEPT (1u << 2)       /* owner groups: all but listed (else only listed) */
#define MC_POD_HAS_SRC4 (1u << 3)           /* src4 is set */
#define MC_POD_HAS_SRC6 (1u << 4)           /* src6 is set */
#define MC_POD_IPV6 (1u << 5)               /* IPv6 captured: --dual-stack or the pod has IPv6, as istio */
#define MC_POD_EXCLUDED_IFACES (1u << 6)    /* -c given: consult the pod's routes */
#define MC_POD_IFACES (1u << 7)             /* -c or -k given: sk_lookup reads the arrival interface */
#define MC_POD_PORTS (1u << 8)              /* the pod has entries in pod_ports */
#define MC_POD_ACCELERATE (1u << 9)         /* --accelerate */
#define MC_POD_OWNER_GROUPS (1u << 10)      /* the pod has entries in owner_gids */
#define MC_POD_DNS (1u << 11)               /* --redirect-dns in effect: istio's DNS variants of the owner rules */
#define MC_POD_DNS4 (1u << 12)              /* IPv4 DNS captured: --capture-all-dns or IPv4 resolvers */
#define MC_POD_DNS6 (1u << 13)              /* IPv6 DNS captured: --capture-all-dns or IPv6 resolvers */
#define MC_POD_DNS_ALL (1u << 14)           /* --capture-all-dns: any address's port 53, not only the resolvers */

/* One enrolled pod's settings: istio-iptables' flags as the programs read
 * them, keyed by the pod's network-namespace cookie (pods). Addresses in
 * network byte order, ports in host order. */
struct mc_pod {
	__u32 index;           /* the pod's slot: counters and per-pod map keys */
	__u32 flags;           /* MC_POD_* */
	__u16 proxy_port;      /* -p: outbound listener */
	__u16 inbound_port;    /* -z: inbound listener */
	__u16 tunnel_port;     /* -e: never sent to the inbound listener */
	__u8 inbound;          /* enum mc_inbound */
	__u8 pad;
	__u32 n_uids;          /* entries used in uids */
	__u32 n_gids;          /* entries used in gids */
	__u32 uids[MC_MAX_IDS]; /* -u, in order */
	__u32 gids[MC_MAX_IDS]; /* -g, in order */
	__u32 loopback4;       /* ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR address */
	__u32 loopback4_mask;  /* and its mask */
	__u32 src4;            /* the pod's IPv4 source address */
	__u32 src6[4];         /* the pod's IPv6 source address */
};

/* Load-time settings of a data path (read-only data, set before load):
 * what this kernel lets the programs do. */
struct mc_node {
	__u32 max_pods;        /* rows of the per-pod counters (one more for the node) */
	__u8 key_netns;        /* the connection table's key carries the netns cookie:
				* getsockopt can read it (bpf_get_netns_cookie, 5.15+) */
	__u8 ingress_ifindex;  /* sk_lookup may read the arrival interface (5.17+) */
	__u8 accelerate;       /* the sk_msg program is attached: accelerate pods that ask */
	__u8 pad;
};

/* An address in 16 bytes: IPv4 as ::ffff:a.b.c.d, so one key type serves
 * AF_INET sockets, AF_INET6 sockets and v4-mapped addresses alike. */
struct mc_addr {
	__u32 ip[4];
};

/* The connection table's key: the application's end (client) and the
 * listener it was sent to (server), and the network namespace they are in
 * where the kernel tells getsockopt (else 0: the client end is then the
 * pod's own address, bound at connect, which no other pod has). Ports in
 * host order. */
struct mc_conn_key {
	__u64 netns;
	struct mc_addr client;
	struct mc_addr server;
	__u16 client_port;
	__u16 server_port;
	__u32 pad;
};

/* The accelerated-socket map's key: one socket's own view of its
 * connection. Ports in host order. The peer's key swaps the two ends. */
struct mc_sock_key {
	struct mc_addr local;
	struct mc_addr remote;
	__u16 local_port;
	__u16 remote_port;
};

/* Per-socket send decision of the sk_msg program (--accelerate), made at
 * the socket's first send and kept, so its bytes never take two paths. */
#define MC_ACCEL_UNDECIDED 0
#define MC_ACCEL_REDIRECT 1
#define MC_ACCEL_TCP 2

/* An accelerated socket's decision, and its pod (for the counters). */
struct mc_accel_state {
	__u32 decision; /* MC_ACCEL_* */
	__u32 pod;
};

/* An original destination, and whose it is. */
struct mc_orig {
	struct mc_addr addr; /* as dialed (v4 mapped) */
	__u16 port;          /* network order, as in sockaddr */
	__u16 family;        /* AF_INET or AF_INET6: what SO_ORIGINAL_DST answers */
	__u32 pod;           /* the pod's index (its counters) */
	__u64 netns;         /* the key's netns (see mc_conn_key) */
	__u32 accelerate;    /* the pod asked for --accelerate */
	__u32 pad;
};

/* A listening socket of an enrolled pod's proxy, tagged at bind() so
 * sockops can file it under its pod when it listens. */
struct mc_sock_pod {
	__u32 pod;
	__u32 slot; /* enum mc_listener_slot */
};

/* dns_reverse: a socket's redirected UDP queries, by the proxy address they
 * were sent to (as the reply's source reads: v4 mapped for IPv4). Ports in
 * host order. */
struct mc_dns_key {
	__u64 cookie; /* the socket's cookie */
	struct mc_addr proxy;
	__u16 proxy_port;
	__u16 pad;
	__u32 pad2;
};
/* ... and the resolver the application addressed. */
struct mc_dns_orig {
	struct mc_addr addr; /* v4 mapped for IPv4 */
	__u16 port;          /* network order, as in sockaddr */
	__u16 family;        /* AF_INET or AF_INET6: the socket's view */
	__u32 pod;
};

/* An index of the pod tables: the pod holding it, and MC_SLOT_* bits. */
struct mc_pod_slot {
	__u64 cookie; /* the pod's netns cookie; 0: free */
	__u32 flags;
	__u32 pad;
};
#define MC_SLOT_DIRTY 0x1 /* rows under the index may be stale: clear before use */

/* Keys of the per-pod tables: the pod's index first, then what it is about. */
struct mc_pod_port {
	__u32 pod;
	__u32 port;
};
struct mc_pod_u32 {
	__u32 pod;
	__u32 value; /* a GID (owner_gids), an ifindex (iface_flags) */
};
struct mc_pod_addr {
	__u32 pod;
	struct mc_addr addr;
};
struct mc_listener_key {
	__u32 pod;
	__u32 slot;
};

/* What a CIDR trie entry is about. */
enum mc_cidr_kind {
	MC_CIDR_DNS = 0,     /* a resolver of --dns-servers (a whole address) */
	MC_CIDR_EXCLUDE = 1, /* -x */
	MC_CIDR_INCLUDE = 2, /* -i */
	MC_CIDR_ROUTE = 3,   /* a route of the pod's main table; value 1 when it leaves by a -c interface */
};
/* LPM trie keys: the pod and the kind (always matched whole, 32 bits),
 * then the address; prefixlen counts the 32 bits of `tag` too. */
struct mc_lpm4 {
	__u32 prefixlen;
	__u32 tag; /* pod index << 2 | enum mc_cidr_kind */
	__u32 addr;
};
struct mc_lpm6 {
	__u32 prefixlen;
	__u32 tag;
	__u32 addr[4];
};
#define MC_LPM_TAG(pod, kind) (((pod) << 2) | (kind))

#ifdef __cplusplus
#define MC_STATIC_ASSERT static_assert
#else
#define MC_STATIC_ASSERT _Static_assert
#endif
MC_STATIC_ASSERT(sizeof(struct mc_pod) == 180, "mc_pod layout");
MC_STATIC_ASSERT(sizeof(struct mc_node) == 8, "mc_node layout");
MC_STATIC_ASSERT(sizeof(struct mc_conn_key) == 48, "mc_conn_key layout");
MC_STATIC_ASSERT(sizeof(struct mc_orig) == 40, "mc_orig layout");
MC_STATIC_ASSERT(sizeof(struct mc_sock_key) == 36, "mc_sock_key layout");
MC_STATIC_ASSERT(sizeof(struct mc_lpm4) == 12, "mc_lpm4 layout");
MC_STATIC_ASSERT(sizeof(struct mc_lpm6) == 24, "mc_lpm6 layout");
MC_STATIC_ASSERT(sizeof(struct mc_pod_addr) == 20, "mc_pod_addr layout");
MC_STATIC_ASSERT(sizeof(struct mc_pod_slot) == 16, "mc_pod_slot layout");
MC_STATIC_ASSERT(sizeof(struct mc_dns_key) == 32, "mc_dns_key layout");
MC_STATIC_ASSERT(sizeof(struct mc_dns_orig) == 24, "mc_dns_orig layout");

#endif /* MESHCAP_BPF_MESHCAP_H */
