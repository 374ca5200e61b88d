#include "kernel_features.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <linux/capability.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

namespace meshcap::loader {

namespace {

// linux/capability.h
constexpr int kCapNetAdmin = 12;
constexpr int kCapSysAdmin = 21;
constexpr int kCapBpf = 39;

// Whether `cap` is in this thread's effective set (CapEff of
// /proc/self/status), asked with capget(2) rather than parsing that file.
bool capability(int cap) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (syscall(SYS_capget, &header, data)) return false;
  return (data[cap / 32].effective >> (cap % 32)) & 1;
}

// Loads "r0 = 1; exit" as the given program and attach type.
bool loads(bpf_prog_type type, bpf_attach_type attach) {
  const bpf_insn insns[] = {
      {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 1},
      {BPF_JMP | BPF_EXIT, 0, 0, 0, 0},
  };
  LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = attach);
  int fd = bpf_prog_load(type, nullptr, "GPL", insns, 2, &opts);
  if (fd < 0) return false;
  close(fd);
  return true;
}

// r1 = 0; *(u64 *)(r10 - 8) = r1; r1 = 1; r1 = atomic_fetch_or(r10 - 8, r1)
bool atomic_fetch_loads() {
  const bpf_insn insns[] = {
      {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_1, 0, 0, 0},
      {BPF_STX | BPF_DW | BPF_MEM, BPF_REG_10, BPF_REG_1, -8, 0},
      {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_1, 0, 0, 1},
      {BPF_STX | BPF_DW | BPF_ATOMIC, BPF_REG_10, BPF_REG_1, -8, BPF_OR | BPF_FETCH},
      {BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 1},
      {BPF_JMP | BPF_EXIT, 0, 0, 0, 0},
  };
  LIBBPF_OPTS(bpf_prog_load_opts, opts);
  int fd = bpf_prog_load(BPF_PROG_TYPE_SOCK_OPS, nullptr, "GPL", insns, 6, &opts);
  if (fd < 0) return false;
  close(fd);
  return true;
}

bool have_file(const std::string& path) { return access(path.c_str(), X_OK) == 0; }

bool have_tool(const std::string& name) {
  for (const char* dir : {"/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"})
    if (have_file(dir + name)) return true;
  return false;
}

}  // namespace

const std::vector<std::string>& feature_names() {
  static const std::vector<std::string> names = {
      "bpf_syscall",   "btf",         "cgroup2",       "prog_sock_addr",     "prog_getpeername",
      "prog_sock_ops", "prog_sockopt", "prog_sk_lookup", "prog_sk_msg", "helper_sk_storage", "helper_bind",
      "helper_sk_assign", "helper_sock_map_update", "atomic_fetch", "cap_bpf", "cap_net_admin", "cap_sys_admin",
      "iptables_nft",  "iptables_legacy"};
  return names;
}

bool KernelFeatures::cached(const std::string& name) {
  auto it = cache_.find(name);
  if (it != cache_.end()) return it->second;
  bool v = probe(name);
  cache_[name] = v;
  return v;
}

bool KernelFeatures::probe(const std::string& n) {
  if (n == "bpf_syscall") {
    int fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "mc_probe", 4, 4, 1, nullptr);
    if (fd < 0) return false;
    close(fd);
    return true;
  }
  if (n == "btf") return access("/sys/kernel/btf/vmlinux", R_OK) == 0;
  if (n == "cgroup2") return cgroup2_mount().has_value();
  if (n == "prog_sock_addr") return loads(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_CONNECT);
  if (n == "prog_getpeername") return loads(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_GETPEERNAME);
  if (n == "prog_sock_ops") return libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SOCK_OPS, nullptr) == 1;
  if (n == "prog_sockopt") return loads(BPF_PROG_TYPE_CGROUP_SOCKOPT, BPF_CGROUP_GETSOCKOPT);
  if (n == "prog_sk_lookup") return libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SK_LOOKUP, nullptr) == 1;
  if (n == "prog_sk_msg") return libbpf_probe_bpf_prog_type(BPF_PROG_TYPE_SK_MSG, nullptr) == 1;
  if (n == "helper_sk_storage")
    return libbpf_probe_bpf_helper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_sk_storage_get, nullptr) == 1;
  if (n == "helper_bind") return libbpf_probe_bpf_helper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_bind, nullptr) == 1;
  if (n == "helper_sk_assign") return libbpf_probe_bpf_helper(BPF_PROG_TYPE_SK_LOOKUP, BPF_FUNC_sk_assign, nullptr) == 1;
  if (n == "helper_sock_map_update")
    return libbpf_probe_bpf_helper(BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_sock_map_update, nullptr) == 1;
  if (n == "atomic_fetch") return atomic_fetch_loads();
  if (n == "cap_bpf") return capability(kCapBpf) || capability(kCapSysAdmin);
  if (n == "cap_net_admin") return capability(kCapNetAdmin);
  if (n == "cap_sys_admin") return capability(kCapSysAdmin);
  if (n == "iptables_nft") return have_tool("iptables-nft") && have_tool("iptables-nft-restore");
  if (n == "iptables_legacy") return have_tool("iptables-legacy") && have_tool("iptables-legacy-restore");
  return false;
}

#define MC_FEATURE(name) \
  bool KernelFeatures::name() { return cached(#name); }
MC_FEATURE(bpf_syscall)
MC_FEATURE(btf)
MC_FEATURE(cgroup2)
MC_FEATURE(prog_sock_addr)
MC_FEATURE(prog_getpeername)
MC_FEATURE(prog_sock_ops)
MC_FEATURE(prog_sockopt)
MC_FEATURE(prog_sk_lookup)
MC_FEATURE(prog_sk_msg)
MC_FEATURE(helper_sk_storage)
MC_FEATURE(helper_bind)
MC_FEATURE(helper_sk_assign)
MC_FEATURE(helper_sock_map_update)
MC_FEATURE(atomic_fetch)
MC_FEATURE(cap_bpf)
MC_FEATURE(cap_net_admin)
MC_FEATURE(cap_sys_admin)
MC_FEATURE(iptables_nft)
MC_FEATURE(iptables_legacy)
#undef MC_FEATURE

std::vector<FeatureReport> KernelFeatures::report() {
  std::vector<FeatureReport> out;
  for (const auto& n : feature_names()) {
    FeatureReport r{n, cached(n), ""};
    if (n == "cgroup2" && r.present) r.detail = cgroup2_mount().value_or("");
    out.push_back(r);
  }
  return out;
}

std::string KernelFeatures::kernel_release() {
  struct utsname u {};
  uname(&u);
  return u.release;
}

std::optional<std::string> KernelFeatures::cgroup2_mount() { return find_cgroup2_mount(); }

std::optional<std::string> find_cgroup2_mount() {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    auto dash = line.find(" - ");
    if (dash == std::string::npos) continue;
    std::istringstream tail(line.substr(dash + 3));
    std::string fstype;
    tail >> fstype;
    if (fstype != "cgroup2") continue;
    std::istringstream head(line.substr(0, dash));
    std::string id, parent, dev, root, mountpoint;
    head >> id >> parent >> dev >> root >> mountpoint;
    return mountpoint;
  }
  return std::nullopt;
}

std::optional<std::string> FakeKernelFeatures::cgroup2_mount() {
  if (std::count(present_.begin(), present_.end(), "cgroup2")) return std::string("/sys/fs/cgroup");
  return std::nullopt;
}

bool FakeKernelFeatures::probe(const std::string& name) {
  return std::count(present_.begin(), present_.end(), name) > 0;
}

}  // namespace meshcap::loader
