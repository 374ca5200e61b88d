// The plan per part against fake kernels: the program rows of the kernels
// booted under qemu (docs/kernel-facts/), with and without privileges,
// flags eBPF cannot honour, and what a run-time refusal moves.
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "istio_flags.h"
#include "planner.h"
#include "pod_state.h"

namespace meshcap {
namespace {

using loader::FakeKernelFeatures;

const std::vector<std::string> kPrivileges = {"cap_bpf", "cap_net_admin", "cap_sys_admin"};
const std::vector<std::string> kTools = {"iptables_nft", "iptables_legacy"};

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
std::vector<std::string> without(const std::vector<std::string>& a, const std::string& gone) {
  std::vector<std::string> out;
  for (const auto& f : a)
    if (f != gone) out.push_back(f);
  return out;
}

// Which of meshcap's programs each kernel loads. 5.10 (Debian's
// 5.10.0-46, booted): all but sk_lookup reading the arrival interface
// (bpf_sk_lookup.ingress_ifindex). 5.4 has no getpeername hooks (5.8) and
// no sk_lookup (5.9): predicted, not booted.
const std::vector<std::string> k54 = {"bpf_syscall", "cgroup2", "prog_connect", "prog_sockops", "prog_getsockopt",
                                      "prog_sk_msg"};
const std::vector<std::string> k510 = with(k54, {"prog_getpeername", "prog_sk_lookup", "prog_dns"});
const std::vector<std::string> k61 = with(k510, {"prog_sk_lookup_ifindex"});

CaptureConfig istio_init(std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
                                   "-b", "*", "-d", "15090,15021,15020"};
  args.insert(args.end(), extra.begin(), extra.end());
  return parse_capture_args(args, [](const std::string&) { return std::optional<std::string>(); });
}

PodNetwork pod_with(std::vector<std::string> ifaces) {
  PodNetwork p;
  uint32_t i = 1;
  for (const auto& n : ifaces) p.interfaces[n] = i++;
  return p;
}

Plan plan_on(const std::vector<std::string>& kernel, const CaptureConfig& cfg, Mode mode = Mode::Auto,
             PodNetwork pod = pod_with({"lo", "eth0"})) {
  FakeKernelFeatures k(kernel);
  PlanInput in;
  in.config = cfg;
  in.mode = mode;
  in.pod = std::move(pod);
  return make_plan(in, k);
}

TEST(Planner, Linux61WithPrivilegesIsAllEbpf) {
  auto p = plan_on(with(with(k61, kPrivileges), kTools), istio_init());
  EXPECT_EQ(p.outbound.engine, Engine::Ebpf);
  EXPECT_EQ(p.inbound.engine, Engine::Ebpf);
}

TEST(Planner, Linux510IsAllEbpfWithoutInterfaces) {
  auto p = plan_on(with(with(k510, kPrivileges), kTools), istio_init());
  EXPECT_EQ(p.outbound.engine, Engine::Ebpf);
  EXPECT_EQ(p.inbound.engine, Engine::Ebpf);
}

// -c needs the arrival interface in sk_lookup, which 5.10 refuses to give:
// inbound goes to iptables and says so; outbound stays eBPF.
TEST(Planner, Linux510WithExcludedInterfaceMovesOnlyInbound) {
  auto p = plan_on(with(k510, kPrivileges), istio_init({"-c", "eth0"}));
  EXPECT_EQ(p.outbound.engine, Engine::Ebpf);
  EXPECT_EQ(p.inbound.engine, Engine::Iptables);
  EXPECT_NE(p.inbound.reasons.at(0).find("arrival interface"), std::string::npos);
  EXPECT_THROW(plan_on(with(k510, kPrivileges), istio_init({"-c", "eth0"}), Mode::Ebpf), std::runtime_error);
}

TEST(Planner, Linux54LacksGetpeernameSoIptables) {
  auto p = plan_on(with(with(k54, kPrivileges), kTools), istio_init());
  EXPECT_EQ(p.outbound.engine, Engine::Iptables);
  EXPECT_NE(p.outbound.reasons.at(0).find("getpeername"), std::string::npos);
  EXPECT_EQ(p.inbound.engine, Engine::Iptables);
}

TEST(Planner, RefusedSkLookupMeansEbpfOutboundIptablesInbound) {
  auto p = plan_on(without(with(k61, kPrivileges), "prog_sk_lookup"), istio_init());
  EXPECT_EQ(p.outbound.engine, Engine::Ebpf);
  EXPECT_EQ(p.inbound.engine, Engine::Iptables);
  EXPECT_NE(p.inbound.reasons.at(0).find("sk_lookup"), std::string::npos);
}

TEST(Planner, IstioInitContainerWithoutBpfPrivilegeIsIptables) {
  // CAP_NET_ADMIN and CAP_NET_RAW only, as istio-init runs.
  auto p = plan_on(with(with(k61, {"cap_net_admin"}), kTools), istio_init());
  EXPECT_EQ(p.outbound.engine, Engine::Iptables);
  EXPECT_NE(p.outbound.reasons.at(0).find("CAP_BPF"), std::string::npos);
  EXPECT_EQ(p.inbound.engine, Engine::Iptables);
}

TEST(Planner, NoCgroupV2IsIptables) {
  auto p = plan_on(without(with(k61, kPrivileges), "cgroup2"), istio_init());
  EXPECT_EQ(p.outbound.engine, Engine::Iptables);
  EXPECT_NE(p.outbound.reasons.at(0).find("cgroup v2"), std::string::npos);
}

// No place to attach (no --cgroup, no node data path): iptables in auto,
// refused in ebpf mode; never "captured" by programs that see no pod.
TEST(Planner, NoEbpfHostIsIptables) {
  FakeKernelFeatures k(with(k61, kPrivileges));
  PlanInput in;
  in.config = istio_init();
  in.pod = pod_with({"lo"});
  in.no_ebpf_host = "no cgroup given";
  auto p = make_plan(in, k);
  EXPECT_EQ(p.outbound.engine, Engine::Iptables);
  EXPECT_EQ(p.outbound.reasons.at(0), "no cgroup given");
  EXPECT_EQ(p.inbound.engine, Engine::Iptables);
  in.mode = Mode::Ebpf;
  EXPECT_THROW(make_plan(in, k), std::runtime_error);
}

TEST(Planner, FlagsEbpfCannotHonourMoveTheirPartToIptables) {
  auto all = with(k61, kPrivileges);
  auto tproxy = plan_on(all, istio_init({"-m", "TPROXY"}));
  EXPECT_EQ(tproxy.outbound.engine, Engine::Ebpf);
  EXPECT_EQ(tproxy.inbound.engine, Engine::Iptables);
  // DNS capture is eBPF's where its programs load, outbound's otherwise.
  auto dns = plan_on(all, istio_init({"--redirect-dns", "--dns-servers", "10.96.0.10"}));
  EXPECT_EQ(dns.outbound.engine, Engine::Ebpf);
  EXPECT_EQ(dns.inbound.engine, Engine::Ebpf);
  EXPECT_TRUE(dns.dns);
  EXPECT_TRUE(Plan::from_json(dns.to_json()).dns);
  std::vector<std::string> no_dns = all;
  std::erase(no_dns, "prog_dns");
  auto dns_refused = plan_on(no_dns, istio_init({"--redirect-dns", "--capture-all-dns"}));
  EXPECT_EQ(dns_refused.outbound.engine, Engine::Iptables);
  ASSERT_EQ(dns_refused.outbound.reasons.size(), 1u);
  EXPECT_NE(dns_refused.outbound.reasons[0].find("--redirect-dns"), std::string::npos);
  EXPECT_EQ(dns_refused.inbound.engine, Engine::Iptables);
  EXPECT_FALSE(dns_refused.dns);
  // DNS capture that istio turns off (no resolvers known) asks nothing.
  EXPECT_EQ(plan_on(no_dns, istio_init({"--redirect-dns", "--dns-servers", ""})).outbound.engine, Engine::Ebpf);
  // The iptables part of a split plan leaves DNS to eBPF.
  auto split = plan_on(all, istio_init({"--redirect-dns", "--capture-all-dns", "--drop-invalid"}));
  EXPECT_EQ(split.outbound.engine, Engine::Ebpf);
  EXPECT_EQ(split.inbound.engine, Engine::Iptables);
  EXPECT_TRUE(split.iptables_config().redirect_dns);
  EXPECT_TRUE(split.iptables_config().dns_redirect_by_ebpf);
  EXPECT_FALSE(split.ebpf_config().dns_redirect_by_ebpf);
  EXPECT_FALSE(plan_on(no_dns, istio_init({"--redirect-dns", "--capture-all-dns"})).iptables_config().dns_redirect_by_ebpf);
  // An interface the pod lacks: eBPF resolves names once, iptables matches
  // them later too.
  auto missing = plan_on(all, istio_init({"-k", "eth9"}));
  EXPECT_EQ(missing.outbound.engine, Engine::Ebpf);
  EXPECT_EQ(missing.inbound.engine, Engine::Iptables);
  EXPECT_NE(missing.inbound.reasons.at(0).find("eth9"), std::string::npos);
  EXPECT_THROW(plan_on(all, istio_init({"-c", "eth9"}), Mode::Ebpf), UsageError);
}

TEST(Planner, NoInboundRequested) {
  auto p = plan_on(with(k61, kPrivileges), istio_init({"-b", ""}));
  EXPECT_EQ(p.outbound.engine, Engine::Ebpf);
  EXPECT_EQ(p.inbound.engine, Engine::None);
}

TEST(Planner, ExplicitModes) {
  auto all = with(k61, kPrivileges);
  auto ipt = plan_on(all, istio_init(), Mode::Iptables);
  EXPECT_EQ(ipt.outbound.engine, Engine::Iptables);
  EXPECT_EQ(ipt.inbound.engine, Engine::Iptables);
  EXPECT_THROW(plan_on(all, istio_init({"--drop-invalid"}), Mode::Ebpf), UsageError);
  std::vector<std::string> no_dns = all;
  std::erase(no_dns, "prog_dns");
  EXPECT_THROW(plan_on(no_dns, istio_init({"--redirect-dns", "--capture-all-dns"}), Mode::Ebpf), std::runtime_error);
  EXPECT_THROW(plan_on(k61, istio_init(), Mode::Ebpf), std::runtime_error);  // no privileges
}

TEST(Planner, AccelerateNeedsEbpfOutboundAndSkMsg) {
  FakeKernelFeatures k(with(k61, kPrivileges));
  PlanInput in;
  in.config = istio_init();
  in.accelerate = true;
  EXPECT_TRUE(make_plan(in, k).accelerate);
  FakeKernelFeatures no_msg(without(with(k61, kPrivileges), "prog_sk_msg"));
  auto p = make_plan(in, no_msg);
  EXPECT_FALSE(p.accelerate);
  ASSERT_EQ(p.notes.size(), 1u);
  in.mode = Mode::Iptables;
  EXPECT_THROW(make_plan(in, k), UsageError);
}

TEST(Planner, IptablesConfigDropsOutboundCaptureWhenEbpfHasIt) {
  auto p = plan_on(without(with(k61, kPrivileges), "prog_sk_lookup"), istio_init());
  auto part = p.iptables_config();
  EXPECT_TRUE(part.outbound_ranges_include.empty());
  EXPECT_TRUE(part.inbound_ports_include.wildcard);
  auto full = plan_on(with(k61, {"cap_net_admin"}), istio_init()).iptables_config();
  EXPECT_TRUE(full.outbound_ranges_include.wildcard);
}

// A run-time refusal moves only its part: sk_lookup failing keeps outbound
// on eBPF; outbound failing takes inbound and --accelerate with it; the
// iptables configuration then holds the whole of what moved.
TEST(Planner, FallBackMovesOnlyWhatItMust) {
  FakeKernelFeatures k(with(k61, kPrivileges));
  PlanInput in;
  in.config = istio_init();
  in.accelerate = true;
  Plan p = make_plan(in, k);
  p.fall_back_to_iptables(Part::Inbound, "sk_lookup refused");
  EXPECT_EQ(p.outbound.engine, Engine::Ebpf);
  EXPECT_EQ(p.inbound.engine, Engine::Iptables);
  EXPECT_TRUE(p.accelerate);
  EXPECT_TRUE(p.iptables_config().outbound_ranges_include.empty());
  EXPECT_TRUE(p.ebpf_config().inbound_ports_include.empty());

  Plan q = make_plan(in, k);
  q.fall_back_to_iptables(Part::Outbound, "load refused");
  EXPECT_EQ(q.outbound.engine, Engine::Iptables);
  EXPECT_EQ(q.inbound.engine, Engine::Iptables);
  EXPECT_FALSE(q.accelerate);
  // The bug this replaces: the iptables part kept the first plan's cut.
  EXPECT_TRUE(q.iptables_config().outbound_ranges_include.wildcard);
  EXPECT_FALSE(q.uses(Engine::Ebpf));

  in.mode = Mode::Ebpf;
  Plan r = make_plan(in, k);
  EXPECT_THROW(r.fall_back_to_iptables(Part::Inbound, "x"), std::runtime_error);
}

TEST(Planner, PlanRoundTripsThroughJson) {
  Plan p = plan_on(with(k61, kPrivileges), istio_init({"-m", "TPROXY"}));
  Plan q = Plan::from_json(p.to_json());
  EXPECT_EQ(q.outbound.engine, p.outbound.engine);
  EXPECT_EQ(q.inbound.engine, p.inbound.engine);
  EXPECT_EQ(q.inbound.reasons, p.inbound.reasons);
  EXPECT_EQ(q.ipv6, p.ipv6);
}

// Pod records in a state directory of the test's own.
class PodStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("meshcap-pod-state-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    if (const char* was = std::getenv("MESHCAP_STATE_DIR")) saved_ = was;
    ::setenv("MESHCAP_STATE_DIR", dir_.c_str(), 1);
  }
  void TearDown() override {
    if (saved_) ::setenv("MESHCAP_STATE_DIR", saved_->c_str(), 1); else ::unsetenv("MESHCAP_STATE_DIR");
    std::filesystem::remove_all(dir_);
  }
  // A record whose flags exclude `cidrs` CIDRs.
  static PodState pod(int cidrs) {
    PodState st;
    st.name = "p1";
    st.netns_path = "/run/netns/p1";
    std::string list;
    for (int i = 0; i < cidrs; ++i) {
      list += (i ? "," : "") + std::to_string(1 + i / 256) + "." + std::to_string(i % 256) + ".0.0/16";
    }
    st.flags.flags.service_cidr = "*";
    if (cidrs > 0) st.flags.flags.service_exclude_cidr = list;
    st.flags.flags.tproxy_mark = "1338";
    st.iptables = PodState::Iptables{"iptables-legacy-save", "", {}};
    return st;
  }
  std::vector<std::string> files() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(dir_ / "pods")) out.push_back(e.path().filename());
    std::sort(out.begin(), out.end());
    return out;
  }
  static nlohmann::json record() { return nlohmann::json::parse(std::ifstream(state_file("p1"))); }
  std::filesystem::path dir_;
  std::optional<std::string> saved_;
};

TEST_F(PodStateTest, LongFlagsLiveBesideTheRecordAndAreReadOnlyWhenAsked) {
  const PodState st = pod(10000);
  write_pod_state(st);
  const auto f = files();
  ASSERT_EQ(f.size(), 2u);
  EXPECT_EQ(f[0], "p1.json");
  EXPECT_EQ(f[1].rfind("p1.json.flags-", 0), 0u);
  EXPECT_FALSE(record().contains("flags"));
  EXPECT_EQ(record().at("flags_file"), f[1]);
  EXPECT_EQ(recorded_pods(), std::vector<std::string>{"p1"});

  const auto whole = read_pod_state("p1");
  ASSERT_TRUE(whole.has_value());
  EXPECT_TRUE(whole->flags_path.empty());
  EXPECT_EQ(whole->flags.to_json(), st.flags.to_json());
  EXPECT_EQ(whole->to_json(), st.to_json());

  const auto lazy = read_pod_state("p1", false);
  ASSERT_TRUE(lazy.has_value());
  EXPECT_EQ(lazy->flags_path, (dir_ / "pods" / f[1]).string());
  EXPECT_FALSE(lazy->flags.flags.service_exclude_cidr.has_value());  // not read
  EXPECT_EQ(lazy->load_flags().to_json(), st.flags.to_json());
  EXPECT_EQ(lazy->config().tproxy_mark, st.config().tproxy_mark);
  EXPECT_EQ(lazy->config().tproxy_mark, "1338");
  EXPECT_EQ(lazy->to_json(), st.to_json());  // what it writes holds the flags

  // Rewritten with short flags: back in the record, the file beside it gone.
  write_pod_state(pod(3));
  EXPECT_EQ(files(), std::vector<std::string>{"p1.json"});
  EXPECT_TRUE(record().contains("flags"));
  write_pod_state(st);
  EXPECT_TRUE(remove_pod_state("p1"));
  EXPECT_TRUE(files().empty());
}

TEST_F(PodStateTest, ReadsRecordsThatHoldTheirFlags) {
  // As every meshcap before the flags file wrote them, whatever their length.
  for (int cidrs : {0, 10000}) {
    const PodState st = pod(cidrs);
    std::filesystem::create_directories(dir_ / "pods");
    std::ofstream(state_file("p1")) << st.to_json().dump(2) << "\n";
    for (bool with_flags : {true, false}) {
      const auto got = read_pod_state("p1", with_flags);
      ASSERT_TRUE(got.has_value());
      EXPECT_TRUE(got->flags_path.empty());
      EXPECT_EQ(got->flags.to_json(), st.flags.to_json());
      EXPECT_EQ(got->config().tproxy_mark, "1338");
    }
    EXPECT_TRUE(remove_pod_state("p1"));
    EXPECT_TRUE(files().empty());
  }
}

TEST_F(PodStateTest, ARecordWhoseFlagsFileIsMissingOrNotItsOwnIsUnreadable) {
  write_pod_state(pod(10000));
  auto j = record();
  const std::string own = j.at("flags_file");
  for (const std::string& other : {std::string("p2.json.flags-1"), "../" + own, std::string("/etc/passwd")}) {
    j["flags_file"] = other;
    std::ofstream(state_file("p1")) << j.dump();
    EXPECT_FALSE(read_pod_state("p1").has_value()) << other;
    EXPECT_FALSE(read_pod_state("p1", false).has_value()) << other;
  }
  j["flags_file"] = own;
  std::ofstream(state_file("p1")) << j.dump();
  ASSERT_TRUE(read_pod_state("p1", false).has_value());
  std::filesystem::remove(dir_ / "pods" / own);
  EXPECT_FALSE(read_pod_state("p1").has_value());
  EXPECT_FALSE(read_pod_state("p1", false).has_value());
  EXPECT_TRUE(remove_pod_state("p1"));
  EXPECT_TRUE(files().empty());
}

}  // namespace
}  // namespace meshcap
