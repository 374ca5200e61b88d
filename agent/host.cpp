#include "host.h"

#include <fcntl.h>
#include <sys/file.h>
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

NodeView NodeView::read() { return {NodeRecord::read(), loader::pinned_links(loader::node_dir())}; }

bool NodeView::up() const {
  return record && links.size() >= loader::cgroup_programs().size() &&
         std::all_of(links.begin(), links.end(), [](const loader::PinnedLink& l) { return l.attached; });
}

bool NodeView::not_ready() const {
  if (!record && links.empty()) return false;
  return !up() || upgrade_interrupted();
}

bool node_not_ready() { return NodeView::read().not_ready(); }

EbpfHost find_ebpf_host(const PodTarget& t, const std::optional<NodeView>& node) {
  EbpfHost h;
  const NodeView view = node ? *node : NodeView::read();
  const auto& record = view.record;
  const auto& links = view.links;
  const bool node_up = view.up();
  if (node_up) {
    h.kind = EbpfHost::Kind::Node;
    h.datapath_dir = loader::node_dir();
    h.cgroup_dir = record->cgroup;
    h.node_spec = loader::pinned_spec(loader::node_dir()).value_or(record->spec);
    if (!t.cgroup_dir.empty())
      spdlog::info("a node data path is running (cgroup {}): the pod is enrolled in it, --cgroup is not used",
                   record->cgroup);
    return h;
  }
  if (!links.empty() || record)
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
int lock_depth = 0;  // NodeLock nests within a process (flock would not)
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
