/* cgroup/connect4 and cgroup/connect6: send an enrolled pod's outbound TCP
 * connects to its proxy's listeners, and its UDP sockets connected to a
 * resolver's port 53 to the DNS listener (--redirect-dns), as istio's nat
 * OUTPUT rules would, and record where each was going. The rewrite happens
 * before the kernel picks a route, so no NAT and no conntrack entry is
 * involved. A socket in a namespace that is not enrolled costs one lookup. */
#include "common.bpf.h"

/* Keeps the source address the connection would have had without capture:
 * without this the kernel would pick 127.0.0.1 for a 127.0.0.1 destination.
 * iptables' REDIRECT keeps the routed source too. It also makes the
 * connection table's key unique on the node where getsockopt cannot read
 * the netns cookie: no other pod has this source address. Port 0 defers the
 * port choice to connect() (bpf_bind uses IP_BIND_ADDRESS_NO_PORT
 * semantics). */
static __always_inline void __mc_keep_source4(struct bpf_sock_addr *ctx, const struct mc_pod *pod, __u32 ip4)
{
	struct sockaddr_in sa = {};

	if (!ip4)
		return;
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = ip4;
	if (bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa)))
		mc_count(pod->index, MC_CNT_BIND_FAIL);
}

static __always_inline void __mc_keep_source6(struct bpf_sock_addr *ctx, const struct mc_pod *pod,
					      const struct mc_addr *a)
{
	struct sockaddr_in6 sa = {};

	if (__mc_is_zero(a))
		return;
	sa.sin6_family = AF_INET6;
	MC_STORE_ADDR6(sa.sin6_addr.in6_u.u6_addr32, a);
	if (bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa)))
		mc_count(pod->index, MC_CNT_BIND_FAIL);
}

/* Decides, counts, and records the original destination on the socket.
 * Returns the verdict, MC_PASS when the connect goes where it was going. */
static __always_inline enum mc_verdict __mc_capture(struct bpf_sock_addr *ctx, const struct mc_pod *pod,
						    __u64 netns, struct mc_connect *c, __u16 family)
{
	struct mc_decision d;
	struct mc_orig *orig;
	__u64 ugid;

	ugid = bpf_get_current_uid_gid();
	c->uid = (__u32)ugid;
	c->gid = (__u32)(ugid >> 32);
	d = mc_decide_outbound(pod, c);
	mc_count(pod->index, d.reason);
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
		mc_count(pod->index, MC_CNT_STORAGE_FAIL);
		return MC_PASS;
	}
	orig->addr = c->dst;
	orig->port = bpf_htons(c->dport);
	orig->family = family;
	orig->pod = pod->index;
	orig->netns = mc_node.key_netns ? netns : 0;
	orig->accelerate = mc_node.accelerate && (pod->flags & MC_POD_ACCELERATE) && !c->udp;
	orig->pad = 0;
	return d.verdict;
}

static __always_inline bool __mc_is_tcp(struct bpf_sock_addr *ctx)
{
	return ctx->type == SOCK_STREAM && ctx->protocol == IPPROTO_TCP;
}

static __always_inline bool __mc_is_udp(struct bpf_sock_addr *ctx)
{
	return ctx->type == SOCK_DGRAM && ctx->protocol == IPPROTO_UDP;
}

static __always_inline __u16 __mc_listener_port(const struct mc_pod *pod, enum mc_verdict v)
{
	if (v == MC_TO_DNS)
		return MC_DNS_PROXY_PORT;
	return v == MC_TO_INBOUND ? pod->inbound_port : pod->proxy_port;
}

/* Which sockets a connect hook decides: TCP, and UDP to port 53 (only DNS
 * capture is about UDP). */
static __always_inline bool __mc_wanted(struct bpf_sock_addr *ctx, bool *udp)
{
	*udp = __mc_is_udp(ctx);
	if (*udp)
		return ctx->user_port == bpf_htons(MC_DNS_PORT);
	return __mc_is_tcp(ctx);
}

/* The loader asks for this namespace's cookie (MC_COOKIE_PROBE_ADDR):
 * record it and refuse the connect. */
static __always_inline bool __mc_cookie_probe(struct bpf_sock_addr *ctx, struct bpf_sock *sk, __u32 dst4)
{
	__u32 mark, pid;
	__u64 cookie;

	if (dst4 != bpf_htonl(MC_COOKIE_PROBE_ADDR) || ctx->user_port != bpf_htons(MC_COOKIE_PROBE_PORT))
		return false;
	MC_LOAD(mark, sk->mark);
	if (mark != MC_COOKIE_MARK)
		return false;
	pid = (__u32)(bpf_get_current_pid_tgid() >> 32);
	cookie = bpf_get_netns_cookie(ctx);
	bpf_map_update_elem(&cookie_probe, &pid, &cookie, BPF_ANY);
	return true;
}

SEC("cgroup/connect4")
int mc_connect4(struct bpf_sock_addr *ctx)
{
	struct mc_connect c = {};
	struct bpf_sock *sk = ctx->sk;
	struct mc_pod *pod;
	enum mc_verdict v;
	__u32 dst4, src4;
	__u64 netns;
	bool udp;

	if (!sk || !__mc_wanted(ctx, &udp))
		return MC_SYS_PROCEED;
	MC_LOAD(dst4, ctx->user_ip4);
	if (!udp && __mc_cookie_probe(ctx, sk, dst4))
		return MC_SYS_REJECT;
	netns = bpf_get_netns_cookie(ctx);
	pod = mc_pod_of(netns);
	if (!pod || (udp && !(pod->flags & MC_POD_DNS4)))
		return MC_SYS_PROCEED;
	MC_LOAD(src4, sk->src_ip4);
	mc_addr_from4(&c.dst, dst4);
	mc_addr_from4(&c.src, src4);
	c.dport = bpf_ntohs(ctx->user_port);
	c.v4 = 1;
	c.udp = udp;

	v = __mc_capture(ctx, pod, netns, &c, AF_INET);
	if (v == MC_PASS)
		return MC_SYS_PROCEED;
	if (!src4)
		__mc_keep_source4(ctx, pod, mc_source4(pod, dst4));
	if (udp)
		mc_dns_remember(ctx, pod, &c, AF_INET);
	/* Writes through ctx itself: the verifier refuses a ctx pointer clang
	 * kept with an offset added. */
	barrier_var(ctx);
	ctx->user_ip4 = bpf_htonl(0x7f000001); /* 127.0.0.1 */
	ctx->user_port = bpf_htons(__mc_listener_port(pod, v));
	mc_debug("connect4 redirected to %d", bpf_ntohs(ctx->user_port));
	return MC_SYS_PROCEED;
}

/* connect6 for a destination of one kind: `v4` is a constant in each copy,
 * so the verifier walks each kind's path once instead of both at every
 * branch. */
static __always_inline int __mc_connect6(struct bpf_sock_addr *ctx, const struct mc_pod *pod, __u64 netns,
					 struct mc_connect *c, const bool v4)
{
	struct mc_addr src = {};
	enum mc_verdict v;

	c->v4 = v4;
	v = __mc_capture(ctx, pod, netns, c, v4 ? AF_INET : AF_INET6);
	if (v == MC_PASS)
		return MC_SYS_PROCEED;
	if (__mc_is_zero(&c->src)) {
		mc_source6(pod, c, &src);
		__mc_keep_source6(ctx, pod, &src);
	}
	if (c->udp)
		mc_dns_remember(ctx, pod, c, AF_INET6);
	barrier_var(ctx);
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	/* ::ffff:127.0.0.1 for an IPv4 connection, ::1 otherwise. */
	ctx->user_ip6[2] = v4 ? bpf_htonl(0xffff) : 0;
	ctx->user_ip6[3] = v4 ? bpf_htonl(0x7f000001) : bpf_htonl(1);
	ctx->user_port = bpf_htons(__mc_listener_port(pod, v));
	return MC_SYS_PROCEED;
}

SEC("cgroup/connect6")
int mc_connect6(struct bpf_sock_addr *ctx)
{
	struct mc_connect c = {};
	struct bpf_sock *sk = ctx->sk;
	struct mc_pod *pod;
	__u64 netns;
	bool udp;

	if (!sk || !__mc_wanted(ctx, &udp))
		return MC_SYS_PROCEED;
	netns = bpf_get_netns_cookie(ctx);
	pod = mc_pod_of(netns);
	if (!pod || (udp && !(pod->flags & (MC_POD_DNS4 | MC_POD_DNS6))))
		return MC_SYS_PROCEED;
	MC_LOAD_ADDR6(&c.dst, ctx->user_ip6);
	MC_LOAD_ADDR6(&c.src, sk->src_ip6);
	c.dport = bpf_ntohs(ctx->user_port);
	c.udp = udp;
	/* An AF_INET6 socket dialing ::ffff:a.b.c.d makes an IPv4 connection:
	 * decide it as IPv4, as the IPv4 rules would see it. */
	if (__mc_is_v4_mapped(&c.dst))
		return __mc_connect6(ctx, pod, netns, &c, true);
	return __mc_connect6(ctx, pod, netns, &c, false);
}
