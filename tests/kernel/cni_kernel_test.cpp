// meshcap-cni as a runtime calls it: the real binary, CNI_* in its
// environment, the network configuration on stdin, JSON on stdout, against
// throwaway pods under a throwaway node (its own cgroup, pin and state
// directories). ADD captures (enrolled in a running node data path, istio's
// rules in the pod's namespace otherwise), DEL removes it, CHECK sees it,
// and every refusal changes nothing.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "agent_client.h"
#include "init_handover.h"
#include "capture_fixture.h"
#include "support/cleanup.h"
#include "support/test_node.h"

namespace meshcap::test {
namespace {

using nlohmann::json;

struct CniResult {
  int exit_code = -1;
  std::string out, err;
};

class Cni : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root: creates namespaces and cgroups and loads BPF";
    node_ = std::make_unique<TestNode>(MESHCAP_BIN);
    TestPod::Options o;
    o.cgroup_parent = node_->cgroup_path();
    pod_ = std::make_unique<TestPod>(o);
    out4_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "0.0.0.0", 15001);
    in4_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "0.0.0.0", 15006);
    peer_ = std::make_unique<RecordingListener>(Placement::peer_thread(*pod_), pod_->peer_ipv4(), 8080);
    app_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::user(1000, 1000)), "0.0.0.0",
                                               8080);
  }
  void TearDown() override {
    if (pod_) cni("DEL", config());
    out4_.reset(), in4_.reset(), peer_.reset(), app_.reset();
    pod_.reset();
    node_.reset();
  }

  json config(const json& extra = json::object()) const {
    json j = {{"cniVersion", "1.0.0"},
              {"name", "pods"},
              {"type", "meshcap-cni"},
              {"prevResult", {{"cniVersion", "1.0.0"}, {"interfaces", {{{"name", "eth0"}}}}, {"ips", json::array()}}}};
    j.update(extra);
    return j;
  }

  /// Runs meshcap-cni once; `netns` "" leaves CNI_NETNS out.
  CniResult cni(const std::string& command, const json& conf, std::optional<std::string> netns = std::nullopt,
                const std::string& args = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart") {
    std::vector<std::string> env = node_->env();
    env.push_back("CNI_COMMAND=" + command);
    env.push_back("CNI_CONTAINERID=ctr" + pod_->suffix());
    env.push_back("CNI_IFNAME=eth0");
    env.push_back("CNI_PATH=/usr/lib/cni");
    env.push_back("CNI_ARGS=" + args);
    const std::string ns = netns.value_or(pod_->pod_netns_path());
    if (!ns.empty()) env.push_back("CNI_NETNS=" + ns);
    return spawn({MESHCAP_CNI_BIN}, env, conf.dump());
  }

  static CniResult spawn(std::vector<std::string> argv, std::vector<std::string> env, const std::string& in) {
    int pin[2], pout[2], perr[2];
    if (pipe2(pin, O_CLOEXEC) || pipe2(pout, O_CLOEXEC) || pipe2(perr, O_CLOEXEC)) return {};
    const pid_t pid = fork();
    if (pid == 0) {
      dup2(pin[0], 0), dup2(pout[1], 1), dup2(perr[1], 2);
      std::vector<char*> a, e;
      for (auto& s : argv) a.push_back(s.data());
      for (auto& s : env) e.push_back(s.data());
      a.push_back(nullptr), e.push_back(nullptr);
      execve(a[0], a.data(), e.data());
      _exit(127);
    }
    close(pin[0]), close(pout[1]), close(perr[1]);
    (void)!write(pin[1], in.data(), in.size());
    close(pin[1]);
    CniResult r;
    auto drain = [](int fd, std::string& to) {
      char buf[4096];
      ssize_t n;
      while ((n = read(fd, buf, sizeof buf)) > 0) to.append(buf, static_cast<size_t>(n));
      close(fd);
    };
    drain(pout[0], r.out);
    drain(perr[0], r.err);
    int status = 0;
    waitpid(pid, &status, 0);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return r;
  }

  std::string pod_name() const { return "cni-ctr" + pod_->suffix(); }
  json status() {
    auto r = node_->meshcap({"status", "--json"});
    const json all = json::parse(r.output.substr(r.output.find('[')));
    for (const auto& p : all)
      if (p["name"] == pod_name()) return p;
    return json();
  }
  size_t enrolled() {
    auto r = node_->meshcap({"node", "status", "--json"});
    return json::parse(r.output.substr(r.output.find('{')))["pods_enrolled"].get<size_t>();
  }
  void expect_captured() {
    size_t o = out4_->accepted(), i = in4_->accepted();
    EXPECT_TRUE(roundtrip_in_pod(*pod_, pod_->peer_ipv4(), 8080, Identity::user(1000, 1000)).ok());
    EXPECT_ACCEPTS(out4_->accepted(), o + 1);
    EXPECT_TRUE(roundtrip_in_peer(*pod_, pod_->pod_ipv4(), 8080).ok());
    EXPECT_ACCEPTS(in4_->accepted(), i + 1);
  }
  void expect_direct() {
    size_t o = out4_->accepted(), i = in4_->accepted(), peer = peer_->accepted(), app = app_->accepted();
    EXPECT_TRUE(roundtrip_in_pod(*pod_, pod_->peer_ipv4(), 8080, Identity::user(1000, 1000)).ok());
    EXPECT_TRUE(roundtrip_in_peer(*pod_, pod_->pod_ipv4(), 8080).ok());
    EXPECT_ACCEPTS(peer_->accepted(), peer + 1);
    EXPECT_ACCEPTS(app_->accepted(), app + 1);
    EXPECT_EQ(out4_->accepted(), o);
    EXPECT_EQ(in4_->accepted(), i);
  }
  static int code(const CniResult& r) { return json::parse(r.out).value("code", 0); }

  std::unique_ptr<TestNode> node_;
  std::unique_ptr<TestPod> pod_;
  std::unique_ptr<RecordingListener> out4_, in4_, peer_, app_;
};

TEST_F(Cni, AddWithoutANodeAppliesIstiosRulesInThePodsNamespace) {
  const json conf = config();
  auto r = cni("ADD", conf);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(json::parse(r.out), conf["prevResult"]);  // passed through unchanged
  const json st = status();
  ASSERT_FALSE(st.is_null());
  EXPECT_EQ(st["parts"]["outbound"]["engine"], "iptables") << st.dump();
  EXPECT_TRUE(st["drift"].empty()) << st.dump();
  expect_captured();
  r = cni("CHECK", conf);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  r = cni("DEL", conf);
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(status().is_null());
  expect_direct();
  // DEL again, and without a namespace: nothing to do, success.
  EXPECT_EQ(cni("DEL", conf).exit_code, 0);
  EXPECT_EQ(cni("DEL", conf, "").exit_code, 0);
  // CHECK of a pod that is not captured is an error.
  r = cni("CHECK", conf);
  EXPECT_NE(r.exit_code, 0);
}

TEST_F(Cni, AddIntoARunningNodeEnrolsAndDelTakesItOut) {
  ASSERT_EQ(node_->start().exit_code, 0);
  const json conf = config();
  auto r = cni("ADD", conf);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(enrolled(), 1u);
  const json st = status();
  EXPECT_EQ(st["ebpf"]["host"], "node") << st.dump();
  expect_captured();
  EXPECT_EQ(cni("CHECK", conf).exit_code, 0);
  // The runtime forgets the namespace before DEL: the container ID is enough.
  r = cni("DEL", conf, "");
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(enrolled(), 0u);
  expect_direct();
}

// With the node's agent running, meshcap-cni hands every command to it (the
// agent's log has the pod's plan, the plugin's stderr has nothing), bad
// input gets the same error from it, and once the agent stops (its socket
// gone) the plugin does the work itself.
TEST_F(Cni, TheAgentAnswersWhileItRunsAndThePluginWorksAloneAfter) {
  TestNodeAgent agent(*node_, MESHCAP_BIN);
  ASSERT_TRUE(agent.listening()) << agent.log();
  const json conf = config();
  auto r = cni("ADD", conf);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err << agent.log();
  EXPECT_EQ(json::parse(r.out), conf["prevResult"]);
  EXPECT_EQ(r.err, "");
  EXPECT_NE(agent.log().find("pod " + pod_name() + ": outbound by ebpf, inbound by ebpf"), std::string::npos)
      << agent.log();
  EXPECT_EQ(enrolled(), 1u);
  expect_captured();
  EXPECT_EQ(cni("CHECK", conf).exit_code, 0);

  r = cni("ADD", config({{"envoy-port", "notaport"}}));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(code(r), 7) << r.out;
  EXPECT_EQ(enrolled(), 1u);

  r = cni("DEL", conf, "");
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(enrolled(), 0u);
  expect_direct();

  agent.stop();
  EXPECT_FALSE(std::filesystem::exists(agent.socket_path()));
  r = cni("ADD", conf);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.err.find("pod " + pod_name() + ": outbound by ebpf, inbound by ebpf"), std::string::npos) << r.err;
  EXPECT_EQ(enrolled(), 1u);
  expect_captured();
}

TEST_F(Cni, CheckFindsAnEnrolmentRemovedBehindItsBack) {
  ASSERT_EQ(node_->start().exit_code, 0);
  ASSERT_EQ(cni("ADD", config()).exit_code, 0);
  // The pod's capture is removed behind the runtime's back: CHECK fails.
  ASSERT_EQ(node_->meshcap({"cleanup", "--name", pod_name()}).exit_code, 0);
  auto r = cni("CHECK", config());
  EXPECT_NE(r.exit_code, 0) << r.out;
}

TEST_F(Cni, ANodeThatIsNotWholeIsTryAgainLaterAndNothingChanges) {
  ASSERT_EQ(node_->start().exit_code, 0);
  // An upgrade interrupted by a process that is gone.
  const pid_t dead = fork();
  if (dead == 0) _exit(0);
  waitpid(dead, nullptr, 0);
  std::ofstream(node_->state_dir() + "/node.upgrading") << dead << "\n";
  auto r = cni("ADD", config());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(code(r), 11) << r.out;
  EXPECT_EQ(enrolled(), 0u);
  EXPECT_TRUE(status().is_null());
  expect_direct();
  std::remove((node_->state_dir() + "/node.upgrading").c_str());
  // STATUS says the same thing while it lasts, and ready once repaired.
  EXPECT_EQ(cni("STATUS", config()).exit_code, 0);
}

TEST_F(Cni, BadInputIsAnErrorAndChangesNothing) {
  struct Case {
    std::string what;
    json conf;
    std::optional<std::string> netns;
    int code;
  };
  const std::vector<Case> cases = {
      {"bad port", config({{"envoy-port", "notaport"}}), std::nullopt, 7},
      {"unknown key", config({{"envoy-prot", "15001"}}), std::nullopt, 7},
      {"bad cidr", config({{"istio-service-cidr", "10.0.0.0/40"}}), std::nullopt, 7},
      {"version", config({{"cniVersion", "7.0.0"}}), std::nullopt, 1},
      {"no namespace", config(), "", 4},
  };
  for (const auto& c : cases) {
    auto r = cni("ADD", c.conf, c.netns);
    EXPECT_NE(r.exit_code, 0) << c.what;
    EXPECT_EQ(code(r), c.code) << c.what << ": " << r.out;
    EXPECT_TRUE(status().is_null()) << c.what;
  }
  auto r = cni("ADD", config(), "/run/netns/meshcap-no-such-namespace");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(code(r), 0) << r.out;
  EXPECT_TRUE(status().is_null());
  r = spawn({MESHCAP_CNI_BIN}, {"CNI_COMMAND=ADD"}, "{not json");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(json::accept(r.out)) << "stdout must hold only the error JSON: " << r.out;
  expect_direct();
}

// meshcap-cni hands its command over from its entry point, before its C
// library starts (cni/shim_start.cpp). A stand-in agent answers each
// connection with the next canned text and looks at what came and at the
// caller while it waits: the CNI_* variables and the configuration whole
// (large enough to need more than its first pages), and, on x86-64, no heap
// yet (the C library's start-up makes one first thing). The answer is
// printed as given; a cut one is a CNI error (code 11) on stdout; "local"
// runs meshcap-cni-local with the same configuration on its stdin.
TEST_F(Cni, ThePluginHandsOverFromItsEntryPoint) {
  const std::string magic(cni::kCniMagic, sizeof cni::kCniMagic);
  const std::string printed = R"({"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[]})";
  const std::vector<std::string> answers = {magic + "exit" + '\0' + "0" + '\0' + std::to_string(printed.size()) + '\0' + printed,
                                            magic + "exit" + '\0' + "0" + '\0' + "10" + '\0' + "cut",
                                            magic + "local" + '\0'};
  const std::string path = node_->state_dir() + "/cni.sock";
  std::filesystem::create_directories(node_->state_dir());
  const UniqueFd listening = listen_unix(path);
  const int listener = listening.get();
  struct Seen {
    std::optional<cni::CniRequest> request;
    std::string heap;
  };
  std::vector<Seen> seen;
  std::thread agent([&] {
    for (const auto& answer : answers) {
      const int c = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) return;
      Seen s;
      s.heap = peer_heap(c);
      std::string text;
      cni::read_message(c, text, 5000);
      s.request = cni::parse_cni_request(text);
      seen.push_back(s);
      cni::write_message(c, answer);
      ::close(c);
    }
  });
  const json big = config({{"pad", std::string(200'000, 'p')}});
  std::vector<CniResult> r;
  for (const json& conf : {big, config(), config({{"envoy-port", "notaport"}})}) r.push_back(cni("ADD", conf));
  ::shutdown(listener, SHUT_RDWR);
  agent.join();
  std::filesystem::remove(path);
  const auto error_code = [](const CniResult& c) {
    const json j = json::parse(c.out, nullptr, false);
    return j.is_object() ? j.value("code", 0) : -1;
  };
  EXPECT_EQ(r[0].exit_code, 0) << r[0].out << r[0].err;
  EXPECT_EQ(r[0].out, printed);
  EXPECT_EQ(r[1].exit_code, 1) << r[1].out << r[1].err;
  EXPECT_EQ(error_code(r[1]), 11) << r[1].out;
  // "local": meshcap-cni-local reads the same configuration and refuses it
  EXPECT_NE(r[2].exit_code, 0) << r[2].out << r[2].err;
  EXPECT_NE(r[2].out.find("notaport"), std::string::npos) << r[2].out << r[2].err;
  ASSERT_EQ(seen.size(), answers.size());
  ASSERT_TRUE(seen[0].request.has_value());
  EXPECT_EQ(seen[0].request->stdin_text, big.dump());
  EXPECT_EQ(seen[0].request->env.at("CNI_COMMAND"), "ADD");
  EXPECT_EQ(seen[0].request->env.at("CNI_NETNS"), pod_->pod_netns_path());
  EXPECT_EQ(seen[0].request->env.count("MESHCAP_STATE_DIR"), 0u);
#if defined(__x86_64__)
  for (const auto& s : seen) EXPECT_EQ(s.heap, "") << "the plugin's C library had started";
#endif
  EXPECT_TRUE(status().is_null());
}

TEST_F(Cni, ExcludedPodsStartUncapturedOnPurpose) {
  auto r = cni("ADD", config({{"exclude-namespaces", {"kube-system", "shop"}}}));
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_TRUE(status().is_null());
  expect_direct();
}

}  // namespace
}  // namespace meshcap::test
