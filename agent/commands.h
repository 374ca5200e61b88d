// The meshcap subcommands: init, cleanup, status, probe. Each validates
// everything it is given before it touches anything.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "host.h"
#include "istio_flags.h"

namespace meshcap {

constexpr int kExitOk = 0;
constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;
constexpr int kExitValidation = 126;

struct InitOptions {
  std::string mode = "auto";
  std::string name, cgroup, netns;
  bool dry_run = false;
  bool accelerate = false;  // sk_msg between app and proxy sockets (eBPF outbound)
  IstioFlagValues istio;
  /// istio's environment variables: the process's own when empty (the node
  /// agent passes those of the `meshcap init` it answers for).
  EnvLookup env;
  /// The node as the caller already read it for this command (the agent
  /// does, to decide it can answer); else read when planning.
  std::optional<NodeView> node;
};

struct CleanupOptions {
  std::string name, cgroup, netns;
  bool all_stale = false;
};

struct StatusOptions {
  std::string name;
  bool json = false;
  bool prometheus = false;
};

struct ProbeOptions {
  bool json = false;
  std::string netns;  ///< plan for the pod with this network namespace (default: the caller's)
  IstioFlagValues istio;
};

struct NodeStartOptions {
  std::string cgroup;           ///< default: the orchestrator's pods cgroup, else the hierarchy's root
  uint32_t max_pods = 0;        ///< 0: the default
  uint32_t max_connections = 0; ///< 0: the default
  bool accelerate = false;      ///< load sk_msg, so pods may ask --accelerate
  bool no_dns = false;          ///< leave DNS capture's sendmsg/recvmsg programs out
};

struct NodeServeOptions {
  NodeStartOptions start;
  std::string metrics_listen;  ///< HOST:PORT for GET /metrics and /healthz ("" none)
  std::string cni_conf_dir, cni_bin_dir;  ///< keep meshcap-cni installed there
  std::string cni_binary;      ///< default: the meshcap-cni shipped beside meshcap
  std::string cni_plugin_config;    ///< JSON file: the plugin entry's keys
  /// Called once the node data path is up (or the node is iptables only),
  /// before serving; the meshcap command starts meshcap-cni's agent socket
  /// here (cni/cni_socket.h), a layer above this library.
  std::function<void()> on_serving;
};

struct NodeStopOptions {
  bool move_to_iptables = false;  ///< move enrolled pods to iptables first (else refuse while any is enrolled)
};

/// Loads the node data path once and attaches it (or replaces a running
/// one's programs in place, taking its pods along).
int run_node_start(const NodeStartOptions& o);
/// node start, then keeps meshcap-cni installed and serves metrics until
/// SIGTERM, leaving everything in place when it stops.
int run_node_serve(const NodeServeOptions& o);
/// Removes the node data path; refuses while pods are enrolled unless
/// they are moved to iptables first.
int run_node_stop(const NodeStopOptions& o);
/// Programs, sizes, pods enrolled, map use and counters per pod.
int run_node_status(const StatusOptions& o);

/// Validates everything, plans per direction, applies all or nothing,
/// validates when asked, records what it did. Returns the exit code; throws
/// UsageError (exit 2) or another exception (exit 1) with nothing applied.
int run_init(InitOptions& o);
/// Removes what meshcap installed for a pod (or every stale pod).
int run_cleanup(const CleanupOptions& o);
/// Prints each pod's capture.
int run_status(const StatusOptions& o);
/// Prints the kernel's features, the privileges, and the plan for the flags.
int run_probe(const ProbeOptions& o);

}  // namespace meshcap
