// What the running kernel and this process can do for meshcap, found by
// asking the kernel (loading tiny programs, probing helpers), never by
// version number. Each answer is probed once and cached. Probes are virtual
// so tests can substitute a fake kernel.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace meshcap::loader {

/// One probed fact, for reports: its name, the answer, and a note.
struct FeatureReport {
  std::string name;
  bool present = false;
  std::string detail;
};

class KernelFeatures {
 public:
  virtual ~KernelFeatures() = default;

  bool bpf_syscall();            ///< BPF maps can be created by this process
  bool btf();                    ///< /sys/kernel/btf/vmlinux
  bool cgroup2();                ///< a cgroup v2 hierarchy is mounted
  bool prog_sock_addr();         ///< cgroup/connect4|6 programs
  bool prog_getpeername();       ///< cgroup/getpeername4|6 attach types (5.8)
  bool prog_sock_ops();          ///< sockops
  bool prog_sockopt();           ///< cgroup/getsockopt
  bool prog_sk_lookup();         ///< sk_lookup (5.9)
  bool prog_sk_msg();            ///< sk_msg (4.17), for --accelerate
  bool helper_sk_storage();      ///< bpf_sk_storage_get from connect hooks
  bool helper_bind();            ///< bpf_bind from connect hooks
  bool helper_sk_assign();       ///< bpf_sk_assign from sk_lookup
  bool helper_sock_map_update(); ///< bpf_sock_map_update from sockops
  bool atomic_fetch();           ///< BPF atomic fetch-and-or (5.12)
  bool cap_bpf();                ///< CAP_BPF (or CAP_SYS_ADMIN) effective
  bool cap_net_admin();          ///< CAP_NET_ADMIN effective
  bool cap_sys_admin();          ///< CAP_SYS_ADMIN effective
  bool iptables_nft();           ///< iptables-nft installed
  bool iptables_legacy();        ///< iptables-legacy installed

  /// Every probe, in report order.
  std::vector<FeatureReport> report();
  /// The kernel release (uname -r).
  virtual std::string kernel_release();
  /// The cgroup2 mount point, if any.
  virtual std::optional<std::string> cgroup2_mount();

 protected:
  // The probes themselves; a fake kernel overrides this one function.
  virtual bool probe(const std::string& name);

 private:
  bool cached(const std::string& name);
  std::map<std::string, bool> cache_;
};

/// A fake kernel for tests: every feature named in `present` is there.
class FakeKernelFeatures : public KernelFeatures {
 public:
  explicit FakeKernelFeatures(std::vector<std::string> present, std::string release = "fake")
      : present_(std::move(present)), release_(std::move(release)) {}
  std::string kernel_release() override { return release_; }
  std::optional<std::string> cgroup2_mount() override;

 protected:
  bool probe(const std::string& name) override;

 private:
  std::vector<std::string> present_;
  std::string release_;
};

/// The cgroup2 mount point from /proc/self/mountinfo, if any.
std::optional<std::string> find_cgroup2_mount();

/// The names the probes go by (what FakeKernelFeatures takes).
const std::vector<std::string>& feature_names();

}  // namespace meshcap::loader
