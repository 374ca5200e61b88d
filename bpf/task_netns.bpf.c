/* iter/task: every process's network namespace, in one pass in the kernel.
 * The node agent reads it to find the processes already in a pod's
 * namespace (agent/host.cpp: the ones outside the node's cgroup would pass
 * uncaptured), where a walk of /proc costs a stat per process. One record
 * per thread-group leader: {tgid, namespace inode}, the inode that
 * /proc/PID/ns/net has. Not part of the data path: its own object and
 * skeleton, loaded by the agent alone.
 *
 * The kernel's types are declared with only the fields read, and CO-RE
 * (the kernel's BTF) finds their offsets, so no vmlinux.h is needed. A
 * kernel without BTF, or older than 5.8, refuses the program, and the agent
 * walks /proc as every other command does. */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define MC_KERNEL_TYPE __attribute__((preserve_access_index))

struct ns_common {
	unsigned int inum;
} MC_KERNEL_TYPE;

struct net {
	struct ns_common ns;
} MC_KERNEL_TYPE;

struct nsproxy {
	struct net *net_ns;
} MC_KERNEL_TYPE;

struct task_struct {
	int pid;
	int tgid;
	struct nsproxy *nsproxy;
} MC_KERNEL_TYPE;

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
} MC_KERNEL_TYPE;

struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
} MC_KERNEL_TYPE;

SEC("iter/task")
int mc_task_netns(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;
	struct nsproxy *nsp;
	struct net *net;
	__u32 rec[2];

	/* Threads are skipped, as a walk of /proc skips them; an exiting
	 * task has no nsproxy. */
	if (!task || task->pid != task->tgid)
		return 0;
	nsp = task->nsproxy;
	if (!nsp)
		return 0;
	net = nsp->net_ns;
	if (!net)
		return 0;
	rec[0] = task->tgid;
	rec[1] = net->ns.inum;
	bpf_seq_write(ctx->meta->seq, rec, sizeof(rec));
	return 0;
}

/* bpf_seq_write is GPL-only. */
char LICENSE[] SEC("license") = "GPL";
