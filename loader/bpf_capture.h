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

struct meshcap_bpf;
struct bpf_link;

namespace meshcap::loader {

/// A load, attach or pin failure: which step, and the errno it failed with.
class LoaderError : public std::runtime_error {
 public:
  LoaderError(std::string step, int err, const std::string& detail = "");
  const std::string& step() const { return step_; }
  int error() const { return err_; }

 private:
  std::string step_;
  int err_;
};

/// A test hook: when MESHCAP_FAULT_AT names `step` ("STEP" or "STEP:kill"),
/// throws a LoaderError there (or SIGKILLs the process). Steps: "loaded",
/// "attached", "pin-link", "pinned", "enabled", "iptables", "state".
void fault_point(const std::string& step);

/// An address of the pod, as 4 or 16 network-order bytes.
struct PodAddress {
  int family = 0;  // AF_INET or AF_INET6
  std::array<uint8_t, 16> addr{};
  std::string str() const;
};

/// What the outbound decision needs to know about the pod's network
/// namespace: its own addresses (destinations routed over lo) and the source
/// address a connection to a remote destination would get.
struct PodNetwork {
  std::vector<PodAddress> addresses;
  std::optional<PodAddress> source4;
  std::optional<PodAddress> source6;
  std::map<std::string, uint32_t> interfaces;  // name -> ifindex
  /// The main routing table: prefix and the interface it leaves through.
  struct Route {
    PodAddress prefix;
    uint8_t prefix_len = 0;
    std::string interface;
  };
  std::vector<Route> routes;
};

/// Reads the addresses of the network namespace at `netns_path` (entering it
/// on a helper thread; the caller's namespace is unchanged).
PodNetwork read_pod_network(const std::string& netns_path);

/// The counters of one pod, by name (see bpf/meshcap.h enum mc_counter).
using Counters = std::map<std::string, uint64_t>;
/// Counter names in enum mc_counter order.
const std::vector<std::string>& counter_names();

/// Reasons the eBPF path cannot honour a configuration's outbound part
/// (flags it does not implement, unresolvable user or group names, lists
/// too long). Empty when it can. Never throws.
std::vector<std::string> ebpf_unsupported_outbound(const CaptureConfig& cfg);
/// The same for the inbound part (sk_lookup).
std::vector<std::string> ebpf_unsupported_inbound(const CaptureConfig& cfg);
/// Both of the above.
std::vector<std::string> ebpf_unsupported(const CaptureConfig& cfg);
/// Whether IPv6 is captured, as istio decides it: --dual-stack, or the pod
/// has a global IPv6 address.
bool ipv6_enabled(const CaptureConfig& cfg, const PodNetwork& pod);
/// True when the configuration asks for inbound capture (-b or -k).
bool wants_inbound(const CaptureConfig& cfg);
/// True when the running kernel has sk_lookup programs (probed, not guessed
/// from the version).
bool kernel_has_sk_lookup();
/// Interfaces named by -c / -k that the pod does not have.
std::vector<std::string> missing_interfaces(const CaptureConfig& cfg, const PodNetwork& pod);

/// The directory where a pod's pins live: /sys/fs/bpf/meshcap/NAME.
std::string pin_dir(const std::string& name);
/// Checks a pod name: 1-64 of [A-Za-z0-9_-].
/// Throws UsageError naming it otherwise.
void validate_pod_name(const std::string& name);
/// Mounts the BPF filesystem at /sys/fs/bpf when it is not mounted there.
void ensure_bpffs();

/// One pod's BPF capture being set up. Typical use: configure(), load(),
/// attach(cgroup), pin(name). Until pin() succeeds, destroying the object
/// detaches everything it attached.
class BpfCapture {
 public:
  BpfCapture();  // opens the skeleton (no kernel objects yet)
  ~BpfCapture();
  BpfCapture(const BpfCapture&) = delete;
  BpfCapture& operator=(const BpfCapture&) = delete;

  /// Sets read-only data and remembers map contents. Throws UsageError when
  /// the config is not supported by the eBPF path (see ebpf_unsupported).
  void configure(const CaptureConfig& cfg, const PodNetwork& pod);
  /// Loads the programs and fills the maps.
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
  CaptureConfig cfg_;
  PodNetwork pod_;
  bool configured_ = false;
  void detach_all();
};

/// What is pinned for a pod.
struct PinnedState {
  bool present = false;
  std::vector<std::string> links;  // pin file names
  std::vector<std::string> maps;
};
PinnedState pinned_state(const std::string& name);
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
