// The phases of a run, in the order main() runs them, over one shared
// context: the pods of every variant, then the main workloads, rule
// scaling, the BPF run-time diagnostic, init times, DNS capture, node mode
// and CNI ADD.
#pragma once

#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "options.h"
#include "results.h"
#include "rig.h"
#include "variants.h"

namespace meshcap::bench {

/// What the phases share.
struct Bench {
  const Options& opt;
  Results& res;
  std::mt19937_64 rng;
  RigOptions ro;
  std::map<std::string, std::unique_ptr<Rig>> rigs;  ///< by RigDef::key
  std::vector<std::string> dropped;                 ///< variants that failed their probe
  std::vector<std::string> pod_suffixes;            ///< every pod made (the leftovers check)
  std::vector<pid_t> server_pids;

  const Profile& profile() const { return opt.profile; }
  bool active(const VariantDef& v) const;
  /// Runs one client job of variant v and records it under (phase, n).
  void run_job(const VariantDef& v, const std::string& workload, const std::string& phase, size_t n, int round);
  /// Keeps a pod's names and processes for the leftovers check.
  void track(Rig& rig);
};

/// Starts `meshcap node serve` on `cgroup` (the node data path started
/// there already is replaced in place) with its stderr in `log`, and waits
/// until its socket (`state_dir`/cni.sock) answers; throws otherwise.
pid_t start_node_agent(Bench& b, const std::string& cgroup, size_t max_pods, const std::string& state_dir,
                       const std::string& log);
/// SIGTERM and wait; `pid` becomes -1. Safe with -1.
void stop_node_agent(pid_t& pid);

/// The variants' pods (and whether `meshcap init --mode iptables` is the
/// way to apply iptables, decided on the first one).
void build_rigs(Bench& b, const std::vector<RigDef>& defs);
/// Applies `n` exclusions to every captured pod and checks every variant
/// with the probe; variants that fail are dropped from the run.
void prepare(Bench& b, size_t n);
void run_main_phase(Bench& b);
void run_scaling_phase(Bench& b);
/// Diagnostic: BPF run time per connection or request of the eBPF
/// variants, with the kernel's statistics on for those jobs only.
void run_bpf_stats_phase(Bench& b);
/// Init times on fresh pods (after the variants' pods are gone).
void run_init_phase(Bench& b);
/// Node mode: enrolment, memory, many pods, namespaces not enrolled.
void run_node_phase(Bench& b);
/// CNI ADD end to end: meshcap-cni through the agent and without, into
/// the node data path and with iptables.
void run_cni_phase(Bench& b);
/// DNS capture (--redirect-dns) on fresh pods: a query's round trip through
/// the proxy per capture, connection setup of other traffic with DNS
/// capture on and off, and the UDP reply mapping's state after many queries.
void run_dns_phase(Bench& b);

/// The client job of a workload ("connect", "rr-CxS", "throughput").
ClientSpec spec_for(const Profile& p, const VariantDef& v, Rig& rig, const std::string& workload, bool scaling);
/// Connections or requests a job made, warm-up included (what the BPF
/// statistics count).
uint64_t units_of(const ClientSpec& s, const ClientResult& r);
/// Adds what each program ran between `before` and `after` (runs, run
/// time) to `into`.
void add_stats_delta(ProgramStats& into, const ProgramStats& before, const ProgramStats& after);
/// Adds the BPF run time a job of `units` connections or requests cost
/// (after - before) to the results.
void add_prog_stats(Results& res, const std::string& variant, const std::string& workload, uint64_t units,
                    const ProgramStats& before, const ProgramStats& after);
/// Adds one job's result to a cell (and the run's interference figures).
void record(Cell& c, const std::string& workload, const ClientResult& r, Results& res, const std::string& what,
            int round);

}  // namespace meshcap::bench
