// Percentiles and per-round spread, computed from every kept sample.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace meshcap::bench {

/// Nearest-rank percentile (p in [0, 100]) of unsorted samples; 0 when empty.
double percentile(std::vector<uint32_t> samples, double p);
/// The same on samples already sorted ascending.
double percentile_sorted(const std::vector<uint32_t>& sorted, double p);
/// Median of a few values (per-round figures); 0 when empty.
double median(std::vector<double> v);
/// (max - min) / median of per-round figures, in percent; 0 with < 2 rounds.
double spread_pct(const std::vector<double>& rounds);

/// Everything kept for one (phase, workload, variant, exclusions) cell.
struct Cell {
  std::vector<uint32_t> samples;     ///< all rounds pooled, ns
  std::vector<double> round_p50_us;  ///< p50 of each round
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
