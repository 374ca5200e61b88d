// PNG plots of a run, drawn by gnuplot from data files written beside them.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <sstream>

#include "report_format.h"
#include "results.h"
#include "rig.h"
#include "support/common.h"

namespace meshcap::bench {

namespace {

// One plot: a data file's columns 3.. against the x tics of column 2.
void line_plot(std::ostringstream& script, const std::string& png, const std::string& title, const std::string& xlabel,
               const std::string& ylabel, const std::string& file, const std::vector<std::string>& names) {
  script << "set output '" << png << "'\nset title '" << title << "'\nset xlabel '" << xlabel << "'\nset ylabel '"
         << ylabel << "'\nplot ";
  for (size_t i = 0; i < names.size(); i++)
    script << (i ? ", " : "") << "'" << file << "' using 1:" << i + 3 << ":xtic(2) with linespoints lw 2 title '"
           << names[i] << "'";
  script << "\n";
}

// The cumulative distribution of one cell, 1000 points and the far tail.
void write_cdf(const std::string& file, const Cell& c) {
  std::ofstream d(file);
  d << "# latency_us cumulative_percent (" << c.sorted.size() << " samples)\n";
  const size_t n = c.sorted.size();
  for (int i = 0; i <= 1000; i++) {
    const double p = i / 10.0;
    d << c.sorted[std::min(n - 1, static_cast<size_t>(std::ceil(p / 100 * n)) - (p > 0 ? 1 : 0))] / 1000.0 << " " << p
      << "\n";
  }
  for (double p : {99.5, 99.9, 99.95, 99.99, 100.0}) d << percentile_sorted(c.sorted, p) / 1000.0 << " " << p << "\n";
}

void latency_plots(const Results& r, const std::string& dir, std::ostringstream& script, std::vector<std::string>& pngs) {
  for (const std::string view : {"proxy", "mechanism"}) {
    std::vector<std::pair<std::string, std::string>> series;
    for (const auto& v : r.variants) {
      const Cell* c = r.cell("main", "connect", v.name, 0);
      if (v.view != view || !c) continue;
      const std::string file = dir + "/cdf-" + v.name + ".dat";
      write_cdf(file, *c);
      series.push_back({file, v.name});
    }
    if (series.empty()) continue;
    const std::string png = dir + "/latency-connect-" + view + ".png";
    script << "set output '" << png << "'\nset title 'connection setup latency, "
           << (view == "proxy" ? "through haproxy" : "mechanism only (no proxy)")
           << ", no exclusions: cumulative distribution'\nset xlabel 'latency (µs, log scale)'\n"
           << "set ylabel 'samples <= x (%)'\nset logscale x\nset yrange [0:100]\nset xtics auto\nplot ";
    for (size_t i = 0; i < series.size(); i++)
      script << (i ? ", " : "") << "'" << series[i].first << "' using 1:2 with lines lw 2 title '" << series[i].second
             << "'";
    script << "\nunset logscale x\nset yrange [*:*]\n";
    pngs.push_back(png);
  }
}

// A data file: index, size, then one column per name (NaN where missing).
void write_by_size(const std::string& file, const std::vector<size_t>& sizes, const std::vector<std::string>& names,
                   const std::string& what, const std::function<std::string(const std::string&, size_t)>& value) {
  std::ofstream d(file);
  d << "# index exclusions";
  for (const auto& n : names) d << " " << n;
  d << "  (" << what << ")\n";
  for (size_t i = 0; i < sizes.size(); i++) {
    d << i << " " << sizes[i];
    for (const auto& n : names) d << " " << value(n, sizes[i]);
    d << "\n";
  }
}

// Whether the run has figures of the rule-scaling phase (not with
// --cni-only or --dns-only: gnuplot refuses a plot with no points).
bool has_scaling(const Results& r) {
  return std::any_of(r.cells.begin(), r.cells.end(), [](const auto& kc) { return kc.first.phase == "scaling"; });
}

void scaling_plots(const Results& r, const std::string& dir, std::ostringstream& script, std::vector<std::string>& pngs) {
  if (r.sizes.empty() || !has_scaling(r)) return;
  for (const std::string view : {"mechanism", "proxy"}) {
    std::vector<std::string> names;
    for (const auto& v : r.variants)
      if (v.view == view && v.scaling) names.push_back(v.name);
    if (names.empty()) continue;
    const std::string file = dir + "/scaling-" + view + ".dat";
    write_by_size(file, r.sizes, names, "connection-setup p50, µs", [&](const std::string& n, size_t s) {
      const Cell* c = r.cell("scaling", "connect", n, s);
      return c ? num(c->p50) : std::string("NaN");
    });
    const std::string png = dir + "/scaling-" + view + ".png";
    script << "set yrange [0:*]\n";
    line_plot(script, png,
              "rule scaling, " + std::string(view == "proxy" ? "through haproxy" : "mechanism only (no proxy)") +
                  ": connection-setup p50 vs excluded CIDRs (destination matches none)",
              "excluded CIDRs (-x)", "p50 (µs)", file, names);
    script << "set yrange [*:*]\n";
    pngs.push_back(png);
  }
}

// The mechanism's overhead by size (paired per round, as the goals use it).
void overhead_plot(const Results& r, const std::string& dir, std::ostringstream& script, std::vector<std::string>& pngs) {
  std::vector<std::string> caps;
  for (const std::string cap : {"iptables-nft", "iptables-legacy", "ebpf"})
    if (r.variant(cap + "-mech")) caps.push_back(cap);
  if (r.sizes.empty() || caps.empty() || !r.variant("local-direct") || !has_scaling(r)) return;
  const std::string file = dir + "/scaling-overhead.dat";
  write_by_size(file, r.sizes, caps, "connection-setup p50 minus local-direct's, median over rounds, µs",
                [&](const std::string& c, size_t s) {
                  const Cell* a = r.cell("scaling", "connect", c + "-mech", s);
                  const Cell* b = r.cell("scaling", "connect", "local-direct", s);
                  const auto x = a && b ? paired_diff(*a, *b) : std::nullopt;
                  return x ? fmt("%.2f", *x) : std::string("NaN");
                });
  const std::string png = dir + "/scaling-overhead.png";
  line_plot(script, png, "capture mechanism overhead on connection setup (p50 minus local-direct, median over rounds)",
            "excluded CIDRs (-x)", "overhead (µs)", file, caps);
  pngs.push_back(png);
}

void init_plot(const Results& r, const std::string& dir, std::ostringstream& script, std::vector<std::string>& pngs) {
  if (r.init.empty()) return;
  std::vector<size_t> sizes;
  std::vector<std::string> caps;
  for (const auto& i : r.init) {
    if (std::find(sizes.begin(), sizes.end(), i.exclusions) == sizes.end()) sizes.push_back(i.exclusions);
    if (std::find(caps.begin(), caps.end(), i.capture) == caps.end()) caps.push_back(i.capture);
  }
  std::sort(sizes.begin(), sizes.end());
  const std::string file = dir + "/init.dat";
  write_by_size(file, sizes, caps, "apply time, ms, median", [&](const std::string& c, size_t s) {
    const InitRecord* rec = find_init(r, c, s);
    return rec && !rec->apply_s.empty() ? fmt("%.3f", median(rec->apply_s) * 1e3) : std::string("NaN");
  });
  const std::string png = dir + "/init-apply.png";
  script << "set logscale y\n";
  line_plot(script, png, "apply capture to a fresh pod (median)", "excluded CIDRs (-x)", "ms (log scale)", file, caps);
  script << "unset logscale y\n";
  pngs.push_back(png);
}

}  // namespace

std::vector<std::string> write_plots(Results& r, const std::string& dir) {
  std::vector<std::string> pngs;
  const auto gp = test::find_binary("gnuplot");
  if (!gp) {
    r.notes.push_back("gnuplot is not installed (scripts/install-deps.sh installs gnuplot-nox): no PNG plots");
    return pngs;
  }
  std::ostringstream script;
  script << "set terminal pngcairo size 1100,650 noenhanced font ',10'\nset grid\nset key outside right\n";
  latency_plots(r, dir, script, pngs);
  scaling_plots(r, dir, script, pngs);
  overhead_plot(r, dir, script, pngs);
  init_plot(r, dir, script, pngs);
  if (pngs.empty()) return pngs;
  const std::string script_path = dir + "/plots.gp";
  std::ofstream(script_path) << script.str();
  const Timed t = run_timed({*gp, script_path});
  if (!t.ok()) {
    r.notes.push_back("gnuplot failed: " + t.output);
    pngs.clear();
  }
  return pngs;
}

}  // namespace meshcap::bench
