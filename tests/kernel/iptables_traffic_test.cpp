// iptables capture with real traffic: istio's rules applied for real (with
// the nft and the legacy backend) inside a throwaway pod's network namespace,
// connections made by processes in the pod and from the peer namespace,
// checked against shared/CAPTURE-SEMANTICS.md rows O1-O8 and I1-I6. The same
// scenarios as ebpf_outbound_test.cpp / ebpf_inbound_test.cpp; where those
// read BPF counters these read the packet counters of the nat rules
// (`iptables-save -c` in the pod's netns) and check where connections landed.
// Root only; skipped otherwise. iptables is only ever changed inside the pod's
// own network namespace, which is deleted with the pod.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
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

/// "[ip6]:port" or "ip:port".
std::string endpoint(const std::string& ip, uint16_t port) {
  return ip.find(':') == std::string::npos ? ip + ":" + std::to_string(port)
                                            : "[" + ip + "]:" + std::to_string(port);
}
/// The address part of "ip:port" / "[ip6]:port".
std::string host_of(const std::string& ep) {
  if (!ep.empty() && ep[0] == '[') return ep.substr(1, ep.find(']') - 1);
  return ep.substr(0, ep.rfind(':'));
}

/// Waits (briefly) until `s` accepted at least n connections and returns how
/// many it accepted: process-placed servers report accepts over a pipe, so a
/// count read right after a round trip may lag.
size_t settled(const TcpServer& s, size_t n) {
  if (n > 0) s.wait_for_accepts(n, Millis(3000));
  return s.accepted();
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

/// The shared part: a pod, a runner bound to its netns, an applier whose
/// state lives in the pod's scratch directory. Parameter: "nft" or "legacy".
class IptablesTraffic : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    MESHCAP_REQUIRE_ROOT();
    kind_ = GetParam();
    for (const char* fam : {"iptables-", "ip6tables-"}) {
      MESHCAP_REQUIRE_BINARY(std::string(fam) + kind_ + "-restore");
    }
    pod_ = std::make_unique<TestPod>();
    runner_ = std::make_unique<ipt::ProcessRunner>(pod_->pod_netns_path());
    for (ipt::Family fam : {ipt::Family::V4, ipt::Family::V6}) {
      std::string why;
      const std::string bin = binary(fam == ipt::Family::V6);
      if (!ipt::probe_backend(*runner_, fam, bin, &why)) GTEST_SKIP() << bin << " is not usable here: " << why;
    }
    applier_ = std::make_unique<ipt::IptablesApplier>(*runner_,
                                                      ipt::ApplierOptions{pod_->scratch_dir() + "/iptables-state"});
  }

  void TearDown() override {
    if (applier_ && last_cfg_) {
      // Cleanup leaves nothing of istio's in either family of the pod's
      // netns (which goes with the pod anyway).
      try {
        applier_->cleanup(*last_cfg_);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "cleanup: " << e.what();
      }
      for (bool v6 : {false, true}) EXPECT_EQ(save(v6).find("ISTIO"), std::string::npos) << save(v6);
    }
    release_servers();
    applier_.reset();
    runner_.reset();
    pod_.reset();
  }

  /// Servers are destroyed before the pod.
  virtual void release_servers() {}

  std::string binary(bool v6) const { return (v6 ? "ip6tables-" : "iptables-") + kind_; }

  /// istio-iptables' arguments -> configuration, with -u 1337 unless given
  /// and this test's backend forced; no environment.
  meshcap::CaptureConfig config(std::vector<std::string> args) const {
    bool has_uid = false;
    for (const auto& a : args) has_uid = has_uid || a == "-u";
    if (!has_uid) args.insert(args.begin(), {"-u", "1337"});
    args.insert(args.end(), {"--force-iptables-binary", kind_});
    return meshcap::parse_capture_args(args,
                                       [](const std::string&) -> std::optional<std::string> { return std::nullopt; });
  }

  /// Applies istio's rules for `args` in the pod's netns (IPv6 rules only
  /// with --dual-stack, as istio-iptables).
  ipt::ApplyResult apply(const std::vector<std::string>& args) {
    const auto cfg = config(args);
    last_cfg_ = cfg;
    ipt::ApplyResult r = applier_->apply(cfg, cfg.dual_stack);
    EXPECT_EQ(r.ipv4.binary, binary(false));
    return r;
  }

  void cleanup() { applier_->cleanup(*last_cfg_); }

  /// `<binary>-save` of the pod's nat table, with counters when asked.
  std::string save(bool v6, bool counters = false) {
    std::vector<std::string> argv = {binary(v6) + "-save", "-t", "nat"};
    if (counters) argv.push_back("-c");
    const auto r = runner_->run(argv);
    EXPECT_TRUE(r.ok()) << argv[0] << ": " << r.err;
    return r.out;
  }

  /// The nat rules without counters or comments, in order: what must not
  /// change when the same rules are applied again.
  std::string rules(bool v6) {
    std::istringstream in(save(v6));
    std::string line, out;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#') continue;
      if (line[0] == ':') line = line.substr(0, line.find(' '));  // chain policy counters
      out += line + "\n";
    }
    return out;
  }

  /// Packets that matched the nat rule written exactly `rule` (as
  /// iptables-save prints it, e.g. "-A ISTIO_REDIRECT -p tcp -j REDIRECT
  /// --to-ports 15001"). A nat rule sees the first packet of a connection
  /// only, so this counts connections. -1 if the rule is not there.
  int64_t packets(bool v6, const std::string& rule) {
    auto n = iptables::rule_packets(save(v6, true), [&](std::string_view r) { return r == rule; });
    return n ? static_cast<int64_t>(*n) : -1;
  }
  int64_t outbound_redirects(bool v6) { return packets(v6, "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"); }
  int64_t inbound_redirects(bool v6) { return packets(v6, "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"); }

  /// A round trip made by an application in the pod (its cgroup and netns) as id.
  RoundTrip app_roundtrip(const std::string& ip, uint16_t port, Identity id = Identity::user(1000, 1000),
                          const ConnectOptions& options = {}) {
    return roundtrip_in_pod(*pod_, ip, port, id, options);
  }

  /// A round trip from the peer namespace (outside the pod).
  RoundTrip from_peer(const std::string& ip, uint16_t port) {
    return roundtrip_in_peer(*pod_, ip, port, Millis(3000));
  }

  std::string kind_;
  std::unique_ptr<TestPod> pod_;
  std::unique_ptr<ipt::ProcessRunner> runner_;
  std::unique_ptr<ipt::IptablesApplier> applier_;
  std::optional<meshcap::CaptureConfig> last_cfg_;
};

std::string backend_name(const ::testing::TestParamInfo<std::string>& info) { return info.param; }

// ===========================================================================
// Outbound (nat OUTPUT): rows O1-O8.

class IptablesOutbound : public IptablesTraffic {
 protected:
  void SetUp() override {
    IptablesTraffic::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    // The proxy's listeners, in the pod as UID 1337, as for a real sidecar.
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
  void release_servers() override {
    for (auto* s : {&out4_, &out6_, &in4_, &in6_, &app4_, &app6_, &peer4_, &peer6_, &peer4b_}) s->reset();
  }

  size_t app_accepted(size_t n = 0) const {
    if (n > 0) {
      for (int i = 0; i < 300 && app4_->accepted() + app6_->accepted() < n; i++) usleep(10 * 1000);
    }
    return app4_->accepted() + app6_->accepted();
  }
  size_t proxy_accepted() const {
    return out4_->accepted() + out6_->accepted() + in4_->accepted() + in6_->accepted();
  }

  std::unique_ptr<RecordingListener> out4_, out6_, in4_, in6_, app4_, app6_, peer4_, peer6_, peer4b_;
};

TEST_P(IptablesOutbound, CapturedIpv4ConnectLandsOnOutboundListenerWithOriginalDst) {
  apply({"-i", "*"});
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
  EXPECT_EQ(peer4_->accepted(), 0u);
  EXPECT_EQ(outbound_redirects(false), 1);
}

TEST_P(IptablesOutbound, CapturedIpv6ConnectLandsOnOutboundListenerWithOriginalDst) {
  apply({"-i", "*", "--dual-stack"});
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
  EXPECT_EQ(peer6_->accepted(), 0u);
  EXPECT_EQ(outbound_redirects(true), 1);
  EXPECT_EQ(outbound_redirects(false), 0);
}

// istio renders no ip6tables rules without --dual-stack (ENABLE_INBOUND_IPV6),
// so IPv6 is not captured at all. (The eBPF mode captures IPv6 regardless.)
TEST_P(IptablesOutbound, Ipv6IsNotCapturedWithoutDualStack) {
  const auto res = apply({"-i", "*"});
  EXPECT_FALSE(res.ipv6.has_value());
  EXPECT_EQ(save(true).find("ISTIO"), std::string::npos);
  RoundTrip rt = app_roundtrip(pod_->peer_ipv6(), 8080);
  ASSERT_TRUE(rt.ok()) << "errno " << rt.error;
  EXPECT_EQ(settled(*peer6_, 1), 1u);
  EXPECT_EQ(out6_->accepted(), 0u);
  // IPv4 is captured as usual.
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_EQ(settled(*out4_, 1), 1u);
}

TEST_P(IptablesOutbound, V4MappedDestinationOfAnIpv6SocketIsCapturedAsIpv4) {
  apply({"-i", "*"});
  RoundTrip rt = app_roundtrip("::ffff:" + pod_->peer_ipv4(), 8080);
  ASSERT_TRUE(rt.ok()) << "errno " << rt.error;
  EXPECT_EQ(rt.peer, endpoint("::ffff:" + pod_->peer_ipv4(), 8080));
  EXPECT_EQ(host_of(rt.local), "::ffff:" + pod_->pod_ipv4());
  ASSERT_TRUE(out4_->wait_for_accepts(1));
  EXPECT_EQ(out4_->records().at(0).original_dst.address, endpoint(pod_->peer_ipv4(), 8080));
  EXPECT_EQ(peer4_->accepted(), 0u);
  EXPECT_EQ(outbound_redirects(false), 1);
}

TEST_P(IptablesOutbound, ProxyUidAndGidGoDirect) {
  apply({"-i", "*", "-u", "1337", "-g", "1337", "--dual-stack"});
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080, Identity::proxy()).ok());
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080, Identity::user(1000, 1337)).ok());
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv6(), 8080, Identity::user(1337, 1000)).ok());
  EXPECT_EQ(settled(*peer4_, 2), 2u);
  EXPECT_EQ(settled(*peer6_, 1), 1u);
  EXPECT_EQ(out4_->accepted() + out6_->accepted(), 0u);
  EXPECT_EQ(packets(false, "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"), 1);
  EXPECT_EQ(packets(false, "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN"), 1);
  EXPECT_EQ(packets(true, "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"), 1);
  EXPECT_EQ(outbound_redirects(false), 0);
  // A supplementary group 1337 alone does not exempt (istio's owner match
  // has no --suppl-groups): captured.
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080, Identity::user(1000, 1000, {1337})).ok());
  EXPECT_EQ(settled(*out4_, 1), 1u);
  EXPECT_EQ(outbound_redirects(false), 1);
}

// xt_owner matches the credentials (fsuid/fsgid) of the process that
// created the socket, not of the one that calls connect(). The eBPF connect
// hook sees the caller of connect() (its real uid/gid), so these two cases
// come out the other way round in eBPF mode: a documented difference.
TEST_P(IptablesOutbound, OwnerMatchUsesTheSocketCreatorsCredentials) {
  apply({"-i", "*"});
  const std::string peer = pod_->peer_ipv4();
  // Created by root, connected as 1337: captured.
  std::string err = pod_->run_in_pod_capture([&] {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::setresgid(1337, 1337, 1337) != 0 || ::setresuid(1337, 1337, 1337) != 0) return std::string("setresuid");
    return ping_on(fd.get(), peer, 8080);
  });
  EXPECT_EQ(err, "");
  EXPECT_EQ(settled(*out4_, 1), 1u);
  EXPECT_EQ(peer4_->accepted(), 0u);
  // Created as 1337 (saved uid root), connected as root: not captured.
  err = pod_->run_in_pod_capture([&] {
    if (::setresgid(1337, 1337, 0) != 0 || ::setresuid(1337, 1337, 0) != 0) return std::string("setresuid 1337");
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::setresuid(0, 0, 0) != 0 || ::setresgid(0, 0, 0) != 0) return std::string("setresuid 0");
    return ping_on(fd.get(), peer, 8080);
  });
  EXPECT_EQ(err, "");
  EXPECT_EQ(settled(*peer4_, 1), 1u);
  EXPECT_EQ(out4_->accepted(), 1u);
}

TEST_P(IptablesOutbound, LoopbackAndOwnAddressGoDirect) {
  apply({"-i", "*", "--dual-stack"});
  for (const std::string& ip : {std::string("127.0.0.1"), pod_->pod_ipv4(), std::string("::1"), pod_->pod_ipv6()}) {
    RoundTrip rt = app_roundtrip(ip, 8081);
    EXPECT_TRUE(rt.ok()) << ip << " errno " << rt.error;
    EXPECT_EQ(rt.peer, endpoint(ip, 8081));
  }
  EXPECT_EQ(app_accepted(4), 4u);
  EXPECT_EQ(proxy_accepted(), 0u);
  // O3: "-o lo -m owner ! --uid-owner 1337 -j RETURN", once per family
  // and connection.
  EXPECT_EQ(packets(false, "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN"), 2);
  EXPECT_EQ(packets(true, "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN"), 2);
  EXPECT_EQ(outbound_redirects(false) + outbound_redirects(true), 0);
}

TEST_P(IptablesOutbound, ProxyToOwnAddressLandsOnInboundListener) {
  apply({"-i", "*", "--dual-stack"});
  RoundTrip rt = app_roundtrip(pod_->pod_ipv4(), 8081, Identity::proxy());
  ASSERT_TRUE(rt.ok()) << "errno " << rt.error;
  EXPECT_EQ(rt.peer, endpoint(pod_->pod_ipv4(), 8081));
  ASSERT_TRUE(in4_->wait_for_accepts(1));
  auto rec = in4_->records().at(0);
  ASSERT_TRUE(rec.original_dst.ok) << "errno " << rec.original_dst.error;
  EXPECT_EQ(rec.original_dst.address, endpoint(pod_->pod_ipv4(), 8081));
  EXPECT_EQ(host_of(rec.peer), pod_->pod_ipv4());  // source kept by REDIRECT
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
  EXPECT_EQ(app_accepted(), 0u);
  EXPECT_EQ(inbound_redirects(false), 1);
  EXPECT_EQ(inbound_redirects(true), 1);
  // The proxy to 127.0.0.1 / ::1 is not redirected.
  EXPECT_TRUE(app_roundtrip("127.0.0.1", 8081, Identity::proxy()).ok());
  EXPECT_TRUE(app_roundtrip("::1", 8081, Identity::proxy()).ok());
  EXPECT_EQ(app_accepted(2), 2u);
  EXPECT_EQ(in4_->accepted() + in6_->accepted(), 2u);
}

TEST_P(IptablesOutbound, TunnelPortIsNeverSentToTheInboundListener) {
  apply({"-i", "*", "-e", "8081"});
  EXPECT_TRUE(app_roundtrip(pod_->pod_ipv4(), 8081, Identity::proxy()).ok());
  EXPECT_EQ(app_accepted(1), 1u);
  EXPECT_EQ(in4_->accepted(), 0u);
  EXPECT_EQ(inbound_redirects(false), 0);
}

TEST_P(IptablesOutbound, PassthroughSourceIsNotCaptured) {
  apply({"-i", "*"});
  ConnectOptions from_passthrough;
  from_passthrough.bind_ip = "127.0.0.6";
  RoundTrip rt = app_roundtrip(pod_->pod_ipv4(), 8081, Identity::proxy(), from_passthrough);
  EXPECT_TRUE(rt.ok()) << "errno " << rt.error;
  EXPECT_EQ(app_accepted(1), 1u);
  EXPECT_EQ(host_of(app4_->records().at(0).peer), "127.0.0.6");
  EXPECT_EQ(in4_->accepted(), 0u);
  EXPECT_EQ(packets(false, "-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN"), 1);
}

TEST_P(IptablesOutbound, ExcludedPortsAndCidrsGoDirectIncludedAreCaptured) {
  apply({"-i", "*", "-o", "8082", "-x", pod_->peer_ipv6() + "/128", "--dual-stack"});
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8082).ok());  // -o
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv6(), 8080).ok());  // -x
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());  // captured
  EXPECT_EQ(settled(*peer4b_, 1), 1u);
  EXPECT_EQ(settled(*peer6_, 1), 1u);
  EXPECT_EQ(settled(*out4_, 1), 1u);
  EXPECT_EQ(peer4_->accepted(), 0u);
  EXPECT_EQ(out6_->accepted(), 0u);
  EXPECT_EQ(outbound_redirects(false), 1);
  EXPECT_EQ(outbound_redirects(true), 0);
}

TEST_P(IptablesOutbound, OnlyIncludedCidrsAndPortsAreCapturedWithoutWildcard) {
  apply({"-i", pod_->peer_ipv6() + "/64", "-q", "8082", "--dual-stack"});
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv6(), 8080).ok());  // -i
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8082).ok());  // -q
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());  // neither: direct
  EXPECT_EQ(settled(*out6_, 1), 1u);
  EXPECT_EQ(settled(*out4_, 1), 1u);
  EXPECT_EQ(settled(*peer4_, 1), 1u);
  EXPECT_EQ(out6_->records().at(0).original_dst.address, endpoint(pod_->peer_ipv6(), 8080));
  EXPECT_EQ(out4_->records().at(0).original_dst.address, endpoint(pod_->peer_ipv4(), 8082));
  EXPECT_EQ(peer4b_->accepted() + peer6_->accepted(), 0u);
}

TEST_P(IptablesOutbound, TrafficRoutedOutOfAnExcludedInterfaceGoesDirect) {
  // -c: "-A OUTPUT -o IF -j RETURN". Both peers are routed out of the pod's
  // veth; the pod's own addresses (over lo) are not.
  apply({"-i", "*", "-c", pod_->pod_veth(), "--dual-stack"});
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv6(), 8080).ok());
  EXPECT_TRUE(app_roundtrip(pod_->pod_ipv4(), 8081, Identity::proxy()).ok());
  EXPECT_EQ(settled(*peer4_, 1), 1u);
  EXPECT_EQ(settled(*peer6_, 1), 1u);
  EXPECT_EQ(settled(*in4_, 1), 1u);
  EXPECT_EQ(out4_->accepted() + out6_->accepted(), 0u);
  EXPECT_EQ(packets(false, "-A OUTPUT -o " + pod_->pod_veth() + " -j RETURN"), 1);
  EXPECT_EQ(packets(true, "-A OUTPUT -o " + pod_->pod_veth() + " -j RETURN"), 1);
}

TEST_P(IptablesOutbound, UdpIsUntouched) {
  apply({"-i", "*", "--dual-stack"});
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
  EXPECT_EQ(outbound_redirects(false), 0);
  EXPECT_EQ(proxy_accepted(), 0u);
}

TEST_P(IptablesOutbound, ManyConnectionsAreAllCaptured) {
  apply({"-i", "*"});
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
  EXPECT_EQ(outbound_redirects(false), 200);
}

// With netfilter NAT in the pod's netns every connection is tracked, so
// SO_ORIGINAL_DST also answers for a connection that was NOT redirected: it
// gives the socket's own local address. (In eBPF mode, with no conntrack in
// the netns, it fails with ENOENT/ENOPROTOOPT.)
TEST_P(IptablesOutbound, OriginalDstOfAnUnredirectedConnectionIsItsOwnAddress) {
  apply({"-i", "*"});
  ASSERT_TRUE(app_roundtrip(pod_->pod_ipv4(), 8081).ok());
  ASSERT_TRUE(app4_->wait_for_accepts(1));
  auto rec = app4_->records().at(0);
  ASSERT_TRUE(rec.original_dst.ok) << "errno " << rec.original_dst.error;
  EXPECT_EQ(rec.original_dst.address, rec.local);
  EXPECT_EQ(rec.local, endpoint(pod_->pod_ipv4(), 8081));
}

TEST_P(IptablesOutbound, ApplyingTwiceKeepsTheSameRulesAndBehaviour) {
  const std::vector<std::string> args = {"-i", "*", "-o", "8082", "--dual-stack"};
  apply(args);
  const std::string v4 = rules(false), v6 = rules(true);
  ASSERT_NE(v4.find("ISTIO_OUTPUT"), std::string::npos) << v4;
  apply(args);
  EXPECT_EQ(rules(false), v4);
  EXPECT_EQ(rules(true), v6);
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
  EXPECT_EQ(settled(*peer4b_, 1), 1u);
  EXPECT_EQ(settled(*peer4_, 1), 1u);
  EXPECT_EQ(out4_->accepted(), 1u);
  EXPECT_EQ(outbound_redirects(false), 1);  // one copy of each rule: counted once
  EXPECT_EQ(outbound_redirects(true), 1);
}

TEST_P(IptablesOutbound, CleanupRemovesEverythingAndTrafficGoesDirect) {
  apply({"-i", "*", "--dual-stack"});
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv6(), 8080).ok());
  EXPECT_EQ(settled(*out4_, 1), 1u);
  EXPECT_EQ(settled(*out6_, 1), 1u);

  cleanup();
  for (bool v6 : {false, true}) EXPECT_EQ(save(v6).find("ISTIO"), std::string::npos) << save(v6);
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv4(), 8080).ok());
  EXPECT_TRUE(app_roundtrip(pod_->peer_ipv6(), 8080).ok());
  EXPECT_TRUE(app_roundtrip(pod_->pod_ipv4(), 8081, Identity::proxy()).ok());
  EXPECT_EQ(settled(*peer4_, 1), 1u);
  EXPECT_EQ(settled(*peer6_, 1), 1u);
  EXPECT_EQ(app_accepted(1), 1u);
  EXPECT_EQ(out4_->accepted() + out6_->accepted(), 2u);
  EXPECT_EQ(in4_->accepted(), 0u);
  // Safe twice.
  EXPECT_NO_THROW(cleanup());
}

INSTANTIATE_TEST_SUITE_P(Backends, IptablesOutbound, ::testing::Values("nft", "legacy"), backend_name);

// ===========================================================================
// Inbound (nat PREROUTING): rows I1-I6.

class IptablesInbound : public IptablesTraffic {
 protected:
  void SetUp() override {
    IptablesTraffic::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    for (uint16_t port : {8080, 9090, 15008}) {
      apps4_.push_back(std::make_unique<RecordingListener>(Placement::pod_process(*pod_), "0.0.0.0", port));
      apps6_.push_back(std::make_unique<RecordingListener>(Placement::pod_process(*pod_), "::", port));
    }
  }
  void release_servers() override {
    in4_.reset();
    in6_.reset();
    out4_.reset();
    apps4_.clear();
    apps6_.clear();
  }

  void start_proxy_listeners() {
    in4_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "0.0.0.0", 15006);
    in6_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "::", 15006);
    out4_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "127.0.0.1", 15001);
  }

  /// Accepts of the application's servers on port index i (8080, 9090, 15008).
  size_t app_accepted(size_t i, size_t n = 0) const {
    if (n > 0) {
      for (int k = 0; k < 300 && apps4_[i]->accepted() + apps6_[i]->accepted() < n; k++) usleep(10 * 1000);
    }
    return apps4_[i]->accepted() + apps6_[i]->accepted();
  }

  std::vector<std::unique_ptr<RecordingListener>> apps4_, apps6_;  // 8080, 9090, 15008
  std::unique_ptr<RecordingListener> in4_, in6_, out4_;
};

// REDIRECT in PREROUTING rewrites the destination to the receiving
// interface's address and port 15006: the proxy's accepted socket has
// getsockname() = pod-address:15006 and the original destination only
// through SO_ORIGINAL_DST. (With sk_lookup the accepted socket's own
// address IS the original destination.)
TEST_P(IptablesInbound, IncludedPortsLandOnInboundListenerWithOriginalDst) {
  apply({"-b", "8080", "--dual-stack"});
  start_proxy_listeners();
  RoundTrip r4 = from_peer(pod_->pod_ipv4(), 8080);
  RoundTrip r6 = from_peer(pod_->pod_ipv6(), 8080);
  ASSERT_TRUE(r4.ok()) << "errno " << r4.error;
  ASSERT_TRUE(r6.ok()) << "errno " << r6.error;
  // The client outside sees the address it dialed.
  EXPECT_EQ(r4.peer, endpoint(pod_->pod_ipv4(), 8080));
  EXPECT_EQ(r6.peer, endpoint(pod_->pod_ipv6(), 8080));
  ASSERT_TRUE(in4_->wait_for_accepts(1));
  ASSERT_TRUE(in6_->wait_for_accepts(1));
  auto rec4 = in4_->records().at(0);
  ASSERT_TRUE(rec4.original_dst.ok) << "errno " << rec4.original_dst.error;
  EXPECT_EQ(rec4.original_dst.address, endpoint(pod_->pod_ipv4(), 8080));
  EXPECT_EQ(rec4.local, endpoint(pod_->pod_ipv4(), 15006));
  EXPECT_EQ(rec4.peer, r4.local);  // the real client
  auto rec6 = in6_->records().at(0);
  ASSERT_TRUE(rec6.original_dst.ok) << "errno " << rec6.original_dst.error;
  EXPECT_EQ(rec6.original_dst.address, endpoint(pod_->pod_ipv6(), 8080));
  EXPECT_EQ(rec6.peer, r6.local);
  EXPECT_EQ(rec6.local.substr(rec6.local.rfind(':')), ":15006");
  EXPECT_EQ(app_accepted(0), 0u);
  // Ports not in -b reach the application directly.
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 9090).ok());
  EXPECT_EQ(app_accepted(1, 1), 1u);
  EXPECT_EQ(inbound_redirects(false), 1);
  EXPECT_EQ(inbound_redirects(true), 1);
}

TEST_P(IptablesInbound, WildcardHonoursExcludedPortsAndTunnelPort) {
  apply({"-b", "*", "-d", "9090", "--dual-stack"});
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 9090).ok());
  EXPECT_TRUE(from_peer(pod_->pod_ipv6(), 15008).ok());
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 15008).ok());
  EXPECT_EQ(settled(*in4_, 1), 1u);
  EXPECT_EQ(in4_->records().at(0).original_dst.address, endpoint(pod_->pod_ipv4(), 8080));
  EXPECT_EQ(in6_->accepted(), 0u);
  EXPECT_EQ(app_accepted(0), 0u);
  EXPECT_EQ(app_accepted(1, 1), 1u);
  EXPECT_EQ(app_accepted(2, 2), 2u);
  EXPECT_EQ(packets(false, "-A ISTIO_INBOUND -p tcp -m tcp --dport 9090 -j RETURN"), 1);
  EXPECT_EQ(packets(false, "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN"), 1);
  EXPECT_EQ(packets(true, "-A ISTIO_INBOUND -p tcp -m tcp --dport 15008 -j RETURN"), 1);
  EXPECT_EQ(inbound_redirects(false), 1);
}

TEST_P(IptablesInbound, EmptyInboundPortsCaptureNothing) {
  apply({"-b", "", "-i", "*", "--dual-stack"});
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_TRUE(from_peer(pod_->pod_ipv6(), 8080).ok());
  EXPECT_EQ(app_accepted(0, 2), 2u);
  EXPECT_EQ(in4_->accepted() + in6_->accepted(), 0u);
}

TEST_P(IptablesInbound, ExcludedInterfaceIsNotCaptured) {
  apply({"-b", "*", "-c", pod_->pod_veth()});
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_EQ(app_accepted(0, 1), 1u);
  EXPECT_EQ(in4_->accepted(), 0u);
  EXPECT_EQ(packets(false, "-A PREROUTING -i " + pod_->pod_veth() + " -j RETURN"), 1);
}

// -k: "-I PREROUTING 1 -i IF -j ISTIO_REDIRECT". REDIRECT from PREROUTING
// goes to the receiving interface's address, not to 127.0.0.1, so a proxy
// whose outbound listener binds 127.0.0.1 only does not get these
// connections (refused); one on 0.0.0.0:15001 (as Envoy binds) does. The
// eBPF mode delivers them to a 127.0.0.1:15001 listener too.
TEST_P(IptablesInbound, VirtualInterfaceGoesToOutboundListener) {
  apply({"-k", pod_->pod_veth(), "-i", "*"});
  start_proxy_listeners();
  EXPECT_EQ(from_peer(pod_->pod_ipv4(), 8080).error, ECONNREFUSED);
  EXPECT_EQ(out4_->accepted(), 0u);
  out4_.reset();
  RecordingListener any(Placement::pod_process(*pod_, Identity::proxy()), "0.0.0.0", 15001);
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  ASSERT_TRUE(any.wait_for_accepts(1));
  auto rec = any.records().at(0);
  ASSERT_TRUE(rec.original_dst.ok) << "errno " << rec.original_dst.error;
  EXPECT_EQ(rec.original_dst.address, endpoint(pod_->pod_ipv4(), 8080));
  EXPECT_EQ(rec.local, endpoint(pod_->pod_ipv4(), 15001));
  EXPECT_EQ(app_accepted(0), 0u);
  EXPECT_EQ(outbound_redirects(false), 2);
}

TEST_P(IptablesInbound, ConnectionsFromInsideThePodFollowOutboundRules) {
  apply({"-b", "*", "-i", "*", "--dual-stack"});
  start_proxy_listeners();
  // An application in the pod dialing the pod's own address: O3, direct.
  EXPECT_TRUE(app_roundtrip(pod_->pod_ipv4(), 8080).ok());
  EXPECT_TRUE(app_roundtrip(pod_->pod_ipv6(), 8080).ok());
  EXPECT_EQ(app_accepted(0, 2), 2u);
  EXPECT_EQ(in4_->accepted() + in6_->accepted(), 0u);
  EXPECT_EQ(inbound_redirects(false) + inbound_redirects(true), 0);
}

TEST_P(IptablesInbound, ProxyDownIsRefusedAndCaptureResumesWhenItListens) {
  apply({"-b", "8080"});
  // No proxy listening: refused at once (REDIRECT to a closed port).
  EXPECT_EQ(from_peer(pod_->pod_ipv4(), 8080).error, ECONNREFUSED);
  EXPECT_EQ(app_accepted(0), 0u);
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_EQ(settled(*in4_, 1), 1u);
  // The proxy goes away again (restart): refused, then back.
  in4_.reset();
  in6_.reset();
  out4_.reset();
  EXPECT_EQ(from_peer(pod_->pod_ipv4(), 8080).error, ECONNREFUSED);
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_EQ(settled(*in4_, 1), 1u);
  EXPECT_EQ(app_accepted(0), 0u);
  EXPECT_EQ(inbound_redirects(false), 4);  // refused ones were redirected too
}

TEST_P(IptablesInbound, ApplyingTwiceKeepsTheSameRulesAndBehaviour) {
  const std::vector<std::string> args = {"-b", "*", "-d", "9090", "--dual-stack"};
  apply(args);
  const std::string v4 = rules(false), v6 = rules(true);
  apply(args);
  EXPECT_EQ(rules(false), v4);
  EXPECT_EQ(rules(true), v6);
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_TRUE(from_peer(pod_->pod_ipv6(), 8080).ok());
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 9090).ok());
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 15008).ok());
  EXPECT_EQ(settled(*in4_, 1), 1u);
  EXPECT_EQ(settled(*in6_, 1), 1u);
  EXPECT_EQ(in4_->records().at(0).original_dst.address, endpoint(pod_->pod_ipv4(), 8080));
  EXPECT_EQ(in6_->records().at(0).original_dst.address, endpoint(pod_->pod_ipv6(), 8080));
  EXPECT_EQ(app_accepted(0), 0u);
  EXPECT_EQ(app_accepted(1, 1), 1u);
  EXPECT_EQ(app_accepted(2, 1), 1u);
  EXPECT_EQ(inbound_redirects(false), 1);
  EXPECT_EQ(inbound_redirects(true), 1);
}

TEST_P(IptablesInbound, CleanupGoesDirectAgain) {
  apply({"-b", "*", "--dual-stack"});
  start_proxy_listeners();
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_EQ(settled(*in4_, 1), 1u);
  cleanup();
  for (bool v6 : {false, true}) EXPECT_EQ(save(v6).find("ISTIO"), std::string::npos) << save(v6);
  EXPECT_TRUE(from_peer(pod_->pod_ipv4(), 8080).ok());
  EXPECT_TRUE(from_peer(pod_->pod_ipv6(), 8080).ok());
  EXPECT_EQ(app_accepted(0, 2), 2u);
  EXPECT_EQ(in4_->accepted() + in6_->accepted(), 1u);
}

INSTANTIATE_TEST_SUITE_P(Backends, IptablesInbound, ::testing::Values("nft", "legacy"), backend_name);

}  // namespace
}  // namespace meshcap::test
