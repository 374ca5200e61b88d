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

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

namespace meshcap {

namespace {

constexpr int kOriginalDst = 80;  // SO_ORIGINAL_DST

uint32_t v4_of(const std::array<uint8_t, 16>& a) {
  uint32_t v;
  std::memcpy(&v, a.data(), 4);
  return ntohl(v);
}

bool in_cidr(uint32_t addr, const Cidr& c) {
  if (c.family != AF_INET) return false;
  const uint32_t mask = c.prefix_len == 0 ? 0 : ~uint32_t{0} << (32 - c.prefix_len);
  return (addr & mask) == (v4_of(c.addr) & mask);
}

bool in_list(uint32_t addr, const std::vector<Cidr>& l) {
  return std::any_of(l.begin(), l.end(), [&](const Cidr& c) { return in_cidr(addr, c); });
}

// The interface the pod's main table sends `addr` through (longest match).
std::string route_interface(uint32_t addr, const PodNetwork& pod) {
  int best = -1;
  std::string dev;
  for (const auto& r : pod.routes) {
    if (r.prefix.family != AF_INET) continue;
    Cidr c{AF_INET, r.prefix.addr, r.prefix_len};
    if (in_cidr(addr, c) && r.prefix_len > best) {
      best = r.prefix_len;
      dev = r.interface;
    }
  }
  return dev;
}

template <typename T>
bool contains(const std::vector<T>& v, const T& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

}  // namespace

std::optional<OutboundProbe> outbound_probe(const CaptureConfig& cfg, const PodNetwork& pod) {
  const auto& inc = cfg.outbound_ranges_include;
  const bool by_port = !cfg.outbound_ports_include.ports.empty();
  // Destinations: documentation addresses when everything (or a port) is
  // captured, else an address inside each -i prefix.
  std::vector<uint32_t> candidates;
  if (inc.wildcard || by_port)
    for (const char* s : {"192.0.2.1", "198.51.100.1", "203.0.113.1"}) {
      in_addr a{};
      inet_pton(AF_INET, s, &a);
      candidates.push_back(ntohl(a.s_addr));
    }
  for (const auto& c : inc.v4) {
    if (c.is_loopback()) continue;
    const uint32_t base = v4_of(c.addr) & (c.prefix_len == 0 ? 0 : ~uint32_t{0} << (32 - c.prefix_len));
    candidates.push_back(c.prefix_len >= 31 ? v4_of(c.addr) : base + 1);
  }
  std::optional<uint32_t> dst;
  for (uint32_t a : candidates) {
    const bool own = std::any_of(pod.addresses.begin(), pod.addresses.end(), [&](const PodAddress& p) {
      return p.family == AF_INET && v4_of(p.addr) == a;
    });
    if (own || in_list(a, cfg.outbound_ranges_exclude.v4) || (a >> 24) == 127) continue;
    if (contains(cfg.exclude_interfaces, route_interface(a, pod))) continue;
    dst = a;
    break;
  }
  if (!dst) return std::nullopt;
  // A port: a captured one (-q) or any that is not excluded (-o).
  std::optional<uint16_t> port;
  const bool dst_included = inc.wildcard || in_list(*dst, inc.v4);
  for (uint16_t p : cfg.outbound_ports_include.ports)
    if (!contains(cfg.outbound_ports_exclude.ports, p)) port = port.value_or(p);
  if (!port && dst_included)
    for (uint16_t p : {uint16_t{80}, uint16_t{443}, uint16_t{8080}, uint16_t{15099}, uint16_t{31000}})
      if (!contains(cfg.outbound_ports_exclude.ports, p)) {
        port = p;
        break;
      }
  if (!port) return std::nullopt;
  // An application's identity: not the proxy's, and inside the owner groups.
  auto free_id = [](const IdList& taken, uint32_t from) {
    while (contains(taken.ids, std::optional<uint32_t>(from))) from--;
    return from;
  };
  OutboundProbe p;
  p.uid = free_id(cfg.proxy_uids, 65534);
  if (cfg.owner_groups_except) {
    uint32_t g = 65534;
    while (contains(cfg.proxy_gids.ids, std::optional<uint32_t>(g)) ||
           contains(cfg.owner_groups.ids, std::optional<uint32_t>(g)))
      g--;
    p.gid = g;
  } else {
    std::optional<uint32_t> g;
    for (const auto& id : cfg.owner_groups.ids)
      if (id && !contains(cfg.proxy_gids.ids, id)) g = g.value_or(*id);
    if (!g) return std::nullopt;
    p.gid = *g;
  }
  in_addr a{htonl(*dst)};
  char buf[INET_ADDRSTRLEN];
  p.address = inet_ntop(AF_INET, &a, buf, sizeof(buf));
  p.port = *port;
  return p;
}

namespace {

// Forks a client that connects as `uid`/`gid` (from `bind_ip` when given)
// and waits until the connection is accepted or the child is killed.
pid_t connect_as(uint32_t uid, uint32_t gid, const std::string& bind_ip, const std::string& ip, uint16_t port) {
  pid_t client = fork();
  if (client != 0) return client;
  setgroups(0, nullptr);
  if (setgid(gid) || setuid(uid)) _exit(3);
  int c = socket(AF_INET, SOCK_STREAM, 0);
  if (!bind_ip.empty()) {
    sockaddr_in local{};
    local.sin_family = AF_INET;
    inet_pton(AF_INET, bind_ip.c_str(), &local.sin_addr);
    bind(c, reinterpret_cast<sockaddr*>(&local), sizeof(local));
  }
  sockaddr_in remote{};
  remote.sin_family = AF_INET;
  remote.sin_port = htons(port);
  inet_pton(AF_INET, ip.c_str(), &remote.sin_addr);
  _exit(connect(c, reinterpret_cast<sockaddr*>(&remote), sizeof(remote)) == 0 ? 0 : 4);
}

// Waits for one connection on `listeners` and checks its original
// destination; "" when right, else why not.
std::string expect_arrival(const std::vector<int>& listeners, const std::string& ip, uint16_t port, int timeout_ms,
                           const std::string& what) {
  std::vector<pollfd> fds;
  for (int s : listeners) fds.push_back({s, POLLIN, 0});
  if (poll(fds.data(), fds.size(), timeout_ms) <= 0)
    return what + " to " + ip + ":" + std::to_string(port) + " did not reach the proxy's ports within the probe timeout";
  for (const auto& p : fds) {
    if (!(p.revents & POLLIN)) continue;
    int conn = accept(p.fd, nullptr, nullptr);
    sockaddr_in orig{};
    socklen_t len = sizeof(orig);
    if (conn < 0 || getsockopt(conn, SOL_IP, kOriginalDst, &orig, &len))
      return what + " arrived but SO_ORIGINAL_DST failed: " + std::string(std::strerror(errno));
    close(conn);
    char got[INET_ADDRSTRLEN] = {};
    inet_ntop(AF_INET, &orig.sin_addr, got, sizeof(got));
    if (got != ip || ntohs(orig.sin_port) != port)
      return what + "'s SO_ORIGINAL_DST is " + got + ":" + std::to_string(ntohs(orig.sin_port)) + ", expected " +
             ip + ":" + std::to_string(port);
    return "";
  }
  return what + ": no connection accepted";
}

// Child side: joins the pod, listens on the proxy's ports, runs each check.
// Returns 0 when every check passed; writes what was checked (or why a
// check failed) to `report`.
int checks_in_pod(const PodTarget& pod, const Plan& plan, const PodNetwork& net, const std::string& join_cgroup,
                  int report) {
  const CaptureConfig& cfg = plan.config;
  auto say = [&](const std::string& s) { (void)!write(report, s.data(), s.size()); };
  if (!join_cgroup.empty()) {
    int fd = open((join_cgroup + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
    std::string pid = std::to_string(getpid());
    if (fd < 0 || write(fd, pid.data(), pid.size()) < 0) return say("cannot join " + join_cgroup), 1;
    close(fd);
  }
  int ns = open(pod.netns_path.c_str(), O_RDONLY | O_CLOEXEC);
  // Already there (an init container in the pod): no setns, which would need
  // CAP_SYS_ADMIN even for one's own namespace.
  struct stat target {}, own {};
  bool same = ns >= 0 && fstat(ns, &target) == 0 && stat("/proc/self/ns/net", &own) == 0 &&
              target.st_dev == own.st_dev && target.st_ino == own.st_ino;
  if (ns < 0 || (!same && setns(ns, CLONE_NEWNET))) return say("cannot enter " + pod.netns_path), 1;
  close(ns);

  std::vector<int> listeners;
  for (uint16_t port : {cfg.proxy_port, cfg.inbound_capture_port}) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 || listen(s, 16) != 0)
      return say("cannot listen on 127.0.0.1:" + std::to_string(port) + " (is the proxy running?)"), 1;
    listeners.push_back(s);
  }
  const int timeout_ms = static_cast<int>(cfg.probe_timeout_seconds * 1000);
  std::string done;
  auto check = [&](const std::string& what, uint32_t uid, uint32_t gid, const std::string& bind_ip,
                   const std::string& ip, uint16_t port) {
    pid_t client = connect_as(uid, gid, bind_ip, ip, port);
    std::string why = expect_arrival(listeners, ip, port, timeout_ms, what);
    kill(client, SIGKILL);
    waitpid(client, nullptr, 0);
    if (!why.empty()) return say(why), false;
    done += (done.empty() ? "" : "; ") + what + " to " + ip + ":" + std::to_string(port) + " captured";
    return true;
  };
  if (plan.outbound.engine != Engine::None) {
    if (auto p = outbound_probe(cfg, net)) {
      if (!check("outbound connection (uid " + std::to_string(p->uid) + ")", p->uid, p->gid, "", p->address, p->port))
        return 1;
    } else {
      done += "outbound: the flags capture no IPv4 connection leaving the pod, nothing to check; ";
    }
  }
  if (!check("istio's probe", *cfg.proxy_uids.ids.at(0), *cfg.proxy_gids.ids.at(0), "127.0.0.1", "127.0.0.6",
             cfg.iptables_probe_port))
    return 1;
  say(done);
  return 0;
}

}  // namespace

ValidationResult run_validation(const PodTarget& pod, const Plan& plan, const PodNetwork& net,
                                const std::string& programs_cgroup) {
  // A leaf of our own below the cgroup the programs are attached to (that
  // cgroup may have children and controllers, where no process may join).
  std::string join_cgroup;
  if (!programs_cgroup.empty()) {
    join_cgroup = programs_cgroup + "/meshcap-validate-" + std::to_string(getpid());
    if (mkdir(join_cgroup.c_str(), 0755) && errno != EEXIST) join_cgroup = programs_cgroup;
  }
  struct Leaf {
    std::string dir, parent;
    ~Leaf() {
      if (!dir.empty() && dir != parent) rmdir(dir.c_str());
    }
  } leaf{join_cgroup, programs_cgroup};
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC)) return {false, "pipe: " + std::string(std::strerror(errno))};
  pid_t child = fork();
  if (child < 0) return {false, "fork: " + std::string(std::strerror(errno))};
  if (child == 0) {
    close(pipefd[0]);
    _exit(checks_in_pod(pod, plan, net, join_cgroup, pipefd[1]));
  }
  close(pipefd[1]);
  std::string text;
  char buf[256];
  ssize_t n;
  while ((n = read(pipefd[0], buf, sizeof(buf))) > 0) text.append(buf, n);
  close(pipefd[0]);
  int status = 0;
  waitpid(child, &status, 0);
  return {WIFEXITED(status) && WEXITSTATUS(status) == 0, text};
}

}  // namespace meshcap
