// Inbound capture with real sockets, once per capture mode (capture_modes.h):
// connections from the peer namespace to the pod, checked against
// shared/CAPTURE-SEMANTICS.md rows I1-I6. eBPF steers them with sk_lookup,
// iptables REDIRECTs them in nat PREROUTING.
//
// Where the engines' expectations differ, a scenario branches on the engine
// the inbound part ended with (ebpf_inbound()) and names the difference of
// docs/known-differences.md ("Redirect counters" where only the counters
// differ: eBPF decision counters, the packets of iptables' nat rules).
#include "capture_fixture.h"

namespace meshcap::test {
namespace {

class CaptureInbound : public CaptureModeTest {
 protected:
  void SetUp() override {
    set_up_mode(true);
    if (IsSkipped()) return;
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
  void stop_proxy_listeners() {
    in4_.reset();
    in6_.reset();
    out4_.reset();
  }

  /// A round trip from the peer namespace (outside the pod).
  RoundTrip from_peer(const std::string& ip, uint16_t port) {
    return roundtrip_in_peer(*pod_, ip, port, Millis(3000));
  }

  /// Accepts of the application's servers on port index i (8080, 9090, 15008).
  size_t app_accepted(size_t i) const { return apps4_[i]->accepted() + apps6_[i]->accepted(); }

  std::vector<std::unique_ptr<RecordingListener>> apps4_, apps6_;  // 8080, 9090, 15008
  std::unique_ptr<RecordingListener> in4_, in6_, out4_;
};

/// Scenarios of the eBPF engine alone (sockops adopting a listening
/// proxy): the modes that always capture with eBPF.
class EbpfInbound : public CaptureInbound {};

TEST_P(CaptureInbound, IncludedPortsLandOnInboundListenerWithOriginalDst) {
  ASSERT_TRUE(init({"-b", "8080", "--dual-stack"}));
  start_proxy_listeners();  // after init: eBPF's sockops catches it when it listens
  RoundTrip r4 = from_peer(pod_->pod_ipv4(), 8080);
  RoundTrip r6 = from_peer(pod_->pod_ipv6(), 8080);
  ASSERT_TRUE(r4.ok()) << "errno " << r4.error;
  ASSERT_TRUE(r6.ok()) << "errno " << r6.error;
  // The client outside sees the address it dialed.
  EXPECT_EQ(r4.peer, endpoint(pod_->pod_ipv4(), 8080));
  EXPECT_EQ(r6.peer, endpoint(pod_->pod_ipv6(), 8080));
  ASSERT_TRUE(in4_->wait_for_accepts(1));
  ASSERT_TRUE(in6_->wait_for_accepts(1));
  // The proxy reads the original destination with SO_ORIGINAL_DST and sees
  // the real client as its peer.
  auto rec4 = in4_->records().at(0);
  ASSERT_TRUE(rec4.original_dst.ok) << "errno " << rec4.original_dst.error;
  EXPECT_EQ(rec4.original_dst.address, endpoint(pod_->pod_ipv4(), 8080));
  EXPECT_EQ(rec4.peer, r4.local);
  auto rec6 = in6_->records().at(0);
  ASSERT_TRUE(rec6.original_dst.ok) << "errno " << rec6.original_dst.error;
  EXPECT_EQ(rec6.original_dst.address, endpoint(pod_->pod_ipv6(), 8080));
  EXPECT_EQ(rec6.peer, r6.local);
  if (ebpf_inbound()) {
    // inbound-proxy-local-address: sk_lookup hands the connection over
    // unchanged, so the accepted socket's own address is the original
    // destination ...
    EXPECT_EQ(rec4.local, rec4.original_dst.address);
    EXPECT_EQ(rec6.local, rec6.original_dst.address);
  } else {
    // ... while REDIRECT rewrites it to the receiving interface's address
    // and port 15006.
    EXPECT_EQ(rec4.local, endpoint(pod_->pod_ipv4(), 15006));
    EXPECT_EQ(rec6.local.substr(rec6.local.rfind(':')), ":15006");
  }
  EXPECT_ACCEPTS(app_accepted(0), 0);
  // Ports not in -b reach the application directly.
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 9090).ok());
  EXPECT_ACCEPTS(app_accepted(1), 1);
  if (ebpf_inbound()) {  // Redirect counters
    auto c = counters();
    EXPECT_EQ(c["in_redirected"], 2u);
    EXPECT_EQ(c["in_not_included"], 1u);
    EXPECT_EQ(c["orig_dst_answered"], 2u);
  } else {
    EXPECT_EQ(inbound_redirects(false), 1);
    EXPECT_EQ(inbound_redirects(true), 1);
  }
}

TEST_P(EbpfInbound, RunningProxyListenerIsAdoptedAtInit) {
  start_proxy_listeners();  // before init: taken from the proxy process
  ASSERT_TRUE(init({"-b", "*"}));
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_TRUE(in4_->wait_for_accepts(1));
  EXPECT_ACCEPTS(app_accepted(0), 0);
}

TEST_P(CaptureInbound, WildcardHonoursExcludedPortsAndTunnelPort) {
  ASSERT_TRUE(init({"-b", "*", "-d", "9090", "--dual-stack"}));
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 9090).ok());
  EXPECT_TRUE(from_peer(pod_->pod_ipv6(), 15008).ok());
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 15008).ok());
  EXPECT_ACCEPTS(in4_->accepted(), 1);
  EXPECT_EQ(in4_->records().at(0).original_dst.address, endpoint(pod_->pod_ipv4(), 8080));
  EXPECT_EQ(in6_->accepted(), 0u);
  EXPECT_ACCEPTS(app_accepted(0), 0);
  EXPECT_ACCEPTS(app_accepted(1), 1);
  EXPECT_ACCEPTS(app_accepted(2), 2);
  if (ebpf_inbound()) {  // Redirect counters
    auto c = counters();
    EXPECT_EQ(c["in_excluded_port"], 1u);
    EXPECT_EQ(c["in_tunnel_port"], 2u);
  } else {
    EXPECT_EQ(packets(false, "-A ISTIO_INBOUND -p tcp -m tcp --dport 9090 -j RETURN"), 1);
    EXPECT_EQ(packets(false, "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN"), 1);
    EXPECT_EQ(packets(true, "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN"), 1);
    EXPECT_EQ(inbound_redirects(false), 1);
  }
}

TEST_P(CaptureInbound, EmptyInboundPortsCaptureNothing) {
  ASSERT_TRUE(init({"-b", "", "-i", "*", "--dual-stack"}));
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_TRUE(from_peer(pod_->pod_ipv6(), 8080).ok());
  EXPECT_ACCEPTS(app_accepted(0), 2);
  EXPECT_EQ(in4_->accepted() + in6_->accepted(), 0u);
}

TEST_P(CaptureInbound, ExcludedInterfaceIsNotCaptured) {
  ASSERT_TRUE(init({"-b", "*", "-c", pod_->pod_veth()}));
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(app_accepted(0), 1);
  EXPECT_ACCEPTS(in4_->accepted(), 0);
  if (ebpf_inbound()) {  // Redirect counters
    EXPECT_EQ(counters()["in_excluded_interface"], 1u);
  } else {
    EXPECT_EQ(packets(false, "-A PREROUTING -i " + pod_->pod_veth() + " -j RETURN"), 1);
  }
}

TEST_P(CaptureInbound, VirtualInterfaceGoesToOutboundListener) {
  ASSERT_TRUE(init({"-k", pod_->pod_veth(), "-i", "*"}));
  start_proxy_listeners();
  // -k (virtual interfaces): sk_lookup hands the connection to the outbound
  // listening socket whatever address it is bound to, so the 127.0.0.1:15001
  // listener gets it. REDIRECT from PREROUTING goes to the receiving
  // interface's address: refused there, and one on 0.0.0.0:15001 (as Envoy
  // binds) gets it.
  std::unique_ptr<RecordingListener> any;
  RecordingListener* proxy = out4_.get();
  if (!ebpf_inbound()) {
    EXPECT_EQ(from_peer(pod_->pod_ipv4(), 8080).error, ECONNREFUSED);
    EXPECT_EQ(out4_->accepted(), 0u);
    out4_.reset();
    any = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "0.0.0.0", 15001);
    proxy = any.get();
  }
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  ASSERT_TRUE(proxy->wait_for_accepts(1));
  auto rec = proxy->records().at(0);
  ASSERT_TRUE(rec.original_dst.ok) << "errno " << rec.original_dst.error;
  EXPECT_EQ(rec.original_dst.address, endpoint(pod_->pod_ipv4(), 8080));
  EXPECT_ACCEPTS(app_accepted(0), 0);
  if (!ebpf_inbound()) {
    EXPECT_EQ(rec.local, endpoint(pod_->pod_ipv4(), 15001));
    EXPECT_EQ(outbound_redirects(false), 2);  // Redirect counters
  }
}

TEST_P(CaptureInbound, ConnectionsFromInsideThePodFollowOutboundRules) {
  ASSERT_TRUE(init({"-b", "*", "-i", "*", "--dual-stack"}));
  start_proxy_listeners();
  // An application in the pod dialing the pod's own address: O3, direct.
  EXPECT_TRUE(app_roundtrip(pod_->pod_ipv4(), 8080).ok());
  EXPECT_TRUE(app_roundtrip(pod_->pod_ipv6(), 8080).ok());
  EXPECT_ACCEPTS(app_accepted(0), 2);
  EXPECT_EQ(in4_->accepted() + in6_->accepted(), 0u);
  if (!ebpf_inbound()) {  // Redirect counters
    EXPECT_EQ(inbound_redirects(false) + inbound_redirects(true), 0);
  }
}

TEST_P(CaptureInbound, ProxyDownIsRefusedAndCaptureResumesWhenItListens) {
  ASSERT_TRUE(init({"-b", "8080"}));
  // No proxy listening: refused at once, as REDIRECT to a closed port.
  EXPECT_EQ(from_peer(pod_->pod_ipv4(), 8080).error, ECONNREFUSED);
  EXPECT_ACCEPTS(app_accepted(0), 0);
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(in4_->accepted(), 1);
  // The proxy goes away again (restart): refused, then back.
  stop_proxy_listeners();
  EXPECT_EQ(from_peer(pod_->pod_ipv4(), 8080).error, ECONNREFUSED);
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(in4_->accepted(), 1);
  EXPECT_EQ(app_accepted(0), 0u);
  // Redirect counters: eBPF counts the refusals apart; iptables' redirect
  // rule counted the refused connections too.
  if (ebpf_inbound()) {
    EXPECT_EQ(counters()["in_proxy_down"], 2u);
  } else {
    EXPECT_EQ(inbound_redirects(false), 4);
  }
}

TEST_P(CaptureInbound, InitTwiceKeepsTheSameCaptureAndBehaviour) {
  const std::vector<std::string> args = {"-b", "*", "-d", "9090", "--dual-stack"};
  ASSERT_TRUE(init(args));
  std::string v4, v6;
  if (!ebpf_inbound()) {
    v4 = nat_rules(false);
    v6 = nat_rules(true);
  }
  ASSERT_TRUE(init(args));
  if (ebpf_inbound()) {
    EXPECT_EQ(sk_lookup_attached(pod_->pod_netns_path()), 1u);
  } else {
    EXPECT_EQ(nat_rules(false), v4);
    EXPECT_EQ(nat_rules(true), v6);
  }
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_TRUE(from_peer(pod_->pod_ipv6(), 8080).ok());
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 9090).ok());
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 15008).ok());
  EXPECT_ACCEPTS(in4_->accepted(), 1);
  EXPECT_ACCEPTS(in6_->accepted(), 1);
  EXPECT_EQ(in4_->records().at(0).original_dst.address, endpoint(pod_->pod_ipv4(), 8080));
  EXPECT_EQ(in6_->records().at(0).original_dst.address, endpoint(pod_->pod_ipv6(), 8080));
  EXPECT_EQ(app_accepted(0), 0u);
  EXPECT_ACCEPTS(app_accepted(1), 1);
  EXPECT_ACCEPTS(app_accepted(2), 1);
  if (!ebpf_inbound()) {  // Redirect counters
    EXPECT_EQ(inbound_redirects(false), 1);
    EXPECT_EQ(inbound_redirects(true), 1);
  }
}

TEST_P(CaptureInbound, CleanupGoesDirectAgain) {
  ASSERT_TRUE(init({"-b", "*", "--dual-stack"}));
  if (ebpf_inbound()) {
    EXPECT_EQ(sk_lookup_attached(pod_->pod_netns_path()), 1u);
  } else {
    for (bool v6 : {false, true}) EXPECT_NE(nat_save(v6).find("ISTIO_INBOUND"), std::string::npos);
  }
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(in4_->accepted(), 1);
  auto r = meshcap({"cleanup", "--name", name_});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(leftovers(), "");  // no sk_lookup or cgroup program, no pins, no ISTIO chain
  // The proxy restarts after cleanup: nothing steers connections to it.
  stop_proxy_listeners();
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_TRUE(from_peer(pod_->pod_ipv6(), 8080).ok());
  EXPECT_ACCEPTS(app_accepted(0), 2);
  EXPECT_EQ(in4_->accepted() + in6_->accepted(), 0u);
}

INSTANTIATE_TEST_SUITE_P(Modes, CaptureInbound, ::testing::ValuesIn(all_modes()), capture_mode_name);
INSTANTIATE_TEST_SUITE_P(Modes, EbpfInbound, ::testing::ValuesIn(modes_with_engine(Engine::ebpf)), capture_mode_name);

}  // namespace
}  // namespace meshcap::test
