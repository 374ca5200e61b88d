// Percentiles and per-round spread, computed from every kept sample.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace meshcap::bench {

/// Nearest-rank percentile (p in [0, 100]) of unsorted samples; 0 when empty.
double percentile(std::vector<uint32_t> samples, double p);
/// The same on samples already sorted ascending.
double percentile_sorted(const std::vector<uint32_t>& sorted, double p);
/// Nearest-rank percentile of unsorted values (times); 0 when empty.
double percentile(std::vector<double> v, double p);
/// Median of a few values (per-round figures); 0 when empty.
double median(std::vector<double> v);
/// (max - min) / median of per-round figures, in percent; 0 with < 2 rounds.
double spread_pct(const std::vector<double>& rounds);

struct Cell;
/// Paired comparison of two cells measured in the same rounds: the median
/// over common rounds of (a's p50 - b's p50), in µs, and of a's / b's.
/// Round-to-round drift of the machine cancels out. nullopt without
/// common rounds.
std::optional<double> paired_diff(const Cell& a, const Cell& b);
std::optional<double> paired_ratio(const Cell& a, const Cell& b);

/// Everything kept for one (phase, workload, variant, exclusions) cell.
struct Cell {
  std::vector<uint32_t> samples;     ///< all rounds pooled, ns
  std::vector<double> round_p50_us;  ///< p50 of each round
  std::map<int, double> p50_by_round; ///< the same, by round number (for paired comparisons)
  std::vector<double> round_rate;    ///< rr: requests/s; throughput: MB/s; per round
  std::vector<double> round_cpu_gb;  ///< throughput: CPU-s/GB of client+servers+proxy, per round
  std::vector<double> round_sys_gb;  ///< throughput: CPU-s/GB from /proc/stat (data CPUs), per round
  uint64_t errors = 0;
  std::string first_error;

  // Filled by finish().
  std::vector<uint32_t> sorted;
  double p50 = 0, p90 = 0, p99 = 0, p999 = 0, mean = 0;  // µs
  void finish();
};

}  // namespace meshcap::bench
