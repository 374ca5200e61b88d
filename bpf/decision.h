/* The outbound capture decision: istio's nat OUTPUT rules (ISTIO_OUTPUT,
 * tools/istio-iptables/pkg/capture/run.go) evaluated for one TCP connect(),
 * or one UDP query to port 53 when DNS is captured, first match wins,
 * without netfilter.
 *
 * Plain C over plain structs so that the same code runs in the BPF programs
 * and in the user-space unit tests. The includer defines, before including
 * this file (each takes the pod whose settings apply first):
 *   MC_INLINE                       inline qualifier
 *   bool mc_env_pod_addr(pod, const struct mc_addr *)       pod's own address?
 *   bool mc_env_excluded(pod, const struct mc_addr *, bool v4)  in -x?
 *   bool mc_env_included(pod, const struct mc_addr *, bool v4)  in -i?
 *   __u8 mc_env_port_flags(pod, __u16 port)                 MC_PORT_* bits
 *   bool mc_env_owner_group(pod, __u32 gid)                 listed owner group?
 *   bool mc_env_route_excluded(pod, const struct mc_addr *, bool v4)
 *                                  routed out of a -c interface?
 *   bool mc_env_dns_server(pod, const struct mc_addr *, bool v4)  in --dns-servers?
 * The inbound decision (mc_decide_inbound) follows istio's nat PREROUTING
 * rules for a TCP connection arriving from outside the pod.
 */
#ifndef MESHCAP_BPF_DECISION_H
#define MESHCAP_BPF_DECISION_H

#include "meshcap.h"

/* One connect() or UDP send: who, from where, to where. */
struct mc_connect {
	struct mc_addr dst; /* v4 mapped when v4 */
	struct mc_addr src; /* bound source, zero when unbound */
	__u16 dport;        /* host order */
	__u8 v4;            /* the connection is IPv4 (incl. v4-mapped) */
	__u8 udp;           /* UDP (decided only for DNS), else TCP */
	__u32 uid;
	__u32 gid;
};

struct mc_decision {
	enum mc_verdict verdict;
	enum mc_counter reason;
};

/* A 32-bit constant in network byte order, for BPF and user space alike. */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define MC_NET32(x) __builtin_bswap32(x)
#else
#define MC_NET32(x) (x)
#endif
#define MC_V4_MAPPED_WORD MC_NET32(0x0000ffff)

/* Address tests are written with | and ^ rather than && chains: each &&
 * is a branch, and branches multiply the paths the verifier walks. */
static MC_INLINE bool __mc_is_v4_mapped(const struct mc_addr *a)
{
	return (a->ip[0] | a->ip[1] | (a->ip[2] ^ MC_V4_MAPPED_WORD)) == 0;
}

/* ::W (the first three words zero, the last `last`). */
static MC_INLINE bool __mc_is_v6_low(const struct mc_addr *a, __u32 last)
{
	return (a->ip[0] | a->ip[1] | a->ip[2] | (a->ip[3] ^ last)) == 0;
}

static MC_INLINE bool __mc_is_zero(const struct mc_addr *a)
{
	return (a->ip[0] | a->ip[1] | a->ip[2] | a->ip[3]) == 0;
}

/* 127.0.0.6 / ::6: the proxy's inbound passthrough source. */
static MC_INLINE bool __mc_is_passthrough_src(const struct mc_addr *a, bool v4)
{
	if (v4)
		return a->ip[3] == MC_NET32(0x7f000006); /* 127.0.0.6 */
	return __mc_is_v6_low(a, MC_NET32(6));
}

/* The istio loopback CIDR: ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR or ::1/128. */
static MC_INLINE bool __mc_in_loopback_cidr(const struct mc_pod *pod, const struct mc_addr *a, bool v4)
{
	if (v4)
		return (a->ip[3] & pod->loopback4_mask) == (pod->loopback4 & pod->loopback4_mask);
	return __mc_is_v6_low(a, MC_NET32(1));
}

/* Would the kernel route this destination over lo ("-o lo")? Loopback, the
 * unspecified address, or one of the pod's own addresses. */
static MC_INLINE bool __mc_via_lo(const struct mc_pod *pod, const struct mc_addr *a, bool v4)
{
	if (v4) {
		/* 127.0.0.0/8 or 0.0.0.0 */
		if ((a->ip[3] & MC_NET32(0xff000000)) == MC_NET32(0x7f000000) || a->ip[3] == 0)
			return true;
	} else if (__mc_is_zero(a) || __mc_is_v6_low(a, MC_NET32(1))) {
		return true;
	}
	return mc_env_pod_addr(pod, a);
}

static MC_INLINE struct mc_decision __mc_result(enum mc_verdict v, enum mc_counter r)
{
	struct mc_decision d = {v, r};
	return d;
}

/* Whether `owner` is in ids[0..n). */
static MC_INLINE bool __mc_listed(const __u32 *ids, __u32 n, __u32 owner)
{
	__u32 i;

	for (i = 0; i < MC_MAX_IDS; i++) {
		if (i >= n)
			break;
		if (ids[i] == owner)
			return true;
	}
	return false;
}

/* istio's per-owner rules of ISTIO_OUTPUT for one list (-u, then -g), one
 * rule group per id in order, first match wins:
 *   a) "-o lo ! -d LOOPBACK -p tcp ! --dport TUNNEL --owner ID -j ISTIO_IN_REDIRECT"
 *   b) "-o lo ! --owner ID -j RETURN"   (absent when -i holds a loopback prefix)
 *   c) "--owner ID -j RETURN"
 * With DNS capture, a) of the UIDs also spares port 53 and b) of both lists
 * becomes "-o lo -p tcp ! --dport 53 ...": `rule_a` / `rule_b` say whether
 * they can match this connection at all.
 * Folded: where b) applies (over lo, without a loopback -i) the first id
 * alone decides -- a) or c) for its owner, b) for every other; otherwise the
 * owner's first listed id decides, a) where it applies and c) elsewhere.
 * Sets *d and returns true on a match. */
static MC_INLINE bool __mc_owner_rules(const struct mc_pod *pod, const struct mc_connect *c, bool lo,
				       const __u32 *ids, __u32 n, __u32 owner, enum mc_counter exempt,
				       bool rule_a, bool rule_b, struct mc_decision *d)
{
	bool to_inbound = rule_a && lo && !__mc_in_loopback_cidr(pod, &c->dst, c->v4) && c->dport != pod->tunnel_port;
	bool first_decides = rule_b && lo && !(pod->flags & MC_POD_INCLUDE_HAS_LOOPBACK);
	bool listed;

	if (n == 0)
		return false;
	if (first_decides)
		listed = ids[0] == owner;
	else
		listed = __mc_listed(ids, n, owner);
	if (listed)
		*d = to_inbound ? __mc_result(MC_TO_INBOUND, MC_CNT_REDIRECTED_IN) : __mc_result(MC_PASS, exempt);
	else if (first_decides)
		*d = __mc_result(MC_PASS, MC_CNT_LOCAL_DST);
	else
		return false;
	return true;
}

/* ISTIO_OUTPUT_DNS: port 53 of a resolver (of any address with
 * --capture-all-dns) to the DNS listener; the chain is jumped to only for a
 * family that has DNS rules. */
static MC_INLINE bool __mc_dns_captured(const struct mc_pod *pod, const struct mc_connect *c)
{
	if (c->dport != MC_DNS_PORT || !(pod->flags & (c->v4 ? MC_POD_DNS4 : MC_POD_DNS6)))
		return false;
	return (pod->flags & MC_POD_DNS_ALL) || mc_env_dns_server(pod, &c->dst, c->v4);
}

/* The decision for one TCP connect() or UDP query, in the order of istio's
 * ISTIO_OUTPUT chain. */
static MC_INLINE struct mc_decision mc_decide_outbound(const struct mc_pod *pod, const struct mc_connect *c)
{
	bool v4 = c->v4;
	__u8 pflags = mc_env_port_flags(pod, c->dport);
	/* TCP to 53 under DNS capture: the owner rules' DNS variants. */
	bool dns53 = (pod->flags & MC_POD_DNS) && c->dport == MC_DNS_PORT;
	bool tcp = !c->udp;
	struct mc_decision d;
	bool lo;

	/* istio writes IPv6 rules only with --dual-stack or when the pod has
	 * an IPv6 address; without them IPv6 is not captured. */
	if (!v4 && !(pod->flags & MC_POD_IPV6))
		return __mc_result(MC_PASS, MC_CNT_NOT_INCLUDED);
	lo = __mc_via_lo(pod, &c->dst, v4);
	/* -c: "-A OUTPUT -o IF -j RETURN" comes before the jump to
	 * ISTIO_OUTPUT. The egress interface is taken from the pod's routes. */
	if (!lo && mc_env_route_excluded(pod, &c->dst, v4))
		return __mc_result(MC_PASS, MC_CNT_EXCLUDED_IFACE);
	/* -o: "-p tcp|udp --dport P -j RETURN", first in ISTIO_OUTPUT. */
	if (pflags & MC_PORT_OUT_EXCLUDE)
		return __mc_result(MC_PASS, MC_CNT_EXCLUDED_PORT);

	/* "-o lo -s 127.0.0.6/32 -j RETURN" */
	if (lo && __mc_is_passthrough_src(&c->src, v4))
		return __mc_result(MC_PASS, MC_CNT_PASSTHROUGH_SRC);

	/* Per proxy UID, then per proxy GID; a) is TCP only, and so is b)
	 * under DNS capture (UDP reaches here only then). */
	if (__mc_owner_rules(pod, c, lo, pod->uids, pod->n_uids, c->uid, MC_CNT_EXEMPT_UID, tcp && !dns53,
			     tcp && !dns53, &d))
		return d;
	if (__mc_owner_rules(pod, c, lo, pod->gids, pod->n_gids, c->gid, MC_CNT_EXEMPT_GID, tcp, tcp && !dns53, &d))
		return d;

	/* Owner groups: "--gid-owner G -j RETURN" per excluded group, or one
	 * rule returning every group not listed. */
	if (pod->flags & MC_POD_OWNER_EXCEPT) {
		if (mc_env_owner_group(pod, c->gid))
			return __mc_result(MC_PASS, MC_CNT_OWNER_GROUP);
	} else if (!mc_env_owner_group(pod, c->gid)) {
		return __mc_result(MC_PASS, MC_CNT_OWNER_GROUP);
	}

	/* "-j ISTIO_OUTPUT_DNS", before the loopback RETURN: TCP DNS to a
	 * loopback resolver is captured too. */
	if (__mc_dns_captured(pod, c))
		return __mc_result(MC_TO_DNS, tcp ? MC_CNT_DNS_TCP_REDIRECTED : MC_CNT_DNS_UDP_REDIRECTED);
	/* The rest of the chain is TCP's. */
	if (!tcp)
		return __mc_result(MC_PASS, MC_CNT_UDP_NOT_DNS);
	/* "-d 127.0.0.1/32 -j RETURN" (::1/128) */
	if (__mc_in_loopback_cidr(pod, &c->dst, v4))
		return __mc_result(MC_PASS, MC_CNT_LOCAL_DST);
	/* -x */
	if (mc_env_excluded(pod, &c->dst, v4))
		return __mc_result(MC_PASS, MC_CNT_EXCLUDED_CIDR);
	/* -q */
	if (pflags & MC_PORT_OUT_INCLUDE)
		return __mc_result(MC_TO_OUTBOUND, MC_CNT_REDIRECTED_OUT);
	/* -i */
	if ((pod->flags & MC_POD_INCLUDE_ALL) || mc_env_included(pod, &c->dst, v4))
		return __mc_result(MC_TO_OUTBOUND, MC_CNT_REDIRECTED_OUT);
	return __mc_result(MC_PASS, MC_CNT_NOT_INCLUDED);
}

/* One connection arriving at the pod from outside. */
struct mc_arrival {
	struct mc_addr dst; /* the pod's address it was sent to */
	__u16 dport;        /* host order */
	__u8 v4;
	__u8 iface_flags;   /* MC_IF_* of the interface it arrived on */
};

/* The decision for one inbound TCP connection, in the order of istio's nat
 * PREROUTING chain: -k interfaces first (inserted at the top: to the
 * outbound listener when -i includes the destination, else RETURN), then -c
 * interfaces, then ISTIO_INBOUND: the tunnel port, then -b / -d. */
static MC_INLINE struct mc_decision mc_decide_inbound(const struct mc_pod *pod, const struct mc_arrival *a)
{
	__u8 pflags;

	if (!a->v4 && !(pod->flags & MC_POD_IPV6))
		return __mc_result(MC_PASS, MC_CNT_IN_NOT_INCLUDED);
	if (a->iface_flags & MC_IF_VIRT) {
		if ((pod->flags & MC_POD_INCLUDE_ALL) || mc_env_included(pod, &a->dst, a->v4))
			return __mc_result(MC_TO_OUTBOUND, MC_CNT_IN_VIRT_REDIRECTED);
		return __mc_result(MC_PASS, MC_CNT_IN_EXCLUDED_IFACE);
	}
	if (a->iface_flags & MC_IF_EXCLUDE)
		return __mc_result(MC_PASS, MC_CNT_IN_EXCLUDED_IFACE);
	if (pod->inbound == MC_INBOUND_NONE)
		return __mc_result(MC_PASS, MC_CNT_IN_NOT_INCLUDED);
	if (a->dport == pod->tunnel_port)
		return __mc_result(MC_PASS, MC_CNT_IN_TUNNEL);
	pflags = mc_env_port_flags(pod, a->dport);
	if (pod->inbound == MC_INBOUND_ALL) {
		if (pflags & MC_PORT_IN_EXCLUDE)
			return __mc_result(MC_PASS, MC_CNT_IN_EXCLUDED_PORT);
		return __mc_result(MC_TO_INBOUND, MC_CNT_IN_REDIRECTED);
	}
	if (pflags & MC_PORT_IN_INCLUDE)
		return __mc_result(MC_TO_INBOUND, MC_CNT_IN_REDIRECTED);
	return __mc_result(MC_PASS, MC_CNT_IN_NOT_INCLUDED);
}

#endif /* MESHCAP_BPF_DECISION_H */
