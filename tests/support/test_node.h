// A throwaway "node" for node-mode tests: a cgroup v2 directory that holds
// the test's pods (TestPod::Options::cgroup_parent), and meshcap's pin and
// state directories of its own (MESHCAP_PIN_DIR, MESHCAP_STATE_DIR), so a
// node data path started here never meets the machine's or another test's.
// Never the root cgroup. Everything is removed by the destructor, on fatal
// signals and at exit (cleanup.h).
#pragma once

#include <sys/types.h>

#include <csignal>
#include <string>
#include <vector>

#include "support/common.h"

namespace meshcap::test {

class TestNode {
 public:
  /// `meshcap` is the binary the node's commands run.
  explicit TestNode(std::string meshcap);
  ~TestNode();
  TestNode(const TestNode&) = delete;
  TestNode& operator=(const TestNode&) = delete;

  const std::string& cgroup_path() const { return cgroup_; }  ///< <cgroup2>/mcnode-S
  const std::string& pin_dir() const { return pins_; }        ///< /sys/fs/bpf/mcnode-S
  const std::string& state_dir() const { return state_; }     ///< /run/mcnode-S
  /// "MESHCAP_PIN_DIR=...", "MESHCAP_STATE_DIR=..."
  std::vector<std::string> env() const;
  /// Runs `meshcap ARGS` with this node's directories.
  CommandResult meshcap(const std::vector<std::string>& args, const std::vector<std::string>& extra_env = {}) const;
  /// `meshcap node start --cgroup <this node's cgroup> ARGS`.
  CommandResult start(const std::vector<std::string>& args = {}) const;

 private:
  std::string meshcap_, suffix_, cgroup_, pins_, state_;
  int group_ = -1;
  int slots_[3] = {-1, -1, -1};
};

/// `meshcap node serve` of a TestNode (meshcap-cni's requests and the
/// `meshcap init`s it answers), its output in a file beside the node's
/// state directory; SIGKILLed with the test's resources on any path.
class TestNodeAgent {
 public:
  TestNodeAgent(const TestNode& node, const std::string& meshcap);
  ~TestNodeAgent();
  TestNodeAgent(const TestNodeAgent&) = delete;
  TestNodeAgent& operator=(const TestNodeAgent&) = delete;

  /// Whether its socket answers within 10 s.
  bool listening() const;
  /// Signals it and waits; safe twice.
  void stop(int sig = SIGTERM);
  /// Everything it has printed so far.
  std::string log() const;
  const std::string& socket_path() const { return socket_; }

 private:
  std::string socket_, log_;
  pid_t pid_ = -1;
  int handle_ = -1;
};

}  // namespace meshcap::test
