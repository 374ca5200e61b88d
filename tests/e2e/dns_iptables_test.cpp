// DNS capture (istio's --redirect-dns) in iptables mode with real parts: the
// reference behaviour for issue #18's eBPF path. An upstream dnsmasq in the
// peer namespace is "the resolver outside the pod"; a second dnsmasq as the
// proxy's DNS listener on 127.0.0.1:15053, UID/GID 1337, in the pod,
// forwarding upstream. Queries from `dig` in the pod, addressed to the
// resolver, must be answered through the proxy (its query log shows them);
// with the proxy stopped they fail instead of reaching the resolver.
// Root only; iptables is only changed inside the pod's netns.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "applier.h"
#include "backend.h"
#include "command_runner.h"
#include "istio_flags.h"
#include "support/test_support.h"

namespace meshcap::test {
namespace {

namespace ipt = meshcap::iptables;

constexpr const char* kName = "svc.mcdns.test";
constexpr const char* kAnswer = "10.9.9.9";

/// Parameter: "nft" or "legacy".
class DnsIptables : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    MESHCAP_REQUIRE_ROOT();
    MESHCAP_REQUIRE_BINARY("dnsmasq");
    MESHCAP_REQUIRE_BINARY("dig");
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
    // The resolver outside the pod.
    upstream_log_ = pod_->scratch_dir() + "/upstream.log";
    pod_->spawn_in_peer({"dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                         "--pid-file=", "--user=root", "--bind-interfaces",
                         "--listen-address=" + pod_->peer_ipv4() + "," + pod_->peer_ipv6(), "--port=53",
                         std::string("--address=/") + kName + "/" + kAnswer, "--log-queries", "--log-facility=-"},
                        Identity::root(), upstream_log_);
    start_proxy();
  }

  void start_proxy() {
    proxy_log_ = pod_->scratch_dir() + "/proxy.log";
    proxy_ = pod_->spawn_in_pod({"dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                                 "--conf-file=/dev/null", "--pid-file=", "--bind-interfaces",
                                 "--listen-address=127.0.0.1,::1", "--port=15053", "--server=" + pod_->peer_ipv4(),
                                 "--log-queries", "--log-facility=-"},
                                Identity::proxy(), proxy_log_);
  }

  void apply(std::vector<std::string> extra) {
    std::vector<std::string> args = {"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*",
                                     "-b", "*", "--force-iptables-binary", kind_, "--redirect-dns"};
    args.insert(args.end(), extra.begin(), extra.end());
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
    }
    applier_.reset();
    runner_.reset();
    pod_.reset();
  }

  /// dig in the pod (not in its cgroup: iptables does not look at it).
  CommandResult dig(const std::string& server, std::vector<std::string> opts, bool as_proxy = false) {
    std::vector<std::string> argv = {"nsenter", "--net=" + pod_->pod_netns_path()};
    if (as_proxy) argv.insert(argv.end(), {"setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"});
    argv.insert(argv.end(), {"dig", "@" + server, kName, "A", "+short", "+tries=1", "+time=2"});
    argv.insert(argv.end(), opts.begin(), opts.end());
    return run_command(argv);
  }

  /// Both servers are up once a query through the proxy is answered (bounded
  /// retries; the test asserts on answers and logs, never on time).
  bool wait_ready() {
    for (int i = 0; i < 50; ++i) {
      if (run_command({"nsenter", "--net=" + pod_->pod_netns_path(), "dig", "@127.0.0.1", "-p", "15053", kName,
                       "+short", "+tries=1", "+time=1"})
              .output.find(kAnswer) != std::string::npos)
        return true;
    }
    return false;
  }

  size_t count(const std::string& log, const std::string& what) {
    const std::string text = read_text_file(log);
    size_t n = 0;
    for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
    return n;
  }

  std::string kind_;
  std::unique_ptr<TestPod> pod_;
  std::unique_ptr<ipt::ProcessRunner> runner_;
  std::unique_ptr<ipt::IptablesApplier> applier_;
  std::optional<CaptureConfig> cfg_;
  std::string upstream_log_, proxy_log_;
  pid_t proxy_ = -1;
};

TEST_P(DnsIptables, ListedResolverUdpAndTcpGoThroughTheProxy) {
  apply({"--dns-servers", pod_->peer_ipv4()});
  ASSERT_TRUE(wait_ready()) << read_text_file(proxy_log_);
  const std::string q = std::string("query[A] ") + kName + " from ";  // any source: REDIRECT keeps the pod's
  const size_t before = count(proxy_log_, q);

  const CommandResult udp = dig(pod_->peer_ipv4(), {});
  EXPECT_TRUE(udp.ok()) << udp.output;
  EXPECT_NE(udp.output.find(kAnswer), std::string::npos) << udp.output;  // dig checks the reply's source
  const CommandResult tcp = dig(pod_->peer_ipv4(), {"+tcp"});
  EXPECT_TRUE(tcp.ok()) << tcp.output;
  EXPECT_NE(tcp.output.find(kAnswer), std::string::npos) << tcp.output;
  EXPECT_EQ(count(proxy_log_, q), before + 2) << read_text_file(proxy_log_);
}

TEST_P(DnsIptables, ProxyOwnQueriesAreExempt) {
  apply({"--dns-servers", pod_->peer_ipv4()});
  ASSERT_TRUE(wait_ready());
  const std::string q = std::string("query[A] ") + kName + " from ";  // any source: REDIRECT keeps the pod's
  const size_t before = count(proxy_log_, q);
  const CommandResult r = dig(pod_->peer_ipv4(), {}, /*as_proxy=*/true);
  EXPECT_NE(r.output.find(kAnswer), std::string::npos) << r.output;
  EXPECT_EQ(count(proxy_log_, q), before) << "the proxy's UID must reach the resolver directly";
}

TEST_P(DnsIptables, UnlistedResolverIsNotCapturedWithoutCaptureAll) {
  apply({"--dns-servers", "10.99.99.99"});
  ASSERT_TRUE(wait_ready());
  const std::string q = std::string("query[A] ") + kName + " from ";  // any source: REDIRECT keeps the pod's
  const size_t before = count(proxy_log_, q);
  const CommandResult r = dig(pod_->peer_ipv4(), {});
  EXPECT_NE(r.output.find(kAnswer), std::string::npos) << r.output;
  EXPECT_EQ(count(proxy_log_, q), before);
}

TEST_P(DnsIptables, CaptureAllDnsAndProxyStoppedFailsClosed) {
  apply({"--capture-all-dns"});
  ASSERT_TRUE(wait_ready());
  const std::string q = std::string("query[A] ") + kName + " from ";  // any source: REDIRECT keeps the pod's
  const size_t before = count(proxy_log_, q);
  const CommandResult r = dig(pod_->peer_ipv4(), {});
  EXPECT_NE(r.output.find(kAnswer), std::string::npos) << r.output;
  EXPECT_EQ(count(proxy_log_, q), before + 1);

  ASSERT_TRUE(pod_->stop(proxy_).has_value());
  const std::string up = std::string("query[A] ") + kName + " from " + pod_->pod_ipv4();
  const size_t upstream_before = count(upstream_log_, up);
  const CommandResult down = dig(pod_->peer_ipv4(), {});
  EXPECT_EQ(down.output.find(kAnswer), std::string::npos) << down.output;
  EXPECT_EQ(count(upstream_log_, up), upstream_before) << "a query bypassed the stopped proxy";
}

TEST_P(DnsIptables, Ipv6ListedResolverGoesThroughTheProxy) {
  apply({"--dual-stack", "--dns-servers", pod_->peer_ipv6()});
  ASSERT_TRUE(wait_ready());
  const std::string q = std::string("query[A] ") + kName + " from ";
  const size_t before = count(proxy_log_, q);
  const CommandResult udp = dig(pod_->peer_ipv6(), {});
  EXPECT_NE(udp.output.find(kAnswer), std::string::npos) << udp.output;
  const CommandResult tcp = dig(pod_->peer_ipv6(), {"+tcp"});
  EXPECT_NE(tcp.output.find(kAnswer), std::string::npos) << tcp.output;
  EXPECT_EQ(count(proxy_log_, q), before + 2) << read_text_file(proxy_log_);
}

INSTANTIATE_TEST_SUITE_P(Backends, DnsIptables, ::testing::Values("nft", "legacy"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace meshcap::test
