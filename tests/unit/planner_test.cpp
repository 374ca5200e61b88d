// The per-direction plan against fake kernels: the feature sets of typical
// 4.19, 5.4, 5.10 and 6.1 kernels, with and without privileges.
#include <gtest/gtest.h>

#include "istio_flags.h"
#include "planner.h"

namespace meshcap {
namespace {

using loader::FakeKernelFeatures;

const std::vector<std::string> kPrivileges = {"cap_bpf", "cap_net_admin", "cap_sys_admin"};
const std::vector<std::string> kTools = {"iptables_nft", "iptables_legacy"};

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// What each kernel has (upstream versions where the features arrived).
const std::vector<std::string> k419 = {"bpf_syscall", "cgroup2", "prog_sock_addr", "prog_sock_ops", "helper_bind",
                                       "helper_sock_map_update"};
const std::vector<std::string> k54 = with(k419, {"btf", "prog_sockopt", "helper_sk_storage"});
const std::vector<std::string> k510 = with(k54, {"prog_getpeername", "prog_sk_lookup", "helper_sk_assign"});
const std::vector<std::string> k61 = with(k510, {"atomic_fetch"});

CaptureConfig istio_init(std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
                                   "-b", "*", "-d", "15090,15021,15020"};
  args.insert(args.end(), extra.begin(), extra.end());
  return parse_capture_args(args, [](const std::string&) { return std::optional<std::string>(); });
}

Plan plan_on(const std::vector<std::string>& kernel, const CaptureConfig& cfg, const std::string& mode = "auto") {
  FakeKernelFeatures k(kernel);
  return make_plan(cfg, k, mode);
}

TEST(Planner, Linux61WithPrivilegesIsAllEbpf) {
  auto p = plan_on(with(with(k61, kPrivileges), kTools), istio_init());
  EXPECT_EQ(p.outbound.engine, Engine::Ebpf);
  EXPECT_EQ(p.inbound.engine, Engine::Ebpf);
}

// The programs use no atomic operations (records move with the sockets):
// a 5.10 kernel has every hook eBPF capture needs.
TEST(Planner, Linux510IsAllEbpf) {
  auto p = plan_on(with(with(k510, kPrivileges), kTools), istio_init());
  EXPECT_EQ(p.outbound.engine, Engine::Ebpf);
  EXPECT_EQ(p.inbound.engine, Engine::Ebpf);
}

// 5.4 has no cgroup getpeername hooks: an application would see the proxy's
// address as its peer, so outbound stays with iptables (and inbound: no
// sk_lookup before 5.9).
TEST(Planner, Linux54LacksGetpeernameSoIptables) {
  auto p = plan_on(with(with(k54, kPrivileges), kTools), istio_init());
  EXPECT_EQ(p.outbound.engine, Engine::Iptables);
  EXPECT_NE(p.outbound.reasons.at(0).find("getpeername"), std::string::npos);
  EXPECT_EQ(p.inbound.engine, Engine::Iptables);
}

TEST(Planner, Linux54And419AreIptables) {
  for (const auto& k : {k54, k419}) {
    auto p = plan_on(with(with(k, kPrivileges), kTools), istio_init());
    EXPECT_EQ(p.outbound.engine, Engine::Iptables);
    EXPECT_EQ(p.inbound.engine, Engine::Iptables);
  }
}

TEST(Planner, NoSkLookupMeansEbpfOutboundIptablesInbound) {
  std::vector<std::string> k;
  for (const auto& f : with(k61, kPrivileges))
    if (f != "prog_sk_lookup") k.push_back(f);
  auto p = plan_on(k, istio_init());
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
  std::vector<std::string> k;
  for (const auto& f : with(k61, kPrivileges))
    if (f != "cgroup2") k.push_back(f);
  auto p = plan_on(k, istio_init());
  EXPECT_EQ(p.outbound.engine, Engine::Iptables);
  EXPECT_NE(p.outbound.reasons.at(0).find("cgroup v2"), std::string::npos);
}

TEST(Planner, FlagsEbpfCannotHonourMoveTheirPartToIptables) {
  auto all = with(k61, kPrivileges);
  auto tproxy = plan_on(all, istio_init({"-m", "TPROXY"}));
  EXPECT_EQ(tproxy.outbound.engine, Engine::Ebpf);
  EXPECT_EQ(tproxy.inbound.engine, Engine::Iptables);
  auto dns = plan_on(all, istio_init({"--redirect-dns", "--dns-servers", "10.96.0.10"}));
  EXPECT_EQ(dns.outbound.engine, Engine::Iptables);
  EXPECT_EQ(dns.inbound.engine, Engine::Iptables);
}

TEST(Planner, NoInboundRequested) {
  auto p = plan_on(with(k61, kPrivileges), istio_init({"-b", ""}));
  EXPECT_EQ(p.outbound.engine, Engine::Ebpf);
  EXPECT_EQ(p.inbound.engine, Engine::None);
}

TEST(Planner, ExplicitModes) {
  auto all = with(k61, kPrivileges);
  auto ipt = plan_on(all, istio_init(), "iptables");
  EXPECT_EQ(ipt.outbound.engine, Engine::Iptables);
  EXPECT_EQ(ipt.inbound.engine, Engine::Iptables);
  EXPECT_THROW(plan_on(all, istio_init({"--redirect-dns", "--dns-servers", ""}), "ebpf"), UsageError);
  EXPECT_THROW(plan_on(k61, istio_init(), "ebpf"), std::runtime_error);  // no privileges
}

TEST(Planner, IptablesPartDropsOutboundCaptureWhenEbpfHasIt) {
  std::vector<std::string> k;
  for (const auto& f : with(k61, kPrivileges))
    if (f != "prog_sk_lookup") k.push_back(f);
  auto cfg = istio_init();
  auto p = plan_on(k, cfg);
  auto part = iptables_part(cfg, p);
  EXPECT_TRUE(part.outbound_ranges_include.empty());
  EXPECT_TRUE(part.inbound_ports_include.wildcard);
  auto full = iptables_part(cfg, plan_on(with(k61, {"cap_net_admin"}), cfg));
  EXPECT_TRUE(full.outbound_ranges_include.wildcard);
}

}  // namespace
}  // namespace meshcap
