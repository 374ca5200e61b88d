#include "validation.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>

namespace meshcap {

namespace {

constexpr int kOriginalDst = 80;  // SO_ORIGINAL_DST

// Child side. Returns 0 when the probe arrived with the expected original
// destination; writes a reason to `report` otherwise.
int probe_in_pod(const PodTarget& pod, const CaptureConfig& cfg, bool join_cgroup, int report) {
  auto fail = [&](const std::string& why) {
    (void)!write(report, why.data(), why.size());
    return 1;
  };
  if (join_cgroup) {
    int fd = open((pod.cgroup_dir + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
    std::string pid = std::to_string(getpid());
    if (fd < 0 || write(fd, pid.data(), pid.size()) < 0) return fail("cannot join " + pod.cgroup_dir);
    close(fd);
  }
  int ns = open(pod.netns_path.c_str(), O_RDONLY | O_CLOEXEC);
  // Already there (an init container in the pod): no setns, which would need
  // CAP_SYS_ADMIN even for one's own namespace.
  struct stat target {}, own {};
  bool same = ns >= 0 && fstat(ns, &target) == 0 && stat("/proc/self/ns/net", &own) == 0 &&
              target.st_dev == own.st_dev && target.st_ino == own.st_ino;
  if (ns < 0 || (!same && setns(ns, CLONE_NEWNET))) return fail("cannot enter " + pod.netns_path);
  close(ns);

  // Listen on the proxy's ports, as istio's validator does.
  std::vector<int> listeners;
  for (uint16_t port : {cfg.proxy_port, cfg.inbound_capture_port}) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0 && listen(s, 16) == 0)
      listeners.push_back(s);
    else
      close(s);
  }
  if (listeners.empty()) return fail("no listener available on the proxy's ports (is the proxy running?)");

  // The client: as the proxy's identity, 127.0.0.1 -> 127.0.0.6:PROBE.
  pid_t client = fork();
  if (client == 0) {
    setgroups(0, nullptr);
    if (setgid(*cfg.proxy_gids.ids.at(0)) || setuid(*cfg.proxy_uids.ids.at(0))) _exit(3);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in local{}, remote{};
    local.sin_family = AF_INET;
    local.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(c, reinterpret_cast<sockaddr*>(&local), sizeof(local));
    remote.sin_family = AF_INET;
    remote.sin_port = htons(cfg.iptables_probe_port);
    inet_pton(AF_INET, "127.0.0.6", &remote.sin_addr);
    _exit(connect(c, reinterpret_cast<sockaddr*>(&remote), sizeof(remote)) == 0 ? 0 : 4);
  }

  std::vector<pollfd> fds;
  for (int s : listeners) fds.push_back({s, POLLIN, 0});
  int timeout_ms = static_cast<int>(cfg.probe_timeout_seconds * 1000);
  int ready = poll(fds.data(), fds.size(), timeout_ms);
  int status = 0;
  waitpid(client, &status, 0);
  if (ready <= 0) return fail("the probe connection to 127.0.0.6:" + std::to_string(cfg.iptables_probe_port) +
                              " did not reach the proxy's ports within the probe timeout");
  for (const auto& p : fds) {
    if (!(p.revents & POLLIN)) continue;
    int conn = accept(p.fd, nullptr, nullptr);
    sockaddr_in orig{};
    socklen_t len = sizeof(orig);
    if (conn < 0 || getsockopt(conn, SOL_IP, kOriginalDst, &orig, &len))
      return fail("the probe arrived but SO_ORIGINAL_DST failed: " + std::string(std::strerror(errno)));
    char ip[INET_ADDRSTRLEN] = {};
    inet_ntop(AF_INET, &orig.sin_addr, ip, sizeof(ip));
    if (ntohs(orig.sin_port) != cfg.iptables_probe_port)
      return fail("the probe's SO_ORIGINAL_DST is " + std::string(ip) + ":" + std::to_string(ntohs(orig.sin_port)) +
                  ", expected port " + std::to_string(cfg.iptables_probe_port));
    return 0;
  }
  return fail("no probe connection accepted");
}

}  // namespace

ValidationResult run_validation(const PodTarget& pod, const CaptureConfig& cfg, bool join_cgroup) {
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC)) return {false, "pipe: " + std::string(std::strerror(errno))};
  pid_t child = fork();
  if (child < 0) return {false, "fork: " + std::string(std::strerror(errno))};
  if (child == 0) {
    close(pipefd[0]);
    _exit(probe_in_pod(pod, cfg, join_cgroup, pipefd[1]));
  }
  close(pipefd[1]);
  std::string why;
  char buf[256];
  ssize_t n;
  while ((n = read(pipefd[0], buf, sizeof(buf))) > 0) why.append(buf, n);
  close(pipefd[0]);
  int status = 0;
  waitpid(child, &status, 0);
  bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  return {ok, ok ? "probe connection redirected with the right original destination" : why};
}

}  // namespace meshcap
