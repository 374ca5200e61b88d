// The eBPF capture of one pod: owns the libbpf skeleton, turns a validated
// CaptureConfig into read-only data and map contents, loads, attaches to the
// pod's cgroup with bpf_links, pins under /sys/fs/bpf/meshcap/NAME/ so capture
// outlives the process, reads counters, and removes everything again.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "capture_config.h"
#include "plan.h"
#include "pod_network.h"

struct meshcap_bpf;
struct bpf_link;

namespace meshcap::loader {

/// A load, attach or pin failure: which step, the errno, and the part of
/// the capture that cannot be done (Part::Outbound when it is all of it: the
/// cgroup programs; Part::Inbound when only sk_lookup or listener adoption
/// failed, so outbound can stay on eBPF).
class LoaderError : public std::runtime_error {
 public:
  LoaderError(std::string step, int err, const std::string& detail = "", Part part = Part::Outbound);
  const std::string& step() const { return step_; }
  int error() const { return err_; }
  Part part() const { return part_; }

 private:
  std::string step_;
  int err_;
  Part part_;
};

/// A test hook: when MESHCAP_FAULT_AT names `step` ("STEP" or "STEP:kill"),
/// throws a LoaderError there (or SIGKILLs the process). eBPF steps and the
/// part they take with them: "load" (all: the kernel refuses the programs),
/// "load-sk_lookup" (inbound: the kernel refuses only sk_lookup), "attach"
/// (all), "sk_lookup" (inbound: attaching to the netns), "adopt" (inbound:
/// taking the running proxy's listener), "pin-link", "pinned", "enabled"
/// (all); then "iptables" and "state" in the agent.
void fault_point(const std::string& step, Part part = Part::Outbound);

/// The counters of one pod, by name (see bpf/meshcap.h enum mc_counter).
using Counters = std::map<std::string, uint64_t>;
/// Counter names in enum mc_counter order.
const std::vector<std::string>& counter_names();

/// The most UIDs (-u) or GIDs (-g) the programs take.
size_t max_proxy_ids();

/// The directory where a pod's pins live: /sys/fs/bpf/meshcap/NAME.
std::string pin_dir(const std::string& name);
/// Checks a pod name: 1-64 of [A-Za-z0-9_-].
/// Throws UsageError naming it otherwise.
void validate_pod_name(const std::string& name);
/// Mounts the BPF filesystem at /sys/fs/bpf when it is not mounted there.
void ensure_bpffs();

/// What one pod's eBPF capture carries out, decided by the planner: the
/// eBPF part of the configuration (Plan::ebpf_config), the pod's network,
/// and whether sk_lookup captures inbound. Nothing here is checked again.
struct EbpfSpec {
  CaptureConfig cfg;
  PodNetwork pod;
  bool inbound = false;
  bool ipv6 = false;
};

/// The programs of a capture, in attach order: pin name, program name.
struct ProgramSpec {
  const char* pin;
  const char* program;
};
/// The cgroup programs every eBPF capture attaches (sk_lookup and sk_msg
/// come on top for inbound and --accelerate).
const std::vector<ProgramSpec>& cgroup_programs();

/// One pod's BPF capture being set up: BpfCapture(spec), load(),
/// attach(cgroup, netns), adopt_listeners(netns), pin(name). Until pin()
/// succeeds, destroying the object detaches everything it attached.
class BpfCapture {
 public:
  /// Opens the skeleton and sets its read-only data (no kernel objects yet).
  explicit BpfCapture(const EbpfSpec& spec);
  ~BpfCapture();
  BpfCapture(const BpfCapture&) = delete;
  BpfCapture& operator=(const BpfCapture&) = delete;

  /// Loads the programs and fills the maps. When the kernel refuses the
  /// load, the LoaderError names the part it cannot do (inbound when the
  /// programs load without sk_lookup).
  void load();
  /// Attaches every program to the cgroup v2 directory, and sk_lookup (when
  /// inbound capture is asked for) to the network namespace; all or nothing.
  void attach(const std::string& cgroup_dir, const std::string& netns_path);
  /// Puts the proxy's listeners into the listener map when the proxy is
  /// already listening in the pod (processes started later are caught by
  /// sockops when they listen). Returns how many were adopted.
  int adopt_listeners(const std::string& netns_path);
  /// Pins links and maps under pin_dir(name), all or nothing: they are
  /// pinned in a temporary directory that is then renamed into place. An
  /// existing pin directory of the same name is replaced after the new one
  /// is attached (no moment without capture).
  void pin(const std::string& name);
  /// Counters summed over CPUs.
  Counters counters() const;
  /// The number of entries in the connection table (orig_dst).
  size_t connection_entries() const;

 private:
  struct Deleter {
    void operator()(meshcap_bpf* s) const;
  };
  std::unique_ptr<meshcap_bpf, Deleter> skel_;
  std::vector<::bpf_link*> links_;
  std::vector<std::string> link_pins_;  // pin file name of each link
  EbpfSpec spec_;
  void detach_all();
};

/// What is pinned for a pod.
struct PinnedState {
  bool present = false;
  std::vector<std::string> links;  // pin file names
  std::vector<std::string> maps;
};
PinnedState pinned_state(const std::string& name);
/// A pinned link and whether it is still attached (its cgroup or network
/// namespace exists and nobody detached it).
struct PinnedLink {
  std::string pin;  ///< "link_connect4", ...
  bool attached = false;
  uint32_t prog_id = 0;
  uint64_t netns_ino = 0;  ///< for a netns link: the namespace it is attached to
};
std::vector<PinnedLink> pinned_links(const std::string& name);
/// Whether a pinned capture was switched on (its control map says so).
bool pinned_enabled(const std::string& name);
/// Counters of a pinned pod (reads the pinned counters map).
Counters pinned_counters(const std::string& name);
/// Entries in a pinned pod's connection table.
size_t pinned_connection_entries(const std::string& name);
/// Sockets in a pinned pod's accelerated set (--accelerate); 0 without.
size_t pinned_accelerated_sockets(const std::string& name);
/// Detaches and unpins everything of pod `name`; returns false when there
/// was nothing. Safe to call twice. Connections accelerated by the pod stay
/// accelerated until they close: each socket in accel_socks holds the sk_msg
/// program, which holds the map; the kernel frees both with the last one.
bool remove_pins(const std::string& name);
/// Names of pods with pins.
std::vector<std::string> pinned_pods();

}  // namespace meshcap::loader
