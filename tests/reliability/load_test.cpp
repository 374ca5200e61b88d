// Load: kConnections captured connections, kConcurrent of them at a time,
// from an application in the pod through a real haproxy (UID 1337) to an
// echo server in the peer, in eBPF and in iptables mode. No connection may
// fail; the eBPF counters must add up to the connections made and the
// connection table must go back to empty; the iptables rule counters must
// add up the same way. Labels: long and kernel (CI runs it).
//
// The application is one child process in the pod (UID/GID 1000) with
// kThreads threads, each running an epoll loop over non-blocking sockets.
// First it opens kConcurrent connections and holds them all open after
// their echo (the test checks that kConcurrent are established at the peer
// at once, and that the eBPF connection table is empty then: every record
// has moved onto its proxy-side socket),
// then it makes the rest with kConcurrent in flight at all times.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <unordered_map>

#include "reliability_fixture.h"
#include "support/gtest_helpers.h"
#include "support/haproxy.h"

namespace meshcap::test {
namespace {

// The numbers, not reduced. Measured on the 2-vCPU VM (Linux 6.18,
// haproxy 2.6.12, machine shared with other jobs, load average 4-10): the
// 99,000 connections after the held 1,000 took 15.6-34.8 s per mode, one
// test (one mode) 16-40 s, the whole binary (both modes) 35-44 s run alone
// and up to ~75 s next to the fuzz test under ctest -j2. Figures per run:
// docs/reliability.md; the test prints a "[ figures  ]" line.
constexpr int kConnections = 100000;
constexpr int kConcurrent = 1000;
constexpr int kThreads = 4;
constexpr int kPayload = 16;
constexpr auto kPerConnectionTimeout = std::chrono::seconds(15);
constexpr auto kRunDeadline = std::chrono::seconds(150);  // per mode, whole load phase

using Clock = std::chrono::steady_clock;

/// What the application saw; sent to the parent as one line.
struct LoadResult {
  long ok = 0;
  long connect_failed = 0;  // SO_ERROR / connect() errors
  long io_failed = 0;       // send/recv errors, early EOF
  long wrong_echo = 0;
  long wrong_peer = 0;      // getpeername() != the dialed address
  long timed_out = 0;
  long not_started = 0;     // the run deadline came first
  int first_errno = 0;
  long held = 0;            // phase 1: connections open at once
  double phase2_seconds = 0;
  long total() const { return ok + connect_failed + io_failed + wrong_echo + wrong_peer + timed_out + not_started; }
  long failed() const { return total() - ok; }

  std::string line() const {
    char b[512];
    std::snprintf(b, sizeof b, "ok=%ld connect_failed=%ld io_failed=%ld wrong_echo=%ld wrong_peer=%ld "
                  "timed_out=%ld not_started=%ld first_errno=%d held=%ld phase2_s=%.3f",
                  ok, connect_failed, io_failed, wrong_echo, wrong_peer, timed_out, not_started, first_errno, held,
                  phase2_seconds);
    return b;
  }
  static LoadResult parse(const std::string& s) {
    LoadResult r;
    std::sscanf(s.c_str(), "ok=%ld connect_failed=%ld io_failed=%ld wrong_echo=%ld wrong_peer=%ld "
                "timed_out=%ld not_started=%ld first_errno=%d held=%ld phase2_s=%lf",
                &r.ok, &r.connect_failed, &r.io_failed, &r.wrong_echo, &r.wrong_peer, &r.timed_out, &r.not_started,
                &r.first_errno, &r.held, &r.phase2_seconds);
    return r;
  }
  void add(const LoadResult& o) {
    ok += o.ok;
    connect_failed += o.connect_failed;
    io_failed += o.io_failed;
    wrong_echo += o.wrong_echo;
    wrong_peer += o.wrong_peer;
    timed_out += o.timed_out;
    not_started += o.not_started;
    if (!first_errno) first_errno = o.first_errno;
    held += o.held;
  }
};

/// One thread's epoll loop: makes `quota` connections to dst, at most
/// `window` in flight. With `hold`, finished connections stay open and
/// their fds are appended to *held (closed by the caller).
LoadResult run_connections(const sockaddr_in& dst, const std::string& dst_text, int first_id, int quota, int window,
                           Clock::time_point deadline, std::vector<int>* held) {
  LoadResult res;
  struct Conn {
    int id;
    bool connected = false;
    std::string got;
    Clock::time_point deadline;
  };
  UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
  std::unordered_map<int, Conn> conns;
  int started = 0;
  auto fail = [&](int fd, long LoadResult::*what, int err) {
    res.*what += 1;
    if (!res.first_errno) res.first_errno = err;
    ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, fd, nullptr);
    set_linger_zero(fd);
    ::close(fd);
    conns.erase(fd);
  };
  auto payload_of = [](int id) {
    char b[kPayload + 1];
    std::snprintf(b, sizeof b, "c%015d", id);
    return std::string(b, kPayload);
  };
  auto next_sweep = Clock::now() + std::chrono::seconds(1);
  // Bounded: each iteration either starts, progresses or times out a
  // connection, or waits at most 100 ms; the run deadline ends it.
  while (started < quota || !conns.empty()) {
    const auto now = Clock::now();
    if (now > deadline) break;
    while (started < quota && static_cast<int>(conns.size()) < window) {
      const int id = first_id + started++;
      int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) {
        res.connect_failed++;
        if (!res.first_errno) res.first_errno = errno;
        continue;
      }
      conns[fd] = Conn{id, false, {}, now + kPerConnectionTimeout};
      int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&dst), sizeof dst);
      if (rc != 0 && errno != EINPROGRESS) {
        fail(fd, &LoadResult::connect_failed, errno);
        continue;
      }
      epoll_event ev{};
      ev.events = EPOLLOUT;
      ev.data.fd = fd;
      ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &ev);
    }
    epoll_event evs[256];
    int n = ::epoll_wait(ep.get(), evs, 256, 100);
    for (int i = 0; i < n; i++) {
      const int fd = evs[i].data.fd;
      auto it = conns.find(fd);
      if (it == conns.end()) continue;
      Conn& c = it->second;
      if (!c.connected) {
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          fail(fd, &LoadResult::connect_failed, err);
          continue;
        }
        c.connected = true;
        if (getpeername_str(fd) != dst_text) {
          fail(fd, &LoadResult::wrong_peer, 0);
          continue;
        }
        const std::string p = payload_of(c.id);
        if (::send(fd, p.data(), p.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(p.size())) {
          fail(fd, &LoadResult::io_failed, errno);
          continue;
        }
        epoll_event ev{};
        ev.events = EPOLLIN | EPOLLRDHUP;
        ev.data.fd = fd;
        ::epoll_ctl(ep.get(), EPOLL_CTL_MOD, fd, &ev);
        continue;
      }
      char buf[64];
      ssize_t r = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (r <= 0) {
        fail(fd, &LoadResult::io_failed, r < 0 ? errno : ECONNRESET);
        continue;
      }
      c.got.append(buf, static_cast<size_t>(r));
      if (c.got.size() < static_cast<size_t>(kPayload)) continue;
      if (c.got != payload_of(c.id)) {
        fail(fd, &LoadResult::wrong_echo, 0);
        continue;
      }
      res.ok++;
      ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, fd, nullptr);
      conns.erase(fd);
      if (held) {
        held->push_back(fd);
      } else {
        set_linger_zero(fd);  // no TIME_WAIT: 100k connect-per-request otherwise runs out of ports
        ::close(fd);
      }
    }
    if (Clock::now() > next_sweep) {
      next_sweep = Clock::now() + std::chrono::seconds(1);
      std::vector<int> late;
      for (const auto& [fd, c] : conns)
        if (Clock::now() > c.deadline) late.push_back(fd);
      for (int fd : late) fail(fd, &LoadResult::timed_out, ETIMEDOUT);
    }
  }
  for (auto& [fd, c] : conns) {
    (void)c;
    res.timed_out++;
    set_linger_zero(fd);
    ::close(fd);
  }
  res.not_started += quota - started;
  return res;
}

/// The application: phase 1 holds kConcurrent, reports "H <line>\n", waits
/// for 'G' on go_fd, closes them; phase 2 makes the rest; reports "R <line>\n".
int application(const std::string& peer, int out, int go_fd) {
  sockaddr_in dst{};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(9000);
  ::inet_pton(AF_INET, peer.c_str(), &dst.sin_addr);
  const std::string dst_text = peer + ":9000";
  const auto deadline = Clock::now() + kRunDeadline;

  auto run_phase = [&](int first_id, int total, bool hold, std::vector<int>* held) {
    std::vector<LoadResult> parts(kThreads);
    std::vector<std::vector<int>> holds(kThreads);
    std::vector<std::thread> pool;
    for (int t = 0; t < kThreads; t++) {
      const int quota = total / kThreads + (t < total % kThreads ? 1 : 0);
      const int first = first_id + t * (total / kThreads + 1);
      const int window = kConcurrent / kThreads;
      pool.emplace_back([&, t, quota, first, window] {
        parts[t] = run_connections(dst, dst_text, first, quota, hold ? quota : window, deadline,
                                   hold ? &holds[t] : nullptr);
      });
    }
    for (auto& th : pool) th.join();
    LoadResult sum;
    for (int t = 0; t < kThreads; t++) {
      sum.add(parts[t]);
      if (held) held->insert(held->end(), holds[t].begin(), holds[t].end());
    }
    return sum;
  };

  std::vector<int> held;
  LoadResult r1 = run_phase(0, kConcurrent, true, &held);
  r1.held = static_cast<long>(held.size());
  std::string h = "H " + r1.line() + "\n";
  if (::write(out, h.data(), h.size()) < 0) return 2;
  int go = read_byte(go_fd, std::chrono::duration_cast<Millis>(kRunDeadline));
  for (int fd : held) {
    set_linger_zero(fd);
    ::close(fd);
  }
  if (go != 'G') return 3;

  const auto t0 = Clock::now();
  LoadResult r2 = run_phase(kConcurrent, kConnections - kConcurrent, false, nullptr);
  r2.phase2_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  r2.held = r1.held;
  r2.add(r1);
  r2.held = r1.held;
  std::string line = "R " + r2.line() + "\n";
  return ::write(out, line.data(), line.size()) > 0 ? 0 : 4;
}

class Load : public ModeTest {
 protected:
  void SetUp() override {
    ModeTest::SetUp();
    if (IsSkipped()) return;
    MESHCAP_REQUIRE_BINARY("haproxy");
    // 1,000 client sockets in the application, as many at the echo server
    // (a thread of this process), 2,000 in haproxy (it raises its own).
    rlimit rl{};
    ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &rl), 0);
    rl.rlim_cur = rl.rlim_max;
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &rl), 0);
    ASSERT_GE(rl.rlim_cur, rlim_t(3 * kConcurrent)) << "hard RLIMIT_NOFILE too low";

    HaproxyOptions opts;
    opts.inbound_bind = "";
    opts.maxconn = 4000;
    haproxy_ = start_haproxy(*pod_, haproxy_config(*pod_, opts));
    echo_ = std::make_unique<EchoServer>(Placement::peer_thread(*pod_), pod_->peer_ipv4(), 9000);

    std::vector<std::string> flags = {"-i", "*"};
    if (!ebpf()) flags.insert(flags.end(), {"--force-iptables-binary", "nft"});
    auto r = init(flags);
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  void TearDown() override {
    echo_.reset();
    ModeTest::TearDown();
  }

  /// Connections established at the peer's echo server right now.
  long established_at_peer() {
    auto r = in_peer_netns({"ss", "-Htn", "state", "established", "sport", "=", ":9000"});
    return std::count(r.output.begin(), r.output.end(), '\n');
  }
  /// Packets counted by a nat rule printed exactly as `rule`.
  int64_t nat_packets(const std::string& rule) {
    auto r = in_pod_netns({"iptables-nft-save", "-c", "-t", "nat"});
    std::istringstream in(r.output);
    int64_t total = -1;
    for (std::string line; std::getline(in, line);) {
      auto close = line.find("] ");
      if (line.empty() || line[0] != '[' || close == std::string::npos || line.substr(close + 2) != rule) continue;
      total = (total < 0 ? 0 : total) + std::stoll(line.substr(1, line.find(':') - 1));
    }
    return total;
  }

  HaproxyProcess haproxy_;
  std::unique_ptr<EchoServer> echo_;
};

TEST_P(Load, HundredThousandConnectionsThroughHaproxy) {
  int go[2];
  ASSERT_EQ(::pipe2(go, O_CLOEXEC), 0);
  UniqueFd go_read(go[0]), go_write(go[1]);
  const std::string peer = pod_->peer_ipv4();
  const int go_fd = go_read.get();
  const auto t0 = Clock::now();
  auto [pid, from_app] =
      pod_->start_in_pod_with_pipe([=](int out) { return application(peer, out, go_fd); }, Identity::user(1000, 1000));
  go_read.reset();

  // Phase 1: kConcurrent held open at once.
  std::string h;
  for (int c; (c = read_byte(from_app.get(), std::chrono::duration_cast<Millis>(kRunDeadline))) >= 0 && c != '\n';)
    h += static_cast<char>(c);
  ASSERT_EQ(h.rfind("H ", 0), 0u) << "application: " << h;
  LoadResult r1 = LoadResult::parse(h.substr(2));
  EXPECT_EQ(r1.held, kConcurrent) << h;
  const long at_peer = established_at_peer();
  EXPECT_EQ(at_peer, kConcurrent);
  size_t table_at_peak = 0;
  if (ebpf()) {
    // haproxy has asked SO_ORIGINAL_DST of every connection: each record
    // has moved from the connection table onto its socket (dies with it).
    table_at_peak = loader::pinned_connection_entries(name_);
    EXPECT_EQ(table_at_peak, 0u);
  }
  ASSERT_EQ(::write(go_write.get(), "G", 1), 1);

  // Phase 2: the rest.
  std::string rest = read_until_eof(from_app.get(), std::chrono::duration_cast<Millis>(kRunDeadline + std::chrono::seconds(30)));
  auto code = pod_->wait_exit(pid, Millis(10000));
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  ASSERT_EQ(rest.rfind("R ", 0), 0u) << "application: " << rest;
  EXPECT_EQ(code, std::optional<int>(0));
  LoadResult r = LoadResult::parse(rest.substr(2));
  EXPECT_EQ(r.total(), kConnections) << r.line();
  EXPECT_EQ(r.failed(), 0) << r.line();
  EXPECT_EQ(r.ok, kConnections) << r.line();

  // Every connection reached the echo server, through haproxy.
  EXPECT_EQ(settle([&] { return echo_->accepted(); }, kConnections, Millis(30000)), size_t(kConnections));
  EXPECT_TRUE(pod_->is_running(haproxy_.pid)) << read_text_file(haproxy_.log_path);

  std::string figures;
  if (ebpf()) {
    // The connection table goes back to its baseline (0) once all closed.
    size_t left = 0;
    const auto drain0 = Clock::now();
    for (int i = 0; i < 300 && (left = loader::pinned_connection_entries(name_)) != 0; i++) usleep(100 * 1000);
    const double drain = std::chrono::duration<double>(Clock::now() - drain0).count();
    EXPECT_EQ(left, 0u);
    auto c = loader::pinned_counters(name_);
    EXPECT_EQ(c["redirected_outbound"], uint64_t(kConnections));
    EXPECT_EQ(c["orig_dst_answered"], uint64_t(kConnections));
    EXPECT_EQ(c["exempt_uid"], uint64_t(kConnections));  // haproxy's connections onward
    EXPECT_EQ(c["orig_dst_not_found"], 0u);
    EXPECT_EQ(c["map_full"], 0u);
    EXPECT_EQ(c["storage_fail"], 0u);
    EXPECT_EQ(c["bind_fail"], 0u);
    figures = "connection table at peak " + std::to_string(table_at_peak) + ", after " + std::to_string(left) +
              " (drained in " + std::to_string(drain) + " s); redirected_outbound " +
              std::to_string(c["redirected_outbound"]) + ", orig_dst_answered " +
              std::to_string(c["orig_dst_answered"]);
  } else {
    EXPECT_EQ(nat_packets("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"), kConnections);
    EXPECT_EQ(nat_packets("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN"), kConnections);
    std::string ct = netns_sysctl_get(pod_->pod_netns_path(), "net.netfilter.nf_conntrack_count");
    figures = "ISTIO_REDIRECT packets " +
              std::to_string(nat_packets("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001")) +
              ", conntrack entries in the pod netns after the run " + ct;
  }
  // The figures for docs/reliability.md.
  std::printf("[ figures  ] mode=%s connections=%d concurrent=%d threads=%d established_at_peer_peak=%ld "
              "phase2=%.1f s (%.0f conn/s) whole=%.1f s; %s; %s\n",
              mode().c_str(), kConnections, kConcurrent, kThreads, at_peer, r.phase2_seconds,
              (kConnections - kConcurrent) / std::max(r.phase2_seconds, 1e-9), elapsed, r.line().c_str(),
              figures.c_str());
  RecordProperty("phase2_seconds", std::to_string(r.phase2_seconds));
}

INSTANTIATE_TEST_SUITE_P(Modes, Load, ::testing::Values("ebpf", "iptables"), mode_name);

}  // namespace
}  // namespace meshcap::test
