/* Types shared by meshcap's BPF programs and its C++ loader: one definition,
 * fixed-width fields, explicit padding, sizes checked on both sides. */
#ifndef MESHCAP_BPF_MESHCAP_H
#define MESHCAP_BPF_MESHCAP_H

#include <linux/types.h>

/* Largest -u / -g list the eBPF path takes (istio's defaults have one). */
#define MC_MAX_IDS 16
/* Entries of the connection table: original destinations of redirected
 * connections the proxy has not asked about yet (its SO_ORIGINAL_DST moves a
 * record onto its socket). */
#define MC_ORIG_DST_ENTRIES 16384
/* Entries each CIDR trie may grow to (no preallocation: memory is used only
 * for the prefixes present). */
#define MC_CIDR_ENTRIES 262144
#define MC_POD_ADDR_ENTRIES 256
#define MC_OWNER_GROUP_ENTRIES 64
#define MC_IFACE_ENTRIES 64
/* Routes of the pod's main table (a snapshot taken at init), for -c. */
#define MC_ROUTE_ENTRIES 16384
/* Records of connections steered by sk_lookup, also until the proxy asks
 * (LRU: a SYN that never completes leaves nothing behind for long). */
#define MC_INBOUND_ORIG_ENTRIES 16384
/* Sockets of accelerated application<->proxy connections (--accelerate):
 * two per open connection. */
#define MC_ACCEL_ENTRIES 65536

/* Bits of iface_flags[ifindex]. */
#define MC_IF_EXCLUDE 0x01 /* -c */
#define MC_IF_VIRT 0x02    /* -k */

/* Slots of the listeners socket map, filled when the proxy listens. */
enum mc_listener_slot {
	MC_LISTENER_IN4 = 0,  /* inbound listener (-z), AF_INET */
	MC_LISTENER_IN6 = 1,  /* inbound listener, AF_INET6 */
	MC_LISTENER_OUT4 = 2, /* outbound listener (-p), AF_INET */
	MC_LISTENER_OUT6 = 3, /* outbound listener, AF_INET6 */
	MC_LISTENER__MAX,
};

/* Bits of mc_port_flags[port]. */
#define MC_PORT_OUT_EXCLUDE 0x01 /* -o */
#define MC_PORT_OUT_INCLUDE 0x02 /* -q */
#define MC_PORT_IN_INCLUDE 0x04  /* -b */
#define MC_PORT_IN_EXCLUDE 0x08  /* -d */

/* Where a connect() goes. */
enum mc_verdict {
	MC_PASS = 0,        /* its real destination */
	MC_TO_OUTBOUND = 1, /* the outbound listener (-p) */
	MC_TO_INBOUND = 2,  /* the inbound listener (-z) */
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
	X(ACCEL_TCP, accel_tcp, "--accelerate: sockets left on TCP (no peer at first send)")

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

/* Load-time settings (read-only data, set before load). Addresses are in
 * network byte order, ports in host order. */
struct mc_config {
	__u16 proxy_port;      /* -p: outbound listener */
	__u16 inbound_port;    /* -z: inbound listener */
	__u16 tunnel_port;     /* -e: never sent to the inbound listener */
	__u8 include_all;      /* -i '*' */
	__u8 include_has_loopback; /* -i holds a loopback prefix */
	__u8 owner_groups_except;  /* owner groups: 1 = all but listed, 0 = only listed */
	__u8 has_src4;         /* src4 is set */
	__u8 has_src6;         /* src6 is set */
	__u8 inbound;          /* enum mc_inbound */
	__u8 has_excluded_ifaces; /* -c given: consult route4/route6 */
	__u8 ipv6;             /* IPv6 captured: --dual-stack or the pod has IPv6, as istio */
	__u8 accelerate;       /* --accelerate: app<->proxy sockets into accel_socks */
	__u8 has_ifaces;       /* -c or -k given: sk_lookup reads the arrival interface */
	__u32 n_uids;          /* entries used in uids */
	__u32 n_gids;          /* entries used in gids */
	__u32 uids[MC_MAX_IDS]; /* -u, in order */
	__u32 gids[MC_MAX_IDS]; /* -g, in order */
	__u32 loopback4;       /* ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR address */
	__u32 loopback4_mask;  /* and its mask */
	__u32 src4;            /* the pod's IPv4 source address */
	__u32 src6[4];         /* the pod's IPv6 source address */
};

/* An address in 16 bytes: IPv4 as ::ffff:a.b.c.d, so one key type serves
 * AF_INET sockets, AF_INET6 sockets and v4-mapped addresses alike. */
struct mc_addr {
	__u32 ip[4];
};

/* The connection table's key: the application's end (client) and the
 * listener it was sent to (server). Ports in host order. */
struct mc_conn_key {
	struct mc_addr client;
	struct mc_addr server;
	__u16 client_port;
	__u16 server_port;
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

/* An original destination. */
struct mc_orig {
	struct mc_addr addr; /* as dialed (v4 mapped) */
	__u16 port;          /* network order, as in sockaddr */
	__u16 family;        /* AF_INET or AF_INET6: what SO_ORIGINAL_DST answers */
	__u32 reserved;      /* zero */
};

/* LPM trie keys. */
struct mc_lpm4 {
	__u32 prefixlen;
	__u32 addr;
};
struct mc_lpm6 {
	__u32 prefixlen;
	__u32 addr[4];
};

#ifdef __cplusplus
static_assert(sizeof(struct mc_config) == 180, "mc_config layout");
static_assert(sizeof(struct mc_conn_key) == 36, "mc_conn_key layout");
static_assert(sizeof(struct mc_orig) == 24, "mc_orig layout");
static_assert(sizeof(struct mc_sock_key) == 36, "mc_sock_key layout");
static_assert(sizeof(struct mc_lpm4) == 8, "mc_lpm4 layout");
static_assert(sizeof(struct mc_lpm6) == 20, "mc_lpm6 layout");
#else
_Static_assert(sizeof(struct mc_config) == 180, "mc_config layout");
_Static_assert(sizeof(struct mc_conn_key) == 36, "mc_conn_key layout");
_Static_assert(sizeof(struct mc_orig) == 24, "mc_orig layout");
_Static_assert(sizeof(struct mc_sock_key) == 36, "mc_sock_key layout");
_Static_assert(sizeof(struct mc_lpm4) == 8, "mc_lpm4 layout");
_Static_assert(sizeof(struct mc_lpm6) == 20, "mc_lpm6 layout");
#endif

#endif /* MESHCAP_BPF_MESHCAP_H */
