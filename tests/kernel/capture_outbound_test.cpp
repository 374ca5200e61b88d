// Outbound capture with real hooks and real sockets, once per capture mode
// (capture_modes.h): `meshcap init` on a throwaway pod, connections made by
// processes in the pod's cgroup, checked against shared/CAPTURE-SEMANTICS.md
// rows O1-O8.
//
// Where the engines' expectations differ, a scenario branches on the engine
// the part ended with (ebpf_outbound()) and names the difference of
// docs/known-differences.md. Most such branches are "Redirect counters": the
// eBPF mode counts its decisions (pinned counters), iptables counts the
// packets of its nat rules (`iptables-save -c` in the pod's netns), and only
// eBPF has a connection table.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <sstream>

#include "capture_fixture.h"
#include "support/netns.h"

namespace meshcap::test {
namespace {

class CaptureOutbound : public CaptureModeTest {
 protected:
  void SetUp() override {
    CaptureModeTest::SetUp();
    if (IsSkipped()) return;
    // The proxy's listeners, in the pod's cgroup as UID 1337 (so the
    // getsockopt hook sees the accepted sockets, as for a real sidecar).
    out4_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "127.0.0.1", 15001);
    out6_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "::1", 15001);
    in4_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "0.0.0.0", 15006);
    in6_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "::", 15006);
    // The application's own server in the pod, and servers in the peer.
    app4_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_), "0.0.0.0", 8081);
    app6_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_), "::", 8081);
    peer4_ = std::make_unique<RecordingListener>(Placement::peer_thread(*pod_), pod_->peer_ipv4(), 8080);
    peer6_ = std::make_unique<RecordingListener>(Placement::peer_thread(*pod_), pod_->peer_ipv6(), 8080);
    peer4b_ = std::make_unique<RecordingListener>(Placement::peer_thread(*pod_), pod_->peer_ipv4(), 8082);
  }

  size_t app_accepted() const { return app4_->accepted() + app6_->accepted(); }
  size_t proxy_accepted() const {
    return out4_->accepted() + out6_->accepted() + in4_->accepted() + in6_->accepted();
  }

  std::unique_ptr<RecordingListener> out4_, out6_, in4_, in6_, app4_, app6_, peer4_, peer6_, peer4b_;
};

/// Scenarios of the eBPF engine alone (its connection table and where a
/// record lives): the modes that always capture outbound with eBPF.
class EbpfOutbound : public CaptureOutbound {};
/// Scenarios of netfilter alone (xt_owner, conntrack's SO_ORIGINAL_DST):
/// the modes that always capture with iptables.
class IptablesOutbound : public CaptureOutbound {};

TEST_P(CaptureOutbound, CapturedIpv4ConnectLandsOnOutboundListenerWithOriginalDst) {
  ASSERT_TRUE(init({"-i", "*"}));
  RoundTrip rt = app_roundtrip(pod_->peer_ipv4(), 8080);
  ASSERT_TRUE(rt.ok()) << "errno " << rt.error;
  EXPECT_EQ(rt.reply, "ping");
  // The application sees the address it dialed and its own pod address.
  EXPECT_EQ(rt.peer, endpoint(pod_->peer_ipv4(), 8080));
  EXPECT_EQ(host_of(rt.local), pod_->pod_ipv4());

  ASSERT_TRUE(out4_->wait_for_accepts(1));
  auto rec = out4_->records().at(0);
  ASSERT_TRUE(rec.original_dst.ok) << "errno " << rec.original_dst.error;
  EXPECT_EQ(rec.original_dst.address, endpoint(pod_->peer_ipv4(), 8080));
  EXPECT_EQ(rec.peer, rt.local);  // the proxy sees the application's real end
  EXPECT_EQ(rec.local, "127.0.0.1:15001");
  EXPECT_ACCEPTS(peer4_->accepted(), 0);
  if (ebpf_outbound()) {  // Redirect counters
    auto c = counters();
    EXPECT_EQ(c["redirected_outbound"], 1u);
    EXPECT_EQ(c["orig_dst_answered"], 1u);
  } else {
    EXPECT_EQ(outbound_redirects(false), 1);
  }
}

// The pod has a global IPv6 address, so IPv6 is captured without
// --dual-stack, as istio-iptables does.
TEST_P(CaptureOutbound, CapturedIpv6ConnectLandsOnOutboundListenerWithOriginalDst) {
  ASSERT_TRUE(init({"-i", "*"}));
  RoundTrip rt = app_roundtrip(pod_->peer_ipv6(), 8080);
  ASSERT_TRUE(rt.ok()) << "errno " << rt.error;
  EXPECT_EQ(rt.reply, "ping");
  EXPECT_EQ(rt.peer, endpoint(pod_->peer_ipv6(), 8080));
  EXPECT_EQ(host_of(rt.local), pod_->pod_ipv6());
  ASSERT_TRUE(out6_->wait_for_accepts(1));
  auto rec = out6_->records().at(0);
  ASSERT_TRUE(rec.original_dst.ok) << "errno " << rec.original_dst.error;
  EXPECT_EQ(rec.original_dst.address, endpoint(pod_->peer_ipv6(), 8080));
  EXPECT_EQ(rec.peer, rt.local);
  EXPECT_EQ(rec.local, "[::1]:15001");
  EXPECT_ACCEPTS(peer6_->accepted(), 0);
  if (!ebpf_outbound()) {  // Redirect counters
    EXPECT_EQ(outbound_redirects(true), 1);
    EXPECT_EQ(outbound_redirects(false), 0);
  }
}

// istio captures IPv6 only with --dual-stack or when the pod has a global
// IPv6 address, and meshcap decides the same in every mode. The pod's
// address is taken away for init (no --dual-stack) and given back: IPv6
// then goes direct, IPv4 is captured as usual.
TEST_P(CaptureOutbound, Ipv6IsNotCapturedWithoutDualStackOrAGlobalAddress) {
  const std::string addr = pod_->pod_ipv6() + "/64";
  run_command_checked({"ip", "-n", pod_->pod_netns(), "-6", "addr", "del", addr, "dev", pod_->pod_veth()});
  ASSERT_TRUE(init({"-i", "*"}));
  run_command_checked({"ip", "-n", pod_->pod_netns(), "-6", "addr", "add", addr, "dev", pod_->pod_veth(), "nodad"});
  run_command_checked(
      {"ip", "-n", pod_->pod_netns(), "-6", "route", "replace", "default", "via", pod_->peer_ipv6()});
  EXPECT_EQ(status_json(name_)["plan"]["ipv6"], false);
  if (!ebpf_outbound()) {
    EXPECT_EQ(nat_save(true).find("ISTIO"), std::string::npos);
  }
  RoundTrip rt = app_roundtrip(pod_->peer_ipv6(), 8080);
  ASSERT_TRUE(rt.ok()) << "errno " << rt.error;
  EXPECT_ACCEPTS(peer6_->accepted(), 1);
  EXPECT_EQ(out6_->accepted(), 0u);
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(out4_->accepted(), 1);
}

TEST_P(CaptureOutbound, V4MappedDestinationOfAnIpv6SocketIsCapturedAsIpv4) {
  ASSERT_TRUE(init({"-i", "*"}));
  RoundTrip rt = app_roundtrip("::ffff:" + pod_->peer_ipv4(), 8080);
  ASSERT_TRUE(rt.ok()) << "errno " << rt.error;
  EXPECT_EQ(rt.peer, endpoint("::ffff:" + pod_->peer_ipv4(), 8080));
  EXPECT_EQ(host_of(rt.local), "::ffff:" + pod_->pod_ipv4());
  ASSERT_TRUE(out4_->wait_for_accepts(1));
  EXPECT_EQ(out4_->records().at(0).original_dst.address, endpoint(pod_->peer_ipv4(), 8080));
  EXPECT_ACCEPTS(peer4_->accepted(), 0);
  if (!ebpf_outbound()) {  // Redirect counters
    EXPECT_EQ(outbound_redirects(false), 1);
  }
}

TEST_P(CaptureOutbound, ProxyUidAndGidGoDirect) {
  ASSERT_TRUE(init({"-i", "*", "-u", "1337", "-g", "1337", "--dual-stack"}));
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080, Identity::proxy()).ok());
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080, Identity::user(1000, 1337)).ok());
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv6(), 8080, Identity::user(1337, 1000)).ok());
  EXPECT_ACCEPTS(peer4_->accepted(), 2);
  EXPECT_ACCEPTS(peer6_->accepted(), 1);
  EXPECT_ACCEPTS(out4_->accepted() + out6_->accepted(), 0);
  if (ebpf_outbound()) {  // Redirect counters
    auto c = counters();
    EXPECT_EQ(c["exempt_uid"], 2u);
    EXPECT_EQ(c["exempt_gid"], 1u);
  } else {
    EXPECT_EQ(packets(false, "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"), 1);
    EXPECT_EQ(packets(false, "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN"), 1);
    EXPECT_EQ(packets(true, "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"), 1);
    EXPECT_EQ(outbound_redirects(false), 0);
  }
  // A supplementary group 1337 alone does not exempt: istio's owner match
  // has no --suppl-groups, and the eBPF hook sees the primary GID only.
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080, Identity::user(1000, 1000, {1337})).ok());
  EXPECT_ACCEPTS(out4_->accepted(), 1);
  if (ebpf_outbound()) {
    EXPECT_EQ(counters()["redirected_outbound"], 1u);
  } else {
    EXPECT_EQ(outbound_redirects(false), 1);
  }
}

TEST_P(CaptureOutbound, LoopbackAndOwnAddressGoDirect) {
  ASSERT_TRUE(init({"-i", "*", "--dual-stack"}));
  for (const std::string& ip : {std::string("127.0.0.1"), pod_->pod_ipv4(), std::string("::1"), pod_->pod_ipv6()}) {
    RoundTrip rt = app_roundtrip(ip, 8081);
    EXPECT_TRUE(rt.ok()) << ip << " errno " << rt.error;
    EXPECT_EQ(rt.peer, endpoint(ip, 8081));
  }
  EXPECT_ACCEPTS(app_accepted(), 4);
  EXPECT_ACCEPTS(proxy_accepted(), 0);
  if (ebpf_outbound()) {  // Redirect counters
    EXPECT_EQ(counters()["local_destination"], 4u);
  } else {
    // O3: "-o lo -m owner ! --uid-owner 1337 -j RETURN", once per family
    // and connection.
    EXPECT_EQ(packets(false, "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN"), 2);
    EXPECT_EQ(packets(true, "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN"), 2);
    EXPECT_EQ(outbound_redirects(false) + outbound_redirects(true), 0);
  }
}

TEST_P(CaptureOutbound, ProxyToOwnAddressLandsOnInboundListener) {
  ASSERT_TRUE(init({"-i", "*", "--dual-stack"}));
  RoundTrip rt = app_roundtrip(pod_->pod_ipv4(), 8081, Identity::proxy());
  ASSERT_TRUE(rt.ok()) << "errno " << rt.error;
  EXPECT_EQ(rt.peer, endpoint(pod_->pod_ipv4(), 8081));
  ASSERT_TRUE(in4_->wait_for_accepts(1));
  auto rec = in4_->records().at(0);
  ASSERT_TRUE(rec.original_dst.ok) << "errno " << rec.original_dst.error;
  EXPECT_EQ(rec.original_dst.address, endpoint(pod_->pod_ipv4(), 8081));
  EXPECT_EQ(host_of(rec.peer), pod_->pod_ipv4());  // source kept, as with REDIRECT
  EXPECT_EQ(rec.local, "127.0.0.1:15006");
  // IPv6 likewise, to [::1]:15006.
  rt = app_roundtrip(pod_->pod_ipv6(), 8081, Identity::proxy());
  ASSERT_TRUE(rt.ok()) << "errno " << rt.error;
  ASSERT_TRUE(in6_->wait_for_accepts(1));
  rec = in6_->records().at(0);
  ASSERT_TRUE(rec.original_dst.ok) << "errno " << rec.original_dst.error;
  EXPECT_EQ(rec.original_dst.address, endpoint(pod_->pod_ipv6(), 8081));
  EXPECT_EQ(host_of(rec.peer), pod_->pod_ipv6());
  EXPECT_EQ(rec.local, "[::1]:15006");
  EXPECT_ACCEPTS(app_accepted(), 0);
  // The proxy to 127.0.0.1 / ::1 is not redirected.
  EXPECT_TRUE(app_roundtrip("127.0.0.1", 8081, Identity::proxy()).ok());
  EXPECT_TRUE(app_roundtrip("::1", 8081, Identity::proxy()).ok());
  EXPECT_ACCEPTS(app_accepted(), 2);
  EXPECT_EQ(in4_->accepted() + in6_->accepted(), 2u);
  if (ebpf_outbound()) {  // Redirect counters
    EXPECT_EQ(counters()["redirected_inbound"], 2u);
  } else {
    EXPECT_EQ(inbound_redirects(false), 1);
    EXPECT_EQ(inbound_redirects(true), 1);
  }
}

TEST_P(CaptureOutbound, TunnelPortIsNeverSentToTheInboundListener) {
  ASSERT_TRUE(init({"-i", "*", "-e", "8081"}));
  EXPECT_TRUE(app_roundtrip(pod_->pod_ipv4(), 8081, Identity::proxy()).ok());
  EXPECT_ACCEPTS(app_accepted(), 1);
  EXPECT_ACCEPTS(in4_->accepted(), 0);
  if (!ebpf_outbound()) {  // Redirect counters
    EXPECT_EQ(inbound_redirects(false), 0);
  }
}

TEST_P(CaptureOutbound, PassthroughSourceIsNotCaptured) {
  ASSERT_TRUE(init({"-i", "*"}));
  ConnectOptions from_passthrough;
  from_passthrough.bind_ip = "127.0.0.6";
  RoundTrip rt = app_roundtrip(pod_->pod_ipv4(), 8081, Identity::proxy(), from_passthrough);
  EXPECT_TRUE(rt.ok()) << "errno " << rt.error;
  EXPECT_ACCEPTS(app_accepted(), 1);
  EXPECT_EQ(host_of(app4_->records().at(0).peer), "127.0.0.6");
  EXPECT_ACCEPTS(in4_->accepted(), 0);
  if (ebpf_outbound()) {  // Redirect counters
    EXPECT_EQ(counters()["passthrough_source"], 1u);
  } else {
    EXPECT_EQ(packets(false, "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN"), 1);
  }
}

TEST_P(CaptureOutbound, ExcludedPortsAndCidrsGoDirectIncludedAreCaptured) {
  ASSERT_TRUE(init({"-i", "*", "-o", "8082", "-x", pod_->peer_ipv6() + "/128", "--dual-stack"}));
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8082).ok());  // -o
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv6(), 8080).ok());  // -x
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());  // captured
  EXPECT_ACCEPTS(peer4b_->accepted(), 1);
  EXPECT_ACCEPTS(peer6_->accepted(), 1);
  EXPECT_ACCEPTS(out4_->accepted(), 1);
  EXPECT_ACCEPTS(peer4_->accepted(), 0);
  EXPECT_ACCEPTS(out6_->accepted(), 0);
  if (ebpf_outbound()) {  // Redirect counters
    auto c = counters();
    EXPECT_EQ(c["excluded_port"], 1u);
    EXPECT_EQ(c["excluded_cidr"], 1u);
    EXPECT_EQ(c["redirected_outbound"], 1u);
  } else {
    EXPECT_EQ(outbound_redirects(false), 1);
    EXPECT_EQ(outbound_redirects(true), 0);
  }
}

TEST_P(CaptureOutbound, OnlyIncludedCidrsAndPortsAreCapturedWithoutWildcard) {
  ASSERT_TRUE(init({"-i", pod_->peer_ipv6() + "/64", "-q", "8082", "--dual-stack"}));
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv6(), 8080).ok());  // -i
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8082).ok());  // -q
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());  // neither: direct
  EXPECT_ACCEPTS(out6_->accepted(), 1);
  EXPECT_ACCEPTS(out4_->accepted(), 1);
  EXPECT_ACCEPTS(peer4_->accepted(), 1);
  EXPECT_EQ(out6_->records().at(0).original_dst.address, endpoint(pod_->peer_ipv6(), 8080));
  EXPECT_EQ(out4_->records().at(0).original_dst.address, endpoint(pod_->peer_ipv4(), 8082));
  EXPECT_EQ(peer4b_->accepted() + peer6_->accepted(), 0u);
  if (ebpf_outbound()) {  // Redirect counters
    EXPECT_EQ(counters()["not_included"], 1u);
  }
}

TEST_P(CaptureOutbound, TrafficRoutedOutOfAnExcludedInterfaceGoesDirect) {
  // -c: istio's "-A OUTPUT -o IF -j RETURN". Both peers are routed out of
  // the pod's veth; the pod's own addresses (over lo) are not.
  ASSERT_TRUE(init({"-i", "*", "-c", pod_->pod_veth(), "--dual-stack"}));
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv6(), 8080).ok());
  EXPECT_TRUE(app_roundtrip(pod_->pod_ipv4(), 8081, Identity::proxy()).ok());
  EXPECT_ACCEPTS(peer4_->accepted(), 1);
  EXPECT_ACCEPTS(peer6_->accepted(), 1);
  EXPECT_ACCEPTS(in4_->accepted(), 1);
  EXPECT_ACCEPTS(out4_->accepted() + out6_->accepted(), 0);
  if (ebpf_outbound()) {  // Redirect counters
    EXPECT_EQ(counters()["excluded_interface"], 2u);
  } else {
    EXPECT_EQ(packets(false, "-A OUTPUT -o " + pod_->pod_veth() + " -j RETURN"), 1);
    EXPECT_EQ(packets(true, "-A OUTPUT -o " + pod_->pod_veth() + " -j RETURN"), 1);
  }
}

TEST_P(CaptureOutbound, UdpIsUntouched) {
  ASSERT_TRUE(init({"-i", "*", "--dual-stack"}));
  // A UDP socket in the peer namespace receives what the application sends.
  UniqueFd rx = call_in_netns(pod_->peer_netns_path(), [&] {
    UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    socklen_t len = 0;
    sockaddr_storage sa = make_sockaddr(pod_->peer_ipv4(), 5353, &len);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), len) != 0) fd.reset();
    return fd;
  });
  ASSERT_TRUE(rx.valid());
  const std::string peer = pod_->peer_ipv4();
  std::string got = pod_->run_in_pod_capture(
      [&] {
        UniqueFd fd(::socket(AF_INET, SOCK_DGRAM, 0));
        socklen_t len;
        auto sa = make_sockaddr(peer, 5353, &len);
        if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), len)) return std::string("connect failed");
        if (::send(fd.get(), "udp", 3, 0) != 3) return std::string("send failed");
        return getpeername_str(fd.get());
      },
      Identity::user(1000, 1000));
  EXPECT_EQ(got, endpoint(peer, 5353));
  pollfd pfd{rx.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&pfd, 1, 5000), 1);
  char buf[16];
  sockaddr_storage from{};
  socklen_t flen = sizeof from;
  ssize_t n = ::recvfrom(rx.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &flen);
  EXPECT_EQ(std::string(buf, n > 0 ? n : 0), "udp");
  EXPECT_EQ(host_of(format_sockaddr(reinterpret_cast<sockaddr*>(&from), flen)), pod_->pod_ipv4());
  EXPECT_EQ(proxy_accepted(), 0u);
  if (ebpf_outbound()) {  // Redirect counters: no decision at all
    uint64_t decided = 0;
    for (const auto& [k, v] : counters()) decided += v;
    EXPECT_EQ(decided, 0u);
  } else {
    EXPECT_EQ(outbound_redirects(false), 0);
  }
}

TEST_P(CaptureOutbound, ManyConnectionsAreAllCaptured) {
  ASSERT_TRUE(init({"-i", "*"}));
  std::string peer = pod_->peer_ipv4();
  int failures = pod_->run_in_pod(
      [&] {
        int bad = 0;
        for (int i = 0; i < 200; i++) {
          ConnectOptions o;
          o.linger_zero = i % 2 == 0;  // half close with RST, half with FIN
          RoundTrip r = tcp_roundtrip(peer, 8080, "x", kIoTimeout, o);
          if (!r.ok() || r.peer != peer + ":8080") bad++;
        }
        return bad;
      },
      Identity::user(1000, 1000));
  EXPECT_EQ(failures, 0);
  ASSERT_TRUE(out4_->wait_for_accepts(200));
  size_t with_orig = 0;
  for (const auto& rec : out4_->records()) {
    with_orig += rec.original_dst.ok && rec.original_dst.address == endpoint(peer, 8080);
  }
  EXPECT_EQ(with_orig, 200u);
  EXPECT_EQ(peer4_->accepted(), 0u);
  if (ebpf_outbound()) {
    // Redirect counters; and the connection table, which has no iptables
    // equivalent, empties: each record leaves it when the listener asks
    // SO_ORIGINAL_DST (it moves onto the listener's socket); give the last
    // ones a moment.
    size_t left = 0;
    for (int i = 0; i < 50; i++) {
      left = loader::pinned_connection_entries(name_);
      if (left == 0) break;
      usleep(100 * 1000);
    }
    EXPECT_EQ(left, 0u);
    auto c = counters();
    EXPECT_EQ(c["redirected_outbound"], 200u);
    EXPECT_EQ(c["orig_dst_answered"], 200u);
    EXPECT_EQ(c["map_full"], 0u);
  } else {
    EXPECT_EQ(outbound_redirects(false), 200);
  }
}

TEST_P(CaptureOutbound, CleanupRemovesEverythingAndTrafficGoesDirect) {
  ASSERT_TRUE(init({"-i", "*", "--dual-stack"}));
  if (ebpf_outbound()) {
    EXPECT_EQ(programs_attached(pod_->cgroup_path()), kCapturePrograms);
    EXPECT_TRUE(loader::pinned_state(name_).present);
  } else {
    for (bool v6 : {false, true}) EXPECT_NE(nat_save(v6).find("ISTIO_OUTPUT"), std::string::npos);
  }
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv6(), 8080).ok());
  EXPECT_ACCEPTS(out4_->accepted(), 1);
  EXPECT_ACCEPTS(out6_->accepted(), 1);

  auto r = meshcap({"cleanup", "--name", name_});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(leftovers(), "");  // no program attached, no pins, no ISTIO chain
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv6(), 8080).ok());
  EXPECT_TRUE(app_roundtrip(pod_->pod_ipv4(), 8081, Identity::proxy()).ok());
  EXPECT_ACCEPTS(peer4_->accepted(), 1);
  EXPECT_ACCEPTS(peer6_->accepted(), 1);
  EXPECT_ACCEPTS(app_accepted(), 1);
  EXPECT_EQ(out4_->accepted() + out6_->accepted(), 2u);
  EXPECT_EQ(in4_->accepted(), 0u);
  // Safe twice.
  EXPECT_EQ(meshcap({"cleanup", "--name", name_}).exit_code, 0);
}

TEST_P(CaptureOutbound, CaptureOutlivesTheProcessAndReinitReplaces) {
  ASSERT_TRUE(init({"-i", "*"}));
  // meshcap has exited: the pinned links, or the rules, keep capturing.
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(out4_->accepted(), 1);
  // Same name, new flags: replaced, one set of programs or of rules.
  ASSERT_TRUE(init({"-i", "*", "-x", pod_->peer_ipv4() + "/32"}));
  if (ebpf_outbound()) {
    EXPECT_EQ(programs_attached(pod_->cgroup_path()), kCapturePrograms);
  } else {
    const std::string rules = nat_rules(false);
    size_t jumps = 0;
    for (size_t p = rules.find("-j ISTIO_OUTPUT"); p != std::string::npos; p = rules.find("-j ISTIO_OUTPUT", p + 1))
      jumps++;
    EXPECT_EQ(jumps, 1u) << rules;
  }
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(peer4_->accepted(), 1);
}

TEST_P(CaptureOutbound, InitTwiceKeepsTheSameCaptureAndBehaviour) {
  const std::vector<std::string> args = {"-i", "*", "-o", "8082", "--dual-stack"};
  ASSERT_TRUE(init(args));
  std::string v4, v6;
  if (!ebpf_outbound()) {
    v4 = nat_rules(false);
    v6 = nat_rules(true);
    ASSERT_NE(v4.find("ISTIO_OUTPUT"), std::string::npos) << v4;
  }
  ASSERT_TRUE(init(args));
  if (ebpf_outbound()) {
    EXPECT_EQ(programs_attached(pod_->cgroup_path()), kCapturePrograms);
  } else {
    EXPECT_EQ(nat_rules(false), v4);
    EXPECT_EQ(nat_rules(true), v6);
  }
  // Still: captured with the original destination, excluded port direct,
  // proxy direct.
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv6(), 8080).ok());
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8082).ok());
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080, Identity::proxy()).ok());
  ASSERT_TRUE(out4_->wait_for_accepts(1));
  ASSERT_TRUE(out6_->wait_for_accepts(1));
  EXPECT_EQ(out4_->records().at(0).original_dst.address, endpoint(pod_->peer_ipv4(), 8080));
  EXPECT_EQ(out6_->records().at(0).original_dst.address, endpoint(pod_->peer_ipv6(), 8080));
  EXPECT_ACCEPTS(peer4b_->accepted(), 1);
  EXPECT_ACCEPTS(peer4_->accepted(), 1);
  EXPECT_EQ(out4_->accepted(), 1u);
  if (!ebpf_outbound()) {  // Redirect counters
    EXPECT_EQ(outbound_redirects(false), 1);  // one copy of each rule: counted once
    EXPECT_EQ(outbound_redirects(true), 1);
  }
}

TEST_P(CaptureOutbound, BadInputChangesNothing) {
  const std::string cg = pod_->cgroup_path();
  // `meshcap init` for this mode with `value` after `flag` instead.
  auto with = [&](const std::string& flag, const std::string& value) {
    auto args = init_args({});
    *(std::find(args.begin(), args.end(), flag) + 1) = value;
    return args;
  };
  std::vector<std::pair<std::vector<std::string>, std::string>> corpus = {
      {init_args({"-p", "70000"}), "70000"},
      {init_args({"-x", "10.0.0.0/40"}), "10.0.0.0/40"},
      {init_args({"-u", "13x7"}), "13x7"},
      {init_args({"--frobnicate"}), "--frobnicate"},
      {with("--cgroup", "/tmp"), "/tmp"},
      {with("--cgroup", cgroup2_mount()), "root"},
      {with("--cgroup", cg + "/missing"), "missing"},
      {with("--netns", "mc-no-such-ns"), "mc-no-such-ns"},
      {with("--netns", "/etc/hostname"), "/etc/hostname"},
      {with("--name", "bad.name"), "bad.name"},
      {with("--mode", "bpf"), "bpf"},
  };
  // Flags a mode refuses: eBPF resolves -c interfaces once, at init, so
  // --mode ebpf refuses one the pod lacks; iptables matches names later
  // and takes it (auto moves outbound to iptables).
  if (mode().engine == Engine::ebpf) corpus.push_back({init_args({"-c", "eth0"}), "-c"});
  for (const auto& [args, mention] : corpus) {
    auto r = meshcap(args);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find(mention), std::string::npos) << r.output;
    // One line of error.
    EXPECT_LE(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
    EXPECT_EQ(programs_attached(cg), 0u) << r.output;
    EXPECT_FALSE(loader::pinned_state(name_).present) << r.output;
  }
}

// The record stays in the connection table until the proxy asks: after
// accept() it is still there; the first SO_ORIGINAL_DST moves it onto the
// accepted socket (the table is empty again) and a second one answers the
// same from there. A root process in the pod plays application and proxy
// (its own listener on the -p port; only UID 1337 is exempt).
TEST_P(EbpfOutbound, RecordMovesOntoTheProxySocketWhenItAsks) {
  ASSERT_TRUE(init({"-p", "15101", "-i", "*"}));
  const std::string name = name_, peer = pod_->peer_ipv4();
  std::string out = pod_->run_in_pod_capture(
      [&] {
        UniqueFd l = listen_tcp("127.0.0.1", 15101);
        Connection c = connect_tcp(peer, 8080);
        if (!c.ok()) return std::string("connect: ") + std::strerror(c.error);
        UniqueFd a(::accept(l.get(), nullptr, nullptr));
        if (!a) return std::string("accept: ") + std::strerror(errno);
        std::ostringstream o;
        o << loader::pinned_connection_entries(name);
        for (int i = 0; i < 2; i++) {
          OriginalDst d = original_dst(a.get());
          o << " " << (d.ok ? d.address : "errno" + std::to_string(d.error));
          o << " " << loader::pinned_connection_entries(name);
        }
        return o.str();
      },
      Identity::root());
  const std::string want = endpoint(peer, 8080);
  EXPECT_EQ(out, "1 " + want + " 0 " + want + " 0");
  EXPECT_EQ(counters()["orig_dst_answered"], 2u);
}

/// A blocking connect + "ping" round trip on a socket the caller created;
/// "" on success, else what failed.
std::string ping_on(int fd, const std::string& ip, uint16_t port) {
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  socklen_t len = 0;
  sockaddr_storage ss = make_sockaddr(ip, port, &len);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) return "connect errno " + std::to_string(errno);
  if (!send_all(fd, "ping")) return "send errno " + std::to_string(errno);
  std::string reply = recv_exact(fd, 4);
  if (reply != "ping") return "reply '" + reply + "'";
  return "";
}

// xt_owner matches the credentials (fsuid/fsgid) of the process that
// created the socket, not of the one that calls connect(). The eBPF connect
// hook sees the caller of connect() (its real uid/gid), so these two cases
// come out the other way round in eBPF mode: a documented difference ("Owner
// match"), hence iptables modes only.
TEST_P(IptablesOutbound, OwnerMatchUsesTheSocketCreatorsCredentials) {
  ASSERT_TRUE(init({"-i", "*"}));
  const std::string peer = pod_->peer_ipv4();
  // Created by root, connected as 1337: captured.
  std::string err = pod_->run_in_pod_capture([&] {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::setresgid(1337, 1337, 1337) != 0 || ::setresuid(1337, 1337, 1337) != 0) return std::string("setresuid");
    return ping_on(fd.get(), peer, 8080);
  });
  EXPECT_EQ(err, "");
  EXPECT_ACCEPTS(out4_->accepted(), 1);
  EXPECT_EQ(peer4_->accepted(), 0u);
  // Created as 1337 (saved uid root), connected as root: not captured.
  err = pod_->run_in_pod_capture([&] {
    if (::setresgid(1337, 1337, 0) != 0 || ::setresuid(1337, 1337, 0) != 0) return std::string("setresuid 1337");
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::setresuid(0, 0, 0) != 0 || ::setresgid(0, 0, 0) != 0) return std::string("setresuid 0");
    return ping_on(fd.get(), peer, 8080);
  });
  EXPECT_EQ(err, "");
  EXPECT_ACCEPTS(peer4_->accepted(), 1);
  EXPECT_EQ(out4_->accepted(), 1u);
}

// With netfilter NAT in the pod's netns every connection is tracked, so
// SO_ORIGINAL_DST also answers for a connection that was NOT redirected: it
// gives the socket's own local address. The eBPF mode keeps no conntrack
// entry and answers ENOENT/ENOPROTOOPT: a documented difference
// ("orig-dst-of-uncaptured-connections"), hence iptables modes only.
TEST_P(IptablesOutbound, OriginalDstOfAnUnredirectedConnectionIsItsOwnAddress) {
  ASSERT_TRUE(init({"-i", "*"}));
  ASSERT_TRUE(app_roundtrip(pod_->pod_ipv4(), 8081).ok());
  ASSERT_TRUE(app4_->wait_for_accepts(1));
  auto rec = app4_->records().at(0);
  ASSERT_TRUE(rec.original_dst.ok) << "errno " << rec.original_dst.error;
  EXPECT_EQ(rec.original_dst.address, rec.local);
  EXPECT_EQ(rec.local, endpoint(pod_->pod_ipv4(), 8081));
}

INSTANTIATE_TEST_SUITE_P(Modes, CaptureOutbound, ::testing::ValuesIn(all_modes()), capture_mode_name);
INSTANTIATE_TEST_SUITE_P(Modes, EbpfOutbound, ::testing::ValuesIn(modes_with_engine(Engine::ebpf)), capture_mode_name);
INSTANTIATE_TEST_SUITE_P(Modes, IptablesOutbound, ::testing::ValuesIn(modes_with_engine(Engine::iptables)),
                         capture_mode_name);

}  // namespace
}  // namespace meshcap::test
