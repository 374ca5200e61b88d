/* Types shared by meshcap's BPF programs and its C++ loader: one definition,
 * fixed-width fields, explicit padding, sizes checked on both sides. */
#ifndef MESHCAP_BPF_MESHCAP_H
#define MESHCAP_BPF_MESHCAP_H

#include <linux/types.h>

/* Largest -u / -g list the eBPF path takes (istio's defaults have one). */
#define MC_MAX_IDS 16
/* Entries of the connection table: original destinations of handshakes in
 * flight (a record moves onto the proxy's socket once established). */
#define MC_ORIG_DST_ENTRIES 16384
/* Entries each CIDR trie may grow to (no preallocation: memory is used only
 * for the prefixes present). */
#define MC_CIDR_ENTRIES 262144
#define MC_POD_ADDR_ENTRIES 256
#define MC_OWNER_GROUP_ENTRIES 64
#define MC_IFACE_ENTRIES 64
/* Routes of the pod's main table (a snapshot taken at init), for -c. */
#define MC_ROUTE_ENTRIES 16384
/* Records of connections steered by sk_lookup, also until established (LRU:
 * a SYN that never completes leaves nothing behind for long). */
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
#define MC_PORT_IN_INCLUDE 0x04  /* -b (reserved for inbound capture) */
#define MC_PORT_IN_EXCLUDE 0x08  /* -d (reserved for inbound capture) */

/* Where a connect() goes. */
enum mc_verdict {
	MC_PASS = 0,        /* its real destination */
	MC_TO_OUTBOUND = 1, /* the outbound listener (-p) */
	MC_TO_INBOUND = 2,  /* the inbound listener (-z) */
};

/* Per-CPU counters, one per decision and event. Keep in sync with
 * mc_counter_names in loader/bpf_loader.cpp (a static_assert checks the
 * count). */
enum mc_counter {
	MC_CNT_REDIRECTED_OUT = 0, /* to the outbound listener */
	MC_CNT_REDIRECTED_IN,      /* proxy to the pod's own address: inbound listener */
	MC_CNT_PASSTHROUGH_SRC,    /* bound to 127.0.0.6 / ::6 */
	MC_CNT_EXEMPT_UID,         /* -u */
	MC_CNT_EXEMPT_GID,         /* -g */
	MC_CNT_OWNER_GROUP,        /* ISTIO_OUTBOUND_OWNER_GROUPS(_EXCLUDE) */
	MC_CNT_EXCLUDED_PORT,      /* -o */
	MC_CNT_EXCLUDED_CIDR,      /* -x */
	MC_CNT_LOCAL_DST,          /* loopback or the pod's own address */
	MC_CNT_NOT_INCLUDED,       /* matched no include (-i / -q) */
	MC_CNT_ORIG_ANSWERED,      /* SO_ORIGINAL_DST answered */
	MC_CNT_ORIG_NOT_FOUND,     /* SO_ORIGINAL_DST asked, no record */
	MC_CNT_MAP_FULL,           /* could not record in the connection table */
	MC_CNT_STORAGE_FAIL,       /* no socket storage: left uncaptured */
	MC_CNT_BIND_FAIL,          /* could not keep the source address */
	MC_CNT_EXCLUDED_IFACE,     /* -c: routed out of an excluded interface */
	/* inbound (sk_lookup), connections arriving from outside the pod */
	MC_CNT_IN_REDIRECTED,      /* to the inbound listener */
	MC_CNT_IN_VIRT_REDIRECTED, /* -k interface: to the outbound listener */
	MC_CNT_IN_EXCLUDED_IFACE,  /* -c, or -k without a matching -i */
	MC_CNT_IN_TUNNEL,          /* -e */
	MC_CNT_IN_EXCLUDED_PORT,   /* -d with -b '*' */
	MC_CNT_IN_NOT_INCLUDED,    /* port not in -b */
	MC_CNT_IN_PROXY_DOWN,      /* no proxy listener: refused */
	MC_CNT_IN_ASSIGN_FAIL,     /* listener unusable for the packet: refused */
	/* --accelerate */
	MC_CNT_ACCEL_SOCKETS,      /* sockets added to the accelerated set */
	MC_CNT_ACCEL_REDIRECTED,   /* sockets whose sends go straight to the peer */
	MC_CNT_ACCEL_TCP,          /* sockets left on TCP (no peer at first send) */
	MC_CNT__MAX,
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
	__u8 inbound;          /* inbound capture: 0 none, 1 -b list, 2 -b '*' */
	__u8 has_excluded_ifaces; /* -c given: consult route4/route6 */
	__u8 ipv6;             /* IPv6 captured: --dual-stack or the pod has IPv6, as istio */
	__u8 accelerate;       /* --accelerate: app<->proxy sockets into accel_socks */
	__u8 pad[1];
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
static_assert(MC_CNT__MAX == 27, "counter names in loader/bpf_capture.cpp");
static_assert(sizeof(struct mc_conn_key) == 36, "mc_conn_key layout");
static_assert(sizeof(struct mc_orig) == 24, "mc_orig layout");
static_assert(sizeof(struct mc_sock_key) == 36, "mc_sock_key layout");
static_assert(sizeof(struct mc_lpm4) == 8, "mc_lpm4 layout");
static_assert(sizeof(struct mc_lpm6) == 20, "mc_lpm6 layout");
#else
_Static_assert(sizeof(struct mc_config) == 180, "mc_config layout");
_Static_assert(MC_CNT__MAX == 27, "counter names in loader/bpf_capture.cpp");
_Static_assert(sizeof(struct mc_conn_key) == 36, "mc_conn_key layout");
_Static_assert(sizeof(struct mc_orig) == 24, "mc_orig layout");
_Static_assert(sizeof(struct mc_sock_key) == 36, "mc_sock_key layout");
_Static_assert(sizeof(struct mc_lpm4) == 8, "mc_lpm4 layout");
_Static_assert(sizeof(struct mc_lpm6) == 20, "mc_lpm6 layout");
#endif

#endif /* MESHCAP_BPF_MESHCAP_H */
