// What one benchmark run measured, and the ways it is reported: terminal
// table, JSON, markdown, gnuplot PNGs and the target lines.
#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "stats.h"

namespace meshcap::bench {

/// One way of reaching the upstream server.
struct VariantDef {
  std::string name;       ///< "ebpf+proxy", "iptables-nft-mech", ...
  std::string rig;        ///< which pod it runs in
  bool local = false;     ///< dials 127.0.0.1 (else the peer's address)
  uint16_t echo_port = 0;
  uint16_t sink_port = 0; ///< 0: no throughput workload
  std::string view;       ///< "proxy" (through haproxy), "mechanism" (no proxy) or "node"
  std::string capture;    ///< "none", "iptables-nft", "iptables-legacy", "ebpf"
  bool persistent = false;  ///< also runs the rr and throughput workloads
  bool scaling = false;     ///< part of the rule-scaling phase
  std::string expect;       ///< what the probe must show: "direct", "relay", "local"
  bool bind_pod_ip = false; ///< connect: bind the pod's address first (diagnostic)
};

struct CellKey {
  std::string phase;     ///< "main" (no exclusions) or "scaling"
  std::string workload;  ///< "connect", "rr-1x64", ..., "throughput"
  std::string variant;
  size_t exclusions = 0;
  auto operator<=>(const CellKey&) const = default;
};

/// Init-time measurements of one capture at one size, over repetitions.
struct InitRecord {
  std::string capture;  ///< "ebpf", "iptables-nft", "iptables-legacy"
  std::string how;      ///< the apply command ("meshcap init", "iptables-nft-restore")
  std::string add_how;  ///< the add-one-exclusion step
  size_t exclusions = 0;
  std::vector<double> apply_s, add_one_s, cleanup_s;
};

/// Diagnostic: the BPF run time of one of a variant's programs during one
/// job with the kernel's BPF statistics on (BPF_ENABLE_STATS).
struct ProgStat {
  std::string variant, workload, program;
  uint64_t units = 0;  ///< connections (connect) or requests (rr) of the job
  uint64_t runs = 0;
  uint64_t run_ns = 0;
};

/// Node mode's figures besides its connection cells (phase "node").
struct NodeFigures {
  size_t pods = 0;      ///< pods enrolled in the many-pods state
  size_t max_pods = 0;  ///< the node's --max-pods
  std::map<std::string, std::vector<double>> seconds;  ///< every timing of a step, by step
  std::map<std::string, std::string> how;               ///< what each step ran
  std::map<std::string, uint64_t> memlock;              ///< maps' memlock bytes, by state
  std::map<std::string, size_t> enrolled;               ///< pods enrolled when memlock was read
  std::vector<double> enroll_by_count;                  ///< k-th pod's in-process enrolment, s
};

/// CNI ADD end to end (phase "cni"): seconds per ADD, by way.
struct CniFigures {
  size_t adds = 0;      ///< ADDs timed each way
  size_t max_pods = 0;  ///< the node's --max-pods
  std::map<std::string, std::vector<double>> seconds;
};

/// The UDP reply mapping (dns_reverse) after `queries` DNS queries.
struct DnsStatePoint {
  uint64_t queries = 0;
  size_t entries = 0;
  uint64_t memlock = 0;  ///< the map's memlock bytes (/proc/self/fdinfo)
};

/// DNS capture (phase "dns") besides its cells: round trips (workload
/// "dns-rtt", per capture, and the A/A pair on the eBPF pod) and
/// connection setup with and without DNS capture (workload "connect").
struct DnsRecord {
  uint64_t queries = 0;                        ///< timed queries per round-trip job
  std::map<std::string, std::string> how;      ///< dns-rtt variant -> how its capture was applied
  std::map<std::string, uint64_t> sent;        ///< dns-rtt variant -> queries sent, warm-up included
  std::map<std::string, uint64_t> upstream;    ///< ... and of them, those the upstream resolver saw
  std::map<std::string, uint64_t> counters;    ///< the eBPF pod's dns_* counters after its jobs
  uint64_t state_queries = 0;                  ///< queries of the reply-mapping measurement
  uint64_t per_socket = 0;                     ///< ... on a new socket every this many
  uint64_t state_failures = 0;
  uint32_t max_entries = 0;                    ///< dns_reverse's
  std::vector<DnsStatePoint> state;            ///< before the queries, then at steps
};

struct Target {
  std::string name, measured, goal;
  bool pass = false;
  bool figure = false;  ///< kept for comparison with older runs, not a goal any more
};

struct Results {
  std::string command;     ///< the exact command line
  std::string started;     ///< UTC time
  double duration_s = 0;
  std::string profile;     ///< "full", "quick", "selftest"
  int rounds = 0;
  std::map<std::string, std::string> machine;  ///< nproc, kernel, cpu_model, ...
  std::map<std::string, std::string> config;   ///< settings of the run
  std::vector<VariantDef> variants;
  std::vector<std::string> workloads;          ///< main-phase workloads, in table order
  std::vector<size_t> sizes;                   ///< rule-scaling sizes
  std::map<CellKey, Cell> cells;
  std::vector<InitRecord> init;
  std::vector<ProgStat> prog_stats;
  NodeFigures node;
  CniFigures cni;
  DnsRecord dns;
  std::vector<Target> targets;
  std::vector<std::string> notes;              ///< anything that went wrong
  /// Per job: share of the data-path CPUs busy with work other than the
  /// benchmark's client, servers and proxy (/proc/stat minus their CPU
  /// time): other processes on a shared machine, kernel threads.
  std::vector<double> foreign_share;
  int data_cpus = 1;

  const VariantDef* variant(const std::string& name) const;
  const Cell* cell(const std::string& phase, const std::string& workload, const std::string& variant,
                   size_t exclusions) const;
  /// The BPF run time per connection or request of every program that ran
  /// in a variant's statistics jobs, summed; nullopt when none ran.
  std::optional<double> bpf_ns_per_unit(const std::string& variant, const std::string& workload) const;
};

/// Fills results.targets from the cells, init records and node figures:
/// issue 7's goals, node mode's and DNS capture's (issue 18), and the
/// figures kept beside them.
void compute_targets(Results& r);
/// The terminal report: machine, settings, tables and notes.
std::string render_text(const Results& r);
/// One line per target: `target NAME: MEASURED (goal GOAL) PASS|MISS`,
/// after one line per figure: `figure NAME: MEASURED (was a goal: GOAL)`.
std::string render_targets(const Results& r);
/// The same tables as markdown (for docs/benchmarks.md).
std::string render_markdown(const Results& r);
/// Everything, with per-round figures, as JSON.
std::string render_json(const Results& r);
/// Writes gnuplot data and script into dir and runs gnuplot; returns the
/// PNGs written (empty with a note when gnuplot is missing).
std::vector<std::string> write_plots(Results& r, const std::string& dir);

}  // namespace meshcap::bench
