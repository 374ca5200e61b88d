// End to end in iptables mode with a real, unmodified proxy: istio-init's
// rules applied for real (nft and legacy backends) inside a throwaway pod's
// network namespace, haproxy from Debian as UID/GID 1337 in the pod, real
// traffic both ways. The same scenarios as haproxy_outbound_test.cpp and
// haproxy_inbound_test.cpp in eBPF mode; instead of BPF counters these read
// the nat rules' packet counters (`iptables-save -c` in the pod's netns).
// Root only; iptables is only changed inside the pod's netns.
#include <unistd.h>

#include <atomic>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "applier.h"
#include "backend.h"
#include "command_runner.h"
#include "saved_ruleset.h"
#include "istio_flags.h"
#include "support/test_support.h"

namespace meshcap::test {
namespace {

namespace ipt = meshcap::iptables;

std::string host_of(const std::string& ep) {
  if (!ep.empty() && ep[0] == '[') return ep.substr(1, ep.find(']') - 1);
  return ep.substr(0, ep.rfind(':'));
}

/// istio-init's arguments (the sidecar injector's defaults).
const std::vector<std::string> kIstioInitArgs = {"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
                                                 "-i", "*",     "-x", "",      "-b", "*",    "-d", "15090,15021,15020"};

/// Parameter: "nft" or "legacy".
class HaproxyIptables : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    MESHCAP_REQUIRE_ROOT();
    MESHCAP_REQUIRE_BINARY("haproxy");
    kind_ = GetParam();
    MESHCAP_REQUIRE_BINARY("iptables-" + kind_ + "-restore");
    pod_ = std::make_unique<TestPod>();
    runner_ = std::make_unique<ipt::ProcessRunner>(pod_->pod_netns_path());
    std::string why;
    if (!ipt::probe_backend(*runner_, ipt::Family::V4, "iptables-" + kind_, &why)) {
      GTEST_SKIP() << "iptables-" << kind_ << " is not usable here: " << why;
    }
    applier_ = std::make_unique<ipt::IptablesApplier>(*runner_,
                                                      ipt::ApplierOptions{pod_->scratch_dir() + "/iptables-state"});

    config_ = haproxy_config(*pod_);  // outbound 127.0.0.1:15001, inbound 0.0.0.0:15006 from 127.0.0.6
    haproxy_ = start_haproxy(*pod_, config_);
    echo_ = std::make_unique<EchoServer>(Placement::peer_thread(*pod_), pod_->peer_ipv4(), 9000);
    app_ = std::make_unique<EchoServer>(Placement::pod_process(*pod_), "0.0.0.0", 8080);

    std::vector<std::string> args = kIstioInitArgs;
    args.insert(args.end(), {"--force-iptables-binary", kind_});
    cfg_ = meshcap::parse_capture_args(args,
                                       [](const std::string&) -> std::optional<std::string> { return std::nullopt; });
    const ipt::ApplyResult r = applier_->apply(*cfg_, cfg_->dual_stack);
    ASSERT_EQ(r.ipv4.binary, "iptables-" + kind_);
  }

  void TearDown() override {
    if (applier_ && cfg_) {
      try {
        applier_->cleanup(*cfg_);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "cleanup: " << e.what();
      }
      EXPECT_EQ(save().find("ISTIO"), std::string::npos);
    }
    echo_.reset();
    app_.reset();
    applier_.reset();
    runner_.reset();
    pod_.reset();
  }

  std::string save(bool counters = false) {
    std::vector<std::string> argv = {"iptables-" + kind_ + "-save", "-t", "nat"};
    if (counters) argv.push_back("-c");
    const auto r = runner_->run(argv);
    EXPECT_TRUE(r.ok()) << r.err;
    return r.out;
  }

  /// Packets (= connections, for nat rules) that matched the rule printed
  /// exactly as `rule`; -1 when there is no such rule.
  int64_t packets(const std::string& rule) {
    auto n = iptables::rule_packets(save(true), [&](std::string_view r) { return r == rule; });
    return n ? static_cast<int64_t>(*n) : -1;
  }
  int64_t outbound_redirects() { return packets("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"); }
  int64_t inbound_redirects() { return packets("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"); }
  int64_t proxy_uid_exempt() { return packets("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"); }
  int64_t passthrough_source() { return packets("-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN"); }

  // Runs round trips to the peer's echo server from `threads` threads of one
  // application process in the pod; returns how many failed.
  int run_app(int threads, int connections_per_thread) {
    return parallel_roundtrips_in_pod(*pod_, pod_->peer_ipv4(), 9000, threads, connections_per_thread);
  }

  // Round trips from the peer namespace to the pod's application; returns
  // how many failed.
  int from_peer(int n, uint16_t port = 8080) {
    std::string pod_ip = pod_->pod_ipv4();
    return pod_->run_in_peer([=] {
      int failed = 0;
      for (int i = 0; i < n; i++) {
        std::string payload = "in-" + std::to_string(i);
        RoundTrip r = tcp_roundtrip(pod_ip, port, payload, Millis(3000));
        if (!r.ok() || r.reply != payload || r.peer != pod_ip + ":" + std::to_string(port)) failed++;
      }
      return failed;
    });
  }

  std::string kind_;
  std::unique_ptr<TestPod> pod_;
  std::unique_ptr<ipt::ProcessRunner> runner_;
  std::unique_ptr<ipt::IptablesApplier> applier_;
  std::optional<meshcap::CaptureConfig> cfg_;
  std::string config_;
  HaproxyProcess haproxy_;
  std::unique_ptr<EchoServer> echo_;  // peer_ipv4:9000
  std::unique_ptr<EchoServer> app_;   // the pod's application, 0.0.0.0:8080
};

// ---- outbound: application -> haproxy 15001 -> peer ----

TEST_P(HaproxyIptables, SequentialConnectionsReachTheRealDestinationThroughHaproxy) {
  EXPECT_EQ(run_app(1, 300), 0) << read_text_file(haproxy_.log_path);
  ASSERT_TRUE(echo_->wait_for_accepts(300));
  // Every connection reached the server from the pod's address (haproxy's
  // own, uncaptured connection), none bypassed the proxy.
  for (const auto& rec : echo_->records()) EXPECT_EQ(host_of(rec.peer), pod_->pod_ipv4());
  EXPECT_EQ(outbound_redirects(), 300);
  EXPECT_EQ(proxy_uid_exempt(), 300);  // haproxy's connections onward
  EXPECT_EQ(inbound_redirects(), 0);
}

TEST_P(HaproxyIptables, ConcurrentConnectionsReachTheRealDestinationThroughHaproxy) {
  EXPECT_EQ(run_app(32, 25), 0) << read_text_file(haproxy_.log_path);
  ASSERT_TRUE(echo_->wait_for_accepts(800));
  EXPECT_EQ(echo_->accepted(), 800u);
  EXPECT_EQ(outbound_redirects(), 800);
  EXPECT_EQ(proxy_uid_exempt(), 800);
}

TEST_P(HaproxyIptables, ProxyDownRefusesAndCleanupGoesDirectAgain) {
  EXPECT_EQ(run_app(1, 10), 0);
  // With the proxy gone, captured connections are refused (REDIRECT to a
  // closed port): they really went through it.
  ASSERT_TRUE(pod_->stop(haproxy_.pid).has_value());
  EXPECT_EQ(run_app(1, 5), 5);
  EXPECT_EQ(echo_->accepted(), 10u);
  EXPECT_EQ(outbound_redirects(), 15);
  // After cleanup the same connections go direct, without a proxy.
  applier_->cleanup(*cfg_);
  EXPECT_EQ(save().find("ISTIO"), std::string::npos);
  EXPECT_EQ(run_app(1, 10), 0);
  EXPECT_TRUE(echo_->wait_for_accepts(20));
  // ... and inbound reaches the application directly, from the peer itself.
  EXPECT_EQ(from_peer(5), 0);
  ASSERT_TRUE(app_->wait_for_accepts(5));
  for (const auto& rec : app_->records()) EXPECT_EQ(host_of(rec.peer), pod_->peer_ipv4());
}

// ---- inbound: peer -> haproxy 15006 -> application (from 127.0.0.6) ----

TEST_P(HaproxyIptables, ClientOutsideReachesTheApplicationThroughHaproxy) {
  EXPECT_EQ(from_peer(100), 0) << read_text_file(haproxy_.log_path);
  ASSERT_TRUE(app_->wait_for_accepts(100));
  // Every connection came from haproxy's passthrough source.
  for (const auto& rec : app_->records()) EXPECT_EQ(host_of(rec.peer), "127.0.0.6");
  EXPECT_EQ(app_->accepted(), 100u);
  EXPECT_EQ(inbound_redirects(), 100);
  EXPECT_EQ(passthrough_source(), 100);  // haproxy -> app, not captured again
  EXPECT_EQ(outbound_redirects(), 0);
}

TEST_P(HaproxyIptables, ExcludedInboundPortsBypassHaproxy) {
  // -d 15090,15021,15020: straight to the application, from the real client.
  EchoServer health(Placement::pod_process(*pod_), "0.0.0.0", 15021);
  EXPECT_EQ(from_peer(5, 15021), 0);
  ASSERT_TRUE(health.wait_for_accepts(5));
  for (const auto& rec : health.records()) EXPECT_EQ(host_of(rec.peer), pod_->peer_ipv4());
  EXPECT_EQ(inbound_redirects(), 0);
  EXPECT_EQ(packets("-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN"), 5);
}

TEST_P(HaproxyIptables, ProxyRestartIsRefusedThenRecovers) {
  EXPECT_EQ(from_peer(10), 0);
  ASSERT_TRUE(pod_->stop(haproxy_.pid).has_value());
  EXPECT_EQ(from_peer(5), 5);  // refused while the proxy is down
  EXPECT_EQ(app_->accepted(), 10u);
  haproxy_ = start_haproxy(*pod_, config_);
  EXPECT_EQ(from_peer(10), 0) << read_text_file(haproxy_.log_path);
  EXPECT_TRUE(app_->wait_for_accepts(20));
  EXPECT_EQ(inbound_redirects(), 25);
  EXPECT_EQ(passthrough_source(), 20);
}

INSTANTIATE_TEST_SUITE_P(Backends, HaproxyIptables, ::testing::Values("nft", "legacy"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

}  // namespace
}  // namespace meshcap::test
