// Node mode: one data path on a test node's cgroup (tests/support
// TestNode), pods enrolled by network namespace. Measures enrolling a pod
// (in-process and with `meshcap init`) against iptables-restore of istio's
// payload, the kernel memory of the maps with many pods against one pod's
// own data path, connection setup of an enrolled pod with one pod and with
// many enrolled, and what the data path costs a namespace that is not
// enrolled. The many pods are bare namespaces (NetnsFleet), enrolled
// in-process: the map updates `meshcap init` makes, without its process.
// That last cost is also measured against its floor: programs that only
// return "allow", at the same hooks, on a cgroup of their own.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <bpf/bpf.h>

#include "datapath.h"
#include "enrollment.h"
#include "istio_flags.h"
#include "phases.h"
#include "pins.h"
#include "pod_netns.h"
#include "run_control.h"
#include "support/cleanup.h"
#include "support/netns_fleet.h"
#include "support/test_node.h"

namespace meshcap::bench {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

/// istio-init's arguments, for every enrolment and restore timed here and
/// for the memory comparison.
const std::vector<std::string>& kIstioFlags = istio_sidecar_flags();

const char* const kOnePod = "node-1-pod";
const char* const kUnenrolledOff = "unenrolled-node-off";
const char* const kUnenrolledOn = "unenrolled-node-on";
const char* const kUnenrolledFloor = "unenrolled-empty-programs";
const char* const kInitAgent = "meshcap init";
const char* const kInitOwn = "meshcap init, own process";
std::string many_pods(size_t n) { return "node-" + std::to_string(n) + "-pods"; }

/// The floor under what the node data path costs a namespace it does not
/// enrol: for each cgroup link of the node (its attach type and program
/// type), a program that only returns 1 ("allow", "keep going"), attached
/// with a bpf_link to a cgroup of its own beside the node's. A client in
/// `leaf()` pays the kernel's cost of running a cgroup program at every
/// hook the node uses, and nothing of meshcap's. The links go with their
/// descriptors (on any exit, a signal included); the cgroup is registered
/// for the test support's emergency removal.
class EmptyPrograms {
 public:
  explicit EmptyPrograms(const std::string& node_dir);
  ~EmptyPrograms();
  EmptyPrograms(const EmptyPrograms&) = delete;
  EmptyPrograms& operator=(const EmptyPrograms&) = delete;

  const std::string& leaf() const { return leaf_; }
  size_t size() const { return links_.size(); }
  /// Run counts and run time of the empty programs, named "empty_<pin>".
  ProgramStats stats() const;

 private:
  void attach(const std::string& node_dir);
  void remove() noexcept;

  std::string cgroup_, leaf_;
  int group_ = -1, slot_ = -1;
  std::vector<std::pair<std::string, test::UniqueFd>> progs_;
  std::vector<test::UniqueFd> links_;
};

EmptyPrograms::EmptyPrograms(const std::string& node_dir) {
  test::detail::install_cleanup_handlers();
  group_ = test::detail::new_group();
  cgroup_ = test::make_unique_cgroup("mcfloor").path;
  slot_ = test::detail::register_resource(test::detail::Resource::cgroup, group_, cgroup_);
  try {
    attach(node_dir);
  } catch (...) {
    remove();
    throw;
  }
}

void EmptyPrograms::attach(const std::string& node_dir) {
  leaf_ = cgroup_ + "/client";
  if (::mkdir(leaf_.c_str(), 0755) != 0) throw std::runtime_error("mkdir " + leaf_ + ": " + std::strerror(errno));
  const test::UniqueFd cg(::open(cgroup_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!cg) throw std::runtime_error("open " + cgroup_ + ": " + std::strerror(errno));
  // r0 = 1; exit
  const bpf_insn allow[] = {{BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 1}, {BPF_JMP | BPF_EXIT, 0, 0, 0, 0}};
  for (const auto& l : loader::pinned_links(node_dir)) {
    if (!l.cgroup_id) continue;  // the pods' sk_lookup links hang off namespaces
    const test::UniqueFd link(bpf_obj_get((node_dir + "/" + l.pin).c_str()));
    bpf_link_info li{};
    __u32 len = sizeof li;
    if (!link || bpf_obj_get_info_by_fd(link.get(), &li, &len) != 0)
      throw std::runtime_error("reading the node's " + l.pin + ": " + std::strerror(errno));
    const test::UniqueFd prog(bpf_prog_get_fd_by_id(li.prog_id));
    bpf_prog_info pi{};
    len = sizeof pi;
    if (!prog || bpf_obj_get_info_by_fd(prog.get(), &pi, &len) != 0)
      throw std::runtime_error("reading the program of the node's " + l.pin + ": " + std::strerror(errno));
    const auto attach = static_cast<bpf_attach_type>(li.cgroup.attach_type);
    LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = attach);
    test::UniqueFd empty(bpf_prog_load(static_cast<bpf_prog_type>(pi.type), "mc_empty", "GPL", allow, 2, &opts));
    if (!empty) throw std::runtime_error("loading an empty program for " + l.pin + ": " + std::strerror(errno));
    test::UniqueFd attached(bpf_link_create(empty.get(), cg.get(), attach, nullptr));
    if (!attached) throw std::runtime_error("attaching an empty program for " + l.pin + ": " + std::strerror(errno));
    links_.push_back(std::move(attached));
    progs_.emplace_back("empty_" + l.pin.substr(l.pin.find('_') + 1), std::move(empty));
  }
  if (links_.empty()) throw std::runtime_error("the node at " + node_dir + " has no cgroup links to mirror");
}

EmptyPrograms::~EmptyPrograms() { remove(); }

void EmptyPrograms::remove() noexcept {
  links_.clear();  // detached with their last descriptor
  progs_.clear();
  test::detail::kill_cgroup_and_remove(cgroup_.c_str(), 5000);
  test::detail::unregister_resource(slot_);
}

ProgramStats EmptyPrograms::stats() const {
  ProgramStats out;
  for (const auto& [name, fd] : progs_) {
    bpf_prog_info info{};
    __u32 len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd.get(), &info, &len) == 0) out[name] = {info.run_cnt, info.run_time_ns};
  }
  return out;
}

class NodePhase {
 public:
  explicit NodePhase(Bench& b) : b_(b), p_(b.profile()), fig_(b.res.node) {}
  void run();

 private:
  void measure_own_data_path();
  void start_node();
  void build_pods();
  void time_enrolments();
  void time_enrolment_job(const std::string& kind, size_t ns);
  void read_agent_times(const std::string& log);
  void measure_connections();
  void set_state(bool many);
  void measure_memory(const std::string& key);
  void measure_bpf_stats();
  std::string unenrolled_cgroup(const std::string& variant) const;
  loader::PodSettings settings(const std::string& path) const;
  uint64_t enroll_fleet_pod(size_t i);
  void unenroll_fleet_pod(size_t i);
  void add_time(const std::string& key, double s, const std::string& how);
  void define_variants();

  Bench& b_;
  const Profile& p_;
  NodeFigures& fig_;
  std::unique_ptr<test::TestNode> node_;
  std::unique_ptr<ScopedMeshcapDirs> dirs_;
  std::unique_ptr<test::NetnsFleet> fleet_;
  std::unique_ptr<loader::PodTable> table_;
  std::vector<uint64_t> cookies_;  // of fleet pods, 0 when not enrolled
  std::unique_ptr<Rig> pod_;       // the measured pod, enrolled with meshcap init
  std::unique_ptr<Rig> outsider_;  // a pod no node enrols
  std::string leaf_;               // a cgroup below the node's, for the outsider's client
  std::unique_ptr<EmptyPrograms> floor_;  // the same hooks with empty programs, beside the node
  size_t next_fresh_ = 0;          // fleet namespaces past the many pods: fresh ones
  bool many_ = false;
};

void NodePhase::add_time(const std::string& key, double s, const std::string& how) {
  fig_.seconds[key].push_back(s);
  fig_.how[key] = how;
}

// The comparison the memory target makes: one pod in its own data path.
void NodePhase::measure_own_data_path() {
  Rig own("node-own-data-path", Capture::ebpf, Sidecar::bare, b_.ro);
  b_.track(own);
  own.apply_flags(kIstioFlags);
  fig_.memlock["per-pod data path, 1 pod"] = loader::pinned_memlock(loader::pin_dir(own.name()));
  own.remove();
}

void NodePhase::start_node() {
  node_ = std::make_unique<test::TestNode>(b_.opt.meshcap_bin);
  dirs_ = std::make_unique<ScopedMeshcapDirs>(node_->pin_dir(), node_->state_dir());
  const size_t max_pods = std::max<size_t>(256, p_.node_pods + 16);
  const auto t0 = Clock::now();
  const auto r = node_->start({"--max-pods", std::to_string(max_pods)});
  if (!r.ok()) throw std::runtime_error("meshcap node start: " + r.output);
  add_time("node start", since(t0), "meshcap node start --max-pods " + std::to_string(max_pods));
  table_ = std::make_unique<loader::PodTable>(loader::node_dir());
  fig_.max_pods = max_pods;
}

void NodePhase::build_pods() {
  RigOptions in_node = b_.ro;
  in_node.node = true;
  in_node.cgroup_parent = node_->cgroup_path();
  pod_ = std::make_unique<Rig>("node-pod", Capture::ebpf, Sidecar::echo, in_node);
  outsider_ = std::make_unique<Rig>("unenrolled", Capture::none, Sidecar::none, b_.ro);
  b_.track(*pod_);
  b_.track(*outsider_);
  pod_->apply({});
  leaf_ = node_->cgroup_path() + "/unenrolled-" + outsider_->pod().suffix();
  test::run_command_checked({"mkdir", "-p", leaf_});
  floor_ = std::make_unique<EmptyPrograms>(loader::node_dir());
  spdlog::info("node phase: {} empty programs on {}", floor_->size(), floor_->leaf());
  // The many pods, and fresh namespaces for every timed enrolment and restore.
  const size_t fresh = 5 * static_cast<size_t>(p_.node_enrol_reps);
  const auto t0 = Clock::now();
  fleet_ = std::make_unique<test::NetnsFleet>(p_.node_pods - 1 + fresh);
  add_time("create namespaces", since(t0) / static_cast<double>(fleet_->size()),
           "a network namespace with a veth (NetnsFleet), per namespace");
  cookies_.assign(fleet_->size(), 0);
  next_fresh_ = p_.node_pods - 1;
}

loader::PodSettings NodePhase::settings(const std::string& path) const {
  const EnvLookup no_env = [](const std::string&) { return std::optional<std::string>{}; };
  return {parse_capture_args(kIstioFlags, no_env), loader::read_pod_network(path), true, false, false};
}

uint64_t NodePhase::enroll_fleet_pod(size_t i) {
  const loader::PodSettings s = settings(fleet_->path(i));
  const auto t0 = Clock::now();
  table_->enroll("f" + std::to_string(i), s.net.netns.cookie, fleet_->path(i), s);
  const double t = since(t0);
  cookies_[i] = s.net.netns.cookie;
  return static_cast<uint64_t>(t * 1e9);
}

void NodePhase::unenroll_fleet_pod(size_t i) {
  table_->unenroll("f" + std::to_string(i), cookies_[i]);
  cookies_[i] = 0;
}

// Every enrolment and restore on a namespace of its own, the kinds
// shuffled together, with the many pods enrolled (the node's worst case).
// `meshcap init` runs as a node runs it, with the node's agent (`meshcap
// node serve`) answering, and in its own process (MESHCAP_NO_AGENT).
void NodePhase::time_enrolments() {
  std::vector<std::string> jobs;
  for (int rep = 0; rep < p_.node_enrol_reps; rep++)
    for (const char* kind :
         {"enroll", kInitAgent, kInitOwn, "iptables-nft-restore", "iptables-legacy-restore"})
      if (p_.legacy || std::string(kind) != "iptables-legacy-restore") jobs.push_back(kind);
  std::shuffle(jobs.begin(), jobs.end(), b_.rng);
  const std::string log = node_->state_dir() + "-bench-agent.log";
  pid_t agent = start_node_agent(b_, node_->cgroup_path(), fig_.max_pods, node_->state_dir(), log);
  try {
    table_ = std::make_unique<loader::PodTable>(loader::node_dir());  // the agent's node start replaced it in place
    for (const auto& kind : jobs) {
      check_stop();
      time_enrolment_job(kind, next_fresh_++);
    }
  } catch (...) {
    stop_node_agent(agent);
    std::filesystem::remove(log);
    throw;
  }
  stop_node_agent(agent);
  read_agent_times(log);
  std::filesystem::remove(log);
}

// The agent's own time per `meshcap init` it answered (its log: from the
// request's receipt to the answer).
void NodePhase::read_agent_times(const std::string& log) {
  std::ifstream in(log);
  std::string line;
  const std::string mark = " answered: exit 0, ";
  while (std::getline(in, line))
    if (const size_t at = line.find(mark); at != std::string::npos && line.find("meshcap init of pid") != std::string::npos)
      add_time("meshcap init: the agent's part", std::stod(line.substr(at + mark.size())) / 1e3,
               "the agent's time per meshcap init it answered (its log)");
}

void NodePhase::time_enrolment_job(const std::string& kind, size_t ns) {
  const std::string path = fleet_->path(ns), name = "f" + std::to_string(ns);
  if (kind == "enroll") {
    const auto t0 = Clock::now();
    const loader::PodSettings s = settings(path);
    const double read = since(t0);
    const auto t1 = Clock::now();
    table_->enroll(name, s.net.netns.cookie, path, s);
    add_time("enroll in-process", since(t1), "loader::PodTable::enroll (settings and cookie ready)");
    add_time("read the namespace", read, "loader::read_pod_network (addresses, routes, cookie)");
    const auto t2 = Clock::now();
    table_->unenroll(name, s.net.netns.cookie);
    add_time("unenroll in-process", since(t2), "loader::PodTable::unenroll");
    return;
  }
  if (kind == kInitAgent || kind == kInitOwn) {
    std::vector<std::string> argv = {b_.opt.meshcap_bin, "init", "--name", name, "--netns", path};
    argv.insert(argv.end(), kIstioFlags.begin(), kIstioFlags.end());
    if (kind == kInitOwn) ::setenv("MESHCAP_NO_AGENT", "1", 1);
    const Timed t = run_timed(argv);
    ::unsetenv("MESHCAP_NO_AGENT");
    if (!t.ok()) throw std::runtime_error("meshcap init into the node: " + t.output);
    add_time(kind, t.seconds,
             kind == kInitAgent ? "meshcap init --name N --netns PATH <istio-init's flags> (process; the node's agent answers)"
                                : "the same with MESHCAP_NO_AGENT=1 (the enrolment in init's own process)");
    const Timed c = run_timed({b_.opt.meshcap_bin, "cleanup", "--name", name});
    add_time("meshcap cleanup", c.seconds, "meshcap cleanup --name N (process)");
    return;
  }
  const Timed t = bare_restore(kind == "iptables-legacy-restore", istio_payload_for(kIstioFlags), path);
  if (!t.ok()) throw std::runtime_error(kind + ": " + t.output);
  add_time(kind, t.seconds, kind + " --noflush of istio's payload, in a fresh namespace (process)");
}

// All fleet pods but the fresh ones enrolled (many) or none (one pod: the
// measured one). Each enrolment is timed: the k-th pod's enrolment.
void NodePhase::set_state(bool many) {
  if (many == many_) return;
  const auto t0 = Clock::now();
  for (size_t i = 0; i + 1 < p_.node_pods; i++) {
    check_stop();
    if (many) {
      const uint64_t ns = enroll_fleet_pod(i);
      if (fig_.enroll_by_count.size() < p_.node_pods) fig_.enroll_by_count.push_back(ns / 1e9);
    } else {
      unenroll_fleet_pod(i);
    }
  }
  add_time(many ? "enroll the many pods" : "unenroll the many pods", since(t0),
           "loader::PodTable::(un)enroll of " + std::to_string(p_.node_pods - 1) + " pods, in-process");
  many_ = many;
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
}

void NodePhase::measure_memory(const std::string& key) {
  const auto r = node_->meshcap({"node", "status", "--json"});
  const auto j = nlohmann::json::parse(r.output.substr(r.output.find('{')));
  fig_.memlock[key] = j.at("maps").at("memlock_bytes").get<uint64_t>();
  fig_.enrolled[key] = j.at("pods_enrolled").get<size_t>();
}

void NodePhase::define_variants() {
  const std::string many = many_pods(p_.node_pods);
  for (const std::string& name : {std::string(kOnePod), many})
    b_.res.variants.push_back({name, "node-pod", false, kEchoPort, 0, "node", "ebpf-node", false, false, "local"});
  for (const char* name : {kUnenrolledOff, kUnenrolledOn, kUnenrolledFloor})
    b_.res.variants.push_back({name, "unenrolled", false, kEchoPort, 0, "node", "none", false, false, "direct"});
}

// Rounds of: both states in shuffled order; in each, the enrolled pod's
// connection setup; with many pods, also the namespace that is not
// enrolled, its client inside the node's cgroup (on), outside (off), or
// under the empty programs (the floor).
void NodePhase::measure_connections() {
  define_variants();
  const VariantDef probe_pod{"node", "", false, kEchoPort, 0, "node", "", false, false, "local"};
  const VariantDef probe_out{"unenrolled", "", false, kEchoPort, 0, "node", "", false, false, "direct"};
  for (const auto& [rig, v] : {std::pair{pod_.get(), &probe_pod}, std::pair{outsider_.get(), &probe_out}})
    if (const std::string bad = verify_variant(*rig, *v); !bad.empty()) throw std::runtime_error(bad);
  for (int round = 0; round < p_.node_rounds; round++) {
    std::vector<bool> states = {false, true};
    std::shuffle(states.begin(), states.end(), b_.rng);
    for (bool many : states) {
      set_state(many);
      if (many) measure_memory("node data path, " + std::to_string(p_.node_pods) + " pods");
      std::vector<std::string> jobs = {many ? many_pods(p_.node_pods) : kOnePod};
      if (many) jobs.insert(jobs.end(), {kUnenrolledOff, kUnenrolledOn, kUnenrolledFloor});
      std::shuffle(jobs.begin(), jobs.end(), b_.rng);
      for (const auto& name : jobs) {
        check_stop();
        const VariantDef& v = *b_.res.variant(name);
        Rig& rig = v.rig == "node-pod" ? *pod_ : *outsider_;
        ClientSpec s = spec_for(p_, v, rig, "connect", false);
        if (v.rig == "unenrolled") s.cgroup = unenrolled_cgroup(name);
        record(b_.res.cells[CellKey{"node", "connect", name, 0}], "connect", rig.run_client(s), b_.res,
               "node connect " + name, round);
      }
    }
    spdlog::info("node round {}/{} done", round + 1, p_.node_rounds);
  }
}

// Where the namespace that is not enrolled runs its client for `variant`.
std::string NodePhase::unenrolled_cgroup(const std::string& variant) const {
  if (variant == kUnenrolledOn) return leaf_;
  if (variant == kUnenrolledFloor) return floor_->leaf();
  return outsider_->pod().cgroup_path();
}

// BPF run time of the node's programs, statistics on, in extra jobs: the
// enrolled pod alone and among the many pods (what the kernel's part of
// node-connect-N-vs-1-pods is), the namespace that is not enrolled; and of
// the empty programs, the floor under the unenrolled namespace's. The two
// states alternate over a few repetitions, in shuffled order, and each
// variant's run time and connections are summed over them: one job each
// would compare two moments of a machine whose speed drifts.
void NodePhase::measure_bpf_stats() {
  const test::UniqueFd stats(bpf_enable_stats(BPF_STATS_RUN_TIME));
  if (!stats) return;
  constexpr int kReps = 3;
  std::map<std::string, std::pair<uint64_t, ProgramStats>> sum;  // variant -> connections, run counts and time
  for (int rep = 0; rep < kReps; rep++) {
    std::vector<bool> states = {false, true};
    std::shuffle(states.begin(), states.end(), b_.rng);
    for (bool many : states) {
      set_state(many);
      const std::vector<std::string> names =
          many ? std::vector<std::string>{many_pods(p_.node_pods), kUnenrolledOn, kUnenrolledFloor}
               : std::vector<std::string>{kOnePod};
      for (const std::string& name : names) {
        check_stop();
        const VariantDef& v = *b_.res.variant(name);
        Rig& rig = v.rig == "node-pod" ? *pod_ : *outsider_;
        ClientSpec s = spec_for(p_, v, rig, "connect", false);
        const bool floor = name == kUnenrolledFloor;
        if (v.rig == "unenrolled") s.cgroup = unenrolled_cgroup(name);
        const ProgramStats before = floor ? floor_->stats() : program_stats(loader::node_dir());
        const ClientResult cr = rig.run_client(s);
        const ProgramStats after = floor ? floor_->stats() : program_stats(loader::node_dir());
        auto& [units, progs] = sum[name];
        units += units_of(s, cr);
        add_stats_delta(progs, before, after);
      }
    }
  }
  for (const auto& [name, totals] : sum) add_prog_stats(b_.res, name, "connect", totals.first, {}, totals.second);
}

void NodePhase::run() {
  const auto t0 = Clock::now();
  measure_own_data_path();
  start_node();
  build_pods();
  measure_memory("node data path, 1 pod");
  set_state(true);
  time_enrolments();
  measure_connections();
  measure_bpf_stats();
  fig_.pods = p_.node_pods;
  // The measured pod's capture goes with its rig (meshcap cleanup); the
  // fleet's rows go with the data path (node stop), the namespaces with
  // their descriptors.
  pod_.reset();
  floor_.reset();
  outsider_.reset();
  table_.reset();
  dirs_.reset();
  node_.reset();
  const auto t1 = Clock::now();
  fleet_.reset();
  add_time("remove namespaces", since(t1), "closing every namespace's descriptor (the kernel frees them later)");
  spdlog::info("node phase: {:.0f} s", since(t0));
}

}  // namespace

void run_node_phase(Bench& b) {
  if (b.opt.no_node) return;
  NodePhase(b).run();
}

}  // namespace meshcap::bench
