// A real container runtime in the tests: podman 4.3 (runc, CNI reference
// plugins) creating pods on a throwaway node (tests/support/podman.h).
//
// PodmanHarness: the harness itself, with the reference plugins only
// (bridge + host-local + loopback): pods reach a server outside the node and
// are reached from it, containers run as the right users in pod cgroups
// under the node's, and nothing is left afterwards: not after the
// destructor, not after a fatal signal, not after SIGKILL (reap_stale).
//
// CniPodman / CniDirect: meshcap-cni in the conflist, with a node data path
// running (eBPF) and without one (iptables); and the plugin driven by hand,
// as cnitool does, for every bad input. They skip until the plugin is built.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "datapath.h"
#include "support/podman.h"
#include "support/sockets.h"
#include "support/test_node.h"
#include "support/test_pod.h"

#ifndef MESHCAP_BIN
#error "MESHCAP_BIN must name the meshcap binary"
#endif
#ifndef MESHCAP_CNI_BIN
#error "MESHCAP_CNI_BIN must name the meshcap-cni plugin"
#endif

namespace meshcap::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr uint16_t kUpstreamPort = 9000;
constexpr uint16_t kAppPort = 8080;

bool path_exists(const std::string& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}

std::string uid_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Uid:", 0) == 0) {
      std::istringstream f(line.substr(4));
      std::string real;
      f >> real;
      return real;
    }
  }
  return "?";
}

std::string cgroup_v2_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cgroup");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("0::", 0) == 0) return line.substr(3);
  }
  return {};
}

std::string ip_of(const std::string& addr) { return addr.substr(0, addr.rfind(':')); }
std::string port_of(const std::string& addr) { return addr.substr(addr.rfind(':') + 1); }

template <class F>
auto eventually(F f, Millis timeout = Millis(3000)) {
  const auto deadline = Clock::now() + timeout;
  auto v = f();
  while (!v && Clock::now() < deadline) {
    std::this_thread::sleep_for(Millis(50));
    v = f();
  }
  return v;
}

// Every trace of a node with suffix s, as a list of what is still there.
std::vector<std::string> node_leftovers(const std::string& s, const std::string& cgroup_rel,
                                        const std::vector<std::string>& pod_netns) {
  std::vector<std::string> left;
  for (const auto& p : {"/run/netns/mcpnode-" + s, "/run/netns/mcpout-" + s, "/tmp/mcpodman-" + s,
                        "/run/meshcap-testpodman/" + s + ".lock"}) {
    if (path_exists(p)) left.push_back(p);
  }
  for (const auto& p : pod_netns) {
    if (path_exists(p)) left.push_back(p);
  }
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("mcpodman-" + s) != std::string::npos) left.push_back("mount: " + line);
    const auto sep = line.find(" - ");
    std::istringstream f(line.substr(0, sep));
    std::string a, b, c, d, point;
    f >> a >> b >> c >> d >> point;
    std::istringstream t(line.substr(sep + 3));
    std::string fstype;
    t >> fstype;
    if ((fstype == "cgroup" || fstype == "cgroup2") && !cgroup_rel.empty() && path_exists(point + cgroup_rel)) {
      left.push_back(point + cgroup_rel);
    }
  }
  return left;
}

class PodmanTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const std::string why = PodmanNode::unavailable_reason(); !why.empty()) GTEST_SKIP() << why;
  }
};

// ---------------------------------------------------------------------------
// The harness, reference plugins only.

class PodmanHarness : public PodmanTest {};

TEST_F(PodmanHarness, PodsReachTheOutsideAndNothingIsLeft) {
  const bool var_lib_containers = path_exists("/var/lib/containers");
  const bool var_lib_cni = path_exists("/var/lib/cni");
  std::string s, rel;
  std::vector<std::string> pod_netns;
  {
    PodmanNode node;
    s = node.suffix();
    rel = node.cgroup_parent_relative();
    RecordingListener upstream(Placement::netns(node.outside_netns_path()), node.outside_ipv4(), kUpstreamPort);
    const auto t0 = Clock::now();
    auto pods = node.create_pods(2);
    std::printf("2 pods created in %lld ms\n",
                static_cast<long long>(std::chrono::duration_cast<Millis>(Clock::now() - t0).count()));
    for (const auto& pod : pods) {
      SCOPED_TRACE(pod.name);
      pod_netns.push_back(pod.netns_path);
      // The CNI reference plugins ran in the node's namespace: the pod's
      // address is on the node's bridge.
      EXPECT_EQ(pod.ipv4.rfind("10.213.0.", 0), 0u) << pod.ipv4;
      EXPECT_EQ(pod.netns_path.rfind("/run/netns/netns-", 0), 0u) << pod.netns_path;
      // Users and cgroups as a kubelet would lay them out.
      EXPECT_EQ(uid_of(pod.proxy_pid), "1337");
      EXPECT_EQ(uid_of(pod.app_pid), "1000");
      EXPECT_EQ(pod.cgroup_path.rfind(node.cgroup_parent() + "/", 0), 0u) << pod.cgroup_path;
      EXPECT_EQ(cgroup_v2_of(pod.app_pid).rfind(rel + "/" + pod.id + "/libpod-", 0), 0u) << cgroup_v2_of(pod.app_pid);
      EXPECT_EQ(cgroup_v2_of(pod.proxy_pid).rfind(rel + "/" + pod.id + "/libpod-", 0), 0u);

      // Outbound, not captured (no meshcap in the chain): the upstream sees
      // the app's own connection.
      const size_t before = upstream.accepted();
      AppRun out = node.app_connect(pod, node.outside_ipv4(), kUpstreamPort);
      ASSERT_TRUE(out.all_ok()) << out.command.output;
      EXPECT_EQ(out.peer, node.outside_ipv4() + ":" + std::to_string(kUpstreamPort));
      EXPECT_EQ(out.reply, "ping");
      ASSERT_TRUE(upstream.wait_for_accepts(before + 1));
      EXPECT_EQ(upstream.records().back().peer, out.local);
      EXPECT_EQ(ip_of(out.local), pod.ipv4);
      // Inbound from outside reaches the app directly.
      const std::string in = node.ask_from_outside(pod.ipv4, kAppPort);
      EXPECT_EQ(in.rfind("peer=" + node.outside_ipv4() + ":", 0), 0u) << in;
      EXPECT_NE(in.find("local=" + pod.ipv4 + ":" + std::to_string(kAppPort)), std::string::npos) << in;
      // Nothing went through haproxy.
      EXPECT_EQ(node.proxy_sessions(pod, "outbound"), 0) << node.proxy_command(pod, "show stat");
      EXPECT_EQ(node.proxy_sessions(pod, "inbound"), 0) << node.proxy_command(pod, "show stat");
      EXPECT_EQ(node.proxy_log_count(pod, "outbound"), 0) << node.proxy_log(pod);
    }
    // The bridge is in the node's namespace only.
    EXPECT_TRUE(run_command({"ip", "-n", "mcpnode-" + s, "link", "show", "mcbr0"}).ok());
    EXPECT_FALSE(run_command({"ip", "link", "show", "mcbr0"}).ok());
    // No podman mount reached the machine's namespace.
    EXPECT_EQ(read_text_file("/proc/self/mountinfo").find("mcpodman-" + s), std::string::npos);

    PodRemoval r = node.remove_pod(pods[0]);
    ASSERT_TRUE(r.command.ok()) << r.command.output;
    EXPECT_TRUE(r.busy_cgroups.empty());
    EXPECT_FALSE(path_exists(pods[0].netns_path));
    EXPECT_FALSE(path_exists(pods[0].cgroup_path));
    EXPECT_EQ(node.pod_names(), std::vector<std::string>{pods[1].name});
    // The other pod still works.
    EXPECT_TRUE(node.app_connect(pods[1], node.outside_ipv4(), kUpstreamPort).all_ok());
  }
  EXPECT_EQ(node_leftovers(s, rel, pod_netns), std::vector<std::string>{});
  if (!var_lib_containers) {
    EXPECT_FALSE(path_exists("/var/lib/containers"));
  }
  if (!var_lib_cni) {
    EXPECT_FALSE(path_exists("/var/lib/cni"));
  }
}

// The process that owns a node dies of a signal: pods, conmon, the mount
// namespace, the node's namespaces, cgroups and T all go; the signal still
// kills the process.
TEST_F(PodmanHarness, FatalSignalRemovesEverything) {
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(p[0]);
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    try {
      PodmanNode node;
      PodmanPod pod = node.create_pod();
      const std::string msg = node.suffix() + " " + node.cgroup_parent_relative() + " " + pod.netns_path + " " +
                              std::to_string(pod.proxy_pid) + "\n";
      if (::write(p[1], msg.data(), msg.size()) < 0) ::_exit(2);
      ::raise(SIGTERM);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      ::_exit(3);
    }
    ::_exit(99);
  }
  ::close(p[1]);
  std::string msg;
  char buf[512];
  for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) > 0;) msg.append(buf, static_cast<size_t>(n));
  ::close(p[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  std::istringstream in(msg);
  std::string s, rel, netns;
  pid_t proxy = 0;
  ASSERT_TRUE(in >> s >> rel >> netns >> proxy) << "child: " << status;
  ASSERT_TRUE(WIFSIGNALED(status)) << status;
  EXPECT_EQ(WTERMSIG(status), SIGTERM);
  EXPECT_EQ(node_leftovers(s, rel, {netns}), std::vector<std::string>{});
  EXPECT_TRUE(eventually([&] { return !path_exists("/proc/" + std::to_string(proxy)); }));
}

TEST_F(PodmanHarness, NodeOfSigkilledOwnerIsReaped) {
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(p[0]);
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    try {
      PodmanNode node;
      PodmanPod pod = node.create_pod();
      const std::string msg = node.suffix() + " " + node.cgroup_parent_relative() + " " + pod.netns_path + " " +
                              std::to_string(pod.proxy_pid) + "\n";
      if (::write(p[1], msg.data(), msg.size()) < 0) ::_exit(2);
      for (;;) ::pause();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s\n", e.what());
      ::_exit(3);
    }
  }
  ::close(p[1]);
  std::string msg;
  char buf[512];
  ssize_t n = 0;
  while (msg.find('\n') == std::string::npos && (n = ::read(p[0], buf, sizeof buf)) > 0) {
    msg.append(buf, static_cast<size_t>(n));
  }
  ::close(p[0]);
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  std::istringstream in(msg);
  std::string s, rel, netns;
  pid_t proxy = 0;
  ASSERT_TRUE(in >> s >> rel >> netns >> proxy);
  EXPECT_FALSE(node_leftovers(s, rel, {netns}).empty());  // left behind...
  for (int i = 0; i < 100 && path_exists("/run/meshcap-testpodman/" + s + ".lock"); ++i) {
    PodmanNode::reap_stale();  // ...until reaped (here or by a parallel test's node)
    std::this_thread::sleep_for(Millis(50));
  }
  EXPECT_EQ(node_leftovers(s, rel, {netns}), std::vector<std::string>{});
  EXPECT_TRUE(eventually([&] { return !path_exists("/proc/" + std::to_string(proxy)); }));
}

// ---------------------------------------------------------------------------
// meshcap-cni in the chain.

enum class DataPath { node_ebpf, none_iptables };

std::string name_of(DataPath d) { return d == DataPath::node_ebpf ? "NodeDataPath" : "NoNodeDataPath"; }

bool plugin_built() { return ::access(MESHCAP_CNI_BIN, X_OK) == 0; }

std::string plugin_conf(const json& extra = json::object()) {
  json c = {{"type", "meshcap-cni"}, {"log-level", "debug"}};
  c.update(extra);
  return c.dump();
}

/// The pods' records in a node's state directory.
std::set<std::string> records(const TestNode& node) {
  std::set<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(node.state_dir() + "/pods", ec)) {
    const std::string f = e.path().filename();
    if (f.size() > 5 && f.substr(f.size() - 5) == ".json") out.insert(f.substr(0, f.size() - 5));
  }
  return out;
}

/// Every file below a directory (pins), relative.
std::set<std::string> tree(const std::string& dir) {
  std::set<std::string> out;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec)) {
    out.insert(it->path().string().substr(dir.size()));
  }
  return out;
}

/// Rule chains of every iptables backend in a namespace (empty lines and
/// counters dropped).
std::string rules_in(const std::string& netns_path) {
  std::string all;
  for (const char* tool : {"iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save", "ip6tables-legacy-save"}) {
    const CommandResult r = run_command({"nsenter", "--net=" + netns_path, tool});
    std::istringstream in(r.output);
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#' || line[0] == '[') continue;
      if (line[0] == ':') line = line.substr(0, line.find(' '));
      all += std::string(tool) + ": " + line + "\n";
    }
  }
  return all;
}

json status_json(const TestNode& node) {
  const CommandResult r = node.meshcap({"status", "--json"});
  const auto b = r.output.find('[');
  if (b == std::string::npos) return json::array();
  try {
    return json::parse(r.output.substr(b));
  } catch (...) {
    return json::array();
  }
}

json node_status(const TestNode& node) {
  const CommandResult r = node.meshcap({"node", "status", "--json"});
  const auto b = r.output.find('{');
  if (b == std::string::npos) return json::object();
  try {
    return json::parse(r.output.substr(b));
  } catch (...) {
    return json::object();
  }
}

class CniPodman : public PodmanTest, public ::testing::WithParamInterface<DataPath> {
 protected:
  void SetUp() override {
    PodmanTest::SetUp();
    if (IsSkipped()) return;
    if (!plugin_built()) GTEST_SKIP() << MESHCAP_CNI_BIN << " is not built yet";
    node_ = std::make_unique<TestNode>(MESHCAP_BIN);
    if (GetParam() == DataPath::node_ebpf) {
      const CommandResult r = node_->start();
      ASSERT_EQ(r.exit_code, 0) << r.output;
    }
    PodmanNodeOptions o;
    o.cgroup_parent = node_->cgroup_path();
    o.env = node_->env();
    o.plugin_dirs = {fs::path(MESHCAP_CNI_BIN).parent_path()};
    o.chained = {plugin_conf()};
    podman_ = std::make_unique<PodmanNode>(o);
    upstream_ = std::make_unique<RecordingListener>(Placement::netns(podman_->outside_netns_path()),
                                                    podman_->outside_ipv4(), kUpstreamPort);
    node_rules_ = rules_in(podman_->node_netns_path());
  }
  void TearDown() override {
    upstream_.reset();
    podman_.reset();
    node_.reset();
  }

  /// Outbound from the app lands on haproxy, which reaches the upstream at
  /// the original destination; the app sees the peer it dialed.
  void expect_outbound_captured(const PodmanPod& pod) {
    SCOPED_TRACE(pod.name + " outbound");
    const size_t before = upstream_->accepted();
    const long through = podman_->proxy_sessions(pod, "outbound");
    ASSERT_GE(through, 0) << podman_->proxy_command(pod, "show stat");
    AppRun out = podman_->app_connect(pod, podman_->outside_ipv4(), kUpstreamPort);
    ASSERT_TRUE(out.all_ok()) << out.command.output;
    EXPECT_EQ(out.peer, podman_->outside_ipv4() + ":" + std::to_string(kUpstreamPort));
    EXPECT_EQ(ip_of(out.local), pod.ipv4);
    EXPECT_EQ(out.reply, "ping");
    ASSERT_TRUE(upstream_->wait_for_accepts(before + 1));
    const std::string seen = upstream_->records().back().peer;
    EXPECT_EQ(ip_of(seen), pod.ipv4);
    EXPECT_NE(port_of(seen), port_of(out.local)) << "the upstream saw the app's own connection: not captured";
    EXPECT_EQ(podman_->proxy_sessions(pod, "outbound"), through + 1) << podman_->proxy_log(pod);
  }
  void expect_outbound_direct(const PodmanPod& pod) {
    SCOPED_TRACE(pod.name + " outbound (not captured)");
    const size_t before = upstream_->accepted();
    AppRun out = podman_->app_connect(pod, podman_->outside_ipv4(), kUpstreamPort);
    ASSERT_TRUE(out.all_ok()) << out.command.output;
    ASSERT_TRUE(upstream_->wait_for_accepts(before + 1));
    EXPECT_EQ(upstream_->records().back().peer, out.local);
    EXPECT_EQ(podman_->proxy_sessions(pod, "outbound"), 0) << podman_->proxy_log(pod);
  }
  /// Inbound from outside lands on 15006: haproxy reaches the app from
  /// 127.0.0.6.
  void expect_inbound_captured(const PodmanPod& pod) {
    SCOPED_TRACE(pod.name + " inbound");
    const long through = podman_->proxy_sessions(pod, "inbound");
    ASSERT_GE(through, 0) << podman_->proxy_command(pod, "show stat");
    const std::string r = podman_->ask_from_outside(pod.ipv4, kAppPort);
    EXPECT_EQ(r.rfind("peer=127.0.0.6:", 0), 0u) << r;
    EXPECT_NE(r.find("local=" + pod.ipv4 + ":" + std::to_string(kAppPort)), std::string::npos) << r;
    EXPECT_EQ(podman_->proxy_sessions(pod, "inbound"), through + 1) << podman_->proxy_log(pod);
  }
  void expect_inbound_direct(const PodmanPod& pod) {
    SCOPED_TRACE(pod.name + " inbound (not captured)");
    const std::string r = podman_->ask_from_outside(pod.ipv4, kAppPort);
    EXPECT_EQ(r.rfind("peer=" + podman_->outside_ipv4() + ":", 0), 0u) << r;
    EXPECT_EQ(podman_->proxy_sessions(pod, "inbound"), 0) << podman_->proxy_log(pod);
  }
  /// The pod's status entries (records made by its ADD).
  json pod_status(const std::set<std::string>& names) {
    json out = json::array();
    for (const auto& e : status_json(*node_)) {
      if (e.contains("name") && names.count(e["name"].get<std::string>()) != 0) out.push_back(e);
    }
    return out;
  }
  /// Nothing of any pod left: no record, no pin, no enrolment, no rule in
  /// the node's namespace.
  void expect_nothing_left(const std::set<std::string>& gone) {
    for (const auto& r : gone) {
      EXPECT_EQ(records(*node_).count(r), 0u) << r;
      EXPECT_FALSE(path_exists(node_->pin_dir() + "/node/pods/" + r)) << r;
      EXPECT_FALSE(path_exists(node_->pin_dir() + "/" + r)) << r;
    }
    EXPECT_EQ(pod_status(gone).size(), 0u) << pod_status(gone).dump();
    if (GetParam() == DataPath::node_ebpf) {
      EXPECT_EQ(node_status(*node_).value("pods_enrolled", -1), 0);
    }
    EXPECT_EQ(rules_in(podman_->node_netns_path()), node_rules_);
  }

  std::unique_ptr<TestNode> node_;
  std::unique_ptr<PodmanNode> podman_;
  std::unique_ptr<RecordingListener> upstream_;
  std::string node_rules_;
};

TEST_P(CniPodman, PodIsCapturedBothWaysAndPodRmLeavesNothing) {
  const auto before = records(*node_);
  PodmanPod pod = podman_->create_pod();
  std::set<std::string> made;
  for (const auto& r : records(*node_)) {
    if (before.count(r) == 0) made.insert(r);
  }
  ASSERT_EQ(made.size(), 1u) << "one record for the pod's ADD";
  expect_outbound_captured(pod);
  expect_inbound_captured(pod);
  // status: every part in place, no drift, by the engine the data path
  // decides.
  const json st = pod_status(made);
  ASSERT_EQ(st.size(), 1u) << status_json(*node_).dump();
  for (const auto& part : {"outbound", "inbound"}) {
    EXPECT_TRUE(st[0]["parts"][part].value("in_place", false)) << st.dump();
    EXPECT_EQ(st[0]["parts"][part].value("engine", ""), GetParam() == DataPath::node_ebpf ? "ebpf" : "iptables")
        << st.dump();
  }
  EXPECT_TRUE(st[0]["drift"].empty()) << st.dump();
  if (GetParam() == DataPath::node_ebpf) {
    EXPECT_EQ(node_status(*node_).value("pods_enrolled", -1), 1);
  }

  PodRemoval r = podman_->remove_pod(pod);
  ASSERT_TRUE(r.command.ok()) << r.command.output;
  EXPECT_TRUE(r.busy_cgroups.empty());
  expect_nothing_left(made);
}

TEST_P(CniPodman, TwentyPodsAtOnce) {
  const auto t0 = Clock::now();
  std::vector<PodmanPod> pods = podman_->create_pods(20);
  const auto t1 = Clock::now();
  EXPECT_EQ(records(*node_).size(), 20u);
  if (GetParam() == DataPath::node_ebpf) {
    EXPECT_EQ(node_status(*node_).value("pods_enrolled", -1), 20);
  }
  for (const auto& pod : pods) {
    expect_outbound_captured(pod);
    expect_inbound_captured(pod);
  }
  const auto t2 = Clock::now();
  const auto made = records(*node_);
  for (const auto& pod : pods) {
    PodRemoval r = podman_->remove_pod(pod);
    EXPECT_TRUE(r.command.ok()) << r.command.output;
  }
  const auto t3 = Clock::now();
  expect_nothing_left(made);
  auto ms = [](auto d) { return static_cast<long long>(std::chrono::duration_cast<Millis>(d).count()); };
  std::printf("20 pods: created in %lld ms, checked in %lld ms, removed in %lld ms\n", ms(t1 - t0), ms(t2 - t1),
              ms(t3 - t2));
}

// A pod on a network whose meshcap-cni excludes the upstream's CIDR and
// captures no inbound port: its neighbour on the default network keeps the
// default capture, before, beside and after it.
TEST_P(CniPodman, PodWithOtherFlagsDoesNotAffectItsNeighbour) {
  PodmanNetwork other;
  other.name = "mcnet-other";
  other.chained = {plugin_conf({{"istio-service-exclude-cidr", podman_->outside_ipv4() + "/32"},
                                {"istio-inbound-ports", ""}})};
  podman_->add_network(other);
  PodmanPod a = podman_->create_pod();
  expect_outbound_captured(a);
  expect_inbound_captured(a);
  PodmanPodSpec spec;
  spec.network = "mcnet-other";
  PodmanPod b = podman_->create_pod(spec);
  expect_outbound_direct(b);
  expect_inbound_direct(b);
  expect_outbound_captured(a);
  expect_inbound_captured(a);
  ASSERT_TRUE(podman_->remove_pod(b).command.ok());
  expect_outbound_captured(a);
  expect_inbound_captured(a);
}

INSTANTIATE_TEST_SUITE_P(DataPaths, CniPodman, ::testing::Values(DataPath::node_ebpf, DataPath::none_iptables),
                         [](const auto& i) { return name_of(i.param); });

// The node data path replaced in place (same sizes, then other sizes) while
// three pods' apps connect through haproxy in a loop: no connection fails.
class CniPodmanUpgrade : public CniPodman {};

TEST_P(CniPodmanUpgrade, NodeDataPathUpgradedUnderTrafficFailsNoConnection) {
  std::vector<PodmanPod> pods = podman_->create_pods(3);
  std::vector<long> sessions_before;
  for (const auto& p : pods) {
    sessions_before.push_back(podman_->proxy_sessions(p, "outbound"));
    ASSERT_GE(sessions_before.back(), 0) << podman_->proxy_command(p, "show stat");
  }
  const size_t upstream_before = upstream_->accepted();
  std::vector<AppRun> runs(pods.size());
  std::vector<std::thread> load;
  for (size_t i = 0; i < pods.size(); ++i) {
    load.emplace_back([&, i] { runs[i] = podman_->app_load(pods[i], podman_->outside_ipv4(), kUpstreamPort, Millis(5000)); });
  }
  std::this_thread::sleep_for(Millis(1500));
  const CommandResult r1 = node_->start();
  std::this_thread::sleep_for(Millis(700));
  const CommandResult r2 = node_->start({"--max-pods", "512", "--max-connections", "32768"});
  for (auto& t : load) t.join();
  EXPECT_EQ(r1.exit_code, 0) << r1.output;
  EXPECT_EQ(r2.exit_code, 0) << r2.output;
  EXPECT_EQ(node_status(*node_)["spec"].value("max_pods", 0), 512);
  long made = 0, failed = 0;
  for (size_t i = 0; i < pods.size(); ++i) {
    SCOPED_TRACE(pods[i].name);
    made += runs[i].ok;
    failed += runs[i].failed;
    EXPECT_EQ(runs[i].failed, 0) << runs[i].command.output;
    EXPECT_GT(runs[i].ok, 20) << runs[i].command.output;
    // Every one of them through haproxy: its outbound listener accepted as
    // many connections as the app made (the log may drop lines).
    const long through = podman_->proxy_sessions(pods[i], "outbound") - sessions_before[i];
    EXPECT_EQ(through, runs[i].ok) << podman_->proxy_command(pods[i], "show stat");
    std::printf("%s: %d connections, %d failed, %ld through haproxy's outbound listener (%d log lines)\n",
                pods[i].name.c_str(), runs[i].ok, runs[i].failed, through,
                podman_->proxy_log_count(pods[i], "outbound"));
  }
  EXPECT_TRUE(upstream_->wait_for_accepts(upstream_before + static_cast<size_t>(made)));
  std::printf("upgrade under traffic: %ld connections, %ld failed\n", made, failed);
  for (const auto& p : pods) expect_outbound_captured(p);
}

INSTANTIATE_TEST_SUITE_P(DataPaths, CniPodmanUpgrade, ::testing::Values(DataPath::node_ebpf),
                         [](const auto& i) { return name_of(i.param); });

// ---------------------------------------------------------------------------
// The plugin driven directly, as cnitool does.

class CniDirect : public ::testing::TestWithParam<DataPath> {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root";
    if (!plugin_built()) GTEST_SKIP() << MESHCAP_CNI_BIN << " is not built yet";
    node_ = std::make_unique<TestNode>(MESHCAP_BIN);
    if (GetParam() == DataPath::node_ebpf) {
      const CommandResult r = node_->start();
      ASSERT_EQ(r.exit_code, 0) << r.output;
    }
    TestPod::Options o;
    o.cgroup_parent = node_->cgroup_path();
    pod_ = std::make_unique<TestPod>(o);
    id_ = "cnidirect" + pod_->suffix();
  }
  void TearDown() override {
    if (node_ && pod_) {
      cni(env(), conf().dump(), "DEL");  // whatever a failed test left
    }
    pod_.reset();
    node_.reset();
  }

  std::map<std::string, std::string> env() const {
    std::map<std::string, std::string> e = {{"CNI_COMMAND", "ADD"},
                                            {"CNI_CONTAINERID", id_},
                                            {"CNI_NETNS", pod_->pod_netns_path()},
                                            {"CNI_IFNAME", "eth0"},
                                            {"CNI_PATH", fs::path(MESHCAP_CNI_BIN).parent_path().string() + ":/usr/lib/cni"},
                                            {"CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=direct"},
                                            {"PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}};
    for (const auto& kv : node_->env()) e[kv.substr(0, kv.find('='))] = kv.substr(kv.find('=') + 1);
    return e;
  }
  json prev_result() const {
    return {{"cniVersion", "1.0.0"},
            {"interfaces", {{{"name", pod_->pod_veth()}, {"sandbox", pod_->pod_netns_path()}}}},
            {"ips", {{{"address", pod_->pod_ipv4() + "/24"}, {"gateway", pod_->peer_ipv4()}, {"interface", 0}}}}};
  }
  json conf(const json& extra = json::object()) const {
    json c = {{"cniVersion", "1.0.0"}, {"name", "mcnet"}, {"type", "meshcap-cni"}, {"prevResult", prev_result()}};
    c.update(extra);
    return c;
  }
  ExecResult cni(std::map<std::string, std::string> e, const std::string& input, const std::string& command = "") {
    if (!command.empty()) e["CNI_COMMAND"] = command;
    std::vector<std::string> envv;
    for (const auto& [k, v] : e) envv.push_back(k + "=" + v);
    return exec_with_input({MESHCAP_CNI_BIN}, envv, input);
  }
  /// What the plugin could have changed: records, pins, rules in the pod,
  /// and in node mode the enrolment and the node maps' per-pod entries.
  /// The node's pods/ directory itself is left out: it is the node data
  /// path's (made with the first enrolment, removed by `node stop`), while
  /// what a pod leaves in it (pods/NAME/...) is listed.
  std::string snapshot() {
    std::ostringstream s;
    for (const auto& r : records(*node_)) s << "record " << r << "\n";
    for (const auto& p : tree(node_->pin_dir())) {
      if (p != "/node/pods") s << "pin " << p << "\n";
    }
    s << rules_in(pod_->pod_netns_path());
    if (GetParam() == DataPath::node_ebpf) {
      s << "enrolled " << node_status(*node_).value("pods_enrolled", -1) << "\n";
      for (const char* map : {"pods", "pod_by_addr", "pod_addrs", "pod_ports", "owner_gids", "iface_flags",
                              "cidrs4", "cidrs6", "listeners"}) {
        s << "map " << map << " " << loader::pinned_entries(node_->pin_dir() + "/node", map) << "\n";
      }
    }
    return s.str();
  }

  std::unique_ptr<TestNode> node_;
  std::unique_ptr<TestPod> pod_;
  std::string id_;
};

TEST_P(CniDirect, AddCheckDelVersionAsARuntimeDrivesThem) {
  const std::string clean = snapshot();
  ExecResult r = cni(env(), conf().dump());
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  // A chained plugin prints prevResult unchanged.
  EXPECT_EQ(json::parse(r.out), prev_result()) << r.out;
  EXPECT_NE(snapshot(), clean);
  r = cni(env(), conf().dump(), "CHECK");
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  // DEL is idempotent and works without CNI_NETNS.
  auto no_netns = env();
  no_netns.erase("CNI_NETNS");
  for (int i = 0; i < 2; ++i) {
    r = cni(no_netns, conf().dump(), "DEL");
    EXPECT_EQ(r.exit_code, 0) << i << ": " << r.out << r.err;
  }
  EXPECT_EQ(snapshot(), clean);
  r = cni(env(), conf().dump(), "DEL");
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  r = cni({{"CNI_COMMAND", "VERSION"}}, R"({"cniVersion": "1.0.0"})");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const json v = json::parse(r.out);
  for (const char* want : {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}) {
    EXPECT_NE(std::find(v["supportedVersions"].begin(), v["supportedVersions"].end(), want),
              v["supportedVersions"].end())
        << want << " in " << r.out;
  }
}

struct BadInput {
  std::string name;
  std::function<void(std::map<std::string, std::string>&, json&, std::string&)> spoil;
};

TEST_P(CniDirect, EveryBadInputIsACniErrorAndChangesNothing) {
  const std::vector<BadInput> cases = {
      {"malformed JSON", [](auto&, auto&, std::string& in) { in = "{\"cniVersion\": \"1.0.0\", \"name\": "; }},
      {"no CNI_COMMAND", [](auto& e, auto&, auto&) { e.erase("CNI_COMMAND"); }},
      {"no CNI_NETNS", [](auto& e, auto&, auto&) { e.erase("CNI_NETNS"); }},
      {"no CNI_CONTAINERID", [](auto& e, auto&, auto&) { e.erase("CNI_CONTAINERID"); }},
      {"unknown command", [](auto& e, auto&, auto&) { e["CNI_COMMAND"] = "FROB"; }},
      {"unknown cniVersion", [](auto&, json& c, auto&) { c["cniVersion"] = "9.9.9"; }},
      {"netns does not exist", [](auto& e, auto&, auto&) { e["CNI_NETNS"] = "/run/netns/meshcap-no-such-netns"; }},
      {"netns is not a namespace", [](auto& e, auto&, auto&) { e["CNI_NETNS"] = "/etc/hostname"; }},
      {"bad flag value", [](auto&, json& c, auto&) { c["envoy-port"] = "notaport"; }},
      {"flag value out of range", [](auto&, json& c, auto&) { c["inbound-capture-port"] = "70000"; }},
      {"bad uid", [](auto&, json& c, auto&) { c["proxy-uid"] = "-5"; }},
      {"bad CIDR", [](auto&, json& c, auto&) { c["istio-service-cidr"] = "10.0.0.0/33"; }},
      {"bad mode", [](auto&, json& c, auto&) { c["mode"] = "turbo"; }},
      {"unknown key", [](auto&, json& c, auto&) { c["envoy-portt"] = "15001"; }},
      {"bad runtimeConfig value",
       [](auto&, json& c, auto&) { c["runtimeConfig"] = {{"meshcap", {{"envoy-port", "x"}}}}; }},
      {"unknown runtimeConfig key",
       [](auto&, json& c, auto&) { c["runtimeConfig"] = {{"meshcap", {{"no-such-flag", "1"}}}}; }},
      {"bad CNI_ARGS value", [](auto& e, auto&, auto&) { e["CNI_ARGS"] += ";MESHCAP_ENVOY_PORT=abc"; }},
  };
  const std::string clean = snapshot();
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto e = env();
    json cf = conf();
    std::string input;
    c.spoil(e, cf, input);
    if (input.empty()) input = cf.dump();
    const ExecResult r = cni(e, input);
    EXPECT_NE(r.exit_code, 0) << r.out << r.err;
    json err;
    try {
      err = json::parse(r.out);
    } catch (const std::exception& ex) {
      ADD_FAILURE() << "stdout is not JSON: " << r.out << " / " << r.err;
      continue;
    }
    EXPECT_TRUE(err.is_object() && err.contains("code") && err["code"].is_number_integer() && err["code"] > 0)
        << r.out;
    EXPECT_TRUE(err.contains("msg") && err["msg"].is_string() && !err["msg"].get<std::string>().empty()) << r.out;
    EXPECT_EQ(snapshot(), clean) << r.out << r.err;
  }
}

INSTANTIATE_TEST_SUITE_P(DataPaths, CniDirect, ::testing::Values(DataPath::node_ebpf, DataPath::none_iptables),
                         [](const auto& i) { return name_of(i.param); });

}  // namespace
}  // namespace meshcap::test

int main(int argc, char** argv) {
  // The same binary is the app inside the pods' containers.
  if (argc > 1 && std::string(argv[1]) == meshcap::test::kPodmanAppFlag) {
    return meshcap::test::podman_app_main(argc, argv);
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
