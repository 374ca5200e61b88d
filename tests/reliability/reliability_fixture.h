// Shared by the reliability tests (escape, coexistence, load): a throwaway
// pod captured by the real meshcap binary in either mode, and small helpers
// (pipes with timeouts, iptables inside the pod, a UDP receiver).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <sstream>
#include <string>
#include <vector>

#include "kernel/capture_fixture.h"
#include "support/netns.h"

namespace meshcap::test {

/// istio-init's defaults plus "-i '*'": every outbound TCP connection of
/// the application is captured.
inline const std::vector<std::string>& capture_all_flags() {
  static const std::vector<std::string> f = {"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
                                             "-i", "*"};
  return f;
}

/// A CaptureTest parametrized by mode ("ebpf" or "iptables").
class ModeTest : public CaptureTest, public ::testing::WithParamInterface<std::string> {
 protected:
  const std::string& mode() const { return GetParam(); }
  bool ebpf() const { return GetParam() == "ebpf"; }
  /// One eBPF counter of this pod (0 when nothing is pinned).
  uint64_t pinned_counter(const std::string& key) {
    auto c = loader::pinned_counters(name_);
    auto it = c.find(key);
    return it == c.end() ? 0 : it->second;
  }

  /// meshcap init --mode <mode> for this pod.
  CommandResult init(std::vector<std::string> flags = capture_all_flags(), const std::string& mode_override = "") {
    std::vector<std::string> args = {"init",  "--mode",  mode_override.empty() ? mode() : mode_override,
                                     "--name", name_,    "--cgroup",
                                     pod_->cgroup_path(), "--netns", pod_->pod_netns_path()};
    args.insert(args.end(), flags.begin(), flags.end());
    return meshcap(args);
  }

  /// A command run inside the pod's network namespace (not its cgroup).
  CommandResult in_pod_netns(std::vector<std::string> argv) {
    argv.insert(argv.begin(), "--net=" + pod_->pod_netns_path());
    argv.insert(argv.begin(), "nsenter");
    return run_command(argv);
  }
  CommandResult in_peer_netns(std::vector<std::string> argv) {
    argv.insert(argv.begin(), "--net=" + pod_->peer_netns_path());
    argv.insert(argv.begin(), "nsenter");
    return run_command(argv);
  }
};

inline std::string mode_name(const ::testing::TestParamInfo<std::string>& info) { return info.param; }

/// Reads from fd until EOF or the timeout; what arrived.
inline std::string read_until_eof(int fd, Millis timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string out;
  for (int guard = 0; guard < 100000; guard++) {
    auto left = std::chrono::duration_cast<Millis>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) break;
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(left));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    char buf[4096];
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

/// A UDP socket bound to ip:port inside the namespace at netns_path.
inline UniqueFd udp_socket_in(const std::string& netns_path, const std::string& ip, uint16_t port) {
  return call_in_netns(netns_path, [&] {
    socklen_t len = 0;
    sockaddr_storage sa = make_sockaddr(ip, port, &len);
    UniqueFd fd(::socket(sa.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    if (!fd || ::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), len) != 0)
      throw TestSupportError("bind udp " + ip, errno);
    return fd;
  });
}

/// One datagram (payload and sender) within the timeout; payload "" if none.
struct Datagram {
  std::string payload;
  std::string from;
};
inline Datagram recv_datagram(int fd, Millis timeout) {
  Datagram d;
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return d;
  char buf[2048];
  sockaddr_storage from{};
  socklen_t flen = sizeof from;
  ssize_t n = ::recvfrom(fd, buf, sizeof buf, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &flen);
  if (n > 0) {
    d.payload.assign(buf, static_cast<size_t>(n));
    d.from = format_sockaddr(reinterpret_cast<sockaddr*>(&from), flen);
  }
  return d;
}

/// Sets a sysctl inside a namespace (never the machine's own).
inline void netns_sysctl(const std::string& netns_path, const std::string& key, const std::string& value) {
  std::string p = "/proc/sys/";
  for (char c : key) p += c == '.' ? '/' : c;
  call_in_netns(netns_path, [&] { write_text_file(p, value); });
}
inline std::string netns_sysctl_get(const std::string& netns_path, const std::string& key) {
  std::string p = "/proc/sys/";
  for (char c : key) p += c == '.' ? '/' : c;
  return call_in_netns(netns_path, [&] {
    std::string v = read_text_file(p);
    while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.pop_back();
    return v;
  });
}

/// "a|b|c" -> {"a","b","c"}.
inline std::vector<std::string> split_bar(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, '|')) out.push_back(cur);
  return out;
}

}  // namespace meshcap::test
