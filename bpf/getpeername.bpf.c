/* cgroup/getpeername4 and getpeername6: a redirected application socket
 * reports the address it dialed, not the proxy's listener. */
#include "common.bpf.h"

SEC("cgroup/getpeername4")
int mc_getpeername4(struct bpf_sock_addr *ctx)
{
	struct mc_orig *orig;

	if (!ctx->sk)
		return MC_SYS_PROCEED;
	orig = bpf_sk_storage_get(&orig_store, ctx->sk, 0, 0);
	if (!orig || orig->family != AF_INET)
		return MC_SYS_PROCEED;
	ctx->user_ip4 = orig->addr.ip[3];
	ctx->user_port = orig->port;
	return MC_SYS_PROCEED;
}

SEC("cgroup/getpeername6")
int mc_getpeername6(struct bpf_sock_addr *ctx)
{
	struct mc_orig *orig;

	if (!ctx->sk)
		return MC_SYS_PROCEED;
	orig = bpf_sk_storage_get(&orig_store, ctx->sk, 0, 0);
	if (!orig)
		return MC_SYS_PROCEED;
	/* orig->addr is v4 mapped for an IPv4 destination: what the AF_INET6
	 * socket dialed. */
	MC_STORE_ADDR6(ctx->user_ip6, &orig->addr);
	ctx->user_port = orig->port;
	return MC_SYS_PROCEED;
}
