// What meshcap applied to a pod, written by init and read by status and
// cleanup: one typed, versioned record per pod under /run/meshcap/pods/.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "istio_flags.h"
#include "plan.h"
#include "pod_network.h"

namespace meshcap {

struct PodState {
  static constexpr int kVersion = 2;

  std::string name;
  std::string cgroup;      ///< the per-pod eBPF cgroup ("" when none)
  std::string netns_path;  ///< the path given at init (may name another namespace later)
  NetnsId netns;           ///< what the path named at init
  FlagSet flags;           ///< the flags and environment the capture was built from
  /// Set when the record was read without its flags (read_pod_state's
  /// `with_flags` false) and keeps them in a file beside it: that file, read
  /// by config() and load_flags() only (a pod's flags can hold 10,000 CIDRs).
  std::string flags_path;
  /// Who asked for the capture: `meshcap init`, or the CNI plugin for a
  /// container (GC and DEL find pods by it).
  struct Origin {
    std::string via = "init";  ///< "init" or "cni"
    std::string container_id, ifname, k8s_namespace, k8s_pod;
  };
  Origin origin;
  Plan plan;               ///< engines and reasons per part, IPv6, --accelerate
  /// The eBPF part, when there is one: the data path the pod is enrolled
  /// in ("node", or "pod": its own) and where.
  struct Ebpf {
    std::string host;          ///< "node" or "pod"
    std::string datapath_dir;  ///< its pins
    uint32_t index = 0;        ///< the pod's row in the data path
    uint64_t cookie = 0;       ///< the namespace's cookie (the data path's key)
  };
  std::optional<Ebpf> ebpf;
  /// The iptables part, when there is one: the save binary per family and
  /// the ISTIO_ lines right after the apply (what drift is measured against).
  struct Iptables {
    std::string ipv4_save;
    std::string ipv6_save;  ///< "" when IPv6 is not captured
    std::vector<std::string> snapshot;
    std::vector<std::string> save_binaries() const;
  };
  std::optional<Iptables> iptables;

  nlohmann::json to_json() const;
  /// Reads a record; nullopt (with a warning) for one it cannot read.
  static std::optional<PodState> from_json(const nlohmann::json& j);

  /// A path naming this pod's namespace now (the recorded path if it still
  /// names it, else one found by identity); nullopt when it is gone. A
  /// namespace made later with the same inode number is not it when the
  /// cookies tell them apart (loader::names_namespace).
  std::optional<std::string> current_netns() const;
  /// The tproxy mark and table the iptables cleanup needs.
  CaptureConfig config() const;
  /// `flags`, read from flags_path when the record was read without them.
  FlagSet load_flags() const;
};

/// The directory records live in (MESHCAP_STATE_DIR overrides /run/meshcap,
/// so tests can keep theirs apart).
std::string state_root();
/// Where the record of pod `name` lives.
std::string state_file(const std::string& name);
/// Reads the record of pod `name`. A record whose flags are long keeps them
/// in a file beside it (see write_pod_state); without `with_flags` that file
/// is only checked to exist, and left for config() / load_flags() to read.
std::optional<PodState> read_pod_state(const std::string& name, bool with_flags = true);
/// Writes atomically (a temporary file renamed into place). Flags longer
/// than a few KB go to a file of their own beside the record (written first,
/// named after its content, so the record names a whole one).
void write_pod_state(const PodState& st);
/// Removes the record and the flags file it names; true when there was a record.
bool remove_pod_state(const std::string& name);
/// Names of the pods with a record.
std::vector<std::string> recorded_pods();

}  // namespace meshcap
