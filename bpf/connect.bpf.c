/* cgroup/connect4 and cgroup/connect6: send a pod's outbound TCP connects
 * to the proxy's listeners, as istio's nat OUTPUT rules would, and record
 * where each was going. The rewrite happens before the kernel picks a route,
 * so no NAT and no conntrack entry is involved. */
#include "common.bpf.h"

/* Keep the source address the connection would have had without capture:
 * without this the kernel would pick 127.0.0.1 for a 127.0.0.1 destination.
 * iptables' REDIRECT keeps the routed source too. Port 0 defers the port
 * choice to connect() (bpf_bind uses IP_BIND_ADDRESS_NO_PORT semantics). */
static __always_inline void __mc_keep_source4(struct bpf_sock_addr *ctx, __u32 ip4)
{
	struct sockaddr_in sa = {};

	if (!ip4)
		return;
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = ip4;
	if (bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa)))
		mc_count(MC_CNT_BIND_FAIL);
}

static __always_inline void __mc_keep_source6(struct bpf_sock_addr *ctx, const struct mc_addr *a)
{
	struct sockaddr_in6 sa = {};

	if (!a->ip[0] && !a->ip[1] && !a->ip[2] && !a->ip[3])
		return;
	sa.sin6_family = AF_INET6;
	sa.sin6_addr.in6_u.u6_addr32[0] = a->ip[0];
	sa.sin6_addr.in6_u.u6_addr32[1] = a->ip[1];
	sa.sin6_addr.in6_u.u6_addr32[2] = a->ip[2];
	sa.sin6_addr.in6_u.u6_addr32[3] = a->ip[3];
	if (bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa)))
		mc_count(MC_CNT_BIND_FAIL);
}

/* The source a redirected IPv4 connection keeps: the proxy dialing one of
 * the pod's own addresses gets that address (127.0.0.1 for the rest of
 * 127.0.0.0/8, as the kernel's local route picks); anything else gets the
 * pod's address. 0: leave it to the kernel. */
static __always_inline __u32 __mc_source4(enum mc_verdict v, __u32 dst4)
{
	if (v != MC_TO_INBOUND)
		return mc_cfg.src4;
	if ((dst4 & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000))
		return bpf_htonl(0x7f000001);
	return dst4;
}

/* Decides, counts, and records the original destination on the socket.
 * Returns the verdict, MC_PASS when the connect goes where it was going. */
static __always_inline enum mc_verdict __mc_capture(struct bpf_sock_addr *ctx,
						    struct mc_connect *c, __u16 family)
{
	struct mc_decision d;
	struct mc_orig *orig;
	__u64 ugid;

	ugid = bpf_get_current_uid_gid();
	c->uid = (__u32)ugid;
	c->gid = (__u32)(ugid >> 32);
	d = mc_decide_outbound(&mc_cfg, c);
	mc_count(d.reason);
	if (d.verdict == MC_PASS) {
		/* A socket connected again (after AF_UNSPEC) and not captured
		 * this time must not keep its earlier record. */
		bpf_sk_storage_delete(&orig_store, ctx->sk);
		return MC_PASS;
	}

	orig = bpf_sk_storage_get(&orig_store, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!orig) {
		/* Without a record the proxy could not learn the destination:
		 * leave this connection alone and say so. */
		mc_count(MC_CNT_STORAGE_FAIL);
		return MC_PASS;
	}
	orig->addr = c->dst;
	orig->port = bpf_htons(c->dport);
	orig->family = family;
	orig->reserved = 0;
	return d.verdict;
}

static __always_inline int __mc_is_tcp(struct bpf_sock_addr *ctx)
{
	return ctx->type == SOCK_STREAM && ctx->protocol == IPPROTO_TCP;
}

SEC("cgroup/connect4")
int mc_connect4(struct bpf_sock_addr *ctx)
{
	struct mc_connect c = {};
	struct bpf_sock *sk = ctx->sk;
	enum mc_verdict v;

	if (!__mc_is_tcp(ctx) || !sk || !mc_enabled())
		return 1;
	__u32 dst4, src4;

	MC_LOAD(dst4, ctx->user_ip4);
	MC_LOAD(src4, sk->src_ip4);
	mc_addr_from4(&c.dst, dst4);
	mc_addr_from4(&c.src, src4);
	c.dport = bpf_ntohs(ctx->user_port);
	c.v4 = 1;

	v = __mc_capture(ctx, &c, AF_INET);
	if (v == MC_PASS)
		return 1;
	if (!src4)
		__mc_keep_source4(ctx, __mc_source4(v, dst4));
	ctx->user_ip4 = bpf_htonl(0x7f000001); /* 127.0.0.1 */
	ctx->user_port = bpf_htons(v == MC_TO_INBOUND ? mc_cfg.inbound_port : mc_cfg.proxy_port);
	mc_debug("connect4 redirected to %d", bpf_ntohs(ctx->user_port));
	return 1;
}

SEC("cgroup/connect6")
int mc_connect6(struct bpf_sock_addr *ctx)
{
	struct mc_connect c = {};
	struct bpf_sock *sk = ctx->sk;
	struct mc_addr src = {};
	enum mc_verdict v;

	if (!__mc_is_tcp(ctx) || !sk || !mc_enabled())
		return 1;
	MC_LOAD_ADDR6(&c.dst, ctx->user_ip6);
	MC_LOAD_ADDR6(&c.src, sk->src_ip6);
	c.dport = bpf_ntohs(ctx->user_port);
	/* An AF_INET6 socket dialing ::ffff:a.b.c.d makes an IPv4 connection:
	 * decide it as IPv4, as the IPv4 rules would see it. */
	c.v4 = __mc_is_v4_mapped(&c.dst);

	v = __mc_capture(ctx, &c, c.v4 ? AF_INET : AF_INET6);
	if (v == MC_PASS)
		return 1;
	if (!c.src.ip[0] && !c.src.ip[1] && !c.src.ip[2] && !c.src.ip[3]) {
		if (v == MC_TO_INBOUND && c.v4)
			mc_addr_from4(&src, __mc_source4(v, c.dst.ip[3]));
		else if (v == MC_TO_INBOUND)
			src = c.dst;
		else if (c.v4 && mc_cfg.has_src4)
			mc_addr_from4(&src, mc_cfg.src4);
		else if (!c.v4 && mc_cfg.has_src6) {
			src.ip[0] = mc_cfg.src6[0];
			src.ip[1] = mc_cfg.src6[1];
			src.ip[2] = mc_cfg.src6[2];
			src.ip[3] = mc_cfg.src6[3];
		}
		__mc_keep_source6(ctx, &src);
	}
	if (c.v4) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0xffff);
		ctx->user_ip6[3] = bpf_htonl(0x7f000001); /* ::ffff:127.0.0.1 */
	} else {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1); /* ::1 */
	}
	ctx->user_port = bpf_htons(v == MC_TO_INBOUND ? mc_cfg.inbound_port : mc_cfg.proxy_port);
	return 1;
}
