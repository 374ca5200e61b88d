// The benchmark's servers (echo, sink, and the probe's answer) and the
// probe that asks them where a connection landed.
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <unordered_map>

#include "support/sockets.h"
#include "workload.h"

namespace meshcap::bench {

namespace {

// One epoll loop over the listeners and every accepted connection. Echo
// connections read once per wakeup and write back what they read (keeping
// what the socket did not take); sinks drain everything available; a fresh
// echo connection whose first bytes are kWhoRequest gets "TAG PEER" and is
// closed.
class Server {
 public:
  Server(std::string tag) : tag_(std::move(tag)), ep_(::epoll_create1(EPOLL_CLOEXEC)), buf_(256 * 1024) {}

  /// Listens on every spec; "" or the error.
  std::string listen_all(const std::vector<ListenSpec>& listeners) {
    for (const auto& l : listeners) {
      try {
        test::UniqueFd fd = test::listen_tcp(l.ip, l.port, 4096);
        ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK);
        add(fd.release(), Conn{l.mode, true, {}, true});
      } catch (const test::TestSupportError& e) {
        return e.what();
      }
    }
    return "";
  }

  void run_until(uint64_t deadline) {
    epoll_event events[128];
    while (now_ns() < deadline) {
      const int n = ::epoll_wait(ep_.get(), events, 128, 500);
      for (int e = 0; e < n; e++) handle(events[e].data.fd, events[e].events);
    }
  }

 private:
  struct Conn {
    ServeMode mode = ServeMode::echo;
    bool listener = false;
    std::string pending;  // echo bytes not yet written
    bool fresh = true;    // nothing read yet: may be the probe
  };

  void add(int fd, Conn c) {
    conns_[fd] = std::move(c);
    watch(fd, EPOLL_CTL_ADD, false);
  }
  void watch(int fd, int op, bool out) {
    epoll_event ev{};
    ev.events = EPOLLIN | (out ? EPOLLOUT : 0u);
    ev.data.fd = fd;
    ::epoll_ctl(ep_.get(), op, fd, &ev);
  }
  void drop(int fd) {
    ::epoll_ctl(ep_.get(), EPOLL_CTL_DEL, fd, nullptr);
    ::close(fd);
    conns_.erase(fd);
  }

  void handle(int fd, uint32_t events) {
    auto it = conns_.find(fd);
    if (it == conns_.end()) return;
    if (it->second.listener) return accept_all(fd, it->second.mode);
    Conn& c = it->second;
    if (events & EPOLLOUT) flush(fd, c);
    if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !read_some(fd, c)) drop(fd);
  }

  void accept_all(int fd, ServeMode mode) {
    for (int c; (c = ::accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0;) {
      set_int(c, IPPROTO_TCP, TCP_NODELAY, 1);
      add(c, Conn{mode, false, {}, true});
    }
  }

  void flush(int fd, Conn& c) {
    while (!c.pending.empty()) {
      const ssize_t w = ::send(fd, c.pending.data(), c.pending.size(), MSG_NOSIGNAL);
      if (w <= 0) break;
      c.pending.erase(0, static_cast<size_t>(w));
    }
    if (c.pending.empty()) watch(fd, EPOLL_CTL_MOD, false);
  }

  // False when the connection is done (closed, answered, or a client that
  // never reads).
  bool read_some(int fd, Conn& c) {
    for (int reads = 0; reads < (c.mode == ServeMode::sink ? 64 : 1); reads++) {
      const ssize_t rd = ::recv(fd, buf_.data(), buf_.size(), 0);
      if (rd < 0 && (errno == EAGAIN || errno == EINTR)) return true;
      if (rd <= 0) return false;
      if (c.mode == ServeMode::sink) continue;
      const std::string_view got(buf_.data(), static_cast<size_t>(rd));
      if (c.fresh && got == kWhoRequest) return answer_probe(fd), false;
      c.fresh = false;
      if (!echo(fd, c, got)) return false;
    }
    return true;
  }

  bool echo(int fd, Conn& c, std::string_view got) {
    size_t off = 0;
    if (c.pending.empty()) {
      const ssize_t w = ::send(fd, got.data(), got.size(), MSG_NOSIGNAL);
      off = w > 0 ? static_cast<size_t>(w) : 0;
    }
    if (off == got.size()) return true;
    c.pending.append(got.substr(off));
    watch(fd, EPOLL_CTL_MOD, true);
    return c.pending.size() <= (16u << 20);
  }

  void answer_probe(int fd) {
    const std::string answer = tag_ + " " + test::getpeername_str(fd) + "\n";
    [[maybe_unused]] ssize_t w = ::send(fd, answer.data(), answer.size(), MSG_NOSIGNAL);
  }

  std::string tag_;
  test::UniqueFd ep_;
  std::vector<char> buf_;
  std::unordered_map<int, Conn> conns_;
};

}  // namespace

int serve(const std::vector<ListenSpec>& listeners, int ready_fd, double max_seconds, const std::string& tag) {
  Server server(tag);
  const std::string error = server.listen_all(listeners);
  const std::string line = (error.empty() ? "ready" : "error " + error) + "\n";
  [[maybe_unused]] ssize_t w = ::write(ready_fd, line.data(), line.size());
  ::close(ready_fd);
  if (!error.empty()) return 1;
  server.run_until(now_ns() + static_cast<uint64_t>(max_seconds * 1e9));
  return 0;
}

std::string probe(const std::string& ip, uint16_t port, int timeout_ms) {
  const test::Millis timeout(timeout_ms);
  test::Connection c = test::connect_tcp(ip, port, timeout);
  if (!c.ok()) return std::string("error connect: ") + std::strerror(c.error);
  const std::string local = test::getsockname_str(c.fd.get());
  std::string reply;
  if (test::send_all(c.fd.get(), kWhoRequest, timeout))
    for (std::string part; reply.size() <= 1024 && !(part = test::recv_some(c.fd.get(), timeout)).empty();)
      reply += part;
  while (!reply.empty() && (reply.back() == '\n' || reply.back() == '\r')) reply.pop_back();
  if (reply.empty()) return "error no answer";
  return reply + " " + local;
}

}  // namespace meshcap::bench
