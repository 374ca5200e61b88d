// eBPF inbound capture (sk_lookup) with real sockets: connections from the
// peer namespace to the pod, checked against shared/CAPTURE-SEMANTICS.md
// rows I1-I6.
#include <bpf/bpf.h>

#include "kernel_features.h"
#include "capture_fixture.h"

namespace meshcap::test {
namespace {

class EbpfInbound : public CaptureTest {
 protected:
  void SetUp() override {
    CaptureTest::SetUp();
    if (IsSkipped()) return;
    if (!loader::KernelFeatures().prog_sk_lookup()) GTEST_SKIP() << "this kernel refuses meshcap's sk_lookup program";
    for (uint16_t port : {8080, 9090, 15008}) {
      apps4_.push_back(std::make_unique<RecordingListener>(Placement::pod_process(*pod_), "0.0.0.0", port));
      apps6_.push_back(std::make_unique<RecordingListener>(Placement::pod_process(*pod_), "::", port));
    }
  }

  void start_proxy_listeners() {
    in4_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "0.0.0.0", 15006);
    in6_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "::", 15006);
    out4_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "127.0.0.1", 15001);
  }

  /// A round trip from the peer namespace (outside the pod).
  RoundTrip from_peer(const std::string& ip, uint16_t port) {
    return roundtrip_in_peer(*pod_, ip, port, Millis(3000));
  }

  size_t app_accepted(size_t i) const { return apps4_[i]->accepted() + apps6_[i]->accepted(); }

  std::vector<std::unique_ptr<RecordingListener>> apps4_, apps6_;  // 8080, 9090, 15008
  std::unique_ptr<RecordingListener> in4_, in6_, out4_;
};

TEST_F(EbpfInbound, IncludedPortsLandOnInboundListenerWithOriginalDst) {
  ASSERT_EQ(init_ebpf({"-b", "8080"}).exit_code, 0);
  start_proxy_listeners();  // after init: caught by sockops when it listens
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_TRUE(from_peer(pod_->pod_ipv6(), 8080).ok());
  ASSERT_TRUE(in4_->wait_for_accepts(1));
  ASSERT_TRUE(in6_->wait_for_accepts(1));
  for (const auto& rec : {in4_->records().at(0), in6_->records().at(0)}) {
    // The proxy sees the original destination as its local address and
    // through SO_ORIGINAL_DST, and the real client as its peer.
    ASSERT_TRUE(rec.original_dst.ok) << "errno " << rec.original_dst.error;
    EXPECT_EQ(rec.original_dst.address, rec.local);
    EXPECT_TRUE(rec.local == endpoint(pod_->pod_ipv4(), 8080) || rec.local == endpoint(pod_->pod_ipv6(), 8080))
        << rec.local;
    EXPECT_TRUE(host_of(rec.peer) == pod_->peer_ipv4() || host_of(rec.peer) == pod_->peer_ipv6()) << rec.peer;
  }
  EXPECT_ACCEPTS(app_accepted(0), 0);
  // Ports not in -b reach the application directly.
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 9090).ok());
  EXPECT_ACCEPTS(app_accepted(1), 1);
  auto c = loader::pinned_counters(name_);
  EXPECT_EQ(c["in_redirected"], 2u);
  EXPECT_EQ(c["in_not_included"], 1u);
  EXPECT_EQ(c["orig_dst_answered"], 2u);
}

TEST_F(EbpfInbound, RunningProxyListenerIsAdoptedAtInit) {
  start_proxy_listeners();  // before init: taken from the proxy process
  ASSERT_EQ(init_ebpf({"-b", "*"}).exit_code, 0);
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_TRUE(in4_->wait_for_accepts(1));
  EXPECT_ACCEPTS(app_accepted(0), 0);
}

TEST_F(EbpfInbound, WildcardHonoursExcludedPortsAndTunnelPort) {
  ASSERT_EQ(init_ebpf({"-b", "*", "-d", "9090"}).exit_code, 0);
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 9090).ok());
  EXPECT_TRUE(from_peer(pod_->pod_ipv6(), 15008).ok());
  EXPECT_ACCEPTS(in4_->accepted() + in6_->accepted(), 1);
  EXPECT_ACCEPTS(app_accepted(0), 0);
  EXPECT_ACCEPTS(app_accepted(1), 1);
  EXPECT_ACCEPTS(app_accepted(2), 1);
  auto c = loader::pinned_counters(name_);
  EXPECT_EQ(c["in_excluded_port"], 1u);
  EXPECT_EQ(c["in_tunnel_port"], 1u);
}

TEST_F(EbpfInbound, ExcludedInterfaceIsNotCaptured) {
  ASSERT_EQ(init_ebpf({"-b", "*", "-c", pod_->pod_veth()}).exit_code, 0);
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(app_accepted(0), 1);
  EXPECT_ACCEPTS(in4_->accepted(), 0);
  EXPECT_EQ(loader::pinned_counters(name_)["in_excluded_interface"], 1u);
}

TEST_F(EbpfInbound, VirtualInterfaceGoesToOutboundListener) {
  ASSERT_EQ(init_ebpf({"-k", pod_->pod_veth(), "-i", "*"}).exit_code, 0);
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  ASSERT_TRUE(out4_->wait_for_accepts(1));
  auto rec = out4_->records().at(0);
  ASSERT_TRUE(rec.original_dst.ok) << "errno " << rec.original_dst.error;
  EXPECT_EQ(rec.original_dst.address, endpoint(pod_->pod_ipv4(), 8080));
  EXPECT_ACCEPTS(app_accepted(0), 0);
}

TEST_F(EbpfInbound, ConnectionsFromInsideThePodFollowOutboundRules) {
  ASSERT_EQ(init_ebpf({"-b", "*", "-i", "*"}).exit_code, 0);
  start_proxy_listeners();
  // An application in the pod dialing the pod's own address: O3, direct.
  EXPECT_TRUE(app_roundtrip(pod_->pod_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(app_accepted(0), 1);
  EXPECT_ACCEPTS(in4_->accepted() + in6_->accepted(), 0);
}

TEST_F(EbpfInbound, ProxyDownIsRefusedAndCaptureResumesWhenItListens) {
  ASSERT_EQ(init_ebpf({"-b", "8080"}).exit_code, 0);
  // No proxy listening: refused at once, as REDIRECT to a closed port.
  RoundTrip down = from_peer(pod_->pod_ipv4(), 8080);
  EXPECT_EQ(down.error, ECONNREFUSED);
  EXPECT_ACCEPTS(app_accepted(0), 0);
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(in4_->accepted(), 1);
  // The proxy goes away again (restart): refused, then back.
  in4_.reset();
  in6_.reset();
  out4_.reset();
  EXPECT_EQ(from_peer(pod_->pod_ipv4(), 8080).error, ECONNREFUSED);
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(in4_->accepted(), 1);
  EXPECT_EQ(loader::pinned_counters(name_)["in_proxy_down"], 2u);
}

TEST_F(EbpfInbound, CleanupDetachesSkLookup) {
  ASSERT_EQ(init_ebpf({"-b", "*"}).exit_code, 0);
  EXPECT_EQ(sk_lookup_attached(pod_->pod_netns_path()), 1u);
  ASSERT_EQ(meshcap({"cleanup", "--name", name_}).exit_code, 0);
  EXPECT_EQ(sk_lookup_attached(pod_->pod_netns_path()), 0u);
  EXPECT_EQ(programs_attached(pod_->cgroup_path()), 0u);
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(app_accepted(0), 1);
  EXPECT_ACCEPTS(in4_->accepted(), 0);
}

}  // namespace
}  // namespace meshcap::test
