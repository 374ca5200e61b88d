#include "phases.h"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include <spdlog/spdlog.h>

#include "agent_client.h"
#include "run_control.h"

namespace meshcap::bench {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

bool has(const std::vector<std::string>& v, const std::string& s) { return std::find(v.begin(), v.end(), s) != v.end(); }

// The main phase's jobs of one round: every active variant's workloads.
std::vector<std::pair<const VariantDef*, std::string>> main_jobs(const Bench& b) {
  std::vector<std::pair<const VariantDef*, std::string>> jobs;
  for (const auto& v : b.res.variants) {
    if (!b.active(v)) continue;
    if (has(b.res.workloads, "connect")) jobs.push_back({&v, "connect"});
    if (!v.persistent) continue;
    for (const auto& w : b.res.workloads)
      if (w != "connect" && (w != "throughput" || v.sink_port)) jobs.push_back({&v, w});
  }
  return jobs;
}

}  // namespace

bool Bench::active(const VariantDef& v) const { return !has(dropped, v.name); }

void Bench::track(Rig& rig) {
  pod_suffixes.push_back(rig.pod().suffix());
  for (pid_t pid : rig.server_pids()) server_pids.push_back(pid);
}

void Bench::run_job(const VariantDef& v, const std::string& workload, const std::string& phase, size_t n, int round) {
  check_stop();
  Rig& rig = *rigs.at(v.rig);
  const ClientResult r = rig.run_client(spec_for(profile(), v, rig, workload, phase == "scaling"));
  record(res.cells[CellKey{phase, workload, v.name, n}], workload, r, res,
         phase + " " + workload + " " + v.name + " @" + std::to_string(n), round);
}

void build_rigs(Bench& b, const std::vector<RigDef>& defs) {
  spdlog::info("building {} pods", defs.size());
  bool first = true;
  for (const RigDef& d : defs) {
    check_stop();
    auto rig = std::make_unique<Rig>(d.label, d.capture, d.sidecar, b.ro);
    b.track(*rig);
    if (first && b.opt.iptables_via != "restore") {
      // Decided on a plain pod before the iptables pods exist.
      b.ro.meshcap_iptables = meshcap_has_iptables_mode(b.opt.meshcap_bin, rig->pod());
      if (b.opt.iptables_via == "meshcap" && !b.ro.meshcap_iptables)
        throw std::runtime_error("--iptables-via meshcap: `meshcap init --mode iptables` does not work in this build");
    }
    first = false;
    rig->set_connect_only(d.connect_only);
    rig->set_accelerate(d.accelerate);
    b.rigs[d.key] = std::move(rig);
  }
}

void prepare(Bench& b, size_t n) {
  const auto ex = exclusion_cidrs(n);
  for (auto& [k, r] : b.rigs) {
    check_stop();
    if (r->capture() != Capture::none) r->apply(ex);
  }
  // Let deferred kernel work of the rule replacement (RCU frees, nf_tables
  // garbage collection) finish before anything is timed.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  for (const auto& v : b.res.variants) {
    if (!b.active(v)) continue;
    const std::string bad = verify_variant(*b.rigs.at(v.rig), v);
    if (bad.empty()) continue;
    b.res.notes.push_back("dropped " + bad);
    spdlog::error("dropped {}", bad);
    b.dropped.push_back(v.name);
  }
}

void run_main_phase(Bench& b) {
  prepare(b, 0);
  for (int round = 0; round < b.profile().rounds; round++) {
    const auto t0 = Clock::now();
    auto jobs = main_jobs(b);
    std::shuffle(jobs.begin(), jobs.end(), b.rng);
    for (const auto& [v, w] : jobs) b.run_job(*v, w, "main", 0, round);
    spdlog::info("main round {}/{}: {} jobs in {:.1f} s", round + 1, b.profile().rounds, jobs.size(), since(t0));
  }
}

void run_scaling_phase(Bench& b) {
  const Profile& p = b.profile();
  for (int round = 0; round < p.rounds && !p.sizes.empty(); round++) {
    const auto t0 = Clock::now();
    std::vector<size_t> order = p.sizes;
    std::shuffle(order.begin(), order.end(), b.rng);
    for (size_t n : order) {
      prepare(b, n);
      std::vector<const VariantDef*> jobs;
      for (const auto& v : b.res.variants)
        if (v.scaling && b.active(v)) jobs.push_back(&v);
      std::shuffle(jobs.begin(), jobs.end(), b.rng);
      for (const VariantDef* v : jobs) b.run_job(*v, "connect", "scaling", n, round);
    }
    spdlog::info("scaling round {}/{}: {} sizes in {:.1f} s", round + 1, p.rounds, order.size(), since(t0));
  }
}

// BPF_ENABLE_STATS is on only while the returned fd is open, so nothing is
// left switched on; it slows every BPF program a little, which is why no
// other measurement runs with it.
void run_bpf_stats_phase(Bench& b) {
  if (!b.profile().diagnostics) return;
  prepare(b, 0);
  const test::UniqueFd stats(bpf_enable_stats(BPF_STATS_RUN_TIME));
  if (!stats) {
    b.res.notes.push_back(std::string("BPF run-time statistics not available: ") + std::strerror(errno));
    return;
  }
  const std::vector<std::pair<std::string, std::string>> diag = {
      {"ebpf-mech", "connect"},        {"ebpf+proxy", "connect"},       {"ebpf+proxy", "rr-1x64"},
      {"ebpf-accel+proxy", "connect"}, {"ebpf-accel+proxy", "rr-1x64"}};
  for (const auto& [name, workload] : diag) {
    const VariantDef* v = b.res.variant(name);
    if (!v || !b.active(*v)) continue;
    Rig& rig = *b.rigs.at(v->rig);
    const ProgramStats before = rig.program_stats();
    const ClientSpec s = spec_for(b.profile(), *v, rig, workload, false);
    const ClientResult cr = rig.run_client(s);
    add_prog_stats(b.res, name, workload, units_of(s, cr), before, rig.program_stats());
  }
}

uint64_t units_of(const ClientSpec& s, const ClientResult& r) {
  const uint64_t warm = s.workload == Workload::rr ? s.warmup * static_cast<uint64_t>(s.connections) : s.warmup;
  return r.samples_ns.size() + warm;
}

void add_stats_delta(ProgramStats& into, const ProgramStats& before, const ProgramStats& after) {
  for (const auto& [prog, a] : after) {
    const auto it = before.find(prog);
    const auto b = it == before.end() ? std::pair<uint64_t, uint64_t>{0, 0} : it->second;
    auto& sum = into[prog];
    sum.first += a.first - b.first;
    sum.second += a.second - b.second;
  }
}

void add_prog_stats(Results& res, const std::string& variant, const std::string& workload, uint64_t units,
                    const ProgramStats& before, const ProgramStats& after) {
  ProgramStats delta;
  add_stats_delta(delta, before, after);
  for (const auto& [prog, d] : delta) res.prog_stats.push_back({variant, workload, prog, units, d.first, d.second});
}

ClientSpec spec_for(const Profile& p, const VariantDef& v, Rig& rig, const std::string& workload, bool scaling) {
  ClientSpec s;
  s.ip = v.local ? "127.0.0.1" : rig.peer_ip();
  s.port = v.echo_port;
  s.seconds = 30;
  if (workload == "connect") {
    s.workload = Workload::connect;
    if (v.bind_pod_ip) s.bind_ip = rig.pod().pod_ipv4();
    s.count = scaling ? p.scaling_n : p.connect_n;
    s.message = 16;
  } else if (workload == "throughput") {
    s.workload = Workload::throughput;
    s.port = v.sink_port;
    s.seconds = p.throughput_s;
  } else {  // rr-CxS
    s.workload = Workload::rr;
    const auto x = workload.find('x');
    s.connections = std::stoi(workload.substr(3, x - 3));
    s.message = workload.substr(x + 1) == "1k" ? 1024 : 64;
    s.count = p.rr_n;
  }
  return s;
}

namespace {

void note_interference(const ClientResult& r, Results& res) {
  if (r.elapsed_ns == 0 || r.cpus_busy_ns == 0) return;
  const double ours = static_cast<double>(r.client_cpu_ns + r.others_cpu_ns);
  const double share = (static_cast<double>(r.cpus_busy_ns) - ours) /
                       (static_cast<double>(r.elapsed_ns) * static_cast<double>(res.data_cpus));
  res.foreign_share.push_back(std::clamp(share, 0.0, 1.0));
}

void note_errors(Cell& c, const ClientResult& r, Results& res, const std::string& what) {
  if (!r.errors) return;
  c.errors += r.errors;
  if (!c.first_error.empty()) return;
  c.first_error = r.first_error;
  res.notes.push_back(what + ": " + std::to_string(r.errors) + " error(s), first: " + r.first_error);
  spdlog::warn("{}: {} error(s), first: {}", what, r.errors, r.first_error);
}

}  // namespace

void record(Cell& c, const std::string& workload, const ClientResult& r, Results& res, const std::string& what,
            int round) {
  note_interference(r, res);
  note_errors(c, r, res, what);
  if (workload == "throughput") {
    if (r.bytes == 0 || r.elapsed_ns == 0 || r.errors) return;
    const double bytes = static_cast<double>(r.bytes);
    c.samples.push_back(static_cast<uint32_t>(std::min<uint64_t>(r.elapsed_ns, UINT32_MAX)));
    c.round_rate.push_back(bytes / (static_cast<double>(r.elapsed_ns) / 1e9) / 1e6);
    c.round_cpu_gb.push_back(static_cast<double>(r.client_cpu_ns + r.others_cpu_ns) / bytes);
    c.round_sys_gb.push_back(static_cast<double>(r.cpus_busy_ns) / bytes);
    return;
  }
  if (r.samples_ns.empty()) return;
  c.samples.insert(c.samples.end(), r.samples_ns.begin(), r.samples_ns.end());
  c.round_p50_us.push_back(percentile(r.samples_ns, 50) / 1000.0);
  c.p50_by_round[round] = c.round_p50_us.back();
  if (r.elapsed_ns) c.round_rate.push_back(static_cast<double>(r.samples_ns.size()) / (r.elapsed_ns / 1e9));
}

pid_t start_node_agent(Bench& b, const std::string& cgroup, size_t max_pods, const std::string& state_dir,
                       const std::string& log) {
  std::vector<std::string> args = {b.opt.meshcap_bin, "node",     "serve", "--cgroup", cgroup, "--max-pods",
                                   std::to_string(max_pods), "--log-level", "debug"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw std::runtime_error("cannot start meshcap node serve");
  b.server_pids.push_back(pid);
  const std::string sock = state_dir + "/cni.sock";
  for (int i = 0; i < 200; i++) {  // up to 10 s
    if (const int s = cni::connect_agent(sock); s >= 0) {
      close(s);
      return pid;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  stop_node_agent(pid);
  throw std::runtime_error("meshcap node serve did not open " + sock);
}

void stop_node_agent(pid_t& pid) {
  if (pid <= 0) return;
  kill(pid, SIGTERM);
  int st = 0;
  waitpid(pid, &st, 0);
  pid = -1;
}

}  // namespace meshcap::bench
