#include "kernel_features.h"

#include "bpf_sys.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <linux/capability.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string_view>

#include <spdlog/spdlog.h>

#include "meshcap.h"
#include "meshcap.skel.h"

namespace meshcap::loader {

namespace {

constexpr const char* kNames[] = {
#define MC_FEATURE_NAME(name, doc) #name,
    MESHCAP_KERNEL_FEATURES(MC_FEATURE_NAME)
#undef MC_FEATURE_NAME
};
constexpr const char* kDocs[] = {
#define MC_FEATURE_DOC(name, doc) doc,
    MESHCAP_KERNEL_FEATURES(MC_FEATURE_DOC)
#undef MC_FEATURE_DOC
};
static_assert(sizeof(kNames) / sizeof(kNames[0]) == kFeatureCount);

size_t idx(Feature f) { return static_cast<size_t>(f); }

// linux/capability.h
constexpr int kCapNetAdmin = 12;
constexpr int kCapSysAdmin = 21;
constexpr int kCapBpf = 39;

// Whether `cap` is in this thread's effective set, asked with capget(2).
bool capability(int cap) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (syscall(SYS_capget, &header, data)) return false;
  return (data[cap / 32].effective >> (cap % 32)) & 1;
}

bool have_tool(const std::string& name) {
  for (const char* dir : {"/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"})
    if (access((dir + name).c_str(), X_OK) == 0) return true;
  return false;
}

// The skeleton programs behind each program row, and the settings they are
// verified with (the verifier drops code behind settings that are off).
struct ProgramRow {
  Feature feature;
  std::vector<const char*> programs;
  bool variant;  // verified with the row's load-time setting on (see load_programs)
};

const std::vector<ProgramRow>& program_rows() {
  static const std::vector<ProgramRow> rows = {
      {Feature::prog_connect, {"mc_connect4", "mc_connect6", "mc_bind4", "mc_bind6"}, false},
      {Feature::prog_getpeername, {"mc_getpeername4", "mc_getpeername6"}, false},
      {Feature::prog_sockops, {"mc_sockops"}, false},
      {Feature::prog_getsockopt, {"mc_getsockopt"}, false},
      {Feature::prog_sk_lookup, {"mc_sk_lookup"}, false},
      {Feature::prog_sk_lookup_ifindex, {"mc_sk_lookup"}, true},
      {Feature::prog_key_netns, {"mc_sockops", "mc_getsockopt"}, true},
      {Feature::prog_sk_msg, {"mc_accel"}, false},
      {Feature::prog_dns, {"mc_sendmsg4", "mc_sendmsg6", "mc_recvmsg4", "mc_recvmsg6"}, false},
  };
  return rows;
}

struct SkelDeleter {
  void operator()(meshcap_bpf* s) const { meshcap_bpf::destroy(s); }
};

// A probe's refused load is an answer, not a problem: libbpf's messages
// about it (on older kernels the verifier's log, hundreds of lines) go to
// the debug log only, while the probe loads.
int probe_print(enum libbpf_print_level, const char* fmt, va_list args) {
  char buf[1024];
  if (std::vsnprintf(buf, sizeof buf, fmt, args) < 0) return 0;
  std::string msg(buf);
  while (!msg.empty() && msg.back() == '\n') msg.pop_back();
  spdlog::debug("libbpf (kernel probe): {}", msg);
  return 0;
}

struct QuietLibbpf {
  libbpf_print_fn_t previous = libbpf_set_print(probe_print);
  ~QuietLibbpf() { libbpf_set_print(previous); }
};

// Loads only `programs` of meshcap's skeleton, with --accelerate on (and
// the row's own setting when `variant`: the arrival interface for sk_lookup,
// the netns cookie for sockops and getsockopt) and its maps shrunk to one
// entry, then discards everything. 0, or the negative errno of the load.
int load_programs(const std::vector<const char*>& programs, bool variant) {
  QuietLibbpf quiet;
  std::unique_ptr<meshcap_bpf, SkelDeleter> skel(meshcap_bpf::open());
  if (!skel) return -errno;
  bpf_program* prog;
  bpf_object__for_each_program(prog, skel->obj) {
    bool wanted = std::any_of(programs.begin(), programs.end(),
                              [&](const char* p) { return std::strcmp(p, bpf_program__name(prog)) == 0; });
    bpf_program__set_autoload(prog, wanted);
  }
  bpf_map* map;
  bpf_object__for_each_map(map, skel->obj) {
    if (bpf_map__type(map) != BPF_MAP_TYPE_SK_STORAGE && bpf_map__max_entries(map) > MC_CNT__MAX &&
        !bpf_map__is_internal(map))
      bpf_map__set_max_entries(map, 1);
  }
  const bool lookup = std::find(programs.begin(), programs.end(), std::string_view("mc_sk_lookup")) != programs.end();
  skel->rodata->mc_node = mc_node{1, static_cast<__u8>(variant && !lookup), static_cast<__u8>(variant && lookup), 1, 0};
  return meshcap_bpf::load(skel.get());
}

}  // namespace

const char* feature_name(Feature f) { return kNames[idx(f)]; }
const char* feature_doc(Feature f) { return kDocs[idx(f)]; }

std::vector<std::string> feature_names() { return {std::begin(kNames), std::end(kNames)}; }

bool KernelFeatures::has(Feature f) {
  auto& slot = cache_[idx(f)];
  if (!slot) {
    const bool is_program = std::any_of(program_rows().begin(), program_rows().end(),
                                        [&](const ProgramRow& r) { return r.feature == f; });
    const bool variant = std::any_of(program_rows().begin(), program_rows().end(),
                                     [&](const ProgramRow& r) { return r.feature == f && r.variant; });
    if (is_program && !variant) {
      probe_programs();
    } else {
      slot = probe(f, details_[idx(f)]);
    }
  }
  return *slot;
}

std::string KernelFeatures::detail(Feature f) {
  has(f);
  return details_[idx(f)];
}

// Every program row at once: one load of all of meshcap's programs, and
// only when the kernel refuses it, one load per row to tell which.
void KernelFeatures::probe_programs() {
  if (!batch_program_probe()) {
    for (const auto& r : program_rows()) cache_[idx(r.feature)] = probe(r.feature, details_[idx(r.feature)]);
    return;
  }
  std::vector<const char*> all;
  for (const auto& r : program_rows())
    if (!r.variant) all.insert(all.end(), r.programs.begin(), r.programs.end());
  const bool all_load = load_programs(all, false) == 0;
  for (const auto& r : program_rows()) {
    if (r.variant) continue;  // probed on their own, when asked
    if (all_load) {
      cache_[idx(r.feature)] = true;
      continue;
    }
    int err = load_programs(r.programs, r.variant);
    cache_[idx(r.feature)] = err == 0;
    if (err) details_[idx(r.feature)] = std::string("the kernel refuses it: ") + std::strerror(-err);
  }
}

bool KernelFeatures::probe(Feature f, std::string& detail) {
  switch (f) {
    case Feature::cap_bpf:
      return capability(kCapBpf) || capability(kCapSysAdmin);
    case Feature::cap_net_admin:
      return capability(kCapNetAdmin);
    case Feature::cap_sys_admin:
      return capability(kCapSysAdmin);
    case Feature::bpf_syscall: {
      int fd = create_plain_array(4, 1);
      if (fd < 0) {
        detail = std::strerror(errno);
        return false;
      }
      close(fd);
      return true;
    }
    case Feature::cgroup2: {
      auto m = cgroup2_mount();
      if (m) detail = *m;
      return m.has_value();
    }
    case Feature::btf:
      return access("/sys/kernel/btf/vmlinux", R_OK) == 0;
    case Feature::helper_sk_storage:
      return libbpf_probe_bpf_helper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_sk_storage_get, nullptr) == 1;
    case Feature::helper_bind:
      return libbpf_probe_bpf_helper(BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_FUNC_bind, nullptr) == 1;
    case Feature::helper_sk_assign:
      return libbpf_probe_bpf_helper(BPF_PROG_TYPE_SK_LOOKUP, BPF_FUNC_sk_assign, nullptr) == 1;
    case Feature::helper_sock_map_update:
      return libbpf_probe_bpf_helper(BPF_PROG_TYPE_SOCK_OPS, BPF_FUNC_sock_map_update, nullptr) == 1;
    case Feature::iptables_nft:
      return have_tool("iptables-nft") && have_tool("iptables-nft-restore");
    case Feature::iptables_legacy:
      return have_tool("iptables-legacy") && have_tool("iptables-legacy-restore");
    default: {
      // A program row (a subclass asked for it).
      for (const auto& r : program_rows())
        if (r.feature == f) {
          int err = load_programs(r.programs, r.variant);
          if (err) detail = std::string("the kernel refuses it: ") + std::strerror(-err);
          return err == 0;
        }
      return false;
    }
  }
}

std::vector<FeatureReport> KernelFeatures::report() {
  std::vector<FeatureReport> out;
  for (size_t i = 0; i < kFeatureCount; i++) {
    auto f = static_cast<Feature>(i);
    out.push_back({feature_name(f), has(f), details_[i]});
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

bool FakeKernelFeatures::probe(Feature f, std::string& detail) {
  bool there = std::count(present_.begin(), present_.end(), feature_name(f)) > 0;
  if (!there) detail = "(fake kernel)";
  return there;
}

}  // namespace meshcap::loader
