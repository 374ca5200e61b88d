// A throwaway "node" for node-mode tests: a cgroup v2 directory that holds
// the test's pods (TestPod::Options::cgroup_parent), and meshcap's pin and
// state directories of its own (MESHCAP_PIN_DIR, MESHCAP_STATE_DIR), so a
// node data path started here never meets the machine's or another test's.
// Never the root cgroup. Everything is removed by the destructor, on fatal
// signals and at exit (cleanup.h).
#pragma once

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

}  // namespace meshcap::test
