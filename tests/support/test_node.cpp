#include "support/test_node.h"

#include <unistd.h>

#include "support/cleanup.h"
#include "support/test_pod.h"

namespace meshcap::test {

TestNode::TestNode(std::string meshcap) : meshcap_(std::move(meshcap)) {
  detail::install_cleanup_handlers();
  group_ = detail::new_group();
  NewCgroup cg = make_unique_cgroup("mcnode");
  cgroup_ = std::move(cg.path);
  suffix_ = std::move(cg.suffix);
  slots_[0] = detail::register_resource(detail::Resource::cgroup, group_, cgroup_);
  pins_ = "/sys/fs/bpf/mcnode-" + suffix_;
  state_ = "/run/mcnode-" + suffix_;
  // Removed after the cgroup (registered later, removed first? no: in
  // order of the table); remove_tree unlinks pins, which detaches links.
  slots_[1] = detail::register_resource(detail::Resource::directory, group_, pins_);
  slots_[2] = detail::register_resource(detail::Resource::directory, group_, state_);
}

TestNode::~TestNode() {
  // The data path and whatever pods are still enrolled go with the pins;
  // pods' cgroups are their TestPods' (destroyed before the node).
  meshcap({"node", "stop", "--move-to-iptables"});
  detail::remove_tree(pins_.c_str());
  detail::remove_tree((pins_ + "_staging").c_str());
  detail::remove_tree(state_.c_str());
  detail::kill_cgroup_and_remove(cgroup_.c_str(), 5000);
  for (int s : slots_) detail::unregister_resource(s);
}

std::vector<std::string> TestNode::env() const { return {"MESHCAP_PIN_DIR=" + pins_, "MESHCAP_STATE_DIR=" + state_}; }

CommandResult TestNode::meshcap(const std::vector<std::string>& args, const std::vector<std::string>& extra_env) const {
  std::vector<std::string> argv = {"env"};
  for (const auto& e : env()) argv.push_back(e);
  argv.insert(argv.end(), extra_env.begin(), extra_env.end());
  argv.push_back(meshcap_);
  argv.insert(argv.end(), args.begin(), args.end());
  return run_command(argv);
}

CommandResult TestNode::start(const std::vector<std::string>& args) const {
  std::vector<std::string> a = {"node", "start", "--cgroup", cgroup_};
  a.insert(a.end(), args.begin(), args.end());
  return meshcap(a);
}

}  // namespace meshcap::test
