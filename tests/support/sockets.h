// Socket helpers for capture tests: address formatting, a client with
// timeouts, and TCP servers (echo, recording) placed in a test namespace.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "support/common.h"
#include "support/test_pod.h"

namespace meshcap::test {

using Millis = std::chrono::milliseconds;
inline constexpr Millis kIoTimeout{5000};

/// SO_ORIGINAL_DST (<linux/netfilter_ipv4.h>), at level SOL_IP.
inline constexpr int kSoOriginalDst = 80;
/// IP6T_SO_ORIGINAL_DST (<linux/netfilter_ipv6/ip6_tables.h>), at SOL_IPV6.
inline constexpr int kIp6tSoOriginalDst = 80;

// ---- addresses ----

/// "ip:port" for IPv4, "[ip6]:port" for IPv6; "" for other families.
std::string format_sockaddr(const sockaddr* sa, socklen_t len);
/// Builds a sockaddr from an IPv4 or IPv6 literal (no brackets) and a port.
/// Throws TestSupportError on a malformed address.
sockaddr_storage make_sockaddr(const std::string& ip, uint16_t port, socklen_t* len);
/// getsockname()/getpeername() formatted as above; "" on failure (errno set).
std::string getsockname_str(int fd);
std::string getpeername_str(int fd);

/// What getsockopt(SO_ORIGINAL_DST) said about a socket: SOL_IP for IPv4
/// sockets, SOL_IPV6 + IP6T_SO_ORIGINAL_DST for IPv6 ones.
struct OriginalDst {
  bool ok = false;
  std::string address;  ///< "ip:port" / "[ip6]:port" when ok
  int error = 0;        ///< errno when not ok; "not redirected" is ENOENT on
                        ///< 6.x kernels and ENOPROTOOPT on 6.1
};
OriginalDst original_dst(int fd);

/// A non-blocking TCP listener on ip:port (SO_REUSEADDR, IPv6 only for an
/// IPv6 address): poll before accept, or clear O_NONBLOCK; throws
/// TestSupportError if it cannot listen.
UniqueFd listen_tcp(const std::string& ip, uint16_t port, int backlog = 16);

/// A Unix stream socket listening at `path` (a stand-in for the node's
/// agent: `<state dir>/cni.sock`); throws TestSupportError if it cannot.
UniqueFd listen_unix(const std::string& path, int backlog = 8);
/// The `[heap]` line of /proc/PID/maps of the process at the other end of
/// Unix socket `fd`; "" when it has no heap; "(no peer)" when it cannot tell.
std::string peer_heap(int fd);

// ---- client ----

struct ConnectOptions {
  std::string bind_ip;     ///< source address to bind first ("" = any)
  uint16_t bind_port = 0;  ///< source port (0 = ephemeral)
  bool linger_zero = false;  ///< SO_LINGER 0: close() sends RST, no TIME_WAIT
};

struct Connection {
  UniqueFd fd;    ///< connected, blocking socket when ok()
  int error = 0;  ///< errno of the failed step (ETIMEDOUT on timeout)
  std::string detail;  ///< on a failed connect: the socket's address and TCP state then
  bool ok() const { return fd.valid(); }
};

/// Connects with a timeout. The socket is created in the calling thread's
/// namespace and process's cgroup.
Connection connect_tcp(const std::string& ip, uint16_t port, Millis timeout = kIoTimeout,
                       const ConnectOptions& options = {});

/// Sends everything; false (errno set) on error or timeout.
bool send_all(int fd, std::string_view data, Millis timeout = kIoTimeout);
/// Reads exactly n bytes, or fewer on EOF, error or timeout.
std::string recv_exact(int fd, size_t n, Millis timeout = kIoTimeout);
/// One read of whatever is available; "" on timeout, EOF or error.
std::string recv_some(int fd, Millis timeout = kIoTimeout);
/// Reads exactly one byte (of any file descriptor: a pipe too) within the
/// timeout; -1 otherwise.
int read_byte(int fd, Millis timeout);
/// "from ADDR, STATE, N retransmits": a TCP socket's address and what
/// TCP_INFO says of it (why a connect or a read timed out).
std::string tcp_state_detail(int fd);
/// SO_LINGER {1, 0}: close() resets instead of leaving TIME_WAIT.
void set_linger_zero(int fd);

struct RoundTrip {
  int error = 0;       ///< 0 when the whole payload came back
  std::string reply;   ///< what came back
  std::string local;   ///< client's getsockname
  std::string peer;    ///< client's getpeername (what the app sees)
  std::string detail;  ///< on failure: the step that failed, the socket's TCP state then (not encoded)
  bool ok() const { return error == 0; }
  /// One line that crosses a fork ("error|reply|local|peer"), and back.
  std::string encode() const;
  static RoundTrip decode(const std::string& line);
};
/// Connects, sends payload, reads payload.size() bytes back and closes.
RoundTrip tcp_roundtrip(const std::string& ip, uint16_t port, std::string_view payload = "ping",
                        Millis timeout = kIoTimeout, const ConnectOptions& options = {});

/// A round trip ("ping") made by a process in the pod (its cgroup and netns,
/// so the pod's capture applies) as `id`; the result crosses the fork.
RoundTrip roundtrip_in_pod(TestPod& pod, const std::string& ip, uint16_t port,
                           Identity id = Identity::user(1000, 1000), const ConnectOptions& options = {});
/// The same from the peer namespace (outside the pod), as root.
RoundTrip roundtrip_in_peer(TestPod& pod, const std::string& ip, uint16_t port, Millis timeout = kIoTimeout);

/// `threads` threads of one application process in the pod (as `id`) each
/// make `per_thread` round trips with distinct payloads to ip:port; returns
/// how many failed (no echo, a wrong echo, or a peer other than ip:port).
int parallel_roundtrips_in_pod(TestPod& pod, const std::string& ip, uint16_t port, int threads, int per_thread,
                               Identity id = Identity::user(1000, 1000));

// ---- servers ----

/// What a server learned about one accepted connection.
struct AcceptRecord {
  std::string peer;   ///< getpeername of the accepted socket (the client)
  std::string local;  ///< getsockname of the accepted socket
  OriginalDst original_dst;
};

/// Where a server runs. A thread shares the test process's cgroup; a process
/// placement runs in the pod cgroup, so cgroup hooks (connect4, getsockopt)
/// apply to its sockets, as they would to a proxy in the pod.
class Placement {
 public:
  /// A thread in the namespace at netns_path ("" = the caller's).
  static Placement netns(std::string netns_path);
  /// A thread in the pod's / peer's namespace; stopped by the pod's
  /// destructor if still running.
  static Placement pod_thread(TestPod& pod);
  static Placement peer_thread(TestPod& pod);
  /// A child process in the pod's cgroup and netns, or the peer's netns,
  /// running as id; stopped by the pod's destructor if still running.
  /// Create it from the test's main thread (the child dies with the thread
  /// that forked it).
  static Placement pod_process(TestPod& pod, Identity id = {});
  static Placement peer_process(TestPod& pod, Identity id = {});

 private:
  friend class TcpServer;
  std::string netns_path_;
  TestPod* pod_ = nullptr;
  bool process_ = false;
  bool in_pod_ = false;
  Identity id_;
};

struct ServerOptions {
  bool echo = true;    ///< echo received bytes back; false: read and discard
  int backlog = 4096;
};

/// A TCP server accepting any number of concurrent connections (one epoll
/// loop), recording each accepted socket. Port 0 picks a free port (port()).
/// Destroy (or stop()) it before a pod it was placed with by netns path; pod
/// placements are stopped by the pod automatically.
class TcpServer {
 public:
  /// Starts listening before returning; throws TestSupportError if it cannot.
  TcpServer(Placement where, std::string ip, uint16_t port, ServerOptions options = {});
  virtual ~TcpServer();
  TcpServer(const TcpServer&) = delete;
  TcpServer& operator=(const TcpServer&) = delete;

  /// Stops accepting, closes every connection. Idempotent.
  void stop();

  const std::string& ip() const { return ip_; }
  uint16_t port() const { return port_; }
  /// The child's pid for process placements, -1 for threads.
  pid_t pid() const { return pid_; }

  size_t accepted() const;
  std::vector<AcceptRecord> records() const;
  /// Waits until at least n connections were accepted.
  bool wait_for_accepts(size_t n, Millis timeout = kIoTimeout) const;

 private:
  void start_thread(const std::string& netns_path);
  void start_process(TestPod& pod, bool in_pod, const Identity& id);
  void add_record(AcceptRecord r);
  void detach_from_pod_and_stop();

  std::string ip_;
  uint16_t port_ = 0;
  ServerOptions options_;

  // thread placement
  UniqueFd stop_fd_;
  std::thread thread_;
  // process placement
  TestPod* pod_ = nullptr;
  int teardown_token_ = 0;
  pid_t pid_ = -1;
  std::thread reader_;

  std::mutex stop_mu_;
  bool stopped_ = false;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<AcceptRecord> records_;
};

/// An echo server (see TcpServer).
class EchoServer : public TcpServer {
 public:
  EchoServer(Placement where, std::string ip, uint16_t port)
      : TcpServer(std::move(where), std::move(ip), port, ServerOptions{}) {}
};

/// A listener that records peer, local and original destination of every
/// accepted socket, and by default echoes.
class RecordingListener : public TcpServer {
 public:
  RecordingListener(Placement where, std::string ip, uint16_t port, bool echo = true)
      : TcpServer(std::move(where), std::move(ip), port, ServerOptions{echo, 4096}) {}
};

}  // namespace meshcap::test
