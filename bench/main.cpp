// meshcap-bench: how eBPF capture compares with istio's iptables rules on
// this machine. Builds one throwaway pod per variant (tests/support), runs
// its own load client in the pods with every sample kept, interleaves all
// variants in shuffled rounds, and reports tables, JSON, PNG plots and the
// issue-7 target lines. Needs root; touches nothing outside its own pods.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <signal.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <thread>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "datapath.h"
#include "meshcap.h"
#include "results.h"
#include "rig.h"
#include "support/common.h"

namespace fs = std::filesystem;
using namespace meshcap;
using namespace meshcap::bench;

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitSkip = 77;  // ctest's SKIP_RETURN_CODE

// ---- interruption: the first SIGINT/SIGTERM stops between jobs and cleans
// up normally; a second one falls back to the harness's emergency removal.
volatile sig_atomic_t g_stop = 0;
struct sigaction g_prev[3];
constexpr int kStopSignals[3] = {SIGINT, SIGTERM, SIGHUP};

void on_stop(int sig) {
  if (g_stop) {
    for (int i = 0; i < 3; i++)
      if (kStopSignals[i] == sig) ::sigaction(sig, &g_prev[i], nullptr);
    ::raise(sig);
    return;
  }
  g_stop = 1;
}

void install_stop_handlers() {
  static bool done = false;
  if (done) return;
  done = true;
  for (int i = 0; i < 3; i++) {
    struct sigaction sa {};
    sa.sa_handler = on_stop;
    ::sigemptyset(&sa.sa_mask);
    ::sigaction(kStopSignals[i], &sa, &g_prev[i]);
  }
}

struct Interrupted : std::runtime_error {
  Interrupted() : std::runtime_error("interrupted") {}
};
void check_stop() {
  if (g_stop) throw Interrupted();
}

// ---- run profiles ----

struct Profile {
  std::string name;
  int rounds = 7;
  uint64_t connect_n = 3000;     // connection-setup samples per variant per round
  uint64_t rr_n = 6000;          // requests per rr job
  double throughput_s = 1.5;     // seconds per throughput job
  uint64_t scaling_n = 3000;     // connection-setup samples per variant per size per round
  std::vector<size_t> sizes = {0, 10, 100, 1000, 10000};
  std::vector<size_t> init_sizes = {0, 10, 100, 1000, 10000};
  int init_reps = 7;
  bool proxies = true;  // haproxy variants
  bool legacy = true;   // iptables-legacy variants
  bool aa = true;       // the A/A pair
  bool diagnostics = true;  // ebpf-connect-only-mech
};

Profile make_profile(const std::string& name) {
  Profile p;
  p.name = name;
  if (name == "quick") {
    p.rounds = 5;
    p.connect_n = 1000;
    p.rr_n = 3000;
    p.throughput_s = 0.5;
    p.scaling_n = 1000;
    p.init_sizes = {10, 1000, 10000};
    p.init_reps = 5;
  } else if (name == "selftest") {
    p.rounds = 1;
    p.connect_n = 100;
    p.rr_n = 200;
    p.throughput_s = 0.2;
    p.scaling_n = 100;
    p.sizes = {0, 10};
    p.init_sizes = {10};
    p.init_reps = 1;
    p.legacy = false;
    p.aa = false;
    p.diagnostics = false;
  }
  return p;
}

// ---- variants and the pods they run in ----

struct RigDef {
  std::string key, label;
  Capture capture;
  Sidecar sidecar;
  bool connect_only = false;
  bool accelerate = false;
};

void define_variants(const Profile& p, std::vector<RigDef>& rigs, std::vector<VariantDef>& vs) {
  rigs.push_back({"D", "direct", Capture::none, Sidecar::none});
  vs.push_back({"direct", "D", false, kEchoPort, kSinkPort, "proxy", "none", true, true, "direct"});
  if (p.aa) {
    rigs.push_back({"D2", "direct-aa", Capture::none, Sidecar::none});
    vs.push_back({"direct-aa", "D2", false, kEchoPort, kSinkPort, "proxy", "none", true, false, "direct"});
  }
  std::vector<std::pair<Capture, std::string>> caps = {{Capture::nft, "iptables-nft"}};
  if (p.legacy) caps.push_back({Capture::legacy, "iptables-legacy"});
  caps.push_back({Capture::ebpf, "ebpf"});
  if (p.proxies) {
    rigs.push_back({"E", "explicit-proxy", Capture::none, Sidecar::explicit_proxy});
    vs.push_back({"explicit-proxy", "E", true, kExplicitEchoPort, kExplicitSinkPort, "proxy", "none", true, false,
                  "relay"});
    for (const auto& [cap, name] : caps) {
      rigs.push_back({"P-" + name, name + "+proxy", cap, Sidecar::haproxy});
      vs.push_back({name + "+proxy", "P-" + name, false, kEchoPort, kSinkPort, "proxy", name, true, true, "relay"});
    }
    // eBPF with --accelerate (haproxy does not splice in this configuration).
    rigs.push_back({"P-ebpf-accel", "ebpf-accel+proxy", Capture::ebpf, Sidecar::haproxy, false, true});
    vs.push_back({"ebpf-accel+proxy", "P-ebpf-accel", false, kEchoPort, kSinkPort, "proxy", "ebpf-accel", true, false,
                  "relay"});
  }
  // local-direct and ebpf-mech also run the request/response workloads
  // when the diagnostics do (see ebpf-accel-mech below).
  const bool mech_rr = p.diagnostics;
  vs.push_back({"local-direct", "D", true, kOutboundPort, 0, "mechanism", "none", mech_rr, true, "local"});
  for (const auto& [cap, name] : caps) {
    rigs.push_back({"M-" + name, name + "-mech", cap, Sidecar::echo});
    vs.push_back({name + "-mech", "M-" + name, false, kEchoPort, 0, "mechanism", name,
                  mech_rr && cap == Capture::ebpf, true, "local"});
  }
  if (p.diagnostics) {
    // Not a product variant: meshcap's connect hooks alone (sockops,
    // getsockopt and getpeername detached), to split eBPF's overhead.
    // And local-direct from the pod's own address, as a redirect keeps it.
    vs.push_back({"local-direct-podsrc", "D", true, kOutboundPort, 0, "mechanism", "none", false, true, "local", true});
    rigs.push_back({"M-ebpf-connect-only", "ebpf-connect-only-mech", Capture::ebpf, Sidecar::echo, true});
    vs.push_back({"ebpf-connect-only-mech", "M-ebpf-connect-only", false, kEchoPort, 0, "mechanism", "ebpf", false,
                  true, "local"});
    // --accelerate with no haproxy: the application's socket and the local
    // echo server's are the two ends, so the request/response workloads
    // show what redirection does to the one hop it replaces, against
    // ebpf-mech; the goals use ebpf-accel+proxy.
    rigs.push_back({"M-ebpf-accel", "ebpf-accel-mech", Capture::ebpf, Sidecar::echo, false, true});
    vs.push_back({"ebpf-accel-mech", "M-ebpf-accel", false, kEchoPort, 0, "mechanism", "ebpf-accel", true, false,
                  "local"});
  }
}

// Checks with the probe that a variant's connections land where they must.
std::string verify_variant(Rig& rig, const VariantDef& v) {
  const std::string ip = v.local ? "127.0.0.1" : rig.peer_ip();
  const std::string reply = rig.probe(ip, v.echo_port);
  std::istringstream in(reply);
  std::string tag, seen, local;
  in >> tag >> seen >> local;
  bool ok = false;
  if (v.expect == "local") ok = tag == "LOCAL";
  if (v.expect == "direct") ok = tag == "PEER" && seen == local;
  if (v.expect == "relay") {
    auto port = [](const std::string& s) { return s.substr(s.rfind(':') + 1); };
    ok = tag == "PEER" && !seen.empty() && !local.empty() && port(seen) != port(local);
  }
  if (ok) return "";
  return v.name + ": probe to " + ip + ":" + std::to_string(v.echo_port) + " answered '" + reply + "', expected " +
         (v.expect == "local" ? "the pod's local server"
                              : v.expect == "direct" ? "the peer, seeing the client itself" : "the peer through a relay");
}

// ---- the jobs ----

struct Job {
  const VariantDef* v;
  std::string workload;
};

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

void record(Cell& c, const std::string& workload, const ClientResult& r, Results& res, const std::string& what,
            int round) {
  if (r.elapsed_ns > 0 && r.cpus_busy_ns > 0) {
    const double ours = static_cast<double>(r.client_cpu_ns + r.others_cpu_ns);
    const double share = (static_cast<double>(r.cpus_busy_ns) - ours) /
                         (static_cast<double>(r.elapsed_ns) * static_cast<double>(res.data_cpus));
    res.foreign_share.push_back(std::clamp(share, 0.0, 1.0));
  }
  if (r.errors) {
    c.errors += r.errors;
    if (c.first_error.empty()) {
      c.first_error = r.first_error;
      res.notes.push_back(what + ": " + std::to_string(r.errors) + " error(s), first: " + r.first_error);
      spdlog::warn("{}: {} error(s), first: {}", what, r.errors, r.first_error);
    }
  }
  if (workload == "throughput") {
    if (r.bytes == 0 || r.elapsed_ns == 0 || r.errors) return;
    c.samples.push_back(static_cast<uint32_t>(std::min<uint64_t>(r.elapsed_ns, UINT32_MAX)));
    c.round_rate.push_back(static_cast<double>(r.bytes) / (static_cast<double>(r.elapsed_ns) / 1e9) / 1e6);
    c.round_cpu_gb.push_back(static_cast<double>(r.client_cpu_ns + r.others_cpu_ns) / static_cast<double>(r.bytes));
    c.round_sys_gb.push_back(static_cast<double>(r.cpus_busy_ns) / static_cast<double>(r.bytes));
    return;
  }
  if (r.samples_ns.empty()) return;
  c.samples.insert(c.samples.end(), r.samples_ns.begin(), r.samples_ns.end());
  c.round_p50_us.push_back(percentile(r.samples_ns, 50) / 1000.0);
  c.p50_by_round[round] = c.round_p50_us.back();
  if (r.elapsed_ns) c.round_rate.push_back(static_cast<double>(r.samples_ns.size()) / (r.elapsed_ns / 1e9));
}

std::string now_utc() {
  char buf[64];
  const std::time_t t = std::time(nullptr);
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

std::string fmt_seconds(double s) {
  std::ostringstream o;
  o << s;
  return o.str();
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

std::map<std::string, std::string> machine_info() {
  std::map<std::string, std::string> m;
  m["nproc"] = std::to_string(::sysconf(_SC_NPROCESSORS_ONLN));
  utsname u{};
  ::uname(&u);
  m["kernel"] = std::string(u.sysname) + " " + u.release + " " + u.machine;
  std::ifstream cpu("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpu, line))
    if (line.rfind("model name", 0) == 0) {
      m["cpu_model"] = line.substr(line.find(':') + 2);
      break;
    }
  std::ifstream mem("/proc/meminfo");
  if (std::getline(mem, line)) m["memory"] = line.substr(line.find(':') + 1);
  m["memory"].erase(0, m["memory"].find_first_not_of(' '));
  m["haproxy"] = first_line(run_timed({"haproxy", "-v"}).output);
  m["iptables"] = first_line(run_timed({"iptables-nft", "--version"}).output);
  return m;
}

std::string shell_quote(const std::string& s) {
  if (!s.empty() && s.find_first_of(" '\"*$;&|<>()\\") == std::string::npos) return s;
  std::string o = "'";
  for (char c : s) o += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return o + "'";
}

// ---- init phase ----

struct InitCapture {
  std::string label;  // what the report calls it
  Capture capture;
  bool via_meshcap;   // iptables through `meshcap init --mode iptables`
};

double add_one_exclusion(Rig& rig, const InitCapture& ic, std::string& how, int insert_pos) {
  const std::string cidr = extra_exclusion_cidr();
  if (ic.capture == Capture::ebpf) {
    how = "bpf_map_update_elem on the pinned cidrs4 (the pod's -x)";
    const std::string pin = loader::pin_dir(rig.name()) + "/map_cidrs4";
    const int fd = ::bpf_obj_get(pin.c_str());
    if (fd < 0) throw std::runtime_error("bpf_obj_get " + pin + ": " + std::strerror(errno));
    mc_lpm4 key{};
    key.prefixlen = 32 + 24;
    key.tag = MC_LPM_TAG(0u, MC_CIDR_EXCLUDE);  // the pod's own data path: pod 0
    in_addr a{};
    ::inet_pton(AF_INET, "198.51.100.0", &a);
    key.addr = a.s_addr;
    const uint8_t one = 1;
    const auto t0 = Clock::now();
    const int rc = ::bpf_map_update_elem(fd, &key, &one, BPF_ANY);
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    const int err = errno;
    ::close(fd);
    if (rc != 0) throw std::runtime_error("bpf_map_update_elem: " + std::string(std::strerror(err)));
    return s;
  }
  const std::string bin = ic.capture == Capture::legacy ? "iptables-legacy" : "iptables-nft";
  how = bin + " -t nat -I ISTIO_OUTPUT " + std::to_string(insert_pos) + " -d " + cidr + " -j RETURN";
  const Timed t = run_timed({bin, "-w", "-t", "nat", "-I", "ISTIO_OUTPUT", std::to_string(insert_pos), "-d", cidr, "-j",
                             "RETURN"},
                            "", rig.pod().pod_netns_path());
  if (!t.ok()) throw std::runtime_error(how + ": " + t.output);
  return t.seconds;
}

void run_init_phase(const Profile& p, RigOptions base, bool meshcap_iptables, std::mt19937_64& rng, Results& res) {
  std::vector<InitCapture> caps = {{"ebpf", Capture::ebpf, false}, {"iptables-nft", Capture::nft, false}};
  if (p.legacy) caps.push_back({"iptables-legacy", Capture::legacy, false});
  if (meshcap_iptables) {
    caps.push_back({"iptables-nft (meshcap)", Capture::nft, true});
    if (p.legacy) caps.push_back({"iptables-legacy (meshcap)", Capture::legacy, true});
  }
  // Position of the first exclusion in ISTIO_OUTPUT: after istio's fixed rules.
  int insert_pos = 0;
  {
    std::istringstream in(istio_payload({}));
    std::string line;
    while (std::getline(in, line)) insert_pos += line.rfind("-A ISTIO_OUTPUT ", 0) == 0;
  }
  struct InitJob {
    size_t cap;
    size_t size;
  };
  std::vector<InitJob> jobs;
  for (int rep = 0; rep < p.init_reps; rep++)
    for (size_t c = 0; c < caps.size(); c++)
      for (size_t s : p.init_sizes) jobs.push_back({c, s});
  std::shuffle(jobs.begin(), jobs.end(), rng);
  std::map<std::pair<size_t, size_t>, InitRecord> recs;
  const auto t0 = Clock::now();
  for (const auto& j : jobs) {
    check_stop();
    const InitCapture& ic = caps[j.cap];
    RigOptions o = base;
    o.meshcap_iptables = ic.via_meshcap;
    InitRecord& rec = recs[{j.cap, j.size}];
    rec.capture = ic.label;
    rec.exclusions = j.size;
    rec.how = ic.capture == Capture::ebpf || ic.via_meshcap ? "meshcap init"
              : ic.capture == Capture::legacy              ? "iptables-legacy-restore"
                                                           : "iptables-nft-restore";
    try {
      Rig rig("init-" + ic.label, ic.capture, Sidecar::bare, o);
      const auto ex = exclusion_cidrs(j.size);
      rec.apply_s.push_back(rig.apply(ex));
      rec.add_one_s.push_back(add_one_exclusion(rig, ic, rec.add_how, insert_pos));
      rec.cleanup_s.push_back(rig.remove());
    } catch (const Interrupted&) {
      throw;
    } catch (const std::exception& e) {
      res.notes.push_back("init " + ic.label + " with " + std::to_string(j.size) + ": " + e.what());
      spdlog::warn("init {} with {}: {}", ic.label, j.size, e.what());
    }
  }
  for (auto& [k, v] : recs) res.init.push_back(v);
  std::sort(res.init.begin(), res.init.end(), [](const InitRecord& a, const InitRecord& b) {
    return std::tie(a.capture, a.exclusions) < std::tie(b.capture, b.exclusions);
  });
  spdlog::info("init phase: {} jobs in {:.0f} s", jobs.size(),
               std::chrono::duration<double>(Clock::now() - t0).count());
}

// ---- leftovers ----

std::vector<std::string> leftovers(const std::vector<std::string>& suffixes, const std::vector<pid_t>& pids) {
  std::vector<std::string> left;
  for (const auto& s : suffixes) {
    for (const std::string ns : {"mcpod-", "mcpeer-"})
      if (fs::exists("/run/netns/" + ns + s)) left.push_back("netns " + ns + s);
  }
  for (const auto& n : bench_captures()) left.push_back("capture " + n + " (pins or meshcap state)");
  for (pid_t p : pids)
    if (::kill(p, 0) == 0) left.push_back("process " + std::to_string(p));
  return left;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"meshcap-bench: eBPF capture against istio's iptables rules, in throwaway pods on this machine"};
  bool quick = false, selftest = false, no_scaling = false, no_init = false, no_plots = false;
  int rounds = 0;
  std::string out_dir = "meshcap-bench-out";
  std::string meshcap_bin = MESHCAP_BIN;
  std::string iptables_via = "auto";
  std::string log_level = "info";
  uint64_t seed = 0;
  const int ncpu = static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
  CpuPlan cpus;
  cpus.client = cpus.server = cpus.proxy = ncpu > 1 ? ncpu - 1 : 0;
  cpus.controller = 0;
  std::vector<size_t> sizes;
  uint64_t connect_n = 0, rr_n = 0;
  double tput_s = 0;
  app.add_flag("--quick", quick, "Reduced run (a few minutes) ending with the target lines");
  app.add_flag("--selftest", selftest, "A few seconds: checks that every part runs and yields samples");
  app.add_option("--rounds", rounds, "Shuffled rounds (default: 7, quick 5)");
  app.add_option("--out", out_dir, "Directory for results.json, report.txt, report.md and the PNGs")->capture_default_str();
  app.add_option("--meshcap", meshcap_bin, "The meshcap binary")->capture_default_str();
  app.add_option("--iptables-via", iptables_via,
                 "How the iptables variants are applied: restore (iptables-restore of istio's payload), meshcap "
                 "(meshcap init --mode iptables), auto (meshcap when it works)")
      ->check(CLI::IsMember({"auto", "restore", "meshcap"}))
      ->capture_default_str();
  app.add_option("--seed", seed, "Shuffle seed (default: random)");
  app.add_option("--client-cpu", cpus.client, "CPU of the load client")->capture_default_str();
  app.add_option("--server-cpu", cpus.server, "CPU of the servers")->capture_default_str();
  app.add_option("--proxy-cpu", cpus.proxy, "CPU of haproxy")->capture_default_str();
  app.add_option("--controller-cpu", cpus.controller, "CPU of this process while it waits")->capture_default_str();
  app.add_option("--sizes", sizes, "Rule-scaling sizes (excluded CIDRs)")->delimiter(',');
  app.add_option("--connect-samples", connect_n, "Connection-setup samples per variant and round");
  app.add_option("--rr-samples", rr_n, "Requests per request/response job");
  app.add_option("--throughput-seconds", tput_s, "Seconds per throughput job");
  app.add_flag("--no-scaling", no_scaling, "Skip the rule-scaling phase");
  app.add_flag("--no-init", no_init, "Skip the init-time phase");
  app.add_flag("--no-plots", no_plots, "Do not run gnuplot");
  std::vector<std::string> only_variants, only_workloads;
  app.add_option("--variants", only_variants,
                 "Run only these variants (comma-separated names as in the tables); targets that need others "
                 "say 'not measured'")
      ->delimiter(',');
  app.add_option("--workloads", only_workloads,
                 "Run only these main-phase workloads: connect, rr-1x64, rr-1x1k, rr-8x64, rr-8x1k, throughput")
      ->delimiter(',')
      ->check(CLI::IsMember({"connect", "rr-1x64", "rr-1x1k", "rr-8x64", "rr-8x1k", "throughput"}));
  bool raw_samples = false;
  app.add_flag("--raw-samples", raw_samples,
               "Also write every sample to samples.tsv (phase, workload, variant, exclusions, ns)");
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  spdlog::set_default_logger(spdlog::stderr_color_mt("meshcap-bench"));
  spdlog::set_pattern("%^%l%$ %v");
  spdlog::set_level(spdlog::level::from_str(log_level));

  if (::geteuid() != 0) {
    std::cout << "meshcap-bench: SKIP: needs root (it creates network namespaces and cgroups and loads BPF)\n";
    return kExitSkip;
  }
  for (int c : {cpus.client, cpus.server, cpus.proxy, cpus.controller})
    if (c < 0 || c >= ncpu) {
      std::cerr << "meshcap-bench: CPU " << c << " does not exist (" << ncpu << " online)\n";
      return kExitUsage;
    }
  if (!fs::exists(meshcap_bin)) {
    std::cerr << "meshcap-bench: meshcap binary not found at " << meshcap_bin << " (--meshcap)\n";
    return kExitUsage;
  }

  Profile p = make_profile(selftest ? "selftest" : quick ? "quick" : "full");
  if (rounds > 0) p.rounds = rounds;
  if (!sizes.empty()) p.sizes = sizes;
  if (connect_n) p.connect_n = p.scaling_n = connect_n;
  if (rr_n) p.rr_n = rr_n;
  if (tput_s > 0) p.throughput_s = tput_s;
  if (no_scaling) p.sizes.clear();
  if (!test::have_binary("haproxy")) p.proxies = false;
  for (size_t s : p.sizes)
    if (s > 10000) {
      // meshcap takes -x as one argument, and Linux limits one to 128 KiB.
      std::cerr << "meshcap-bench: --sizes: at most 10000 exclusions (one command-line argument)\n";
      return kExitUsage;
    }
  if (seed == 0) seed = std::random_device{}();
  std::mt19937_64 rng(seed);

  Results res;
  res.profile = p.name;
  res.rounds = p.rounds;
  res.started = now_utc();
  for (int i = 0; i < argc; i++) res.command += (i ? " " : "") + shell_quote(argv[i]);
  res.machine = machine_info();
  res.sizes = p.sizes;
  res.data_cpus = static_cast<int>(cpus.data_cpus().size());
  res.workloads = {"connect", "rr-1x64", "rr-1x1k", "rr-8x64", "rr-8x1k", "throughput"};
  if (!only_workloads.empty())
    std::erase_if(res.workloads, [&](const std::string& w) {
      return std::find(only_workloads.begin(), only_workloads.end(), w) == only_workloads.end();
    });
  const auto t_start = Clock::now();

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) {
    std::cerr << "meshcap-bench: cannot create " << out_dir << ": " << ec.message() << "\n";
    return kExitUsage;
  }

  pin_to_cpu(cpus.controller);
  if (int n = remove_stale_captures(meshcap_bin)) spdlog::info("removed {} capture(s) left by an earlier run", n);

  RigOptions ro;
  ro.meshcap_bin = meshcap_bin;
  ro.cpus = cpus;

  std::vector<RigDef> rig_defs;
  define_variants(p, rig_defs, res.variants);
  if (!only_variants.empty()) {
    for (const auto& name : only_variants)
      if (!res.variant(name)) {
        std::cerr << "meshcap-bench: --variants: no variant named '" << name << "'\n";
        return kExitUsage;
      }
    std::erase_if(res.variants, [&](const VariantDef& v) {
      return std::find(only_variants.begin(), only_variants.end(), v.name) == only_variants.end();
    });
    std::erase_if(rig_defs, [&](const RigDef& d) {
      return std::none_of(res.variants.begin(), res.variants.end(), [&](const VariantDef& v) { return v.rig == d.key; });
    });
  }
  std::vector<std::string> suffixes;
  std::vector<pid_t> pids;
  bool meshcap_iptables = false;
  int code = kExitOk;
  try {
    std::map<std::string, std::unique_ptr<Rig>> rigs;
    // iptables-via: decided on a plain pod before the iptables rigs exist.
    {
      spdlog::info("building {} pods", rig_defs.size());
      const RigDef& d0 = rig_defs.front();
      rigs[d0.key] = std::make_unique<Rig>(d0.label, d0.capture, d0.sidecar, ro);
      install_stop_handlers();
      if (iptables_via != "restore") {
        meshcap_iptables = meshcap_has_iptables_mode(meshcap_bin, rigs[d0.key]->pod());
        if (iptables_via == "meshcap" && !meshcap_iptables)
          throw std::runtime_error("--iptables-via meshcap: `meshcap init --mode iptables` does not work in this build");
      }
      ro.meshcap_iptables = meshcap_iptables;
    }
    for (size_t i = 1; i < rig_defs.size(); i++) {
      check_stop();
      const RigDef& d = rig_defs[i];
      rigs[d.key] = std::make_unique<Rig>(d.label, d.capture, d.sidecar, ro);
      rigs[d.key]->set_connect_only(d.connect_only);
      rigs[d.key]->set_accelerate(d.accelerate);
    }
    for (auto& [k, r] : rigs) {
      suffixes.push_back(r->pod().suffix());
      for (pid_t pid : r->server_pids()) pids.push_back(pid);
    }
    res.config = {{"seed", std::to_string(seed)},
                  {"cpus", "client " + std::to_string(cpus.client) + ", servers " + std::to_string(cpus.server) +
                               ", haproxy " + std::to_string(cpus.proxy) + " (nbthread 1), controller " +
                               std::to_string(cpus.controller)},
                  {"iptables_applied_with", meshcap_iptables ? "meshcap init --mode iptables --force-iptables-binary"
                                                             : "iptables-{nft,legacy}-restore of istio's payload"},
                  {"samples", "connect " + std::to_string(p.connect_n) + "/variant/round, rr " + std::to_string(p.rr_n) +
                                   " requests/job, throughput " + fmt_seconds(p.throughput_s) + " s/job, scaling " +
                                  std::to_string(p.scaling_n) + "/variant/size/round"},
                  {"capture_flags", "-i '*' [-x N prefixes /16 matching none of the destinations]"}};

    // Applies `n` exclusions to every captured rig and checks every variant
    // with the probe; variants that fail are dropped from the run.
    std::vector<std::string> dropped;
    auto prepare = [&](size_t n) {
      const auto ex = exclusion_cidrs(n);
      for (auto& [k, r] : rigs) {
        check_stop();
        if (r->capture() != Capture::none) r->apply(ex);
      }
      // Let deferred kernel work of the rule replacement (RCU frees, nf_tables
      // garbage collection) finish before anything is timed.
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      for (const auto& v : res.variants) {
        if (std::find(dropped.begin(), dropped.end(), v.name) != dropped.end()) continue;
        const std::string bad = verify_variant(*rigs.at(v.rig), v);
        if (!bad.empty()) {
          res.notes.push_back("dropped " + bad);
          spdlog::error("dropped {}", bad);
          dropped.push_back(v.name);
        }
      }
    };
    auto active = [&](const VariantDef& v) {
      return std::find(dropped.begin(), dropped.end(), v.name) == dropped.end();
    };
    auto run = [&](const Job& j, const std::string& phase, size_t n, int round) {
      check_stop();
      Rig& rig = *rigs.at(j.v->rig);
      const ClientResult r = rig.run_client(spec_for(p, *j.v, rig, j.workload, phase == "scaling"));
      record(res.cells[CellKey{phase, j.workload, j.v->name, n}], j.workload, r, res,
             phase + " " + j.workload + " " + j.v->name + " @" + std::to_string(n), round);
    };

    // Main phase: every workload, no exclusions.
    prepare(0);
    for (int round = 0; round < p.rounds; round++) {
      const auto t0 = Clock::now();
      std::vector<Job> jobs;
      for (const auto& v : res.variants) {
        if (!active(v)) continue;
        if (std::find(res.workloads.begin(), res.workloads.end(), "connect") != res.workloads.end())
          jobs.push_back({&v, "connect"});
        if (!v.persistent) continue;
        for (const auto& w : res.workloads)
          if (w != "connect" && (w != "throughput" || v.sink_port)) jobs.push_back({&v, w});
      }
      std::shuffle(jobs.begin(), jobs.end(), rng);
      for (const auto& j : jobs) run(j, "main", 0, round);
      spdlog::info("main round {}/{}: {} jobs in {:.1f} s", round + 1, p.rounds, jobs.size(),
                   std::chrono::duration<double>(Clock::now() - t0).count());
    }

    // Rule scaling: connection setup at each size, sizes shuffled per round.
    for (int round = 0; round < p.rounds && !p.sizes.empty(); round++) {
      const auto t0 = Clock::now();
      std::vector<size_t> order = p.sizes;
      std::shuffle(order.begin(), order.end(), rng);
      for (size_t n : order) {
        prepare(n);
        std::vector<Job> jobs;
        for (const auto& v : res.variants)
          if (v.scaling && active(v)) jobs.push_back({&v, "connect"});
        std::shuffle(jobs.begin(), jobs.end(), rng);
        for (const auto& j : jobs) run(j, "scaling", n, round);
      }
      spdlog::info("scaling round {}/{}: {} sizes in {:.1f} s", round + 1, p.rounds, order.size(),
                   std::chrono::duration<double>(Clock::now() - t0).count());
    }
    // Diagnostic: where eBPF's time goes, as the kernel counts BPF run
    // time (BPF_ENABLE_STATS: on only while the returned fd is open, so
    // nothing is left switched on; it slows every BPF program a little,
    // which is why no other measurement runs with it).
    if (p.diagnostics) {
      prepare(0);
      int stats_fd = bpf_enable_stats(BPF_STATS_RUN_TIME);
      if (stats_fd < 0) {
        res.notes.push_back(std::string("BPF run-time statistics not available: ") + std::strerror(errno));
      } else {
        const std::vector<std::pair<std::string, std::string>> diag = {
            {"ebpf-mech", "connect"},       {"ebpf+proxy", "connect"},       {"ebpf+proxy", "rr-1x64"},
            {"ebpf-accel+proxy", "connect"}, {"ebpf-accel+proxy", "rr-1x64"}};
        for (const auto& [name, workload] : diag) {
          const VariantDef* v = res.variant(name);
          if (!v || !active(*v)) continue;
          Rig& rig = *rigs.at(v->rig);
          const auto before = rig.program_stats();
          const ClientResult cr = rig.run_client(spec_for(p, *v, rig, workload, false));
          for (const auto& [prog, after] : rig.program_stats()) {
            auto b = before.count(prog) ? before.at(prog) : std::pair<uint64_t, uint64_t>{0, 0};
            res.prog_stats.push_back(
                {name, workload, prog, cr.samples_ns.size(), after.first - b.first, after.second - b.second});
          }
        }
        ::close(stats_fd);
      }
    }
    rigs.clear();  // removes captures, servers, haproxy and the pods

    if (!no_init && !p.init_sizes.empty()) run_init_phase(p, ro, meshcap_iptables, rng, res);
  } catch (const Interrupted&) {
    std::cerr << "meshcap-bench: interrupted; pods and captures removed\n";
    code = 130;
  } catch (const std::exception& e) {
    std::cerr << "meshcap-bench: " << e.what() << "\n";
    res.notes.push_back(std::string("run stopped: ") + e.what());
    code = kExitFailed;
  }
  if (code == 130) return code;

  res.duration_s = std::chrono::duration<double>(Clock::now() - t_start).count();
  for (auto& [k, c] : res.cells) c.finish();
  compute_targets(res);
  std::vector<std::string> pngs;
  if (!no_plots) pngs = write_plots(res, out_dir);

  const auto left = leftovers(suffixes, pids);
  for (const auto& l : left) res.notes.push_back("left behind: " + l);

  const std::string text = render_text(res);
  const std::string targets = render_targets(res);
  std::ofstream(out_dir + "/results.json") << render_json(res);
  std::ofstream(out_dir + "/report.txt") << text << "\n" << targets;
  std::ofstream(out_dir + "/report.md") << render_markdown(res);
  if (raw_samples) {
    std::ofstream raw(out_dir + "/samples.tsv");
    raw << "phase\tworkload\tvariant\texclusions\tns\n";
    for (const auto& [k, c] : res.cells)
      for (uint32_t ns : c.samples)
        raw << k.phase << '\t' << k.workload << '\t' << k.variant << '\t' << k.exclusions << '\t' << ns << '\n';
  }
  std::cout << text;
  std::cout << "\nwritten: " << out_dir << "/results.json, report.txt, report.md";
  for (const auto& png : pngs) std::cout << ", " << fs::path(png).filename().string();
  std::cout << "\ncleanup check: " << (left.empty() ? "no pods, pins or servers left behind" : "LEFT BEHIND (see notes)")
            << "\n\n";
  if (!selftest) std::cout << targets;  // the last lines: one per target

  if (selftest) {
    // Sane, non-zero sample counts in every cell that was asked for.
    bool sane = left.empty() && code == kExitOk;
    for (const auto& [k, c] : res.cells) {
      const size_t n = k.workload == "throughput" ? c.round_rate.size() : c.samples.size();
      if (n == 0 || c.errors * 10 > n + 10) {
        std::cout << "selftest: " << k.phase << " " << k.workload << " " << k.variant << ": " << n << " samples, "
                  << c.errors << " errors\n";
        sane = false;
      }
    }
    for (const auto& i : res.init)
      if (i.apply_s.empty() || i.add_one_s.empty() || i.cleanup_s.empty()) {
        std::cout << "selftest: init " << i.capture << " produced no timing\n";
        sane = false;
      }
    if (res.cells.empty()) sane = false;
    std::cout << "selftest: " << (sane ? "ok" : "FAILED") << "\n";
    return sane ? kExitOk : kExitFailed;
  }
  return left.empty() ? code : kExitFailed;
}
