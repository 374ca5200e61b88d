/* sk_lookup on the pod's network namespace: steers new TCP connections
 * arriving from outside the pod to the proxy's listening sockets, as istio's
 * nat PREROUTING rules decide, without NAT and without a conntrack entry.
 * The proxy's accepted socket keeps the original destination as its local
 * address, and getsockopt answers SO_ORIGINAL_DST from inbound_orig. */
#include "common.bpf.h"


static __always_inline struct bpf_sock *__mc_listener(enum mc_verdict v, bool v4)
{
	__u32 slot = v == MC_TO_INBOUND ? (v4 ? MC_LISTENER_IN4 : MC_LISTENER_IN6)
					: (v4 ? MC_LISTENER_OUT4 : MC_LISTENER_OUT6);
	struct bpf_sock *sk = bpf_map_lookup_elem(&listeners, &slot);

	if (!sk && v4) {
		/* A dual-stack IPv6 listener takes IPv4 connections too. */
		slot += 1;
		sk = bpf_map_lookup_elem(&listeners, &slot);
	}
	return sk;
}

SEC("sk_lookup")
int mc_sk_lookup(struct bpf_sk_lookup *ctx)
{
	struct mc_arrival a = {};
	struct mc_decision d;
	struct mc_conn_key k = {};
	struct mc_orig orig = {};
	struct bpf_sock *sk;
	__u32 ifindex, family, dport, rport;
	__u8 *flags;
	long err;

	if (ctx->protocol != IPPROTO_TCP || !mc_enabled())
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
	/* Connections made inside the pod (from loopback or the pod's own
	 * address) were decided by the connect hooks, as istio's nat OUTPUT
	 * decides them; PREROUTING NAT never sees them. ingress_ifindex does
	 * not tell: a packet to the pod's own address carries the ifindex of
	 * the interface owning that address. */
	if (__mc_via_lo(&k.client, a.v4))
		return SK_PASS;
	a.dport = (__u16)dport;
	/* Load-time constant: without -c / -k the verifier drops this read,
	 * so kernels before 5.17 (no ingress_ifindex) load the program. */
	if (mc_cfg.has_ifaces) {
		MC_LOAD(ifindex, ctx->ingress_ifindex);
		flags = bpf_map_lookup_elem(&iface_flags, &ifindex);
		a.iface_flags = flags ? *flags : 0;
	}

	d = mc_decide_inbound(&mc_cfg, &a);
	mc_count(d.reason);
	if (d.verdict == MC_PASS)
		return SK_PASS;

	sk = __mc_listener(d.verdict, a.v4);
	if (!sk) {
		/* The proxy is not listening: refuse, as REDIRECT to a closed
		 * port does (SK_DROP makes TCP answer the SYN with a reset). */
		mc_count(MC_CNT_IN_PROXY_DOWN);
		return SK_DROP;
	}
	err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		mc_count(MC_CNT_IN_ASSIGN_FAIL);
		return SK_DROP;
	}

	k.server = a.dst;
	k.server_port = a.dport;
	k.client_port = bpf_ntohs((__u16)rport);
	orig.addr = a.dst;
	orig.port = bpf_htons(a.dport);
	orig.family = a.v4 ? AF_INET : AF_INET6;
	bpf_map_update_elem(&inbound_orig, &k, &orig, BPF_ANY);
	return SK_PASS;
}
