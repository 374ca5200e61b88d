// Enrolling a pod in a loaded data path: its settings written into the data
// path's maps under a free index, its listeners adopted, sk_lookup attached
// to its network namespace, and then one map update -- pods[netns cookie] --
// that switches its capture on. No program is loaded and no verifier runs:
// enrolling costs a few map updates. Removing a pod starts by deleting that
// entry, so a pod is captured fully or not at all at every step. Each pod's
// rows are listed in a journal pinned beside it, so removing a pod, or
// enrolling one into a full node, costs the pod's own rows and never a walk
// over every pod's.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "capture_config.h"
#include "errors.h"
#include "pod_network.h"

namespace meshcap::loader {

/// A pod's capture settings as the data path reads them.
struct PodSettings {
  CaptureConfig cfg;  ///< the eBPF part of the configuration (Plan::ebpf_config)
  PodNetwork net;
  bool inbound = false;     ///< sk_lookup captures inbound
  bool ipv6 = false;        ///< IPv6 captured
  bool accelerate = false;  ///< --accelerate
};

/// Where a pod sits in a data path.
struct Enrolment {
  uint32_t index = 0;
  uint64_t cookie = 0;
};

/// The pod tables of the data path pinned at a directory, opened from its
/// pins. The caller serializes writers (the agent's node lock).
class PodTable {
 public:
  /// Throws LoaderError when no data path is pinned there.
  explicit PodTable(std::string datapath_dir);
  ~PodTable();
  PodTable(const PodTable&) = delete;
  PodTable& operator=(const PodTable&) = delete;

  /// Enrolls pod `name`, whose namespace is `netns_path` with cookie
  /// `cookie` (or replaces its settings without a moment uncaptured), all
  /// or nothing. A failure of the inbound pieces (sk_lookup, adopting the
  /// proxy's listener, an address another pod holds) throws LoaderError with
  /// Part::Inbound, the rest Part::Outbound; nothing of this call stays.
  Enrolment enroll(const std::string& name, uint64_t cookie, const std::string& netns_path, const PodSettings& s);
  /// Removes pod `name` (namespace cookie `cookie`): its pods entry first,
  /// then its rows and pins. True when anything was there. Safe twice.
  bool unenroll(const std::string& name, uint64_t cookie);
  /// The pods enrolled: cookie -> index.
  std::map<uint64_t, uint32_t> enrolled() const;
  /// How many pods fit (--max-pods).
  uint32_t capacity() const { return capacity_; }
  /// Puts the bookkeeping right after enrolments or removals killed
  /// half-way (and after an upgrade from an older meshcap): indices held
  /// for pods that are gone are freed, their rows cleared before reuse, and
  /// addresses filed for no enrolled pod are removed. Walks the tables:
  /// `meshcap node start` runs it, and enrolling when the table seems full.
  /// Returns how many things it put right.
  size_t repair();

 private:
  struct Fds;
  std::string dir_;
  std::unique_ptr<Fds> fds_;
  uint32_t capacity_ = 0;
  uint32_t next_index_ = 0;  // the index after the last one taken: usually free
  uint32_t take_index(const std::string& name, bool enrolled_before);
};

/// The cookie BPF sees for the namespace at `netns_path`: `known` (from
/// SO_NETNS_COOKIE, Linux 5.14) when set; otherwise asked of the data path
/// pinned at `datapath_dir`, whose connect4 program answers for a process
/// inside its cgroup (`cgroup_dir`) and that namespace (see
/// MC_COOKIE_PROBE_ADDR). Throws LoaderError.
uint64_t netns_cookie(uint64_t known, const std::string& netns_path, const std::string& datapath_dir,
                      const std::string& cgroup_dir);

}  // namespace meshcap::loader
