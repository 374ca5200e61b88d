// Where a pod's eBPF capture runs: the node data path when one is running
// (its pods are enrolled by network namespace), a per-pod data path on the
// pod's own cgroup when the caller names one, or nowhere -- and what the
// chosen place can do, for the planner.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "datapath.h"
#include "enrollment.h"
#include "pins.h"
#include "kernel_features.h"
#include "target.h"

namespace meshcap {

/// The node data path's record (STATE/node.json), written by `node start`.
struct NodeRecord {
  std::string cgroup;               ///< the cgroup v2 directory it is attached to
  loader::DataPathSpec spec;        ///< what was loaded
  std::vector<std::string> dropped; ///< what the kernel refused, and why
  std::string started;              ///< when (UTC)
  nlohmann::json to_json() const;
  static std::optional<NodeRecord> read();
  void write() const;
  static void remove();
};

/// Marks (or unmarks) a node data path upgrade under way: a node start
/// killed half-way leaves the mark, and enrolments are refused until a new
/// node start finishes the upgrade.
void mark_upgrade(bool on);
/// True when an upgrade was started by a process that is gone.
bool upgrade_interrupted();
/// The node data path as one request sees it: its record and pinned
/// links, read once (a CNI ADD asks whether it is ready, then plans).
struct NodeView {
  std::optional<NodeRecord> record;
  std::vector<loader::PinnedLink> links;
  /// Read now; or, in a process that keeps the node open
  /// (keep_node_open), what it kept when the record is the one it read and
  /// every link it holds is still attached.
  static NodeView read();
  /// Recorded, and every cgroup link pinned and attached.
  bool up() const;
  /// Configured here (record or pins) but not whole, or an upgrade
  /// interrupted.
  bool not_ready() const;
};
/// True when a node data path is configured here (its record or pins)
/// but not whole: links missing or detached, or an upgrade interrupted.
/// Pods must wait then rather than fall back (the CNI plugin's "try again
/// later").
bool node_not_ready();

/// From now on this process (the node agent, which answers a request per
/// pod) keeps what it read of the node data path between requests: the
/// record, the links (held open; each request asks each one whether it is
/// still attached), what its programs were loaded with, and its pod tables
/// open. All of it is read again when the record changes -- every `node
/// start`, an upgrade in place included, rewrites it under the node lock,
/// and `node stop` removes it -- or a link it holds is detached.
void keep_node_open();
/// Lets go of what keep_node_open kept once the record changed, so that a
/// stopped node's maps are not held alive by this process (the agent
/// calls it when idle).
void forget_changed_node();
/// What the node data path pinned at `dir` was loaded with
/// (loader::pinned_spec), kept as NodeView::read keeps the node.
std::optional<loader::DataPathSpec> node_pinned_spec(const std::string& dir);

struct EbpfHost {
  enum class Kind { None, Node, Pod } kind = Kind::None;
  std::string why_none;      ///< Kind::None: why not
  std::string datapath_dir;  ///< pins of the data path the pod is (to be) in
  std::string cgroup_dir;    ///< the cgroup it is attached to
  std::optional<loader::DataPathSpec> node_spec;  ///< Kind::Node: what it loaded
};

/// Processes in the network namespace `netns_ino`, this one aside, whose
/// cgroup is not `cgroup_dir` or below it: programs attached there never
/// see their sockets. Each as "PID in cgroup PATH".
std::vector<std::string> processes_outside(uint64_t netns_ino, const std::string& cgroup_dir);
/// From now on, this process finds the processes in a namespace with a BPF
/// task iterator loaded here once (loader/process_netns.h) instead of a
/// walk of /proc: the node agent, which answers many `meshcap init`s.
/// False, with the reason in `why`, when the kernel refuses it (the walk
/// stays).
bool read_namespaces_with_bpf(std::string& why);

/// The host for `t`: the node data path when it is running (attached and
/// recorded) and holds the pod -- its cgroup when `t` names one, and with
/// `check_processes` every process already in the pod's namespace -- else
/// the pod's cgroup when given, else none (with the reason).
/// `node`: the node as the caller already read it (else read here).
EbpfHost find_ebpf_host(const PodTarget& t, const std::optional<NodeView>& node = std::nullopt,
                        bool check_processes = false);

/// The kernel as the planner must see it for `host`: for the node data
/// path, its program rows are what it loaded (nothing is loaded per pod);
/// for a pod's own data path about to be loaded (`loading`), the program
/// rows are left to that load, which is the probe: a program the kernel
/// refuses moves its part to iptables before anything is attached
/// (Plan::fall_back_to_iptables). Otherwise (probe, dry run) the programs
/// are loaded and discarded. Privileges and the rest are always probed.
std::unique_ptr<loader::KernelFeatures> kernel_for(const EbpfHost& host, bool loading);

/// The pod tables of the data path pinned at `dir` (loader::PodTable), the
/// ones kept open when it is the node's and this process keeps the node
/// (keep_node_open). The caller holds NodeLock: a node start, which
/// replaces the tables, cannot run meanwhile.
std::shared_ptr<loader::PodTable> pod_table(const std::string& dir);

/// An exclusive lock on the node data path (enrolments, start, stop): held
/// until destroyed. Across processes (flock on STATE/node.lock).
class NodeLock {
 public:
  NodeLock();
  ~NodeLock();
  NodeLock(const NodeLock&) = delete;
  NodeLock& operator=(const NodeLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace meshcap
