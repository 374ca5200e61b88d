// CNI ADD end to end, as a container runtime sees it: meshcap-cni executed
// with the CNI_* environment and the configuration on stdin, from the
// exec to its exit, each ADD into a fresh network namespace. Four ways,
// interleaved A B A B: into the node data path and with istio's iptables
// payload in the namespace (the plugin entry's "mode": "iptables"), each
// through `meshcap node serve` (the plugin hands the command to the agent
// over its socket) and with no agent (the plugin does the work itself).
// The floor beside them: /bin/true executed the same way. And, while the
// agent runs, a bare iptables-restore of istio's payload as a process in a
// fresh namespace (as the node phase times it): the reference of
// `meshcap init`'s goal, beside the one design that hands a pod to the
// agent from a process as small as this plugin's.
#include <fcntl.h>
#include <sched.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <thread>

#include <spdlog/spdlog.h>

#include "agent_client.h"
#include "phases.h"
#include "run_control.h"
#include "support/test_node.h"

extern char** environ;

namespace meshcap::bench {

namespace {

using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

const char* const kNodeAgent = "node data path, through the agent";
const char* const kIptAgent = "iptables in the namespace, through the agent";
const char* const kNodeLocal = "node data path, no agent";
const char* const kIptLocal = "iptables in the namespace, no agent";
const char* const kFloor = "/bin/true, executed the same way";
const char* const kNodeInAgent = "node data path, the agent's own time";
const char* const kIptInAgent = "iptables in the namespace, the agent's own time";
const char* const kRestore = "bare restore of istio's payload (process)";

std::string conf(bool iptables) {
  return std::string(R"({"cniVersion":"1.0.0","name":"pods","type":"meshcap-cni")") +
         (iptables ? R"(,"mode":"iptables")" : "") +
         R"(,"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[]}})";
}

// A bare network namespace held by a descriptor (no veth: an ADD needs
// none), and the path other processes open it by.
struct Netns {
  int fd = -1;
  std::string path;
  Netns() {
    std::thread([this] {
      if (unshare(CLONE_NEWNET) == 0) fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    }).join();
    if (fd < 0) throw std::runtime_error("cannot make a network namespace");
    path = "/proc/" + std::to_string(getpid()) + "/fd/" + std::to_string(fd);
  }
  ~Netns() {
    if (fd >= 0) close(fd);
  }
  Netns(const Netns&) = delete;
  Netns& operator=(const Netns&) = delete;
};

struct Exec {
  double seconds = 0;
  int status = -1;
  std::string out;
};

// Executes `bin` with `extra` added to this process's environment and
// `input` on its stdin; timed from before the spawn to the reaped exit.
Exec run_plugin(const std::string& bin, const std::vector<std::string>& extra, const std::string& input) {
  std::vector<std::string> env_s(extra);
  for (char** e = environ; *e; ++e) env_s.emplace_back(*e);
  std::vector<char*> envp;
  for (auto& s : env_s) envp.push_back(s.data());
  envp.push_back(nullptr);
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC)) throw std::runtime_error("pipe failed");
  // The input fits the pipe's buffer: written before the child runs.
  if (write(in[1], input.data(), input.size()) != static_cast<ssize_t>(input.size()))
    throw std::runtime_error("cannot write the plugin's stdin");
  close(in[1]);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  std::string arg0 = fs::path(bin).filename();
  char* argv[] = {arg0.data(), nullptr};
  Exec r;
  pid_t pid = -1;
  const auto t0 = Clock::now();
  const int rc = posix_spawn(&pid, bin.c_str(), &fa, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&fa);
  close(in[0]);
  close(out[1]);
  if (rc != 0) {
    close(out[0]);
    throw std::runtime_error("cannot execute " + bin);
  }
  waitpid(pid, &r.status, 0);
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  char buf[4096];
  for (ssize_t n; (n = read(out[0], buf, sizeof buf)) > 0;) r.out.append(buf, static_cast<size_t>(n));
  close(out[0]);
  return r;
}

class CniPhase {
 public:
  explicit CniPhase(Bench& b) : b_(b), fig_(b.res.cni) {}
  void run();

 private:
  void start_agent();
  void stop_agent();
  void time_pairs(const char* node_key, const char* ipt_key);
  void add(const char* key, bool iptables);
  void remove_all();
  void read_agent_times();
  void time_restore();

  Bench& b_;
  CniFigures& fig_;
  std::unique_ptr<test::TestNode> node_;
  std::vector<std::unique_ptr<Netns>> netns_;
  std::vector<std::pair<std::string, std::string>> added_;  // container ID, namespace path
  pid_t agent_ = -1;
  std::string agent_log_;                   // the agent's stderr (debug: its time per request)
  std::map<std::string, const char*> way_;  // container ID -> the agent's-own-time row of its ADD
  const std::string payload_ = istio_payload_for(istio_sidecar_flags());  // as the plugin's defaults apply it
};

void CniPhase::add(const char* key, bool iptables) {
  netns_.push_back(std::make_unique<Netns>());
  const std::string id = "bench-" + std::to_string(added_.size());
  const std::string& path = netns_.back()->path;
  const Exec e = run_plugin(b_.opt.cni_bin,
                            {"CNI_COMMAND=ADD", "CNI_CONTAINERID=" + id, "CNI_NETNS=" + path, "CNI_IFNAME=eth0",
                             "CNI_ARGS=K8S_POD_NAMESPACE=bench;K8S_POD_NAME=" + id},
                            conf(iptables));
  if (!WIFEXITED(e.status) || WEXITSTATUS(e.status) != 0)
    throw std::runtime_error(std::string("meshcap-cni ADD (") + key + ") failed: " + e.out);
  added_.emplace_back(id, path);
  fig_.seconds[key].push_back(e.seconds);
  if (key == kNodeAgent) way_[id] = kNodeInAgent;
  if (key == kIptAgent) way_[id] = kIptInAgent;
}

void CniPhase::time_pairs(const char* node_key, const char* ipt_key) {
  for (int i = 0; i < b_.profile().cni_adds; i++) {
    check_stop();
    add(node_key, false);
    add(ipt_key, true);
    const Exec floor = run_plugin("/bin/true", {}, "");
    fig_.seconds[kFloor].push_back(floor.seconds);
    if (node_key == kNodeAgent) time_restore();
  }
}

void CniPhase::time_restore() {
  netns_.push_back(std::make_unique<Netns>());
  // The node phase's reference: legacy, unless the run leaves legacy out.
  const bool legacy = b_.profile().legacy && test::have_binary("iptables-legacy-restore");
  const std::string restore = legacy ? "iptables-legacy-restore" : "iptables-nft-restore";
  const Timed t = bare_restore(legacy, payload_, netns_.back()->path);
  if (!t.ok()) throw std::runtime_error(restore + ": " + t.output);
  if (fig_.seconds[kRestore].empty()) b_.res.notes.push_back("cni phase: the bare restore is " + restore + " --noflush");
  fig_.seconds[kRestore].push_back(t.seconds);
}

void CniPhase::start_agent() {
  agent_log_ = node_->state_dir() + "/bench-agent.log";
  agent_ = start_node_agent(b_, node_->cgroup_path(), fig_.max_pods, node_->state_dir(), agent_log_);
}

void CniPhase::stop_agent() { stop_node_agent(agent_); }

// The agent's own time per ADD (from the request's receipt to its reply,
// as its debug log says), for the ADDs that went through it.
void CniPhase::read_agent_times() {
  std::ifstream in(agent_log_);
  std::string line;
  const std::string head = "meshcap-cni ADD for ", mid = " answered in ";
  size_t n = 0;
  while (std::getline(in, line)) {
    const size_t a = line.find(head), b = line.find(mid);
    if (a == std::string::npos || b == std::string::npos || line.find("(exit 0)") == std::string::npos) continue;
    auto it = way_.find(line.substr(a + head.size(), b - a - head.size()));
    if (it == way_.end()) continue;
    fig_.seconds[it->second].push_back(std::stod(line.substr(b + mid.size())) / 1e3);
    n++;
  }
  if (n != way_.size())
    b_.res.notes.push_back("cni phase: the agent's log timed " + std::to_string(n) + " of " +
                           std::to_string(way_.size()) + " ADDs");
}

void CniPhase::remove_all() {
  for (const auto& [id, path] : added_) {
    const Exec e = run_plugin(b_.opt.cni_bin,
                              {"CNI_COMMAND=DEL", "CNI_CONTAINERID=" + id, "CNI_NETNS=" + path, "CNI_IFNAME=eth0"},
                              conf(false));
    if (!WIFEXITED(e.status) || WEXITSTATUS(e.status) != 0) b_.res.notes.push_back("meshcap-cni DEL " + id + " failed");
  }
  added_.clear();
  netns_.clear();
}

void CniPhase::run() {
  node_ = std::make_unique<test::TestNode>(b_.opt.meshcap_bin);
  ScopedMeshcapDirs dirs(node_->pin_dir(), node_->state_dir());
  fig_.adds = static_cast<size_t>(b_.profile().cni_adds);
  fig_.max_pods = 2 * fig_.adds + 16;  // the node ADDs of both passes stay until the end
  spdlog::info("cni phase: {} ADDs each way, through the agent and without", fig_.adds);
  try {
    const auto r = node_->start({"--max-pods", std::to_string(fig_.max_pods)});
    if (!r.ok()) throw std::runtime_error("meshcap node start: " + r.output);
    start_agent();
    time_pairs(kNodeAgent, kIptAgent);
    stop_agent();
    read_agent_times();
    time_pairs(kNodeLocal, kIptLocal);
    remove_all();
  } catch (...) {
    stop_agent();
    remove_all();
    node_->meshcap({"node", "stop", "--move-to-iptables"});
    throw;
  }
  const auto r = node_->meshcap({"node", "stop"});
  if (!r.ok()) b_.res.notes.push_back("cni phase: meshcap node stop: " + r.output);
  node_.reset();
}

}  // namespace

void run_cni_phase(Bench& b) {
  if (b.opt.no_cni) return;
  CniPhase(b).run();
}

}  // namespace meshcap::bench
