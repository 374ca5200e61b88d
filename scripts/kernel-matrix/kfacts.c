/* kfacts: asks the running kernel, by loading tiny BPF programs and creating
 * maps with the raw bpf(2) syscall, the questions meshcap's next design
 * steps depend on (docs/kernel-facts/). Each answer is one line
 *
 *   FACT <group> <subject> yes|no <evidence>
 *
 * where the evidence is the verifier's message (the last line of its log
 * that is not an instruction trace or a statistic) or the errno of the
 * syscall. Nothing is decided from the kernel's version.
 *
 *   kfacts [--cgroup DIR] [--netns PATH] [--object FILE]
 *
 * --cgroup DIR   a throwaway cgroup v2 directory: BPF_LINK_CREATE and
 *                BPF_LINK_UPDATE are tried on it (never the root cgroup:
 *                refused). Without it the cgroup link rows are skipped.
 * --netns PATH   a throwaway network namespace (e.g. /run/netns/NAME): the
 *                sk_lookup link is tried on it. Without it, skipped.
 * --object FILE  also load each program of this BPF object (meshcap's
 *                build/bpf/meshcap.bpf.o) on its own, with libbpf, and
 *                print "FACT object-prog NAME yes|no" and, for a program the
 *                verifier refuses, the end of its verifier log.
 *
 * Runs in the kernel-matrix guest (scripts/kernel-matrix/guest/init); links
 * are closed again before it exits, so nothing stays attached.
 *
 * Helpers are asked twice. "known" loads a program that calls the helper
 * with zeroed arguments: the verifier looks the helper up for the program
 * type (and expected attach type) before it checks any argument, so
 * "unknown func" (or "invalid func") means the helper is not available
 * there and any other outcome means it is. "usable" loads a program that
 * calls it with real arguments (the context, a socket read from it, a map
 * of the right type) and says whether that whole program is accepted.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/bpf.h>
#include <linux/btf.h>
#include <bpf/libbpf.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* --- instructions ---------------------------------------------------------- */

static struct bpf_insn insn(__u8 code, __u8 dst, __u8 src, __s16 off, __s32 imm)
{
	struct bpf_insn i = {.code = code, .dst_reg = dst, .src_reg = src, .off = off, .imm = imm};
	return i;
}

#define MOV_IMM(dst, imm) insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm)
#define MOV_REG(dst, src) insn(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0)
#define ADD_IMM(dst, imm) insn(BPF_ALU64 | BPF_ADD | BPF_K, dst, 0, 0, imm)
#define LDX(size, dst, src, off) insn(BPF_LDX | BPF_MEM | (size), dst, src, off, 0)
#define ST(size, dst, off, imm) insn(BPF_ST | BPF_MEM | (size), dst, 0, off, imm)
#define JEQ_IMM(dst, imm, off) insn(BPF_JMP | BPF_JEQ | BPF_K, dst, 0, off, imm)
#define CALL(fn) insn(BPF_JMP | BPF_CALL, 0, 0, 0, fn)
#define EXIT() insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
/* A map's fd as a 64-bit immediate: two instruction slots. */
#define LD_MAP(dst, fd) insn(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_FD, 0, fd), insn(0, 0, 0, 0, 0)

#define R0 BPF_REG_0
#define R1 BPF_REG_1
#define R2 BPF_REG_2
#define R3 BPF_REG_3
#define R4 BPF_REG_4
#define R5 BPF_REG_5
#define R6 BPF_REG_6
#define R7 BPF_REG_7
#define FP BPF_REG_10

#define MAX_INSNS 64

struct prog {
	struct bpf_insn i[MAX_INSNS];
	int n;
};

static void emit(struct prog *p, struct bpf_insn x)
{
	if (p->n >= MAX_INSNS) {
		fprintf(stderr, "kfacts: program too long\n");
		exit(2);
	}
	p->i[p->n++] = x;
}

static void emit_map(struct prog *p, int reg, int fd)
{
	struct bpf_insn two[2] = {LD_MAP(reg, fd)};

	emit(p, two[0]);
	emit(p, two[1]);
}

/* --- syscalls ---------------------------------------------------------------- */

static long sys_bpf(int cmd, union bpf_attr *attr)
{
	return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

static char vlog[1 << 20];

/* The verifier's message: the last line of its log that is neither an
 * instruction trace ("12: (85) call ...", "; source line") nor one of its
 * statistics lines. */
static const char *verifier_message(void)
{
	static char line[512];
	const char *best = NULL;
	size_t best_len = 0;
	const char *p = vlog;

	while (*p) {
		const char *e = strchr(p, '\n');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		const char *q = p;

		while (q < p + len && *q >= '0' && *q <= '9')
			q++;
		int trace = q > p && q < p + len && *q == ':';
		int stat = !strncmp(p, "processed ", 10) || !strncmp(p, "verification time", 17) ||
			   !strncmp(p, "stack depth", 11) || !strncmp(p, "; ", 2) || !strncmp(p, "from ", 5) ||
			   !strncmp(p, "mark_precise", 12) || !strncmp(p, "last_idx", 8) ||
			   !strncmp(p, "parent ", 7) || !strncmp(p, "func#", 5) || !strncmp(p, "Func#", 5);
		if (len > 0 && !trace && !stat) {
			best = p;
			best_len = len;
		}
		if (!e)
			break;
		p = e + 1;
	}
	if (!best)
		return "";
	if (best_len >= sizeof(line))
		best_len = sizeof(line) - 1;
	memcpy(line, best, best_len);
	line[best_len] = '\0';
	return line;
}

/* load: the program's fd or -errno; its verifier log stays in vlog. */
static int load(enum bpf_prog_type type, enum bpf_attach_type attach, const struct prog *p, const char *name)
{
	union bpf_attr a;

	memset(&a, 0, sizeof(a));
	vlog[0] = '\0';
	a.prog_type = type;
	a.expected_attach_type = attach;
	a.insns = (__u64)(uintptr_t)p->i;
	a.insn_cnt = p->n;
	a.license = (__u64)(uintptr_t) "GPL";
	a.log_buf = (__u64)(uintptr_t)vlog;
	a.log_size = sizeof(vlog);
	a.log_level = 1;
	snprintf(a.prog_name, sizeof(a.prog_name), "%s", name);
	int fd = sys_bpf(BPF_PROG_LOAD, &a);
	return fd < 0 ? -errno : fd;
}

static int map_create(enum bpf_map_type type, __u32 key, __u32 value, __u32 entries, __u32 flags, int btf_fd)
{
	union bpf_attr a;

	memset(&a, 0, sizeof(a));
	a.map_type = type;
	a.key_size = key;
	a.value_size = value;
	a.max_entries = entries;
	a.map_flags = flags;
	if (btf_fd >= 0) {
		a.btf_fd = btf_fd;
		a.btf_key_type_id = 1;
		a.btf_value_type_id = 1;
	}
	int fd = sys_bpf(BPF_MAP_CREATE, &a);
	return fd < 0 ? -errno : fd;
}

/* BTF with one type, [1] a 32-bit signed int: socket storage maps need BTF
 * for their key and value. */
static int btf_int(void)
{
	static const char strs[] = "\0int";
	struct {
		struct btf_header h;
		struct btf_type t;
		__u32 enc;
		char s[sizeof(strs)];
	} __attribute__((packed)) b;
	union bpf_attr a;

	memset(&b, 0, sizeof(b));
	b.h.magic = BTF_MAGIC;
	b.h.version = BTF_VERSION;
	b.h.hdr_len = sizeof(b.h);
	b.h.type_off = 0;
	b.h.type_len = sizeof(b.t) + sizeof(b.enc);
	b.h.str_off = b.h.type_len;
	b.h.str_len = sizeof(strs);
	b.t.name_off = 1;
	b.t.info = BTF_KIND_INT << 24;
	b.t.size = 4;
	b.enc = (BTF_INT_SIGNED << 24) | 32;
	memcpy(b.s, strs, sizeof(strs));
	memset(&a, 0, sizeof(a));
	a.btf = (__u64)(uintptr_t)&b;
	a.btf_size = sizeof(b);
	int fd = sys_bpf(BPF_BTF_LOAD, &a);
	return fd < 0 ? -errno : fd;
}

static int link_create(int prog_fd, int target_fd, enum bpf_attach_type attach)
{
	union bpf_attr a;

	memset(&a, 0, sizeof(a));
	a.link_create.prog_fd = prog_fd;
	a.link_create.target_fd = target_fd;
	a.link_create.attach_type = attach;
	int fd = sys_bpf(BPF_LINK_CREATE, &a);
	return fd < 0 ? -errno : fd;
}

static int link_update(int link_fd, int new_prog_fd)
{
	union bpf_attr a;

	memset(&a, 0, sizeof(a));
	a.link_update.link_fd = link_fd;
	a.link_update.new_prog_fd = new_prog_fd;
	return sys_bpf(BPF_LINK_UPDATE, &a) < 0 ? -errno : 0;
}

/* One answer; yes: 1, no: 0, not asked: -1 ("n/a"). */
static void fact(const char *group, const char *subject, int yes, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void fact(const char *group, const char *subject, int yes, const char *fmt, ...)
{
	va_list ap;

	printf("FACT %s %s %s ", group, subject, yes < 0 ? "n/a" : yes ? "yes" : "no");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

/* "load OK" or the errno and the verifier's message. */
static const char *outcome(int fd)
{
	static char buf[700];

	if (fd >= 0)
		return "(load OK)";
	snprintf(buf, sizeof(buf), "(%s; verifier: \"%s\")", strerrorname_np(-fd) ? strerrorname_np(-fd) : "?",
		 verifier_message());
	return buf;
}

/* --- program types and the contexts they are asked in ---------------------- */

struct ctx_kind {
	const char *name;            /* bpftool's name of the program type */
	enum bpf_prog_type type;
	enum bpf_attach_type attach; /* expected attach type used for the probe */
	int sk_off;                  /* offset of the context's socket pointer, -1: none */
	int sk_is_ctx;               /* the context itself is the socket (cgroup_sock) */
	int sk_or_null;              /* the socket pointer may be NULL (check first) */
	int ret;                     /* the return value a program of the kind gives */
};

static const struct ctx_kind SOCK_ADDR = {"cgroup_sock_addr", BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
					  BPF_CGROUP_INET4_CONNECT, offsetof(struct bpf_sock_addr, sk), 0, 0, 1};
static const struct ctx_kind SOCK = {"cgroup_sock", BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET_SOCK_CREATE, -1, 1, 0, 1};
static const struct ctx_kind SOCK_OPS = {"sock_ops", BPF_PROG_TYPE_SOCK_OPS, BPF_CGROUP_SOCK_OPS,
					 offsetof(struct bpf_sock_ops, sk), 0, 1, 1};
static const struct ctx_kind SOCKOPT = {"cgroup_sockopt", BPF_PROG_TYPE_CGROUP_SOCKOPT, BPF_CGROUP_GETSOCKOPT,
					offsetof(struct bpf_sockopt, sk), 0, 0, 1};
static const struct ctx_kind SK_MSG = {"sk_msg", BPF_PROG_TYPE_SK_MSG, BPF_SK_MSG_VERDICT,
				       offsetof(struct sk_msg_md, sk), 0, 0, SK_PASS};
static const struct ctx_kind SK_LOOKUP = {"sk_lookup", BPF_PROG_TYPE_SK_LOOKUP, BPF_SK_LOOKUP, -1, 0, 0, SK_PASS};

static int sk_storage_fd = -1, sockmap_fd = -1, sockhash_fd = -1;

/* The helper called with every argument register zeroed. */
static int known(const struct ctx_kind *k, int helper)
{
	struct prog p = {.n = 0};

	for (int r = R1; r <= R5; r++)
		emit(&p, MOV_IMM(r, 0));
	emit(&p, CALL(helper));
	emit(&p, MOV_IMM(R0, k->ret));
	emit(&p, EXIT());
	return load(k->type, k->attach, &p, "kf_known");
}

/* R2 := the context's socket (R6 holds the context); may add a NULL check
 * that jumps to the program's end, which is patched by the caller. Returns
 * the index of that jump, or -1. */
static int emit_sk(struct prog *p, const struct ctx_kind *k, int reg)
{
	if (k->sk_is_ctx) {
		emit(p, MOV_REG(reg, R6));
		return -1;
	}
	emit(p, LDX(BPF_DW, reg, R6, k->sk_off));
	if (!k->sk_or_null)
		return -1;
	emit(p, JEQ_IMM(reg, 0, 0));
	return p->n - 1;
}

/* The helper called with real arguments for the context. */
static int usable(const struct ctx_kind *k, int helper)
{
	struct prog p = {.n = 0};
	int jmp = -1;

	emit(&p, MOV_REG(R6, R1));
	switch (helper) {
	case BPF_FUNC_get_netns_cookie:
	case BPF_FUNC_get_socket_cookie:
		emit(&p, MOV_REG(R1, R6));
		break;
	case BPF_FUNC_sk_storage_get:
	case BPF_FUNC_sk_storage_delete:
		if (sk_storage_fd < 0)
			return -EBADF;
		jmp = emit_sk(&p, k, R2);
		emit_map(&p, R1, sk_storage_fd);
		if (helper == BPF_FUNC_sk_storage_get) {
			emit(&p, MOV_IMM(R3, 0));
			emit(&p, MOV_IMM(R4, BPF_SK_STORAGE_GET_F_CREATE));
		}
		break;
	case BPF_FUNC_bind:
		/* A zeroed struct sockaddr_in on the stack. */
		emit(&p, ST(BPF_DW, FP, -16, 0));
		emit(&p, ST(BPF_DW, FP, -8, 0));
		emit(&p, MOV_REG(R1, R6));
		emit(&p, MOV_REG(R2, FP));
		emit(&p, ADD_IMM(R2, -16));
		emit(&p, MOV_IMM(R3, 16));
		break;
	case BPF_FUNC_sk_assign:
		emit(&p, MOV_REG(R1, R6));
		emit(&p, MOV_IMM(R2, 0));
		emit(&p, MOV_IMM(R3, 0));
		break;
	case BPF_FUNC_sock_map_update:
	case BPF_FUNC_sock_hash_update:
	case BPF_FUNC_msg_redirect_hash: {
		int fd = helper == BPF_FUNC_sock_map_update ? sockmap_fd : sockhash_fd;

		if (fd < 0)
			return -EBADF;
		emit(&p, ST(BPF_W, FP, -4, 0));
		emit(&p, MOV_REG(R1, R6));
		emit_map(&p, R2, fd);
		emit(&p, MOV_REG(R3, FP));
		emit(&p, ADD_IMM(R3, -4));
		emit(&p, MOV_IMM(R4, helper == BPF_FUNC_msg_redirect_hash ? 0 : BPF_ANY));
		break;
	}
	default: /* no arguments: get_current_uid_gid, get_current_cgroup_id */
		break;
	}
	emit(&p, CALL(helper));
	if (jmp >= 0)
		p.i[jmp].off = p.n - jmp - 1;
	emit(&p, MOV_IMM(R0, k->ret));
	emit(&p, EXIT());
	return load(k->type, k->attach, &p, "kf_usable");
}

static void helper_fact(const struct ctx_kind *k, int helper, const char *hname)
{
	char subject[128];
	int fd = known(k, helper);
	int yes = fd >= 0 || (!strstr(vlog, "unknown func") && !strstr(vlog, "invalid func") &&
			      !strstr(vlog, "program of this type cannot use helper"));
	char known_txt[700];

	snprintf(known_txt, sizeof(known_txt), "%s", outcome(fd));
	if (fd >= 0)
		close(fd);
	snprintf(subject, sizeof(subject), "%s:%s", k->name, hname);
	int u = usable(k, helper);
	char usable_txt[700];

	snprintf(usable_txt, sizeof(usable_txt), "%s", u == -EBADF ? "(no map to try it with)" : outcome(u));
	if (u >= 0)
		close(u);
	fact("helper", subject, yes, "known: %s; with real arguments: %s", known_txt, usable_txt);
}

/* --- the questions ------------------------------------------------------------- */

static void helpers(void)
{
	static const struct {
		const struct ctx_kind *k;
		int helper;
		const char *name;
	} rows[] = {
#define H(k, f) {&k, BPF_FUNC_##f, "bpf_" #f}
		H(SOCK_ADDR, get_netns_cookie), H(SOCK, get_netns_cookie), H(SOCK_OPS, get_netns_cookie),
		H(SOCKOPT, get_netns_cookie), H(SK_MSG, get_netns_cookie), H(SK_LOOKUP, get_netns_cookie),
		H(SOCK_ADDR, sk_storage_get), H(SOCK, sk_storage_get), H(SOCK_OPS, sk_storage_get),
		H(SOCKOPT, sk_storage_get), H(SK_MSG, sk_storage_get),
		H(SOCK_ADDR, sk_storage_delete), H(SOCK, sk_storage_delete), H(SOCK_OPS, sk_storage_delete),
		H(SOCKOPT, sk_storage_delete), H(SK_MSG, sk_storage_delete),
		H(SOCK, get_socket_cookie), H(SOCK_ADDR, get_socket_cookie), H(SOCK_OPS, get_socket_cookie),
		H(SK_MSG, get_socket_cookie),
		H(SOCK_ADDR, bind),
		H(SK_LOOKUP, sk_assign),
		H(SOCK_OPS, sock_map_update), H(SOCK_OPS, sock_hash_update),
		H(SK_MSG, msg_redirect_hash),
		H(SOCK_ADDR, get_current_uid_gid), H(SOCK, get_current_uid_gid), H(SOCK_OPS, get_current_uid_gid),
		H(SOCKOPT, get_current_uid_gid),
		H(SOCK_ADDR, get_current_cgroup_id), H(SOCK, get_current_cgroup_id),
		H(SOCK_OPS, get_current_cgroup_id), H(SOCKOPT, get_current_cgroup_id),
#undef H
	};

	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
		helper_fact(rows[i].k, rows[i].helper, rows[i].name);
}

/* bpf_map_lookup_elem on a SOCKMAP/SOCKHASH from sk_lookup: accepted only
 * when the verifier types the result as a socket (it is handed to
 * bpf_sk_assign and released). */
static void sockmap_lookup(const char *mname, int map_fd)
{
	struct prog p = {.n = 0};
	char subject[64];

	snprintf(subject, sizeof(subject), "sk_lookup:%s", mname);
	if (map_fd < 0) {
		fact("sockmap-lookup", subject, 0, "(the map could not be created: %s)", strerrorname_np(-map_fd));
		return;
	}
	emit(&p, MOV_REG(R6, R1));
	emit(&p, ST(BPF_W, FP, -4, 0));
	emit_map(&p, R1, map_fd);
	emit(&p, MOV_REG(R2, FP));
	emit(&p, ADD_IMM(R2, -4));
	emit(&p, CALL(BPF_FUNC_map_lookup_elem));
	emit(&p, JEQ_IMM(R0, 0, 7));
	emit(&p, MOV_REG(R7, R0));
	emit(&p, MOV_REG(R1, R6));
	emit(&p, MOV_REG(R2, R7));
	emit(&p, MOV_IMM(R3, 0));
	emit(&p, CALL(BPF_FUNC_sk_assign));
	emit(&p, MOV_REG(R1, R7));
	emit(&p, CALL(BPF_FUNC_sk_release));
	emit(&p, MOV_IMM(R0, SK_PASS));
	emit(&p, EXIT());
	int fd = load(BPF_PROG_TYPE_SK_LOOKUP, BPF_SK_LOOKUP, &p, "kf_sklookup_map");
	fact("sockmap-lookup", subject, fd >= 0, "%s (lookup, then bpf_sk_assign and bpf_sk_release on the result)",
	     outcome(fd));
	if (fd >= 0)
		close(fd);
}

/* A program that only returns; for the attach-type and link rows. */
static int trivial(enum bpf_prog_type type, enum bpf_attach_type attach, int ret)
{
	struct prog p = {.n = 0};

	emit(&p, MOV_IMM(R0, ret));
	emit(&p, EXIT());
	return load(type, attach, &p, "kf_trivial");
}

static void attach_types(int cg_fd, int ns_fd)
{
	static const struct {
		const char *name;
		enum bpf_prog_type type;
		enum bpf_attach_type attach;
	} rows[] = {
		{"connect4", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_CONNECT},
		{"connect6", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET6_CONNECT},
		{"sendmsg4", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_UDP4_SENDMSG},
		{"sendmsg6", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_UDP6_SENDMSG},
		{"recvmsg4", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_UDP4_RECVMSG},
		{"recvmsg6", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_UDP6_RECVMSG},
		{"getpeername4", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_GETPEERNAME},
		{"getpeername6", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET6_GETPEERNAME},
		{"bind4", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_BIND},
		{"bind6", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET6_BIND},
		{"post_bind4", BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET4_POST_BIND},
		{"post_bind6", BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET6_POST_BIND},
		{"sock_create", BPF_PROG_TYPE_CGROUP_SOCK, BPF_CGROUP_INET_SOCK_CREATE},
		{"getsockopt", BPF_PROG_TYPE_CGROUP_SOCKOPT, BPF_CGROUP_GETSOCKOPT},
		{"sockops", BPF_PROG_TYPE_SOCK_OPS, BPF_CGROUP_SOCK_OPS},
		{"sk_lookup", BPF_PROG_TYPE_SK_LOOKUP, BPF_SK_LOOKUP},
	};

	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		int ret = rows[i].type == BPF_PROG_TYPE_SK_LOOKUP ? SK_PASS : 1;
		int fd = trivial(rows[i].type, rows[i].attach, ret);
		int is_netns = rows[i].attach == BPF_SK_LOOKUP;
		int target = is_netns ? ns_fd : cg_fd;

		fact("attach-load", rows[i].name, fd >= 0, "%s", outcome(fd));
		if (fd < 0)
			continue;
		if (target < 0) {
			fact("link-create", rows[i].name, -1, "(not asked: no %s given)", is_netns ? "--netns" : "--cgroup");
			close(fd);
			continue;
		}
		int link = link_create(fd, target, rows[i].attach);
		fact("link-create", rows[i].name, link >= 0, "(BPF_LINK_CREATE on a %s: %s)",
		     is_netns ? "netns" : "cgroup", link >= 0 ? "OK" : strerrorname_np(-link));
		/* Update on one cgroup link (connect4) and on the netns link. */
		if (link >= 0 && (rows[i].attach == BPF_CGROUP_INET4_CONNECT || is_netns)) {
			int fd2 = trivial(rows[i].type, rows[i].attach, ret);
			int err = fd2 < 0 ? fd2 : link_update(link, fd2);

			fact("link-update", is_netns ? "netns(sk_lookup)" : "cgroup(connect4)", err == 0,
			     "(BPF_LINK_UPDATE to a second program: %s)", err == 0 ? "OK" : strerrorname_np(-err));
			if (fd2 >= 0)
				close(fd2);
		}
		if (link >= 0)
			close(link);
		close(fd);
	}
}

/* One context field read: the load of a program that reads it. */
static void ctx_field(const char *subject, enum bpf_prog_type type, enum bpf_attach_type attach, int size, int off,
		      int ret)
{
	struct prog p = {.n = 0};

	emit(&p, LDX(size, R2, R1, off));
	emit(&p, MOV_IMM(R0, ret));
	emit(&p, EXIT());
	int fd = load(type, attach, &p, "kf_ctx");
	fact("ctx", subject, fd >= 0, "(read at offset %d) %s", off, outcome(fd));
	if (fd >= 0)
		close(fd);
}

static int map_fact(const char *name, enum bpf_map_type type, __u32 key, __u32 value, __u32 entries, __u32 flags,
		    int btf_fd)
{
	int fd = map_create(type, key, value, entries, flags, btf_fd);

	fact("map", name, fd >= 0, "(BPF_MAP_CREATE key %u value %u entries %u flags %#x%s: %s)", key, value, entries,
	     flags, btf_fd >= 0 ? " with BTF" : "", fd >= 0 ? "OK" : strerrorname_np(-fd));
	return fd;
}

/* --- a whole object, one program at a time ------------------------------------ */

static int libbpf_quiet(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	return level == LIBBPF_WARN ? vfprintf(stdout, fmt, ap) : 0;
}

/* Prints the last lines of vlog, indented. */
static void log_tail(int lines)
{
	size_t len = strlen(vlog);
	const char *p = vlog + len;
	int n = 0;

	while (p > vlog && len > 0) {
		p--;
		if (*p == '\n' && p != vlog + len - 1 && ++n == lines) {
			p++;
			break;
		}
	}
	printf("    | ");
	for (const char *c = p; *c; c++) {
		putchar(*c);
		if (*c == '\n' && c[1])
			printf("    | ");
	}
	if (len && vlog[len - 1] != '\n')
		putchar('\n');
}

static void object_progs(const char *path)
{
	struct bpf_object *obj = bpf_object__open_file(path, NULL);
	struct bpf_program *prog;
	int count = 0;

	if (!obj) {
		fact("object", path, 0, "(cannot open: %s)", strerrorname_np(errno));
		return;
	}
	bpf_object__for_each_program(prog, obj) count++;
	bpf_object__close(obj);
	for (int i = 0; i < count; i++) {
		int j = 0, err;
		char name[128] = "";

		obj = bpf_object__open_file(path, NULL);
		if (!obj)
			return;
		bpf_object__for_each_program(prog, obj) {
			int mine = j++ == i;

			bpf_program__set_autoload(prog, mine);
			if (mine) {
				snprintf(name, sizeof(name), "%s", bpf_program__name(prog));
				vlog[0] = '\0';
				bpf_program__set_log_buf(prog, vlog, sizeof(vlog));
				bpf_program__set_log_level(prog, 1);
			}
		}
		err = bpf_object__load(obj);
		fact("object-prog", name, err == 0, "(%s alone from %s: %s%s%s%s)", name, path,
		     err == 0 ? "load OK" : strerrorname_np(-err) ? strerrorname_np(-err) : "error",
		     err == 0 ? "" : "; verifier: \"", err == 0 ? "" : verifier_message(), err == 0 ? "" : "\"");
		if (err)
			log_tail(25);
		bpf_object__close(obj);
	}
}

static int is_root_cgroup(const char *dir)
{
	char parent[PATH_MAX];
	struct stat st;

	snprintf(parent, sizeof(parent), "%s/../cgroup.procs", dir);
	return stat(parent, &st) != 0;
}

int main(int argc, char **argv)
{
	const char *cgroup = NULL, *netns = NULL, *object = NULL;
	int cg_fd = -1, ns_fd = -1;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--cgroup") && i + 1 < argc)
			cgroup = argv[++i];
		else if (!strcmp(argv[i], "--netns") && i + 1 < argc)
			netns = argv[++i];
		else if (!strcmp(argv[i], "--object") && i + 1 < argc)
			object = argv[++i];
		else {
			fprintf(stderr, "usage: kfacts [--cgroup DIR] [--netns PATH] [--object FILE]\n");
			return 2;
		}
	}
	if (cgroup) {
		if (is_root_cgroup(cgroup)) {
			fprintf(stderr, "kfacts: %s is not a child cgroup; refusing to attach there\n", cgroup);
			return 2;
		}
		cg_fd = open(cgroup, O_RDONLY | O_DIRECTORY);
		if (cg_fd < 0) {
			perror(cgroup);
			return 2;
		}
	}
	if (netns) {
		ns_fd = open(netns, O_RDONLY);
		if (ns_fd < 0) {
			perror(netns);
			return 2;
		}
	}

	/* Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK (64 KiB by
	 * default there), later ones to the memory cgroup. With the limit at
	 * zero a map can be created only under cgroup accounting. Then the
	 * limit is lifted so that the rows below are not refused for it. */
	struct rlimit old, inf = {RLIM_INFINITY, RLIM_INFINITY};

	getrlimit(RLIMIT_MEMLOCK, &old);
	if (setrlimit(RLIMIT_MEMLOCK, &(struct rlimit){0, old.rlim_max}) == 0) {
		int fd = map_create(BPF_MAP_TYPE_ARRAY, 4, 4, 1, 0, -1);

		fact("memlock", "charged-to-rlimit", fd < 0,
		     "(an ARRAY map with RLIMIT_MEMLOCK at 0: %s; the limit was %llu KiB)",
		     fd >= 0 ? "created, so BPF memory is charged to the memory cgroup" : strerrorname_np(-fd),
		     old.rlim_cur == RLIM_INFINITY ? ~0ULL : (unsigned long long)old.rlim_cur / 1024);
		if (fd >= 0)
			close(fd);
	}
	if (setrlimit(RLIMIT_MEMLOCK, &inf) != 0) {
		fprintf(stderr, "kfacts: cannot lift RLIMIT_MEMLOCK (%s): rows may be refused for it\n",
			strerror(errno));
		setrlimit(RLIMIT_MEMLOCK, &old);
	}

	int btf = btf_int();
	fact("btf", "load", btf >= 0, "(BPF_BTF_LOAD of one int type: %s)", btf >= 0 ? "OK" : strerrorname_np(-btf));
	map_fact("LRU_HASH", BPF_MAP_TYPE_LRU_HASH, 4, 4, 16, 0, -1);
	map_fact("LPM_TRIE", BPF_MAP_TYPE_LPM_TRIE, 8, 4, 16, BPF_F_NO_PREALLOC, -1);
	sk_storage_fd = map_fact("SK_STORAGE", BPF_MAP_TYPE_SK_STORAGE, 4, 4, 0, BPF_F_NO_PREALLOC, btf);
	sockhash_fd = map_fact("SOCKHASH", BPF_MAP_TYPE_SOCKHASH, 4, 4, 16, 0, -1);
	sockmap_fd = map_fact("SOCKMAP", BPF_MAP_TYPE_SOCKMAP, 4, 4, 16, 0, -1);
	map_fact("PERCPU_ARRAY", BPF_MAP_TYPE_PERCPU_ARRAY, 4, 4, 4, 0, -1);

	helpers();
	sockmap_lookup("SOCKMAP", sockmap_fd);
	sockmap_lookup("SOCKHASH", sockhash_fd);
	attach_types(cg_fd, ns_fd);

	ctx_field("bpf_sk_lookup.ingress_ifindex", BPF_PROG_TYPE_SK_LOOKUP, BPF_SK_LOOKUP, BPF_W,
		  offsetof(struct bpf_sk_lookup, ingress_ifindex), SK_PASS);
	ctx_field("bpf_sock_addr.sk", BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_CONNECT, BPF_DW,
		  offsetof(struct bpf_sock_addr, sk), 1);
	ctx_field("bpf_sockopt.sk", BPF_PROG_TYPE_CGROUP_SOCKOPT, BPF_CGROUP_GETSOCKOPT, BPF_DW,
		  offsetof(struct bpf_sockopt, sk), 1);
	if (object) {
		libbpf_set_print(libbpf_quiet);
		object_progs(object);
	}
	return 0;
}
