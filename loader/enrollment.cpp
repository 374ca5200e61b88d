#include "enrollment.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

#include "meshcap.h"
#include "pins.h"

namespace fs = std::filesystem;

namespace meshcap::loader {

namespace {

struct Fd {
  int fd = -1;
  Fd() = default;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) close(fd);
  }
  Fd(Fd&& o) noexcept : fd(o.fd) { o.fd = -1; }
  Fd& operator=(Fd&& o) noexcept {
    std::swap(fd, o.fd);
    return *this;
  }
};

uint32_t net32(const std::array<uint8_t, 16>& a) {
  uint32_t v;
  std::memcpy(&v, a.data(), 4);
  return v;
}

mc_addr to_mc_addr(const PodAddress& a) {
  mc_addr m{};
  if (a.family == AF_INET) {
    m.ip[2] = htonl(0xffff);
    m.ip[3] = net32(a.addr);
  } else {
    std::memcpy(m.ip, a.addr.data(), 16);
  }
  return m;
}

bool is_global(const PodAddress& a) {
  const uint8_t* b = a.addr.data();
  if (a.family == AF_INET) return b[0] != 127 && !(b[0] == 169 && b[1] == 254);
  static const uint8_t loop[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  return std::memcmp(b, loop, 16) != 0 && !(b[0] == 0xfe && (b[1] & 0xc0) == 0x80);
}

// The pod's settings as the programs read them.
mc_pod pod_of(const PodSettings& s, uint32_t index) {
  const CaptureConfig& cfg = s.cfg;
  mc_pod p{};
  p.index = index;
  p.proxy_port = cfg.proxy_port;
  p.inbound_port = cfg.inbound_capture_port;
  p.tunnel_port = cfg.inbound_tunnel_port;
  auto flag = [&](bool on, uint32_t bit) {
    if (on) p.flags |= bit;
  };
  flag(cfg.outbound_ranges_include.wildcard, MC_POD_INCLUDE_ALL);
  flag(cfg.outbound_ranges_include.has_loopback_v4 || cfg.outbound_ranges_include.has_loopback_v6,
       MC_POD_INCLUDE_HAS_LOOPBACK);
  flag(cfg.owner_groups_except, MC_POD_OWNER_EXCEPT);
  flag(!cfg.owner_groups.ids.empty(), MC_POD_OWNER_GROUPS);
  flag(s.ipv6, MC_POD_IPV6);
  flag(!cfg.exclude_interfaces.empty(), MC_POD_EXCLUDED_IFACES);
  flag(s.inbound && (!cfg.exclude_interfaces.empty() || !cfg.reroute_virtual_interfaces.empty()), MC_POD_IFACES);
  flag(s.accelerate, MC_POD_ACCELERATE);
  flag(!cfg.outbound_ports_exclude.ports.empty() || !cfg.outbound_ports_include.ports.empty() ||
           (s.inbound && (!cfg.inbound_ports_include.ports.empty() || !cfg.inbound_ports_exclude.ports.empty())),
       MC_POD_PORTS);
  p.n_uids = cfg.proxy_uids.ids.size();
  for (size_t i = 0; i < p.n_uids; i++) p.uids[i] = *cfg.proxy_uids.ids[i];
  p.n_gids = cfg.proxy_gids.ids.size();
  for (size_t i = 0; i < p.n_gids; i++) p.gids[i] = *cfg.proxy_gids.ids[i];
  p.loopback4 = net32(cfg.ipv4_loopback_cidr.addr);
  p.loopback4_mask = cfg.ipv4_loopback_cidr.prefix_len == 0
                         ? 0
                         : htonl(~uint32_t{0} << (32 - cfg.ipv4_loopback_cidr.prefix_len));
  if (s.net.source4) {
    p.flags |= MC_POD_HAS_SRC4;
    p.src4 = net32(s.net.source4->addr);
  }
  if (s.net.source6) {
    p.flags |= MC_POD_HAS_SRC6;
    std::memcpy(p.src6, s.net.source6->addr.data(), 16);
  }
  p.inbound = !s.inbound                                 ? MC_INBOUND_NONE
              : cfg.inbound_ports_include.wildcard       ? MC_INBOUND_ALL
              : cfg.inbound_ports_include.ports.empty()  ? MC_INBOUND_NONE
                                                         : MC_INBOUND_LIST;
  return p;
}

// Listening TCP sockets on `ports` in a network namespace, from
// NET_DIR/tcp{,6} (/proc/PID/net for a process's): socket inode -> port.
std::map<unsigned long, uint16_t> listening_inodes(const std::string& net_dir, const std::vector<uint16_t>& ports) {
  std::map<unsigned long, uint16_t> out;
  for (const char* file : {"tcp", "tcp6"}) {
    std::ifstream in(net_dir + "/" + file);
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
      std::istringstream w(line);
      std::string sl, local, remote, st, queues, timer, retr, uid, timeout;
      unsigned long inode = 0;
      if (!(w >> sl >> local >> remote >> st >> queues >> timer >> retr >> uid >> timeout >> inode)) continue;
      if (st != "0A") continue;  // TCP_LISTEN
      uint16_t port = static_cast<uint16_t>(std::stoul(local.substr(local.find(':') + 1), nullptr, 16));
      if (std::count(ports.begin(), ports.end(), port)) out[inode] = port;
    }
  }
  return out;
}

// Whether a TCP socket of the calling thread's network namespace listens
// on one of `ports`: an inet_diag dump of listening sockets only (the
// kernel walks its listening hash, not every connection of the machine as
// /proc/net/tcp does). True when it cannot tell.
bool listening_here(const std::vector<uint16_t>& ports) {
  Fd nl(socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (nl.fd < 0) return true;
  for (const uint8_t family : {AF_INET, AF_INET6}) {
    struct {
      nlmsghdr h;
      inet_diag_req_v2 r;
    } req{};
    req.h.nlmsg_len = sizeof req;
    req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.r.sdiag_family = family;
    req.r.sdiag_protocol = IPPROTO_TCP;
    req.r.idiag_states = 1u << 10;  // TCP_LISTEN
    if (send(nl.fd, &req, sizeof req, 0) != static_cast<ssize_t>(sizeof req)) return true;
    alignas(nlmsghdr) char buf[16384];
    for (bool done = false; !done;) {
      const ssize_t got = recv(nl.fd, buf, sizeof buf, 0);
      if (got <= 0) return true;
      int left = static_cast<int>(got);
      for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
        if (h->nlmsg_type == NLMSG_DONE) {
          done = true;
          break;
        }
        if (h->nlmsg_type == NLMSG_ERROR) return true;
        const auto* m = static_cast<const inet_diag_msg*>(NLMSG_DATA(h));
        if (std::count(ports.begin(), ports.end(), ntohs(m->id.idiag_sport))) return true;
      }
    }
  }
  return false;
}

// Whether anything in the namespace at `netns_path` listens on `ports`,
// asked from a thread inside it (setns is per thread). A pod whose proxy
// is not running yet -- every pod the CNI plugin adds -- then costs no walk
// over every process of the node. True when it cannot tell.
bool listens_in_netns(const std::string& netns_path, const std::vector<uint16_t>& ports) {
  Fd ns(open(netns_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (ns.fd < 0) return true;
  bool found = true;
  std::thread([&] {
    if (setns(ns.fd, CLONE_NEWNET) == 0) found = listening_here(ports);
  }).join();
  return found;
}

// Rows written by one enrolment, to take back if it fails: map fd and key.
struct Undo {
  std::vector<std::pair<int, std::vector<uint8_t>>> keys;
  template <typename K>
  void add(int fd, const K& k) {
    const auto* b = reinterpret_cast<const uint8_t*>(&k);
    keys.push_back({fd, std::vector<uint8_t>(b, b + sizeof(K))});
  }
  void run() {
    for (auto it = keys.rbegin(); it != keys.rend(); ++it) bpf_map_delete_elem(it->first, it->second.data());
  }
};

template <typename K, typename V>
void put(int fd, const K& k, const V& v, Undo& undo, const std::string& what, uint64_t flags = BPF_ANY,
         Part part = Part::Outbound) {
  if (bpf_map_update_elem(fd, &k, &v, flags)) {
    int err = errno;
    throw LoaderError("enrol: " + what, err,
                      err == E2BIG || err == ENOSPC ? "the data path's table is full" : "", part);
  }
  undo.add(fd, k);
}

// Deletes the keys of `fd` whose first 32 bits (the pod index) match, or
// for the tries whose tag says so.
void delete_where(int fd, const std::function<bool(const uint8_t*)>& match) {
  bpf_map_info info{};
  __u32 len = sizeof(info);
  if (bpf_obj_get_info_by_fd(fd, &info, &len)) return;
  std::vector<std::vector<uint8_t>> doomed;
  std::vector<uint8_t> key(info.key_size), next(info.key_size);
  void* prev = nullptr;
  while (bpf_map_get_next_key(fd, prev, next.data()) == 0) {
    key = next;
    prev = key.data();
    if (match(key.data())) doomed.push_back(key);
  }
  for (auto& k : doomed) bpf_map_delete_elem(fd, k.data());
}

// Puts the listening sockets of a proxy already running in the pod into
// the listeners map under the pod's index (processes that listen later are
// tagged at bind and filed by sockops). A proxy that listens but cannot be
// adopted would see inbound refused until it listens again: inbound is
// then not eBPF's to do (LoaderError, Part::Inbound).
void adopt_listeners(int listeners_fd, uint32_t index, const std::string& netns_path, const CaptureConfig& cfg,
                     Undo& undo) {
  fault_point("adopt", Part::Inbound);
  struct stat ns {};
  if (stat(netns_path.c_str(), &ns)) return;
  const std::vector<uint16_t> ports = {cfg.inbound_capture_port, cfg.proxy_port};
  if (!listens_in_netns(netns_path, ports)) return;
  std::error_code ec;
  for (const auto& proc : fs::directory_iterator("/proc", ec)) {
    const std::string pid_s = proc.path().filename();
    if (pid_s.find_first_not_of("0123456789") != std::string::npos) continue;
    struct stat pns {};
    if (stat((proc.path() / "ns/net").c_str(), &pns) || pns.st_ino != ns.st_ino || pns.st_dev != ns.st_dev) continue;
    const pid_t pid = std::stoi(pid_s);
    auto inodes = listening_inodes(proc.path() / "net", ports);
    if (inodes.empty()) continue;
    std::error_code fec;
    for (const auto& fdent : fs::directory_iterator(proc.path() / "fd", fec)) {
      std::error_code lec;
      const std::string target = fs::read_symlink(fdent.path(), lec);
      if (lec || target.rfind("socket:[", 0) != 0) continue;
      auto it = inodes.find(std::stoul(target.substr(8)));
      if (it == inodes.end()) continue;
      const std::string what = "adopt the proxy's listener on port " + std::to_string(it->second) + " from pid " + pid_s;
      // A copy of the proxy's socket (pidfd_getfd, Linux 5.6).
      Fd pidfd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
      if (pidfd.fd < 0) {
        if (errno == ESRCH) continue;  // gone meanwhile
        throw LoaderError(what, errno, "pidfd_open", Part::Inbound);
      }
      Fd sock(static_cast<int>(syscall(SYS_pidfd_getfd, pidfd.fd, std::stoi(fdent.path().filename()), 0)));
      if (sock.fd < 0) {
        if (errno == ESRCH || errno == EBADF) continue;
        throw LoaderError(what, errno, "pidfd_getfd", Part::Inbound);
      }
      sockaddr_storage sa{};
      socklen_t len = sizeof(sa);
      if (getsockname(sock.fd, reinterpret_cast<sockaddr*>(&sa), &len)) continue;
      const uint32_t v6 = sa.ss_family == AF_INET6;
      const mc_listener_key key{index, (it->second == cfg.inbound_capture_port ? MC_LISTENER_IN4 : MC_LISTENER_OUT4) + v6};
      const uint64_t value = static_cast<uint64_t>(sock.fd);
      if (bpf_map_update_elem(listeners_fd, &key, &value, BPF_ANY)) throw LoaderError(what, errno, "listeners map", Part::Inbound);
      undo.add(listeners_fd, key);
      spdlog::info("adopted the proxy's listener on port {} from pid {}", it->second, pid);
      inodes.erase(it);
    }
  }
}

// The lowest index no enrolled pod holds; throws when the data path is full
// (a pod enrolled again keeps its place).
uint32_t free_index(const std::string& name, const std::map<uint64_t, uint32_t>& pods, bool enrolled_before,
                    uint32_t capacity) {
  std::set<uint32_t> used;
  for (const auto& [c, i] : pods) used.insert(i);
  uint32_t index = 0;
  while (used.count(index)) index++;
  if (index >= capacity || (!enrolled_before && pods.size() >= capacity))
    throw LoaderError("enrol " + name, ENOSPC,
                      "the data path holds its maximum of " + std::to_string(capacity) + " pods (--max-pods)");
  return index;
}

// Moves the new sk_lookup link's pin over the old one with rename(); the old
// link is detached explicitly (a process may still hold it).
void replace_link_pin(const std::string& link_pin, const std::string& new_link_pin) {
  Fd old(bpf_obj_get(link_pin.c_str()));
  if (rename(new_link_pin.c_str(), link_pin.c_str())) spdlog::warn("cannot pin {}: {}", link_pin, std::strerror(errno));
  if (old.fd >= 0) bpf_link_detach(old.fd);
}

// Removes what a data path at `dir` pinned for pod `name` (pods/NAME), and
// pods/ itself once no pod has pins there: the data path's directory is
// then as `meshcap node start` made it. True when there was something.
// The caller serializes enrolments (the node lock).
bool remove_pod_pins(const std::string& dir, const std::string& name) {
  const std::string pins = pod_pins(dir, name);
  std::error_code ec;
  const bool was = fs::exists(pins, ec);
  if (was) remove_tree(pins);
  rmdir(fs::path(pins).parent_path().c_str());  // only when empty
  return was;
}

uint32_t first_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

}  // namespace

struct PodTable::Fds {
  Fd pods, pod_by_addr, pod_addrs, pod_ports, cidrs4, cidrs6, owner_gids, iface_flags, listeners, counters, dirty;
  Fd sk_lookup;

  // Fresh counters for the index.
  void reset_counters(uint32_t index) {
    const int ncpu = std::max(libbpf_num_possible_cpus(), 1);
    std::vector<uint64_t> zeros(ncpu, 0);
    for (uint32_t c = 0; c < MC_CNT__MAX; c++) {
      uint32_t key = index * MC_CNT__MAX + c;
      bpf_map_update_elem(counters.fd, &key, zeros.data(), BPF_ANY);
    }
  }

  // The pod's rows under `index`: addresses, ports, ranges, routes, owner
  // groups, interfaces.
  void put_rows(uint32_t index, const PodSettings& s, Undo& undo) {
    const uint8_t one = 1;
    for (const auto& a : s.net.addresses) put(pod_addrs.fd, mc_pod_addr{index, to_mc_addr(a)}, one, undo, "address " + a.str());
    put_ports(index, s, undo);
    put_cidrs(index, s.cfg.outbound_ranges_exclude, MC_CIDR_EXCLUDE, undo);
    put_cidrs(index, s.cfg.outbound_ranges_include, MC_CIDR_INCLUDE, undo);
    if (!s.cfg.exclude_interfaces.empty()) put_routes(index, s, undo);
    for (const auto& g : s.cfg.owner_groups.ids) put(owner_gids.fd, mc_pod_u32{index, *g}, one, undo, "owner group " + std::to_string(*g));
    for (const auto& n : s.cfg.exclude_interfaces) put_interface_flag(index, s.net, n, MC_IF_EXCLUDE, undo);
    if (s.inbound)
      for (const auto& n : s.cfg.reroute_virtual_interfaces) put_interface_flag(index, s.net, n, MC_IF_VIRT, undo);
  }

  void put_ports(uint32_t index, const PodSettings& s, Undo& undo) {
    std::map<uint16_t, uint8_t> ports;
    for (auto p : s.cfg.outbound_ports_exclude.ports) ports[p] |= MC_PORT_OUT_EXCLUDE;
    for (auto p : s.cfg.outbound_ports_include.ports) ports[p] |= MC_PORT_OUT_INCLUDE;
    if (s.inbound) {
      for (auto p : s.cfg.inbound_ports_include.ports) ports[p] |= MC_PORT_IN_INCLUDE;
      for (auto p : s.cfg.inbound_ports_exclude.ports) ports[p] |= MC_PORT_IN_EXCLUDE;
    }
    for (const auto& [port, bits] : ports) put(pod_ports.fd, mc_pod_port{index, port}, bits, undo, "port " + std::to_string(port));
  }

  void put_cidrs(uint32_t index, const CidrList& list, mc_cidr_kind kind, Undo& undo) {
    const uint8_t one = 1;
    for (const auto& c : list.v4) put(cidrs4.fd, mc_lpm4{32u + c.prefix_len, MC_LPM_TAG(index, kind), net32(c.addr)}, one, undo, c.str());
    for (const auto& c : list.v6) {
      mc_lpm6 k{32u + c.prefix_len, MC_LPM_TAG(index, kind), {}};
      std::memcpy(k.addr, c.addr.data(), 16);
      put(cidrs6.fd, k, one, undo, c.str());
    }
  }

  // The main table, each prefix marked by whether it leaves through a -c
  // interface; the programs take the longest match.
  void put_routes(uint32_t index, const PodSettings& s, Undo& undo) {
    for (const auto& r : s.net.routes) {
      const uint8_t excluded =
          std::count(s.cfg.exclude_interfaces.begin(), s.cfg.exclude_interfaces.end(), r.interface) > 0;
      const std::string what = "route " + r.prefix.str() + "/" + std::to_string(r.prefix_len) + " dev " + r.interface;
      if (r.prefix.family == AF_INET) {
        put(cidrs4.fd, mc_lpm4{32u + r.prefix_len, MC_LPM_TAG(index, MC_CIDR_ROUTE), net32(r.prefix.addr)}, excluded, undo, what);
      } else {
        mc_lpm6 k{32u + r.prefix_len, MC_LPM_TAG(index, MC_CIDR_ROUTE), {}};
        std::memcpy(k.addr, r.prefix.addr.data(), 16);
        put(cidrs6.fd, k, excluded, undo, what);
      }
    }
  }

  void put_interface_flag(uint32_t index, const PodNetwork& net, const std::string& n, uint8_t bit, Undo& undo) {
    auto it = net.interfaces.find(n);
    if (it == net.interfaces.end()) return;
    mc_pod_u32 k{index, it->second};
    uint8_t v = 0;
    bpf_map_lookup_elem(iface_flags.fd, &k, &v);
    v |= bit;
    put(iface_flags.fd, k, v, undo, "interface " + n);
  }

  // Files the pod's global addresses under its cookie, for sk_lookup;
  // refuses an address another pod holds.
  void claim_addresses(const std::string& name, uint64_t cookie, const PodSettings& s, Undo& undo) {
    for (const auto& a : s.net.addresses) {
      if (!is_global(a)) continue;
      const mc_addr key = to_mc_addr(a);
      uint64_t holder = 0;
      if (bpf_map_lookup_elem(pod_by_addr.fd, &key, &holder) == 0 && holder != cookie)
        throw LoaderError("enrol " + name, EADDRINUSE, "address " + a.str() + " is enrolled by another pod",
                          Part::Inbound);
      if (bpf_map_update_elem(pod_by_addr.fd, &key, &cookie, BPF_ANY))
        throw LoaderError("enrol " + name + ": address " + a.str(), errno, "", Part::Inbound);
      if (holder != cookie) undo.add(pod_by_addr.fd, key);
    }
  }

  // Attaches sk_lookup to the pod's namespace (`link`, set as soon as it
  // exists so a failure can detach it) and pins the link at `new_link_pin`.
  void attach_sk_lookup(const std::string& netns_path, const std::string& pins, const std::string& new_link_pin,
                        Fd& link) {
    Fd ns(open(netns_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (ns.fd < 0) throw LoaderError("open " + netns_path, errno, "", Part::Inbound);
    link = Fd(bpf_link_create(sk_lookup.fd, ns.fd, BPF_SK_LOOKUP, nullptr));
    if (link.fd < 0) throw LoaderError("attach sk_lookup to " + netns_path, errno, "", Part::Inbound);
    make_pin_dirs(pins);
    unlink(new_link_pin.c_str());
    if (bpf_obj_pin(link.fd, new_link_pin.c_str())) throw LoaderError("pin " + new_link_pin, errno, "", Part::Inbound);
  }

  // Removes the addresses filed under `cookie` that the pod no longer has
  // (all of them without inbound capture).
  void drop_old_addresses(uint64_t cookie, const PodSettings& s) {
    const int fd = pod_by_addr.fd;
    delete_where(fd, [&](const uint8_t* k) {
      uint64_t holder = 0;
      if (bpf_map_lookup_elem(fd, k, &holder) || holder != cookie) return false;
      if (!s.inbound) return true;
      mc_addr a;
      std::memcpy(&a, k, sizeof(a));
      return std::none_of(s.net.addresses.begin(), s.net.addresses.end(), [&](const PodAddress& p) {
        mc_addr m = to_mc_addr(p);
        return std::memcmp(&m, &a, sizeof(a)) == 0;
      });
    });
  }
};

PodTable::PodTable(std::string datapath_dir) : dir_(std::move(datapath_dir)), fds_(std::make_unique<Fds>()) {
  auto open = [&](const std::string& pin, bool required = true) {
    Fd fd(bpf_obj_get((dir_ + "/" + pin).c_str()));
    if (fd.fd < 0 && required) throw LoaderError("open " + dir_ + "/" + pin, errno, "no data path pinned there");
    return fd;
  };
  auto& f = *fds_;
  f.pods = open("map_pods");
  f.pod_by_addr = open("map_pod_by_addr");
  f.pod_addrs = open("map_pod_addrs");
  f.pod_ports = open("map_pod_ports");
  f.cidrs4 = open("map_cidrs4");
  f.cidrs6 = open("map_cidrs6");
  f.owner_gids = open("map_owner_gids");
  f.iface_flags = open("map_iface_flags");
  f.listeners = open("map_listeners");
  f.counters = open("map_counters");
  f.dirty = open("map_pod_dirty");
  f.sk_lookup = open("prog_sk_lookup", false);
  bpf_map_info info{};
  __u32 len = sizeof(info);
  if (bpf_obj_get_info_by_fd(f.pods.fd, &info, &len) == 0) capacity_ = info.max_entries;
}

PodTable::~PodTable() = default;

std::map<uint64_t, uint32_t> PodTable::enrolled() const {
  std::map<uint64_t, uint32_t> out;
  uint64_t key = 0, next = 0;
  const uint64_t* prev = nullptr;
  mc_pod p{};
  while (bpf_map_get_next_key(fds_->pods.fd, prev, &next) == 0) {
    key = next;
    prev = &key;
    if (bpf_map_lookup_elem(fds_->pods.fd, &key, &p) == 0) out[key] = p.index;
  }
  return out;
}

void PodTable::set_dirty(uint32_t index, bool dirty) {
  const uint8_t v = dirty;
  bpf_map_update_elem(fds_->dirty.fd, &index, &v, BPF_ANY);
}

bool PodTable::is_dirty(uint32_t index) const {
  uint8_t v = 0;
  return bpf_map_lookup_elem(fds_->dirty.fd, &index, &v) == 0 && v;
}

void PodTable::delete_rows(uint32_t index) {
  auto& f = *fds_;
  auto by_index = [index](const uint8_t* k) { return first_u32(k) == index; };
  for (int fd : {f.pod_addrs.fd, f.pod_ports.fd, f.owner_gids.fd, f.iface_flags.fd}) delete_where(fd, by_index);
  auto by_tag = [index](const uint8_t* k) { return (first_u32(k + 4) >> 2) == index; };  // after prefixlen
  delete_where(f.cidrs4.fd, by_tag);
  delete_where(f.cidrs6.fd, by_tag);
  for (uint32_t slot = 0; slot < MC_LISTENER__MAX; slot++) {
    mc_listener_key k{index, slot};
    bpf_map_delete_elem(f.listeners.fd, &k);
  }
}

Enrolment PodTable::enroll(const std::string& name, uint64_t cookie, const std::string& netns_path,
                           const PodSettings& s) {
  validate_pod_name(name);
  auto& f = *fds_;
  fault_point("enroll");
  if (cookie == 0) throw LoaderError("enrol " + name, EINVAL, "the namespace's cookie is unknown");
  const auto pods = enrolled();
  std::optional<uint32_t> old_index;
  if (auto it = pods.find(cookie); it != pods.end()) old_index = it->second;
  const uint32_t index = free_index(name, pods, old_index.has_value(), capacity_);

  // Rows an enrolment or removal killed half-way left under this index.
  if (is_dirty(index)) delete_rows(index);
  set_dirty(index, true);
  Undo undo;
  const std::string pins = pod_pins(dir_, name);
  const std::string link_pin = pins + "/link_sk_lookup";
  const std::string new_link_pin = pins + "/link_sk_lookup_new";
  Fd link;
  try {
    const mc_pod pod = pod_of(s, index);
    f.reset_counters(index);
    f.put_rows(index, s, undo);
    if (s.inbound) {
      if (f.sk_lookup.fd < 0)
        throw LoaderError("enrol " + name, EOPNOTSUPP, "the data path was loaded without sk_lookup", Part::Inbound);
      adopt_listeners(f.listeners.fd, index, netns_path, s.cfg, undo);
      f.claim_addresses(name, cookie, s, undo);
      fault_point("sk_lookup", Part::Inbound);
      f.attach_sk_lookup(netns_path, pins, new_link_pin, link);
    }
    fault_point("enabled");
    // The commit: from here the pod is captured with these settings.
    if (bpf_map_update_elem(f.pods.fd, &cookie, &pod, BPF_ANY))
      throw LoaderError("enrol " + name, errno, errno == E2BIG ? "the data path holds its maximum of pods" : "");
  } catch (...) {
    undo.run();
    set_dirty(index, false);
    if (link.fd >= 0) bpf_link_detach(link.fd);
    unlink(new_link_pin.c_str());
    // Directories this call made for the pod's pins (only when empty).
    rmdir(pins.c_str());
    rmdir(fs::path(pins).parent_path().c_str());
    throw;
  }
  set_dirty(index, false);
  // The pod's previous settings, and its previous sk_lookup link, go.
  if (old_index) {
    set_dirty(*old_index, true);
    delete_rows(*old_index);
    set_dirty(*old_index, false);
  }
  if (s.inbound) {
    replace_link_pin(link_pin, new_link_pin);
  } else {
    remove_pod_pins(dir_, name);
  }
  f.drop_old_addresses(cookie, s);
  return {index, cookie};
}

bool PodTable::unenroll(const std::string& name, uint64_t cookie) {
  auto& f = *fds_;
  bool removed = false;
  mc_pod p{};
  if (cookie && bpf_map_lookup_elem(f.pods.fd, &cookie, &p) == 0) {
    set_dirty(p.index, true);
    bpf_map_delete_elem(f.pods.fd, &cookie);  // capture off first
    delete_rows(p.index);
    set_dirty(p.index, false);
    removed = true;
  }
  if (cookie)
    delete_where(f.pod_by_addr.fd, [&](const uint8_t* k) {
      uint64_t holder = 0;
      bool mine = bpf_map_lookup_elem(f.pod_by_addr.fd, k, &holder) == 0 && holder == cookie;
      removed |= mine;
      return mine;
    });
  removed |= remove_pod_pins(dir_, name);
  return removed;
}

uint64_t netns_cookie(uint64_t known, const std::string& netns_path, const std::string& datapath_dir,
                      const std::string& cgroup_dir) {
  if (known) return known;
  Fd probe(bpf_obj_get((datapath_dir + "/map_cookie_probe").c_str()));
  if (probe.fd < 0) throw LoaderError("open " + datapath_dir + "/map_cookie_probe", errno);
  // A child of ours, in a cgroup below the data path's and in the pod's
  // namespace, makes the marked connect that connect4 answers.
  const std::string leaf = cgroup_dir + "/meshcap-cookie-" + std::to_string(getpid());
  const bool own_leaf = mkdir(leaf.c_str(), 0755) == 0;
  pid_t child = fork();
  if (child == 0) {
    const std::string pid = std::to_string(getpid());
    int cg = open(((own_leaf ? leaf : cgroup_dir) + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
    if (cg < 0 || write(cg, pid.data(), pid.size()) < 0) _exit(2);
    close(cg);
    int ns = open(netns_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (ns < 0 || setns(ns, CLONE_NEWNET)) _exit(3);
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    uint32_t mark = MC_COOKIE_MARK;
    if (s < 0 || setsockopt(s, SOL_SOCKET, SO_MARK, &mark, sizeof(mark))) _exit(4);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(MC_COOKIE_PROBE_PORT);
    sa.sin_addr.s_addr = htonl(MC_COOKIE_PROBE_ADDR);
    _exit(connect(s, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0 ? 5 : 0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  if (own_leaf) rmdir(leaf.c_str());
  uint32_t key = static_cast<uint32_t>(child);
  uint64_t cookie = 0;
  if (bpf_map_lookup_elem(probe.fd, &key, &cookie) || cookie == 0)
    throw LoaderError("learn the cookie of " + netns_path, ENOENT,
                      "the data path's connect4 program did not see the probe (exit " +
                          std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) + ")");
  bpf_map_delete_elem(probe.fd, &key);
  return cookie;
}

}  // namespace meshcap::loader
