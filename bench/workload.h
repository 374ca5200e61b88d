// The benchmark's own load generator and servers. Both run in forked
// children placed by the test-pod harness (client: the pod's cgroup and
// netns, so capture applies to it; servers: the peer's netns, or the pod's
// for the mechanism-only listener). Every loop is bounded in count and time,
// and every socket operation has a timeout.
//
// Why not the harness's servers and client: its TcpServer asks every
// accepted socket for SO_ORIGINAL_DST (meshcap's getsockopt program runs,
// and moves the record, in the mechanism-only view that must not), and its
// client polls before every send and receive; both would be in every sample.
// The timed loops here make only the calls the workload needs, blocking,
// bounded by SO_SNDTIMEO/SO_RCVTIMEO. Everything untimed (addresses,
// persistent connections, the probe) uses the harness.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace meshcap::bench {

/// What a server does with a connection.
enum class ServeMode { echo, sink };

struct ListenSpec {
  std::string ip;
  uint16_t port = 0;
  ServeMode mode = ServeMode::echo;
};

/// The probe request: an echo server answers a connection whose first
/// bytes are exactly this with "TAG PEER-IP:PORT\n" and closes it, so the
/// benchmark can check where a variant's connections really land.
inline constexpr const char* kWhoRequest = "WHO?\n";

/// Serves the listeners with one epoll loop until `max_seconds` pass or the
/// process is killed; writes "ready\n" to ready_fd once every listener
/// listens (or "error ...\n" and returns non-zero). `tag` answers the probe.
/// Runs in a child.
int serve(const std::vector<ListenSpec>& listeners, int ready_fd, double max_seconds, const std::string& tag);

/// Sends the probe request to ip:port (from the calling process: run it in
/// the pod) and returns "TAG PEER-IP:PORT LOCAL-IP:PORT", or "error ...".
std::string probe(const std::string& ip, uint16_t port, int timeout_ms);

/// The workloads of the load client.
enum class Workload {
  connect,     ///< connect, small request and response, close (SO_LINGER 0)
  rr,          ///< request/response on persistent connections
  throughput,  ///< one connection, bulk send to a sink for a fixed time
};

struct ClientSpec {
  Workload workload = Workload::connect;
  std::string ip;
  uint16_t port = 0;
  int connections = 1;         ///< rr: persistent connections, one request in flight each
  size_t message = 16;         ///< connect/rr: request and response size in bytes
  uint64_t count = 1000;       ///< connect/rr: samples to take (upper bound)
  uint64_t warmup = 20;        ///< connect/rr: operations before sampling starts
  double seconds = 5;          ///< connect/rr: time bound; throughput: send duration
  int io_timeout_ms = 2000;    ///< per socket operation
  std::string bind_ip;         ///< connect: bind this source address first (port chosen at connect)
  std::string cgroup;          ///< run as root, moved into this cgroup v2 directory first ("" = the pod's, as UID 1000)
  std::vector<pid_t> cpu_pids; ///< processes whose CPU time is charged to the run (servers, proxy)
  std::vector<int> cpus;       ///< CPUs whose /proc/stat busy time is charged to the run
};

/// What one client run produced. Latencies in nanoseconds, every sample
/// kept, in the order taken.
struct ClientResult {
  std::vector<uint32_t> samples_ns;
  uint64_t errors = 0;
  uint64_t elapsed_ns = 0;      ///< sampling phase wall time
  uint64_t bytes = 0;           ///< throughput: payload bytes delivered
  uint64_t client_cpu_ns = 0;   ///< getrusage(RUSAGE_SELF) user+sys during sampling
  uint64_t others_cpu_ns = 0;   ///< utime+stime of cpu_pids during sampling (/proc/PID/stat)
  uint64_t cpus_busy_ns = 0;    ///< non-idle time of `cpus` during sampling (/proc/stat)
  std::string first_error;      ///< what the first failure was
};

/// Runs the workload (in the calling process) and returns the result.
ClientResult run_client(const ClientSpec& spec);

/// Serialises a result onto a pipe / reads it back (the client runs in a
/// forked child). read_result returns false on a short or malformed stream.
bool write_result(int fd, const ClientResult& r);
bool read_result(int fd, ClientResult& r, int timeout_ms);

/// CLOCK_MONOTONIC in nanoseconds.
uint64_t now_ns();
/// setsockopt of an int option.
void set_int(int fd, int level, int opt, int v);

/// Pins the calling thread (and so processes it forks) to one CPU; false on
/// failure (errno set).
bool pin_to_cpu(int cpu);

}  // namespace meshcap::bench
