#include "support/test_node.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

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

TestNodeAgent::TestNodeAgent(const TestNode& node, const std::string& meshcap)
    : socket_(node.state_dir() + "/cni.sock"), log_(node.state_dir() + "-agent.log") {
  std::vector<std::string> argv = {meshcap, "node", "serve", "--cgroup", node.cgroup_path()};
  std::vector<std::string> env = node.env();
  env.push_back("PATH=/usr/sbin:/usr/bin:/sbin:/bin");
  pid_ = fork();
  if (pid_ == 0) {
    detail::reset_signals_in_child();
    const int fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, 1), dup2(fd, 2);
    std::vector<char*> a, e;
    for (auto& x : argv) a.push_back(x.data());
    for (auto& x : env) e.push_back(x.data());
    a.push_back(nullptr), e.push_back(nullptr);
    execve(a[0], a.data(), e.data());
    _exit(127);
  }
  handle_ = detail::register_resource(detail::Resource::process, detail::new_group(), "", pid_);
}

TestNodeAgent::~TestNodeAgent() {
  stop(SIGKILL);
  std::error_code ec;
  std::filesystem::remove(log_, ec);
}

bool TestNodeAgent::listening() const {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, socket_.c_str(), sizeof sa.sun_path - 1);
  for (int i = 0; i < 200; i++) {
    const int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const bool ok = s >= 0 && connect(s, reinterpret_cast<const sockaddr*>(&sa), sizeof sa) == 0;
    if (s >= 0) close(s);
    if (ok) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

void TestNodeAgent::stop(int sig) {
  if (pid_ <= 0) return;
  kill(pid_, sig);
  waitpid(pid_, nullptr, 0);
  detail::unregister_resource(handle_);
  pid_ = -1;
}

std::string TestNodeAgent::log() const {
  std::ifstream in(log_);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace meshcap::test
