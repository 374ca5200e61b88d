// A throwaway "pod" for kernel and e2e tests: two network namespaces joined
// by a veth pair, and a cgroup v2 directory for the pod's processes.
//
//        pod netns (mcpod-S)                    peer netns (mcpeer-S)
//   lo up, vpod-S 10.211.N.2/24        <->   vpeer-S 10.211.N.1/24, lo up
//          fd00:211:N::2/64 (nodad)                fd00:211:N::1/64 (nodad)
//   default routes via the peer (v4, v6); tcp_tw_reuse=1, wide port range
//   processes started with run_in_pod / spawn_in_pod join <cgroup2>/mcpod-S
//
// S is 6 random hex digits, N a random 1..250; names are unique per pod, so
// tests can run in parallel (ctest -j). Everything is removed by the
// destructor, by a failed constructor, on fatal signals and at exit (see
// cleanup.h), and pods left by a SIGKILLed test are removed by the next
// TestPod (reap_stale()). Needs root.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "support/common.h"

namespace meshcap::test {

/// Credentials a child takes before running test code. The default keeps
/// the caller's (root). With a uid or gid set, supplementary groups become
/// exactly `groups` (none when empty).
struct Identity {
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
  std::vector<gid_t> groups;

  static Identity root() { return {}; }
  static Identity user(uid_t u, gid_t g, std::vector<gid_t> extra = {}) {
    return Identity{u, g, std::move(extra)};
  }
  /// The sidecar proxy's identity, UID/GID 1337, no supplementary groups.
  static Identity proxy() { return user(1337, 1337); }
  bool changes() const { return uid.has_value() || gid.has_value(); }
};

/// run_in_pod/run_in_peer result when the child outlived its timeout (it is
/// killed). Other results: fn's return value, or 128+signal if it died.
inline constexpr int kChildTimedOut = -1;
/// Result for a child that someone else reaped (e.g. waitpid(-1)).
inline constexpr int kChildLost = -2;
/// Exit code of a child whose fn threw an exception (message on stderr).
inline constexpr int kChildThrew = 120;
/// Exit code of a child that could not enter the pod (never seen by callers:
/// run_* throw TestSupportError with the failed step instead).
inline constexpr int kChildSetupFailed = 121;

class TestPod {
 public:
  using Timeout = std::chrono::milliseconds;
  static constexpr Timeout kDefaultTimeout{30000};

  struct Options {
    /// Timeout for run_in_pod/run_in_peer when none is passed.
    Timeout default_timeout = kDefaultTimeout;
    /// net.ipv4.ip_local_port_range inside both namespaces.
    std::string local_port_range = "10000 65535";
    /// The cgroup v2 directory the pod's cgroup is made in (default: the
    /// hierarchy's root): a TestNode's, for pods under a node data path.
    std::string cgroup_parent;
    /// Self-test hook: throw after the named construction step ("cgroup",
    /// "netns", "veth", "addresses", "sysctls") to exercise the cleanup of a
    /// half-built pod.
    std::string fail_after_step;
  };

  TestPod();
  explicit TestPod(Options options);
  ~TestPod();
  TestPod(const TestPod&) = delete;
  TestPod& operator=(const TestPod&) = delete;

  // ---- names and addresses ----
  const std::string& suffix() const { return suffix_; }  ///< the 6 hex digits S
  int subnet() const { return subnet_; }                 ///< N in 10.211.N.0/24
  const std::string& pod_netns() const { return pod_netns_; }    ///< "mcpod-S"
  const std::string& peer_netns() const { return peer_netns_; }  ///< "mcpeer-S"
  std::string pod_netns_path() const { return "/run/netns/" + pod_netns_; }
  std::string peer_netns_path() const { return "/run/netns/" + peer_netns_; }
  /// Absolute cgroup directory, e.g. /sys/fs/cgroup/unified/mcpod-S.
  const std::string& cgroup_path() const { return cgroup_path_; }
  /// The cgroup as /proc/PID/cgroup shows it ("0::" + this), e.g. "/mcpod-S".
  const std::string& cgroup_relative() const { return cgroup_relative_; }
  const std::string& pod_ipv4() const { return pod_ipv4_; }    ///< 10.211.N.2
  const std::string& peer_ipv4() const { return peer_ipv4_; }  ///< 10.211.N.1
  const std::string& pod_ipv6() const { return pod_ipv6_; }    ///< fd00:211:N::2
  const std::string& peer_ipv6() const { return peer_ipv6_; }  ///< fd00:211:N::1
  const std::string& pod_veth() const { return pod_veth_; }    ///< "vpod-S" (in the pod)
  const std::string& peer_veth() const { return peer_veth_; }  ///< "vpeer-S" (in the peer)
  /// A directory private to this pod (mode 0755, removed with it) for
  /// configs and logs; /tmp/mcpod-S.
  const std::string& scratch_dir() const { return scratch_dir_; }

  // ---- running code inside ----

  /// Forks; the child joins the pod cgroup (first, while still root), enters
  /// the pod netns, takes `id` and exits with fn's return value. Returns that
  /// value, 128+signal if the child died, or kChildTimedOut (child killed).
  /// Throws TestSupportError if the child could not enter the pod.
  /// fn runs in a forked copy of a possibly multi-threaded process: keep it
  /// to sockets and syscalls; gtest assertions in it are not reported.
  int run_in_pod(std::function<int()> fn, Identity id = {}, std::optional<Timeout> timeout = {});
  /// Same in the peer netns (no cgroup).
  int run_in_peer(std::function<int()> fn, Identity id = {}, std::optional<Timeout> timeout = {});

  /// Like run_in_pod, returning the string fn returns (sent over a pipe).
  /// Throws TestSupportError if the child does not exit normally with it.
  std::string run_in_pod_capture(std::function<std::string()> fn, Identity id = {},
                                 std::optional<Timeout> timeout = {});
  std::string run_in_peer_capture(std::function<std::string()> fn, Identity id = {},
                                  std::optional<Timeout> timeout = {});

  /// Starts a long-running program in the pod cgroup and netns as `id`, its
  /// stdout and stderr appended to log_file (inherited when empty), stdin
  /// /dev/null, RLIMIT_NOFILE raised to the hard limit. argv[0] is looked up
  /// with find_binary. Tracked: the destructor kills it. Throws
  /// TestSupportError when it cannot be started (including exec failure).
  /// The child gets SIGKILL if the thread that called this exits, so call
  /// it from the test's main thread.
  pid_t spawn_in_pod(std::vector<std::string> argv, Identity id = {}, std::string log_file = {});
  /// Same in the peer netns (no cgroup).
  pid_t spawn_in_peer(std::vector<std::string> argv, Identity id = {}, std::string log_file = {});

  /// Starts fn in a tracked child process in the pod (cgroup + netns + id)
  /// without waiting; the child exits with fn's return value.
  pid_t start_in_pod(std::function<int()> fn, Identity id = {});
  pid_t start_in_peer(std::function<int()> fn, Identity id = {});

  /// Like start_in_pod, with a pipe from the child: fn gets its write end;
  /// the returned read end sees EOF once the child exits.
  std::pair<pid_t, UniqueFd> start_in_pod_with_pipe(std::function<int(int write_fd)> fn,
                                                    Identity id = {});
  std::pair<pid_t, UniqueFd> start_in_peer_with_pipe(std::function<int(int write_fd)> fn,
                                                     Identity id = {});

  /// True while a tracked child has not exited.
  bool is_running(pid_t pid) const;
  /// Waits up to `timeout` for a tracked child to exit; returns its exit
  /// code (128+signal) and stops tracking it, or nullopt if still running.
  std::optional<int> wait_exit(pid_t pid, Timeout timeout);
  /// SIGTERM, then SIGKILL after `grace`; reaps and stops tracking. Returns
  /// the exit code (128+signal), or nullopt if pid is not tracked.
  std::optional<int> stop(pid_t pid, Timeout grace = Timeout(2000));

  /// Pids currently in the pod cgroup.
  std::vector<pid_t> cgroup_pids() const;

  /// Registers fn to run first thing in the destructor (servers attached to
  /// the pod stop there). Returns a token for remove_teardown.
  int add_teardown(std::function<void()> fn);
  void remove_teardown(int token);

  /// Removes pods left behind by processes that died without cleaning up
  /// (SIGKILL, ctest timeout): their lock in /run/meshcap-testpod is free.
  /// The constructor calls it. Returns how many pods were removed.
  static int reap_stale();

 private:
  enum class Where { pod, peer };
  struct Child {
    pid_t pid = -1;
    int pidfd = -1;
    int slot = -1;
  };

  void build();
  void step_done(const std::string& step);
  void reserve_names();
  void cleanup() noexcept;

  // Forks a child that enters `where` as `id`, then runs body(setup_fd),
  // which never returns: it closes setup_fd and _exits, or execs (setup_fd
  // is CLOEXEC) and reports a failure on it. Returns once setup_fd is closed;
  // throws with the failed step otherwise. Tracked when `track`.
  // `parent_close` (a pipe end meant for the child only) is closed in the
  // parent right after the fork, under the same lock as the fork itself.
  Child fork_child(Where where, const Identity& id, const std::function<void(int)>& body,
                   bool track, UniqueFd* parent_close = nullptr);
  int run_child(Where where, std::function<int()> fn, const Identity& id,
                std::optional<Timeout> timeout);
  std::string run_capture(Where where, std::function<std::string()> fn, const Identity& id,
                          std::optional<Timeout> timeout);
  std::pair<pid_t, UniqueFd> start(Where where, std::function<int(int)> fn, const Identity& id,
                                   bool with_pipe);
  pid_t spawn(Where where, std::vector<std::string> argv, const Identity& id,
              const std::string& log_file);
  void forget_child(const Child& c);

  Options options_;
  int group_ = 0;
  std::string suffix_;
  int subnet_ = 0;
  std::string pod_netns_, peer_netns_;
  std::string cgroup_path_, cgroup_relative_;
  std::string pod_ipv4_, peer_ipv4_, pod_ipv6_, peer_ipv6_;
  std::string pod_veth_, peer_veth_;
  std::string scratch_dir_;
  std::string lock_path_;
  UniqueFd lock_fd_;

  int lock_slot_ = -1, scratch_slot_ = -1, cgroup_slot_ = -1, pod_ns_slot_ = -1,
      peer_ns_slot_ = -1;

  mutable std::mutex mu_;
  std::map<pid_t, Child> children_;
  std::map<int, std::function<void()>> teardown_;
  int next_teardown_ = 1;
};

}  // namespace meshcap::test
