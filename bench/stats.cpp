#include "stats.h"

#include <algorithm>
#include <cmath>

namespace meshcap::bench {

double percentile_sorted(const std::vector<uint32_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  // Nearest rank: the smallest sample with at least p% of samples <= it.
  const double rank = std::ceil(p / 100.0 * static_cast<double>(sorted.size()));
  const size_t idx = rank < 1 ? 0 : std::min(sorted.size() - 1, static_cast<size_t>(rank) - 1);
  return sorted[idx];
}

double percentile(std::vector<uint32_t> samples, double p) {
  std::sort(samples.begin(), samples.end());
  return percentile_sorted(samples, p);
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  return v[std::min(v.size() - 1, rank == 0 ? 0 : rank - 1)];
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double spread_pct(const std::vector<double>& rounds) {
  if (rounds.size() < 2) return 0;
  const auto [lo, hi] = std::minmax_element(rounds.begin(), rounds.end());
  const double m = median(rounds);
  return m > 0 ? (*hi - *lo) / m * 100.0 : 0;
}

std::optional<double> paired_diff(const Cell& a, const Cell& b) {
  std::vector<double> d;
  for (const auto& [round, v] : a.p50_by_round)
    if (auto it = b.p50_by_round.find(round); it != b.p50_by_round.end()) d.push_back(v - it->second);
  if (d.empty()) return std::nullopt;
  return median(d);
}

std::optional<double> paired_ratio(const Cell& a, const Cell& b) {
  std::vector<double> q;
  for (const auto& [round, v] : a.p50_by_round)
    if (auto it = b.p50_by_round.find(round); it != b.p50_by_round.end() && it->second > 0) q.push_back(v / it->second);
  if (q.empty()) return std::nullopt;
  return median(q);
}

void Cell::finish() {
  sorted = samples;
  std::sort(sorted.begin(), sorted.end());
  p50 = percentile_sorted(sorted, 50) / 1000.0;
  p90 = percentile_sorted(sorted, 90) / 1000.0;
  p99 = percentile_sorted(sorted, 99) / 1000.0;
  p999 = percentile_sorted(sorted, 99.9) / 1000.0;
  double sum = 0;
  for (uint32_t s : sorted) sum += s;
  mean = sorted.empty() ? 0 : sum / static_cast<double>(sorted.size()) / 1000.0;
}

}  // namespace meshcap::bench
