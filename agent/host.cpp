#include "host.h"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <csignal>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>

#include <spdlog/spdlog.h>

#include "pod_state.h"
#include "process_netns.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace meshcap {

namespace {

std::string node_record_path() { return state_root() + "/node.json"; }
std::string upgrade_marker() { return state_root() + "/node.upgrading"; }

// What this machine's kernel has, probed once per process and shared by
// every plan it makes: the answers do not change while it runs, and a
// long-lived `meshcap node serve` plans every pod's ADD with them.
class MachineKernel : public loader::KernelFeatures {
 public:
  std::optional<std::string> cgroup2_mount() override {
    std::lock_guard<std::mutex> g(mutex());
    static const std::optional<std::string> mount = machine().cgroup2_mount();
    return mount;
  }
  static bool shared_probe(loader::Feature f, std::string& detail) {
    std::lock_guard<std::mutex> g(mutex());
    const bool has = machine().has(f);
    detail = machine().detail(f);
    return has;
  }

 protected:
  bool probe(loader::Feature f, std::string& detail) override { return shared_probe(f, detail); }
  // The shared object batches the program rows on its first program probe.
  bool batch_program_probe() override { return false; }

 private:
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static loader::KernelFeatures& machine() {
    static loader::KernelFeatures k;
    return k;
  }
};

// The node data path's program rows are what it loaded; everything else is
// asked of the kernel (once per process).
class NodeKernel : public MachineKernel {
 public:
  /// `probe_optional`: the optional rows a plan asks for (sk_lookup reading
  /// the arrival interface, sk_msg) are asked of the kernel instead, so a
  /// data path about to be loaded is planned as it will load (5.10 has
  /// neither) rather than found short at run time.
  explicit NodeKernel(loader::DataPathSpec spec, bool probe_optional = false)
      : spec_(spec), probe_optional_(probe_optional) {}
  /// Every program row present: for a data path whose real load decides.
  static loader::DataPathSpec all() {
    loader::DataPathSpec s;
    s.inbound = s.accelerate = s.key_netns = s.ingress_ifindex = s.dns = true;
    return s;
  }

 protected:
  bool probe(loader::Feature f, std::string& detail) override {
    using F = loader::Feature;
    switch (f) {
      case F::prog_connect:
      case F::prog_getpeername:
      case F::prog_sockops:
      case F::prog_getsockopt:
        return true;
      case F::prog_sk_lookup:
        if (!spec_.inbound) detail = "the node data path was loaded without it";
        return spec_.inbound;
      case F::prog_sk_lookup_ifindex:
        if (probe_optional_) return shared_probe(f, detail);
        if (!spec_.ingress_ifindex) detail = "the node data path was loaded without it";
        return spec_.ingress_ifindex;
      case F::prog_key_netns:
        return spec_.key_netns;
      case F::prog_dns:
        if (probe_optional_) return shared_probe(f, detail);
        if (!spec_.dns) detail = "the node data path was loaded without it";
        return spec_.dns;
      case F::prog_sk_msg:
        if (probe_optional_) return shared_probe(f, detail);
        if (!spec_.accelerate) detail = "the node data path was started without --accelerate";
        return spec_.accelerate;
      default:
        return shared_probe(f, detail);
    }
  }

 private:
  loader::DataPathSpec spec_;
  bool probe_optional_ = false;
};

std::string now_utc() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

}  // namespace

json NodeRecord::to_json() const {
  return {{"cgroup", cgroup}, {"spec", spec.to_json()}, {"dropped", dropped}, {"started", started}};
}

std::optional<NodeRecord> NodeRecord::read() {
  std::ifstream in(node_record_path());
  if (!in) return std::nullopt;
  try {
    json j = json::parse(in);
    NodeRecord r;
    r.cgroup = j.at("cgroup");
    const auto& s = j.at("spec");
    r.spec.max_pods = s.value("max_pods", 0u);
    r.spec.max_connections = s.value("max_connections", 0u);
    r.spec.inbound = s.value("inbound", true);
    r.spec.accelerate = s.value("accelerate", false);
    r.spec.key_netns = s.value("key_netns", false);
    r.spec.ingress_ifindex = s.value("ingress_ifindex", false);
    r.spec.dns = s.value("dns", false);
    r.dropped = j.value("dropped", std::vector<std::string>{});
    r.started = j.value("started", "");
    return r;
  } catch (const std::exception& e) {
    spdlog::warn("unreadable {}: {}", node_record_path(), e.what());
    return std::nullopt;
  }
}

void NodeRecord::remove() {
  std::error_code ec;
  fs::remove(node_record_path(), ec);
}

void mark_upgrade(bool on) {
  std::error_code ec;
  if (!on) {
    fs::remove(upgrade_marker(), ec);
    return;
  }
  fs::create_directories(state_root(), ec);
  std::ofstream(upgrade_marker()) << getpid() << "\n";
}

bool upgrade_interrupted() {
  std::ifstream in(upgrade_marker());
  pid_t pid = 0;
  return in && in >> pid && pid != getpid() && (kill(pid, 0) != 0);
}

void NodeRecord::write() const {
  NodeRecord r = *this;
  if (r.started.empty()) r.started = now_utc();
  std::error_code ec;
  fs::create_directories(state_root(), ec);
  const std::string tmp = node_record_path() + ".tmp";
  {
    std::ofstream out(tmp);
    out << r.to_json().dump(2) << "\n";
    if (!out) throw std::runtime_error("cannot write " + tmp);
  }
  fs::rename(tmp, node_record_path());
}

namespace {

// The node's record file as stat sees it: a new `node start` writes a new
// file (renamed into place, a new inode and time), `node stop` removes it.
struct RecordVersion {
  dev_t dev = 0;
  ino_t ino = 0;
  timespec mtime{};
  off_t size = 0;
  std::string dir;  // the pins it goes with
  bool operator==(const RecordVersion& o) const {
    return dev == o.dev && ino == o.ino && mtime.tv_sec == o.mtime.tv_sec && mtime.tv_nsec == o.mtime.tv_nsec &&
           size == o.size && dir == o.dir;
  }
};

std::optional<RecordVersion> record_version() {
  struct stat st {};
  if (stat(node_record_path().c_str(), &st)) return std::nullopt;
  return RecordVersion{st.st_dev, st.st_ino, st.st_mtim, st.st_size, loader::node_dir()};
}

// What a process that keeps the node open holds (keep_node_open).
struct KeptNode {
  std::mutex m;
  bool on = false;
  std::optional<RecordVersion> version;  // of the view, links and spec below
  NodeView view;
  std::vector<int> link_fds;  // view.links' links, in the same order
  std::optional<std::optional<loader::DataPathSpec>> spec;
  std::optional<RecordVersion> table_version;
  std::shared_ptr<loader::PodTable> table;

  void forget_view() {
    for (int fd : link_fds) close(fd);
    link_fds.clear();
    view = NodeView{};
    spec.reset();
    version.reset();
  }
};

KeptNode& kept() {
  static KeptNode* k = new KeptNode;  // never destroyed: the agent's threads may use it at exit
  return *k;
}

NodeView read_node_view() { return {NodeRecord::read(), loader::pinned_links(loader::node_dir())}; }

}  // namespace

void keep_node_open() {
  std::lock_guard<std::mutex> hold(kept().m);
  kept().on = true;
}

void forget_changed_node() {
  KeptNode& k = kept();
  std::lock_guard<std::mutex> hold(k.m);
  const auto now = record_version();
  if (k.version && k.version != now) k.forget_view();
  if (k.table_version && k.table_version != now) {
    k.table.reset();
    k.table_version.reset();
  }
}

NodeView NodeView::read() {
  KeptNode& k = kept();
  std::lock_guard<std::mutex> hold(k.m);
  if (!k.on) return read_node_view();
  // The version is taken before the read: a record rewritten meanwhile
  // differs from it next time, and is read again then.
  const auto version = record_version();
  if (k.version && k.version == version) {
    bool whole = true;
    for (size_t i = 0; i < k.link_fds.size(); i++) {
      loader::read_link_state(k.link_fds[i], k.view.links[i]);
      whole = whole && k.view.links[i].attached;
    }
    if (whole) return k.view;
  }
  k.forget_view();
  NodeView v = read_node_view();
  if (!version || !v.up()) return v;  // kept only when whole
  std::vector<int> fds;
  for (const auto& l : v.links) {
    const int fd = bpf_obj_get((loader::node_dir() + "/" + l.pin).c_str());
    if (fd < 0) {
      for (int f : fds) close(f);
      return v;
    }
    fds.push_back(fd);
  }
  k.view = v;
  k.link_fds = std::move(fds);
  k.version = version;
  return v;
}

std::optional<loader::DataPathSpec> node_pinned_spec(const std::string& dir) {
  KeptNode& k = kept();
  std::lock_guard<std::mutex> hold(k.m);
  if (!k.on || dir != loader::node_dir()) return loader::pinned_spec(dir);
  const auto version = record_version();
  if (k.spec && k.version && k.version == version) return *k.spec;
  auto spec = loader::pinned_spec(dir);
  if (k.version && k.version == version) k.spec = spec;
  return spec;
}

std::shared_ptr<loader::PodTable> pod_table(const std::string& dir) {
  KeptNode& k = kept();
  std::lock_guard<std::mutex> hold(k.m);
  if (!k.on || dir != loader::node_dir()) return std::make_shared<loader::PodTable>(dir);
  const auto version = record_version();
  if (k.table && version && k.table_version == version) return k.table;
  k.table.reset();
  k.table_version.reset();
  auto t = std::make_shared<loader::PodTable>(dir);
  if (version) {
    k.table = t;
    k.table_version = version;
  }
  return t;
}

bool NodeView::up() const {
  // Every program but DNS capture's, which a kernel may refuse.
  const auto& programs = loader::cgroup_programs();
  const bool all_pinned = std::all_of(programs.begin(), programs.end(), [&](const loader::ProgramSpec& p) {
    return p.dns || std::any_of(links.begin(), links.end(), [&](const loader::PinnedLink& l) { return l.pin == p.pin; });
  });
  return record && all_pinned &&
         std::all_of(links.begin(), links.end(), [](const loader::PinnedLink& l) { return l.attached; });
}

bool NodeView::not_ready() const {
  if (!record && links.empty()) return false;
  return !up() || upgrade_interrupted();
}

bool node_not_ready() { return NodeView::read().not_ready(); }

namespace {

// Whether cgroup directory `dir` is `ancestor` or below it.
bool cgroup_within(const std::string& dir, const std::string& ancestor) {
  struct stat a {};
  if (stat(ancestor.c_str(), &a)) return false;
  // By identity, directory by directory up to the mount's root: the two
  // paths may name the hierarchy through different mounts.
  for (fs::path p = dir;; p = p.parent_path()) {
    struct stat here {};
    if (stat(p.c_str(), &here) || here.st_dev != a.st_dev) return false;
    if (here.st_ino == a.st_ino) return true;
    if (!p.has_relative_path()) return false;
  }
}

// The task iterator, when this process loaded one (read_namespaces_with_bpf).
std::unique_ptr<loader::ProcessNamespaces> task_iterator;
std::mutex task_iterator_mutex;

// The processes in namespace `netns_ino`, but this one.
std::vector<std::string> processes_in(uint64_t netns_ino) {
  std::vector<std::string> out;
  const pid_t self = getpid();
  {
    std::lock_guard<std::mutex> hold(task_iterator_mutex);
    if (task_iterator) {
      try {
        for (const pid_t pid : task_iterator->in_netns(netns_ino))
          if (pid != self) out.push_back(std::to_string(pid));
        return out;
      } catch (const loader::LoaderError& e) {
        spdlog::warn("{}: walking /proc instead", e.what());
      }
    }
  }
  const std::string own = std::to_string(self);
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string pid = e.path().filename();
    if (pid == own || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    struct stat ns {};
    if (stat(("/proc/" + pid + "/ns/net").c_str(), &ns) == 0 && ns.st_ino == netns_ino) out.push_back(pid);
  }
  return out;
}

// processes_outside, with the cgroup2 mount already read.
std::vector<std::string> strays(uint64_t netns_ino, const std::string& cgroup_dir, const std::string& mount) {
  std::vector<std::string> out;
  if (cgroup_dir.empty() || netns_ino == 0) return out;
  for (const std::string& pid : processes_in(netns_ino)) {
    std::ifstream in("/proc/" + pid + "/cgroup");
    std::string line, path;
    while (std::getline(in, line))
      if (line.rfind("0::", 0) == 0) path = mount + (line.substr(3) == "/" ? "" : line.substr(3));
    struct stat cg {};
    if (path.empty() || stat(path.c_str(), &cg)) continue;  // a kernel thread, gone, or not seen from here
    if (!cgroup_within(path, cgroup_dir)) out.push_back(pid + " in cgroup " + path);
  }
  return out;
}

}  // namespace

std::vector<std::string> processes_outside(uint64_t netns_ino, const std::string& cgroup_dir) {
  const auto mount = cgroup2_mount();
  return mount ? strays(netns_ino, cgroup_dir, *mount) : std::vector<std::string>{};
}

bool read_namespaces_with_bpf(std::string& why) {
  try {
    auto it = std::make_unique<loader::ProcessNamespaces>();
    std::lock_guard<std::mutex> hold(task_iterator_mutex);
    task_iterator = std::move(it);
    return true;
  } catch (const loader::LoaderError& e) {
    why = e.what();
    return false;
  }
}

EbpfHost find_ebpf_host(const PodTarget& t, const std::optional<NodeView>& node, bool check_processes) {
  EbpfHost h;
  const NodeView view = node ? *node : NodeView::read();
  const auto& record = view.record;
  const auto& links = view.links;
  const bool node_up = view.up();
  // Whether the node's cgroup holds the pod, where that can be told: the
  // node's cgroup seen from here (not from inside a cgroup namespace of
  // this process's own, where the pod is enrolled as it always was).
  struct stat node_cg {};
  const bool visible = node_up && stat(record->cgroup.c_str(), &node_cg) == 0;
  // A pod whose application cgroup is given and lies outside the node's:
  // the node's programs never see its sockets, so enrolling it would
  // capture its inbound and not its outbound. It gets its own programs.
  const bool outside_node = visible && !t.cgroup_dir.empty() && !cgroup_within(t.cgroup_dir, record->cgroup);
  // Without a cgroup given, the processes already in the pod's namespace
  // (none yet for a CNI ADD); a node on the hierarchy's root holds them all.
  // Processes there that the node's cgroup does not hold (a runtime that
  // puts the pod's containers elsewhere) would pass uncaptured while the
  // pod is reported captured: nowhere for eBPF, then; iptables holds the
  // whole namespace.
  const auto mount = visible && check_processes && !outside_node ? cgroup2_mount() : std::nullopt;
  if (mount && !cgroup_within(*mount, record->cgroup)) {
    if (const auto found = strays(t.netns.ino, record->cgroup, *mount); !found.empty()) {
      h.why_none = "a node data path is running (cgroup " + record->cgroup + "), but " +
                   std::to_string(found.size()) + " process" + (found.size() == 1 ? "" : "es") +
                   " in the pod's network namespace " + (found.size() == 1 ? "is" : "are") +
                   " outside it (pid " + found.front() + "), whose connections its programs would not see";
      return h;
    }
  }
  if (node_up && !outside_node) {
    h.kind = EbpfHost::Kind::Node;
    h.datapath_dir = loader::node_dir();
    h.cgroup_dir = record->cgroup;
    h.node_spec = node_pinned_spec(loader::node_dir()).value_or(record->spec);
    if (!t.cgroup_dir.empty())
      spdlog::info("a node data path is running (cgroup {}){} {}: the pod is enrolled in it", record->cgroup,
                   visible ? " and holds" : ", not seen from here to tell whether it holds", t.cgroup_dir);
    return h;
  }
  if (outside_node)
    spdlog::info("a node data path is running (cgroup {}), but the pod's cgroup {} is not below it: the pod gets "
                 "its own programs on its cgroup",
                 record->cgroup, t.cgroup_dir);
  else if (!links.empty() || record)
    spdlog::warn("the node data path is not whole (links detached or its record missing): run `meshcap node start` "
                 "to repair it; pods are not enrolled in it meanwhile");
  if (!t.cgroup_dir.empty()) {
    h.kind = EbpfHost::Kind::Pod;
    h.datapath_dir = loader::pin_dir(t.name);
    h.cgroup_dir = t.cgroup_dir;
    return h;
  }
  h.why_none =
      "no node data path is running and no cgroup was given for the pod's own programs (give --cgroup: the pod's "
      "cgroup v2 directory that holds the application, or start one with `meshcap node start`)";
  return h;
}

std::unique_ptr<loader::KernelFeatures> kernel_for(const EbpfHost& host, bool loading) {
  if (host.kind == EbpfHost::Kind::Node && host.node_spec) return std::make_unique<NodeKernel>(*host.node_spec);
  if (host.kind == EbpfHost::Kind::Pod && loading) return std::make_unique<NodeKernel>(NodeKernel::all(), true);
  return std::make_unique<MachineKernel>();
}

namespace {
// NodeLock nests within a thread (flock would not); threads lock apart (the
// agent answers requests on a thread of its own).
thread_local int lock_depth = 0;
}

NodeLock::NodeLock() {
  if (lock_depth++ > 0) return;
  std::error_code ec;
  fs::create_directories(state_root(), ec);
  const std::string path = state_root() + "/node.lock";
  fd_ = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd_ < 0 || flock(fd_, LOCK_EX)) {
    --lock_depth;
    if (fd_ >= 0) close(fd_);
    throw std::runtime_error("cannot lock " + path);
  }
}

NodeLock::~NodeLock() {
  --lock_depth;
  if (fd_ >= 0) close(fd_);
}

}  // namespace meshcap
