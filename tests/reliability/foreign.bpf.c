/* A "foreign" BPF user of the same cgroup hooks as meshcap, for the
 * coexistence tests: each program counts its calls and lets everything
 * through unchanged. Built with the same clang flags as bpf/CMakeLists.txt. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define FOREIGN_PAGE_SIZE 4096

enum { CNT_CONNECT4 = 0, CNT_CONNECT6, CNT_SOCKOPS, CNT_GETSOCKOPT, CNT__MAX };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CNT__MAX);
	__type(key, __u32);
	__type(value, __u64);
} foreign_counts SEC(".maps");

static __always_inline void count(__u32 key)
{
	__u64 *v = bpf_map_lookup_elem(&foreign_counts, &key);

	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("cgroup/connect4")
int foreign_connect4(struct bpf_sock_addr *ctx)
{
	count(CNT_CONNECT4);
	return 1;
}

SEC("cgroup/connect6")
int foreign_connect6(struct bpf_sock_addr *ctx)
{
	count(CNT_CONNECT6);
	return 1;
}

SEC("sockops")
int foreign_sockops(struct bpf_sock_ops *skops)
{
	count(CNT_SOCKOPS);
	return 1;
}

SEC("cgroup/getsockopt")
int foreign_getsockopt(struct bpf_sockopt *ctx)
{
	count(CNT_GETSOCKOPT);
	/* Leave the option alone; large buffers as the field notes say. */
	if (ctx->optlen > FOREIGN_PAGE_SIZE)
		ctx->optlen = 0;
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
