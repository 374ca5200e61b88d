#include "enrollment.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
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
#include <vector>

#include <spdlog/spdlog.h>

#include "bpf_sys.h"
#include "meshcap.h"
#include "pins.h"
#include "pod_netns.h"

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
  const bool dns = dns_redirect_active(cfg);
  flag(dns, MC_POD_DNS);
  flag(dns && (cfg.capture_all_dns || !cfg.dns_servers_v4.empty()), MC_POD_DNS4);
  flag(dns && (cfg.capture_all_dns || !cfg.dns_servers_v6.empty()), MC_POD_DNS6);
  flag(dns && cfg.capture_all_dns, MC_POD_DNS_ALL);
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

// The ports anything in the namespace at `netns_path` listens on, asked
// from inside it. A pod whose proxy is not running yet -- every pod the CNI
// plugin adds -- then costs no walk over every process of the node.
// nullopt when it cannot tell.
std::optional<std::set<uint16_t>> listening_in_netns(const std::string& netns_path) {
  std::optional<std::set<uint16_t>> listening;
  try {
    in_network_namespace(netns_path, [&] { listening = listening_ports_here(); });
  } catch (const LoaderError&) {
    return std::nullopt;
  }
  return listening;
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

// The per-pod tables a row can be in (the journal's map ids).
enum RowMap : uint8_t {
  kRowHeader = 0,  // the journal's first entry: index and cookie
  kRowPodAddrs = 1,
  kRowPodPorts = 2,
  kRowCidrs4 = 3,
  kRowCidrs6 = 4,
  kRowOwnerGids = 5,
  kRowIfaceFlags = 6,
  kRowPodByAddr = 7,  // deleted only while it still names the pod's cookie
};

// One row of a pod: which table, its key, its value (every per-pod table
// holds one byte), and what it is, for errors ("port 15020",
// "10.0.0.0/8"; empty for rows read back from a journal).
struct Row {
  uint8_t map = 0;
  std::vector<uint8_t> key;
  uint8_t value = 0;
  std::string what;
  template <typename K>
  static Row of(uint8_t map, const K& k, uint8_t value, std::string what) {
    const auto* b = reinterpret_cast<const uint8_t*>(&k);
    return {map, std::vector<uint8_t>(b, b + sizeof(K)), value, std::move(what)};
  }
  bool operator==(const Row& o) const { return map == o.map && key == o.key; }
};

// The journal of a pod: the rows written for it, in a small array map
// pinned beside the pod (pods/NAME/map_rows), so removing the pod deletes
// its rows by key instead of walking tables every pod shares. Entry 0 says
// which index and cookie the rows are for.
struct JournalEntry {
  uint8_t map;
  uint8_t key_len;
  uint8_t pad[6];
  uint8_t key[24];
};
static_assert(sizeof(JournalEntry) == 32);
static_assert(sizeof(mc_lpm6) <= sizeof(JournalEntry::key));

struct Journal {
  uint32_t index = 0;
  uint64_t cookie = 0;
  std::vector<Row> rows;
};

// Creates the journal map for `j` (not pinned): one map create and one
// batch update.
Fd create_journal(const Journal& j) {
  std::vector<JournalEntry> entries(j.rows.size() + 1);
  JournalEntry& head = entries[0];
  head = {};
  head.map = kRowHeader;
  std::memcpy(head.key, &j.index, 4);
  std::memcpy(head.key + 8, &j.cookie, 8);
  for (size_t i = 0; i < j.rows.size(); i++) {
    JournalEntry& e = entries[i + 1];
    e = {};
    e.map = j.rows[i].map;
    e.key_len = static_cast<uint8_t>(j.rows[i].key.size());
    std::memcpy(e.key, j.rows[i].key.data(), j.rows[i].key.size());
  }
  const auto n = static_cast<uint32_t>(entries.size());
  Fd fd(create_plain_array(sizeof(JournalEntry), n));
  if (fd.fd < 0) throw LoaderError("enrol: create the pod's journal", errno);
  std::vector<uint32_t> keys(n);
  for (uint32_t i = 0; i < n; i++) keys[i] = i;
  uint32_t count = n;
  if (bpf_map_update_batch(fd.fd, keys.data(), entries.data(), &count, nullptr)) {
    for (uint32_t i = 0; i < n; i++)  // kernels without batched array updates
      if (bpf_map_update_elem(fd.fd, &keys[i], &entries[i], BPF_ANY))
        throw LoaderError("enrol: write the pod's journal", errno);
  }
  return fd;
}

// Reads every entry of an array map of `n` entries of `size` bytes.
bool read_array(int fd, uint32_t n, size_t size, void* out) {
  std::vector<uint32_t> keys(n);
  uint32_t count = n, next = 0;
  const int r = bpf_map_lookup_batch(fd, nullptr, &next, keys.data(), out, &count, nullptr);
  if ((r == 0 || errno == ENOENT) && count == n) return true;
  auto* bytes = static_cast<uint8_t*>(out);
  for (uint32_t i = 0; i < n; i++)  // kernels without batched lookups
    if (bpf_map_lookup_elem(fd, &i, bytes + i * size)) return false;
  return true;
}

// The journal pinned at `pin`; nullopt when there is none (a pod enrolled
// by an older meshcap, or one whose enrolment was killed before it).
std::optional<Journal> read_journal(const std::string& pin) {
  Fd fd(bpf_obj_get(pin.c_str()));
  if (fd.fd < 0) return std::nullopt;
  bpf_map_info info{};
  __u32 len = sizeof(info);
  if (bpf_obj_get_info_by_fd(fd.fd, &info, &len) || info.value_size != sizeof(JournalEntry) || info.max_entries == 0)
    return std::nullopt;
  std::vector<JournalEntry> entries(info.max_entries);
  if (!read_array(fd.fd, info.max_entries, sizeof(JournalEntry), entries.data()) || entries[0].map != kRowHeader)
    return std::nullopt;
  Journal j;
  std::memcpy(&j.index, entries[0].key, 4);
  std::memcpy(&j.cookie, entries[0].key + 8, 8);
  for (size_t i = 1; i < entries.size(); i++) {
    const JournalEntry& e = entries[i];
    if (e.key_len > sizeof(e.key)) return std::nullopt;
    j.rows.push_back({e.map, std::vector<uint8_t>(e.key, e.key + e.key_len), 0, ""});
  }
  return j;
}

// Pins `fd` at `path`, in place of whatever a killed enrolment left there
// (tried first as it usually is: nothing). False with errno set.
bool pin_afresh(int fd, const std::string& path) {
  if (bpf_obj_pin(fd, path.c_str()) == 0) return true;
  if (errno != EEXIST) return false;
  unlink(path.c_str());
  return bpf_obj_pin(fd, path.c_str()) == 0;
}

// Puts the listening sockets of a proxy already running in the pod into
// the listeners map under the pod's index (processes that listen later are
// tagged at bind and filed by sockops). A proxy that listens but cannot be
// adopted would see inbound refused until it listens again: inbound is
// then not eBPF's to do (LoaderError, Part::Inbound).
void adopt_listeners(int listeners_fd, uint32_t index, const std::string& netns_path, const CaptureConfig& cfg,
                     const std::optional<std::set<uint16_t>>& known, Undo& undo) {
  fault_point("adopt", Part::Inbound);
  struct stat ns {};
  if (stat(netns_path.c_str(), &ns)) return;
  const std::vector<uint16_t> ports = {cfg.inbound_capture_port, cfg.proxy_port};
  // What the namespace listened on when it was read, else asked now; when
  // nobody can tell, the processes are searched.
  const auto listening = known ? known : listening_in_netns(netns_path);
  if (listening && std::none_of(ports.begin(), ports.end(), [&](uint16_t p) { return listening->count(p) > 0; })) return;
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
  Fd pods, pod_by_addr, pod_addrs, pod_ports, cidrs4, cidrs6, owner_gids, iface_flags, listeners, counters, slots;
  Fd sk_lookup;

  int fd_of(uint8_t map) const {
    switch (map) {
      case kRowPodAddrs: return pod_addrs.fd;
      case kRowPodPorts: return pod_ports.fd;
      case kRowCidrs4: return cidrs4.fd;
      case kRowCidrs6: return cidrs6.fd;
      case kRowOwnerGids: return owner_gids.fd;
      case kRowIfaceFlags: return iface_flags.fd;
      case kRowPodByAddr: return pod_by_addr.fd;
      default: return -1;
    }
  }

  // Fresh counters for the index, in one batched update.
  void reset_counters(uint32_t index) {
    const size_t ncpu = std::max(libbpf_num_possible_cpus(), 1);
    std::vector<uint32_t> keys(MC_CNT__MAX);
    for (uint32_t c = 0; c < MC_CNT__MAX; c++) keys[c] = index * MC_CNT__MAX + c;
    std::vector<uint64_t> zeros(ncpu * MC_CNT__MAX, 0);
    uint32_t count = MC_CNT__MAX;
    if (bpf_map_update_batch(counters.fd, keys.data(), zeros.data(), &count, nullptr) == 0) return;
    for (uint32_t c = 0; c < MC_CNT__MAX; c++) bpf_map_update_elem(counters.fd, &keys[c], zeros.data(), BPF_ANY);
  }

  mc_pod_slot slot(uint32_t index) const {
    mc_pod_slot v{};
    bpf_map_lookup_elem(slots.fd, &index, &v);
    return v;
  }
  void set_slot(uint32_t index, uint64_t cookie, uint32_t flags) {
    const mc_pod_slot v{cookie, flags, 0};
    bpf_map_update_elem(slots.fd, &index, &v, BPF_ANY);
  }
  std::vector<mc_pod_slot> all_slots(uint32_t capacity) const {
    std::vector<mc_pod_slot> out(capacity);
    if (!read_array(slots.fd, capacity, sizeof(mc_pod_slot), out.data()))
      throw LoaderError("read the data path's pod slots", errno);
    return out;
  }

  // The pod's rows under `index`: addresses, ports, ranges, routes, owner
  // groups, interfaces -- computed before anything is written.
  static std::vector<Row> rows_of(uint32_t index, const PodSettings& s) {
    std::vector<Row> rows;
    for (const auto& a : s.net.addresses)
      rows.push_back(Row::of(kRowPodAddrs, mc_pod_addr{index, to_mc_addr(a)}, 1, "address " + a.str()));
    std::map<uint16_t, uint8_t> ports;
    for (auto p : s.cfg.outbound_ports_exclude.ports) ports[p] |= MC_PORT_OUT_EXCLUDE;
    for (auto p : s.cfg.outbound_ports_include.ports) ports[p] |= MC_PORT_OUT_INCLUDE;
    if (s.inbound) {
      for (auto p : s.cfg.inbound_ports_include.ports) ports[p] |= MC_PORT_IN_INCLUDE;
      for (auto p : s.cfg.inbound_ports_exclude.ports) ports[p] |= MC_PORT_IN_EXCLUDE;
    }
    for (const auto& [port, bits] : ports)
      rows.push_back(Row::of(kRowPodPorts, mc_pod_port{index, port}, bits, "port " + std::to_string(port)));
    cidr_rows(index, s.cfg.outbound_ranges_exclude, MC_CIDR_EXCLUDE, rows);
    cidr_rows(index, s.cfg.outbound_ranges_include, MC_CIDR_INCLUDE, rows);
    if (dns_redirect_active(s.cfg) && !s.cfg.capture_all_dns) {
      // The resolvers whose port 53 is captured, each a whole address.
      CidrList servers;
      for (const auto& a : s.cfg.dns_servers_v4) servers.v4.push_back(parse_cidr(a + "/32", "--dns-servers"));
      for (const auto& a : s.cfg.dns_servers_v6) servers.v6.push_back(parse_cidr(a + "/128", "--dns-servers"));
      cidr_rows(index, servers, MC_CIDR_DNS, rows);
    }
    if (!s.cfg.exclude_interfaces.empty()) route_rows(index, s, rows);
    for (const auto& g : s.cfg.owner_groups.ids)
      rows.push_back(Row::of(kRowOwnerGids, mc_pod_u32{index, *g}, 1, "owner group " + std::to_string(*g)));
    std::map<std::string, uint8_t> ifaces;  // name -> MC_IF_* bits
    for (const auto& n : s.cfg.exclude_interfaces) ifaces[n] |= MC_IF_EXCLUDE;
    if (s.inbound)
      for (const auto& n : s.cfg.reroute_virtual_interfaces) ifaces[n] |= MC_IF_VIRT;
    for (const auto& [n, bits] : ifaces)
      if (auto it = s.net.interfaces.find(n); it != s.net.interfaces.end())
        rows.push_back(Row::of(kRowIfaceFlags, mc_pod_u32{index, it->second}, bits, "interface " + n));
    return rows;
  }

  static void cidr_rows(uint32_t index, const CidrList& list, mc_cidr_kind kind, std::vector<Row>& rows) {
    for (const auto& c : list.v4)
      rows.push_back(Row::of(kRowCidrs4, mc_lpm4{32u + c.prefix_len, MC_LPM_TAG(index, kind), net32(c.addr)}, 1, c.str()));
    for (const auto& c : list.v6) {
      mc_lpm6 k{32u + c.prefix_len, MC_LPM_TAG(index, kind), {}};
      std::memcpy(k.addr, c.addr.data(), 16);
      rows.push_back(Row::of(kRowCidrs6, k, 1, c.str()));
    }
  }

  // The main table, each prefix marked by whether it leaves through a -c
  // interface; the programs take the longest match.
  static void route_rows(uint32_t index, const PodSettings& s, std::vector<Row>& rows) {
    for (const auto& r : s.net.routes) {
      const uint8_t excluded =
          std::count(s.cfg.exclude_interfaces.begin(), s.cfg.exclude_interfaces.end(), r.interface) > 0;
      std::string what = "route " + r.prefix.str() + "/" + std::to_string(r.prefix_len) + " dev " + r.interface;
      if (r.prefix.family == AF_INET) {
        rows.push_back(Row::of(kRowCidrs4, mc_lpm4{32u + r.prefix_len, MC_LPM_TAG(index, MC_CIDR_ROUTE), net32(r.prefix.addr)},
                               excluded, std::move(what)));
      } else {
        mc_lpm6 k{32u + r.prefix_len, MC_LPM_TAG(index, MC_CIDR_ROUTE), {}};
        std::memcpy(k.addr, r.prefix.addr.data(), 16);
        rows.push_back(Row::of(kRowCidrs6, k, excluded, std::move(what)));
      }
    }
  }

  void put_rows(const std::vector<Row>& rows, Undo& undo) {
    for (const auto& r : rows) {
      const int fd = fd_of(r.map);
      if (bpf_map_update_elem(fd, r.key.data(), &r.value, BPF_ANY)) {
        const int err = errno;
        throw LoaderError("enrol: " + r.what, err, err == E2BIG || err == ENOSPC ? "the data path's table is full" : "");
      }
      undo.keys.push_back({fd, r.key});
    }
  }

  // Deletes rows by key; pod_by_addr rows only while they name `cookie`.
  void delete_rows(const std::vector<Row>& rows, uint64_t cookie) {
    for (const auto& r : rows) {
      const int fd = fd_of(r.map);
      if (fd < 0) continue;
      if (r.map == kRowPodByAddr) {
        uint64_t holder = 0;
        if (bpf_map_lookup_elem(fd, r.key.data(), &holder) || holder != cookie) continue;
      }
      bpf_map_delete_elem(fd, r.key.data());
    }
  }

  // Every row under `index`, found by walking the shared tables: for rows
  // no journal lists (an enrolment or removal killed half-way, a pod
  // enrolled by an older meshcap).
  void delete_rows_walk(uint32_t index) {
    auto by_index = [index](const uint8_t* k) { return first_u32(k) == index; };
    for (int fd : {pod_addrs.fd, pod_ports.fd, owner_gids.fd, iface_flags.fd}) delete_where(fd, by_index);
    auto by_tag = [index](const uint8_t* k) { return (first_u32(k + 4) >> 2) == index; };  // after prefixlen
    delete_where(cidrs4.fd, by_tag);
    delete_where(cidrs6.fd, by_tag);
  }

  void delete_listeners(uint32_t index) {
    for (uint32_t slot = 0; slot < MC_LISTENER__MAX; slot++) {
      mc_listener_key k{index, slot};
      bpf_map_delete_elem(listeners.fd, &k);
    }
  }

  // The addresses filed under `cookie`, found by walking pod_by_addr, but
  // those among `keep` (rows of the pod's new settings).
  void delete_addresses_walk(uint64_t cookie, const std::vector<Row>& keep = {}) {
    const int fd = pod_by_addr.fd;
    delete_where(fd, [&](const uint8_t* k) {
      uint64_t holder = 0;
      if (bpf_map_lookup_elem(fd, k, &holder) || holder != cookie) return false;
      return std::none_of(keep.begin(), keep.end(), [&](const Row& r) {
        return r.map == kRowPodByAddr && std::memcmp(r.key.data(), k, r.key.size()) == 0;
      });
    });
  }

  bool is_enrolled(uint64_t cookie) const {
    mc_pod p{};
    return cookie && bpf_map_lookup_elem(pods.fd, &cookie, &p) == 0;
  }

  // Files the pod's global addresses under its cookie, for sk_lookup;
  // refuses an address an enrolled pod holds (one a pod no longer enrolled
  // left behind is taken over). The rows go to `rows` for the journal.
  void claim_addresses(const std::string& name, uint64_t cookie, const PodSettings& s, Undo& undo,
                       std::vector<Row>& rows) {
    for (const auto& a : s.net.addresses) {
      if (!is_global(a)) continue;
      const mc_addr key = to_mc_addr(a);
      uint64_t holder = 0;
      const bool held = bpf_map_lookup_elem(pod_by_addr.fd, &key, &holder) == 0;
      if (held && holder != cookie && is_enrolled(holder))
        throw LoaderError("enrol " + name, EADDRINUSE, "address " + a.str() + " is enrolled by another pod",
                          Part::Inbound);
      if (bpf_map_update_elem(pod_by_addr.fd, &key, &cookie, BPF_ANY))
        throw LoaderError("enrol " + name + ": address " + a.str(), errno,
                          errno == E2BIG || errno == ENOSPC ? "the data path's table is full" : "", Part::Inbound);
      if (holder != cookie) undo.add(pod_by_addr.fd, key);
      rows.push_back(Row::of(kRowPodByAddr, key, 0, "address " + a.str()));
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
    if (!pin_afresh(link.fd, new_link_pin)) throw LoaderError("pin " + new_link_pin, errno, "", Part::Inbound);
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
  f.slots = open("map_pod_slots", false);
  if (f.slots.fd < 0)
    throw LoaderError("open " + dir_ + "/map_pod_slots", errno,
                      "the data path was loaded by an older meshcap: run `meshcap node start` to upgrade it");
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

uint32_t PodTable::take_index(const std::string& name, bool enrolled_before) {
  // The index after the last one this table took is usually free (a table
  // the agent keeps open enrols pod after pod): one lookup, where reading
  // every slot of a large node costs tens of microseconds.
  if (next_index_ < capacity_ && fds_->slot(next_index_).cookie == 0) return next_index_++;
  for (int attempt = 0; attempt < 2; attempt++) {
    const auto slots = fds_->all_slots(capacity_);
    size_t taken = 0;
    std::optional<uint32_t> free;
    for (uint32_t i = 0; i < capacity_; i++) {
      if (slots[i].cookie) taken++;
      else if (!free) free = i;
    }
    // A pod enrolled again needs a second index while it switches.
    if (free && (enrolled_before || taken < capacity_)) {
      next_index_ = *free + 1;
      return *free;
    }
    if (attempt == 0) repair();  // indices that removals killed half-way still hold
  }
  throw LoaderError("enrol " + name, ENOSPC,
                    "the data path holds its maximum of " + std::to_string(capacity_) + " pods (--max-pods)");
}

Enrolment PodTable::enroll(const std::string& name, uint64_t cookie, const std::string& netns_path,
                           const PodSettings& s) {
  validate_pod_name(name);
  auto& f = *fds_;
  fault_point("enroll");
  if (cookie == 0) throw LoaderError("enrol " + name, EINVAL, "the namespace's cookie is unknown");
  mc_pod old{};
  const bool enrolled_before = bpf_map_lookup_elem(f.pods.fd, &cookie, &old) == 0;
  const uint32_t index = take_index(name, enrolled_before);

  // Rows an enrolment or removal killed half-way left under this index.
  if (f.slot(index).flags & MC_SLOT_DIRTY) {
    f.delete_rows_walk(index);
    f.delete_listeners(index);
  }
  f.set_slot(index, cookie, MC_SLOT_DIRTY);
  Undo undo;
  const std::string pins = pod_pins(dir_, name);
  const std::string link_pin = pins + "/link_sk_lookup";
  const std::string new_link_pin = pins + "/link_sk_lookup_new";
  const std::string journal_pin = pins + "/map_rows";
  const std::string new_journal_pin = pins + "/map_rows_new";
  Fd link;
  Journal journal{index, cookie, Fds::rows_of(index, s)};
  try {
    const mc_pod pod = pod_of(s, index);
    f.reset_counters(index);
    f.put_rows(journal.rows, undo);
    if (s.inbound) {
      if (f.sk_lookup.fd < 0)
        throw LoaderError("enrol " + name, EOPNOTSUPP, "the data path was loaded without sk_lookup", Part::Inbound);
      adopt_listeners(f.listeners.fd, index, netns_path, s.cfg, s.net.listening, undo);
      f.claim_addresses(name, cookie, s, undo, journal.rows);
      fault_point("sk_lookup", Part::Inbound);
      f.attach_sk_lookup(netns_path, pins, new_link_pin, link);
    }
    Fd rows = create_journal(journal);
    if (link.fd < 0) make_pin_dirs(pins);  // else made for the link
    if (!pin_afresh(rows.fd, new_journal_pin)) throw LoaderError("pin " + new_journal_pin, errno);
    fault_point("enabled");
    // The commit: from here the pod is captured with these settings.
    if (bpf_map_update_elem(f.pods.fd, &cookie, &pod, BPF_ANY))
      throw LoaderError("enrol " + name, errno, errno == E2BIG ? "the data path holds its maximum of pods" : "");
  } catch (...) {
    undo.run();
    f.set_slot(index, 0, 0);
    if (link.fd >= 0) bpf_link_detach(link.fd);
    unlink(new_link_pin.c_str());
    unlink(new_journal_pin.c_str());
    // Directories this call made for the pod's pins (only when empty).
    rmdir(pins.c_str());
    rmdir(fs::path(pins).parent_path().c_str());
    throw;
  }
  f.set_slot(index, cookie, 0);
  // The pod's previous settings, its addresses it no longer has, and its
  // previous sk_lookup link go.
  if (enrolled_before) {
    f.set_slot(old.index, 0, MC_SLOT_DIRTY);
    const auto previous = read_journal(journal_pin);
    if (previous && previous->index == old.index && previous->cookie == cookie) {
      std::vector<Row> gone;
      for (const auto& r : previous->rows)
        if (r.map != kRowPodByAddr || std::find(journal.rows.begin(), journal.rows.end(), r) == journal.rows.end())
          gone.push_back(r);
      f.delete_rows(gone, cookie);
    } else {
      f.delete_rows_walk(old.index);
      f.delete_addresses_walk(cookie, journal.rows);
    }
    f.delete_listeners(old.index);
    f.set_slot(old.index, 0, 0);
  }
  if (rename(new_journal_pin.c_str(), journal_pin.c_str()))
    spdlog::warn("cannot pin {}: {}", journal_pin, std::strerror(errno));
  if (s.inbound) {
    replace_link_pin(link_pin, new_link_pin);
  } else if (Fd old_link(bpf_obj_get(link_pin.c_str())); old_link.fd >= 0) {
    unlink(link_pin.c_str());
    bpf_link_detach(old_link.fd);
  }
  return {index, cookie};
}

bool PodTable::unenroll(const std::string& name, uint64_t cookie) {
  auto& f = *fds_;
  bool removed = false;
  const auto journal = read_journal(pod_pins(dir_, name) + "/map_rows");
  const bool journal_ours = journal && cookie && journal->cookie == cookie;
  mc_pod p{};
  if (cookie && bpf_map_lookup_elem(f.pods.fd, &cookie, &p) == 0) {
    f.set_slot(p.index, cookie, MC_SLOT_DIRTY);
    bpf_map_delete_elem(f.pods.fd, &cookie);  // capture off first
    if (journal_ours && journal->index == p.index) {
      f.delete_rows(journal->rows, cookie);
    } else {
      f.delete_rows_walk(p.index);
      f.delete_addresses_walk(cookie);
    }
    f.delete_listeners(p.index);
    f.set_slot(p.index, 0, 0);
    removed = true;
  } else if (journal_ours) {
    // A removal (or an enrolment) killed half-way: the index is still the
    // pod's only while its slot names the pod.
    if (journal->index < capacity_ && f.slot(journal->index).cookie == cookie) {
      f.delete_rows(journal->rows, cookie);
      f.delete_listeners(journal->index);
      f.set_slot(journal->index, 0, 0);
    } else {
      std::vector<Row> addresses;
      for (const auto& r : journal->rows)
        if (r.map == kRowPodByAddr) addresses.push_back(r);
      f.delete_rows(addresses, cookie);
    }
    removed = true;
  }
  removed |= remove_pod_pins(dir_, name);
  return removed;
}

size_t PodTable::repair() {
  auto& f = *fds_;
  size_t repaired = 0;
  const auto pods = enrolled();
  std::vector<mc_pod_slot> slots = f.all_slots(capacity_);
  // Indices whose pod is gone (a removal killed after its pods entry went)
  // become free, their rows to be cleared before reuse.
  for (uint32_t i = 0; i < capacity_; i++) {
    const uint64_t c = slots[i].cookie;
    if (!c) continue;
    auto it = pods.find(c);
    if (it == pods.end() || it->second != i) {
      f.set_slot(i, 0, MC_SLOT_DIRTY);
      slots[i] = {0, MC_SLOT_DIRTY, 0};
      repaired++;
    }
  }
  // Pods whose slot does not name them (a data path an older meshcap
  // enrolled, before slots).
  for (const auto& [c, i] : pods) {
    if (i < capacity_ && slots[i].cookie != c) {
      f.set_slot(i, c, slots[i].flags);
      repaired++;
    }
  }
  // The older meshcap's dirty marks.
  const std::string legacy = dir_ + "/map_pod_dirty";
  if (Fd dirty(bpf_obj_get(legacy.c_str())); dirty.fd >= 0) {
    for (uint32_t i = 0; i < capacity_; i++) {
      uint8_t v = 0;
      if (bpf_map_lookup_elem(dirty.fd, &i, &v) == 0 && v) f.set_slot(i, f.slot(i).cookie, MC_SLOT_DIRTY);
    }
    unlink(legacy.c_str());
    repaired++;
  }
  // Addresses filed under a cookie no pod has.
  const int fd = f.pod_by_addr.fd;
  delete_where(fd, [&](const uint8_t* k) {
    uint64_t holder = 0;
    const bool stale = bpf_map_lookup_elem(fd, k, &holder) == 0 && !pods.count(holder);
    repaired += stale;
    return stale;
  });
  return repaired;
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
