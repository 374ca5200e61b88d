#include "bpf_capture.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <sys/syscall.h>

#include <spdlog/spdlog.h>

#include "meshcap.h"
#include "meshcap.skel.h"

namespace fs = std::filesystem;

namespace meshcap::loader {

namespace {

constexpr const char* kBpffs = "/sys/fs/bpf";
constexpr const char* kPinRoot = "/sys/fs/bpf/meshcap";
// New pins are made here, then renamed into kPinRoot (bpffs allows no '.' in
// names, so a hidden name in kPinRoot is not possible).
constexpr const char* kStagingRoot = "/sys/fs/bpf/meshcap_staging";

// Map pin names: what status and the tests read back.
const std::vector<std::string> kPinnedMaps = {
    "counters",   "orig_dst",   "pod_addrs",  "excl_cidr4",  "incl_cidr4",   "excl_cidr6", "incl_cidr6",
    "owner_gids", "route4",     "route6",     "iface_flags", "inbound_orig", "listeners", "control",
    "accel_socks"};

std::string errstr(int err) { return std::strerror(err < 0 ? -err : err); }

// Unique-fd helper.
struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
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

void remove_tree(const std::string& dir) {
  std::error_code ec;
  if (!fs::exists(dir, ec)) return;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string path = entry.path();
    // A pinned link is detached explicitly: a process may still hold it.
    if (entry.path().filename().string().rfind("link_", 0) == 0) {
      int fd = bpf_obj_get(path.c_str());
      if (fd >= 0) {
        bpf_link_detach(fd);
        close(fd);
      }
    }
    if (unlink(path.c_str()) && errno != ENOENT)
      spdlog::warn("cannot remove pin {}: {}", path, std::strerror(errno));
  }
  if (rmdir(dir.c_str()) && errno != ENOENT) spdlog::warn("cannot remove {}: {}", dir, std::strerror(errno));
}

}  // namespace

void fault_point(const std::string& step, Part part) {
  const char* at = std::getenv("MESHCAP_FAULT_AT");
  if (!at) return;
  std::string spec = at;  // STEP or STEP:kill
  bool kill_self = spec.size() > 5 && spec.substr(spec.size() - 5) == ":kill";
  if (kill_self) spec.resize(spec.size() - 5);
  if (spec != step) return;
  if (kill_self) raise(SIGKILL);
  throw LoaderError("injected fault at " + step, EIO, "", part);
}

LoaderError::LoaderError(std::string step, int err, const std::string& detail, Part part)
    : std::runtime_error(step + ": " + (detail.empty() ? "" : detail + ": ") + errstr(err)),
      step_(std::move(step)),
      err_(err < 0 ? -err : err),
      part_(part) {}

const std::vector<std::string>& counter_names() {
  static const std::vector<std::string> names = {
#define MC_COUNTER_NAME(id, name, what) #name,
      MC_COUNTERS(MC_COUNTER_NAME)
#undef MC_COUNTER_NAME
  };
  return names;
}

size_t max_proxy_ids() { return MC_MAX_IDS; }

const std::vector<ProgramSpec>& cgroup_programs() {
  static const std::vector<ProgramSpec> specs = {
      // Records and lookups first, then the rewrites that depend on them.
      {"link_sockops", "mc_sockops"},
      {"link_getsockopt", "mc_getsockopt"},
      {"link_getpeername4", "mc_getpeername4"},
      {"link_getpeername6", "mc_getpeername6"},
      {"link_connect4", "mc_connect4"},
      {"link_connect6", "mc_connect6"},
  };
  return specs;
}

std::string pin_dir(const std::string& name) { return std::string(kPinRoot) + "/" + name; }

void validate_pod_name(const std::string& name) {
  // bpffs refuses '.' in names.
  bool ok = !name.empty() && name.size() <= 64;
  for (unsigned char c : name) ok = ok && (std::isalnum(c) || c == '_' || c == '-');
  if (!ok) throw UsageError("--name: invalid value '" + name + "': use 1-64 of letters, digits, '_', '-'");
}

void ensure_bpffs() {
  struct statfs st {};
  if (statfs(kBpffs, &st) == 0 && st.f_type == BPF_FS_MAGIC) return;
  // As bpftool does: mount the BPF filesystem where pins are expected.
  if (mount("bpf", kBpffs, "bpf", 0, "mode=0700"))
    throw LoaderError("mount bpffs at /sys/fs/bpf", errno);
  spdlog::info("mounted the BPF filesystem at {}", kBpffs);
}


namespace {

// The load-time settings of a capture.
mc_config settings_of(const EbpfSpec& spec) {
  const CaptureConfig& cfg = spec.cfg;
  mc_config c{};
  c.proxy_port = cfg.proxy_port;
  c.inbound_port = cfg.inbound_capture_port;
  c.tunnel_port = cfg.inbound_tunnel_port;
  c.include_all = cfg.outbound_ranges_include.wildcard;
  c.include_has_loopback =
      cfg.outbound_ranges_include.has_loopback_v4 || cfg.outbound_ranges_include.has_loopback_v6;
  c.owner_groups_except = cfg.owner_groups_except;
  c.n_uids = cfg.proxy_uids.ids.size();
  for (size_t i = 0; i < c.n_uids; i++) c.uids[i] = *cfg.proxy_uids.ids[i];
  c.n_gids = cfg.proxy_gids.ids.size();
  for (size_t i = 0; i < c.n_gids; i++) c.gids[i] = *cfg.proxy_gids.ids[i];
  c.loopback4 = net32(cfg.ipv4_loopback_cidr.addr);
  c.loopback4_mask = cfg.ipv4_loopback_cidr.prefix_len == 0
                         ? 0
                         : htonl(~uint32_t{0} << (32 - cfg.ipv4_loopback_cidr.prefix_len));
  if (spec.pod.source4) {
    c.has_src4 = 1;
    c.src4 = net32(spec.pod.source4->addr);
  }
  if (spec.pod.source6) {
    c.has_src6 = 1;
    std::memcpy(c.src6, spec.pod.source6->addr.data(), 16);
  }
  c.inbound = !spec.inbound                          ? MC_INBOUND_NONE
              : cfg.inbound_ports_include.wildcard   ? MC_INBOUND_ALL
              : cfg.inbound_ports_include.ports.empty() ? MC_INBOUND_NONE
                                                     : MC_INBOUND_LIST;
  c.has_excluded_ifaces = !cfg.exclude_interfaces.empty();
  c.has_ifaces = spec.inbound && (!cfg.exclude_interfaces.empty() || !cfg.reroute_virtual_interfaces.empty());
  c.ipv6 = spec.ipv6;
  c.accelerate = cfg.accelerate;
  return c;
}

// Opens the skeleton with the settings of `spec`; `with_inbound` false
// leaves sk_lookup out (to tell which part a refused load was about).
meshcap_bpf* open_configured(const EbpfSpec& spec, bool with_inbound) {
  meshcap_bpf* skel = meshcap_bpf::open();
  if (!skel) throw LoaderError("open BPF skeleton", errno);
  // sk_lookup only for inbound capture, sk_msg only with --accelerate.
  bpf_program__set_autoload(skel->progs.mc_sk_lookup, spec.inbound && with_inbound);
  bpf_program__set_autoload(skel->progs.mc_accel, spec.cfg.accelerate);
  // inbound_orig is written by sk_lookup alone, accel_socks only with
  // --accelerate: otherwise they stay empty, and one entry spares the kernel
  // preallocating them (an LRU hash is always preallocated; a socket hash
  // allocates its buckets).
  if (!spec.inbound) bpf_map__set_max_entries(skel->maps.inbound_orig, 1);
  if (!spec.cfg.accelerate) bpf_map__set_max_entries(skel->maps.accel_socks, 1);
  skel->rodata->mc_cfg = settings_of(spec);
  auto& ports = skel->rodata->mc_port_flags;
  for (auto p : spec.cfg.outbound_ports_exclude.ports) ports[p] |= MC_PORT_OUT_EXCLUDE;
  for (auto p : spec.cfg.outbound_ports_include.ports) ports[p] |= MC_PORT_OUT_INCLUDE;
  for (auto p : spec.cfg.inbound_ports_include.ports) ports[p] |= MC_PORT_IN_INCLUDE;
  for (auto p : spec.cfg.inbound_ports_exclude.ports) ports[p] |= MC_PORT_IN_EXCLUDE;
  return skel;
}

}  // namespace

void BpfCapture::Deleter::operator()(meshcap_bpf* s) const { meshcap_bpf::destroy(s); }

BpfCapture::BpfCapture(const EbpfSpec& spec) : skel_(open_configured(spec, true)), spec_(spec) {}

BpfCapture::~BpfCapture() { detach_all(); }

void BpfCapture::detach_all() {
  for (auto* link : links_) bpf_link__destroy(link);
  links_.clear();
  link_pins_.clear();
}

namespace {

// Fills `map` with `n` entries laid out back to back (keys of key_size,
// values of value_size): one BPF_MAP_UPDATE_BATCH call where the kernel has
// it for this map type (LPM tries on recent kernels), about half the cost
// of one syscall per entry. Anything else (no batch support, or a bad
// entry) is retried entry by entry, which names the entry that fails.
// BPF_ANY makes the retry harmless for entries the batch already wrote.
void update_all(bpf_map* map, const void* keys, const void* values, size_t n,
                const std::function<std::string(size_t)>& what) {
  if (n == 0) return;
  const size_t ksz = bpf_map__key_size(map), vsz = bpf_map__value_size(map);
  __u32 count = static_cast<__u32>(n);
  if (n > 1 && bpf_map_update_batch(bpf_map__fd(map), keys, values, &count, nullptr) == 0 && count == n) return;
  const auto* k = static_cast<const uint8_t*>(keys);
  const auto* v = static_cast<const uint8_t*>(values);
  for (size_t i = 0; i < n; i++)
    if (bpf_map__update_elem(map, k + i * ksz, ksz, v + i * vsz, vsz, BPF_ANY))
      throw LoaderError("fill map " + std::string(bpf_map__name(map)), errno, what(i));
}

}  // namespace

void BpfCapture::load() {
  fault_point("load");
  if (spec_.inbound) fault_point("load-sk_lookup", Part::Inbound);
  if (int err = meshcap_bpf::load(skel_.get())) {
    // Only sk_lookup refused? Then outbound can still be eBPF's.
    Part part = Part::Outbound;
    if (spec_.inbound) {
      std::unique_ptr<meshcap_bpf, Deleter> without(open_configured(spec_, false));
      if (meshcap_bpf::load(without.get()) == 0) part = Part::Inbound;
    }
    throw LoaderError(part == Part::Inbound ? "load mc_sk_lookup" : "load BPF programs", err,
                      "the kernel refuses the program", part);
  }
  const PodNetwork& pod = spec_.pod;
  const CaptureConfig& cfg = spec_.cfg;

  auto update = [](bpf_map* map, const void* key, const void* value, const std::string& what) {
    if (bpf_map__update_elem(map, key, bpf_map__key_size(map), value, bpf_map__value_size(map), BPF_ANY))
      throw LoaderError("fill map " + std::string(bpf_map__name(map)), errno, what);
  };
  const uint8_t one = 1;
  {
    std::vector<mc_addr> keys;
    for (const auto& a : pod.addresses) keys.push_back(to_mc_addr(a));
    const std::vector<uint8_t> ones(keys.size(), 1);
    update_all(skel_->maps.pod_addrs, keys.data(), ones.data(), keys.size(),
               [&](size_t i) { return pod.addresses[i].str(); });
  }
  auto fill_cidrs = [&](const CidrList& list, bpf_map* map4, bpf_map* map6) {
    std::vector<mc_lpm4> k4;
    k4.reserve(list.v4.size());
    for (const auto& c : list.v4) k4.push_back(mc_lpm4{c.prefix_len, net32(c.addr)});
    std::vector<mc_lpm6> k6(list.v6.size());
    for (size_t i = 0; i < list.v6.size(); i++) {
      k6[i].prefixlen = list.v6[i].prefix_len;
      std::memcpy(k6[i].addr, list.v6[i].addr.data(), 16);
    }
    const std::vector<uint8_t> ones(std::max(k4.size(), k6.size()), 1);
    update_all(map4, k4.data(), ones.data(), k4.size(), [&](size_t i) { return list.v4[i].str(); });
    update_all(map6, k6.data(), ones.data(), k6.size(), [&](size_t i) { return list.v6[i].str(); });
  };
  fill_cidrs(cfg.outbound_ranges_exclude, skel_->maps.excl_cidr4, skel_->maps.excl_cidr6);
  fill_cidrs(cfg.outbound_ranges_include, skel_->maps.incl_cidr4, skel_->maps.incl_cidr6);
  for (const auto& g : cfg.owner_groups.ids) {
    uint32_t gid = *g;
    update(skel_->maps.owner_gids, &gid, &one, std::to_string(gid));
  }
  auto set_iface = [&](const std::string& name, uint8_t bit) {
    uint32_t ifindex = pod.interfaces.at(name);
    uint8_t v = 0;
    bpf_map__lookup_elem(skel_->maps.iface_flags, &ifindex, sizeof(ifindex), &v, sizeof(v), 0);
    v |= bit;
    update(skel_->maps.iface_flags, &ifindex, &v, name);
  };
  for (const auto& n : cfg.exclude_interfaces) set_iface(n, MC_IF_EXCLUDE);
  for (const auto& n : cfg.reroute_virtual_interfaces) set_iface(n, MC_IF_VIRT);
  if (!cfg.exclude_interfaces.empty()) {
    // The main table, each prefix marked by whether it leaves through a -c
    // interface; the BPF side takes the longest match.
    for (const auto& r : pod.routes) {
      uint8_t excluded = std::count(cfg.exclude_interfaces.begin(), cfg.exclude_interfaces.end(), r.interface) > 0;
      std::string what = r.prefix.str() + "/" + std::to_string(r.prefix_len) + " dev " + r.interface;
      if (r.prefix.family == AF_INET) {
        mc_lpm4 k{r.prefix_len, net32(r.prefix.addr)};
        update(skel_->maps.route4, &k, &excluded, what);
      } else {
        mc_lpm6 k{};
        k.prefixlen = r.prefix_len;
        std::memcpy(k.addr, r.prefix.addr.data(), 16);
        update(skel_->maps.route6, &k, &excluded, what);
      }
    }
  }
}

void BpfCapture::attach(const std::string& cgroup_dir, const std::string& netns_path) {
  Fd cg(open(cgroup_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (cg.fd < 0) throw LoaderError("open cgroup " + cgroup_dir, errno);
  Fd ns(open(netns_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (ns.fd < 0) throw LoaderError("open network namespace " + netns_path, errno);
  fault_point("attach");
  for (const auto& spec : cgroup_programs()) {
    bpf_program* prog = bpf_object__find_program_by_name(skel_->obj, spec.program);
    bpf_link* link = nullptr;
    if (prog) link = bpf_program__attach_cgroup(prog, cg.fd);
    if (!link) {
      int err = prog ? errno : ENOENT;
      detach_all();
      throw LoaderError(std::string("attach ") + spec.program + " to " + cgroup_dir, err);
    }
    links_.push_back(link);
    link_pins_.push_back(spec.pin);
  }
  if (spec_.cfg.accelerate) {
    // sk_msg has no bpf_link in libbpf 1.1: the program is attached to the
    // socket map and lives as long as the map (pinned below).
    if (bpf_prog_attach(bpf_program__fd(skel_->progs.mc_accel), bpf_map__fd(skel_->maps.accel_socks),
                        BPF_SK_MSG_VERDICT, 0)) {
      int err = errno;
      detach_all();
      throw LoaderError("attach mc_accel to accel_socks", err);
    }
  }
  if (spec_.inbound) {
    bpf_link* link = nullptr;
    try {
      fault_point("sk_lookup", Part::Inbound);
      link = bpf_program__attach_netns(skel_->progs.mc_sk_lookup, ns.fd);
      if (!link) throw LoaderError("attach mc_sk_lookup to " + netns_path, errno, "", Part::Inbound);
    } catch (...) {
      detach_all();
      throw;
    }
    links_.push_back(link);
    link_pins_.push_back("link_sk_lookup");
  }
  spdlog::debug("attached {} programs to {} and {}", links_.size(), cgroup_dir, netns_path);
}

void BpfCapture::pin(const std::string& name) {
  validate_pod_name(name);
  ensure_bpffs();
  for (const char* root : {kPinRoot, kStagingRoot})
    if (mkdir(root, 0700) && errno != EEXIST) throw LoaderError(std::string("create ") + root, errno);
  const std::string final_dir = pin_dir(name);
  const std::string tmp_dir = std::string(kStagingRoot) + "/" + name + "-" + std::to_string(getpid());
  remove_tree(tmp_dir);
  if (mkdir(tmp_dir.c_str(), 0700)) throw LoaderError("create " + tmp_dir, errno);

  auto undo = [&] {
    // Unpin what this call pinned; the links stay owned by this object and
    // are detached by detach_all().
    for (auto* link : links_) bpf_link__unpin(link);
    remove_tree(tmp_dir);
    rmdir(kStagingRoot);
    detach_all();
  };
  auto fail = [&](const std::string& step, int err) { throw LoaderError(step, err); };
  try {
    for (size_t i = 0; i < links_.size(); i++) {
      std::string path = tmp_dir + "/" + link_pins_[i];
      if (bpf_link__pin(links_[i], path.c_str())) fail("pin " + path, errno);
      fault_point("pin-link");
    }
    for (const auto& m : kPinnedMaps) {
      bpf_map* map = bpf_object__find_map_by_name(skel_->obj, m.c_str());
      std::string path = tmp_dir + "/map_" + m;
      if (!map || bpf_map__pin(map, path.c_str())) fail("pin " + path, map ? errno : ENOENT);
    }
    fault_point("pinned");
    // Commit: one map update turns the new capture on. Until here it was
    // attached but inert; an old capture of the same name was still working.
    const uint32_t key = 0, on = 1;
    if (bpf_map__update_elem(skel_->maps.control, &key, sizeof(key), &on, sizeof(on), BPF_ANY))
      fail("enable capture", errno);
    fault_point("enabled");
    // Both run now (the old one first; the new one sees 127.0.0.1 and passes).
    // Retire the old one, then move the new pins into place.
    if (remove_pins(name)) spdlog::info("replaced the previous capture of {}", name);
    mkdir(kPinRoot, 0700);  // remove_pins() drops the root when it was the last pod
    if (rename(tmp_dir.c_str(), final_dir.c_str())) fail("rename " + tmp_dir + " to " + final_dir, errno);
    rmdir(kStagingRoot);  // only when empty: another init may be staging
  } catch (...) {
    undo();
    throw;
  }
  // The pins now hold the links; this object no longer detaches them.
  for (auto* link : links_) bpf_link__disconnect(link);
  detach_all();
}

namespace {

// Listening TCP sockets on `ports` in a process's network namespace, from
// /proc/PID/net/tcp{,6}: socket inode -> port.
std::map<unsigned long, uint16_t> listening_inodes(pid_t pid, const std::vector<uint16_t>& ports) {
  std::map<unsigned long, uint16_t> out;
  for (const char* file : {"tcp", "tcp6"}) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/net/" + file);
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

}  // namespace

int BpfCapture::adopt_listeners(const std::string& netns_path) {
  if (!spec_.inbound) return 0;
  fault_point("adopt", Part::Inbound);
  const CaptureConfig& cfg = spec_.cfg;
  struct stat ns {};
  if (stat(netns_path.c_str(), &ns)) return 0;
  int adopted = 0;
  std::error_code ec;
  for (const auto& proc : fs::directory_iterator("/proc", ec)) {
    const std::string pid_s = proc.path().filename();
    if (pid_s.find_first_not_of("0123456789") != std::string::npos) continue;
    struct stat pns {};
    if (stat((proc.path() / "ns/net").c_str(), &pns) || pns.st_ino != ns.st_ino || pns.st_dev != ns.st_dev) continue;
    pid_t pid = std::stoi(pid_s);
    auto inodes = listening_inodes(pid, {cfg.inbound_capture_port, cfg.proxy_port});
    if (inodes.empty()) continue;
    std::error_code fec;
    for (const auto& fdent : fs::directory_iterator(proc.path() / "fd", fec)) {
      std::error_code lec;
      std::string target = fs::read_symlink(fdent.path(), lec);
      if (lec || target.rfind("socket:[", 0) != 0) continue;
      auto it = inodes.find(std::stoul(target.substr(8)));
      if (it == inodes.end()) continue;
      // Take a copy of the proxy's socket (pidfd_getfd, Linux 5.6). A proxy
      // that listens but cannot be adopted would see inbound refused until
      // it listens again: inbound is then not eBPF's to do.
      const std::string what = "adopt the proxy's listener on port " + std::to_string(it->second) + " from pid " + pid_s;
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
      uint32_t v6 = sa.ss_family == AF_INET6;
      uint32_t slot = (it->second == cfg.inbound_capture_port ? MC_LISTENER_IN4 : MC_LISTENER_OUT4) + v6;
      uint64_t value = static_cast<uint64_t>(sock.fd);
      if (bpf_map__update_elem(skel_->maps.listeners, &slot, sizeof(slot), &value, sizeof(value), BPF_ANY))
        throw LoaderError(what, errno, "listeners map", Part::Inbound);
      spdlog::info("adopted the proxy's listener on port {} from pid {}", it->second, pid);
      adopted++;
      inodes.erase(it);
    }
  }
  return adopted;
}


namespace {
size_t count_entries(int map_fd, size_t key_size) {
  std::vector<uint8_t> key(key_size), next(key_size);
  size_t n = 0;
  void* prev = nullptr;
  while (bpf_map_get_next_key(map_fd, prev, next.data()) == 0) {
    n++;
    key = next;
    prev = key.data();
  }
  return n;
}

Counters read_counters_fd(int fd) {
  Counters out;
  int ncpu = libbpf_num_possible_cpus();
  std::vector<uint64_t> values(ncpu > 0 ? ncpu : 1);
  for (uint32_t i = 0; i < MC_CNT__MAX; i++) {
    uint64_t sum = 0;
    if (bpf_map_lookup_elem(fd, &i, values.data()) == 0)
      for (auto v : values) sum += v;
    out[counter_names()[i]] = sum;
  }
  return out;
}
}  // namespace

Counters BpfCapture::counters() const { return read_counters_fd(bpf_map__fd(skel_->maps.counters)); }

size_t BpfCapture::connection_entries() const {
  return count_entries(bpf_map__fd(skel_->maps.orig_dst), sizeof(mc_conn_key));
}

PinnedState pinned_state(const std::string& name) {
  PinnedState st;
  std::error_code ec;
  const std::string dir = pin_dir(name);
  if (!fs::is_directory(dir, ec)) return st;
  st.present = true;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string f = e.path().filename();
    if (f.rfind("link_", 0) == 0) st.links.push_back(f);
    if (f.rfind("map_", 0) == 0) st.maps.push_back(f);
  }
  return st;
}

std::vector<PinnedLink> pinned_links(const std::string& name) {
  std::vector<PinnedLink> out;
  for (const auto& pin : pinned_state(name).links) {
    PinnedLink l{pin};
    Fd fd(bpf_obj_get((pin_dir(name) + "/" + pin).c_str()));
    bpf_link_info info{};
    __u32 len = sizeof(info);
    if (fd.fd >= 0 && bpf_obj_get_info_by_fd(fd.fd, &info, &len) == 0) {
      l.prog_id = info.prog_id;
      l.attached = (info.type == BPF_LINK_TYPE_CGROUP && info.cgroup.cgroup_id != 0) ||
                   (info.type == BPF_LINK_TYPE_NETNS && info.netns.netns_ino != 0);
      if (info.type == BPF_LINK_TYPE_NETNS) l.netns_ino = info.netns.netns_ino;
    }
    out.push_back(l);
  }
  std::sort(out.begin(), out.end(), [](const PinnedLink& a, const PinnedLink& b) { return a.pin < b.pin; });
  return out;
}

bool pinned_enabled(const std::string& name) {
  Fd fd(bpf_obj_get((pin_dir(name) + "/map_control").c_str()));
  uint32_t key = 0, on = 0;
  return fd.fd >= 0 && bpf_map_lookup_elem(fd.fd, &key, &on) == 0 && on != 0;
}

Counters pinned_counters(const std::string& name) {
  std::string path = pin_dir(name) + "/map_counters";
  Fd fd(bpf_obj_get(path.c_str()));
  if (fd.fd < 0) throw LoaderError("open " + path, errno);
  return read_counters_fd(fd.fd);
}

namespace {
// Entries of one of a pod's pinned maps; `missing_ok`: 0 when not pinned.
size_t pinned_entries(const std::string& name, const std::string& map, size_t key_size, bool missing_ok) {
  std::string path = pin_dir(name) + "/map_" + map;
  Fd fd(bpf_obj_get(path.c_str()));
  if (fd.fd < 0) {
    if (missing_ok) return 0;
    throw LoaderError("open " + path, errno);
  }
  return count_entries(fd.fd, key_size);
}
}  // namespace

size_t pinned_connection_entries(const std::string& name) {
  return pinned_entries(name, "orig_dst", sizeof(mc_conn_key), false);
}

size_t pinned_accelerated_sockets(const std::string& name) {
  // Pins of a capture made before --accelerate existed have no such map.
  return pinned_entries(name, "accel_socks", sizeof(mc_sock_key), true);
}

bool remove_pins(const std::string& name) {
  validate_pod_name(name);
  std::error_code ec;
  // Staging directories of an init that died before its commit.
  bool staged = false;
  for (const auto& e : fs::directory_iterator(kStagingRoot, ec)) {
    std::string f = e.path().filename();
    if (f.rfind(name + "-", 0) != 0 || f.find_first_not_of("0123456789", name.size() + 1) != std::string::npos)
      continue;
    pid_t pid = std::stoi(f.substr(name.size() + 1));
    if (pid == getpid() || kill(pid, 0) == 0) continue;  // still at work
    remove_tree(e.path());
    staged = true;
  }
  rmdir(kStagingRoot);
  const std::string dir = pin_dir(name);
  if (!fs::is_directory(dir, ec)) return staged;
  remove_tree(dir);
  rmdir(kPinRoot);  // only when no other pod is pinned
  return true;
}

std::vector<std::string> pinned_pods() {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(kPinRoot, ec)) {
    std::string f = e.path().filename();
    out.push_back(f);
  }
  return out;
}

}  // namespace meshcap::loader
