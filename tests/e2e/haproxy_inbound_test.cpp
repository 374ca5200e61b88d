// End to end inbound: a client outside the pod reaches the application
// through haproxy's inbound listener, steered by sk_lookup; haproxy reads
// the original destination with SO_ORIGINAL_DST and connects to it from
// 127.0.0.6, which capture lets through.
#include "kernel_features.h"
#include "kernel/capture_fixture.h"
#include "support/gtest_helpers.h"
#include "support/haproxy.h"

namespace meshcap::test {
namespace {

class HaproxyInbound : public CaptureTest {
 protected:
  void SetUp() override {
    CaptureTest::SetUp();
    if (IsSkipped()) return;
    MESHCAP_REQUIRE_BINARY("haproxy");
    if (!loader::KernelFeatures().prog_sk_lookup()) GTEST_SKIP() << "this kernel refuses meshcap's sk_lookup program";
    config_ = haproxy_config(*pod_);
    haproxy_ = start_haproxy(*pod_, config_);  // listening before init: adopted
    app_ = std::make_unique<EchoServer>(Placement::pod_process(*pod_), "0.0.0.0", 8080);
    // istio-init's arguments.
    auto r = init_ebpf({"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*",
                        "-d", "15090,15021,15020"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  // Round trips from the peer namespace; returns how many failed.
  int from_peer(int n) {
    std::string pod_ip = pod_->pod_ipv4();
    return pod_->run_in_peer([=] {
      int failed = 0;
      for (int i = 0; i < n; i++) {
        std::string payload = "in-" + std::to_string(i);
        RoundTrip r = tcp_roundtrip(pod_ip, 8080, payload, Millis(3000));
        if (!r.ok() || r.reply != payload) failed++;
      }
      return failed;
    });
  }

  std::string config_;
  HaproxyProcess haproxy_;
  std::unique_ptr<EchoServer> app_;
};

TEST_F(HaproxyInbound, ClientOutsideReachesTheApplicationThroughHaproxy) {
  EXPECT_EQ(from_peer(100), 0) << read_text_file(haproxy_.log_path);
  ASSERT_TRUE(app_->wait_for_accepts(100));
  // Every connection came from haproxy's passthrough source.
  for (const auto& rec : app_->records()) EXPECT_EQ(host_of(rec.peer), "127.0.0.6");
  auto c = loader::pinned_counters(name_);
  // sk_lookup runs per SYN: a retransmitted SYN on a loaded machine counts
  // twice, so at least one per connection.
  EXPECT_GE(c["in_redirected"], 100u);
  EXPECT_EQ(c["orig_dst_answered"], 100u);
  EXPECT_EQ(c["passthrough_source"], 100u);
}

TEST_F(HaproxyInbound, ProxyRestartIsRefusedThenRecovers) {
  EXPECT_EQ(from_peer(10), 0);
  ASSERT_TRUE(pod_->stop(haproxy_.pid).has_value());
  EXPECT_EQ(from_peer(5), 5);  // refused while the proxy is down
  EXPECT_ACCEPTS(app_->accepted(), 10);
  haproxy_ = start_haproxy(*pod_, config_);  // listens again: sockops re-adds it
  EXPECT_EQ(from_peer(10), 0) << read_text_file(haproxy_.log_path);
  EXPECT_TRUE(app_->wait_for_accepts(20));
  EXPECT_EQ(loader::pinned_counters(name_)["in_proxy_down"], 5u);
}

}  // namespace
}  // namespace meshcap::test
