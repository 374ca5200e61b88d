// Escape attempts: an application process (UID/GID 1000) in a captured pod
// tries to reach a server in the peer namespace without going through the
// proxy, in both modes (eBPF and iptables). Each test asserts what the mode
// does today; docs/reliability.md tabulates the results.
//
// "Captured" means the connection landed on the proxy's listener
// (127.0.0.1:15001 / [::1]:15001, a recording stand-in running as UID 1337
// in the pod) with the right original destination, and the peer's server
// saw nothing directly.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/wait.h>

#include "reliability_fixture.h"
#include "support/cleanup.h"

#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif

namespace meshcap::test {
namespace {

const Identity kApp = Identity::user(1000, 1000);

class Escape : public ModeTest {
 protected:
  void SetUp() override {
    ModeTest::SetUp();
    if (IsSkipped()) return;
    out4_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "127.0.0.1", 15001);
    out6_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "::1", 15001);
    peer4_ = std::make_unique<RecordingListener>(Placement::peer_thread(*pod_), pod_->peer_ipv4(), 8080);
    peer6_ = std::make_unique<RecordingListener>(Placement::peer_thread(*pod_), pod_->peer_ipv6(), 8080);
  }

  void init_capture() {
    auto r = init();
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  /// Expects exactly `n` more connections on the IPv4 proxy listener since
  /// `before`, each with original destination peer4:8080, and none at the
  /// peer's servers.
  void expect_captured_v4(size_t before, size_t n = 1) {
    EXPECT_ACCEPTS(out4_->accepted(), before + n);
    auto recs = out4_->records();
    for (size_t i = before; i < recs.size(); i++) {
      EXPECT_TRUE(recs[i].original_dst.ok) << "errno " << recs[i].original_dst.error;
      EXPECT_EQ(recs[i].original_dst.address, endpoint(pod_->peer_ipv4(), 8080));
    }
    expect_nothing_reached_peer();
  }
  void expect_nothing_reached_peer() {
    usleep(200 * 1000);  // a direct connection would have been accepted by now
    EXPECT_EQ(peer4_->accepted(), 0u) << "reached the peer uncaptured";
    EXPECT_EQ(peer6_->accepted(), 0u) << "reached the peer uncaptured";
  }

  std::unique_ptr<RecordingListener> out4_, out6_, peer4_, peer6_;
};

TEST_P(Escape, PlainConnectIsCaptured) {
  ASSERT_NO_FATAL_FAILURE(init_capture());
  RoundTrip rt = app_roundtrip(pod_->peer_ipv4(), 8080, kApp);
  ASSERT_TRUE(rt.ok()) << "errno " << rt.error;
  EXPECT_EQ(rt.peer, endpoint(pod_->peer_ipv4(), 8080));
  expect_captured_v4(0);
}

// istio returns "-s 127.0.0.6 -o lo" (the proxy's inbound passthrough). An
// application binding 127.0.0.6 and dialing a remote address:
//  - iptables: the route lookup refuses a loopback source on a non-loopback
//    route (EINVAL) before any packet reaches netfilter: no connection at all.
//  - eBPF: the passthrough exemption applies only to destinations routed over
//    lo (as the rule's "-o lo"), so connect4 redirects it to the proxy, which
//    sees it from 127.0.0.6: captured.
// Neither reaches the peer. The outcome differs (refused vs captured); see
// docs/reliability.md.
TEST_P(Escape, BindingPassthroughSourceDoesNotBypass) {
  ASSERT_NO_FATAL_FAILURE(init_capture());
  ConnectOptions from6;
  from6.bind_ip = "127.0.0.6";
  RoundTrip rt = app_roundtrip(pod_->peer_ipv4(), 8080, kApp, from6);
  if (ebpf()) {
    EXPECT_TRUE(rt.ok()) << "errno " << rt.error;
    expect_captured_v4(0);
    EXPECT_EQ(host_of(out4_->records().at(0).peer), "127.0.0.6");
    EXPECT_EQ(pinned_counter("passthrough_source"), 0u);
  } else {
    EXPECT_EQ(rt.error, EINVAL) << "connected: " << rt.peer;
    EXPECT_EQ(out4_->accepted(), 0u);
    expect_nothing_reached_peer();
  }
  // ::6 on an IPv6 socket to the peer's IPv6 address. iptables mode adds
  // ::6/128 to lo as istio does; add it in both modes so that the
  // application can bind it. There is no loopback-source check for ::6 on
  // the IPv6 route, so the connection is made, and both modes capture it
  // ("-s ::6 -o lo" and the eBPF exemption need a destination over lo).
  auto add = in_pod_netns({"ip", "-6", "addr", "add", "::6/128", "dev", "lo"});
  ASSERT_TRUE(add.ok() || add.output.find("exists") != std::string::npos ||
              add.output.find("already assigned") != std::string::npos)
      << add.output;
  ConnectOptions from6v6;
  from6v6.bind_ip = "::6";
  RoundTrip rt6 = app_roundtrip(pod_->peer_ipv6(), 8080, kApp, from6v6);
  EXPECT_TRUE(rt6.ok()) << "errno " << rt6.error;
  EXPECT_EQ(rt6.peer, endpoint(pod_->peer_ipv6(), 8080));
  EXPECT_ACCEPTS(out6_->accepted(), 1);
  ASSERT_EQ(out6_->records().size(), 1u);
  EXPECT_EQ(out6_->records()[0].original_dst.address, endpoint(pod_->peer_ipv6(), 8080));
  EXPECT_EQ(host_of(out6_->records()[0].peer), "::6");
  expect_nothing_reached_peer();
}

TEST_P(Escape, Ipv4MappedIpv6DestinationIsCaptured) {
  ASSERT_NO_FATAL_FAILURE(init_capture());
  RoundTrip rt = app_roundtrip("::ffff:" + pod_->peer_ipv4(), 8080, kApp);
  ASSERT_TRUE(rt.ok()) << "errno " << rt.error;
  EXPECT_EQ(rt.reply, "ping");
  EXPECT_EQ(rt.peer, endpoint("::ffff:" + pod_->peer_ipv4(), 8080));
  expect_captured_v4(0);
}

TEST_P(Escape, Ipv6DestinationIsCaptured) {
  // The pod has a global IPv6 address, so istio (and meshcap, both modes)
  // capture IPv6 without --dual-stack.
  ASSERT_NO_FATAL_FAILURE(init_capture());
  RoundTrip rt = app_roundtrip(pod_->peer_ipv6(), 8080, kApp);
  ASSERT_TRUE(rt.ok()) << "errno " << rt.error;
  EXPECT_EQ(rt.peer, endpoint(pod_->peer_ipv6(), 8080));
  EXPECT_ACCEPTS(out6_->accepted(), 1);
  EXPECT_EQ(out6_->records().at(0).original_dst.address, endpoint(pod_->peer_ipv6(), 8080));
  expect_nothing_reached_peer();
}

// O8: UDP is not captured in either mode (DNS capture is a separate flag).
// A connected UDP socket reaches the peer directly in both modes, by design.
TEST_P(Escape, ConnectedUdpIsNotCapturedInEitherMode) {
  ASSERT_NO_FATAL_FAILURE(init_capture());
  UniqueFd rx4 = udp_socket_in(pod_->peer_netns_path(), pod_->peer_ipv4(), 5353);
  UniqueFd rx6 = udp_socket_in(pod_->peer_netns_path(), pod_->peer_ipv6(), 5353);
  const std::string p4 = pod_->peer_ipv4(), p6 = pod_->peer_ipv6();
  std::string got = pod_->run_in_pod_capture(
      [&] {
        std::string out;
        for (const std::string& ip : {p4, p6, "::ffff:" + p4}) {
          socklen_t len = 0;
          sockaddr_storage sa = make_sockaddr(ip, 5353, &len);
          int fd = ::socket(sa.ss_family, SOCK_DGRAM, 0);
          if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&sa), len) != 0) return "connect " + ip;
          out += getpeername_str(fd) + "|";
          if (::send(fd, "udp", 3, 0) != 3) out += "send failed";
          ::close(fd);
        }
        return out;
      },
      kApp);
  auto parts = split_bar(got);
  ASSERT_EQ(parts.size(), 3u) << got;
  EXPECT_EQ(parts[0], endpoint(p4, 5353));
  EXPECT_EQ(parts[1], endpoint(p6, 5353));
  Datagram d1 = recv_datagram(rx4.get(), Millis(3000));
  Datagram d2 = recv_datagram(rx6.get(), Millis(3000));
  Datagram d3 = recv_datagram(rx4.get(), Millis(3000));
  EXPECT_EQ(d1.payload, "udp");
  EXPECT_EQ(host_of(d1.from), pod_->pod_ipv4());
  EXPECT_EQ(d2.payload, "udp");
  EXPECT_EQ(host_of(d2.from), pod_->pod_ipv6());
  EXPECT_EQ(d3.payload, "udp");  // the v4-mapped one arrives as IPv4
  if (ebpf()) {
    uint64_t decided = 0;
    for (const auto& [k, v] : loader::pinned_counters(name_)) decided += v;
    EXPECT_EQ(decided, 0u) << "UDP went through the TCP decision";
  }
}

// TCP fast open: the connection is opened by sendto(MSG_FASTOPEN) (and by
// connect() after TCP_FASTOPEN_CONNECT), not by a plain connect(). Both go
// through the same pre-connect hook and the same nat OUTPUT rule: captured.
TEST_P(Escape, TcpFastOpenIsCaptured) {
  for (const auto& ns : {pod_->pod_netns_path(), pod_->peer_netns_path()})
    netns_sysctl(ns, "net.ipv4.tcp_fastopen", "3");
  ASSERT_EQ(netns_sysctl_get(pod_->pod_netns_path(), "net.ipv4.tcp_fastopen"), "3");
  ASSERT_NO_FATAL_FAILURE(init_capture());
  const std::string peer = pod_->peer_ipv4(), peer6 = pod_->peer_ipv6();
  std::string got = pod_->run_in_pod_capture(
      [&] {
        std::string out;
        // Twice by sendto(MSG_FASTOPEN) (the first asks for a cookie), once
        // by TCP_FASTOPEN_CONNECT, once over IPv6.
        for (int i = 0; i < 4; i++) {
          const std::string ip = i == 3 ? peer6 : peer;
          socklen_t len = 0;
          sockaddr_storage sa = make_sockaddr(ip, 8080, &len);
          int fd = ::socket(sa.ss_family, SOCK_STREAM, 0);
          if (fd < 0) return std::string("socket");
          ssize_t n;
          if (i == 2) {
            int one = 1;
            if (::setsockopt(fd, IPPROTO_TCP, TCP_FASTOPEN_CONNECT, &one, sizeof one) != 0)
              return "TCP_FASTOPEN_CONNECT " + std::to_string(errno);
            if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), len) != 0) return "connect " + std::to_string(errno);
            n = ::send(fd, "tfo", 3, 0);
          } else {
            n = ::sendto(fd, "tfo", 3, MSG_FASTOPEN, reinterpret_cast<sockaddr*>(&sa), len);
          }
          if (n != 3) return "sendto " + std::to_string(errno);
          std::string reply = recv_exact(fd, 3, kIoTimeout);
          out += reply + "@" + getpeername_str(fd) + "|";
          ::close(fd);
        }
        return out;
      },
      kApp);
  auto parts = split_bar(got);
  ASSERT_EQ(parts.size(), 4u) << got;
  for (int i = 0; i < 3; i++) EXPECT_EQ(parts[i], "tfo@" + endpoint(peer, 8080)) << i;
  EXPECT_EQ(parts[3], "tfo@" + endpoint(peer6, 8080));
  expect_captured_v4(0, 3);
  EXPECT_ACCEPTS(out6_->accepted(), 1);
  EXPECT_EQ(out6_->records().at(0).original_dst.address, endpoint(peer6, 8080));
  if (ebpf()) {
    EXPECT_EQ(pinned_counter("redirected_outbound"), 4u);
    EXPECT_EQ(pinned_counter("orig_dst_answered"), 4u);
  }
}

// Moving itself out of the pod's cgroup needs write access to the target's
// cgroup.procs (and to the common ancestor's): UID 1000 has neither, also
// not from inside a new user namespace. The process stays captured.
TEST_P(Escape, UnprivilegedCgroupMoveFailsAndStaysCaptured) {
  // A cgroup outside the pod, as a target (created and removed here).
  const std::string other = cgroup2_mount() + "/mcesc-" + pod_->suffix();
  ASSERT_EQ(::mkdir(other.c_str(), 0755), 0) << strerror(errno);
  int handle = detail::register_resource(detail::Resource::cgroup, detail::new_group(), other);
  struct Remove {
    std::string path;
    int handle;
    ~Remove() {
      detail::kill_cgroup_and_remove(path.c_str(), 2000);
      detail::unregister_resource(handle);
    }
  } remove{other, handle};

  ASSERT_NO_FATAL_FAILURE(init_capture());
  const std::string root_procs = cgroup2_mount() + "/cgroup.procs";
  const std::string other_procs = other + "/cgroup.procs";
  const std::string peer = pod_->peer_ipv4();
  const std::string pod_cg = "0::" + pod_->cgroup_relative();
  std::string got = pod_->run_in_pod_capture(
      [&] {
        auto write_self = [](const std::string& procs, bool open_only) -> int {
          int fd = ::open(procs.c_str(), O_WRONLY | O_CLOEXEC);
          if (fd < 0) return errno;
          int e = 0;
          if (!open_only) {
            std::string pid = std::to_string(::getpid());
            if (::write(fd, pid.data(), pid.size()) < 0) e = errno;
          }
          ::close(fd);
          return e;
        };
        std::string out;
        out += std::to_string(write_self(other_procs, false)) + "|";
        // The root cgroup: opening for writing is the whole test (never
        // written, even if it opened).
        out += std::to_string(write_self(root_procs, true)) + "|";
        // From a new user namespace (full capabilities there, none over
        // files owned by the machine's root).
        pid_t child = ::fork();
        if (child == 0) {
          if (::unshare(CLONE_NEWUSER) != 0) _exit(200);
          _exit(write_self(other_procs, false));
        }
        int st = 0;
        ::waitpid(child, &st, 0);
        out += std::to_string(WIFEXITED(st) ? WEXITSTATUS(st) : 255) + "|";
        // Still in the pod's cgroup, and still captured.
        std::string cg;
        std::istringstream in(read_text_file("/proc/self/cgroup"));
        for (std::string line; std::getline(in, line);)
          if (line.rfind("0::", 0) == 0) cg = line;
        out += cg + "|";
        RoundTrip rt = tcp_roundtrip(peer, 8080, "ping");
        out += std::to_string(rt.error) + "|" + rt.peer;
        return out;
      },
      kApp);
  auto parts = split_bar(got);
  ASSERT_EQ(parts.size(), 6u) << got;
  auto denied = [](const std::string& e) { return e == std::to_string(EACCES) || e == std::to_string(EPERM); };
  EXPECT_TRUE(denied(parts[0])) << "move to a sibling cgroup: errno " << parts[0];
  EXPECT_TRUE(denied(parts[1])) << "open root cgroup.procs: errno " << parts[1];
  if (parts[2] != "200") {  // 200: no user namespaces for unprivileged users here
    EXPECT_TRUE(denied(parts[2])) << "move from a user namespace: errno " << parts[2];
  }
  EXPECT_EQ(parts[3], pod_cg);
  EXPECT_EQ(parts[4], "0");
  EXPECT_EQ(parts[5], endpoint(peer, 8080));
  expect_captured_v4(0);
  EXPECT_EQ(read_text_file(other_procs), "");
}

// The ways around both modes that need privileges the application does not
// have: a raw socket (hand-made TCP segments, no connect() at all), SO_MARK
// and IP_TRANSPARENT. Refused with EPERM, also from a new user namespace
// (its capabilities do not reach the pod's network namespace).
TEST_P(Escape, PrivilegedSocketTricksAreRefused) {
  ASSERT_NO_FATAL_FAILURE(init_capture());
  std::string got = pod_->run_in_pod_capture(
      [&] {
        auto attempts = []() {
          std::string out;
          int raw = ::socket(AF_INET, SOCK_RAW, IPPROTO_TCP);
          out += std::to_string(raw < 0 ? errno : 0) + "|";
          if (raw >= 0) ::close(raw);
          int fd = ::socket(AF_INET, SOCK_STREAM, 0);
          int mark = 1337, one = 1;
          out += std::to_string(::setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) ? errno : 0) + "|";
          out += std::to_string(::setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof one) ? errno : 0);
          ::close(fd);
          return out;
        };
        std::string out = attempts() + "|";
        int p[2];
        if (::pipe(p) != 0) return out + "pipe";
        pid_t child = ::fork();
        if (child == 0) {
          ::close(p[0]);
          std::string r = ::unshare(CLONE_NEWUSER) == 0 ? attempts() : "nouserns";
          (void)!::write(p[1], r.data(), r.size());
          _exit(0);
        }
        ::close(p[1]);
        out += read_until_eof(p[0], Millis(5000));
        ::close(p[0]);
        ::waitpid(child, nullptr, 0);
        return out;
      },
      kApp);
  auto parts = split_bar(got);
  ASSERT_GE(parts.size(), 4u) << got;
  const std::string eperm = std::to_string(EPERM);
  EXPECT_EQ(parts[0], eperm) << "raw socket";
  EXPECT_EQ(parts[1], eperm) << "SO_MARK";
  EXPECT_EQ(parts[2], eperm) << "IP_TRANSPARENT";
  if (parts[3] != "nouserns") {
    ASSERT_EQ(parts.size(), 6u) << got;
    EXPECT_EQ(parts[3], eperm) << "raw socket from a user namespace";
    EXPECT_EQ(parts[4], eperm) << "SO_MARK from a user namespace";
    EXPECT_EQ(parts[5], eperm) << "IP_TRANSPARENT from a user namespace";
  }
}

// A socket created in the pod before capture was applied, connected after:
// captured in both modes (cgroup hooks run for the socket's cgroup at
// connect time; nat rules apply to the first packet).
TEST_P(Escape, SocketCreatedBeforeCaptureIsCaptured) {
  int go[2];
  ASSERT_EQ(::pipe2(go, O_CLOEXEC), 0);
  UniqueFd go_read(go[0]), go_write(go[1]);
  const std::string peer = pod_->peer_ipv4(), peer6 = pod_->peer_ipv6();
  const int go_fd = go_read.get();
  auto [pid, from_child] = pod_->start_in_pod_with_pipe(
      [=](int out) {
        // One IPv4 and one IPv6 socket, created now, connected later.
        socklen_t l4 = 0, l6 = 0;
        sockaddr_storage s4 = make_sockaddr(peer, 8080, &l4), s6 = make_sockaddr(peer6, 8080, &l6);
        int fd4 = ::socket(AF_INET, SOCK_STREAM, 0), fd6 = ::socket(AF_INET6, SOCK_STREAM, 0);
        if (fd4 < 0 || fd6 < 0) return 1;
        if (::write(out, "R", 1) != 1) return 2;
        if (read_byte(go_fd, Millis(30000)) != 'G') return 3;
        std::string res;
        for (auto [fd, sa, len] : {std::tuple{fd4, s4, l4}, std::tuple{fd6, s6, l6}}) {
          if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), len) != 0) {
            res += "connect " + std::to_string(errno) + "|";
            continue;
          }
          send_all(fd, "ping");
          res += recv_exact(fd, 4) + "@" + getpeername_str(fd) + "|";
          ::close(fd);
        }
        return ::write(out, res.data(), res.size()) == static_cast<ssize_t>(res.size()) ? 0 : 4;
      },
      kApp);
  ASSERT_EQ(read_byte(from_child.get(), Millis(10000)), 'R');
  ASSERT_NO_FATAL_FAILURE(init_capture());
  ASSERT_EQ(::write(go_write.get(), "G", 1), 1);
  std::string got = read_until_eof(from_child.get(), Millis(20000));
  EXPECT_EQ(pod_->wait_exit(pid, Millis(5000)), std::optional<int>(0)) << got;
  auto parts = split_bar(got);
  ASSERT_EQ(parts.size(), 2u) << got;
  EXPECT_EQ(parts[0], "ping@" + endpoint(peer, 8080));
  EXPECT_EQ(parts[1], "ping@" + endpoint(peer6, 8080));
  expect_captured_v4(0);
  EXPECT_ACCEPTS(out6_->accepted(), 1);
}

// A connection already established when capture is applied, used again
// afterwards, and a new connection from the same process. `conntrack_first`
// puts a harmless foreign nat rule into the pod's netns beforehand, so that
// conntrack is already tracking the old connection when capture comes.
// Returns "<old connection result>|<new connection reply@peer>".
std::vector<std::string> established_then_capture(TestPod& pod, bool conntrack_first,
                                                  const std::function<void()>& init) {
  if (conntrack_first) {
    // A conntrack match makes the netns track connections (a nat rule
    // alone does not: only NAT targets and conntrack matches turn it on).
    auto r = run_command({"nsenter", "--net=" + pod.pod_netns_path(), "iptables", "-A", "OUTPUT", "-p", "udp",
                          "--dport", "9", "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"});
    EXPECT_TRUE(r.ok()) << r.output;
  }
  int go[2];
  EXPECT_EQ(::pipe2(go, O_CLOEXEC), 0);
  UniqueFd go_read(go[0]), go_write(go[1]);
  const std::string peer = pod.peer_ipv4();
  const int go_fd = go_read.get();
  auto [pid, from_child] = pod.start_in_pod_with_pipe(
      [=](int out) {
        Connection c = connect_tcp(peer, 8080);
        if (!c.ok()) return 1;
        if (!send_all(c.fd.get(), "one") || recv_exact(c.fd.get(), 3) != "one") return 2;
        if (::write(out, "R", 1) != 1) return 3;
        if (read_byte(go_fd, Millis(30000)) != 'G') return 4;
        std::string res;
        if (!send_all(c.fd.get(), "two")) {
          res += "send " + std::to_string(errno) + "|";
        } else {
          errno = 0;
          std::string r = recv_exact(c.fd.get(), 3, Millis(3000));
          res += (r.size() == 3 ? r : "recv " + std::to_string(errno)) + "|";
        }
        RoundTrip rt = tcp_roundtrip(peer, 8080, "new");
        res += rt.reply + "@" + rt.peer;
        return ::write(out, res.data(), res.size()) == static_cast<ssize_t>(res.size()) ? 0 : 5;
      },
      kApp);
  if (read_byte(from_child.get(), Millis(10000)) != 'R') {
    ADD_FAILURE() << "the application did not connect";
    return {};
  }
  init();
  EXPECT_EQ(::write(go_write.get(), "G", 1), 1);
  std::string got = read_until_eof(from_child.get(), Millis(20000));
  EXPECT_EQ(pod.wait_exit(pid, Millis(5000)), std::optional<int>(0)) << got;
  return split_bar(got);
}

// eBPF: an existing connection is never touched (the hooks act at
// connect()). iptables: when conntrack was not tracking in the pod's netns
// before (no NAT target or conntrack match yet: the usual case), conntrack
// picks the connection up mid-stream as a NEW flow, the nat OUTPUT rules
// REDIRECT its next packet to 15001, and the connection is reset
// (ECONNRESET). Neither reaches the
// peer uncaptured; iptables mode breaks live connections of a running pod.
TEST_P(Escape, ConnectionEstablishedBeforeCapture) {
  auto parts = established_then_capture(*pod_, false, [&] { init_capture(); });
  ASSERT_EQ(parts.size(), 2u);
  if (ebpf()) {
    EXPECT_EQ(parts[0], "two");  // the old connection, still direct
  } else {
    EXPECT_EQ(parts[0], "recv " + std::to_string(ECONNRESET));
  }
  EXPECT_EQ(parts[1], "new@" + endpoint(pod_->peer_ipv4(), 8080));  // a new one, captured
  EXPECT_EQ(peer4_->accepted(), 1u);                                  // only the old one reached the peer
  EXPECT_ACCEPTS(out4_->accepted(), 1);
  EXPECT_EQ(out4_->records().at(0).original_dst.address, endpoint(pod_->peer_ipv4(), 8080));
}

// The same with conntrack already tracking the old connection: it keeps
// its (empty) NAT binding and stays direct in both modes.
TEST_P(Escape, ConnectionEstablishedBeforeCaptureWithConntrackOn) {
  auto parts = established_then_capture(*pod_, true, [&] { init_capture(); });
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_EQ(parts[0], "two");
  EXPECT_EQ(parts[1], "new@" + endpoint(pod_->peer_ipv4(), 8080));
  EXPECT_EQ(peer4_->accepted(), 1u);
  EXPECT_ACCEPTS(out4_->accepted(), 1);
}

// One socket connected, disconnected with connect(AF_UNSPEC) and connected
// again: every connect() is decided anew, so the second one is captured too.
// A third connect to the pod's own address (not captured, O3) lands on the
// application's own server in both modes; what getpeername() reports for it
// differs (see the TODO).
TEST_P(Escape, ReconnectAfterDisconnectIsCapturedAgain) {
  ASSERT_NO_FATAL_FAILURE(init_capture());
  RecordingListener app(Placement::pod_process(*pod_), "0.0.0.0", 8081);
  const std::string peer = pod_->peer_ipv4(), own = pod_->pod_ipv4();
  std::string got = pod_->run_in_pod_capture(
      [&] {
        int fd = ::socket(AF_INET, SOCK_STREAM, 0);
        std::string out;
        const std::vector<std::pair<std::string, uint16_t>> targets = {{peer, 8080}, {peer, 8080}, {own, 8081}};
        for (const auto& [ip, port] : targets) {
          socklen_t len = 0;
          sockaddr_storage sa = make_sockaddr(ip, port, &len);
          if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), len) != 0) {
            out += "connect " + std::to_string(errno) + "|";
          } else {
            send_all(fd, "ping");
            out += recv_exact(fd, 4) + "@" + getpeername_str(fd) + "|";
          }
          sockaddr unspec{};
          unspec.sa_family = AF_UNSPEC;
          ::connect(fd, &unspec, sizeof unspec);
        }
        ::close(fd);
        return out;
      },
      kApp);
  auto parts = split_bar(got);
  ASSERT_GE(parts.size(), 3u) << got;
  EXPECT_EQ(parts[0], "ping@" + endpoint(peer, 8080));
  EXPECT_EQ(parts[1], "ping@" + endpoint(peer, 8080));
  EXPECT_ACCEPTS(out4_->accepted(), 2);
  for (const auto& rec : out4_->records()) EXPECT_EQ(rec.original_dst.address, endpoint(peer, 8080));
  EXPECT_ACCEPTS(app.accepted(), 1);
  // Both modes: the uncaptured reconnect reports its own peer (eBPF drops
  // the socket's earlier record when a connect is not captured).
  EXPECT_EQ(parts[2], "ping@" + endpoint(own, 8081));
  expect_nothing_reached_peer();
}

// Multipath TCP (IPPROTO_MPTCP, not in the issue's list): the MPTCP socket
// opens its first subflow as a kernel TCP socket in the same cgroup, and its
// packets are TCP for netfilter.
TEST_P(Escape, MultipathTcpIsCaptured) {
  ASSERT_NO_FATAL_FAILURE(init_capture());
  const std::string peer = pod_->peer_ipv4();
  std::string got = pod_->run_in_pod_capture(
      [&] {
        int fd = ::socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP);
        if (fd < 0) return "nomptcp " + std::to_string(errno);
        socklen_t len = 0;
        sockaddr_storage sa = make_sockaddr(peer, 8080, &len);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), len) != 0) return "connect " + std::to_string(errno);
        send_all(fd, "mptcp");
        std::string r = recv_exact(fd, 5) + "@" + getpeername_str(fd);
        ::close(fd);
        return r;
      },
      kApp);
  if (got.rfind("nomptcp", 0) == 0) GTEST_SKIP() << "no MPTCP in this kernel: " << got;
  // Captured in both modes: the proxy gets it with the right original
  // destination, the peer sees nothing directly.
  expect_captured_v4(0);
  if (ebpf()) {
    // Known difference (docs/known-differences.md): not an escape; the
    // application's getpeername() on an MPTCP socket returns the proxy's
    // address (127.0.0.1:15001), not the one it dialed. connect4 runs on
    // the first subflow (a kernel TCP socket) and records the original
    // destination there; cgroup/getpeername4 runs on the MPTCP socket,
    // which has no record.
    EXPECT_EQ(got, "mptcp@127.0.0.1:15001");
  } else {
    EXPECT_EQ(got, "mptcp@" + endpoint(peer, 8080));
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, Escape, ::testing::Values("ebpf", "iptables"), mode_name);

}  // namespace
}  // namespace meshcap::test
