#include "options.h"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <iostream>

#include "support/common.h"

namespace meshcap::bench {

namespace {

constexpr int kExitUsage = 2;

std::string shell_quote(const std::string& s) {
  if (!s.empty() && s.find_first_of(" '\"*$;&|<>()\\") == std::string::npos) return s;
  std::string o = "'";
  for (char c : s) o += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return o + "'";
}

// Overrides of the profile given on the command line (0: not given).
struct Overrides {
  bool quick = false, no_scaling = false;
  int rounds = 0;
  std::vector<size_t> sizes;
  uint64_t connect_n = 0, rr_n = 0;
  double tput_s = 0;
  size_t node_pods = 0;
  int cni_adds = 0;
  uint64_t dns_queries = 0;
};

void add_run_options(CLI::App& app, Options& o, Overrides& v) {
  app.add_flag("--quick", v.quick, "Reduced run (a few minutes) ending with the target lines");
  app.add_flag("--selftest", o.selftest, "A few seconds: checks that every part runs and yields samples");
  app.add_option("--rounds", v.rounds, "Shuffled rounds (default: 7, quick 5)");
  app.add_option("--out", o.out_dir, "Directory for results.json, report.txt, report.md and the PNGs")
      ->capture_default_str();
  app.add_option("--meshcap", o.meshcap_bin, "The meshcap binary")->capture_default_str();
  app.add_option("--iptables-via", o.iptables_via,
                 "How the iptables variants are applied: restore (iptables-restore of istio's payload), meshcap "
                 "(meshcap init --mode iptables), auto (meshcap when it works)")
      ->check(CLI::IsMember({"auto", "restore", "meshcap"}))
      ->capture_default_str();
  app.add_option("--seed", o.seed, "Shuffle seed (default: random)");
  app.add_option("--sizes", v.sizes, "Rule-scaling sizes (excluded CIDRs)")->delimiter(',');
  app.add_option("--connect-samples", v.connect_n, "Connection-setup samples per variant and round");
  app.add_option("--rr-samples", v.rr_n, "Requests per request/response job");
  app.add_option("--throughput-seconds", v.tput_s, "Seconds per throughput job");
  app.add_option("--node-pods", v.node_pods, "Pods enrolled in the node phase's many-pods state (default 1000)");
  app.add_flag("--no-scaling", v.no_scaling, "Skip the rule-scaling phase");
  app.add_flag("--no-init", o.no_init, "Skip the init-time phase");
  app.add_flag("--no-node", o.no_node, "Skip the node-mode phase");
  app.add_flag("--no-cni", o.no_cni, "Skip the CNI ADD phase");
  app.add_flag("--cni-only", o.cni_only, "Run only the CNI ADD phase");
  app.add_option("--cni-adds", v.cni_adds, "CNI ADDs timed each way (default: 100, quick 50)");
  app.add_flag("--no-dns", o.no_dns, "Skip the DNS capture phase");
  app.add_flag("--dns-only", o.dns_only, "Run only the DNS capture phase");
  app.add_option("--dns-queries", v.dns_queries, "DNS round trips per variant and round (default: 2000, quick 500)");
  app.add_option("--meshcap-cni", o.cni_bin, "The meshcap-cni binary")->capture_default_str();
  app.add_flag("--no-plots", o.no_plots, "Do not run gnuplot");
  app.add_flag("--raw-samples", o.raw_samples,
               "Also write every sample to samples.tsv (phase, workload, variant, exclusions, ns)");
  app.add_option("--log-level", o.log_level, "trace, debug, info, warn, error")->capture_default_str();
}

void add_selection_options(CLI::App& app, Options& o) {
  app.add_option("--client-cpu", o.cpus.client, "CPU of the load client")->capture_default_str();
  app.add_option("--server-cpu", o.cpus.server, "CPU of the servers")->capture_default_str();
  app.add_option("--proxy-cpu", o.cpus.proxy, "CPU of haproxy")->capture_default_str();
  app.add_option("--controller-cpu", o.cpus.controller, "CPU of this process while it waits")->capture_default_str();
  app.add_option("--variants", o.only_variants,
                 "Run only these variants (comma-separated names as in the tables); targets that need others "
                 "say 'not measured'")
      ->delimiter(',');
  app.add_option("--workloads", o.only_workloads,
                 "Run only these main-phase workloads: connect, rr-1x64, rr-1x1k, rr-8x64, rr-8x1k, throughput")
      ->delimiter(',')
      ->check(CLI::IsMember({"connect", "rr-1x64", "rr-1x1k", "rr-8x64", "rr-8x1k", "throughput"}));
}

void apply_overrides(Profile& p, const Overrides& v) {
  if (v.rounds > 0) p.rounds = p.node_rounds = v.rounds;
  if (!v.sizes.empty()) p.sizes = v.sizes;
  if (v.connect_n) p.connect_n = p.scaling_n = v.connect_n;
  if (v.rr_n) p.rr_n = v.rr_n;
  if (v.tput_s > 0) p.throughput_s = v.tput_s;
  if (v.node_pods) p.node_pods = v.node_pods;
  if (v.cni_adds > 0) p.cni_adds = v.cni_adds;
  if (v.dns_queries > 0) p.dns_queries = v.dns_queries;
  if (v.no_scaling) p.sizes.clear();
  if (!test::have_binary("haproxy")) p.proxies = false;
}

std::optional<int> check(const Options& o) {
  const int ncpu = static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
  for (int c : {o.cpus.client, o.cpus.server, o.cpus.proxy, o.cpus.controller})
    if (c < 0 || c >= ncpu) {
      std::cerr << "meshcap-bench: CPU " << c << " does not exist (" << ncpu << " online)\n";
      return kExitUsage;
    }
  if (!o.no_cni && !std::filesystem::exists(o.cni_bin)) {
    std::cerr << "meshcap-bench: meshcap-cni binary not found at " << o.cni_bin << " (--meshcap-cni)\n";
    return kExitUsage;
  }
  if (o.no_cni && o.cni_only) {
    std::cerr << "meshcap-bench: --cni-only and --no-cni contradict each other\n";
    return kExitUsage;
  }
  if ((o.no_dns && o.dns_only) || (o.cni_only && o.dns_only)) {
    std::cerr << "meshcap-bench: --dns-only contradicts " << (o.no_dns ? "--no-dns" : "--cni-only") << "\n";
    return kExitUsage;
  }
  if (!std::filesystem::exists(o.meshcap_bin)) {
    std::cerr << "meshcap-bench: meshcap binary not found at " << o.meshcap_bin << " (--meshcap)\n";
    return kExitUsage;
  }
  for (size_t s : o.profile.sizes)
    if (s > 10000) {
      // meshcap takes -x as one argument, and Linux limits one to 128 KiB.
      std::cerr << "meshcap-bench: --sizes: at most 10000 exclusions (one command-line argument)\n";
      return kExitUsage;
    }
  return std::nullopt;
}

}  // namespace

Profile make_profile(const std::string& name) {
  Profile p;
  p.name = name;
  if (name == "quick") {
    p.rounds = p.node_rounds = 5;
    p.connect_n = 1000;
    p.rr_n = 3000;
    p.throughput_s = 0.5;
    p.scaling_n = 1000;
    p.init_sizes = {10, 1000, 10000};
    p.init_reps = 5;
    p.node_enrol_reps = 11;
    p.cni_adds = 50;
    p.dns_queries = 500;
    p.dns_state_queries = 10000;
  } else if (name == "selftest") {
    p.rounds = p.node_rounds = 1;
    p.connect_n = 100;
    p.rr_n = 200;
    p.throughput_s = 0.2;
    p.scaling_n = 100;
    p.sizes = {0, 10};
    p.init_sizes = {10};
    p.init_reps = 1;
    p.legacy = p.aa = p.diagnostics = false;
    p.node_pods = 3;
    p.node_enrol_reps = 1;
    p.cni_adds = 3;
    p.dns_queries = 100;
    p.dns_state_queries = 1000;
  }
  return p;
}

std::optional<int> parse_options(int argc, char** argv, Options& o) {
  CLI::App app{"meshcap-bench: eBPF capture against istio's iptables rules, in throwaway pods on this machine"};
  const int ncpu = static_cast<int>(::sysconf(_SC_NPROCESSORS_ONLN));
  o.cpus.client = o.cpus.server = o.cpus.proxy = ncpu > 1 ? ncpu - 1 : 0;
  o.cpus.controller = 0;
  Overrides v;
  add_run_options(app, o, v);
  add_selection_options(app, o);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  o.profile = make_profile(o.selftest ? "selftest" : v.quick ? "quick" : "full");
  apply_overrides(o.profile, v);
  for (int i = 0; i < argc; i++) o.command += (i ? " " : "") + shell_quote(argv[i]);
  return check(o);
}

}  // namespace meshcap::bench
