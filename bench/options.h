// What one run measures: the profile (how many samples, which sizes and
// variants) and the command line that chose it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "rig.h"

namespace meshcap::bench {

struct Profile {
  std::string name;  ///< "full", "quick", "selftest"
  int rounds = 7;
  uint64_t connect_n = 3000;   ///< connection-setup samples per variant per round
  uint64_t rr_n = 6000;        ///< requests per rr job
  double throughput_s = 1.5;   ///< seconds per throughput job
  uint64_t scaling_n = 3000;   ///< connection-setup samples per variant per size per round
  std::vector<size_t> sizes = {0, 10, 100, 1000, 10000};
  std::vector<size_t> init_sizes = {0, 10, 100, 1000, 10000};
  int init_reps = 7;
  bool proxies = true;      ///< haproxy variants
  bool legacy = true;       ///< iptables-legacy variants
  bool aa = true;           ///< the A/A pair
  bool diagnostics = true;  ///< ebpf-connect-only-mech, ebpf-accel-mech, BPF run time
  // Node mode.
  size_t node_pods = 1000;   ///< pods enrolled in the "many pods" state
  int node_rounds = 7;       ///< rounds of the node connection jobs
  int node_enrol_reps = 21;  ///< enrolments (and restores) timed
  // CNI ADD.
  int cni_adds = 100;  ///< ADDs timed each way
  // DNS capture.
  uint64_t dns_queries = 2000;          ///< DNS round trips per variant per round
  uint64_t dns_state_queries = 100000;  ///< queries before the reply-mapping state is read
};

/// The profile of that name ("full", "quick", "selftest").
Profile make_profile(const std::string& name);

struct Options {
  Profile profile;
  bool selftest = false;
  bool no_init = false;
  bool no_node = false;
  bool no_cni = false;
  bool cni_only = false;  ///< the CNI ADD phase alone
  bool no_dns = false;
  bool dns_only = false;  ///< the DNS phase alone
  bool no_plots = false;
  bool raw_samples = false;
  std::string out_dir = "meshcap-bench-out";
  std::string meshcap_bin;
  std::string cni_bin;  ///< meshcap-cni
  std::string iptables_via = "auto";
  std::string log_level = "info";
  uint64_t seed = 0;
  CpuPlan cpus;
  std::vector<std::string> only_variants, only_workloads;
  std::string command;  ///< the command line, shell-quoted
};

/// Parses the command line into `o` and checks it; returns an exit code
/// when the run must not go on (--help, bad usage), nullopt otherwise.
std::optional<int> parse_options(int argc, char** argv, Options& o);

}  // namespace meshcap::bench
