#include "datapath.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <spdlog/spdlog.h>

#include "meshcap.h"
#include "meshcap.skel.h"

namespace fs = std::filesystem;

namespace meshcap::loader {

namespace {

constexpr uint32_t kMaxPodsLimit = 4096;

struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

// The sizes of each map for a spec.
uint32_t map_size(const std::string& name, const DataPathSpec& s) {
  const uint32_t p = s.pods();
  // A share per pod, and room for one pod at the most a pod may hold.
  auto shared = [p](uint32_t share, uint32_t most) { return std::max(p * share, most); };
  if (name == "pods" || name == "pod_slots") return p;
  if (name == "pod_by_addr" || name == "pod_addrs") return shared(MC_ADDRS_PER_POD, MC_ADDRS_MAX);
  if (name == "pod_ports") return shared(MC_PORTS_PER_POD, MC_PORTS_MAX);
  if (name == "cidrs4" || name == "cidrs6") return p * MC_CIDRS_PER_POD + s.extra_cidrs;
  if (name == "owner_gids") return shared(MC_GROUPS_PER_POD, MC_GROUPS_MAX);
  if (name == "iface_flags") return shared(MC_IFACES_PER_POD, MC_IFACES_MAX);
  if (name == "listeners") return kMaxPodsLimit * MC_LISTENER__MAX;
  if (name == "counters") return (p + 1) * MC_CNT__MAX;
  if (name == "orig_dst") return s.connections();
  // inbound_orig is written by sk_lookup alone, accel_socks only with
  // --accelerate: otherwise one entry spares the kernel preallocating them.
  if (name == "inbound_orig") return s.inbound ? s.connections() : 1;
  if (name == "accel_socks") return s.accelerate ? MC_ACCEL_ENTRIES : 1;
  // Replies of redirected UDP DNS queries in flight (an LRU, preallocated).
  if (name == "dns_reverse")
    return s.dns ? std::clamp<uint32_t>(p * MC_DNS_REPLIES_PER_POD, MC_DNS_REPLIES_MIN, MC_DNS_REPLIES_MAX) : 1;
  return 0;  // as declared
}

// Opens the skeleton for `spec`; `with_inbound` false leaves sk_lookup out
// (to tell which part a refused load was about).
meshcap_bpf* open_configured(const DataPathSpec& spec, bool with_inbound) {
  meshcap_bpf* skel = meshcap_bpf::open();
  if (!skel) throw LoaderError("open BPF skeleton", errno);
  bpf_program__set_autoload(skel->progs.mc_sk_lookup, spec.inbound && with_inbound);
  bpf_program__set_autoload(skel->progs.mc_accel, spec.accelerate);
  for (const auto& p : cgroup_programs())
    if (p.dns) bpf_program__set_autoload(bpf_object__find_program_by_name(skel->obj, p.program), spec.dns);
  bpf_map* map;
  bpf_object__for_each_map(map, skel->obj) {
    if (uint32_t n = map_size(bpf_map__name(map), spec)) bpf_map__set_max_entries(map, n);
  }
  skel->rodata->mc_node = mc_node{spec.pods(), spec.key_netns, spec.ingress_ifindex, spec.accelerate, 0};
  return skel;
}

// Whether the pinned map `fd` can stand for `map` as the new programs
// declare it.
bool same_shape(int fd, const bpf_map* map) {
  bpf_map_info info{};
  __u32 len = sizeof(info);
  if (bpf_obj_get_info_by_fd(fd, &info, &len)) return false;
  return info.type == bpf_map__type(map) && info.key_size == bpf_map__key_size(map) &&
         info.value_size == bpf_map__value_size(map) && info.max_entries == bpf_map__max_entries(map) &&
         info.map_flags == bpf_map__map_flags(map);
}

std::string pin_of_map(const std::string& dir, const bpf_map* map) {
  return dir + "/map_" + (bpf_map__is_internal(map) ? std::string("rodata") : bpf_map__name(map));
}

// Copies every entry of `from` into `to` (same key and value sizes; per-CPU
// values as the kernel hands them).
void copy_entries(int from, int to, const std::string& what) {
  bpf_map_info fi{}, ti{};
  __u32 len = sizeof(fi);
  if (bpf_obj_get_info_by_fd(from, &fi, &len)) return;
  len = sizeof(ti);
  if (bpf_obj_get_info_by_fd(to, &ti, &len)) return;
  if (fi.key_size != ti.key_size || fi.value_size != ti.value_size)
    throw LoaderError("copy map " + what, EINVAL,
                      "its layout changed (key " + std::to_string(fi.key_size) + "->" + std::to_string(ti.key_size) +
                          ", value " + std::to_string(fi.value_size) + "->" + std::to_string(ti.value_size) +
                          " bytes): stop and start the node data path");
  const bool percpu = fi.type == BPF_MAP_TYPE_PERCPU_ARRAY || fi.type == BPF_MAP_TYPE_PERCPU_HASH;
  const size_t vsz = percpu ? size_t(fi.value_size + 7) / 8 * 8 * libbpf_num_possible_cpus() : fi.value_size;
  std::vector<uint8_t> key(fi.key_size), next(fi.key_size), value(vsz);
  void* prev = nullptr;
  while (bpf_map_get_next_key(from, prev, next.data()) == 0) {
    key = next;
    prev = key.data();
    if (bpf_map_lookup_elem(from, key.data(), value.data())) continue;
    if (bpf_map_update_elem(to, key.data(), value.data(), BPF_ANY))
      throw LoaderError("copy map " + what, errno,
                        "the new map is too small for what the old one holds (a smaller --max-pods than the "
                        "running data path's is not done in place: stop and start it)");
  }
}

bool is_socket_map(uint32_t type) { return type == BPF_MAP_TYPE_SOCKMAP || type == BPF_MAP_TYPE_SOCKHASH; }

// The counters of an older data path, whose rows may have had fewer
// counters (new ones are added at the end): each pod row's counters are
// copied to the same row and counter here.
void copy_counters(int from, int to, uint32_t rows) {
  bpf_map_info fi{};
  __u32 len = sizeof(fi);
  if (bpf_obj_get_info_by_fd(from, &fi, &len) || rows == 0) return;
  const uint32_t old_per_row = fi.max_entries / rows;
  if (old_per_row == 0 || old_per_row * rows != fi.max_entries || old_per_row > MC_CNT__MAX)
    throw LoaderError("copy map counters", EINVAL, "its layout changed: stop and start the node data path");
  const size_t ncpu = std::max(libbpf_num_possible_cpus(), 1);
  std::vector<uint64_t> value(ncpu);
  for (uint32_t r = 0; r < rows; r++)
    for (uint32_t c = 0; c < old_per_row; c++) {
      const uint32_t ok = r * old_per_row + c, nk = r * MC_CNT__MAX + c;
      if (bpf_map_lookup_elem(from, &ok, value.data()) == 0) bpf_map_update_elem(to, &nk, value.data(), BPF_ANY);
    }
}

}  // namespace

uint32_t DataPathSpec::pods() const { return max_pods ? max_pods : MC_DEFAULT_MAX_PODS; }
uint32_t DataPathSpec::connections() const { return max_connections ? max_connections : MC_DEFAULT_MAX_CONNECTIONS; }

nlohmann::json DataPathSpec::to_json() const {
  return {{"max_pods", pods()},      {"max_connections", connections()}, {"inbound", inbound},
          {"accelerate", accelerate}, {"key_netns", key_netns},         {"ingress_ifindex", ingress_ifindex},
          {"dns", dns}};
}

uint32_t max_pods_limit() { return kMaxPodsLimit; }

size_t max_proxy_ids() { return MC_MAX_IDS; }

const std::vector<ProgramSpec>& cgroup_programs() {
  static const std::vector<ProgramSpec> specs = {
      // Records, tags and lookups first, then the rewrites that depend on them.
      {"link_sockops", "mc_sockops"},
      {"link_getsockopt", "mc_getsockopt"},
      {"link_getpeername4", "mc_getpeername4"},
      {"link_getpeername6", "mc_getpeername6"},
      {"link_bind4", "mc_bind4"},
      {"link_bind6", "mc_bind6"},
      {"link_connect4", "mc_connect4"},
      {"link_connect6", "mc_connect6"},
      {"link_recvmsg4", "mc_recvmsg4", true},
      {"link_recvmsg6", "mc_recvmsg6", true},
      {"link_sendmsg4", "mc_sendmsg4", true},
      {"link_sendmsg6", "mc_sendmsg6", true},
  };
  return specs;
}

const std::vector<std::string>& counter_names() {
  static const std::vector<std::string> names = {
#define MC_COUNTER_NAME(id, name, what) #name,
      MC_COUNTERS(MC_COUNTER_NAME)
#undef MC_COUNTER_NAME
  };
  return names;
}

void DataPath::Deleter::operator()(meshcap_bpf* s) const { meshcap_bpf::destroy(s); }

DataPath::DataPath(const DataPathSpec& spec) : skel_(open_configured(spec, true)), spec_(spec) {
  static_assert(offsetof(meshcap_bpf::meshcap_bpf__rodata, mc_node) == 0, "mc_node leads .rodata");
}

DataPath::~DataPath() { detach_all(); }

void DataPath::detach_all() {
  for (auto* link : links_) bpf_link__destroy(link);
  links_.clear();
  link_pins_.clear();
}

int DataPath::program_fd(const std::string& name) const {
  bpf_program* p = bpf_object__find_program_by_name(skel_->obj, name.c_str());
  return p ? bpf_program__fd(p) : -1;
}

int DataPath::map_fd(const std::string& name) const {
  bpf_map* m = bpf_object__find_map_by_name(skel_->obj, name.c_str());
  return m ? bpf_map__fd(m) : -1;
}

void DataPath::load(const std::string& reuse_dir) {
  reuse_dir_ = reuse_dir;
  if (!reuse_dir.empty()) {
    bpf_map* map;
    bpf_object__for_each_map(map, skel_->obj) {
      if (bpf_map__is_internal(map)) continue;
      const std::string name = bpf_map__name(map);
      Fd old(bpf_obj_get(pin_of_map(reuse_dir, map).c_str()));
      if (old.fd < 0) continue;
      if (name == "orig_dst_prev") continue;  // decided below
      if (!same_shape(old.fd, map)) continue;
      if (int err = bpf_map__reuse_fd(map, old.fd)) throw LoaderError("reuse map " + name, err);
      reused_.push_back(name);
    }
    // A resized connection table: the old one answers what it still holds.
    if (std::find(reused_.begin(), reused_.end(), "orig_dst") == reused_.end()) {
      Fd old(bpf_obj_get((reuse_dir + "/map_orig_dst").c_str()));
      if (old.fd >= 0) {
        if (int err = bpf_map__reuse_fd(skel_->maps.orig_dst_prev, old.fd)) throw LoaderError("reuse map orig_dst", err);
        spdlog::info("the previous connection table answers the connections it still holds");
      }
    }
  }
  fault_point("load");
  if (spec_.inbound) fault_point("load-sk_lookup", Part::Inbound);
  if (int err = meshcap_bpf::load(skel_.get())) {
    // Only sk_lookup refused? Then outbound can still be eBPF's.
    Part part = Part::Outbound;
    if (spec_.inbound && reuse_dir.empty()) {
      std::unique_ptr<meshcap_bpf, Deleter> without(open_configured(spec_, false));
      if (meshcap_bpf::load(without.get()) == 0) part = Part::Inbound;
    }
    throw LoaderError(part == Part::Inbound ? "load mc_sk_lookup" : "load BPF programs", err,
                      "the kernel refuses the program", part);
  }
}

void DataPath::attach(const std::string& cgroup_dir) {
  Fd cg(open(cgroup_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (cg.fd < 0) throw LoaderError("open cgroup " + cgroup_dir, errno);
  fault_point("attach");
  for (const auto& spec : cgroup_programs()) {
    if (spec.dns && !spec_.dns) continue;
    bpf_program* prog = bpf_object__find_program_by_name(skel_->obj, spec.program);
    bpf_link* link = prog ? bpf_program__attach_cgroup(prog, cg.fd) : nullptr;
    if (!link) {
      int err = prog ? errno : ENOENT;
      detach_all();
      throw LoaderError(std::string("attach ") + spec.program + " to " + cgroup_dir, err);
    }
    links_.push_back(link);
    link_pins_.push_back(spec.pin);
  }
  if (spec_.accelerate) {
    // sk_msg has no bpf_link in libbpf 1.1: the program is attached to the
    // socket map and lives as long as the map (pinned).
    if (bpf_prog_attach(bpf_program__fd(skel_->progs.mc_accel), bpf_map__fd(skel_->maps.accel_socks),
                        BPF_SK_MSG_VERDICT, 0)) {
      int err = errno;
      detach_all();
      throw LoaderError("attach mc_accel to accel_socks", err);
    }
  }
  spdlog::debug("attached {} programs to {}", links_.size(), cgroup_dir);
}

void DataPath::pin(const std::string& dir) {
  make_pin_dirs(staging_root());
  make_pin_dirs(fs::path(dir).parent_path());
  const std::string tmp = staging_root() + "/" + fs::path(dir).filename().string() + "-" + std::to_string(getpid());
  remove_tree(tmp);
  if (mkdir(tmp.c_str(), 0700)) throw LoaderError("create " + tmp, errno);
  auto fail = [&](const std::string& step, int err) { throw LoaderError(step, err); };
  try {
    for (size_t i = 0; i < links_.size(); i++) {
      const std::string path = tmp + "/" + link_pins_[i];
      if (bpf_link__pin(links_[i], path.c_str())) fail("pin " + path, errno);
      fault_point("pin-link");
    }
    bpf_map* map;
    bpf_object__for_each_map(map, skel_->obj) {
      const std::string path = pin_of_map(tmp, map);
      if (bpf_obj_pin(bpf_map__fd(map), path.c_str())) fail("pin " + path, errno);
    }
    if (spec_.inbound && bpf_obj_pin(bpf_program__fd(skel_->progs.mc_sk_lookup), (tmp + "/prog_sk_lookup").c_str()))
      fail("pin " + tmp + "/prog_sk_lookup", errno);
    fault_point("pinned");
    if (rename(tmp.c_str(), dir.c_str())) fail("rename " + tmp + " to " + dir, errno);
  } catch (...) {
    for (auto* link : links_) bpf_link__unpin(link);
    remove_tree(tmp);
    detach_all();
    throw;
  }
  rmdir(staging_root().c_str());  // only when empty: another init may be staging
  // The pins now hold the links; this object no longer detaches them.
  for (auto* link : links_) bpf_link__disconnect(link);
  detach_all();
}

void DataPath::take_over(const std::string& dir, const std::string& cgroup_dir) {
  // 1. Maps made new (resized): the old entries, while nothing enrols (the
  // caller holds the node lock) and the old programs still run on the old
  // maps.
  bpf_map* map;
  bpf_object__for_each_map(map, skel_->obj) {
    const std::string name = bpf_map__name(map);
    if (bpf_map__is_internal(map) || std::find(reused_.begin(), reused_.end(), name) != reused_.end()) continue;
    if (is_socket_map(bpf_map__type(map)) || bpf_map__type(map) == BPF_MAP_TYPE_SK_STORAGE) continue;
    // orig_dst is read through orig_dst_prev instead: copying would race
    // with the handshakes the old programs still record.
    if (name == "orig_dst" || name == "orig_dst_prev" || name == "cookie_probe" || name == "dns_reverse") continue;
    Fd old(bpf_obj_get(pin_of_map(dir, map).c_str()));
    if (old.fd < 0) continue;
    if (name == "counters") {
      const auto old_spec = pinned_spec(dir);
      copy_counters(old.fd, bpf_map__fd(map), old_spec ? old_spec->pods() + 1 : 0);
    } else {
      copy_entries(old.fd, bpf_map__fd(map), name);
    }
  }
  // 2. Every pinned link switches to the new program.
  changed_pinned_ = true;
  auto update = [&](const std::string& pin, int prog_fd) {
    Fd link(bpf_obj_get(pin.c_str()));
    if (link.fd < 0) throw LoaderError("open " + pin, errno);
    fault_point("upgrade-link");
    if (bpf_link_update(link.fd, prog_fd, nullptr)) throw LoaderError("update " + pin, errno);
  };
  for (const auto& spec : cgroup_programs()) {
    const std::string pin = dir + "/" + spec.pin;
    const bool wanted = !spec.dns || spec_.dns, there = access(pin.c_str(), F_OK) == 0;
    if (wanted && there) {
      update(pin, program_fd(spec.program));
    } else if (wanted) {
      // A program the old data path did not have: attached beside the others.
      Fd cg(open(cgroup_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (cg.fd < 0) throw LoaderError("open cgroup " + cgroup_dir, errno);
      bpf_link* link = bpf_program__attach_cgroup(bpf_object__find_program_by_name(skel_->obj, spec.program), cg.fd);
      if (!link) throw LoaderError(std::string("attach ") + spec.program + " to " + cgroup_dir, errno);
      const int err = bpf_link__pin(link, pin.c_str()) ? errno : 0;
      if (!err) bpf_link__disconnect(link);  // the pin holds it now
      bpf_link__destroy(link);
      if (err) throw LoaderError("pin " + pin, err);
    } else if (there) {
      Fd link(bpf_obj_get(pin.c_str()));
      if (link.fd >= 0) bpf_link_detach(link.fd);
      unlink(pin.c_str());
    }
  }
  if (spec_.inbound)
    for (const auto& pod : enrolled_pins(dir)) {
      const std::string pin = pod_pins(dir, pod) + "/link_sk_lookup";
      if (access(pin.c_str(), F_OK) == 0) update(pin, bpf_program__fd(skel_->progs.mc_sk_lookup));
    }
  if (spec_.accelerate &&
      bpf_prog_attach(bpf_program__fd(skel_->progs.mc_accel), bpf_map__fd(skel_->maps.accel_socks), BPF_SK_MSG_VERDICT, 0))
    throw LoaderError("attach mc_accel to accel_socks", errno);
  // 3. The pins name the new maps and programs.
  bpf_object__for_each_map(map, skel_->obj) {
    const std::string path = pin_of_map(dir, map);
    if (std::find(reused_.begin(), reused_.end(), std::string(bpf_map__name(map))) != reused_.end()) continue;
    unlink(path.c_str());
    if (bpf_obj_pin(bpf_map__fd(map), path.c_str())) throw LoaderError("pin " + path, errno);
  }
  const std::string prog_pin = dir + "/prog_sk_lookup";
  unlink(prog_pin.c_str());
  if (spec_.inbound && bpf_obj_pin(bpf_program__fd(skel_->progs.mc_sk_lookup), prog_pin.c_str()))
    throw LoaderError("pin " + prog_pin, errno);
}

std::optional<DataPathSpec> pinned_spec(const std::string& dir) {
  Fd ro(bpf_obj_get((dir + "/map_rodata").c_str()));
  if (ro.fd < 0) return std::nullopt;
  bpf_map_info info{};
  __u32 len = sizeof(info);
  if (bpf_obj_get_info_by_fd(ro.fd, &info, &len) || info.value_size < sizeof(mc_node)) return std::nullopt;
  std::vector<uint8_t> value(info.value_size);
  uint32_t key = 0;
  if (bpf_map_lookup_elem(ro.fd, &key, value.data())) return std::nullopt;
  mc_node node{};
  std::memcpy(&node, value.data(), sizeof(node));
  DataPathSpec s;
  s.max_pods = node.max_pods;
  s.key_netns = node.key_netns;
  s.ingress_ifindex = node.ingress_ifindex;
  s.accelerate = node.accelerate;
  s.inbound = access((dir + "/prog_sk_lookup").c_str(), F_OK) == 0;
  s.dns = access((dir + "/link_sendmsg4").c_str(), F_OK) == 0;
  Fd table(bpf_obj_get((dir + "/map_orig_dst").c_str()));
  len = sizeof(info);
  if (table.fd >= 0 && bpf_obj_get_info_by_fd(table.fd, &info, &len) == 0) s.max_connections = info.max_entries;
  return s;
}

DataPathSpec loadable_spec(DataPathSpec want, std::vector<std::string>* dropped) {
  // Verified with small maps: sizes do not change what the verifier sees.
  auto loads = [](DataPathSpec s, std::string* why) {
    s.max_pods = 1;
    s.max_connections = 64;
    try {
      DataPath probe(s);
      probe.load();
      return true;
    } catch (const LoaderError& e) {
      *why = e.what();
      return false;
    }
  };
  struct Optional {
    bool DataPathSpec::*field;
    const char* what;
  };
  const Optional optional[] = {
      {&DataPathSpec::ingress_ifindex, "sk_lookup reading the arrival interface (-c, -k inbound)"},
      {&DataPathSpec::key_netns, "the netns cookie in the connection key"},
      {&DataPathSpec::accelerate, "sk_msg (--accelerate)"},
      {&DataPathSpec::dns, "sendmsg/recvmsg (DNS capture, --redirect-dns)"},
      {&DataPathSpec::inbound, "sk_lookup (inbound capture)"},
  };
  std::string why;
  if (loads(want, &why)) return want;
  for (const auto& o : optional) {
    if (!(want.*o.field)) continue;
    want.*o.field = false;
    if (dropped) dropped->push_back(std::string(o.what) + ": " + why);
    if (loads(want, &why)) return want;
  }
  throw LoaderError("load BPF programs", EPERM, "the kernel refuses meshcap's cgroup programs (" + why + ")");
}

Counters pinned_counters(const std::string& dir, uint32_t index) {
  Counters out;
  Fd fd(bpf_obj_get((dir + "/map_counters").c_str()));
  if (fd.fd < 0) return out;
  int ncpu = libbpf_num_possible_cpus();
  std::vector<uint64_t> values(ncpu > 0 ? ncpu : 1);
  for (uint32_t i = 0; i < MC_CNT__MAX; i++) {
    uint32_t key = index * MC_CNT__MAX + i;
    uint64_t sum = 0;
    if (bpf_map_lookup_elem(fd.fd, &key, values.data()) == 0)
      for (auto v : values) sum += v;
    out[counter_names()[i]] = sum;
  }
  return out;
}

size_t pinned_entries(const std::string& dir, const std::string& map) {
  Fd fd(bpf_obj_get((dir + "/map_" + map).c_str()));
  if (fd.fd < 0) return 0;
  bpf_map_info info{};
  __u32 len = sizeof(info);
  if (bpf_obj_get_info_by_fd(fd.fd, &info, &len)) return 0;
  std::vector<uint8_t> key(info.key_size), next(info.key_size);
  size_t n = 0;
  void* prev = nullptr;
  while (bpf_map_get_next_key(fd.fd, prev, next.data()) == 0) {
    n++;
    key = next;
    prev = key.data();
  }
  return n;
}

uint64_t pinned_memlock(const std::string& dir) {
  uint64_t total = 0;
  auto add = [&](const fs::path& pin) {
    Fd fd(bpf_obj_get(pin.c_str()));
    if (fd.fd < 0) return;
    std::ifstream in("/proc/self/fdinfo/" + std::to_string(fd.fd));
    std::string key;
    uint64_t value = 0;
    while (in >> key)
      if (key == "memlock:" && in >> value) total += value;
  };
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.path().filename().string().rfind("map_", 0) == 0) add(e.path());
  // Each enrolled pod's journal (pods/NAME/map_rows).
  for (const auto& e : fs::directory_iterator(fs::path(dir) / "pods", ec)) add(e.path() / "map_rows");
  return total;
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

Counters pinned_counters(const std::string& name) { return pinned_counters(pin_dir(name), 0); }
size_t pinned_connection_entries(const std::string& name) { return pinned_entries(pin_dir(name), "orig_dst"); }
size_t pinned_accelerated_sockets(const std::string& name) { return pinned_entries(pin_dir(name), "accel_socks"); }

bool remove_pins(const std::string& name) {
  std::error_code ec;
  bool there = fs::exists(pin_dir(name), ec);
  remove_tree(pin_dir(name));
  remove_tree(pin_root() + "/next/" + name);
  return remove_dead_staging(name) || there;
}

}  // namespace meshcap::loader
