#include "equivalence/tagged_server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

namespace meshcap::test::eq {

namespace {

using Clock = std::chrono::steady_clock;

bool write_all(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

std::string or_dash(const std::string& s) { return s.empty() ? "-" : s; }
std::string un_dash(const std::string& s) { return s == "-" ? "" : s; }

// "A <listener> <tag> <peer> <local> <orig_ok> <orig_dst> <orig_errno>"
std::string record_line(size_t listener, const std::string& tag, const std::string& peer, const std::string& local,
                        const OriginalDst& od) {
  std::ostringstream o;
  o << "A " << listener << " " << or_dash(tag) << " " << or_dash(peer) << " " << or_dash(local) << " "
    << (od.ok ? 1 : 0) << " " << or_dash(od.address) << " " << od.error << "\n";
  return o.str();
}

// The child: binds every listener, says "R", then serves until killed.
// Single-threaded (it runs in a fork of a multi-threaded process).
int serve_tagged(int out, const std::vector<ListenSpec>& specs) {
  std::vector<int> lfds;
  for (const auto& spec : specs) {
    socklen_t len = 0;
    sockaddr_storage ss{};
    try {
      ss = make_sockaddr(spec.ip, spec.port, &len);
    } catch (const std::exception& e) {
      write_all(out, "E " + spec.str() + ": " + e.what() + "\n");
      return 1;
    }
    const int fd = ::socket(ss.ss_family, (spec.udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    const int one = 1;
    if (fd >= 0) {
      ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (ss.ss_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
      // A datagram's destination (the "local address" recorded), and the
      // source of the answer: a wildcard listener answers from the address
      // the datagram was sent to, as a DNS server must.
      if (spec.udp && ss.ss_family == AF_INET) ::setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one);
      if (spec.udp && ss.ss_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof one);
    }
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || (!spec.udp && ::listen(fd, 4096) != 0)) {
      write_all(out, "E " + spec.str() + ": " + std::strerror(errno) + "\n");
      return 1;
    }
    lfds.push_back(fd);
  }
  write_all(out, "R\n");

  struct Conn {
    size_t listener;
    std::string peer, local, buf;
    OriginalDst od;
    bool answered = false;
  };
  std::map<int, Conn> conns;
  std::vector<char> buf(64 * 1024);
  for (;;) {
    std::vector<pollfd> pfds;
    for (int fd : lfds) pfds.push_back({fd, POLLIN, 0});
    for (const auto& [fd, c] : conns) pfds.push_back({fd, POLLIN, 0});
    if (::poll(pfds.data(), pfds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    for (size_t i = 0; i < pfds.size(); ++i) {
      if (pfds[i].revents == 0) continue;
      const int fd = pfds[i].fd;
      if (i < lfds.size()) {
        if (specs[i].udp) {
          for (;;) {
            sockaddr_storage from{};
            alignas(cmsghdr) char control[256];
            iovec iov{buf.data(), buf.size()};
            msghdr msg{};
            msg.msg_name = &from;
            msg.msg_namelen = sizeof from;
            msg.msg_iov = &iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control;
            msg.msg_controllen = sizeof control;
            const ssize_t n = ::recvmsg(fd, &msg, 0);
            if (n < 0) break;
            std::string data(buf.data(), static_cast<size_t>(n));
            const std::string tag = data.substr(0, data.find('\n'));
            // The datagram's destination, and the same address as the answer's source.
            std::string local;
            alignas(cmsghdr) char reply_control[CMSG_SPACE(sizeof(in6_pktinfo))] = {};
            msghdr reply{};
            reply.msg_name = &from;
            reply.msg_namelen = msg.msg_namelen;
            reply.msg_iov = &iov;
            reply.msg_iovlen = 1;
            for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
              if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_PKTINFO) {
                in_pktinfo pi;
                std::memcpy(&pi, CMSG_DATA(cm), sizeof pi);
                sockaddr_in sin{};
                sin.sin_family = AF_INET;
                sin.sin_addr = pi.ipi_addr;
                sin.sin_port = htons(specs[i].port);
                local = format_sockaddr(reinterpret_cast<sockaddr*>(&sin), sizeof sin);
                in_pktinfo out_pi{};
                out_pi.ipi_spec_dst = pi.ipi_addr;
                reply.msg_control = reply_control;
                reply.msg_controllen = CMSG_SPACE(sizeof out_pi);
                cmsghdr* rc = CMSG_FIRSTHDR(&reply);
                rc->cmsg_level = IPPROTO_IP;
                rc->cmsg_type = IP_PKTINFO;
                rc->cmsg_len = CMSG_LEN(sizeof out_pi);
                std::memcpy(CMSG_DATA(rc), &out_pi, sizeof out_pi);
              } else if (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_PKTINFO) {
                in6_pktinfo pi;
                std::memcpy(&pi, CMSG_DATA(cm), sizeof pi);
                sockaddr_in6 sin6{};
                sin6.sin6_family = AF_INET6;
                sin6.sin6_addr = pi.ipi6_addr;
                sin6.sin6_port = htons(specs[i].port);
                local = format_sockaddr(reinterpret_cast<sockaddr*>(&sin6), sizeof sin6);
                in6_pktinfo out_pi{};
                out_pi.ipi6_addr = pi.ipi6_addr;
                reply.msg_control = reply_control;
                reply.msg_controllen = CMSG_SPACE(sizeof out_pi);
                cmsghdr* rc = CMSG_FIRSTHDR(&reply);
                rc->cmsg_level = IPPROTO_IPV6;
                rc->cmsg_type = IPV6_PKTINFO;
                rc->cmsg_len = CMSG_LEN(sizeof out_pi);
                std::memcpy(CMSG_DATA(rc), &out_pi, sizeof out_pi);
              }
            }
            OriginalDst none;
            write_all(out, record_line(i, tag, format_sockaddr(reinterpret_cast<sockaddr*>(&from), msg.msg_namelen),
                                       local, none));
            iov.iov_len = static_cast<size_t>(n);
            ::sendmsg(fd, &reply, 0);
          }
        } else {
          for (;;) {
            const int c = ::accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (c < 0) break;
            Conn conn;
            conn.listener = i;
            conn.peer = getpeername_str(c);
            conn.local = getsockname_str(c);
            conn.od = original_dst(c);  // at accept, as a proxy asks
            conns.emplace(c, std::move(conn));
          }
        }
        continue;
      }
      auto it = conns.find(fd);
      if (it == conns.end()) continue;
      Conn& c = it->second;
      const ssize_t n = ::read(fd, buf.data(), buf.size());
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n > 0) {
        if (c.answered) continue;  // nothing more is expected; wait for EOF
        c.buf.append(buf.data(), static_cast<size_t>(n));
        const auto nl = c.buf.find('\n');
        if (nl == std::string::npos && c.buf.size() < 256) continue;
        write_all(out, record_line(c.listener, c.buf.substr(0, nl), c.peer, c.local, c.od));
        // Echo the tag line; the client closes first (no TIME_WAIT here).
        ::send(fd, c.buf.data(), c.buf.size(), MSG_NOSIGNAL);
        c.answered = true;
        continue;
      }
      // EOF or error.
      if (!c.answered) write_all(out, record_line(c.listener, "", c.peer, c.local, c.od));
      ::close(fd);
      conns.erase(it);
    }
  }
}

}  // namespace

std::string ListenSpec::str() const {
  const std::string host = ip.find(':') == std::string::npos ? ip : "[" + ip + "]";
  return std::string(udp ? "udp " : "tcp ") + host + ":" + std::to_string(port);
}

void TagStore::add(const std::string& tag, TagRecord r) {
  {
    std::lock_guard lock(mu_);
    records_[tag].push_back(std::move(r));
  }
  cv_.notify_all();
}

bool TagStore::wait_for(const std::vector<std::string>& tags, std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, timeout, [&] {
    for (const auto& t : tags)
      if (!records_.count(t)) return false;
    return true;
  });
}

std::vector<TagRecord> TagStore::get(const std::string& tag) const {
  std::lock_guard lock(mu_);
  auto it = records_.find(tag);
  return it == records_.end() ? std::vector<TagRecord>{} : it->second;
}

TaggedServer::TaggedServer(TestPod& pod, Where where, Identity id, std::string name, std::vector<ListenSpec> specs,
                           TagStore& store)
    : pod_(pod), name_(std::move(name)), specs_(std::move(specs)), store_(store) {
  const std::vector<ListenSpec> specs_copy = specs_;
  auto body = [specs_copy](int out) { return serve_tagged(out, specs_copy); };
  auto [pid, pipe_read] =
      where == Where::pod ? pod_.start_in_pod_with_pipe(body, id) : pod_.start_in_peer_with_pipe(body, id);
  pid_ = pid;

  // First line: "R" (all bound) or "E <why>".
  std::string buffer;
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (buffer.find('\n') == std::string::npos) {
    const int left =
        static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
    pollfd pfd{pipe_read.get(), POLLIN, 0};
    char b[512];
    ssize_t n = left > 0 && ::poll(&pfd, 1, left) > 0 ? ::read(pipe_read.get(), b, sizeof b) : -1;
    if (n <= 0) {
      pod_.stop(pid_, std::chrono::milliseconds(0));
      pid_ = -1;
      stopped_ = true;
      throw TestSupportError("start recording server " + name_, 0, "no answer from the server process");
    }
    buffer.append(b, static_cast<size_t>(n));
  }
  const std::string first = buffer.substr(0, buffer.find('\n'));
  buffer.erase(0, buffer.find('\n') + 1);
  if (first != "R") {
    pod_.stop(pid_, std::chrono::milliseconds(0));
    pid_ = -1;
    stopped_ = true;
    throw TestSupportError("start recording server " + name_, 0, first);
  }
  reader_ = std::thread([this, fd = std::move(pipe_read), buffer]() mutable {
    for (;;) {
      size_t pos;
      while ((pos = buffer.find('\n')) != std::string::npos) {
        std::istringstream in(buffer.substr(0, pos));
        buffer.erase(0, pos + 1);
        std::string kind, tag, peer, local, orig;
        size_t listener = 0;
        int ok = 0, err = 0;
        if (!(in >> kind >> listener >> tag >> peer >> local >> ok >> orig >> err) || kind != "A" ||
            listener >= specs_.size())
          continue;
        TagRecord r;
        r.server = name_;
        r.listener = specs_[listener];
        r.peer = un_dash(peer);
        r.local = un_dash(local);
        r.orig_ok = ok != 0;
        r.orig_dst = un_dash(orig);
        r.orig_errno = err;
        store_.add(un_dash(tag), std::move(r));
      }
      char b[4096];
      const ssize_t n = ::read(fd.get(), b, sizeof b);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;  // the child exited
      buffer.append(b, static_cast<size_t>(n));
    }
  });
}

void TaggedServer::stop() {
  if (stopped_) return;
  stopped_ = true;
  if (pid_ > 0) pod_.stop(pid_, std::chrono::milliseconds(2000));
  if (reader_.joinable()) reader_.join();
}

TaggedServer::~TaggedServer() { stop(); }

}  // namespace meshcap::test::eq
