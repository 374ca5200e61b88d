#include "run_control.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <filesystem>

#include "pins.h"
#include "support/cleanup.h"

namespace fs = std::filesystem;

namespace meshcap::bench {

namespace {

volatile sig_atomic_t g_stop = 0;
struct sigaction g_prev[3];
constexpr int kStopSignals[3] = {SIGINT, SIGTERM, SIGHUP};
constexpr const char* kPinPrefix = "/sys/fs/bpf/mcbench-";
constexpr const char* kStatePrefix = "/run/mcbench-";

void on_stop(int sig) {
  if (g_stop) {
    for (int i = 0; i < 3; i++)
      if (kStopSignals[i] == sig) ::sigaction(sig, &g_prev[i], nullptr);
    ::raise(sig);
    return;
  }
  g_stop = 1;
}

// Directories of runs whose process is gone.
void remove_dead_runs() {
  std::error_code ec;
  for (const std::string parent : {"/sys/fs/bpf", "/run"})
    for (const auto& e : fs::directory_iterator(parent, ec)) {
      const std::string name = e.path().filename().string();
      if (name.rfind("mcbench-", 0) != 0) continue;
      const pid_t pid = std::atoi(name.c_str() + 8);
      if (pid <= 0 || ::kill(pid, 0) == 0 || errno != ESRCH) continue;
      if (parent == "/sys/fs/bpf")
        loader::remove_tree(e.path().string());
      else
        fs::remove_all(e.path(), ec);
    }
}

}  // namespace

void install_stop_handlers() {
  static bool done = false;
  if (done) return;
  done = true;
  for (int i = 0; i < 3; i++) {
    struct sigaction sa {};
    sa.sa_handler = on_stop;
    ::sigemptyset(&sa.sa_mask);
    ::sigaction(kStopSignals[i], &sa, &g_prev[i]);
  }
}

void check_stop() {
  if (g_stop) throw Interrupted();
}

RunDirs::RunDirs() {
  remove_dead_runs();
  pins_ = kPinPrefix + std::to_string(::getpid());
  state_ = kStatePrefix + std::to_string(::getpid());
  test::detail::install_cleanup_handlers();
  const int group = test::detail::new_group();
  slots_[0] = test::detail::register_resource(test::detail::Resource::directory, group, pins_);
  slots_[1] = test::detail::register_resource(test::detail::Resource::directory, group, state_);
  ::setenv("MESHCAP_PIN_DIR", pins_.c_str(), 1);
  ::setenv("MESHCAP_STATE_DIR", state_.c_str(), 1);
}

RunDirs::~RunDirs() {
  loader::remove_tree(pins_);
  std::error_code ec;
  fs::remove_all(state_, ec);
  for (int s : slots_) test::detail::unregister_resource(s);
}

std::vector<std::string> RunDirs::captures() const {
  std::vector<std::string> names = loader::pinned_pods();
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(state_ + "/pods", ec))
    if (e.path().extension() == ".json") names.push_back(e.path().stem().string() + " (record)");
  if (fs::exists(loader::node_dir(), ec)) names.push_back("node data path");
  return names;
}

ScopedMeshcapDirs::ScopedMeshcapDirs(const std::string& pins, const std::string& state) {
  pins_ = std::getenv("MESHCAP_PIN_DIR") ? std::getenv("MESHCAP_PIN_DIR") : "";
  state_ = std::getenv("MESHCAP_STATE_DIR") ? std::getenv("MESHCAP_STATE_DIR") : "";
  ::setenv("MESHCAP_PIN_DIR", pins.c_str(), 1);
  ::setenv("MESHCAP_STATE_DIR", state.c_str(), 1);
}

ScopedMeshcapDirs::~ScopedMeshcapDirs() {
  ::setenv("MESHCAP_PIN_DIR", pins_.c_str(), 1);
  ::setenv("MESHCAP_STATE_DIR", state_.c_str(), 1);
}

std::vector<std::string> leftovers(const std::vector<std::string>& pod_suffixes, const std::vector<pid_t>& pids,
                                   const RunDirs& dirs) {
  std::vector<std::string> left;
  for (const auto& s : pod_suffixes)
    for (const std::string ns : {"mcpod-", "mcpeer-"})
      if (fs::exists("/run/netns/" + ns + s)) left.push_back("netns " + ns + s);
  for (const auto& n : dirs.captures()) left.push_back("capture " + n);
  for (pid_t p : pids)
    if (::kill(p, 0) == 0) left.push_back("process " + std::to_string(p));
  return left;
}

}  // namespace meshcap::bench
