// The benchmark's test bed: one throwaway pod per variant (netns + cgroup +
// veth to a peer netns, from tests/support), the servers in it, and the
// capture applied to it with the meshcap binary or iptables-restore.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <map>
#include <string>
#include <vector>

#include "support/test_pod.h"
#include "workload.h"

namespace meshcap::bench {

/// How a pod's outbound TCP is captured.
enum class Capture { none, nft, legacy, ebpf };
std::string capture_name(Capture c);

/// What listens on the pod's outbound capture port 15001.
enum class Sidecar {
  none,      ///< nothing (direct pods: a plain echo server there, for local-direct)
  haproxy,   ///< haproxy as UID 1337, recovering SO_ORIGINAL_DST
  explicit_proxy,  ///< haproxy with extra listeners the client dials itself
  echo,      ///< mechanism only: a plain echo server that recovers nothing
  bare,      ///< no servers at all (init-time measurements)
};

/// Ports and addresses every pod uses.
inline constexpr uint16_t kEchoPort = 8080;     ///< upstream echo in the peer
inline constexpr uint16_t kSinkPort = 8081;     ///< upstream sink in the peer
inline constexpr uint16_t kOutboundPort = 15001;
inline constexpr uint16_t kExplicitEchoPort = 15080;  ///< explicit proxy -> peer:8080
inline constexpr uint16_t kExplicitSinkPort = 15081;  ///< explicit proxy -> peer:8081

/// CPUs of the data path (client, servers, proxy) and of the controller.
struct CpuPlan {
  int client = 0, server = 0, proxy = 0, controller = 0;
  std::vector<int> data_cpus() const;
};

/// A timed external command.
struct Timed {
  int exit_code = -1;
  std::string output;
  double seconds = 0;  ///< wall time from fork to reap
  bool ok() const { return exit_code == 0; }
};

/// Runs argv (argv[0] looked up in PATH and the sbin directories) with
/// `input` on stdin, inside the network namespace at netns_path when not
/// empty (setns before exec: no `ip netns exec` start-up in the timing).
/// Killed after `timeout`. Never throws for a non-zero exit.
Timed run_timed(const std::vector<std::string>& argv, const std::string& input = {},
                const std::string& netns_path = {},
                std::chrono::milliseconds timeout = std::chrono::milliseconds(120000));

/// A bare `iptables-{legacy,nft}-restore --noflush` of the IPv4 `payload`
/// (legacy: `--wait=30` too), as a process in the namespace at
/// `netns_path`: the reference of the node goals.
Timed bare_restore(bool legacy, const std::string& payload, const std::string& netns_path);

/// `n` distinct IPv4 /16 prefixes that contain neither the pods' 10.211/16
/// nor loopback (the worst case for capture: the destination matches none),
/// shortest spelling first so 10,000 of them fit one command-line argument.
std::vector<std::string> exclusion_cidrs(size_t n);
/// The prefix to add in the "add one exclusion" step (not among the above).
std::string extra_exclusion_cidr();
std::string join(const std::vector<std::string>& v, const std::string& sep);

/// istio-iptables flags of the benchmark's capture: `-i '*'` and the
/// exclusions as `-x` (none when empty).
std::vector<std::string> capture_flags(const std::vector<std::string>& exclusions);

/// The IPv4 iptables-restore payload istio-iptables would apply for
/// capture_flags(exclusions) (meshcap's own istio-identical rendering).
std::string istio_payload(const std::vector<std::string>& exclusions);
/// The same for any istio-iptables flags; `ipv6`: the ip6tables payload (as
/// for a pod with a global IPv6 address).
std::string istio_payload_for(const std::vector<std::string>& flags, bool ipv6 = false);
/// istio-init's arguments for a sidecar pod (the injector's defaults, which
/// istio-cni applies too): what the node and CNI phases enrol and restore.
const std::vector<std::string>& istio_sidecar_flags();

/// Settings shared by every rig.
struct RigOptions {
  std::string meshcap_bin;
  CpuPlan cpus;
  /// Use `meshcap init --mode iptables --force-iptables-binary` for the
  /// iptables variants (when it works) instead of iptables-restore.
  bool meshcap_iptables = false;
  double server_lifetime_s = 7200;  ///< upper bound on any server's life
  /// The cgroup v2 directory the pod's cgroup is made in ("" = the root):
  /// a test node's, for pods under a node data path.
  std::string cgroup_parent;
  /// eBPF capture by enrolling in the running node data path (`meshcap
  /// init` without --cgroup) instead of a data path of the pod's own.
  bool node = false;
};

/// BPF programs of a data path: name -> (run count, run time in ns) as the
/// kernel counts them while BPF statistics are enabled.
using ProgramStats = std::map<std::string, std::pair<uint64_t, uint64_t>>;
/// The programs of the data path pinned at `dir` (its cgroup links and the
/// sk_msg program of its accelerated-socket map).
ProgramStats program_stats(const std::string& dir);

/// One pod with its servers and capture.
class Rig {
 public:
  Rig(std::string label, Capture capture, Sidecar sidecar, const RigOptions& options);
  ~Rig();
  Rig(const Rig&) = delete;
  Rig& operator=(const Rig&) = delete;

  const std::string& label() const { return label_; }
  Capture capture() const { return capture_; }
  Sidecar sidecar() const { return sidecar_; }
  test::TestPod& pod() { return *pod_; }
  /// meshcap's name for this pod's capture.
  const std::string& name() const { return name_; }
  const std::string& peer_ip() const { return pod_->peer_ipv4(); }
  /// Processes whose CPU time a run through this pod is charged with.
  std::vector<pid_t> server_pids() const;

  /// Applies (or replaces) the capture with these exclusions; returns the
  /// command's wall time. Throws std::runtime_error on failure.
  double apply(const std::vector<std::string>& exclusions);
  /// The same with any istio-iptables flags.
  double apply_flags(const std::vector<std::string>& flags, size_t exclusions = 0);
  /// Diagnostic (eBPF only): after each apply, detach every program except
  /// connect4/connect6 by unlinking their link pins, to show what the
  /// connect hook alone costs. The capture then no longer answers
  /// SO_ORIGINAL_DST: only for the mechanism-only view.
  void set_connect_only(bool on) { connect_only_ = on; }
  /// eBPF only: apply with `meshcap init --accelerate` (sk_msg between the
  /// application's and the proxy's sockets).
  void set_accelerate(bool on) { accelerate_ = on; }
  /// Removes the capture; returns the wall time. No-op for Capture::none.
  double remove();
  size_t applied_exclusions() const { return applied_; }
  /// The capture's BPF programs (eBPF only; see program_stats()).
  ProgramStats program_stats() const;

  /// Runs the load client in the pod (its cgroup, as UID/GID 1000), pinned
  /// to the client CPU; returns its result (errors noted in the result).
  /// With spec.cgroup set, the client runs as root and moves itself into
  /// that cgroup first.
  ClientResult run_client(ClientSpec spec);
  /// Sends the probe (see workload.h) from the pod as UID 1000: "TAG
  /// PEER-SEEN-BY-SERVER LOCAL", or "error ...".
  std::string probe(const std::string& ip, uint16_t port);

 private:
  void start_servers();
  pid_t start_server(bool in_pod, std::vector<ListenSpec> listeners, int cpu);

  std::string label_;
  Capture capture_;
  Sidecar sidecar_;
  RigOptions options_;
  std::unique_ptr<test::TestPod> pod_;
  std::string name_;
  std::vector<pid_t> servers_;
  bool captured_ = false;
  bool connect_only_ = false;
  bool accelerate_ = false;
  size_t applied_ = 0;
};

/// True when `meshcap init --mode iptables` works in this build (checked
/// with a dry run against a throwaway pod).
bool meshcap_has_iptables_mode(const std::string& meshcap_bin, test::TestPod& pod);

}  // namespace meshcap::bench
