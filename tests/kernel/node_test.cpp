// Node mode for real: one data path attached to a test "node" cgroup that
// holds several throwaway pods, pods enrolled by network namespace with
// `meshcap init` (no cgroup, no program load), and what the issue asks of
// it: per-pod settings that never leak to another pod, namespaces that are
// not enrolled left alone, an in-place upgrade under load with no failed
// connection, a full table that fails cleanly or falls back, kills at every
// step, stale pods, and a stop that never leaves a pod uncaptured.
#include <bpf/bpf.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "capture_fixture.h"
#include "support/test_node.h"

namespace meshcap::test {
namespace {

using nlohmann::json;

/// The pods a node's state directory has records of.
std::vector<std::string> recorded(const TestNode& node) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(node.state_dir() + "/pods", ec)) {
    const std::string f = e.path().filename();
    if (f.size() > 5 && f.substr(f.size() - 5) == ".json") out.push_back(f.substr(0, f.size() - 5));
  }
  return out;
}

/// Every file and directory below `dir`, relative, sorted.
std::vector<std::string> pins_below(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir))
    out.push_back(std::filesystem::relative(e.path(), dir));
  std::sort(out.begin(), out.end());
  return out;
}

const std::vector<std::string> kIstioInit = {"-p", "15001", "-z", "15006", "-u", "1337", "-g", "1337", "-m",
                                             "REDIRECT", "-i", "*", "-b", "*", "-d", "15090,15021,15020"};

// One pod under the node, with the proxy's two listeners and a peer server.
struct NodePod {
  explicit NodePod(const TestNode& node) : NodePod(options(node)) {}
  /// A pod wherever `o` puts its cgroup (outside the node's by default).
  explicit NodePod(const TestPod::Options& o) : pod(o) {
    out4 = std::make_unique<RecordingListener>(Placement::pod_process(pod, Identity::proxy()), "0.0.0.0", 15001);
    in4 = std::make_unique<RecordingListener>(Placement::pod_process(pod, Identity::proxy()), "0.0.0.0", 15006);
    peer = std::make_unique<RecordingListener>(Placement::peer_thread(pod), pod.peer_ipv4(), 8080);
    app = std::make_unique<RecordingListener>(Placement::pod_process(pod, Identity::user(1000, 1000)), "0.0.0.0", 8080);
  }
  static TestPod::Options options(const TestNode& node) {
    TestPod::Options o;
    o.cgroup_parent = node.cgroup_path();
    return o;
  }
  std::string name() const { return "n" + pod.suffix(); }
  RoundTrip out() { return roundtrip_in_pod(pod, pod.peer_ipv4(), 8080, Identity::user(1000, 1000)); }
  RoundTrip in() { return roundtrip_in_peer(pod, pod.pod_ipv4(), 8080); }

  TestPod pod;
  std::unique_ptr<RecordingListener> out4, in4, peer, app;
};

class Node : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root: creates namespaces and cgroups and loads BPF";
    node_ = std::make_unique<TestNode>(MESHCAP_BIN);
  }
  void TearDown() override { node_.reset(); }

  CommandResult init(NodePod& p, std::vector<std::string> flags = kIstioInit, const std::string& mode = "auto",
                     const std::vector<std::string>& env = {}) {
    std::vector<std::string> args = {"init", "--mode", mode, "--name", p.name(), "--netns", p.pod.pod_netns_path()};
    args.insert(args.end(), flags.begin(), flags.end());
    return node_->meshcap(args, env);
  }
  json status(const NodePod& p) {
    auto r = node_->meshcap({"status", "--name", p.name(), "--json"});
    return json::parse(r.output.substr(r.output.find('['))).at(0);
  }
  json node_status() {
    auto r = node_->meshcap({"node", "status", "--json"});
    return json::parse(r.output.substr(r.output.find('{')));
  }
  /// Both parts captured by eBPF through the node, for real.
  void expect_captured(NodePod& p) {
    size_t o = p.out4->accepted(), i = p.in4->accepted();
    EXPECT_TRUE(p.out().ok());
    EXPECT_ACCEPTS(p.out4->accepted(), o + 1);
    EXPECT_EQ(p.out4->records().back().original_dst.address, p.pod.peer_ipv4() + ":8080");
    EXPECT_TRUE(p.in().ok());
    EXPECT_ACCEPTS(p.in4->accepted(), i + 1);
    EXPECT_EQ(p.in4->records().back().original_dst.address, p.pod.pod_ipv4() + ":8080");
  }
  void expect_direct(NodePod& p) {
    size_t peer = p.peer->accepted(), app = p.app->accepted(), o = p.out4->accepted(), i = p.in4->accepted();
    EXPECT_TRUE(p.out().ok());
    EXPECT_TRUE(p.in().ok());
    EXPECT_ACCEPTS(p.peer->accepted(), peer + 1);
    EXPECT_ACCEPTS(p.app->accepted(), app + 1);
    EXPECT_EQ(p.out4->accepted(), o);
    EXPECT_EQ(p.in4->accepted(), i);
  }

  std::unique_ptr<TestNode> node_;
};

TEST_F(Node, StartsOnceAndEnrolsPodsWithoutLoadingPrograms) {
  auto r = node_->start();
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(programs_attached(node_->cgroup_path()), kDnsCapturePrograms);
  const auto pins_at_start = pins_below(node_->pin_dir());
  NodePod a(*node_);
  r = init(a);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("outbound by ebpf, inbound by ebpf"), std::string::npos) << r.output;
  // No program of its own: nothing attached to the pod's cgroup itself.
  EXPECT_EQ(programs_attached(a.pod.cgroup_path()), 0u);
  expect_captured(a);
  auto st = status(a);
  EXPECT_EQ(st["ebpf"]["host"], "node");
  EXPECT_TRUE(st["parts"]["outbound"]["in_place"].get<bool>()) << st.dump();
  EXPECT_TRUE(st["parts"]["inbound"]["in_place"].get<bool>()) << st.dump();
  EXPECT_TRUE(st["drift"].empty()) << st.dump();
  auto ns = node_status();
  EXPECT_EQ(ns["pods_enrolled"], 1);
  EXPECT_GE(ns["pods"].at(0)["counters"]["redirected_outbound"].get<uint64_t>(), 1u);
  EXPECT_GE(ns["pods"].at(0)["counters"]["in_redirected"].get<uint64_t>(), 1u);
  // Cleanup takes the pod out; the data path stays for the others.
  ASSERT_EQ(node_->meshcap({"cleanup", "--name", a.name()}).exit_code, 0);
  EXPECT_EQ(node_status()["pods_enrolled"], 0);
  expect_direct(a);
  EXPECT_EQ(programs_attached(node_->cgroup_path()), kDnsCapturePrograms);
  // Nothing of the pod's stays pinned, not even node/pods/ (which
  // enrolling made for the pod's sk_lookup link).
  EXPECT_EQ(pins_below(node_->pin_dir()), pins_at_start);
}

// The issue's first finding: istio-init's way (a process in its own
// container cgroup beside the application's, default flags, auto). With a
// node data path that holds both, the application is captured.
TEST_F(Node, InitFromASiblingCgroupCapturesTheApplication) {
  ASSERT_EQ(node_->start().exit_code, 0);
  NodePod a(*node_);
  const std::string init_cg = node_->cgroup_path() + "/istio-init-" + a.pod.suffix();
  ASSERT_EQ(mkdir(init_cg.c_str(), 0755), 0);
  std::vector<std::string> argv = {"env"};
  for (const auto& e : node_->env()) argv.push_back(e);
  argv.push_back(std::filesystem::path(MESHCAP_BIN).parent_path() / "istio-iptables");
  argv.insert(argv.end(), kIstioInit.begin(), kIstioInit.end());
  const int rc = a.pod.run_in_pod([&] {
    // Move into the init container's own cgroup first, as a runtime would.
    FILE* f = fopen((init_cg + "/cgroup.procs").c_str(), "w");
    if (!f) return 90;
    fprintf(f, "%d\n", getpid());
    fclose(f);
    std::vector<char*> v;
    for (auto& s : argv) v.push_back(s.data());
    v.push_back(nullptr);
    execv("/usr/bin/env", v.data());
    return 127;
  });
  EXPECT_EQ(rc, 0);
  ASSERT_EQ(rmdir(init_cg.c_str()), 0);  // the init container goes away
  expect_captured(a);
  EXPECT_EQ(node_status()["pods_enrolled"], 1);
  for (const auto& n : recorded(*node_)) node_->meshcap({"cleanup", "--name", n});
}

TEST_F(Node, UnenrolledNamespacesAreLeftAloneAndSettingsNeverLeak) {
  ASSERT_EQ(node_->start().exit_code, 0);
  NodePod a(*node_), b(*node_), c(*node_);
  ASSERT_EQ(init(a).exit_code, 0);
  // b excludes its peer's address: a's wildcard must not apply to b.
  std::vector<std::string> b_flags = kIstioInit;
  b_flags.insert(b_flags.end(), {"-x", b.pod.peer_ipv4() + "/32", "-b", ""});
  ASSERT_EQ(init(b, b_flags).exit_code, 0);
  expect_captured(a);
  // b: outbound excluded by its own -x, inbound not requested.
  expect_direct(b);
  // c is below the node's cgroup but not enrolled: untouched.
  expect_direct(c);
  auto ns = node_status();
  EXPECT_EQ(ns["pods_enrolled"], 2);
  for (const auto& p : ns["pods"]) {
    if (p["name"] == b.name()) {
      EXPECT_EQ(p["counters"]["redirected_outbound"], 0u) << p.dump();
      EXPECT_GE(p["counters"]["excluded_cidr"].get<uint64_t>(), 1u) << p.dump();
    }
  }
  // A process of b cannot change a: b's settings are keyed by b's netns;
  // re-enrolling b with a capture-all configuration leaves a as it was.
  ASSERT_EQ(init(b).exit_code, 0);
  expect_captured(a);
  expect_captured(b);
  for (auto* p : {&a, &b}) node_->meshcap({"cleanup", "--name", p->name()});
}

// Bad sizes: one line naming the value, exit 2, nothing attached or pinned
// (0 is no size: leaving the option out gives the default).
TEST_F(Node, StartRefusesBadSizesWithOneLineAndTakesNothing) {
  const std::vector<std::vector<std::string>> corpus = {
      {"--max-pods", "0"},         {"--max-pods", "abc"},         {"--max-pods", "-3"},
      {"--max-pods", "99999999"},  {"--max-connections", "0"},    {"--max-connections", "10"},
      {"--max-connections", "1e6"}};
  for (const auto& args : corpus) {
    const auto r = node_->start(args);
    const std::string shown = args[0] + " " + args[1];
    EXPECT_EQ(r.exit_code, 2) << shown << "\n" << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << shown << "\n" << r.output;
    EXPECT_NE(r.output.find("'" + args[1] + "'"), std::string::npos) << shown << "\n" << r.output;
    EXPECT_EQ(programs_attached(node_->cgroup_path()), 0u) << shown;
    EXPECT_FALSE(std::filesystem::exists(node_->pin_dir() + "/node")) << shown;
  }
}

TEST_F(Node, FullTableFailsCleanlyInEbpfModeAndFallsBackInAuto) {
  ASSERT_EQ(node_->start({"--max-pods", "1"}).exit_code, 0);
  NodePod a(*node_), b(*node_);
  ASSERT_EQ(init(a).exit_code, 0);
  auto r = init(b, kIstioInit, "ebpf");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("maximum of 1 pods"), std::string::npos) << r.output;
  EXPECT_EQ(node_status()["pods_enrolled"], 1);
  expect_direct(b);
  r = init(b);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto st = status(b);
  EXPECT_EQ(st["parts"]["outbound"]["engine"], "iptables") << st.dump();
  EXPECT_NE(st["plan"]["outbound"]["reasons"].dump().find("maximum of 1 pods"), std::string::npos) << st.dump();
  expect_captured(b);  // by iptables: same landing, same original destination
  expect_captured(a);
  for (auto* p : {&a, &b}) node_->meshcap({"cleanup", "--name", p->name()});
}

TEST_F(Node, UpgradeInPlaceUnderLoadBreaksNothing) {
  ASSERT_EQ(node_->start().exit_code, 0);
  NodePod a(*node_);
  ASSERT_EQ(init(a).exit_code, 0);
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0};
  // Connections from the pod while the node data path is replaced: the
  // same sizes (maps kept), then other sizes (maps copied, the old
  // connection table read through orig_dst_prev).
  std::thread load([&] {
    while (!stop) {
      const std::string out = a.pod.run_in_pod_capture(
          [&] {
            int n_ok = 0, n_bad = 0;
            for (int i = 0; i < 50; i++) (tcp_roundtrip(a.pod.peer_ipv4(), 8080, "x").ok() ? n_ok : n_bad)++;
            return std::to_string(n_ok) + " " + std::to_string(n_bad);
          },
          Identity::user(1000, 1000));
      ok += std::stoi(out);
      failed += std::stoi(out.substr(out.find(' ') + 1));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto r1 = node_->start();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto r2 = node_->start({"--max-pods", "512", "--max-connections", "32768"});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  stop = true;
  load.join();
  EXPECT_EQ(r1.exit_code, 0) << r1.output;
  EXPECT_EQ(r2.exit_code, 0) << r2.output;
  EXPECT_EQ(failed, 0) << ok << " connections succeeded";
  EXPECT_GT(ok, 100);
  // Every one of them went through the proxy's listener.
  EXPECT_ACCEPTS(a.out4->accepted(), size_t(ok));
  EXPECT_EQ(node_status()["spec"]["max_pods"], 512);
  expect_captured(a);
  node_->meshcap({"cleanup", "--name", a.name()});
}

// DNS capture's programs: a node started without them (as an older meshcap
// did) sends a pod asking --redirect-dns to iptables and says why; an
// in-place upgrade attaches them beside the other links, with the pods
// enrolled and their counters kept; the pod then captures DNS by eBPF.
TEST_F(Node, UpgradeAddsDnsCaptureProgramsInPlace) {
  ASSERT_EQ(node_->start({"--no-dns"}).exit_code, 0);
  EXPECT_EQ(node_status()["spec"]["dns"], false);
  EXPECT_FALSE(std::filesystem::exists(node_->pin_dir() + "/node/link_sendmsg4"));
  NodePod a(*node_), b(*node_);
  ASSERT_EQ(init(a).exit_code, 0);
  expect_captured(a);
  const uint64_t before = status(a)["ebpf"]["counters"]["redirected_outbound"].get<uint64_t>();
  EXPECT_GT(before, 0u);
  std::vector<std::string> dns = kIstioInit;
  dns.insert(dns.end(), {"--redirect-dns", "--dns-servers", b.pod.peer_ipv4()});
  auto r = init(b, dns);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(status(b)["plan"]["outbound"]["engine"], "iptables") << r.output;
  EXPECT_NE(r.output.find("loaded without it"), std::string::npos) << r.output;
  ASSERT_EQ(node_->meshcap({"cleanup", "--name", b.name()}).exit_code, 0);

  auto up = node_->start();
  ASSERT_EQ(up.exit_code, 0) << up.output;
  EXPECT_EQ(node_status()["spec"]["dns"], true);
  for (const char* pin : {"link_sendmsg4", "link_sendmsg6", "link_recvmsg4", "link_recvmsg6"})
    EXPECT_TRUE(std::filesystem::exists(node_->pin_dir() + "/node/" + pin)) << pin;
  EXPECT_EQ(programs_attached(node_->cgroup_path()), kDnsCapturePrograms);
  // The enrolled pod kept its place and its counters.
  EXPECT_GE(status(a)["ebpf"]["counters"]["redirected_outbound"].get<uint64_t>(), before);
  expect_captured(a);
  r = init(b, dns);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(status(b)["plan"]["outbound"]["engine"], "ebpf") << r.output;
  EXPECT_EQ(status(b)["parts"]["outbound"]["in_place"], true) << status(b).dump();
  // Taking DNS capture away again is refused while a pod uses it.
  auto down = node_->start({"--no-dns"});
  EXPECT_NE(down.exit_code, 0) << down.output;
  EXPECT_NE(down.output.find(b.name()), std::string::npos) << down.output;
  EXPECT_TRUE(std::filesystem::exists(node_->pin_dir() + "/node/link_sendmsg4"));
  EXPECT_EQ(status(b)["parts"]["outbound"]["in_place"], true) << status(b).dump();
  node_->meshcap({"cleanup", "--name", a.name()});
  node_->meshcap({"cleanup", "--name", b.name()});
}

struct KillStep {
  std::string step;
};

class NodeKill : public Node, public ::testing::WithParamInterface<KillStep> {};

// A kill at each step of an enrolment: the pod is captured fully or not at
// all, and init again (or cleanup) repairs.
TEST_P(NodeKill, EnrolmentIsAllOrNothingAndRepairable) {
  ASSERT_EQ(node_->start().exit_code, 0);
  NodePod a(*node_);
  // The killed enrolment excludes port 8080 outbound; the repair does not:
  // rows the kill left behind must not survive into it.
  std::vector<std::string> killed = kIstioInit;
  killed.insert(killed.end(), {"-o", "8080"});
  auto r = init(a, killed, "ebpf", {"MESHCAP_FAULT_AT=" + GetParam().step + ":kill"});
  EXPECT_EQ(r.exit_code, 128 + SIGKILL) << r.output;
  size_t o = a.out4->accepted(), i = a.in4->accepted(), peer = a.peer->accepted(), app = a.app->accepted();
  EXPECT_TRUE(a.out().ok());
  EXPECT_TRUE(a.in().ok());
  // Outbound to 8080 is excluded by the killed enrolment's -o: "captured
  // fully" shows as inbound captured and outbound direct.
  const bool out_captured = settle([&] { return a.out4->accepted(); }, o + 1, Millis(500)) > o;
  const bool in_captured = settle([&] { return a.in4->accepted(); }, i + 1, Millis(500)) > i;
  EXPECT_FALSE(out_captured);
  if (!in_captured) {
    EXPECT_ACCEPTS(a.peer->accepted(), peer + 1);
    EXPECT_ACCEPTS(a.app->accepted(), app + 1);
  }
  r = init(a, kIstioInit, "ebpf");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_captured(a);
  ASSERT_EQ(node_->meshcap({"cleanup", "--name", a.name()}).exit_code, 0);
  EXPECT_EQ(node_status()["pods_enrolled"], 0);
  expect_direct(a);
}

INSTANTIATE_TEST_SUITE_P(Steps, NodeKill,
                         ::testing::Values(KillStep{"enroll"}, KillStep{"adopt"}, KillStep{"sk_lookup"},
                                           KillStep{"enabled"}, KillStep{"state"}),
                         [](const ::testing::TestParamInfo<KillStep>& i) { return i.param.step; });

// A kill during node start (fresh) and during an upgrade: pods keep their
// capture; node start again repairs.
TEST_F(Node, KilledStartAndUpgradeAreRepairedByStartingAgain) {
  auto r = node_->meshcap({"node", "start", "--cgroup", node_->cgroup_path()}, {"MESHCAP_FAULT_AT=pin-link:kill"});
  EXPECT_EQ(r.exit_code, 128 + SIGKILL);
  ASSERT_EQ(node_->start().exit_code, 0);
  EXPECT_EQ(programs_attached(node_->cgroup_path()), kDnsCapturePrograms);
  NodePod a(*node_);
  ASSERT_EQ(init(a).exit_code, 0);
  r = node_->meshcap({"node", "start", "--cgroup", node_->cgroup_path(), "--max-pods", "300"},
                     {"MESHCAP_FAULT_AT=upgrade-link:kill"});
  EXPECT_EQ(r.exit_code, 128 + SIGKILL);
  expect_captured(a);
  // Enrolments wait for the repair (auto falls back to iptables meanwhile).
  NodePod b(*node_);
  r = init(b, kIstioInit, "ebpf");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("interrupted"), std::string::npos) << r.output;
  ASSERT_EQ(node_->start({"--max-pods", "300"}).exit_code, 0);
  EXPECT_TRUE(node_status()["whole"].get<bool>());
  ASSERT_EQ(init(b).exit_code, 0);
  expect_captured(a);
  expect_captured(b);
  for (auto* p : {&a, &b}) node_->meshcap({"cleanup", "--name", p->name()});
}

TEST_F(Node, StaleCleanupUnenrolsPodsWhoseNamespaceIsGone) {
  ASSERT_EQ(node_->start().exit_code, 0);
  std::string name;
  {
    NodePod a(*node_);
    name = a.name();
    ASSERT_EQ(init(a).exit_code, 0);
    EXPECT_EQ(node_status()["pods_enrolled"], 1);
  }  // the pod (namespace, cgroup) is deleted under meshcap
  auto r = node_->meshcap({"cleanup", "--all-stale"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(node_status()["pods_enrolled"], 0) << r.output;
  EXPECT_FALSE(std::filesystem::exists(node_->state_dir() + "/pods/" + name + ".json"));
  EXPECT_FALSE(std::filesystem::exists(node_->pin_dir() + "/node/pods/" + name));
}

TEST_F(Node, StopRefusesWhilePodsAreEnrolledOrMovesThemToIptables) {
  ASSERT_EQ(node_->start().exit_code, 0);
  NodePod a(*node_);
  ASSERT_EQ(init(a).exit_code, 0);
  auto r = node_->meshcap({"node", "stop"});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find(a.name()), std::string::npos) << r.output;
  expect_captured(a);
  r = node_->meshcap({"node", "stop", "--move-to-iptables"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(programs_attached(node_->cgroup_path()), 0u);
  // No pod has pins of its own: nothing, not even an empty directory, is left on the BPF filesystem.
  EXPECT_FALSE(std::filesystem::exists(node_->pin_dir())) << node_->pin_dir();
  auto st = status(a);
  EXPECT_EQ(st["parts"]["outbound"]["engine"], "iptables") << st.dump();
  EXPECT_TRUE(st["drift"].empty()) << st.dump();
  expect_captured(a);
  node_->meshcap({"cleanup", "--name", a.name()});
  expect_direct(a);
}

// `--cgroup` names where the pod's application runs. Below the node's
// cgroup the pod is enrolled; outside it the node's programs would never
// see the application's sockets (only its inbound would be captured), so
// the pod gets its own programs on that cgroup instead, and is captured
// both ways.
TEST_F(Node, InitWithTheApplicationsCgroupEnrolsOnlyWhatTheNodeHolds) {
  ASSERT_EQ(node_->start().exit_code, 0);
  NodePod inside(*node_);
  NodePod outside{TestPod::Options{}};
  auto init_with_cgroup = [&](NodePod& p) {
    std::vector<std::string> args = {"init",     "--mode",           "ebpf",  "--name", p.name(),
                                     "--cgroup", p.pod.cgroup_path(), "--netns", p.pod.pod_netns_path()};
    args.insert(args.end(), kIstioInit.begin(), kIstioInit.end());
    return node_->meshcap(args);
  };
  auto r = init_with_cgroup(inside);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(status(inside)["ebpf"]["host"], "node");
  EXPECT_EQ(programs_attached(inside.pod.cgroup_path()), 0u);
  r = init_with_cgroup(outside);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("is not below it"), std::string::npos) << r.output;
  EXPECT_EQ(status(outside)["ebpf"]["host"], "pod");
  EXPECT_GT(programs_attached(outside.pod.cgroup_path()), 0u);
  EXPECT_EQ(node_status()["pods_enrolled"], 1);
  expect_captured(inside);
  expect_captured(outside);
  for (NodePod* p : {&inside, &outside}) ASSERT_EQ(node_->meshcap({"cleanup", "--name", p->name()}).exit_code, 0);
  EXPECT_EQ(programs_attached(outside.pod.cgroup_path()), 0u);
  EXPECT_EQ(node_status()["pods_enrolled"], 0);
  expect_direct(inside);
  expect_direct(outside);
}

// Without --cgroup, the processes already in the pod's namespace say where
// it runs: when they are outside the node's cgroup, enrolling would capture
// none of their connections while reporting the pod captured. So auto
// captures it with iptables and says why, and --mode ebpf fails at run time
// (exit 1), changing nothing.
TEST_F(Node, InitIntoTheNodeRefusesAPodWhoseProcessesAreOutsideIt) {
  ASSERT_EQ(node_->start().exit_code, 0);
  NodePod stray{TestPod::Options{}};  // its listeners run in a cgroup outside the node's
  auto r = init(stray, kIstioInit, "ebpf");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("outside it (pid "), std::string::npos) << r.output;
  EXPECT_EQ(node_status()["pods_enrolled"], 0);
  EXPECT_FALSE(std::filesystem::exists(node_->state_dir() + "/pods/" + stray.name() + ".json"));
  expect_direct(stray);
  r = init(stray);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("outbound by iptables, inbound by iptables"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("outside it (pid "), std::string::npos) << r.output;
  EXPECT_EQ(node_status()["pods_enrolled"], 0);
  expect_captured(stray);
  ASSERT_EQ(node_->meshcap({"cleanup", "--name", stray.name()}).exit_code, 0);
  expect_direct(stray);
  // Asked for iptables (which holds the whole namespace), the pod gets it,
  // with nothing said about the node's cgroup.
  r = init(stray, kIstioInit, "iptables");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find("outside it"), std::string::npos) << r.output;
  expect_captured(stray);
  ASSERT_EQ(node_->meshcap({"cleanup", "--name", stray.name()}).exit_code, 0);
  expect_direct(stray);
}

/// How many `meshcap init`s the agent has answered with exit code `exit`
/// (its log), or with any when `exit` < 0.
size_t answered(const TestNodeAgent& agent, int exit = -1) {
  const std::string log = agent.log();
  const std::string tail = exit < 0 ? " answered: exit " : " answered: exit " + std::to_string(exit) + ",";
  size_t n = 0;
  for (size_t at = log.find("meshcap init of pid "); at != std::string::npos;
       at = log.find("meshcap init of pid ", at + 1))
    if (const size_t a = log.find(" answered", at); a != std::string::npos && log.compare(a, tail.size(), tail) == 0)
      n++;
  return n;
}

// With the node's agent running (`meshcap node serve`), `meshcap init`
// hands the command to it and prints its answer: the same capture, the same
// log lines and exit codes, bad input refused with nothing changed, a pod
// with processes outside the node's cgroup found (by the agent's task
// iterator) and put on iptables. What depends on the caller's process runs
// there: --dry-run, MESHCAP_NO_AGENT, and everything once the agent stops.
TEST_F(Node, InitIsAnsweredByTheNodesAgentWithTheSameResult) {
  TestNodeAgent agent(*node_, MESHCAP_BIN);
  ASSERT_TRUE(agent.listening()) << agent.log();
  EXPECT_EQ(agent.log().find("walking /proc"), std::string::npos) << agent.log();
  NodePod a(*node_), b(*node_);
  auto r = init(a);
  ASSERT_EQ(r.exit_code, 0) << r.output << agent.log();
  EXPECT_NE(r.output.find("info pod " + a.name() + ": outbound by ebpf, inbound by ebpf"), std::string::npos)
      << r.output;
  EXPECT_EQ(answered(agent, 0), 1u) << agent.log();
  EXPECT_EQ(node_status()["pods_enrolled"], 1);
  EXPECT_EQ(status(a)["parts"]["outbound"]["engine"], "ebpf");
  expect_captured(a);

  // Bad input: one line naming the value, exit 2, nothing changed.
  r = init(b, {"-p", "99999"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(r.output, "error -p: invalid value '99999': port out of range (1-65535)\n");
  EXPECT_EQ(answered(agent, 2), 1u) << agent.log();
  EXPECT_EQ(node_status()["pods_enrolled"], 1);
  EXPECT_FALSE(std::filesystem::exists(node_->state_dir() + "/pods/" + b.name() + ".json"));
  expect_direct(b);

  // --dry-run and MESHCAP_NO_AGENT run in the caller's process.
  const size_t before = answered(agent);
  r = node_->meshcap({"init", "--dry-run", "--name", b.name(), "--netns", b.pod.pod_netns_path(), "-i", "*"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(node_status()["pods_enrolled"], 1);
  r = init(b, kIstioInit, "auto", {"MESHCAP_NO_AGENT=1"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(answered(agent), before) << agent.log();
  expect_captured(b);

  // A process of the pod's namespace outside the node's cgroup.
  NodePod stray{TestPod::Options{}};
  r = init(stray, kIstioInit, "ebpf");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("outside it (pid "), std::string::npos) << r.output;
  EXPECT_EQ(answered(agent, 1), 1u) << agent.log();
  r = init(stray);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("outbound by iptables, inbound by iptables"), std::string::npos) << r.output;
  EXPECT_EQ(answered(agent, 0), 2u) << agent.log();
  expect_captured(stray);
  EXPECT_EQ(node_status()["pods_enrolled"], 2);

  for (NodePod* p : {&a, &b, &stray}) {
    ASSERT_EQ(node_->meshcap({"cleanup", "--name", p->name()}).exit_code, 0);
    expect_direct(*p);
  }
  // Once the agent stops (its socket gone), init does the work itself.
  agent.stop();
  EXPECT_FALSE(std::filesystem::exists(agent.socket_path()));
  r = init(a);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_captured(a);
  ASSERT_EQ(node_->meshcap({"cleanup", "--name", a.name()}).exit_code, 0);
}

// The agent keeps what it read of the node between requests (its record,
// its links open, its pod tables open: host.h, keep_node_open). A node
// start in place with other sizes replaces every map: the next pod the
// agent enrolls must land in the new ones (captured for real), not in the
// maps it held. A start refused before it changed anything (a smaller
// table) leaves the node to enrol as before. A node link detached behind
// its back: the next request sees it and enrolls nothing into a node that
// is not whole.
TEST_F(Node, TheAgentKeepsTheNodeOpenAndSeesItChange) {
  TestNodeAgent agent(*node_, MESHCAP_BIN);
  ASSERT_TRUE(agent.listening()) << agent.log();
  NodePod a(*node_), b(*node_), c(*node_), d(*node_);
  // The agent parses with one kept parser: a flag one request gave is not
  // left over for the next (b's plan and record carry no port 9999).
  std::vector<std::string> with_exclusion = kIstioInit;
  with_exclusion.insert(with_exclusion.end(), {"-o", "9999"});
  auto r = init(a, with_exclusion);
  ASSERT_EQ(r.exit_code, 0) << r.output << agent.log();
  EXPECT_EQ(answered(agent, 0), 1u) << agent.log();
  auto record = [&](const NodePod& p) {
    std::ifstream in(node_->state_dir() + "/pods/" + p.name() + ".json");
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  EXPECT_NE(record(a).find("9999"), std::string::npos) << record(a);
  expect_captured(a);

  auto pods_map_id = [&] {
    const int fd = bpf_obj_get((node_->pin_dir() + "/node/map_pods").c_str());
    bpf_map_info info{};
    __u32 len = sizeof(info);
    const bool ok = fd >= 0 && bpf_obj_get_info_by_fd(fd, &info, &len) == 0;
    if (fd >= 0) close(fd);
    return ok ? info.id : 0u;
  };
  const uint32_t before = pods_map_id();
  ASSERT_NE(before, 0u);
  auto up = node_->start({"--max-pods", "512", "--max-connections", "32768"});
  ASSERT_EQ(up.exit_code, 0) << up.output;
  EXPECT_EQ(node_status()["spec"]["max_pods"], 512);
  ASSERT_NE(pods_map_id(), before) << "the pods map was not replaced: the test would show nothing";
  r = init(b);
  ASSERT_EQ(r.exit_code, 0) << r.output << agent.log();
  EXPECT_EQ(answered(agent, 0), 2u) << agent.log();
  EXPECT_NE(r.output.find("outbound by ebpf, inbound by ebpf"), std::string::npos) << r.output;
  EXPECT_EQ(node_status()["pods_enrolled"], 2);
  ASSERT_NE(record(b).find(b.name()), std::string::npos) << record(b);
  EXPECT_EQ(record(b).find("9999"), std::string::npos) << record(b);
  expect_captured(b);
  expect_captured(a);

  // A smaller table is not made in place: refused, and having changed
  // nothing it leaves no upgrade marked as interrupted (pods go on
  // enrolling by eBPF).
  auto down = node_->start({"--max-pods", "256"});
  EXPECT_NE(down.exit_code, 0) << down.output;
  EXPECT_NE(down.output.find("not done in place"), std::string::npos) << down.output;
  EXPECT_FALSE(std::filesystem::exists(node_->state_dir() + "/node.upgrading"));
  EXPECT_EQ(node_status()["spec"]["max_pods"], 512);
  r = init(d);
  ASSERT_EQ(r.exit_code, 0) << r.output << agent.log();
  EXPECT_NE(r.output.find("outbound by ebpf, inbound by ebpf"), std::string::npos) << r.output;
  expect_captured(d);

  // A link of the node detached by hand (its pin stays).
  const int link = bpf_obj_get((node_->pin_dir() + "/node/link_connect4").c_str());
  ASSERT_GE(link, 0) << std::strerror(errno);
  ASSERT_EQ(bpf_link_detach(link), 0) << std::strerror(errno);
  close(link);
  r = init(c);
  ASSERT_EQ(r.exit_code, 0) << r.output << agent.log();
  EXPECT_EQ(answered(agent, 0), 4u) << agent.log();
  EXPECT_NE(r.output.find("not whole"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("outbound by iptables, inbound by iptables"), std::string::npos) << r.output;
  EXPECT_EQ(status(c)["parts"]["outbound"]["engine"], "iptables");
  for (NodePod* p : {&a, &b, &c, &d}) node_->meshcap({"cleanup", "--name", p->name()});
}

// Pods enrolled through the agent while the node is replaced in place
// again and again with other sizes (every map copied into new ones each
// time): each `meshcap init` that exits 0 has its pod in the maps the node
// runs with, never in maps a start replaced meanwhile (the agent takes
// the pod tables it keeps under the node lock, by the record's version).
TEST_F(Node, TheAgentEnrolsIntoTheCurrentMapsWhileTheNodeIsReplaced) {
  TestNodeAgent agent(*node_, MESHCAP_BIN);
  ASSERT_TRUE(agent.listening()) << agent.log();
  std::vector<std::unique_ptr<NodePod>> pods;
  for (int i = 0; i < 3; i++) pods.push_back(std::make_unique<NodePod>(*node_));
  std::atomic<bool> starting{true}, enrolling{false};
  std::vector<std::string> failed_starts;
  std::thread starts([&] {
    while (!enrolling) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    for (int k = 1; k <= 4; k++) {
      auto r = node_->start({"--max-pods", std::to_string(256 + 128 * k), "--max-connections",
                             std::to_string(16384 + 8192 * k)});
      if (r.exit_code != 0) failed_starts.push_back(r.output);
    }
    starting = false;
  });
  // Each pod enrolled afresh (cleanup, then init) while the starts run,
  // then once more after the last one.
  size_t inits = 0;
  for (bool last = false; !last;) {
    last = !starting;
    for (auto& p : pods) {
      enrolling = true;  // the starts begin with the first enrolment
      ASSERT_EQ(node_->meshcap({"cleanup", "--name", p->name()}).exit_code, 0);
      auto r = init(*p);
      ASSERT_EQ(r.exit_code, 0) << r.output << agent.log();
      inits++;
    }
  }
  starts.join();
  EXPECT_TRUE(failed_starts.empty()) << (failed_starts.empty() ? "" : failed_starts.front());
  EXPECT_EQ(answered(agent, 0), inits) << agent.log();
  EXPECT_EQ(node_status()["spec"]["max_pods"], 768);
  EXPECT_EQ(node_status()["pods_enrolled"], pods.size());
  for (auto& p : pods) {
    EXPECT_EQ(status(*p)["parts"]["outbound"]["in_place"], true) << status(*p).dump();
    expect_captured(*p);
  }
  for (auto& p : pods) node_->meshcap({"cleanup", "--name", p->name()});
}

// The hand-over runs before the C++ runtime can unwind an exception, on
// x86-64 before the C library has even started (agent/start.cpp): whatever
// an agent answers, `meshcap init` prints it or says what was wrong, and
// never aborts; an init sent back ("local") runs in its own process and asks
// no second time. The agent here is a stand-in that answers each connection
// with the next canned text, and looks at the caller while it waits: on
// x86-64 it has no heap yet (the C library's start-up makes one for its
// thread-local storage before anything else).
TEST_F(Node, InitsHandOverSaysWhatIsWrongWithAnAnswerAndNeverAborts) {
  const std::string magic("meshcap-init/1\0", 15);  // cni/init_handover.h
  const std::vector<std::string> answers = {
      R"({"exit_code":0,"stderr":""})", magic + std::string("maybe\0", 6),
      magic + std::string("exit\0" "0\0" "10\0", 10) + "abc",
      magic + std::string("exit\0" "7\0" "4\0", 9) + "out\nerror from the agent\n", magic + std::string("local\0", 6)};
  const std::string path = node_->state_dir() + "/cni.sock";
  std::filesystem::create_directories(node_->state_dir());
  const UniqueFd listening = listen_unix(path);
  const int listener = listening.get();
  std::atomic<size_t> served{0};
  std::vector<std::string> heaps;  // per request: the caller's [heap] line, or "" (none)
  std::thread agent([&] {
    for (const auto& answer : answers) {
      const int c = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) return;
      heaps.push_back(peer_heap(c));
      char buf[4096];
      while (::read(c, buf, sizeof buf) > 0) {
      }
      (void)!::write(c, answer.data(), answer.size());
      ::close(c);
      served++;
    }
  });
  const std::string netns = "/run/netns/meshcap-none-" + std::to_string(getpid());
  auto run = [&] { return node_->meshcap({"init", "--name", "handover", "--netns", netns, "-i", "*"}); };
  for (const char* malformed : {"not meshcap-init/1", "neither local nor exit", "it ends before its stdout"}) {
    const auto r = run();
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find(std::string("did not answer (malformed answer (") + malformed + "))"), std::string::npos)
        << r.output;
  }
  auto r = run();
  EXPECT_EQ(r.exit_code, 7) << r.output;
  // stdout and stderr as the agent gave them (in one pipe here, in no set order).
  EXPECT_TRUE(r.output == "out\nerror from the agent\n" || r.output == "error from the agent\nout\n") << r.output;
  r = run();  // "local": the command runs here, and names the missing namespace
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find(netns), std::string::npos) << r.output;
  ::shutdown(listener, SHUT_RDWR);
  agent.join();
  std::filesystem::remove(path);
  EXPECT_EQ(served.load(), answers.size());
#if defined(__x86_64__)
  for (const auto& heap : heaps) EXPECT_EQ(heap, "") << "the caller's C library had started";
#endif
}

// A process of an enrolled pod that sits outside the node's cgroup is not
// captured; status says so instead of "drift: none".
TEST_F(Node, StatusReportsProcessesOutsideTheDataPathsCgroup) {
  ASSERT_EQ(node_->start().exit_code, 0);
  TestPod::Options o;  // a pod whose cgroup is NOT below the node's
  TestPod outside(o);
  auto r = node_->meshcap({"init", "--name", "x" + outside.suffix(), "--netns", outside.pod_netns_path(), "-i", "*"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  RecordingListener l(Placement::pod_process(outside, Identity::proxy()), "127.0.0.1", 15001);
  pid_t holder = outside.spawn_in_pod({"sleep", "30"});
  (void)holder;
  auto s = node_->meshcap({"status", "--name", "x" + outside.suffix(), "--json"});
  EXPECT_NE(s.output.find("outside the cgroup"), std::string::npos) << s.output;
  node_->meshcap({"cleanup", "--name", "x" + outside.suffix()});
}

}  // namespace
}  // namespace meshcap::test
