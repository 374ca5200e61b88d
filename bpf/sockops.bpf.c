/* sockops: keeps the connection table (orig_dst) in step with the sockets.
 * An entry is made when a redirected application socket sends its SYN (its
 * source port is known then) and removed once both the application's socket
 * and the proxy's accepted socket have closed, so the proxy can still ask
 * for the original destination after a short-lived client is gone. */
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

/* The key as the application's socket sees it (it is the client). */
static __always_inline void __mc_client_key(const struct bpf_sock_ops *skops, struct mc_conn_key *k)
{
	__mc_ops_addrs(skops, &k->client, &k->server);
	k->client_port = (__u16)skops->local_port;            /* host order */
	k->server_port = (__u16)bpf_ntohl(skops->remote_port); /* network order, upper half */
}

/* The key as the proxy's accepted socket sees it (it is the server). */
static __always_inline void __mc_server_key(const struct bpf_sock_ops *skops, struct mc_conn_key *k)
{
	__mc_ops_addrs(skops, &k->server, &k->client);
	k->server_port = (__u16)skops->local_port;
	k->client_port = (__u16)bpf_ntohl(skops->remote_port);
}

static __always_inline bool __mc_is_listener_port(__u32 port)
{
	return port == mc_cfg.proxy_port || port == mc_cfg.inbound_port;
}

/* A redirected application socket is sending its SYN. */
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
	__mc_client_key(skops, &k);
	orig->flags = 0;
	/* BPF_ANY: an entry left by an earlier connection on the same four
	 * ports is stale by definition. A full table fails with E2BIG: the
	 * proxy then gets "not found" and closes the connection; counted. */
	if (bpf_map_update_elem(&orig_dst, &k, orig, BPF_ANY)) {
		mc_count(MC_CNT_MAP_FULL);
		return;
	}
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* The proxy's side of a redirected connection is established. */
static __always_inline void __mc_on_passive(struct bpf_sock_ops *skops)
{
	struct mc_conn_key k = {};
	struct mc_orig *orig;

	__mc_server_key(skops, &k);
	if (!__mc_is_listener_port(skops->local_port)) {
		/* Steered by sk_lookup: the local port is the original one. */
		if (bpf_map_lookup_elem(&inbound_orig, &k))
			bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
							 BPF_SOCK_OPS_STATE_CB_FLAG);
		return;
	}
	orig = bpf_map_lookup_elem(&orig_dst, &k);
	if (!orig)
		return;
	__sync_fetch_and_or(&orig->flags, MC_ORIG_PROXY_SEEN);
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* A socket we asked about has closed: the entry goes when both ends have
 * (or when the proxy never saw the connection). */
static __always_inline void __mc_on_close(struct bpf_sock_ops *skops)
{
	struct mc_conn_key k = {};
	struct mc_orig *orig;
	struct bpf_sock *sk = skops->sk;
	__u32 old;

	if (!sk)
		return;
	if (bpf_sk_storage_get(&orig_store, sk, 0, 0)) {
		__mc_client_key(skops, &k);
		orig = bpf_map_lookup_elem(&orig_dst, &k);
		if (!orig)
			return;
		old = __sync_fetch_and_or(&orig->flags, MC_ORIG_APP_CLOSED);
		if (!(old & MC_ORIG_PROXY_SEEN) || (old & MC_ORIG_PROXY_CLOSED))
			bpf_map_delete_elem(&orig_dst, &k);
		return;
	}
	__mc_server_key(skops, &k);
	if (!__mc_is_listener_port(skops->local_port)) {
		bpf_map_delete_elem(&inbound_orig, &k);
		return;
	}
	orig = bpf_map_lookup_elem(&orig_dst, &k);
	if (!orig)
		return;
	old = __sync_fetch_and_or(&orig->flags, MC_ORIG_PROXY_CLOSED);
	if (old & MC_ORIG_APP_CLOSED)
		bpf_map_delete_elem(&orig_dst, &k);
}

/* The proxy listens on one of its ports: remember the socket for sk_lookup,
 * without the proxy's cooperation. */
static __always_inline void __mc_on_listen(struct bpf_sock_ops *skops)
{
	__u32 port = skops->local_port;
	__u32 v6 = skops->family == AF_INET6;
	__u32 slot;

	if (port == mc_cfg.inbound_port)
		slot = MC_LISTENER_IN4 + v6;
	else if (port == mc_cfg.proxy_port)
		slot = MC_LISTENER_OUT4 + v6;
	else
		return;
	bpf_sock_map_update(skops, &listeners, &slot, BPF_ANY);
}

SEC("sockops")
int mc_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		__mc_on_listen(skops);
		break;
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		__mc_on_connect(skops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		__mc_on_passive(skops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE)
			__mc_on_close(skops);
		break;
	default:
		break;
	}
	return 1;
}
