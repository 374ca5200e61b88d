// A data path: meshcap's programs loaded once, attached to one cgroup v2
// directory with bpf_links, and pinned, so that every pod below that cgroup
// whose network namespace is enrolled (enrollment.h) is captured. The node
// data path (meshcap node start) serves every pod of a node; a per-pod
// capture is the same data path attached to one pod's cgroup with that one
// pod enrolled.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "errors.h"
#include "pins.h"

struct meshcap_bpf;
struct bpf_link;

namespace meshcap::loader {

/// How a data path is loaded: its sizes and the optional programs and
/// kernel features it uses.
struct DataPathSpec {
  uint32_t max_pods = 0;         ///< 0: the default (256)
  uint32_t max_connections = 0;  ///< 0: the default (16384)
  bool inbound = true;           ///< sk_lookup loaded (pods may capture inbound)
  bool accelerate = false;       ///< sk_msg loaded (pods may ask --accelerate)
  bool key_netns = false;        ///< the connection table is keyed by netns cookie too
  bool ingress_ifindex = false;  ///< sk_lookup reads the arrival interface (-c, -k)
  bool dns = false;              ///< sendmsg/recvmsg loaded (pods may capture DNS, --redirect-dns)
  /// CIDR rows beyond MC_CIDRS_PER_POD per pod in each family's table (a
  /// pod's own data path takes its whole -x/-i lists; the tables are not
  /// preallocated).
  uint32_t extra_cidrs = 0;
  uint32_t pods() const;
  uint32_t connections() const;
  nlohmann::json to_json() const;
  bool operator==(const DataPathSpec&) const = default;
};

/// The most pods a data path takes (the listeners socket map is sized for
/// this many whatever --max-pods is, so it survives a resize).
uint32_t max_pods_limit();

/// The programs attached to the data path's cgroup, in attach order: pin
/// name, program name, and whether only a data path with DNS capture has it.
struct ProgramSpec {
  const char* pin;
  const char* program;
  bool dns = false;
};
const std::vector<ProgramSpec>& cgroup_programs();

/// The most UIDs (-u) or GIDs (-g) a pod's settings take.
size_t max_proxy_ids();

/// Counter names in enum mc_counter order.
const std::vector<std::string>& counter_names();
/// The counters of one pod (or the node's row), by name.
using Counters = std::map<std::string, uint64_t>;

/// A data path being set up: DataPath(spec), load(), attach(cgroup),
/// pin(dir) -- or take_over(dir) to replace a pinned data path's programs in
/// place. Until pin()/take_over() succeed, destroying the object detaches
/// everything it attached.
class DataPath {
 public:
  /// Opens the skeleton with the spec's sizes and settings (no kernel
  /// objects yet).
  explicit DataPath(const DataPathSpec& spec);
  ~DataPath();
  DataPath(const DataPath&) = delete;
  DataPath& operator=(const DataPath&) = delete;

  /// Loads the programs. `reuse_dir`: a pinned data path whose maps are
  /// taken over where their shape allows (the others are created new and
  /// filled by take_over). A refused load throws LoaderError naming the
  /// part it cannot do (inbound when everything loads without sk_lookup).
  void load(const std::string& reuse_dir = "");
  /// Attaches the cgroup programs (and sk_msg to its socket map), all or
  /// nothing.
  void attach(const std::string& cgroup_dir);
  /// Pins links, maps and programs under `dir`, all or nothing: in a
  /// staging directory that is then renamed into place. `dir` must not
  /// exist (remove_tree() the one being replaced first, after the new one
  /// holds the pods).
  void pin(const std::string& dir);
  /// Replaces the programs of the data path pinned at `dir` in place: maps
  /// not reused by load() get the old maps' entries, every pinned link
  /// (the cgroup links and each enrolled pod's sk_lookup link) is updated
  /// to the new program with BPF_LINK_UPDATE, and the pins are replaced.
  /// No moment without capture: the old programs run until each link
  /// switches, on the same (or copied) settings. A cgroup program the old
  /// data path did not have (DNS capture, added later) is attached to
  /// `cgroup_dir` and pinned; one the new spec leaves out is detached.
  void take_over(const std::string& dir, const std::string& cgroup_dir);
  /// Whether take_over() has begun changing the pinned data path (its
  /// links or pins). A take_over that throws before then -- the old maps'
  /// entries do not fit the new maps -- leaves the running data path as it
  /// was.
  bool changed_pinned() const { return changed_pinned_; }

  const DataPathSpec& spec() const { return spec_; }
  /// The fd of one of the loaded programs or maps (by name); -1 when none.
  int program_fd(const std::string& name) const;
  int map_fd(const std::string& name) const;

 private:
  struct Deleter {
    void operator()(meshcap_bpf* s) const;
  };
  std::unique_ptr<meshcap_bpf, Deleter> skel_;
  std::vector<::bpf_link*> links_;
  std::vector<std::string> link_pins_;
  std::vector<std::string> reused_;  // maps taken over from reuse_dir
  std::string reuse_dir_;
  DataPathSpec spec_;
  bool changed_pinned_ = false;
  void detach_all();
};

/// The spec of a pinned data path, read from its pins (its read-only data,
/// its maps' sizes, which programs are pinned); nullopt when none is there.
std::optional<DataPathSpec> pinned_spec(const std::string& dir);
/// The most that loads here, starting from `want` and dropping, in this
/// order, what the kernel refuses: the arrival interface in sk_lookup, the
/// netns cookie in the connection key, sk_msg, DNS capture, sk_lookup. `dropped` says
/// what went and why. Throws LoaderError when even the cgroup programs do
/// not load.
DataPathSpec loadable_spec(DataPathSpec want, std::vector<std::string>* dropped);

/// The counters of pod row `index` (mc_node.max_pods: the node's) of the
/// data path pinned at `dir`.
Counters pinned_counters(const std::string& dir, uint32_t index);
/// Entries in one of a pinned data path's maps ("orig_dst", "pods", ...);
/// 0 when it is not pinned.
size_t pinned_entries(const std::string& dir, const std::string& map);
/// Kernel memory (memlock, as bpftool shows it) of a pinned data path's
/// maps, in bytes.
uint64_t pinned_memlock(const std::string& dir);

/// The pod's own data path of pod `name` (ROOT/pods/NAME), for tools and
/// tests: what is pinned, its counters (the pod is row 0), its connection
/// table and accelerated sockets, and removing it.
struct PinnedState {
  bool present = false;
  std::vector<std::string> links;  ///< pin file names
  std::vector<std::string> maps;
};
PinnedState pinned_state(const std::string& name);
Counters pinned_counters(const std::string& name);
size_t pinned_connection_entries(const std::string& name);
size_t pinned_accelerated_sockets(const std::string& name);
bool remove_pins(const std::string& name);

}  // namespace meshcap::loader
