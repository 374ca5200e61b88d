/* sk_msg (--accelerate): a send on an application<->proxy socket goes
 * straight into the peer socket's receive queue, skipping TCP/IP on
 * loopback. Each socket decides once, at its first send: if the peer is in
 * accel_socks then, every later send is redirected; if not, every send
 * stays on TCP. So a socket's bytes never take two paths, which could
 * reorder them at the reader. */
#include "common.bpf.h"

SEC("sk_msg")
int mc_accel(struct sk_msg_md *msg)
{
	struct mc_sock_key peer = {};
	struct mc_accel_state *state;
	long ret;

	state = bpf_sk_storage_get(&accel_state, msg->sk, 0, 0);
	if (!state || state->decision == MC_ACCEL_TCP)
		return SK_PASS;
	if (msg->family == AF_INET) {
		__u32 l4, r4;

		MC_LOAD(l4, msg->local_ip4);
		MC_LOAD(r4, msg->remote_ip4);
		mc_addr_from4(&peer.remote, l4);
		mc_addr_from4(&peer.local, r4);
	} else {
		MC_LOAD_ADDR6(&peer.remote, msg->local_ip6);
		MC_LOAD_ADDR6(&peer.local, msg->remote_ip6);
	}
	peer.remote_port = (__u16)msg->local_port;             /* host order */
	peer.local_port = (__u16)bpf_ntohl(msg->remote_port);  /* network order, upper half */

	ret = bpf_msg_redirect_hash(msg, &accel_socks, &peer, BPF_F_INGRESS);
	if (state->decision == MC_ACCEL_UNDECIDED) {
		state->decision = ret == SK_PASS ? MC_ACCEL_REDIRECT : MC_ACCEL_TCP;
		mc_count(state->pod, ret == SK_PASS ? MC_CNT_ACCEL_REDIRECTED : MC_CNT_ACCEL_TCP);
	}
	/* Redirected when the helper found the peer; otherwise (no peer at
	 * the first send, or the peer has closed since) by TCP. */
	return SK_PASS;
}
