/* cgroup/getpeername4 and getpeername6: a redirected application socket
 * reports the address it dialed, not the proxy's listener. */
#include "common.bpf.h"

SEC("cgroup/getpeername4")
int mc_getpeername4(struct bpf_sock_addr *ctx)
{
	struct mc_orig *orig;

	if (!ctx->sk)
		return 1;
	orig = bpf_sk_storage_get(&orig_store, ctx->sk, 0, 0);
	if (!orig || orig->family != AF_INET)
		return 1;
	ctx->user_ip4 = orig->addr.ip[3];
	ctx->user_port = orig->port;
	return 1;
}

SEC("cgroup/getpeername6")
int mc_getpeername6(struct bpf_sock_addr *ctx)
{
	struct mc_orig *orig;

	if (!ctx->sk)
		return 1;
	orig = bpf_sk_storage_get(&orig_store, ctx->sk, 0, 0);
	if (!orig)
		return 1;
	/* orig->addr is v4 mapped for an IPv4 destination: what the AF_INET6
	 * socket dialed. */
	ctx->user_ip6[0] = orig->addr.ip[0];
	ctx->user_ip6[1] = orig->addr.ip[1];
	ctx->user_ip6[2] = orig->addr.ip[2];
	ctx->user_ip6[3] = orig->addr.ip[3];
	ctx->user_port = orig->port;
	return 1;
}
