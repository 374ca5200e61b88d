// The meshcap command for real on throwaway pods: auto, ebpf and iptables
// modes, the capability-dropped fallback run from inside the pod, the
// istio-iptables drop-in, validation, status and drift, stale cleanup, and a
// corpus of bad input that must change nothing; and pods whose namespace is
// gone, never taken for a later namespace given the same inode number.
#include <bpf/bpf.h>
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "capture_fixture.h"
#include "pod_netns.h"
#include "support/netns.h"

namespace meshcap::test {
namespace {

using nlohmann::json;

const std::vector<std::string> kIstioInit = {"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i",
                                             "*",  "-x", "",      "-b", "*",     "-d", "15090,15021,15020"};

class Agent : public CaptureTest {
 protected:
  void SetUp() override {
    CaptureTest::SetUp();
    if (IsSkipped()) return;
    out4_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "127.0.0.1", 15001);
    peer_ = std::make_unique<RecordingListener>(Placement::peer_thread(*pod_), pod_->peer_ipv4(), 8080);
  }

  CommandResult init(const std::string& mode, std::vector<std::string> flags) {
    std::vector<std::string> args = {"init",  "--mode",   mode, "--name", name_, "--cgroup", pod_->cgroup_path(),
                                     "--netns", pod_->pod_netns_path()};
    args.insert(args.end(), flags.begin(), flags.end());
    return meshcap(args);
  }

  /// `<save>` run inside the pod's network namespace.
  std::string pod_save(const std::string& save = "iptables-save") {
    return run_command({"nsenter", "--net=" + pod_->pod_netns_path(), save}).output;
  }
  size_t istio_lines(const std::string& save = "iptables-save") {
    std::string s = pod_save(save);
    size_t n = 0;
    for (size_t p = s.find("ISTIO_"); p != std::string::npos; p = s.find("ISTIO_", p + 1)) n++;
    return n;
  }
  /// Everything the kernel holds of meshcap for this pod: iptables of both
  /// backends and families, cgroup and netns programs, pins.
  std::string kernel_state() {
    std::string s;
    for (const char* save : {"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"}) {
      std::string out = pod_save(save);
      std::string kept;
      std::istringstream in(out);
      for (std::string line; std::getline(in, line);)
        if (!line.empty() && line[0] != '#') kept += line + "\n";  // drop the timestamped comments
      s += kept;
    }
    s += "programs " + std::to_string(programs_attached(pod_->cgroup_path()));
    s += " pins " + std::to_string(loader::pinned_state(name_).present);
    return s;
  }
  json status_json() {
    auto r = run_command({MESHCAP_BIN, "status", "--name", name_, "--json"});
    return json::parse(r.output.substr(r.output.find('[')));
  }
  /// Runs argv inside the pod (its cgroup and netns) as root, optionally
  /// with only the given capabilities (setpriv), and returns the exit code.
  int run_in_pod_cmd(std::vector<std::string> argv, const std::string& caps = "") {
    if (!caps.empty())
      argv.insert(argv.begin(), {"setpriv", "--bounding-set=-all," + caps, "--inh-caps=-all", "--"});
    return pod_->run_in_pod([argv] {
      std::vector<char*> a;
      for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
      a.push_back(nullptr);
      auto bin = find_binary(argv[0]).value_or(argv[0]);
      execv(bin.c_str(), a.data());
      return 127;
    });
  }

  std::unique_ptr<RecordingListener> out4_, peer_;
};

TEST_F(Agent, AutoModeUsesEbpfWhereItCan) {
  auto r = init("auto", {"-i", "*"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto st = status_json().at(0);
  EXPECT_EQ(st["plan"]["outbound"]["engine"], "ebpf");
  EXPECT_EQ(programs_attached(pod_->cgroup_path()), kCapturePrograms);
  EXPECT_EQ(istio_lines(), 0u);
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(out4_->accepted(), 1);
  EXPECT_EQ(status_json().at(0)["ebpf"]["counters"]["redirected_outbound"], 1);
}

TEST_F(Agent, IptablesModeForRealWithBothBackends) {
  for (const std::string backend : {"nft", "legacy"}) {
    SCOPED_TRACE(backend);
    auto r = init("iptables", {"-i", "*", "--force-iptables-binary", backend});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_GT(istio_lines("iptables-" + backend + "-save"), 10u);
    EXPECT_EQ(programs_attached(pod_->cgroup_path()), 0u);
    size_t before = out4_->accepted();
    RoundTrip rt = app_roundtrip(pod_->peer_ipv4(), 8080);
    EXPECT_TRUE(rt.ok());
    ASSERT_TRUE(out4_->wait_for_accepts(before + 1));
    auto rec = out4_->records().back();
    EXPECT_TRUE(rec.original_dst.ok);  // from conntrack
    EXPECT_EQ(rec.original_dst.address, endpoint(pod_->peer_ipv4(), 8080));
    auto st = status_json().at(0);
    EXPECT_EQ(st["plan"]["outbound"]["engine"], "iptables");
    EXPECT_TRUE(st["drift"].empty()) << st.dump();
    ASSERT_EQ(meshcap({"cleanup", "--name", name_}).exit_code, 0);
    EXPECT_EQ(istio_lines("iptables-" + backend + "-save"), 0u);
  }
}

TEST_F(Agent, AutoModeSplitsDirectionsWhenInboundNeedsIptables) {
  // TPROXY and --drop-invalid are iptables-only: inbound goes to iptables,
  // outbound stays eBPF.
  auto r = init("auto", {"-i", "*", "-b", "*", "-m", "TPROXY", "--drop-invalid"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto st = status_json().at(0);
  EXPECT_EQ(st["plan"]["outbound"]["engine"], "ebpf");
  EXPECT_EQ(st["plan"]["inbound"]["engine"], "iptables");
  EXPECT_EQ(programs_attached(pod_->cgroup_path()), kCapturePrograms);
  std::string mangle = run_command({"nsenter", "--net=" + pod_->pod_netns_path(), "iptables-save", "-t", "mangle"}).output;
  EXPECT_NE(mangle.find("ISTIO_TPROXY"), std::string::npos);
  EXPECT_NE(mangle.find("ISTIO_DROP"), std::string::npos);
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(out4_->accepted(), 1);
  EXPECT_EQ(status_json().at(0)["ebpf"]["counters"]["redirected_outbound"], 1);
}

TEST_F(Agent, SwitchingModesReplacesTheOldCapture) {
  ASSERT_EQ(init("iptables", {"-i", "*"}).exit_code, 0);
  EXPECT_GT(istio_lines(), 0u);
  ASSERT_EQ(init("ebpf", {"-i", "*"}).exit_code, 0);
  EXPECT_EQ(istio_lines(), 0u);
  EXPECT_EQ(programs_attached(pod_->cgroup_path()), kCapturePrograms);
  ASSERT_EQ(init("iptables", {"-i", "*"}).exit_code, 0);
  EXPECT_EQ(programs_attached(pod_->cgroup_path()), 0u);
  EXPECT_GT(istio_lines(), 0u);
}

TEST_F(Agent, WithoutBpfPrivilegeFromInsideThePodFallsBackToIptables) {
  // As an istio-init container runs: inside the pod, CAP_NET_ADMIN and
  // CAP_NET_RAW only, everything defaulted (cgroup, netns).
  std::vector<std::string> argv = {MESHCAP_BIN, "init", "--name", name_};
  argv.insert(argv.end(), kIstioInit.begin(), kIstioInit.end());
  EXPECT_EQ(run_in_pod_cmd(argv, "+net_admin,+net_raw"), 0);
  EXPECT_GT(istio_lines(), 10u);
  EXPECT_EQ(programs_attached(pod_->cgroup_path()), 0u);
  auto st = status_json().at(0);
  EXPECT_EQ(st["plan"]["outbound"]["engine"], "iptables");
  EXPECT_NE(st["plan"]["outbound"]["reasons"].dump().find("CAP_BPF"), std::string::npos) << st.dump();
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(out4_->accepted(), 1);
}

TEST_F(Agent, IstioIptablesDropIn) {
  const std::string drop_in = std::filesystem::path(MESHCAP_BIN).parent_path() / "istio-iptables";
  // istio-init's exact arguments, inside the pod, full privileges. With no
  // cgroup named for the pod and no node data path, eBPF has nowhere to
  // attach that would reach the application (istio-init's own cgroup goes
  // away with it): iptables, and it says why.
  std::vector<std::string> argv = {drop_in};
  argv.insert(argv.end(), kIstioInit.begin(), kIstioInit.end());
  EXPECT_EQ(run_in_pod_cmd(argv), 0);
  EXPECT_EQ(programs_attached(pod_->cgroup_path()), 0u);
  EXPECT_GT(istio_lines(), 10u);
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(out4_->accepted(), 1);
  // istio's exit code for bad input is 1.
  EXPECT_EQ(run_in_pod_cmd({drop_in, "-p", "not-a-port"}), 1);
  // Its dry run prints istio's payload.
  auto dry = run_command({drop_in, "-n", "-b", "32000,31000"});
  EXPECT_EQ(dry.exit_code, 0);
  EXPECT_NE(dry.output.find("-A ISTIO_INBOUND -p tcp --dport 32000 -j ISTIO_IN_REDIRECT"), std::string::npos);
  // Clean up what the derived name holds (this test process's own state
  // directory: tests/support/common.cpp).
  for (const auto& e : std::filesystem::directory_iterator(std::string(std::getenv("MESHCAP_STATE_DIR")) + "/pods")) {
    std::string f = e.path().filename();
    const json st = json::parse(read_text_file(e.path()));
    struct stat ns {};
    stat(pod_->pod_netns_path().c_str(), &ns);
    if (st["netns"].value("ino", uint64_t{0}) == ns.st_ino)
      meshcap({"cleanup", "--name", f.substr(0, f.size() - 5)});
  }
  EXPECT_EQ(istio_lines(), 0u);
}

// The probe tells the truth: a part it plans on eBPF is not refused by the
// kernel when init really loads the programs (no run-time fallback), for
// istio-init's flags and for flags that need more of the kernel (-c, -k,
// --accelerate).
// A pod's own data path takes the pod's whole exclusion list, far past the
// node's per-pod budget (1,024 per family), and still captures.
TEST_F(Agent, OwnDataPathTakesTenThousandExclusions) {
  const std::string list = "/tmp/meshcap-agent-x-" + std::to_string(getpid());
  {
    std::ofstream out(list);
    for (int i = 0; i < 10000; i++) out << (i ? "," : "") << "10." << 100 + i / 256 << "." << i % 256 << ".0/24";
  }
  auto r = init("ebpf", {"-i", "*", "-x", "@" + list});
  std::remove(list.c_str());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(status_json().at(0)["plan"]["outbound"]["engine"], "ebpf");
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(out4_->accepted(), 1);
}

TEST_F(Agent, ProbePlanIsWhatInitEndsWith) {
  const std::string veth = pod_->pod_veth();
  for (std::vector<std::string> extra : {std::vector<std::string>{}, {"-c", veth}, {"-k", veth}, {"-b", ""}}) {
    std::vector<std::string> flags = kIstioInit;
    flags.insert(flags.end(), extra.begin(), extra.end());
    std::vector<std::string> probe_args = {"probe", "--json", "--netns", pod_->pod_netns_path()};
    probe_args.insert(probe_args.end(), flags.begin(), flags.end());
    auto p = meshcap(probe_args);
    ASSERT_EQ(p.exit_code, 0) << p.output;
    // The document starts a line; libbpf's messages on older kernels (5.10)
    // may carry braces before it.
    const size_t at = p.output.rfind('{', 0) == 0 ? 0 : p.output.find("\n{") + 1;
    json plan = json::parse(p.output.substr(at))["plan"];
    auto r = init("auto", flags);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto st = status_json().at(0);
    for (const char* part : {"outbound", "inbound"}) {
      SCOPED_TRACE(std::string(part) + " with" + (extra.empty() ? std::string(" istio-init's flags") : " " + extra[0]));
      EXPECT_EQ(st["parts"][part]["engine"], plan[part]["engine"]) << st.dump() << "\nprobe: " << plan.dump();
      EXPECT_TRUE(st["parts"][part]["in_place"].get<bool>()) << st.dump();
      EXPECT_EQ(st["plan"][part]["reasons"].dump().find("failed at run time"), std::string::npos) << st.dump();
    }
  }
}

TEST_F(Agent, RunValidationPassesInBothModes) {
  out4_.reset();  // the validator listens on the proxy's ports itself
  for (const std::string mode : {"ebpf", "iptables"}) {
    SCOPED_TRACE(mode);
    auto r = init(mode, {"-i", "*", "--run-validation"});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("validation passed"), std::string::npos) << r.output;
  }
}

TEST_F(Agent, FailedValidationExits126AndRollsBack) {
  // The proxy's ports are taken (the listener below and out4_), so the
  // validator cannot listen: validation fails, capture is removed.
  RecordingListener in(Placement::pod_process(*pod_, Identity::proxy()), "127.0.0.1", 15006);
  std::string before = kernel_state();
  auto r = init("ebpf", {"-i", "*", "--run-validation"});
  EXPECT_EQ(r.exit_code, 126) << r.output;
  EXPECT_EQ(kernel_state(), before);
}

TEST_F(Agent, StatusReportsDrift) {
  ASSERT_EQ(init("ebpf", {"-i", "*"}).exit_code, 0);
  EXPECT_TRUE(status_json().at(0)["drift"].empty());
  // Someone detaches a link behind meshcap's back.
  int fd = bpf_obj_get((loader::pin_dir(name_) + "/link_connect4").c_str());
  ASSERT_GE(fd, 0);
  bpf_link_detach(fd);
  close(fd);
  EXPECT_NE(status_json().at(0)["drift"].dump().find("link_connect4 is detached"), std::string::npos);

  ASSERT_EQ(init("iptables", {"-i", "*"}).exit_code, 0);
  EXPECT_TRUE(status_json().at(0)["drift"].empty());
  run_command({"nsenter", "--net=" + pod_->pod_netns_path(), "iptables", "-t", "nat", "-D", "ISTIO_OUTPUT", "-d",
               "127.0.0.1/32", "-j", "RETURN"});
  EXPECT_NE(status_json().at(0)["drift"].dump().find("ISTIO_OUTPUT holds"), std::string::npos)
      << status_json().dump();
  auto prom = run_command({MESHCAP_BIN, "status", "--prometheus"});
  EXPECT_NE(prom.output.find("meshcap_drift{pod=\"" + name_ + "\"} 1"), std::string::npos) << prom.output;
}

TEST_F(Agent, AllStaleRemovesPodsWhoseCgroupIsGone) {
  const std::string sub = pod_->cgroup_path() + "/gone";
  ASSERT_EQ(mkdir(sub.c_str(), 0755), 0);
  auto r = meshcap({"init", "--mode", "ebpf", "--name", name_, "--cgroup", sub, "--netns", pod_->pod_netns_path(),
                    "-i", "*"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_EQ(rmdir(sub.c_str()), 0);  // the pod's cgroup is deleted under meshcap
  EXPECT_TRUE(loader::pinned_state(name_).present);
  r = meshcap({"cleanup", "--all-stale"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(loader::pinned_state(name_).present);
}

TEST_F(Agent, BadInputExitsTwoWithOneLineAndChangesNothing) {
  ASSERT_EQ(init("iptables", {"-i", "*"}).exit_code, 0);  // something to keep intact
  const std::string before = kernel_state();
  const std::string cg = pod_->cgroup_path(), ns = pod_->pod_netns_path();
  const std::vector<std::vector<std::string>> corpus = {
      {"init", "--mode", "iptables", "--netns", ns, "-p", "0"},
      {"init", "--mode", "iptables", "--netns", ns, "-z", "99999"},
      {"init", "--mode", "iptables", "--netns", ns, "-i", "10.0.0.0/8,bogus"},
      {"init", "--mode", "iptables", "--netns", ns, "-x", "*"},
      {"init", "--mode", "iptables", "--netns", ns, "-u", "1337,x y"},
      {"init", "--mode", "iptables", "--netns", ns, "-m", "tproxy"},
      {"init", "--mode", "iptables", "--netns", ns, "--force-iptables-binary", "nftables"},
      {"init", "--mode", "iptables", "--netns", ns, "-b", "8080,,x"},
      {"init", "--mode", "iptables", "--netns", ns, "-b", ","},
      {"init", "--mode", "iptables", "--netns", "/nonexistent/ns"},
      {"init", "--mode", "auto", "--cgroup", cg, "--netns", ns, "--dual-stack=perhaps"},
      {"init", "--mode", "ebpf", "--cgroup", cg, "--netns", ns, "--drop-invalid"},
      {"init", "--mode", "ebpf", "--cgroup", cg, "--netns", ns, "--redirect-dns", "--dns-servers", "10.0.0.300"},
      {"init", "--mode", "ebpf", "--cgroup", cg, "--netns", ns, "-k", "nosuchif0"},
      {"init", "--mode", "ebpf", "--cgroup", "/proc", "--netns", ns},
      {"init", "--mode", "sometimes", "--netns", ns},
      {"init", "--no-such-flag"},
      {"cleanup"},
      {"status", "--name", "bad/name"},
  };
  for (const auto& args : corpus) {
    auto r = meshcap(args);
    std::string shown;
    for (const auto& a : args) shown += a + " ";
    EXPECT_EQ(r.exit_code, 2) << shown << "\n" << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << shown << "\n" << r.output;
    EXPECT_EQ(kernel_state(), before) << shown;
  }
}

// Pods in namespaces held only by this test process's descriptors (no
// TestPod: the test closes them to make them gone).
class AgentNamespaces : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root: creates namespaces";
    state_ = std::string(std::getenv("MESHCAP_STATE_DIR")) + "/iptables/";
  }
  void TearDown() override {
    for (const auto& name : names_) meshcap({"cleanup", "--name", name});
  }
  static CommandResult meshcap(std::vector<std::string> args) {
    args.insert(args.begin(), MESHCAP_BIN);
    return run_command(args);
  }
  /// `meshcap init --mode iptables` of pod `name` in namespace `ns`.
  CommandResult init(const std::string& name, const UniqueFd& ns) {
    names_.push_back(name);
    return meshcap({"init", "--mode", "iptables", "--name", name, "--netns", fd_path(ns), "-i", "*", "-b", "*"});
  }
  static json status(const std::string& name) {
    const auto r = meshcap({"status", "--name", name, "--json"});
    return json::parse(r.output.substr(r.output.find('['))).at(0);
  }
  /// iptables-save in namespace `ns`, without its timestamped comments.
  static std::string rules(const UniqueFd& ns) {
    std::string kept;
    std::istringstream in(run_command({"nsenter", "--net=" + fd_path(ns), "iptables-save"}).output);
    for (std::string line; std::getline(in, line);)
      if (!line.empty() && line[0] != '#') kept += line + "\n";
    return kept;
  }
  /// What the iptables engine keeps of the namespace with this identity.
  std::string record(const NetnsId& id) const {
    return state_ + "netns-" + std::to_string(id.dev) + "-" + std::to_string(id.ino) + ".json";
  }

  std::string state_;
  std::vector<std::string> names_;
};

// The kernel gives a gone namespace's inode number to the next namespace
// made. A pod captured with iptables whose namespace went away without a
// cleanup is not the namespace that got its number: status says the pod's
// namespace is gone, and neither its cleanup nor the stale sweep touches
// that namespace's rules or what the iptables engine keeps of them. When
// no new namespace gets the number in time here (other namespaces being
// made and removed on the machine take it), the pod's record is given the
// device, inode and path of a new namespace instead: what the kernel's
// reuse leaves, the cookie aside.
TEST_F(AgentNamespaces, APodsGoneNamespaceIsNotTheOneGivenItsNumber) {
  UniqueFd gone = new_netns_fd();
  const NetnsId id = loader::read_pod_network(fd_path(gone)).netns;
  if (id.cookie == 0)
    GTEST_SKIP() << "no namespace cookie for user space here (SO_NETNS_COOKIE, Linux 5.14): device and inode are "
                    "all meshcap has (docs/kernels.md, 5.10)";
  const std::string a = "gone-" + std::to_string(getpid()), b = "heir-" + std::to_string(getpid());
  auto r = init(a, gone);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(std::filesystem::exists(record(id)));
  gone.reset();  // no cleanup: the namespace is simply gone
  std::vector<UniqueFd> spares;
  auto reused = netns_with_inode(id.ino, spares);
  spares.clear();
  UniqueFd heir = reused ? std::move(*reused) : new_netns_fd();
  NetnsId heir_id = id;
  if (!reused) {
    std::printf("[ namespaces ] no new namespace was given inode %llu within 5 s: pod %s's record is given the "
                "device, inode and path of another\n",
                static_cast<unsigned long long>(id.ino), a.c_str());
    const std::string file = std::string(std::getenv("MESHCAP_STATE_DIR")) + "/pods/" + a + ".json";
    std::ifstream in(file);
    json j = json::parse(in);
    in.close();
    heir_id.ino = netns_inode(heir);
    j["netns"]["ino"] = heir_id.ino;
    j["netns"]["path"] = fd_path(heir);
    std::ofstream(file) << j.dump();
  }
  // A process in the heir, so that a search of /proc finds its namespace.
  ProcessInNetns inside(heir);
  ASSERT_TRUE(inside.entered());
  r = init(b, heir);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string rules_b = rules(heir);
  ASSERT_NE(rules_b.find("-j ISTIO_REDIRECT"), std::string::npos) << rules_b;

  const json sa = status(a);
  EXPECT_NE(sa["netns"].get<std::string>().find("(gone)"), std::string::npos) << sa.dump();
  EXPECT_FALSE(sa.contains("iptables")) << sa.dump();
  EXPECT_NE(sa["drift"].dump().find("network namespace is gone"), std::string::npos) << sa.dump();
  EXPECT_TRUE(status(b)["drift"].empty()) << status(b).dump();

  r = meshcap({"cleanup", "--name", a});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(rules(heir), rules_b);
  EXPECT_TRUE(std::filesystem::exists(record(heir_id))) << "the heir's record";
  EXPECT_TRUE(status(b)["drift"].empty()) << status(b).dump();

  // A second pod whose namespace goes, through the stale sweep.
  UniqueFd third = new_netns_fd();
  const NetnsId id_c = loader::read_pod_network(fd_path(third)).netns;
  const std::string c = "third-" + std::to_string(getpid());
  r = init(c, third);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  third.reset();
  r = meshcap({"cleanup", "--all-stale"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("pod " + c + ": stale"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("pod " + b + ": stale"), std::string::npos) << r.output;
  EXPECT_EQ(rules(heir), rules_b);
  EXPECT_TRUE(status(b)["drift"].empty()) << status(b).dump();
  EXPECT_TRUE(std::filesystem::exists(record(heir_id))) << "the heir's record";
  if (std::filesystem::exists(record(id_c))) {
    EXPECT_TRUE(loader::find_netns(NetnsId{id_c.dev, id_c.ino, 0}).has_value())
        << "a gone namespace's record is kept only while a namespace has its number";
  }
}

// What the iptables engine keeps of a namespace that is gone and that no
// pod's record names (a run killed between its rules and its record) goes
// with the stale sweep; a living pod's stays.
TEST_F(AgentNamespaces, StaleSweepForgetsRecordsOfGoneNamespaces) {
  UniqueFd ns = new_netns_fd();
  const NetnsId id = loader::read_pod_network(fd_path(ns)).netns;
  const std::string a = "kept-" + std::to_string(getpid());
  auto r = init(a, ns);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(std::filesystem::exists(record(id)));
  // Inode 1 is never a namespace's (theirs start at 0xF0000000).
  const std::string orphan = state_ + "netns-" + std::to_string(id.dev) + "-1.json";
  std::filesystem::copy_file(record(id), orphan);
  std::filesystem::copy_file(record(id) + ".ipv4-nft.payload", orphan + ".ipv4-nft.payload");
  r = meshcap({"cleanup", "--all-stale"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(std::filesystem::exists(orphan)) << r.output;
  EXPECT_FALSE(std::filesystem::exists(orphan + ".ipv4-nft.payload")) << r.output;
  EXPECT_NE(r.output.find("forgot the iptables record of netns-" + std::to_string(id.dev) + "-1:"), std::string::npos)
      << r.output;
  EXPECT_TRUE(std::filesystem::exists(record(id)));
  EXPECT_TRUE(status(a)["drift"].empty()) << status(a).dump();
}

}  // namespace
}  // namespace meshcap::test
