/* sk_lookup, attached to each enrolled pod's network namespace: steers new
 * TCP connections arriving from outside the pod to the proxy's listening
 * sockets, as istio's nat PREROUTING rules decide, without NAT and without
 * a conntrack entry. The proxy's accepted socket keeps the original
 * destination as its local address, and getsockopt answers SO_ORIGINAL_DST
 * from inbound_orig. sk_lookup has no netns cookie: the pod is found by the
 * address the connection arrived for. */
#include "common.bpf.h"

static __always_inline struct bpf_sock *__mc_listener(const struct mc_pod *pod, enum mc_verdict v, bool v4)
{
	struct mc_listener_key k = {pod->index, v == MC_TO_INBOUND ? (v4 ? MC_LISTENER_IN4 : MC_LISTENER_IN6)
								    : (v4 ? MC_LISTENER_OUT4 : MC_LISTENER_OUT6)};
	struct bpf_sock *sk = bpf_map_lookup_elem(&listeners, &k);

	if (!sk && v4) {
		/* A dual-stack IPv6 listener takes IPv4 connections too. */
		k.slot += 1;
		sk = bpf_map_lookup_elem(&listeners, &k);
	}
	return sk;
}

/* The MC_IF_* bits of the interface a connection arrived on. */
static __always_inline __u8 __mc_arrival_iface(struct bpf_sk_lookup *ctx, const struct mc_pod *pod)
{
	struct mc_pod_u32 k = {pod->index, 0};
	__u8 *flags;

	/* Load-time constant: kernels before 5.17 have no ingress_ifindex, and
	 * the verifier drops this read for them (the planner keeps such pods'
	 * -c / -k off eBPF). */
	if (!mc_node.ingress_ifindex || !(pod->flags & MC_POD_IFACES))
		return 0;
	MC_LOAD(k.value, ctx->ingress_ifindex);
	flags = bpf_map_lookup_elem(&iface_flags, &k);
	return flags ? *flags : 0;
}

SEC("sk_lookup")
int mc_sk_lookup(struct bpf_sk_lookup *ctx)
{
	struct mc_arrival a = {};
	struct mc_decision d;
	struct mc_conn_key k = {};
	struct mc_orig orig = {};
	struct bpf_sock *sk;
	struct mc_pod *pod;
	__u64 *netns;
	__u32 family, dport, rport;
	long err;

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	MC_LOAD(family, ctx->family);
	MC_LOAD(dport, ctx->local_port);  /* host order */
	MC_LOAD(rport, ctx->remote_port); /* network order */
	if (family == AF_INET) {
		__u32 l4, r4;

		MC_LOAD(l4, ctx->local_ip4);
		MC_LOAD(r4, ctx->remote_ip4);
		mc_addr_from4(&a.dst, l4);
		mc_addr_from4(&k.client, r4);
		a.v4 = 1;
	} else {
		MC_LOAD_ADDR6(&a.dst, ctx->local_ip6);
		MC_LOAD_ADDR6(&k.client, ctx->remote_ip6);
	}
	netns = bpf_map_lookup_elem(&pod_by_addr, &a.dst);
	if (!netns)
		return SK_PASS;
	pod = mc_pod_of(*netns);
	if (!pod)
		return SK_PASS;
	/* Connections made inside the pod (from loopback or the pod's own
	 * address) were decided by the connect hooks, as istio's nat OUTPUT
	 * decides them; PREROUTING NAT never sees them. ingress_ifindex does
	 * not tell: a packet to the pod's own address carries the ifindex of
	 * the interface owning that address. */
	if (__mc_via_lo(pod, &k.client, a.v4))
		return SK_PASS;
	a.dport = (__u16)dport;
	a.iface_flags = __mc_arrival_iface(ctx, pod);

	d = mc_decide_inbound(pod, &a);
	mc_count(pod->index, d.reason);
	if (d.verdict == MC_PASS)
		return SK_PASS;

	sk = __mc_listener(pod, d.verdict, a.v4);
	if (!sk) {
		/* The proxy is not listening: refuse, as REDIRECT to a closed
		 * port does (SK_DROP makes TCP answer the SYN with a reset). */
		mc_count(pod->index, MC_CNT_IN_PROXY_DOWN);
		return SK_DROP;
	}
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		mc_count(pod->index, MC_CNT_IN_ASSIGN_FAIL);
		return SK_DROP;
	}

	k.server = a.dst;
	k.server_port = a.dport;
	k.client_port = bpf_ntohs((__u16)rport);
	orig.addr = a.dst;
	orig.port = bpf_htons(a.dport);
	orig.family = a.v4 ? AF_INET : AF_INET6;
	orig.pod = pod->index;
	bpf_map_update_elem(&inbound_orig, &k, &orig, BPF_ANY);
	return SK_PASS;
}
