// meshcap-bench: how eBPF capture compares with istio's iptables rules on
// this machine, per pod and in node mode. Builds one throwaway pod per
// variant (tests/support), runs its own load client in the pods with every
// sample kept, interleaves all variants in shuffled rounds, and reports
// tables, JSON, PNG plots and the target lines. Needs root; touches nothing
// outside its own pods, node cgroup and meshcap directories.
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "phases.h"
#include "run_control.h"

namespace fs = std::filesystem;
using namespace meshcap::bench;

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitSkip = 77;  // ctest's SKIP_RETURN_CODE
constexpr int kExitInterrupted = 130;

std::string now_utc() {
  char buf[64];
  const std::time_t t = std::time(nullptr);
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
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

void init_results(const Options& o, Results& res) {
  const Profile& p = o.profile;
  res.profile = p.name;
  res.rounds = p.rounds;
  res.started = now_utc();
  res.command = o.command;
  res.machine = machine_info();
  res.sizes = p.sizes;
  res.data_cpus = static_cast<int>(o.cpus.data_cpus().size());
  res.workloads = {"connect", "rr-1x64", "rr-1x1k", "rr-8x64", "rr-8x1k", "throughput"};
  if (!o.only_workloads.empty())
    std::erase_if(res.workloads, [&](const std::string& w) {
      return std::find(o.only_workloads.begin(), o.only_workloads.end(), w) == o.only_workloads.end();
    });
  const auto& c = o.cpus;
  res.config = {
      {"seed", std::to_string(o.seed)},
      {"cpus", "client " + std::to_string(c.client) + ", servers " + std::to_string(c.server) + ", haproxy " +
                   std::to_string(c.proxy) + " (nbthread 1), controller " + std::to_string(c.controller)},
      {"samples", "connect " + std::to_string(p.connect_n) + "/variant/round, rr " + std::to_string(p.rr_n) +
                      " requests/job, throughput " + std::to_string(p.throughput_s).substr(0, 4) +
                      " s/job, scaling " + std::to_string(p.scaling_n) + "/variant/size/round"},
      {"capture_flags", "-i '*' [-x N prefixes /16 matching none of the destinations]"}};
}

// The variants asked for (--variants) and the pods they need; false on an
// unknown name.
bool select_variants(const Options& o, Results& res, std::vector<RigDef>& defs) {
  define_variants(o.profile, defs, res.variants);
  if (o.only_variants.empty()) return true;
  for (const auto& name : o.only_variants)
    if (!res.variant(name)) {
      std::cerr << "meshcap-bench: --variants: no variant named '" << name << "'\n";
      return false;
    }
  auto wanted = [&](const std::string& n) {
    return std::find(o.only_variants.begin(), o.only_variants.end(), n) != o.only_variants.end();
  };
  std::erase_if(res.variants, [&](const VariantDef& v) { return !wanted(v.name); });
  std::erase_if(defs, [&](const RigDef& d) {
    return std::none_of(res.variants.begin(), res.variants.end(), [&](const VariantDef& v) { return v.rig == d.key; });
  });
  return true;
}

// Every phase; the pods of the variants go before init and node mode.
int run_phases(Bench& b, const std::vector<RigDef>& defs) {
  try {
    install_stop_handlers();
    if (b.opt.cni_only) {
      run_cni_phase(b);
      return kExitOk;
    }
    if (b.opt.dns_only) {
      run_dns_phase(b);
      return kExitOk;
    }
    build_rigs(b, defs);
    b.res.config["iptables_applied_with"] = b.ro.meshcap_iptables
                                                ? "meshcap init --mode iptables --force-iptables-binary"
                                                : "iptables-{nft,legacy}-restore of istio's payload";
    run_main_phase(b);
    run_scaling_phase(b);
    run_bpf_stats_phase(b);
    b.rigs.clear();  // removes captures, servers, haproxy and the pods
    run_init_phase(b);
    run_dns_phase(b);
    run_node_phase(b);
    run_cni_phase(b);
    return kExitOk;
  } catch (const Interrupted&) {
    std::cerr << "meshcap-bench: interrupted; pods and captures removed\n";
    return kExitInterrupted;
  } catch (const std::exception& e) {
    std::cerr << "meshcap-bench: " << e.what() << "\n";
    b.res.notes.push_back(std::string("run stopped: ") + e.what());
    return kExitFailed;
  }
}

void write_outputs(const Options& o, Results& res, const std::vector<std::string>& left) {
  std::vector<std::string> pngs;
  if (!o.no_plots) pngs = write_plots(res, o.out_dir);
  for (const auto& l : left) res.notes.push_back("left behind: " + l);
  const std::string text = render_text(res);
  const std::string targets = render_targets(res);
  std::ofstream(o.out_dir + "/results.json") << render_json(res);
  std::ofstream(o.out_dir + "/report.txt") << text << "\n" << targets;
  std::ofstream(o.out_dir + "/report.md") << render_markdown(res);
  if (o.raw_samples) {
    std::ofstream raw(o.out_dir + "/samples.tsv");
    raw << "phase\tworkload\tvariant\texclusions\tns\n";
    for (const auto& [k, c] : res.cells)
      for (uint32_t ns : c.samples)
        raw << k.phase << '\t' << k.workload << '\t' << k.variant << '\t' << k.exclusions << '\t' << ns << '\n';
  }
  std::cout << text << "\nwritten: " << o.out_dir << "/results.json, report.txt, report.md";
  for (const auto& png : pngs) std::cout << ", " << fs::path(png).filename().string();
  std::cout << "\ncleanup check: " << (left.empty() ? "no pods, pins or servers left behind" : "LEFT BEHIND (see notes)")
            << "\n\n";
  if (!o.selftest) std::cout << targets;  // the last lines: one per target
}

// --selftest: sane, non-zero sample counts in every cell asked for, a
// timing for every init and node step, the DNS reply state read, nothing
// left behind.
bool selftest_sane(const Results& res, const Options& o, bool clean, int code) {
  bool sane = clean && code == kExitOk && (!res.cells.empty() || res.cni.adds > 0);
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
  for (const auto& [way, v] : res.cni.seconds)
    if (v.size() < res.cni.adds) {
      std::cout << "selftest: cni " << way << ": " << v.size() << " ADDs timed of " << res.cni.adds << "\n";
      sane = false;
    }
  const bool dns_skipped = std::any_of(res.notes.begin(), res.notes.end(),
                                       [](const std::string& n) { return n.rfind("dns phase skipped", 0) == 0; });
  if (!o.no_dns && !o.cni_only && !dns_skipped && res.dns.state.size() < 2) {
    std::cout << "selftest: dns: no reply-mapping state read after queries\n";
    sane = false;
  }
  if (res.cells.empty() || o.dns_only) {  // --cni-only, --dns-only
    std::cout << "selftest: " << (sane ? "ok" : "FAILED") << "\n";
    return sane;
  }
  for (const char* step : {"enroll in-process", "meshcap init", "iptables-nft-restore"})
    if (!res.node.seconds.count(step)) {
      std::cout << "selftest: node step '" << step << "' produced no timing\n";
      sane = false;
    }
  // With BPF statistics read for the node data path, the empty programs of
  // the floor ran too: they sit on the hooks the unenrolled client crosses.
  auto ran = [&res](const std::string& variant) {
    return std::any_of(res.prog_stats.begin(), res.prog_stats.end(),
                       [&](const ProgStat& p) { return p.variant == variant && p.runs > 0; });
  };
  if (ran("unenrolled-node-on") && !ran("unenrolled-empty-programs")) {
    std::cout << "selftest: node: the empty programs of the floor never ran\n";
    sane = false;
  }
  std::cout << "selftest: " << (sane ? "ok" : "FAILED") << "\n";
  return sane;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  o.meshcap_bin = MESHCAP_BIN;
  o.cni_bin = MESHCAP_CNI_BIN;
  if (auto code = parse_options(argc, argv, o)) return *code;
  spdlog::set_default_logger(spdlog::stderr_color_mt("meshcap-bench"));
  spdlog::set_pattern("%^%l%$ %v");
  spdlog::set_level(spdlog::level::from_str(o.log_level));
  if (::geteuid() != 0) {
    std::cout << "meshcap-bench: SKIP: needs root (it creates network namespaces and cgroups and loads BPF)\n";
    return kExitSkip;
  }
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (ec) {
    std::cerr << "meshcap-bench: cannot create " << o.out_dir << ": " << ec.message() << "\n";
    return kExitUsage;
  }
  if (o.seed == 0) o.seed = std::random_device{}();
  Results res;
  init_results(o, res);
  std::vector<RigDef> defs;
  if (!select_variants(o, res, defs)) return kExitUsage;
  const auto t_start = Clock::now();
  pin_to_cpu(o.cpus.controller);
  RunDirs dirs;
  RigOptions ro;
  ro.meshcap_bin = o.meshcap_bin;
  ro.cpus = o.cpus;
  Bench b{o, res, std::mt19937_64(o.seed), ro, {}, {}, {}, {}};
  const int code = run_phases(b, defs);
  if (code == kExitInterrupted) return code;
  res.duration_s = std::chrono::duration<double>(Clock::now() - t_start).count();
  for (auto& [k, c] : res.cells) c.finish();
  compute_targets(res);
  const auto left = leftovers(b.pod_suffixes, b.server_pids, dirs);
  write_outputs(o, res, left);
  if (o.selftest) return selftest_sane(res, o, left.empty(), code) ? kExitOk : kExitFailed;
  return left.empty() ? code : kExitFailed;
}
