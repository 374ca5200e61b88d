/* sockops: puts a redirected connection's original destination from the
 * application's socket (orig_store, set at connect) into the connection
 * table (orig_dst, keyed by the four-tuple) when the SYN goes out; the
 * proxy's SO_ORIGINAL_DST (getsockopt) moves it onto the proxy's accepted
 * socket, even after a short-lived client has gone. No state callbacks.
 * Also files the proxies' listeners under their pods for sk_lookup, and,
 * with --accelerate, puts app<->proxy sockets into accel_socks. Every other
 * callback, and every socket meshcap did not touch, leaves at once. */
#include "common.bpf.h"

static __always_inline void __mc_ops_addrs(const struct bpf_sock_ops *skops,
					   struct mc_addr *local, struct mc_addr *remote)
{
	if (skops->family == AF_INET) {
		__u32 l4, r4;

		MC_LOAD(l4, skops->local_ip4);
		MC_LOAD(r4, skops->remote_ip4);
		mc_addr_from4(local, l4);
		mc_addr_from4(remote, r4);
		return;
	}
	MC_LOAD_ADDR6(local, skops->local_ip6);
	MC_LOAD_ADDR6(remote, skops->remote_ip6);
}

/* A socket's own view of its connection: local and remote ends, ports in
 * host order (remote_port carries the network-order port in its upper
 * half). */
static __always_inline void __mc_ends(const struct bpf_sock_ops *skops, struct mc_addr *local, __u16 *local_port,
				      struct mc_addr *remote, __u16 *remote_port)
{
	__mc_ops_addrs(skops, local, remote);
	*local_port = (__u16)skops->local_port;
	*remote_port = (__u16)bpf_ntohl(skops->remote_port);
}

/* --accelerate: puts a socket of a redirected app<->proxy connection into
 * accel_socks, where the sk_msg program (accel.bpf.c) sees its sends. */
static __always_inline bool __mc_accelerate(struct bpf_sock_ops *skops, __u32 pod)
{
	struct mc_sock_key k = {};
	struct mc_accel_state *state;

	if (!skops->sk)
		return false;
	state = bpf_sk_storage_get(&accel_state, skops->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!state)
		return false;
	state->pod = pod;
	__mc_ends(skops, &k.local, &k.local_port, &k.remote, &k.remote_port);
	if (bpf_sock_hash_update(skops, &accel_socks, &k, BPF_NOEXIST))
		return false;
	mc_count(pod, MC_CNT_ACCEL_SOCKETS);
	return true;
}

/* A redirected application socket is sending its SYN: its source port is
 * known now, so the record goes into the connection table, where the
 * proxy's SO_ORIGINAL_DST finds it. */
static __always_inline void __mc_on_connect(struct bpf_sock_ops *skops)
{
	struct mc_conn_key k = {};
	struct mc_orig *orig;
	struct bpf_sock *sk = skops->sk;

	if (!sk)
		return;
	orig = bpf_sk_storage_get(&orig_store, sk, 0, 0);
	if (!orig)
		return;
	__mc_ends(skops, &k.client, &k.client_port, &k.server, &k.server_port);
	k.netns = orig->netns;
	/* BPF_ANY: an entry left by an earlier connection on the same four
	 * ports is stale by definition. */
	if (bpf_map_update_elem(&orig_dst, &k, orig, BPF_ANY))
		mc_count(orig->pod, MC_CNT_MAP_FULL);
}

/* The application's side of a redirected connection is established. Only
 * a socket that has sent nothing yet is accelerated (a TCP Fast Open SYN
 * carries data: it went by TCP, and later bytes must not overtake it). A
 * send already under way (Fast Open without a cookie, or a blocking send
 * from another thread while connecting) continues by TCP after this point,
 * without passing the sk_msg program: so until the socket's first sk_msg
 * decision, sockops watches its outgoing segments and, when one carries
 * data, decides "TCP" for it (__mc_on_hdr_opt_len). */
static __always_inline void __mc_on_active(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct mc_orig *orig;

	if (!sk)
		return;
	if (skops->snd_nxt != skops->snd_una || skops->bytes_acked > 1)
		return;
	orig = bpf_sk_storage_get(&orig_store, sk, 0, 0);
	if (!orig || !orig->accelerate)
		return;
	if (__mc_accelerate(skops, orig->pod))
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
}

/* An accelerated application socket sends a segment before its first
 * sk_msg decision: a segment with data means bytes went by TCP, so its
 * sends stay on TCP. Once decided, the callback is switched off again. */
static __always_inline void __mc_on_hdr_opt_len(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct mc_accel_state *state;

	if (!sk)
		return;
	state = bpf_sk_storage_get(&accel_state, sk, 0, 0);
	if (!state)
		return;
	/* Called before the TCP header is pushed: skb_len is the payload. */
	if (state->decision == MC_ACCEL_UNDECIDED && skops->skb_len > 0) {
		state->decision = MC_ACCEL_TCP;
		mc_count(state->pod, MC_CNT_ACCEL_TCP);
	}
	if (state->decision != MC_ACCEL_UNDECIDED)
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags & ~BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
}

/* The proxy's side of a redirected connection is established. The record
 * stays in the table until the proxy asks for it (getsockopt moves it onto
 * this socket then): a connection whose proxy never asks costs nothing
 * more here. With --accelerate, the socket joins accel_socks when its pod
 * asked for it and nothing was received yet (no Fast Open data went by
 * TCP). */
static __always_inline void __mc_on_passive(struct bpf_sock_ops *skops)
{
	struct mc_conn_key k = {};
	struct mc_orig *orig;

	if (!skops->sk || skops->bytes_received != 0)
		return;
	__mc_ends(skops, &k.server, &k.server_port, &k.client, &k.client_port);
	/* Load-time constant: kernels without the cookie here key without it. */
	if (mc_node.key_netns)
		k.netns = bpf_get_netns_cookie(skops);
	orig = bpf_map_lookup_elem(&orig_dst, &k);
	if (orig && orig->accelerate)
		(void)__mc_accelerate(skops, orig->pod);
}

/* A proxy's socket tagged at bind starts listening: file it under its pod
 * for sk_lookup, without the proxy's cooperation. */
static __always_inline void __mc_on_listen(struct bpf_sock_ops *skops)
{
	struct mc_listener_key k;
	struct mc_sock_pod *tag;

	if (!skops->sk)
		return;
	tag = bpf_sk_storage_get(&sock_pod, skops->sk, 0, 0);
	if (!tag)
		return;
	k.pod = tag->pod;
	k.slot = tag->slot;
	bpf_sock_hash_update(skops, &listeners, &k, BPF_ANY);
}

SEC("sockops")
int mc_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		__mc_on_connect(skops);
		break;
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		__mc_on_listen(skops);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		/* Load-time constant: without --accelerate the verifier drops this. */
		if (mc_node.accelerate)
			__mc_on_active(skops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (mc_node.accelerate)
			__mc_on_passive(skops);
		break;
	case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
		if (mc_node.accelerate)
			__mc_on_hdr_opt_len(skops);
		break;
	default:
		break;
	}
	return 1;
}
