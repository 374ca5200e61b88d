#include "support/sockets.h"

#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/un.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <future>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "support/netns.h"

namespace meshcap::test {

namespace {

using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
  return left > 0 ? static_cast<int>(left) : 0;
}

// Polls fd for events until the deadline; true when ready.
bool wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    struct pollfd pfd {fd, events, 0};
    const int r = ::poll(&pfd, 1, remaining_ms(deadline));
    if (r > 0) return true;
    if (r == 0) {
      errno = ETIMEDOUT;
      return false;
    }
    if (errno != EINTR) return false;
  }
}

void set_nonblocking(int fd, bool on) {
  const int flags = ::fcntl(fd, F_GETFL);
  ::fcntl(fd, F_SETFL, on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK));
}

bool is_v4_mapped(const sockaddr_storage& ss) {
  if (ss.ss_family != AF_INET6) return false;
  const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
  return IN6_IS_ADDR_V4MAPPED(&a->sin6_addr);
}

AcceptRecord describe_accepted(int fd) {
  AcceptRecord r;
  r.peer = getpeername_str(fd);
  r.local = getsockname_str(fd);
  r.original_dst = original_dst(fd);
  return r;
}

// Creates, binds and listens; returns the fd or throws.
UniqueFd make_listener(const std::string& ip, uint16_t port, int backlog, uint16_t* bound_port) {
  socklen_t len = 0;
  const sockaddr_storage ss = make_sockaddr(ip, port, &len);
  UniqueFd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) throw TestSupportError("socket for listener " + ip, errno);
  const int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (ss.ss_family == AF_INET6) ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&ss), len) != 0) {
    throw TestSupportError("bind " + ip + " port " + std::to_string(port), errno);
  }
  if (::listen(fd.get(), backlog) != 0) throw TestSupportError("listen on " + ip, errno);
  sockaddr_storage bound {};
  socklen_t blen = sizeof bound;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &blen);
  *bound_port = ntohs(bound.ss_family == AF_INET
                          ? reinterpret_cast<sockaddr_in*>(&bound)->sin_port
                          : reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
  return fd;
}

// The server loop: accepts, records, echoes (or discards), until stop_fd is
// readable or hung up. Level-triggered epoll; a connection with unsent
// echo data stops reading until it drains (back-pressure).
void serve(int listen_fd, int stop_fd, bool echo,
           const std::function<void(const AcceptRecord&)>& on_accept) {
  UniqueFd ep(::epoll_create1(EPOLL_CLOEXEC));
  if (!ep) return;
  auto add = [&](int fd, uint32_t events) {
    epoll_event ev {};
    ev.events = events;
    ev.data.fd = fd;
    return ::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &ev) == 0;
  };
  auto mod = [&](int fd, uint32_t events) {
    epoll_event ev {};
    ev.events = events;
    ev.data.fd = fd;
    ::epoll_ctl(ep.get(), EPOLL_CTL_MOD, fd, &ev);
  };
  add(listen_fd, EPOLLIN);
  add(stop_fd, EPOLLIN);
  std::unordered_map<int, std::string> pending;  // per connection: unsent echo bytes
  auto close_conn = [&](int fd) {
    ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, fd, nullptr);
    ::close(fd);
    pending.erase(fd);
  };
  std::vector<char> buf(64 * 1024);
  epoll_event events[64];
  for (;;) {
    const int n = ::epoll_wait(ep.get(), events, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      const uint32_t ev = events[i].events;
      if (fd == stop_fd) goto done;
      if (fd == listen_fd) {
        for (;;) {
          const int c = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0) break;  // EAGAIN, or out of fds: retried on the next event
          on_accept(describe_accepted(c));
          if (add(c, EPOLLIN | EPOLLRDHUP)) {
            pending[c];
          } else {
            ::close(c);
          }
        }
        continue;
      }
      auto it = pending.find(fd);
      if (it == pending.end()) continue;
      std::string& out = it->second;
      if (!out.empty()) {
        if (ev & (EPOLLERR | EPOLLHUP)) {
          close_conn(fd);
          continue;
        }
        const ssize_t w = ::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
          close_conn(fd);
          continue;
        }
        if (w > 0) out.erase(0, static_cast<size_t>(w));
        if (out.empty()) mod(fd, EPOLLIN | EPOLLRDHUP);
        continue;
      }
      const ssize_t r = ::recv(fd, buf.data(), buf.size(), 0);
      if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
        close_conn(fd);
        continue;
      }
      if (r < 0 || !echo) continue;
      const ssize_t w = ::send(fd, buf.data(), static_cast<size_t>(r), MSG_NOSIGNAL);
      if (w < 0 && errno != EAGAIN && errno != EINTR) {
        close_conn(fd);
        continue;
      }
      const size_t sent = w > 0 ? static_cast<size_t>(w) : 0;
      if (sent < static_cast<size_t>(r)) {
        out.assign(buf.data() + sent, static_cast<size_t>(r) - sent);
        mod(fd, EPOLLOUT);
      }
    }
  }
done:
  for (auto& [fd, out] : pending) ::close(fd);
}

// Wire format from a server child process to its parent, one line each:
//   R <port>
//   E <errno> <message>
//   A <peer> <local> <ok 0|1> <original dst or -> <errno>
bool write_line(int fd, const std::string& line) {
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    left -= static_cast<size_t>(n);
  }
  return true;
}

std::string record_line(const AcceptRecord& r) {
  return "A " + (r.peer.empty() ? "-" : r.peer) + " " + (r.local.empty() ? "-" : r.local) + " " +
         (r.original_dst.ok ? "1 " : "0 ") +
         (r.original_dst.address.empty() ? "-" : r.original_dst.address) + " " +
         std::to_string(r.original_dst.error) + "\n";
}

std::optional<AcceptRecord> parse_record(const std::string& line) {
  std::istringstream in(line);
  std::string tag, peer, local, ok, orig;
  int err = 0;
  if (!(in >> tag >> peer >> local >> ok >> orig >> err) || tag != "A") return std::nullopt;
  AcceptRecord r;
  r.peer = peer == "-" ? "" : peer;
  r.local = local == "-" ? "" : local;
  r.original_dst.ok = ok == "1";
  r.original_dst.address = orig == "-" ? "" : orig;
  r.original_dst.error = err;
  return r;
}

}  // namespace

UniqueFd listen_tcp(const std::string& ip, uint16_t port, int backlog) {
  uint16_t bound = 0;
  return make_listener(ip, port, backlog, &bound);
}

UniqueFd listen_unix(const std::string& path, int backlog) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path) throw TestSupportError("socket path too long: " + path, ENAMETOOLONG);
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw TestSupportError("socket for " + path, errno);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) throw TestSupportError("bind " + path, errno);
  if (::listen(fd.get(), backlog) != 0) throw TestSupportError("listen on " + path, errno);
  return fd;
}

std::string peer_heap(int fd) {
  ucred peer{};
  socklen_t len = sizeof peer;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0) return "(no peer)";
  std::ifstream maps("/proc/" + std::to_string(peer.pid) + "/maps");
  if (!maps) return "(no peer)";
  for (std::string line; std::getline(maps, line);)
    if (line.find("[heap]") != std::string::npos) return line;
  return "";
}

// ---- addresses ----

std::string format_sockaddr(const sockaddr* sa, socklen_t len) {
  char ip[INET6_ADDRSTRLEN] = {};
  if (sa->sa_family == AF_INET && len >= static_cast<socklen_t>(sizeof(sockaddr_in))) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(sa);
    ::inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
    return std::string(ip) + ":" + std::to_string(ntohs(a->sin_port));
  }
  if (sa->sa_family == AF_INET6 && len >= static_cast<socklen_t>(sizeof(sockaddr_in6))) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(sa);
    ::inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
    return "[" + std::string(ip) + "]:" + std::to_string(ntohs(a->sin6_port));
  }
  return "";
}

sockaddr_storage make_sockaddr(const std::string& ip, uint16_t port, socklen_t* len) {
  sockaddr_storage ss {};
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (::inet_pton(AF_INET, ip.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    *len = sizeof(sockaddr_in);
  } else if (::inet_pton(AF_INET6, ip.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    *len = sizeof(sockaddr_in6);
  } else {
    throw TestSupportError("parse IP address '" + ip + "'", EINVAL);
  }
  return ss;
}

std::string getsockname_str(int fd) {
  sockaddr_storage ss {};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "";
  return format_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
}

std::string getpeername_str(int fd) {
  sockaddr_storage ss {};
  socklen_t len = sizeof ss;
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "";
  return format_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
}

OriginalDst original_dst(int fd) {
  OriginalDst r;
  sockaddr_storage local {};
  socklen_t llen = sizeof local;
  const bool v6 = ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &llen) == 0 &&
                  local.ss_family == AF_INET6 && !is_v4_mapped(local);
  sockaddr_storage dst {};
  socklen_t len = v6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
  const int rc = v6 ? ::getsockopt(fd, SOL_IPV6, kIp6tSoOriginalDst, &dst, &len)
                    : ::getsockopt(fd, SOL_IP, kSoOriginalDst, &dst, &len);
  if (rc != 0) {
    r.error = errno;
    return r;
  }
  r.ok = true;
  r.address = format_sockaddr(reinterpret_cast<sockaddr*>(&dst), len);
  return r;
}

// ---- client ----

void set_linger_zero(int fd) {
  const linger l {1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

Connection connect_tcp(const std::string& ip, uint16_t port, Millis timeout,
                       const ConnectOptions& options) {
  Connection c;
  const auto deadline = Clock::now() + timeout;
  socklen_t len = 0;
  sockaddr_storage ss {};
  try {
    ss = make_sockaddr(ip, port, &len);
  } catch (const TestSupportError&) {
    c.error = EINVAL;
    return c;
  }
  UniqueFd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) {
    c.error = errno;
    return c;
  }
  if (options.linger_zero) set_linger_zero(fd.get());
  if (!options.bind_ip.empty() || options.bind_port != 0) {
    socklen_t blen = 0;
    sockaddr_storage bs {};
    try {
      bs = make_sockaddr(options.bind_ip.empty() ? (ss.ss_family == AF_INET ? "0.0.0.0" : "::")
                                                 : options.bind_ip,
                         options.bind_port, &blen);
    } catch (const TestSupportError&) {
      c.error = EINVAL;
      return c;
    }
    const int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&bs), blen) != 0) {
      c.error = errno;
      return c;
    }
  }
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    if (errno != EINPROGRESS) {
      c.error = errno;
      return c;
    }
    if (!wait_fd(fd.get(), POLLOUT, deadline)) {
      c.error = errno;
      c.detail = tcp_state_detail(fd.get());
      return c;
    }
    int err = 0;
    socklen_t elen = sizeof err;
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &elen);
    if (err != 0) {
      c.error = err;
      c.detail = tcp_state_detail(fd.get());
      return c;
    }
  }
  set_nonblocking(fd.get(), false);
  c.fd = std::move(fd);
  return c;
}

std::string tcp_state_detail(int fd) {
  static const char* const kStates[] = {"?",         "ESTABLISHED", "SYN_SENT",   "SYN_RECV",
                                        "FIN_WAIT1", "FIN_WAIT2",   "TIME_WAIT",  "CLOSE",
                                        "CLOSE_WAIT", "LAST_ACK",   "LISTEN",     "CLOSING"};
  std::string out = "from " + getsockname_str(fd);
  tcp_info ti{};
  socklen_t len = sizeof ti;
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) return out + ", no TCP_INFO (" + std::strerror(errno) + ")";
  out += std::string(", ") + (ti.tcpi_state < std::size(kStates) ? kStates[ti.tcpi_state] : "?");
  out += ", " + std::to_string(ti.tcpi_total_retrans) + " retransmits, rto " + std::to_string(ti.tcpi_rto / 1000) + " ms";
  return out;
}

bool send_all(int fd, std::string_view data, Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  while (!data.empty()) {
    if (!wait_fd(fd, POLLOUT, deadline)) return false;
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

namespace {

std::string recv_exact_err(int fd, size_t n, Millis timeout, int* err) {
  const auto deadline = Clock::now() + timeout;
  std::string out;
  *err = 0;
  while (out.size() < n) {
    if (!wait_fd(fd, POLLIN, deadline)) {
      *err = errno;
      break;
    }
    char buf[65536];
    const ssize_t r = ::recv(fd, buf, std::min(sizeof buf, n - out.size()), MSG_DONTWAIT);
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      *err = errno;
      break;
    }
    if (r == 0) {
      *err = ECONNRESET;  // peer closed before sending everything
      break;
    }
    out.append(buf, static_cast<size_t>(r));
  }
  return out;
}

}  // namespace

std::string recv_exact(int fd, size_t n, Millis timeout) {
  int err = 0;
  std::string out = recv_exact_err(fd, n, timeout, &err);
  if (err != 0) errno = err;
  return out;
}

std::string recv_some(int fd, Millis timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (!wait_fd(fd, POLLIN, deadline)) return "";
    char buf[65536];
    const ssize_t r = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r <= 0) return "";
    return std::string(buf, static_cast<size_t>(r));
  }
}

int read_byte(int fd, Millis timeout) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return -1;
  unsigned char c = 0;
  return ::read(fd, &c, 1) == 1 ? c : -1;
}

RoundTrip tcp_roundtrip(const std::string& ip, uint16_t port, std::string_view payload,
                        Millis timeout, const ConnectOptions& options) {
  RoundTrip rt;
  const auto deadline = Clock::now() + timeout;
  Connection c = connect_tcp(ip, port, timeout, options);
  if (!c.ok()) {
    rt.error = c.error;
    rt.detail = "connect" + (c.detail.empty() ? "" : ": " + c.detail);
    return rt;
  }
  rt.local = getsockname_str(c.fd.get());
  rt.peer = getpeername_str(c.fd.get());
  if (!send_all(c.fd.get(), payload, Millis(remaining_ms(deadline)))) {
    rt.error = errno != 0 ? errno : EIO;
    rt.detail = "send: " + tcp_state_detail(c.fd.get());
    return rt;
  }
  int err = 0;
  rt.reply = recv_exact_err(c.fd.get(), payload.size(), Millis(remaining_ms(deadline)), &err);
  rt.error = err;
  if (err != 0) rt.detail = "read (" + std::to_string(rt.reply.size()) + " bytes came back): " + tcp_state_detail(c.fd.get());
  if (err == 0 && rt.reply != payload) rt.error = EBADMSG;
  return rt;
}

// ---- servers ----

Placement Placement::netns(std::string netns_path) {
  Placement p;
  p.netns_path_ = std::move(netns_path);
  return p;
}

Placement Placement::pod_thread(TestPod& pod) {
  Placement p;
  p.netns_path_ = pod.pod_netns_path();
  p.pod_ = &pod;
  p.in_pod_ = true;
  return p;
}

Placement Placement::peer_thread(TestPod& pod) {
  Placement p;
  p.netns_path_ = pod.peer_netns_path();
  p.pod_ = &pod;
  return p;
}

Placement Placement::pod_process(TestPod& pod, Identity id) {
  Placement p = pod_thread(pod);
  p.process_ = true;
  p.id_ = std::move(id);
  return p;
}

Placement Placement::peer_process(TestPod& pod, Identity id) {
  Placement p = peer_thread(pod);
  p.process_ = true;
  p.id_ = std::move(id);
  return p;
}

TcpServer::TcpServer(Placement where, std::string ip, uint16_t port, ServerOptions options)
    : ip_(std::move(ip)), port_(port), options_(options) {
  if (where.process_) {
    start_process(*where.pod_, where.in_pod_, where.id_);
  } else {
    start_thread(where.netns_path_);
  }
  if (where.pod_ != nullptr) {
    pod_ = where.pod_;
    teardown_token_ = pod_->add_teardown([this] {
      detach_from_pod_and_stop();
    });
  }
}

TcpServer::~TcpServer() {
  stop();
  std::lock_guard lock(stop_mu_);
  if (pod_ != nullptr) pod_->remove_teardown(teardown_token_);
}

void TcpServer::detach_from_pod_and_stop() {
  stop();
  std::lock_guard lock(stop_mu_);
  pod_ = nullptr;  // the pod is going away; never touch it again
}

void TcpServer::start_thread(const std::string& netns_path) {
  UniqueFd efd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!efd) throw TestSupportError("eventfd", errno);
  auto ready = std::make_shared<std::promise<uint16_t>>();
  auto ready_future = ready->get_future();
  const int stop_fd = efd.get();
  thread_ = in_netns(netns_path, [this, stop_fd, ready] {
    UniqueFd listener;
    try {
      uint16_t bound = 0;
      listener = make_listener(ip_, port_, options_.backlog, &bound);
      ready->set_value(bound);
    } catch (...) {
      ready->set_exception(std::current_exception());
      return;
    }
    serve(listener.get(), stop_fd, options_.echo,
          [this](const AcceptRecord& r) { add_record(r); });
  });
  stop_fd_ = std::move(efd);
  try {
    port_ = ready_future.get();
  } catch (...) {
    thread_.join();
    stop_fd_.reset();
    stopped_ = true;
    throw;
  }
}

void TcpServer::start_process(TestPod& pod, bool in_pod, const Identity& id) {
  const std::string ip = ip_;
  const uint16_t port = port_;
  const ServerOptions options = options_;
  auto body = [ip, port, options](int out) -> int {
    uint16_t bound = 0;
    UniqueFd listener;
    try {
      listener = make_listener(ip, port, options.backlog, &bound);
    } catch (const TestSupportError& e) {
      write_line(out, "E " + std::to_string(e.error()) + " " + e.what() + "\n");
      return 1;
    }
    write_line(out, "R " + std::to_string(bound) + "\n");
    // Runs until the parent stops it with a signal; records go out as they
    // happen. A never-readable stop fd: the pipe's read end in this child.
    int never[2];
    if (::pipe2(never, O_CLOEXEC) != 0) return 1;
    serve(listener.get(), never[0], options.echo,
          [out](const AcceptRecord& r) { write_line(out, record_line(r)); });
    return 0;
  };
  auto [pid, pipe_read] =
      in_pod ? pod.start_in_pod_with_pipe(body, id) : pod.start_in_peer_with_pipe(body, id);
  pid_ = pid;

  // First line: ready or error.
  auto fail = [&](const std::string& why) {
    pod.stop(pid_, Millis(0));
    pid_ = -1;
    stopped_ = true;
    throw TestSupportError("start server on " + ip_ + " port " + std::to_string(port_), 0, why);
  };
  std::string buffer;
  const auto deadline = Clock::now() + kIoTimeout;
  size_t nl = std::string::npos;
  while ((nl = buffer.find('\n')) == std::string::npos) {
    if (!wait_fd(pipe_read.get(), POLLIN, deadline)) fail("no answer from the server process");
    char buf[512];
    const ssize_t n = ::read(pipe_read.get(), buf, sizeof buf);
    if (n <= 0) fail("server process exited");
    buffer.append(buf, static_cast<size_t>(n));
  }
  const std::string first = buffer.substr(0, nl);
  buffer.erase(0, nl + 1);
  if (first.rfind("R ", 0) != 0) fail(first.size() > 2 ? first.substr(2) : first);
  port_ = static_cast<uint16_t>(std::stoi(first.substr(2)));

  reader_ = std::thread([this, fd = std::move(pipe_read), buffer]() mutable {
    for (;;) {
      size_t pos;
      while ((pos = buffer.find('\n')) != std::string::npos) {
        if (auto r = parse_record(buffer.substr(0, pos))) add_record(std::move(*r));
        buffer.erase(0, pos + 1);
      }
      char buf[4096];
      const ssize_t n = ::read(fd.get(), buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;  // the child exited
      buffer.append(buf, static_cast<size_t>(n));
    }
  });
}

void TcpServer::stop() {
  std::lock_guard lock(stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  if (thread_.joinable()) {
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t w = ::write(stop_fd_.get(), &one, sizeof one);
    thread_.join();
    stop_fd_.reset();
  }
  if (pid_ > 0 && pod_ != nullptr) {
    pod_->stop(pid_, Millis(2000));
  }
  if (reader_.joinable()) reader_.join();
}

void TcpServer::add_record(AcceptRecord r) {
  {
    std::lock_guard lock(mu_);
    records_.push_back(std::move(r));
  }
  cv_.notify_all();
}

size_t TcpServer::accepted() const {
  std::lock_guard lock(mu_);
  return records_.size();
}

std::vector<AcceptRecord> TcpServer::records() const {
  std::lock_guard lock(mu_);
  return records_;
}

bool TcpServer::wait_for_accepts(size_t n, Millis timeout) const {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return records_.size() >= n; });
}

RoundTrip roundtrip_in_pod(TestPod& pod, const std::string& ip, uint16_t port, Identity id,
                           const ConnectOptions& options) {
  std::string out = pod.run_in_pod_capture(
      [&] {
        return tcp_roundtrip(ip, port, "ping", kIoTimeout, options).encode();
      },
      id);
  return RoundTrip::decode(out);
}

RoundTrip roundtrip_in_peer(TestPod& pod, const std::string& ip, uint16_t port, Millis timeout) {
  return RoundTrip::decode(pod.run_in_peer_capture([&] { return tcp_roundtrip(ip, port, "ping", timeout).encode(); }));
}

std::string RoundTrip::encode() const { return std::to_string(error) + "|" + reply + "|" + local + "|" + peer; }

RoundTrip RoundTrip::decode(const std::string& line) {
  RoundTrip r;
  auto p1 = line.find('|'), p2 = line.find('|', p1 + 1), p3 = line.find('|', p2 + 1);
  r.error = std::stoi(line.substr(0, p1));
  r.reply = line.substr(p1 + 1, p2 - p1 - 1);
  r.local = line.substr(p2 + 1, p3 - p2 - 1);
  r.peer = line.substr(p3 + 1);
  return r;
}

int parallel_roundtrips_in_pod(TestPod& pod, const std::string& ip, uint16_t port, int threads, int per_thread,
                               Identity id) {
  socklen_t len = 0;
  sockaddr_storage sa = make_sockaddr(ip, port, &len);
  const std::string want_peer = format_sockaddr(reinterpret_cast<sockaddr*>(&sa), len);
  return pod.run_in_pod(
      [=] {
        std::atomic<int> failed{0};
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; t++) {
          pool.emplace_back([&, t] {
            for (int i = 0; i < per_thread; i++) {
              std::string payload = "t" + std::to_string(t) + "-" + std::to_string(i);
              RoundTrip r = tcp_roundtrip(ip, port, payload);
              if (!r.ok() || r.reply != payload || r.peer != want_peer) failed++;
            }
          });
        }
        for (auto& th : pool) th.join();
        return failed.load();
      },
      id, std::chrono::milliseconds(120000));
}

}  // namespace meshcap::test
