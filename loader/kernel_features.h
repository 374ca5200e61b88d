// What the running kernel and this process can do for meshcap, found by
// asking the kernel, never by version number. The rows that decide a plan
// load meshcap's own programs from the skeleton (loaded and discarded), not
// look-alikes; the helper rows say why a program is refused. Each answer is
// probed once and cached; probes are virtual so tests can fake a kernel.
#pragma once

#include <array>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace meshcap::loader {

/// Every probed fact, once: name and what it checks. The accessors, the
/// names, the report order and the probes all come from this table.
#define MESHCAP_KERNEL_FEATURES(X)                                                                          \
  X(cap_bpf, "CAP_BPF or CAP_SYS_ADMIN is effective")                                                     \
  X(cap_net_admin, "CAP_NET_ADMIN is effective")                                                          \
  X(cap_sys_admin, "CAP_SYS_ADMIN is effective")                                                          \
  X(bpf_syscall, "a BPF map can be created")                                                              \
  X(cgroup2, "a cgroup v2 hierarchy is mounted")                                                          \
  X(btf, "/sys/kernel/btf/vmlinux is readable (reported only)")                                           \
  X(prog_connect, "meshcap's cgroup/connect4 and connect6 programs load")                                 \
  X(prog_getpeername, "meshcap's cgroup/getpeername4 and getpeername6 programs load")                     \
  X(prog_sockops, "meshcap's sockops program loads")                                                      \
  X(prog_getsockopt, "meshcap's cgroup/getsockopt program loads")                                         \
  X(prog_sk_lookup, "meshcap's sk_lookup program loads")                                                  \
  X(prog_sk_lookup_ifindex, "meshcap's sk_lookup program loads reading the arrival interface (-c, -k)")    \
  X(prog_key_netns, "meshcap's sockops and getsockopt programs load reading the netns cookie (node data path)") \
  X(prog_sk_msg, "meshcap's sk_msg program loads (--accelerate)")                                         \
  X(prog_dns, "meshcap's cgroup sendmsg4/6 and recvmsg4/6 programs load (DNS capture)")                   \
  X(helper_sk_storage, "bpf_sk_storage_get from cgroup connect programs")                                 \
  X(helper_bind, "bpf_bind from cgroup connect programs")                                                 \
  X(helper_sk_assign, "bpf_sk_assign from sk_lookup programs")                                            \
  X(helper_sock_map_update, "bpf_sock_map_update from sockops programs")                                  \
  X(iptables_nft, "iptables-nft and iptables-nft-restore are installed")                                  \
  X(iptables_legacy, "iptables-legacy and iptables-legacy-restore are installed")

enum class Feature {
#define MC_FEATURE_ENUM(name, doc) name,
  MESHCAP_KERNEL_FEATURES(MC_FEATURE_ENUM)
#undef MC_FEATURE_ENUM
};
inline constexpr size_t kFeatureCount = 0
#define MC_FEATURE_COUNT(name, doc) +1
    MESHCAP_KERNEL_FEATURES(MC_FEATURE_COUNT)
#undef MC_FEATURE_COUNT
    ;

/// A feature's name ("prog_connect") and description.
const char* feature_name(Feature f);
const char* feature_doc(Feature f);
/// Every feature name, in report order (what FakeKernelFeatures takes).
std::vector<std::string> feature_names();

/// One probed fact, for reports.
struct FeatureReport {
  std::string name;
  bool present = false;
  std::string detail;  ///< e.g. why a program was refused, or the cgroup2 mount
};

class KernelFeatures {
 public:
  virtual ~KernelFeatures() = default;

  /// Whether the feature is there (probed on first use, then cached).
  bool has(Feature f);
  /// Why a probe said no, when it knows ("" otherwise).
  std::string detail(Feature f);

#define MC_FEATURE_ACCESSOR(name, doc) \
  bool name() { return has(Feature::name); }
  MESHCAP_KERNEL_FEATURES(MC_FEATURE_ACCESSOR)
#undef MC_FEATURE_ACCESSOR

  /// Every feature, in table order.
  std::vector<FeatureReport> report();
  /// The kernel release (uname -r).
  virtual std::string kernel_release();
  /// The cgroup2 mount point, if any.
  virtual std::optional<std::string> cgroup2_mount();

 protected:
  /// Probes one feature; `detail` may say why not. A fake kernel overrides it.
  virtual bool probe(Feature f, std::string& detail);
  /// Whether the program rows may be probed together, with one load of all
  /// of meshcap's programs first (a fake kernel answers them one by one).
  virtual bool batch_program_probe() { return true; }

 private:
  void probe_programs();
  std::array<std::optional<bool>, kFeatureCount> cache_;
  std::array<std::string, kFeatureCount> details_;
};

/// A fake kernel for tests: every feature named in `present` is there.
class FakeKernelFeatures : public KernelFeatures {
 public:
  explicit FakeKernelFeatures(std::vector<std::string> present, std::string release = "fake")
      : present_(std::move(present)), release_(std::move(release)) {}
  std::string kernel_release() override { return release_; }
  std::optional<std::string> cgroup2_mount() override;

 protected:
  bool probe(Feature f, std::string& detail) override;
  bool batch_program_probe() override { return false; }

 private:
  std::vector<std::string> present_;
  std::string release_;
};

/// The cgroup2 mount point from /proc/self/mountinfo, if any.
std::optional<std::string> find_cgroup2_mount();

}  // namespace meshcap::loader
