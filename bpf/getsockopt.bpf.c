/* cgroup/getsockopt: answers SO_ORIGINAL_DST (IPv4) and IP6T_SO_ORIGINAL_DST
 * (IPv6) on the proxy's accepted socket from its record, as conntrack does
 * for iptables' REDIRECT. The first answer moves the record from the
 * connection table (orig_dst, or inbound_orig for sk_lookup) onto the
 * socket (accepted_orig), which answers later calls and frees it with the
 * socket: the tables hold only connections the proxy has not asked about.
 * Every other option, and the answer for connections eBPF did not
 * redirect, passes through untouched. */
#include "common.bpf.h"

SEC("cgroup/getsockopt")
int mc_getsockopt(struct bpf_sockopt *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct mc_conn_key k = {};
	struct mc_orig *orig, *mine;
	void *table;
	void *optval = ctx->optval;
	void *optval_end = ctx->optval_end;
	bool want4 = ctx->level == SOL_IP && ctx->optname == SO_ORIGINAL_DST;
	bool want6 = ctx->level == SOL_IPV6 && ctx->optname == IP6T_SO_ORIGINAL_DST;

	if (!want4 && !want6) {
		/* Buffers over a page are not handed to BPF; optlen 0 tells
		 * the kernel to return its own answer (older kernels fail the
		 * call with EFAULT otherwise). */
		if (ctx->optlen > MC_PAGE_SIZE)
			ctx->optlen = 0;
		return MC_SYS_PROCEED;
	}
	if (!sk)
		return MC_SYS_PROCEED;

	/* Asked before: the record is on the socket. */
	orig = bpf_sk_storage_get(&accepted_orig, sk, 0, 0);
	if (orig)
		goto answer;
	/* Load-time constant: kernels without the cookie here key without it. */
	if (mc_node.key_netns)
		k.netns = bpf_get_netns_cookie(ctx);
	if (sk->family == AF_INET) {
		__u32 src4, dst4;

		MC_LOAD(src4, sk->src_ip4);
		MC_LOAD(dst4, sk->dst_ip4);
		mc_addr_from4(&k.server, src4);
		mc_addr_from4(&k.client, dst4);
	} else {
		MC_LOAD_ADDR6(&k.server, sk->src_ip6);
		MC_LOAD_ADDR6(&k.client, sk->dst_ip6);
	}
	MC_LOAD(k.server_port, sk->src_port);            /* host order */
	MC_LOAD(k.client_port, sk->dst_port);
	k.client_port = bpf_ntohs(k.client_port);        /* was network order */

	table = &orig_dst;
	orig = bpf_map_lookup_elem(&orig_dst, &k);
	if (!orig) {
		table = &orig_dst_prev;
		orig = bpf_map_lookup_elem(&orig_dst_prev, &k);
	}
	if (!orig) {
		/* sk_lookup has no netns cookie: its records are keyed by the
		 * pod's own address, which no other pod has. */
		k.netns = 0;
		table = &inbound_orig;
		orig = bpf_map_lookup_elem(&inbound_orig, &k);
	}
	if (!orig) {
		/* Not ours: conntrack's answer (iptables REDIRECT in this pod)
		 * stands. Ours comes first: with iptables in the pod too,
		 * conntrack also tracks a connection eBPF already rewrote, and
		 * would name the listener, or a former connection on the same
		 * ports, instead of the original destination. No pod can be
		 * named here: the node's row counts it. */
		if (ctx->retval != 0)
			mc_count(mc_node.max_pods, MC_CNT_ORIG_NOT_FOUND);
		return MC_SYS_PROCEED;
	}
	/* Move the record onto the socket; without storage it stays in the
	 * table, where the next call finds it again. */
	mine = bpf_sk_storage_get(&accepted_orig, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (mine) {
		*mine = *orig;
		bpf_map_delete_elem(table, &k);
		orig = mine;
	}
answer:
	if (want4 && orig->family == AF_INET) {
		struct sockaddr_in *sa = optval;

		if ((void *)(sa + 1) > optval_end)
			return MC_SYS_PROCEED;
		sa->sin_family = AF_INET;
		sa->sin_port = orig->port;
		sa->sin_addr.s_addr = orig->addr.ip[3];
		ctx->optlen = sizeof(*sa);
	} else if (want6 && orig->family == AF_INET6) {
		struct sockaddr_in6 *sa6 = optval;

		if ((void *)(sa6 + 1) > optval_end)
			return MC_SYS_PROCEED;
		sa6->sin6_family = AF_INET6;
		sa6->sin6_port = orig->port;
		sa6->sin6_flowinfo = 0;
		MC_STORE_ADDR6(sa6->sin6_addr.in6_u.u6_addr32, &orig->addr);
		sa6->sin6_scope_id = 0;
		ctx->optlen = sizeof(*sa6);
	} else {
		/* Asked in the other family than the connection's: as conntrack. */
		mc_count(orig->pod, MC_CNT_ORIG_NOT_FOUND);
		return MC_SYS_PROCEED;
	}
	ctx->retval = 0;
	mc_count(orig->pod, MC_CNT_ORIG_ANSWERED);
	return MC_SYS_PROCEED;
}
