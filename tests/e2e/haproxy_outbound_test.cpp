// End to end with a real, unmodified proxy: haproxy from Debian runs as
// UID/GID 1337 in the pod, eBPF capture sends the application's connections
// to it, and haproxy finds the real destination with SO_ORIGINAL_DST.
#include <atomic>
#include <thread>

#include "kernel/capture_fixture.h"
#include "support/gtest_helpers.h"
#include "support/haproxy.h"

namespace meshcap::test {
namespace {

class HaproxyOutbound : public CaptureTest {
 protected:
  void SetUp() override {
    CaptureTest::SetUp();
    if (IsSkipped()) return;
    MESHCAP_REQUIRE_BINARY("haproxy");
    HaproxyOptions opts;
    opts.inbound_bind = "";  // outbound only in this slice
    haproxy_ = start_haproxy(*pod_, haproxy_config(*pod_, opts));
    echo_ = std::make_unique<EchoServer>(Placement::peer_thread(*pod_), pod_->peer_ipv4(), 9000);
    ASSERT_EQ(init_ebpf({"-i", "*"}).exit_code, 0);
  }

  // Runs `connections` round trips from `threads` threads of one application
  // process in the pod; returns how many failed.
  int run_app(int threads, int connections_per_thread) {
    return parallel_roundtrips_in_pod(*pod_, pod_->peer_ipv4(), 9000, threads, connections_per_thread);
  }

  HaproxyProcess haproxy_;
  std::unique_ptr<EchoServer> echo_;
};

TEST_F(HaproxyOutbound, SequentialConnectionsReachTheRealDestinationThroughHaproxy) {
  EXPECT_EQ(run_app(1, 300), 0) << read_text_file(haproxy_.log_path);
  ASSERT_TRUE(echo_->wait_for_accepts(300));
  // Every connection reached the server from the pod's address (haproxy's
  // own, uncaptured connection), none bypassed the proxy.
  for (const auto& rec : echo_->records()) EXPECT_EQ(host_of(rec.peer), pod_->pod_ipv4());
  auto c = loader::pinned_counters(name_);
  EXPECT_EQ(c["redirected_outbound"], 300u);
  EXPECT_EQ(c["orig_dst_answered"], 300u);
  EXPECT_EQ(c["exempt_uid"], 300u);  // haproxy's connections onward
  EXPECT_EQ(c["orig_dst_not_found"], 0u);
}

TEST_F(HaproxyOutbound, ConcurrentConnectionsReachTheRealDestinationThroughHaproxy) {
  EXPECT_EQ(run_app(32, 25), 0) << read_text_file(haproxy_.log_path);
  ASSERT_TRUE(echo_->wait_for_accepts(800));
  auto c = loader::pinned_counters(name_);
  EXPECT_EQ(c["redirected_outbound"], 800u);
  EXPECT_EQ(c["orig_dst_answered"], 800u);
  EXPECT_EQ(c["map_full"], 0u);
  // Records leave the table once haproxy's side of each is established.
  size_t left = 0;
  for (int i = 0; i < 100 && (left = loader::pinned_connection_entries(name_)) != 0; i++) usleep(100 * 1000);
  EXPECT_EQ(left, 0u);
}

TEST_F(HaproxyOutbound, ProxyDownRefusesAndCleanupGoesDirectAgain) {
  EXPECT_EQ(run_app(1, 10), 0);
  // With the proxy gone, captured connections are refused (as with
  // iptables REDIRECT to a closed port): they really went through it.
  ASSERT_TRUE(pod_->stop(haproxy_.pid).has_value());
  EXPECT_EQ(run_app(1, 5), 5);
  EXPECT_ACCEPTS(echo_->accepted(), 10);
  // After cleanup the same connections go direct, without a proxy.
  ASSERT_EQ(meshcap({"cleanup", "--name", name_}).exit_code, 0);
  EXPECT_EQ(programs_attached(pod_->cgroup_path()), 0u);
  EXPECT_EQ(run_app(1, 10), 0);
  EXPECT_TRUE(echo_->wait_for_accepts(20));
}

}  // namespace
}  // namespace meshcap::test
