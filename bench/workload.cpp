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

#include <algorithm>
#include <cerrno>
#include <optional>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "support/sockets.h"

namespace meshcap::bench {

uint64_t now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

void set_int(int fd, int level, int opt, int v) { ::setsockopt(fd, level, opt, &v, sizeof v); }

namespace {

std::string errno_text(const char* step, int err) { return std::string(step) + ": " + std::strerror(err); }

// The address of a workload, parsed once (IPv4 or IPv6).
struct Target {
  sockaddr_storage sa{};
  socklen_t len = 0;
  int family() const { return sa.ss_family; }
  const sockaddr* addr() const { return reinterpret_cast<const sockaddr*>(&sa); }
};

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

Target target_of(const ClientSpec& spec) {
  Target t;
  t.sa = test::make_sockaddr(spec.ip, spec.port, &t.len);
  return t;
}

// One timed connection of the connect workload: socket, (bind), connect,
// request, response, close with SO_LINGER 0 (no TIME_WAIT pile-up). The
// failed step's name and errno on failure.
std::optional<std::string> one_connection(const ClientSpec& spec, const Target& dst, const Target* src,
                                          std::string& msg, std::string& buf) {
  const int fd = ::socket(dst.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return errno_text("socket", errno);
  test::set_linger_zero(fd);
  set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  set_timeouts(fd, spec.io_timeout_ms);
  bool ok = true;
  const char* step = "bind";
  if (src) {
    // What a redirect keeps: the pod's own source address (port at connect).
    set_int(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1);
    ok = ::bind(fd, src->addr(), src->len) == 0;
  }
  if (ok && !(ok = ::connect(fd, dst.addr(), dst.len) == 0)) step = "connect";
  if (ok && !(ok = send_all(fd, msg.data(), msg.size()))) step = "send";
  if (ok && !(ok = recv_all(fd, buf.data(), buf.size()))) step = "recv";
  const int err = errno;
  ::close(fd);
  if (!ok) return errno_text(step, err);
  return std::nullopt;
}

// Marks where sampling starts (after the warm-up) and charges the CPU time
// from there.
struct Sampling {
  CpuSnapshot before;
  uint64_t t_start = 0;
  void start(const ClientSpec& spec) {
    before = cpu_snapshot(spec);
    t_start = now_ns();
  }
  void finish(const ClientSpec& spec, ClientResult& r) const {
    if (t_start == 0) return;
    r.elapsed_ns = now_ns() - t_start;
    charge_cpu(spec, before, r);
  }
};

uint32_t clamp_ns(uint64_t ns) { return static_cast<uint32_t>(std::min<uint64_t>(ns, UINT32_MAX)); }

ClientResult run_connect(const ClientSpec& spec) {
  ClientResult r;
  const Target dst = target_of(spec);
  Target src;
  if (!spec.bind_ip.empty()) src.sa = test::make_sockaddr(spec.bind_ip, 0, &src.len);
  std::string msg(spec.message, 'q'), buf(spec.message, '\0');
  r.samples_ns.reserve(spec.count);
  const uint64_t deadline = now_ns() + static_cast<uint64_t>(spec.seconds * 1e9);
  Sampling sampling;
  const uint64_t total = spec.warmup + spec.count;
  for (uint64_t i = 0; i < total && now_ns() < deadline && !give_up(r, i); i++) {
    if (i == spec.warmup) sampling.start(spec);
    const uint64_t t0 = now_ns();
    const auto failed = one_connection(spec, dst, spec.bind_ip.empty() ? nullptr : &src, msg, buf);
    const uint64_t t1 = now_ns();
    if (failed)
      note_error(r, *failed);
    else if (i >= spec.warmup)
      r.samples_ns.push_back(clamp_ns(t1 - t0));
  }
  sampling.finish(spec, r);
  return r;
}

// A workload's persistent connection (setup not timed): blocking, with
// TCP_NODELAY and the I/O timeouts; invalid when it fails, noted in `r`.
test::UniqueFd connect_noted(const ClientSpec& spec, ClientResult& r) {
  test::Connection c = test::connect_tcp(spec.ip, spec.port, test::Millis(spec.io_timeout_ms));
  if (!c.ok()) {
    note_error(r, errno_text("connect", c.error));
    return {};
  }
  set_int(c.fd.get(), IPPROTO_TCP, TCP_NODELAY, 1);
  set_timeouts(c.fd.get(), spec.io_timeout_ms);
  return std::move(c.fd);
}

ClientResult run_rr_single(const ClientSpec& spec) {
  ClientResult r;
  const test::UniqueFd fd = connect_noted(spec, r);
  if (!fd) return r;
  std::string msg(spec.message, 'r'), buf(spec.message, '\0');
  r.samples_ns.reserve(spec.count);
  const uint64_t deadline = now_ns() + static_cast<uint64_t>(spec.seconds * 1e9);
  Sampling sampling;
  const uint64_t total = spec.warmup + spec.count;
  for (uint64_t i = 0; i < total && now_ns() < deadline; i++) {
    if (i == spec.warmup) sampling.start(spec);
    const uint64_t t0 = now_ns();
    if (!send_all(fd.get(), msg.data(), msg.size()) || !recv_all(fd.get(), buf.data(), buf.size())) {
      note_error(r, errno_text("request", errno));
      break;  // the connection is unusable
    }
    if (i >= spec.warmup) r.samples_ns.push_back(clamp_ns(now_ns() - t0));
  }
  sampling.finish(spec, r);
  return r;
}

// Several persistent connections, one request in flight on each (closed
// loop), multiplexed with epoll in this one process.
class MultiRr {
 public:
  MultiRr(const ClientSpec& spec, ClientResult& r) : spec_(spec), r_(r), msg_(spec.message, 'm'), buf_(spec.message) {}

  ClientResult& run() {
    if (!open()) return r_;
    warm_ = spec_.warmup * conns_.size();
    total_ = warm_ + spec_.count;
    deadline_ = now_ns() + static_cast<uint64_t>(spec_.seconds * 1e9);
    r_.samples_ns.reserve(spec_.count);
    bool ok = true;
    for (size_t i = 0; i < conns_.size() && ok; i++) ok = send_request(i);
    while (ok && in_flight_ > 0) ok = step();
    sampling_.finish(spec_, r_);
    return r_;
  }

 private:
  struct Conn {
    test::UniqueFd fd;
    uint64_t sent_at = 0;
    size_t got = 0;
  };

  bool open() {
    ep_ = test::UniqueFd(::epoll_create1(EPOLL_CLOEXEC));
    conns_.resize(static_cast<size_t>(spec_.connections));
    for (size_t i = 0; i < conns_.size(); i++) {
      if (!(conns_[i].fd = connect_noted(spec_, r_))) return false;
      set_nonblocking(conns_[i].fd.get());
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = i;
      ::epoll_ctl(ep_.get(), EPOLL_CTL_ADD, conns_[i].fd.get(), &ev);
    }
    return true;
  }

  // A request of at most a few KiB fits an idle socket's send buffer.
  bool send_request(size_t i) {
    Conn& c = conns_[i];
    c.got = 0;
    c.sent_at = now_ns();
    if (::send(c.fd.get(), msg_.data(), msg_.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(msg_.size())) {
      note_error(r_, errno_text("send", errno));
      return false;
    }
    in_flight_++;
    return true;
  }

  // One wait for responses; false when the run must stop.
  bool step() {
    epoll_event events[64];
    const int n = ::epoll_wait(ep_.get(), events, 64, spec_.io_timeout_ms);
    if (n < 0 && errno == EINTR) return true;
    if (n <= 0) {
      note_error(r_, n == 0 ? "stall: no response within the I/O timeout" : errno_text("epoll_wait", errno));
      return false;
    }
    for (int e = 0; e < n; e++)
      if (!receive(events[e].data.u64)) return false;
    return true;
  }

  bool receive(size_t i) {
    Conn& c = conns_[i];
    const ssize_t rd = ::recv(c.fd.get(), buf_.data(), spec_.message - c.got, 0);
    if (rd < 0 && (errno == EAGAIN || errno == EINTR)) return true;
    if (rd <= 0) {
      note_error(r_, rd == 0 ? "recv: connection closed" : errno_text("recv", errno));
      return false;
    }
    c.got += static_cast<size_t>(rd);
    if (c.got < spec_.message) return true;
    const uint64_t t1 = now_ns();
    in_flight_--;
    done_++;
    if (done_ > warm_) r_.samples_ns.push_back(clamp_ns(t1 - c.sent_at));
    if (done_ == warm_) sampling_.start(spec_);
    // Keep every connection busy until the last request is issued.
    return done_ + in_flight_ >= total_ || t1 >= deadline_ || send_request(i);
  }

  const ClientSpec& spec_;
  ClientResult& r_;
  std::string msg_;
  std::vector<char> buf_;
  std::vector<Conn> conns_;
  test::UniqueFd ep_;
  uint64_t warm_ = 0, total_ = 0, deadline_ = 0, done_ = 0, in_flight_ = 0;
  Sampling sampling_;
};

// Delivered means the sink read it all: it closes after our FIN.
void wait_for_sink(int fd, ClientResult& r) {
  ::shutdown(fd, SHUT_WR);
  char sink[256];
  for (;;) {
    const ssize_t rd = ::recv(fd, sink, sizeof sink, 0);
    if (rd < 0 && errno == EINTR) continue;
    if (rd < 0) note_error(r, errno_text("waiting for the sink to finish", errno));
    if (rd <= 0) return;
  }
}

ClientResult run_throughput(const ClientSpec& spec) {
  ClientResult r;
  const test::UniqueFd fd = connect_noted(spec, r);
  if (!fd) return r;
  std::vector<char> chunk(64 * 1024, 't');
  const CpuSnapshot before = cpu_snapshot(spec);
  const uint64_t t0 = now_ns();
  const uint64_t stop = t0 + static_cast<uint64_t>(spec.seconds * 1e9);
  bool ok = true;
  while (ok && now_ns() < stop) {
    const ssize_t w = ::send(fd.get(), chunk.data(), chunk.size(), MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w > 0) r.bytes += static_cast<uint64_t>(w);
    if (w <= 0) {
      note_error(r, errno_text("send", errno));
      ok = false;
    }
  }
  if (ok) wait_for_sink(fd.get(), r);
  r.elapsed_ns = now_ns() - t0;
  charge_cpu(spec, before, r);
  if (r.errors == 0 && r.elapsed_ns > 0) r.samples_ns.push_back(clamp_ns(r.elapsed_ns));
  return r;
}

}  // namespace

bool pin_to_cpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return ::sched_setaffinity(0, sizeof set, &set) == 0;
}

ClientResult run_client(const ClientSpec& spec) {
  try {
    switch (spec.workload) {
      case Workload::connect:
        return run_connect(spec);
      case Workload::rr: {
        if (spec.connections <= 1) return run_rr_single(spec);
        ClientResult r;
        return MultiRr(spec, r).run();
      }
      case Workload::throughput:
        return run_throughput(spec);
    }
  } catch (const test::TestSupportError& e) {
    ClientResult r;
    note_error(r, e.what());
    return r;
  }
  return {};
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
