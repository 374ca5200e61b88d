// End to end with a real, unmodified proxy, once per capture mode
// (kernel/capture_modes.h): haproxy from Debian runs as UID/GID 1337 in the
// pod, `meshcap init` with istio-init's arguments sends the application's
// connections to it and the ones from outside the pod to its inbound
// listener, and haproxy finds the real destination with SO_ORIGINAL_DST
// (inbound, it connects on from 127.0.0.6, which capture lets through).
//
// Where the engines' expectations differ it is in what they count
// (docs/known-differences.md, "Redirect counters"): eBPF decision counters,
// or the packets of iptables' nat rules (`iptables-save -c` in the pod's
// netns); the scenarios branch on the engine of the part.
#include "kernel/capture_fixture.h"
#include "support/gtest_helpers.h"
#include "support/haproxy.h"

namespace meshcap::test {
namespace {

/// istio-init's arguments (the sidecar injector's defaults).
const std::vector<std::string> kIstioInitArgs = {"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
                                                 "-i", "*",     "-x", "",      "-b", "*",    "-d", "15090,15021,15020"};

class Haproxy : public CaptureModeTest {
 protected:
  /// Outbound scenarios capture inbound too where the mode can; inbound
  /// ones are skipped where it cannot.
  void set_up(bool inbound) {
    set_up_mode(inbound);
    if (IsSkipped()) return;
    MESHCAP_REQUIRE_BINARY("haproxy");
    config_ = haproxy_config(*pod_);  // outbound 127.0.0.1:15001, inbound 0.0.0.0:15006 from 127.0.0.6
    haproxy_ = start_haproxy(*pod_, config_);  // listening before init: adopted by eBPF
    echo_ = std::make_unique<EchoServer>(Placement::peer_thread(*pod_), pod_->peer_ipv4(), 9000);
    app_ = std::make_unique<EchoServer>(Placement::pod_process(*pod_), "0.0.0.0", 8080);
    std::vector<std::string> args = kIstioInitArgs;
    if (!mode().unavailable(true).empty()) *(std::find(args.begin(), args.end(), "-b") + 1) = "";
    ASSERT_TRUE(init(args));
  }

  // Round trips to the peer's echo server from `threads` threads of one
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

  int64_t proxy_uid_exempt() { return packets(false, "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"); }
  int64_t passthrough_source() { return packets(false, "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN"); }

  std::string config_;
  HaproxyProcess haproxy_;
  std::unique_ptr<EchoServer> echo_;  // peer_ipv4:9000
  std::unique_ptr<EchoServer> app_;   // the pod's application, 0.0.0.0:8080
};

// ---- outbound: application -> haproxy 15001 -> peer ----

class HaproxyOutbound : public Haproxy {
 protected:
  void SetUp() override { set_up(false); }
};

TEST_P(HaproxyOutbound, SequentialConnectionsReachTheRealDestinationThroughHaproxy) {
  EXPECT_EQ(run_app(1, 300), 0) << read_text_file(haproxy_.log_path);
  ASSERT_TRUE(echo_->wait_for_accepts(300));
  // Every connection reached the server from the pod's address (haproxy's
  // own, uncaptured connection), none bypassed the proxy.
  for (const auto& rec : echo_->records()) EXPECT_EQ(host_of(rec.peer), pod_->pod_ipv4());
  if (ebpf_outbound()) {  // Redirect counters
    auto c = counters();
    EXPECT_EQ(c["redirected_outbound"], 300u);
    EXPECT_EQ(c["orig_dst_answered"], 300u);
    EXPECT_EQ(c["exempt_uid"], 300u);  // haproxy's connections onward
    EXPECT_EQ(c["orig_dst_not_found"], 0u);
  } else {
    EXPECT_EQ(outbound_redirects(false), 300);
    EXPECT_EQ(proxy_uid_exempt(), 300);  // haproxy's connections onward
    EXPECT_EQ(inbound_redirects(false), 0);
  }
}

TEST_P(HaproxyOutbound, ConcurrentConnectionsReachTheRealDestinationThroughHaproxy) {
  EXPECT_EQ(run_app(32, 25), 0) << read_text_file(haproxy_.log_path);
  ASSERT_TRUE(echo_->wait_for_accepts(800));
  EXPECT_EQ(echo_->accepted(), 800u);
  if (ebpf_outbound()) {  // Redirect counters, and eBPF's connection table
    auto c = counters();
    EXPECT_EQ(c["redirected_outbound"], 800u);
    EXPECT_EQ(c["orig_dst_answered"], 800u);
    EXPECT_EQ(c["map_full"], 0u);
    // Records leave the table once haproxy's side of each is established.
    size_t left = 0;
    for (int i = 0; i < 100 && (left = loader::pinned_connection_entries(name_)) != 0; i++) usleep(100 * 1000);
    EXPECT_EQ(left, 0u);
  } else {
    EXPECT_EQ(outbound_redirects(false), 800);
    EXPECT_EQ(proxy_uid_exempt(), 800);
  }
}

TEST_P(HaproxyOutbound, ProxyDownRefusesAndCleanupGoesDirectAgain) {
  EXPECT_EQ(run_app(1, 10), 0);
  // With the proxy gone, captured connections are refused (as with
  // iptables REDIRECT to a closed port): they really went through it.
  ASSERT_TRUE(pod_->stop(haproxy_.pid).has_value());
  EXPECT_EQ(run_app(1, 5), 5);
  EXPECT_ACCEPTS(echo_->accepted(), 10);
  if (!ebpf_outbound()) {  // Redirect counters
    EXPECT_EQ(outbound_redirects(false), 15);
  }
  // After cleanup the same connections go direct, without a proxy.
  auto r = meshcap({"cleanup", "--name", name_});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(leftovers(), "");  // no program attached, no pins, no ISTIO chain
  EXPECT_EQ(run_app(1, 10), 0);
  EXPECT_TRUE(echo_->wait_for_accepts(20));
  // ... and inbound reaches the application directly, from the peer itself.
  EXPECT_EQ(from_peer(5), 0);
  ASSERT_TRUE(app_->wait_for_accepts(5));
  for (const auto& rec : app_->records()) EXPECT_EQ(host_of(rec.peer), pod_->peer_ipv4());
}

// ---- inbound: peer -> haproxy 15006 -> application (from 127.0.0.6) ----

class HaproxyInbound : public Haproxy {
 protected:
  void SetUp() override { set_up(true); }
};

TEST_P(HaproxyInbound, ClientOutsideReachesTheApplicationThroughHaproxy) {
  EXPECT_EQ(from_peer(100), 0) << read_text_file(haproxy_.log_path);
  ASSERT_TRUE(app_->wait_for_accepts(100));
  EXPECT_EQ(app_->accepted(), 100u);
  // Every connection came from haproxy's passthrough source.
  for (const auto& rec : app_->records()) EXPECT_EQ(host_of(rec.peer), "127.0.0.6");
  if (ebpf_inbound()) {  // Redirect counters
    auto c = counters();
    // sk_lookup runs per SYN: a retransmitted SYN on a loaded machine counts
    // twice, so at least one per connection.
    EXPECT_GE(c["in_redirected"], 100u);
    EXPECT_EQ(c["orig_dst_answered"], 100u);
    EXPECT_EQ(c["passthrough_source"], 100u);  // haproxy -> app, not captured again
  } else {
    EXPECT_EQ(inbound_redirects(false), 100);
    EXPECT_EQ(passthrough_source(), 100);  // haproxy -> app, not captured again
    EXPECT_EQ(outbound_redirects(false), 0);
  }
}

TEST_P(HaproxyInbound, ExcludedInboundPortsBypassHaproxy) {
  // -d 15090,15021,15020: straight to the application, from the real client.
  EchoServer health(Placement::pod_process(*pod_), "0.0.0.0", 15021);
  EXPECT_EQ(from_peer(5, 15021), 0);
  ASSERT_TRUE(health.wait_for_accepts(5));
  for (const auto& rec : health.records()) EXPECT_EQ(host_of(rec.peer), pod_->peer_ipv4());
  if (!ebpf_inbound()) {  // Redirect counters
    EXPECT_EQ(inbound_redirects(false), 0);
    EXPECT_EQ(packets(false, "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN"), 5);
  }
}

TEST_P(HaproxyInbound, ProxyRestartIsRefusedThenRecovers) {
  EXPECT_EQ(from_peer(10), 0);
  ASSERT_TRUE(pod_->stop(haproxy_.pid).has_value());
  EXPECT_EQ(from_peer(5), 5);  // refused while the proxy is down
  EXPECT_ACCEPTS(app_->accepted(), 10);
  haproxy_ = start_haproxy(*pod_, config_);  // listens again: eBPF's sockops re-adds it
  EXPECT_EQ(from_peer(10), 0) << read_text_file(haproxy_.log_path);
  EXPECT_TRUE(app_->wait_for_accepts(20));
  // Redirect counters: eBPF counts the refusals apart; iptables' redirect
  // rule counted the refused connections too.
  if (ebpf_inbound()) {
    EXPECT_EQ(counters()["in_proxy_down"], 5u);
  } else {
    EXPECT_EQ(inbound_redirects(false), 25);
    EXPECT_EQ(passthrough_source(), 20);
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, HaproxyOutbound, ::testing::ValuesIn(all_modes()), capture_mode_name);
INSTANTIATE_TEST_SUITE_P(Modes, HaproxyInbound, ::testing::ValuesIn(all_modes()), capture_mode_name);

}  // namespace
}  // namespace meshcap::test
