/* cgroup/sendmsg4, sendmsg6, recvmsg4, recvmsg6: DNS capture over UDP
 * (istio's --redirect-dns) for sockets that send without connecting, which
 * is what glibc's resolver does first. A query to port 53 of a resolver goes
 * to the proxy's DNS listener, from the pod's own address as under
 * REDIRECT; its reply, read with recvfrom/recvmsg, comes from the resolver
 * the application addressed (dns_reverse), or resolvers would drop it.
 * Connected UDP sockets are redirected by connect4/connect6, and answered by
 * getpeername. A socket in a namespace that is not enrolled costs one port
 * comparison, and one lookup when it sends to port 53. */
#include "common.bpf.h"

/* The decision for a query from this socket's process, counted. */
static __always_inline bool __mc_query_captured(const struct mc_pod *pod, struct mc_connect *c)
{
	struct mc_decision d;
	__u64 ugid = bpf_get_current_uid_gid();

	c->uid = (__u32)ugid;
	c->gid = (__u32)(ugid >> 32);
	c->dport = MC_DNS_PORT;
	c->udp = 1;
	d = mc_decide_outbound(pod, c);
	mc_count(pod->index, d.reason);
	return d.verdict == MC_TO_DNS;
}

SEC("cgroup/sendmsg4")
int mc_sendmsg4(struct bpf_sock_addr *ctx)
{
	struct mc_connect c = {};
	struct bpf_sock *sk = ctx->sk;
	struct mc_pod *pod;
	__u32 dst4, src4;

	if (ctx->user_port != bpf_htons(MC_DNS_PORT) || !sk)
		return MC_SYS_PROCEED;
	pod = mc_pod_of(bpf_get_netns_cookie(ctx));
	if (!pod || !(pod->flags & MC_POD_DNS4))
		return MC_SYS_PROCEED;
	MC_LOAD(dst4, ctx->user_ip4);
	/* The source: asked for with IP_PKTINFO, else the socket's bound one. */
	MC_LOAD(src4, ctx->msg_src_ip4);
	if (!src4)
		MC_LOAD(src4, sk->src_ip4);
	mc_addr_from4(&c.dst, dst4);
	mc_addr_from4(&c.src, src4);
	c.v4 = 1;
	if (!__mc_query_captured(pod, &c))
		return MC_SYS_PROCEED;
	mc_dns_remember(ctx, pod, &c, AF_INET);
	if (!src4 && (pod->flags & MC_POD_HAS_SRC4))
		ctx->msg_src_ip4 = pod->src4;
	ctx->user_ip4 = bpf_htonl(0x7f000001); /* 127.0.0.1 */
	ctx->user_port = bpf_htons(MC_DNS_PROXY_PORT);
	return MC_SYS_PROCEED;
}

/* An AF_INET6 socket sending to ::ffff:a.b.c.d goes through sendmsg4 (the
 * kernel hands such sends to the IPv4 path first), so only IPv6 is here. */
SEC("cgroup/sendmsg6")
int mc_sendmsg6(struct bpf_sock_addr *ctx)
{
	struct mc_connect c = {};
	struct bpf_sock *sk = ctx->sk;
	struct mc_pod *pod;

	if (ctx->user_port != bpf_htons(MC_DNS_PORT) || !sk)
		return MC_SYS_PROCEED;
	pod = mc_pod_of(bpf_get_netns_cookie(ctx));
	if (!pod || !(pod->flags & MC_POD_DNS6))
		return MC_SYS_PROCEED;
	MC_LOAD_ADDR6(&c.dst, ctx->user_ip6);
	if (__mc_is_v4_mapped(&c.dst))
		return MC_SYS_PROCEED;
	MC_LOAD_ADDR6(&c.src, ctx->msg_src_ip6);
	if (__mc_is_zero(&c.src))
		MC_LOAD_ADDR6(&c.src, sk->src_ip6);
	if (!__mc_query_captured(pod, &c))
		return MC_SYS_PROCEED;
	mc_dns_remember(ctx, pod, &c, AF_INET6);
	if (__mc_is_zero(&c.src) && (pod->flags & MC_POD_HAS_SRC6)) {
		ctx->msg_src_ip6[0] = pod->src6[0];
		ctx->msg_src_ip6[1] = pod->src6[1];
		ctx->msg_src_ip6[2] = pod->src6[2];
		ctx->msg_src_ip6[3] = pod->src6[3];
	}
	ctx->user_ip6[0] = 0;
	ctx->user_ip6[1] = 0;
	ctx->user_ip6[2] = 0;
	ctx->user_ip6[3] = bpf_htonl(1); /* ::1 */
	ctx->user_port = bpf_htons(MC_DNS_PROXY_PORT);
	return MC_SYS_PROCEED;
}

/* The resolver a reply from the DNS listener stands for, or NULL. */
static __always_inline struct mc_dns_orig *__mc_reply_of(struct bpf_sock_addr *ctx, const struct mc_addr *from)
{
	struct mc_dns_key k = {};

	k.cookie = bpf_get_socket_cookie(ctx);
	k.proxy = *from;
	k.proxy_port = MC_DNS_PROXY_PORT;
	return bpf_map_lookup_elem(&dns_reverse, &k);
}

SEC("cgroup/recvmsg4")
int mc_recvmsg4(struct bpf_sock_addr *ctx)
{
	struct mc_dns_orig *o;
	struct mc_addr from;
	__u32 src4;

	if (ctx->user_port != bpf_htons(MC_DNS_PROXY_PORT))
		return MC_SYS_PROCEED;
	MC_LOAD(src4, ctx->user_ip4);
	mc_addr_from4(&from, src4);
	o = __mc_reply_of(ctx, &from);
	if (!o || !__mc_is_v4_mapped(&o->addr))
		return MC_SYS_PROCEED;
	ctx->user_ip4 = o->addr.ip[3];
	ctx->user_port = o->port;
	mc_count(o->pod, MC_CNT_DNS_REPLY_MAPPED);
	return MC_SYS_PROCEED;
}

/* An AF_INET6 socket's reply: from ::1, or from ::ffff:127.0.0.1 for an
 * IPv4 query, which maps back to the v4-mapped resolver it addressed. */
SEC("cgroup/recvmsg6")
int mc_recvmsg6(struct bpf_sock_addr *ctx)
{
	struct mc_dns_orig *o;
	struct mc_addr from;

	if (ctx->user_port != bpf_htons(MC_DNS_PROXY_PORT))
		return MC_SYS_PROCEED;
	MC_LOAD_ADDR6(&from, ctx->user_ip6);
	o = __mc_reply_of(ctx, &from);
	if (!o)
		return MC_SYS_PROCEED;
	MC_STORE_ADDR6(ctx->user_ip6, &o->addr);
	ctx->user_port = o->port;
	mc_count(o->pod, MC_CNT_DNS_REPLY_MAPPED);
	return MC_SYS_PROCEED;
}
