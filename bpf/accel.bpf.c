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
	__u32 *state;
	long ret;

	state = bpf_sk_storage_get(&accel_state, msg->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!state || *state == MC_ACCEL_TCP)
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
	if (*state == MC_ACCEL_UNDECIDED) {
		if (ret == SK_PASS) {
			*state = MC_ACCEL_REDIRECT;
			mc_count(MC_CNT_ACCEL_REDIRECTED);
		} else {
			*state = MC_ACCEL_TCP;
			mc_count(MC_CNT_ACCEL_TCP);
		}
	}
	/* Redirected when the helper found the peer; otherwise (no peer at
	 * the first send, or the peer has closed since) by TCP. */
	return SK_PASS;
}
