/* cgroup/bind4 and cgroup/bind6: tag an enrolled pod's socket that binds to
 * one of its proxy's listener ports, so sockops can file the listener under
 * its pod when it listens (sockops has no netns cookie before Linux 5.15;
 * bind, like connect, has it since 5.7). */
#include "common.bpf.h"

static __always_inline void __mc_tag(struct bpf_sock_addr *ctx, bool v6)
{
	struct mc_sock_pod *tag;
	struct mc_pod *pod;
	__u32 port, slot;

	if (ctx->type != SOCK_STREAM || !ctx->sk)
		return;
	pod = mc_pod_of(bpf_get_netns_cookie(ctx));
	if (!pod)
		return;
	port = bpf_ntohs(ctx->user_port);
	if (port == pod->inbound_port)
		slot = v6 ? MC_LISTENER_IN6 : MC_LISTENER_IN4;
	else if (port == pod->proxy_port)
		slot = v6 ? MC_LISTENER_OUT6 : MC_LISTENER_OUT4;
	else
		return;
	tag = bpf_sk_storage_get(&sock_pod, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!tag)
		return;
	tag->pod = pod->index;
	tag->slot = slot;
}

SEC("cgroup/bind4")
int mc_bind4(struct bpf_sock_addr *ctx)
{
	__mc_tag(ctx, false);
	return MC_SYS_PROCEED;
}

SEC("cgroup/bind6")
int mc_bind6(struct bpf_sock_addr *ctx)
{
	__mc_tag(ctx, true);
	return MC_SYS_PROCEED;
}
