#include "workload.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <unordered_map>

namespace meshcap::bench {

namespace {

uint64_t now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

std::string errno_text(const char* step, int err) { return std::string(step) + ": " + std::strerror(err); }

bool make_addr(const std::string& ip, uint16_t port, sockaddr_in& sa) {
  std::memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  return ::inet_pton(AF_INET, ip.c_str(), &sa.sin_addr) == 1;
}

void set_int(int fd, int level, int opt, int v) { ::setsockopt(fd, level, opt, &v, sizeof v); }

void set_timeouts(int fd, int ms) {
  timeval tv{ms / 1000, (ms % 1000) * 1000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

// Blocking send/recv of exactly n bytes (the socket's timeouts bound them).
bool send_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool recv_all(int fd, char* p, size_t n) {
  while (n > 0) {
    const ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      if (r == 0) errno = ECONNRESET;
      return false;
    }
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// CPU accounting around the sampling phase.
struct CpuSnapshot {
  uint64_t self_ns = 0;
  uint64_t others_ticks = 0;
  uint64_t cpus_busy_ticks = 0;
};

uint64_t rusage_ns() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  auto tv = [](const timeval& t) { return static_cast<uint64_t>(t.tv_sec) * 1000000000ull + t.tv_usec * 1000ull; };
  return tv(ru.ru_utime) + tv(ru.ru_stime);
}

// utime+stime of a process (and its threads), in clock ticks.
uint64_t proc_ticks(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string s;
  std::getline(in, s);
  const auto rp = s.rfind(')');
  if (rp == std::string::npos) return 0;
  std::istringstream rest(s.substr(rp + 2));
  std::string field;
  uint64_t utime = 0, stime = 0;
  // After "pid (comm) ", field 3 is state; utime and stime are fields 14, 15.
  for (int i = 3; i <= 15 && (rest >> field); i++) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return utime + stime;
}

// Non-idle ticks of the given CPUs from /proc/stat (idle and iowait excluded).
uint64_t cpus_busy_ticks(const std::vector<int>& cpus) {
  std::ifstream in("/proc/stat");
  std::string line;
  uint64_t busy = 0;
  while (std::getline(in, line)) {
    if (line.rfind("cpu", 0) != 0 || line.size() < 4 || line[3] == ' ') continue;
    std::istringstream ss(line);
    std::string name;
    ss >> name;
    const int cpu = std::atoi(name.c_str() + 3);
    bool wanted = false;
    for (int c : cpus) wanted |= c == cpu;
    if (!wanted) continue;
    uint64_t v[10] = {};
    for (auto& x : v) ss >> x;
    // user nice system idle iowait irq softirq steal guest guest_nice; guest
    // time is already counted in user.
    busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
  }
  return busy;
}

CpuSnapshot cpu_snapshot(const ClientSpec& spec) {
  CpuSnapshot s;
  s.self_ns = rusage_ns();
  for (pid_t p : spec.cpu_pids) s.others_ticks += proc_ticks(p);
  s.cpus_busy_ticks = cpus_busy_ticks(spec.cpus);
  return s;
}

void charge_cpu(const ClientSpec& spec, const CpuSnapshot& before, ClientResult& r) {
  const CpuSnapshot after = cpu_snapshot(spec);
  const uint64_t tick_ns = 1000000000ull / static_cast<uint64_t>(::sysconf(_SC_CLK_TCK));
  r.client_cpu_ns = after.self_ns - before.self_ns;
  r.others_cpu_ns = (after.others_ticks - before.others_ticks) * tick_ns;
  r.cpus_busy_ns = (after.cpus_busy_ticks - before.cpus_busy_ticks) * tick_ns;
}

void note_error(ClientResult& r, const std::string& what) {
  r.errors++;
  if (r.first_error.empty()) r.first_error = what;
}

// Too many failures: the variant is broken, stop instead of spinning.
bool give_up(const ClientResult& r, uint64_t attempts) { return r.errors > 50 && r.errors * 2 > attempts; }

// ---- workloads ----

ClientResult run_connect(const ClientSpec& spec, const sockaddr_in& sa) {
  ClientResult r;
  std::string msg(spec.message, 'q');
  std::string buf(spec.message, '\0');
  r.samples_ns.reserve(spec.count);
  const uint64_t deadline = now_ns() + static_cast<uint64_t>(spec.seconds * 1e9);
  const linger lg{1, 0};
  sockaddr_in src{};
  const bool have_src = !spec.bind_ip.empty() && make_addr(spec.bind_ip, 0, src);
  CpuSnapshot before;
  uint64_t t_start = 0;
  const uint64_t total = spec.warmup + spec.count;
  for (uint64_t i = 0; i < total && now_ns() < deadline && !give_up(r, i); i++) {
    if (i == spec.warmup) {
      before = cpu_snapshot(spec);
      t_start = now_ns();
    }
    const uint64_t t0 = now_ns();
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      note_error(r, errno_text("socket", errno));
      continue;
    }
    // SO_LINGER 0: close() resets, so a long loop leaves no TIME_WAIT behind.
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1);
    set_timeouts(fd, spec.io_timeout_ms);
    bool ok = true;
    const char* step = "bind";
    if (have_src) {
      // What a redirect keeps: the pod's own source address (port at connect).
      set_int(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1);
      ok = ::bind(fd, reinterpret_cast<const sockaddr*>(&src), sizeof src) == 0;
    }
    if (ok) {
      ok = ::connect(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof sa) == 0;
      step = "connect";
    }
    if (ok) {
      ok = send_all(fd, msg.data(), msg.size());
      step = "send";
    }
    if (ok) {
      ok = recv_all(fd, buf.data(), buf.size());
      step = "recv";
    }
    const int err = errno;
    ::close(fd);
    const uint64_t t1 = now_ns();
    if (!ok) {
      note_error(r, errno_text(step, err));
    } else if (i >= spec.warmup) {
      r.samples_ns.push_back(static_cast<uint32_t>(std::min<uint64_t>(t1 - t0, UINT32_MAX)));
    }
  }
  if (t_start != 0) {
    r.elapsed_ns = now_ns() - t_start;
    charge_cpu(spec, before, r);
  }
  return r;
}

int connect_persistent(const sockaddr_in& sa, int timeout_ms, std::string& err) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    err = errno_text("socket", errno);
    return -1;
  }
  set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  set_timeouts(fd, timeout_ms);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof sa) != 0) {
    err = errno_text("connect", errno);
    ::close(fd);
    return -1;
  }
  return fd;
}

// A workload's persistent connection; -1 when it fails, the error noted in `r`.
int connect_noted(const ClientSpec& spec, const sockaddr_in& sa, ClientResult& r) {
  std::string err;
  const int fd = connect_persistent(sa, spec.io_timeout_ms, err);
  if (fd < 0) note_error(r, err);
  return fd;
}

ClientResult run_rr_single(const ClientSpec& spec, const sockaddr_in& sa) {
  ClientResult r;
  const int fd = connect_noted(spec, sa, r);
  if (fd < 0) return r;
  std::string msg(spec.message, 'r');
  std::string buf(spec.message, '\0');
  r.samples_ns.reserve(spec.count);
  const uint64_t deadline = now_ns() + static_cast<uint64_t>(spec.seconds * 1e9);
  CpuSnapshot before;
  uint64_t t_start = 0;
  const uint64_t total = spec.warmup + spec.count;
  for (uint64_t i = 0; i < total && now_ns() < deadline; i++) {
    if (i == spec.warmup) {
      before = cpu_snapshot(spec);
      t_start = now_ns();
    }
    const uint64_t t0 = now_ns();
    if (!send_all(fd, msg.data(), msg.size()) || !recv_all(fd, buf.data(), buf.size())) {
      note_error(r, errno_text("request", errno));
      break;  // the connection is unusable
    }
    const uint64_t t1 = now_ns();
    if (i >= spec.warmup) r.samples_ns.push_back(static_cast<uint32_t>(std::min<uint64_t>(t1 - t0, UINT32_MAX)));
  }
  if (t_start != 0) {
    r.elapsed_ns = now_ns() - t_start;
    charge_cpu(spec, before, r);
  }
  ::close(fd);
  return r;
}

// Several persistent connections, one request in flight on each (closed
// loop), multiplexed with epoll in this one process.
ClientResult run_rr_multi(const ClientSpec& spec, const sockaddr_in& sa) {
  ClientResult r;
  struct Conn {
    int fd = -1;
    uint64_t sent_at = 0;
    size_t got = 0;
  };
  std::vector<Conn> conns(static_cast<size_t>(spec.connections));
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  auto close_all = [&] {
    for (auto& c : conns)
      if (c.fd >= 0) ::close(c.fd);
    ::close(ep);
  };
  for (size_t i = 0; i < conns.size(); i++) {
    conns[i].fd = connect_noted(spec, sa, r);
    if (conns[i].fd < 0) {
      close_all();
      return r;
    }
    set_nonblocking(conns[i].fd);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = i;
    ::epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
  }
  std::string msg(spec.message, 'm');
  std::vector<char> buf(spec.message);
  auto send_request = [&](Conn& c) {
    c.got = 0;
    c.sent_at = now_ns();
    // A request of at most a few KiB fits an idle socket's send buffer.
    const ssize_t w = ::send(c.fd, msg.data(), msg.size(), MSG_NOSIGNAL);
    return w == static_cast<ssize_t>(msg.size());
  };
  const uint64_t warm = spec.warmup * conns.size();
  const uint64_t total = warm + spec.count;
  r.samples_ns.reserve(spec.count);
  const uint64_t deadline = now_ns() + static_cast<uint64_t>(spec.seconds * 1e9);
  uint64_t done = 0, in_flight = 0;
  CpuSnapshot before;
  uint64_t t_start = 0;
  bool failed = false;
  for (auto& c : conns) {
    if (!send_request(c)) {
      note_error(r, errno_text("send", errno));
      failed = true;
      break;
    }
    in_flight++;
  }
  epoll_event events[64];
  while (!failed && in_flight > 0) {
    const int n = ::epoll_wait(ep, events, 64, spec.io_timeout_ms);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      note_error(r, n == 0 ? "stall: no response within the I/O timeout" : errno_text("epoll_wait", errno));
      break;
    }
    for (int e = 0; e < n && !failed; e++) {
      Conn& c = conns[events[e].data.u64];
      const ssize_t rd = ::recv(c.fd, buf.data(), spec.message - c.got, 0);
      if (rd < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (rd <= 0) {
        note_error(r, rd == 0 ? "recv: connection closed" : errno_text("recv", errno));
        failed = true;
        break;
      }
      c.got += static_cast<size_t>(rd);
      if (c.got < spec.message) continue;
      const uint64_t t1 = now_ns();
      in_flight--;
      done++;
      if (done > warm) r.samples_ns.push_back(static_cast<uint32_t>(std::min<uint64_t>(t1 - c.sent_at, UINT32_MAX)));
      if (done == warm) {
        before = cpu_snapshot(spec);
        t_start = now_ns();
      }
      // Keep every connection busy until the last request is issued.
      if (done + in_flight < total && t1 < deadline) {
        if (!send_request(c)) {
          note_error(r, errno_text("send", errno));
          failed = true;
          break;
        }
        in_flight++;
      }
    }
  }
  if (t_start != 0) {
    r.elapsed_ns = now_ns() - t_start;
    charge_cpu(spec, before, r);
  }
  close_all();
  return r;
}

ClientResult run_throughput(const ClientSpec& spec, const sockaddr_in& sa) {
  ClientResult r;
  const int fd = connect_noted(spec, sa, r);
  if (fd < 0) return r;
  std::vector<char> chunk(64 * 1024, 't');
  const CpuSnapshot before = cpu_snapshot(spec);
  const uint64_t t0 = now_ns();
  const uint64_t stop = t0 + static_cast<uint64_t>(spec.seconds * 1e9);
  bool ok = true;
  while (now_ns() < stop) {
    const ssize_t w = ::send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      note_error(r, errno_text("send", errno));
      ok = false;
      break;
    }
    r.bytes += static_cast<uint64_t>(w);
  }
  // Delivered means the sink read it all: it closes after our FIN.
  if (ok) {
    ::shutdown(fd, SHUT_WR);
    char sink[256];
    for (;;) {
      const ssize_t rd = ::recv(fd, sink, sizeof sink, 0);
      if (rd < 0 && errno == EINTR) continue;
      if (rd < 0) note_error(r, errno_text("waiting for the sink to finish", errno));
      if (rd <= 0) break;
    }
  }
  r.elapsed_ns = now_ns() - t0;
  charge_cpu(spec, before, r);
  ::close(fd);
  if (r.errors == 0 && r.elapsed_ns > 0) r.samples_ns.push_back(static_cast<uint32_t>(std::min<uint64_t>(r.elapsed_ns, UINT32_MAX)));
  return r;
}

}  // namespace

std::string probe(const std::string& ip, uint16_t port, int timeout_ms) {
  sockaddr_in sa{};
  if (!make_addr(ip, port, sa)) return "error bad address";
  std::string err;
  const int fd = connect_persistent(sa, timeout_ms, err);
  if (fd < 0) return "error " + err;
  sockaddr_in local{};
  socklen_t len = sizeof local;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len);
  char lip[INET_ADDRSTRLEN] = "?";
  ::inet_ntop(AF_INET, &local.sin_addr, lip, sizeof lip);
  std::string reply;
  if (send_all(fd, kWhoRequest, std::strlen(kWhoRequest))) {
    char buf[256];
    for (;;) {
      const ssize_t r = ::recv(fd, buf, sizeof buf, 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      reply.append(buf, static_cast<size_t>(r));
      if (reply.size() > 1024) break;
    }
  }
  ::close(fd);
  while (!reply.empty() && (reply.back() == '\n' || reply.back() == '\r')) reply.pop_back();
  if (reply.empty()) return "error no answer";
  return reply + " " + lip + ":" + std::to_string(ntohs(local.sin_port));
}

bool pin_to_cpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return ::sched_setaffinity(0, sizeof set, &set) == 0;
}

ClientResult run_client(const ClientSpec& spec) {
  sockaddr_in sa{};
  if (!make_addr(spec.ip, spec.port, sa)) {
    ClientResult r;
    note_error(r, "bad IPv4 address " + spec.ip);
    return r;
  }
  switch (spec.workload) {
    case Workload::connect:
      return run_connect(spec, sa);
    case Workload::rr:
      return spec.connections <= 1 ? run_rr_single(spec, sa) : run_rr_multi(spec, sa);
    case Workload::throughput:
      return run_throughput(spec, sa);
  }
  return {};
}

// ---- server ----

int serve(const std::vector<ListenSpec>& listeners, int ready_fd, double max_seconds, const std::string& tag) {
  auto report = [ready_fd](const std::string& s) {
    const std::string line = s + "\n";
    [[maybe_unused]] ssize_t w = ::write(ready_fd, line.data(), line.size());
  };
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  struct Conn {
    ServeMode mode = ServeMode::echo;
    bool listener = false;
    std::string pending;  // echo bytes not yet written
    bool fresh = true;    // nothing read yet: may be the probe
  };
  std::unordered_map<int, Conn> fds;
  for (const auto& l : listeners) {
    sockaddr_in sa{};
    if (!make_addr(l.ip, l.port, sa)) {
      report("error bad address " + l.ip);
      return 1;
    }
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1);
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(fd, 4096) != 0) {
      report("error " + errno_text(("listen " + l.ip + ":" + std::to_string(l.port)).c_str(), errno));
      return 1;
    }
    fds[fd] = Conn{l.mode, true, {}};
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  }
  report("ready");
  ::close(ready_fd);

  auto drop = [&](int fd) {
    ::epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
    ::close(fd);
    fds.erase(fd);
  };
  auto watch_out = [&](int fd, bool out) {
    epoll_event ev{};
    ev.events = EPOLLIN | (out ? EPOLLOUT : 0u);
    ev.data.fd = fd;
    ::epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
  };
  std::vector<char> buf(256 * 1024);
  const uint64_t deadline = now_ns() + static_cast<uint64_t>(max_seconds * 1e9);
  epoll_event events[128];
  while (now_ns() < deadline) {
    const int n = ::epoll_wait(ep, events, 128, 500);
    for (int e = 0; e < n; e++) {
      const int fd = events[e].data.fd;
      auto it = fds.find(fd);
      if (it == fds.end()) continue;
      if (it->second.listener) {
        const ServeMode mode = it->second.mode;
        for (;;) {
          const int c = ::accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0) break;
          set_int(c, IPPROTO_TCP, TCP_NODELAY, 1);
          fds[c] = Conn{mode, false, {}};
          epoll_event ev{};
          ev.events = EPOLLIN;
          ev.data.fd = c;
          ::epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
        }
        continue;
      }
      Conn& conn = it->second;
      bool closed = false;
      if (events[e].events & EPOLLOUT) {
        while (!conn.pending.empty()) {
          const ssize_t w = ::send(fd, conn.pending.data(), conn.pending.size(), MSG_NOSIGNAL);
          if (w <= 0) break;
          conn.pending.erase(0, static_cast<size_t>(w));
        }
        if (conn.pending.empty()) watch_out(fd, false);
      }
      if (events[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        // Sinks drain everything available; echo reads once per wakeup.
        for (int reads = 0; reads < (conn.mode == ServeMode::sink ? 64 : 1); reads++) {
          const ssize_t rd = ::recv(fd, buf.data(), buf.size(), 0);
          if (rd < 0 && (errno == EAGAIN || errno == EINTR)) break;
          if (rd <= 0) {
            closed = true;
            break;
          }
          if (conn.mode == ServeMode::sink) continue;
          if (conn.fresh && static_cast<size_t>(rd) == std::strlen(kWhoRequest) &&
              std::memcmp(buf.data(), kWhoRequest, static_cast<size_t>(rd)) == 0) {
            sockaddr_in peer{};
            socklen_t len = sizeof peer;
            ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len);
            char ip[INET_ADDRSTRLEN] = "?";
            ::inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof ip);
            const std::string answer = tag + " " + ip + ":" + std::to_string(ntohs(peer.sin_port)) + "\n";
            [[maybe_unused]] ssize_t w = ::send(fd, answer.data(), answer.size(), MSG_NOSIGNAL);
            closed = true;
            break;
          }
          conn.fresh = false;
          size_t off = 0;
          if (conn.pending.empty()) {
            const ssize_t w = ::send(fd, buf.data(), static_cast<size_t>(rd), MSG_NOSIGNAL);
            off = w > 0 ? static_cast<size_t>(w) : 0;
          }
          if (off < static_cast<size_t>(rd)) {
            conn.pending.append(buf.data() + off, static_cast<size_t>(rd) - off);
            if (conn.pending.size() > (16u << 20)) closed = true;  // a client that never reads
            watch_out(fd, true);
          }
        }
      }
      if (closed) drop(fd);
    }
  }
  return 0;
}

// ---- result stream ----

namespace {

struct WireHeader {
  uint64_t magic = 0x6d63626e63687231ull;  // "mcbnchr1"
  uint64_t samples = 0;
  uint64_t errors = 0;
  uint64_t elapsed_ns = 0;
  uint64_t bytes = 0;
  uint64_t client_cpu_ns = 0;
  uint64_t others_cpu_ns = 0;
  uint64_t cpus_busy_ns = 0;
  uint64_t error_len = 0;
};

bool write_full(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    c += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool read_full(int fd, void* p, size_t n, uint64_t deadline) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    const int64_t left = static_cast<int64_t>(deadline) - static_cast<int64_t>(now_ns());
    if (left <= 0) return false;
    pollfd pfd{fd, POLLIN, 0};
    const int pr = ::poll(&pfd, 1, static_cast<int>(left / 1000000 + 1));
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) return false;
    const ssize_t r = ::read(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

}  // namespace

bool write_result(int fd, const ClientResult& r) {
  WireHeader h;
  h.samples = r.samples_ns.size();
  h.errors = r.errors;
  h.elapsed_ns = r.elapsed_ns;
  h.bytes = r.bytes;
  h.client_cpu_ns = r.client_cpu_ns;
  h.others_cpu_ns = r.others_cpu_ns;
  h.cpus_busy_ns = r.cpus_busy_ns;
  h.error_len = r.first_error.size();
  return write_full(fd, &h, sizeof h) && write_full(fd, r.samples_ns.data(), r.samples_ns.size() * sizeof(uint32_t)) &&
         write_full(fd, r.first_error.data(), r.first_error.size());
}

bool read_result(int fd, ClientResult& r, int timeout_ms) {
  const uint64_t deadline = now_ns() + static_cast<uint64_t>(timeout_ms) * 1000000ull;
  WireHeader h;
  const uint64_t magic = h.magic;
  if (!read_full(fd, &h, sizeof h, deadline) || h.magic != magic || h.samples > (1ull << 28) || h.error_len > 4096)
    return false;
  r.samples_ns.resize(h.samples);
  r.first_error.resize(h.error_len);
  r.errors = h.errors;
  r.elapsed_ns = h.elapsed_ns;
  r.bytes = h.bytes;
  r.client_cpu_ns = h.client_cpu_ns;
  r.others_cpu_ns = h.others_cpu_ns;
  r.cpus_busy_ns = h.cpus_busy_ns;
  return read_full(fd, r.samples_ns.data(), h.samples * sizeof(uint32_t), deadline) &&
         read_full(fd, r.first_error.data(), h.error_len, deadline);
}

}  // namespace meshcap::bench
