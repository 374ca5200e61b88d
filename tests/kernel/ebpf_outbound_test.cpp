// eBPF outbound capture with real hooks and real sockets: `meshcap init
// --mode ebpf` on a throwaway pod, connections made by processes in the pod's
// cgroup, checked against shared/CAPTURE-SEMANTICS.md rows O1-O8.
#include <netinet/in.h>

#include <algorithm>
#include <cstring>
#include <sstream>

#include "capture_fixture.h"

namespace meshcap::test {
namespace {

class EbpfOutbound : public CaptureTest {
 protected:
  void SetUp() override {
    CaptureTest::SetUp();
    if (IsSkipped()) return;
    // The proxy's listeners, in the pod's cgroup as UID 1337 (so the
    // getsockopt hook sees the accepted sockets, as for a real sidecar).
    out4_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "127.0.0.1", 15001);
    out6_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "::1", 15001);
    in_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "0.0.0.0", 15006);
    // The application's own server in the pod, and servers in the peer.
    app4_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_), "0.0.0.0", 8081);
    app6_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_), "::", 8081);
    peer4_ = std::make_unique<RecordingListener>(Placement::peer_thread(*pod_), pod_->peer_ipv4(), 8080);
    peer6_ = std::make_unique<RecordingListener>(Placement::peer_thread(*pod_), pod_->peer_ipv6(), 8080);
    peer4b_ = std::make_unique<RecordingListener>(Placement::peer_thread(*pod_), pod_->peer_ipv4(), 8082);
  }

  loader::Counters counters() { return loader::pinned_counters(name_); }

  std::unique_ptr<RecordingListener> out4_, out6_, in_, app4_, app6_, peer4_, peer6_, peer4b_;
  size_t app_accepted() const { return app4_->accepted() + app6_->accepted(); }
};

TEST_F(EbpfOutbound, CapturedIpv4ConnectLandsOnOutboundListenerWithOriginalDst) {
  auto r = init_ebpf({"-i", "*"});
  ASSERT_EQ(r.exit_code, 0) << r.output;

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
  EXPECT_ACCEPTS(peer4_->accepted(), 0);

  auto c = counters();
  EXPECT_EQ(c["redirected_outbound"], 1u);
  EXPECT_EQ(c["orig_dst_answered"], 1u);
}

TEST_F(EbpfOutbound, CapturedIpv6ConnectLandsOnOutboundListenerWithOriginalDst) {
  ASSERT_EQ(init_ebpf({"-i", "*"}).exit_code, 0);
  RoundTrip rt = app_roundtrip(pod_->peer_ipv6(), 8080);
  ASSERT_TRUE(rt.ok()) << "errno " << rt.error;
  EXPECT_EQ(rt.peer, endpoint(pod_->peer_ipv6(), 8080));
  EXPECT_EQ(host_of(rt.local), pod_->pod_ipv6());
  ASSERT_TRUE(out6_->wait_for_accepts(1));
  auto rec = out6_->records().at(0);
  ASSERT_TRUE(rec.original_dst.ok) << "errno " << rec.original_dst.error;
  EXPECT_EQ(rec.original_dst.address, endpoint(pod_->peer_ipv6(), 8080));
  EXPECT_ACCEPTS(peer6_->accepted(), 0);
}

TEST_F(EbpfOutbound, V4MappedDestinationOfAnIpv6SocketIsCapturedAsIpv4) {
  ASSERT_EQ(init_ebpf({"-i", "*"}).exit_code, 0);
  RoundTrip rt = app_roundtrip("::ffff:" + pod_->peer_ipv4(), 8080);
  ASSERT_TRUE(rt.ok()) << "errno " << rt.error;
  EXPECT_EQ(rt.peer, endpoint("::ffff:" + pod_->peer_ipv4(), 8080));
  ASSERT_TRUE(out4_->wait_for_accepts(1));
  EXPECT_EQ(out4_->records().at(0).original_dst.address, endpoint(pod_->peer_ipv4(), 8080));
  EXPECT_ACCEPTS(peer4_->accepted(), 0);
}

TEST_F(EbpfOutbound, ProxyUidAndGidGoDirect) {
  ASSERT_EQ(init_ebpf({"-i", "*", "-u", "1337", "-g", "1337"}).exit_code, 0);
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080, Identity::proxy()).ok());
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080, Identity::user(1000, 1337)).ok());
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv6(), 8080, Identity::user(1337, 1000)).ok());
  EXPECT_ACCEPTS(peer4_->accepted(), 2);
  EXPECT_ACCEPTS(peer6_->accepted(), 1);
  EXPECT_ACCEPTS(out4_->accepted() + out6_->accepted(), 0);
  auto c = counters();
  EXPECT_EQ(c["exempt_uid"], 2u);
  EXPECT_EQ(c["exempt_gid"], 1u);
}

TEST_F(EbpfOutbound, LoopbackAndOwnAddressGoDirect) {
  ASSERT_EQ(init_ebpf({"-i", "*"}).exit_code, 0);
  for (const std::string& ip : {std::string("127.0.0.1"), pod_->pod_ipv4(), std::string("::1"), pod_->pod_ipv6()}) {
    RoundTrip rt = app_roundtrip(ip, 8081);
    EXPECT_TRUE(rt.ok()) << ip << " errno " << rt.error;
    EXPECT_EQ(rt.peer, endpoint(ip, 8081));
  }
  EXPECT_ACCEPTS(app_accepted(), 4);
  EXPECT_ACCEPTS(out4_->accepted() + out6_->accepted() + in_->accepted(), 0);
  EXPECT_EQ(counters()["local_destination"], 4u);
}

TEST_F(EbpfOutbound, ProxyToOwnAddressLandsOnInboundListener) {
  ASSERT_EQ(init_ebpf({"-i", "*"}).exit_code, 0);
  RoundTrip rt = app_roundtrip(pod_->pod_ipv4(), 8081, Identity::proxy());
  ASSERT_TRUE(rt.ok()) << "errno " << rt.error;
  ASSERT_TRUE(in_->wait_for_accepts(1));
  auto rec = in_->records().at(0);
  ASSERT_TRUE(rec.original_dst.ok) << "errno " << rec.original_dst.error;
  EXPECT_EQ(rec.original_dst.address, endpoint(pod_->pod_ipv4(), 8081));
  EXPECT_EQ(host_of(rec.peer), pod_->pod_ipv4());  // source kept, as with REDIRECT
  EXPECT_ACCEPTS(app_accepted(), 0);
  // The proxy to 127.0.0.1 and to the tunnel port is not redirected.
  EXPECT_TRUE(app_roundtrip("127.0.0.1", 8081, Identity::proxy()).ok());
  EXPECT_ACCEPTS(app_accepted(), 1);
  EXPECT_EQ(counters()["redirected_inbound"], 1u);
}

TEST_F(EbpfOutbound, TunnelPortIsNeverSentToTheInboundListener) {
  ASSERT_EQ(init_ebpf({"-i", "*", "-e", "8081"}).exit_code, 0);
  EXPECT_TRUE(app_roundtrip(pod_->pod_ipv4(), 8081, Identity::proxy()).ok());
  EXPECT_ACCEPTS(app_accepted(), 1);
  EXPECT_ACCEPTS(in_->accepted(), 0);
}

TEST_F(EbpfOutbound, PassthroughSourceIsNotCaptured) {
  ASSERT_EQ(init_ebpf({"-i", "*"}).exit_code, 0);
  ConnectOptions from_passthrough;
  from_passthrough.bind_ip = "127.0.0.6";
  RoundTrip rt = app_roundtrip(pod_->pod_ipv4(), 8081, Identity::proxy(), from_passthrough);
  EXPECT_TRUE(rt.ok()) << "errno " << rt.error;
  EXPECT_ACCEPTS(app_accepted(), 1);
  EXPECT_ACCEPTS(in_->accepted(), 0);
  EXPECT_EQ(counters()["passthrough_source"], 1u);
}

TEST_F(EbpfOutbound, ExcludedPortsAndCidrsGoDirectIncludedAreCaptured) {
  ASSERT_EQ(init_ebpf({"-i", "*", "-o", "8082", "-x", pod_->peer_ipv6() + "/128"}).exit_code, 0);
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8082).ok());  // -o
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv6(), 8080).ok());  // -x
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());  // captured
  EXPECT_ACCEPTS(peer4b_->accepted(), 1);
  EXPECT_ACCEPTS(peer6_->accepted(), 1);
  EXPECT_ACCEPTS(peer4_->accepted(), 0);
  EXPECT_ACCEPTS(out4_->accepted(), 1);
  auto c = counters();
  EXPECT_EQ(c["excluded_port"], 1u);
  EXPECT_EQ(c["excluded_cidr"], 1u);
  EXPECT_EQ(c["redirected_outbound"], 1u);
}

TEST_F(EbpfOutbound, OnlyIncludedCidrsAndPortsAreCapturedWithoutWildcard) {
  ASSERT_EQ(init_ebpf({"-i", pod_->peer_ipv6() + "/64", "-q", "8082"}).exit_code, 0);
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv6(), 8080).ok());  // -i
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8082).ok());  // -q
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());  // neither: direct
  EXPECT_ACCEPTS(out6_->accepted(), 1);
  EXPECT_ACCEPTS(out4_->accepted(), 1);
  EXPECT_ACCEPTS(peer4_->accepted(), 1);
  EXPECT_EQ(counters()["not_included"], 1u);
}

TEST_F(EbpfOutbound, TrafficRoutedOutOfAnExcludedInterfaceGoesDirect) {
  // -c: istio's "-A OUTPUT -o IF -j RETURN". Both peers are routed out of
  // the pod's veth; the pod's own addresses (over lo) are not.
  ASSERT_EQ(init_ebpf({"-i", "*", "-c", pod_->pod_veth()}).exit_code, 0);
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv6(), 8080).ok());
  EXPECT_TRUE(app_roundtrip(pod_->pod_ipv4(), 8081, Identity::proxy()).ok());
  EXPECT_ACCEPTS(peer4_->accepted(), 1);
  EXPECT_ACCEPTS(peer6_->accepted(), 1);
  EXPECT_ACCEPTS(out4_->accepted() + out6_->accepted(), 0);
  EXPECT_ACCEPTS(in_->accepted(), 1);
  EXPECT_EQ(counters()["excluded_interface"], 2u);
}

TEST_F(EbpfOutbound, UdpIsUntouched) {
  ASSERT_EQ(init_ebpf({"-i", "*"}).exit_code, 0);
  std::string peer = pod_->peer_ipv4();
  std::string got = pod_->run_in_pod_capture(
      [&] {
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        socklen_t len;
        auto sa = make_sockaddr(peer, 5353, &len);
        if (connect(fd, reinterpret_cast<sockaddr*>(&sa), len)) return std::string("connect failed");
        std::string p = getpeername_str(fd);
        close(fd);
        return p;
      },
      Identity::user(1000, 1000));
  EXPECT_EQ(got, endpoint(peer, 5353));
  auto c = counters();
  uint64_t decided = 0;
  for (const auto& [k, v] : c) decided += v;
  EXPECT_EQ(decided, 0u);
}

TEST_F(EbpfOutbound, ConnectionTableEmptiesWhenConnectionsClose) {
  ASSERT_EQ(init_ebpf({"-i", "*"}).exit_code, 0);
  std::string peer = pod_->peer_ipv4();
  int failures = pod_->run_in_pod(
      [&] {
        int bad = 0;
        for (int i = 0; i < 200; i++) {
          ConnectOptions o;
          o.linger_zero = i % 2 == 0;  // half close with RST, half with FIN
          if (!tcp_roundtrip(peer, 8080, "x", kIoTimeout, o).ok()) bad++;
        }
        return bad;
      },
      Identity::user(1000, 1000));
  EXPECT_EQ(failures, 0);
  ASSERT_TRUE(out4_->wait_for_accepts(200));
  // Each record leaves the table when the listener asks SO_ORIGINAL_DST
  // (it moves onto the listener's socket); give the last ones a moment.
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
}

// The record stays in the connection table until the proxy asks: after
// accept() it is still there; the first SO_ORIGINAL_DST moves it onto the
// accepted socket (the table is empty again) and a second one answers the
// same from there. A root process in the pod plays application and proxy
// (its own listener on the -p port; only UID 1337 is exempt).
TEST_F(EbpfOutbound, RecordMovesOntoTheProxySocketWhenItAsks) {
  ASSERT_EQ(init_ebpf({"-p", "15101", "-i", "*"}).exit_code, 0);
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

TEST_F(EbpfOutbound, CleanupRemovesEverythingAndTrafficGoesDirect) {
  ASSERT_EQ(init_ebpf({"-i", "*"}).exit_code, 0);
  EXPECT_EQ(programs_attached(pod_->cgroup_path()), kCapturePrograms);
  EXPECT_TRUE(loader::pinned_state(name_).present);
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(out4_->accepted(), 1);

  auto r = meshcap({"cleanup", "--name", name_});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(programs_attached(pod_->cgroup_path()), 0u);
  EXPECT_FALSE(loader::pinned_state(name_).present);
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(peer4_->accepted(), 1);
  EXPECT_ACCEPTS(out4_->accepted(), 1);
  // Safe twice.
  EXPECT_EQ(meshcap({"cleanup", "--name", name_}).exit_code, 0);
}

TEST_F(EbpfOutbound, CaptureOutlivesTheProcessAndReinitReplaces) {
  ASSERT_EQ(init_ebpf({"-i", "*"}).exit_code, 0);
  // meshcap has exited: the pinned links keep capturing.
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(out4_->accepted(), 1);
  // Same name, new flags: replaced, one set of programs.
  ASSERT_EQ(init_ebpf({"-i", "*", "-x", pod_->peer_ipv4() + "/32"}).exit_code, 0);
  EXPECT_EQ(programs_attached(pod_->cgroup_path()), kCapturePrograms);
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_ACCEPTS(peer4_->accepted(), 1);
}

TEST_F(EbpfOutbound, BadInputChangesNothing) {
  const std::string cg = pod_->cgroup_path();
  const std::string ns = pod_->pod_netns_path();
  std::vector<std::pair<std::vector<std::string>, std::string>> corpus = {
      {{"init", "--mode", "ebpf", "--name", name_, "--cgroup", cg, "--netns", ns, "-p", "70000"}, "70000"},
      {{"init", "--mode", "ebpf", "--name", name_, "--cgroup", cg, "--netns", ns, "-x", "10.0.0.0/40"}, "10.0.0.0/40"},
      {{"init", "--mode", "ebpf", "--name", name_, "--cgroup", cg, "--netns", ns, "-u", "13x7"}, "13x7"},
      {{"init", "--mode", "ebpf", "--name", name_, "--cgroup", cg, "--netns", ns, "--frobnicate"}, "--frobnicate"},
      {{"init", "--mode", "ebpf", "--name", name_, "--cgroup", "/tmp", "--netns", ns}, "/tmp"},
      {{"init", "--mode", "ebpf", "--name", name_, "--cgroup", cgroup2_mount(), "--netns", ns}, "root"},
      {{"init", "--mode", "ebpf", "--name", name_, "--cgroup", cg + "/missing", "--netns", ns}, "missing"},
      {{"init", "--mode", "ebpf", "--name", name_, "--cgroup", cg, "--netns", "mc-no-such-ns"}, "mc-no-such-ns"},
      {{"init", "--mode", "ebpf", "--name", name_, "--cgroup", cg, "--netns", "/etc/hostname"}, "/etc/hostname"},
      {{"init", "--mode", "ebpf", "--name", "bad.name", "--cgroup", cg, "--netns", ns}, "bad.name"},
      {{"init", "--mode", "ebpf", "--name", name_, "--cgroup", cg, "--netns", ns, "-c", "eth0"}, "-c"},
      {{"init", "--mode", "bpf", "--name", name_, "--cgroup", cg, "--netns", ns}, "bpf"},
  };
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

}  // namespace
}  // namespace meshcap::test
