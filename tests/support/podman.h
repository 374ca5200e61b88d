// A real container runtime for e2e tests: podman 4.3 with runc and the CNI
// reference plugins, creating pods on a throwaway "node" exactly as a
// Kubernetes node's runtime would (CNI ADD/DEL with CNI_NETNS, CNI_ARGS
// K8S_POD_NAME, a conflist's prevResult chain), without touching the
// machine's own network namespace, mounts or podman configuration.
//
//   node netns mcpnode-S (podman runs here: bridges, veths, CNI plugins)
//     mcbr<k> 10.213.k.1/24  <- pods of network k (bridge + host-local)
//     vout 10.214.0.1/24, ip_forward=1
//        |
//   outside netns mcpout-S: vnode 10.214.0.2/24, route 10.213.0.0/16 via
//     the node (the test's upstream servers and inbound clients live here)
//
// - podman runs as `nsenter --mount=<private mount ns> --net=<node netns>
//   podman --root T/root --runroot T/runroot` with CONTAINERS_CONF=T/containers.conf
//   (runc, cgroupfs, CNI backend, no default ulimits, file locks and event
//   log, tmp dirs in T), T = /tmp/mcpodman-S.
// - The private mount namespace is held by a child process: every mount
//   podman, runc and conmon make (overlays, shm) stays in it and vanishes
//   with it; it sees /var/lib through an overlay whose upper dir is in T
//   (podman's blob cache, libcni's result cache) and a tmpfs on /run/runc.
//   /run/netns stays shared with the machine, so pod namespaces
//   (/run/netns/netns-UUID) are usable from the test.
// - Pods' cgroups are made under options.cgroup_parent (a TestNode's) or
//   the node's own <cgroup2>/mcpodman-S, never the root; podman (cgroup v1
//   mode on a hybrid layout) also makes that path in every v1 hierarchy,
//   and conmon sits in the v1 ones: they are removed too.
// - Containers run on an overlay of the machine's own root (`--rootfs /:O`):
//   haproxy (UID/GID 1337, FIELD-NOTES' config) and the app, this test
//   binary in app mode (podman_app_main; UID/GID 1000).
//
// Everything is removed by the destructor, on fatal signals and at exit
// (cleanup.h, plus the deep removal of T), and what a SIGKILLed owner left
// by the next PodmanNode (reap_stale()). Needs root, podman, runc, nsenter.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "support/common.h"

namespace meshcap::test {

/// argv[1] that makes a test binary run podman_app_main instead of tests.
inline constexpr const char* kPodmanAppFlag = "--meshcap-podman-app";

/// The app containers' program (a test binary's main calls it when argv[1]
/// is kPodmanAppFlag):
///   serve PORT               accepts on 0.0.0.0:PORT; to each connection,
///                            after reading one line, replies
///                            "peer=<getpeername> local=<getsockname>\n"
///   connect IP PORT [N]      N (1) connections one after another: each
///                            sends "ping\n" and reads one line; prints
///                            "ok local=L peer=P reply=R" or "fail step=S
///                            error=E" per connection, then "summary ok=N failed=M"
///   load IP PORT MS          the same in a loop for MS milliseconds; prints
///                            only failures and the summary
/// Exit code 0 when every connection succeeded, 1 otherwise, 2 on bad usage.
int podman_app_main(int argc, char** argv);

/// What a program printed and how it exited, stdout and stderr apart.
struct ExecResult {
  int exit_code = -1;  ///< exit status, 128+signal, or -1 when killed at the timeout
  std::string out, err;
};

/// Runs argv[0] (a path) with exactly `env` as its environment and
/// `input` on its stdin, as a CNI runtime runs a plugin; kills it after
/// `timeout`.
ExecResult exec_with_input(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                           const std::string& input,
                           std::chrono::milliseconds timeout = std::chrono::milliseconds(30000));

/// One CNI network of the node: its own bridge and /24 in the node netns.
struct PodmanNetwork {
  std::string name;  ///< the network's (and conflist's) name
  /// Plugins chained after bridge (+ host-local) and loopback, each a JSON
  /// object as text, e.g. R"({"type": "meshcap-cni", "mode": "ebpf"})".
  std::vector<std::string> chained;
  // Filled in by PodmanNode::add_network:
  std::string bridge;   ///< "mcbr<k>"
  std::string subnet;   ///< "10.213.<k>.0/24"
  std::string gateway;  ///< "10.213.<k>.1" (the bridge's address)
  std::string conflist_path;
};

struct PodmanNodeOptions {
  /// Absolute cgroup v2 directory the pods' cgroups are made in (a
  /// TestNode's cgroup_path()). Empty: the node's own <cgroup2>/mcpodman-S.
  std::string cgroup_parent;
  /// "K=V" added to the environment of podman, of the CNI plugins it runs
  /// and of conmon and the cleanup commands it starts (a TestNode's env()).
  std::vector<std::string> env;
  /// Directories searched for CNI plugins before /usr/lib/cni.
  std::vector<std::string> plugin_dirs;
  /// The default network's chained plugins (see PodmanNetwork::chained).
  std::vector<std::string> chained;
  /// The app program: default this binary (/proc/self/exe), run with
  /// kPodmanAppFlag first.
  std::string app_binary;
};

struct PodmanPodSpec {
  std::string name;     ///< "" = "p<node suffix>-<n>"
  std::string network;  ///< "" = the default network ("mcnet")
  bool proxy = true;    ///< a haproxy sidecar as UID/GID 1337
  bool app = true;      ///< the app container (UID/GID 1000) serving app_port
  uint16_t app_port = 8080;
};

struct PodmanPod {
  std::string name;             ///< the pod's name (CNI_ARGS K8S_POD_NAME)
  std::string id;               ///< the pod's id
  std::string infra_id;         ///< the infra container's id (CNI_CONTAINERID)
  std::string app_container;    ///< "<name>-app" ("" without an app)
  std::string proxy_container;  ///< "<name>-proxy" ("" without a proxy)
  std::string network;
  std::string ipv4;             ///< the pod's address on its bridge
  std::string netns_path;       ///< /run/netns/netns-UUID (CNI_NETNS)
  std::string cgroup_path;      ///< absolute v2 directory of the pod
  /// In the node's pid namespace; proxy_pid is haproxy's (the proxy
  /// container's PID 1 is catatonit, podman's --init).
  pid_t infra_pid = -1, app_pid = -1, proxy_pid = -1;
};

/// What a run of the app's client said.
struct AppRun {
  CommandResult command;  ///< the podman exec
  int ok = 0, failed = 0;
  std::vector<std::string> lines;  ///< its "ok ..." / "fail ..." lines
  /// The first "ok" line's fields.
  std::string local, peer, reply;
  bool all_ok() const { return command.ok() && failed == 0 && ok > 0; }
};

struct PodRemoval {
  CommandResult command;                     ///< podman pod rm
  std::vector<std::string> empty_cgroups;    ///< left by podman, removed here
  std::vector<std::string> busy_cgroups;     ///< still had processes (killed)
};

class PodmanNode {
 public:
  using Millis = std::chrono::milliseconds;

  PodmanNode();
  explicit PodmanNode(PodmanNodeOptions options);
  ~PodmanNode();
  PodmanNode(const PodmanNode&) = delete;
  PodmanNode& operator=(const PodmanNode&) = delete;

  /// Why podman pods cannot run here ("" when they can): not root, or a
  /// missing binary.
  static std::string unavailable_reason();

  // ---- names and addresses ----
  const std::string& suffix() const { return suffix_; }
  std::string node_netns_path() const { return "/run/netns/" + node_netns_; }
  std::string outside_netns_path() const { return "/run/netns/" + outside_netns_; }
  const std::string& node_ipv4() const { return node_ipv4_; }        ///< 10.214.0.1
  const std::string& outside_ipv4() const { return outside_ipv4_; }  ///< 10.214.0.2
  const std::string& dir() const { return dir_; }                    ///< T
  const std::string& cgroup_parent() const { return cgroup_parent_; }  ///< absolute v2
  /// As podman's --cgroup-parent takes it ("/mcnode-S").
  const std::string& cgroup_parent_relative() const { return cgroup_parent_rel_; }
  const std::string& containers_conf() const { return containers_conf_; }
  const std::string& haproxy_config() const { return haproxy_cfg_; }
  pid_t mount_ns_holder() const { return holder_pid_; }

  // ---- networks ----
  /// Adds a network (bridge mcbr<k>, 10.213.<k>.0/24) and writes its
  /// conflist; returns it filled in. The default one, "mcnet", exists.
  const PodmanNetwork& add_network(PodmanNetwork network);
  const PodmanNetwork& network(const std::string& name = "mcnet") const;
  /// Rewrites a network's conflist with other chained plugins (pods created
  /// afterwards use it; DEL of older pods too, as on a real node).
  void set_chained(const std::string& network, std::vector<std::string> chained);

  // ---- commands ----
  /// `podman ARGS` in the node (its netns, the private mount ns, the env).
  CommandResult podman(const std::vector<std::string>& args) const;
  /// The same; throws TestSupportError with the output when it fails.
  /// Returns the output without trailing white space.
  std::string podman_checked(const std::vector<std::string>& args) const;
  /// Any command where podman runs, with the same environment plus extra_env
  /// (e.g. `meshcap status --json`).
  CommandResult in_node(const std::vector<std::string>& argv,
                        const std::vector<std::string>& extra_env = {}) const;

  // ---- pods ----
  /// `podman pod create` (infra "<name>-infra", --cgroup-parent, --network),
  /// then the app and the proxy containers with `podman run -d --pod`
  /// (the first run starts the infra container: CNI ADD); waits until they
  /// listen. Throws TestSupportError with podman's output on failure (the
  /// node's destructor removes what was made).
  PodmanPod create_pod(PodmanPodSpec spec = {});
  /// n pods from `spec` (names get -<i>), `parallel` podman commands at a
  /// time. Throws on the first failure once all workers stopped.
  std::vector<PodmanPod> create_pods(int n, const PodmanPodSpec& spec = {}, int parallel = 3);
  /// `podman pod rm -f -t 1`; then removes the pod's cgroups that podman
  /// leaves behind (empty ones are expected; busy ones are reported).
  PodRemoval remove_pod(const PodmanPod& pod);
  /// Pod names podman lists.
  std::vector<std::string> pod_names() const;

  // ---- traffic ----
  /// The app's client (`podman exec` in the app container, as UID 1000)
  /// connecting `count` times to ip:port.
  AppRun app_connect(const PodmanPod& pod, const std::string& ip, uint16_t port, int count = 1) const;
  /// The app's client connecting in a loop for `duration`.
  AppRun app_load(const PodmanPod& pod, const std::string& ip, uint16_t port, Millis duration) const;
  /// From the outside netns (a thread): connects to ip:port, sends "hi\n",
  /// returns the first line of the reply, or "error: ..." .
  std::string ask_from_outside(const std::string& ip, uint16_t port, Millis timeout = Millis(5000)) const;
  /// The proxy container's log (haproxy logs each connection, tcplog
  /// format, with the listener's name "outbound" / "inbound").
  std::string proxy_log(const PodmanPod& pod) const;
  /// Lines of proxy_log naming a listener ("outbound", "inbound"). haproxy
  /// drops log lines when its stdout is full: under load, count with
  /// proxy_sessions.
  int proxy_log_count(const PodmanPod& pod, const std::string& listener) const;
  /// A command on the proxy's stats socket (e.g. "show info"), its answer
  /// or "error: ...".
  std::string proxy_command(const PodmanPod& pod, const std::string& command) const;
  /// Connections a listener ("outbound", "inbound") accepted since haproxy
  /// started (its frontend's stot); -1 when the stats socket does not answer.
  long proxy_sessions(const PodmanPod& pod, const std::string& listener) const;

  /// Removes what PodmanNodes of SIGKILLed processes left: their lock in
  /// /run/meshcap-testpodman is free. The constructor calls it.
  static int reap_stale();

 private:
  void build();
  void cleanup() noexcept;
  void reserve_names();
  void record(const std::string& kind, const std::string& path);
  void start_holder();
  void write_containers_conf();
  void write_conflist(const PodmanNetwork& net);
  std::vector<std::string> podman_argv(const std::vector<std::string>& args) const;
  ExecResult exec_in_node(const std::vector<std::string>& argv,
                          const std::vector<std::string>& extra_env = {}) const;
  std::vector<std::string> v1_dirs(const std::string& relative) const;
  AppRun parse_app(CommandResult r) const;

  PodmanNodeOptions options_;
  int group_ = 0;
  std::string suffix_, node_netns_, outside_netns_, dir_, lock_path_;
  std::string node_ipv4_ = "10.214.0.1", outside_ipv4_ = "10.214.0.2";
  std::string cgroup_parent_, cgroup_parent_rel_;
  bool own_cgroup_ = false;
  /// podman's default parent (libpod_parent, in cgroup v2 and each v1
  /// hierarchy) where it was not there before this node: ours to remove.
  std::vector<std::string> podman_default_cgroups_;
  std::string containers_conf_, haproxy_cfg_, app_binary_;
  pid_t holder_pid_ = -1;
  int holder_pidfd_ = -1;
  UniqueFd lock_fd_;
  std::vector<std::string> v1_mounts_;

  mutable std::mutex mu_;
  std::map<std::string, PodmanNetwork> networks_;
  int next_network_ = 0;
  int next_pod_ = 0;
  std::map<std::string, PodmanPod> pods_;            // by name
  std::map<std::string, std::vector<int>> pod_slots_;  // cleanup registry, by pod name
  std::vector<int> slots_;
  int emergency_slot_ = -1;
};

}  // namespace meshcap::test
