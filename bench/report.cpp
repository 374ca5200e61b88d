#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "results.h"
#include "rig.h"

namespace meshcap::bench {

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string num(double v) {
  if (v == 0) return "0";
  if (std::fabs(v) >= 100) return fmt("%.0f", v);
  if (std::fabs(v) >= 10) return fmt("%.1f", v);
  return fmt("%.2f", v);
}

std::string ratio(double a, double b) { return b > 0 && a > 0 ? fmt("%.2fx", a / b) : "-"; }

std::string pad(const std::string& s, size_t w, bool left = false) {
  if (s.size() >= w) return s;
  return left ? s + std::string(w - s.size(), ' ') : std::string(w - s.size(), ' ') + s;
}

// A table rendered both as aligned text and as markdown.
struct Table {
  std::string title;
  std::vector<std::string> head;
  std::vector<std::vector<std::string>> rows;

  std::string text() const {
    std::vector<size_t> w(head.size());
    for (size_t i = 0; i < head.size(); i++) w[i] = head[i].size();
    for (const auto& r : rows)
      for (size_t i = 0; i < r.size() && i < w.size(); i++) w[i] = std::max(w[i], r[i].size());
    std::ostringstream o;
    o << "\n== " << title << "\n";
    auto line = [&](const std::vector<std::string>& r) {
      for (size_t i = 0; i < r.size(); i++) o << (i ? "  " : "") << pad(r[i], w[i], i == 0);
      o << "\n";
    };
    line(head);
    for (const auto& r : rows) line(r);
    return o.str();
  }
  std::string markdown() const {
    std::ostringstream o;
    o << "\n**" << title << "**\n\n|";
    for (const auto& h : head) o << " " << h << " |";
    o << "\n|";
    for (size_t i = 0; i < head.size(); i++) o << (i == 0 ? " --- |" : " ---: |");
    o << "\n";
    for (const auto& r : rows) {
      o << "|";
      for (const auto& c : r) o << " " << c << " |";
      o << "\n";
    }
    return o.str();
  }
};

std::string workload_title(const std::string& w) {
  if (w == "connect") return "connection setup: connect + 16 B request/response + close (SO_LINGER 0), latency in µs";
  if (w == "throughput") return "throughput: one connection, 64 KiB writes to a sink";
  // rr-CxS
  const auto x = w.find('x');
  return "request/response on " + w.substr(3, x - 3) + " persistent connection(s), " + w.substr(x + 1) +
         " messages, one request in flight per connection, latency in µs";
}

std::string baseline_of(const VariantDef& v) { return v.view == "mechanism" ? "local-direct" : "direct"; }
std::string iptables_ref_of(const VariantDef& v) {
  return v.view == "mechanism" ? "iptables-nft-mech" : "iptables-nft+proxy";
}

std::vector<Table> latency_tables(const Results& r) {
  std::vector<Table> out;
  for (const auto& w : r.workloads) {
    if (w == "throughput") continue;
    for (const std::string view : {"proxy", "mechanism"}) {
      Table t;
      t.title = workload_title(w) + (view == "mechanism" ? " — mechanism only (no proxy)" : "") +
                ", no exclusions, " + std::to_string(r.rounds) + " round(s)";
      t.head = {"variant", "n", "p50", "p90", "p99", "p99.9", "vs direct", "vs iptables-nft", "spread"};
      if (w != "connect") t.head.insert(t.head.begin() + 6, "req/s");
      for (const auto& v : r.variants) {
        if (v.view != view) continue;
        const Cell* c = r.cell("main", w, v.name, 0);
        if (!c) continue;
        const Cell* base = r.cell("main", w, baseline_of(v), 0);
        const Cell* ipt = r.cell("main", w, iptables_ref_of(v), 0);
        std::vector<std::string> row = {v.name,
                                        std::to_string(c->samples.size()) + (c->errors ? " (" + std::to_string(c->errors) + " err)" : ""),
                                        num(c->p50), num(c->p90), num(c->p99), num(c->p999),
                                        base ? ratio(c->p50, base->p50) : "-", ipt ? ratio(c->p50, ipt->p50) : "-",
                                        fmt("%.0f%%", spread_pct(c->round_p50_us))};
        if (w != "connect") row.insert(row.begin() + 6, fmt("%.0f", median(c->round_rate)));
        t.rows.push_back(row);
      }
      if (!t.rows.empty()) out.push_back(t);
    }
  }
  return out;
}

std::optional<Table> throughput_table(const Results& r) {
  Table t;
  t.title = "throughput: one connection, 64 KiB writes to a sink, " + std::to_string(r.rounds) +
            " round(s); CPU-s/GB = CPU time of client + server (+ proxy) per GB delivered; "
            "system CPU-s/GB = non-idle time of the data-path CPUs (/proc/stat)";
  t.head = {"variant", "MB/s", "vs direct", "vs iptables-nft", "CPU-s/GB", "system CPU-s/GB", "spread"};
  for (const auto& v : r.variants) {
    const Cell* c = r.cell("main", "throughput", v.name, 0);
    if (!c) continue;
    const Cell* base = r.cell("main", "throughput", "direct", 0);
    const Cell* ipt = r.cell("main", "throughput", "iptables-nft+proxy", 0);
    const double mbps = median(c->round_rate);
    t.rows.push_back({v.name + (c->errors ? " (" + std::to_string(c->errors) + " err)" : ""), fmt("%.0f", mbps),
                      base ? ratio(mbps, median(base->round_rate)) : "-",
                      ipt ? ratio(mbps, median(ipt->round_rate)) : "-", fmt("%.2f", median(c->round_cpu_gb)),
                      fmt("%.2f", median(c->round_sys_gb)), fmt("%.0f%%", spread_pct(c->round_rate))});
  }
  if (t.rows.empty()) return std::nullopt;
  return t;
}

std::vector<Table> scaling_tables(const Results& r) {
  std::vector<Table> out;
  if (r.sizes.empty()) return out;
  for (const std::string view : {"mechanism", "proxy"}) {
    Table t;
    t.title = "rule scaling: connection-setup p50 in µs (spread across rounds) by number of excluded CIDRs (-x), "
              "destination matching none — " +
              std::string(view == "mechanism"
                              ? "mechanism only; overhead = median over rounds of (p50 - local-direct's p50)"
                              : "through haproxy; ratio = median over rounds of eBPF's p50 / the faster iptables' p50");
    t.head = {"variant"};
    for (size_t s : r.sizes) t.head.push_back(std::to_string(s));
    for (const auto& v : r.variants) {
      if (v.view != view || !v.scaling) continue;
      std::vector<std::string> row = {v.name};
      for (size_t s : r.sizes) {
        const Cell* c = r.cell("scaling", "connect", v.name, s);
        row.push_back(c ? num(c->p50) + " (" + fmt("%.0f%%", spread_pct(c->round_p50_us)) + ")" : "-");
      }
      t.rows.push_back(row);
    }
    if (view == "mechanism") {
      for (const std::string cap : {"iptables-nft", "iptables-legacy", "ebpf"}) {
        std::vector<std::string> row = {cap + " overhead"};
        bool any = false;
        for (size_t s : r.sizes) {
          const Cell* c = r.cell("scaling", "connect", cap + "-mech", s);
          const Cell* b = r.cell("scaling", "connect", "local-direct", s);
          const auto d = c && b ? paired_diff(*c, *b) : std::nullopt;
          row.push_back(d ? fmt("%+.1f", *d) : "-");
          any |= d.has_value();
        }
        if (any) t.rows.push_back(row);
      }
    } else {
      std::vector<std::string> row = {"eBPF / iptables"};
      bool any = false;
      for (size_t s : r.sizes) {
        const Cell* e = r.cell("scaling", "connect", "ebpf+proxy", s);
        std::optional<double> worst;
        for (const std::string cap : {"iptables-nft+proxy", "iptables-legacy+proxy"}) {
          const Cell* i = r.cell("scaling", "connect", cap, s);
          const auto q = e && i ? paired_ratio(*e, *i) : std::nullopt;
          if (q && (!worst || *q > *worst)) worst = q;
        }
        row.push_back(worst ? fmt("%.3fx", *worst) : "-");
        any |= worst.has_value();
      }
      if (any) t.rows.push_back(row);
    }
    if (!t.rows.empty()) out.push_back(t);
  }
  return out;
}

std::string ms_range(const std::vector<double>& s, double scale, const char* f) {
  if (s.empty()) return "-";
  const auto [lo, hi] = std::minmax_element(s.begin(), s.end());
  return fmt(f, median(s) * scale) + " (" + fmt(f, *lo * scale) + "–" + fmt(f, *hi * scale) + ")";
}

std::optional<Table> init_table(const Results& r) {
  if (r.init.empty()) return std::nullopt;
  Table t;
  t.title = "init time on a fresh pod, median (min–max) over repetitions: apply, add one exclusion, clean up";
  t.head = {"capture", "exclusions", "reps", "apply (ms)", "apply with", "add one (µs)", "add with", "clean up (ms)"};
  for (const auto& i : r.init)
    t.rows.push_back({i.capture, std::to_string(i.exclusions), std::to_string(i.apply_s.size()),
                      ms_range(i.apply_s, 1e3, "%.1f"), i.how, ms_range(i.add_one_s, 1e6, "%.0f"), i.add_how,
                      ms_range(i.cleanup_s, 1e3, "%.1f")});
  return t;
}

std::optional<Table> prog_stats_table(const Results& r) {
  if (r.prog_stats.empty()) return std::nullopt;
  Table t;
  t.title = "diagnostic: BPF run time per connection (connect) or request (rr), kernel BPF statistics on for one "
            "extra job each (not included in any other figure)";
  t.head = {"variant", "workload", "program", "runs/unit", "ns/run", "ns/unit"};
  std::map<std::pair<std::string, std::string>, double> total;
  for (const auto& s : r.prog_stats) {
    if (s.units == 0 || s.runs == 0) continue;
    const double per_unit = static_cast<double>(s.run_ns) / static_cast<double>(s.units);
    total[{s.variant, s.workload}] += per_unit;
    t.rows.push_back({s.variant, s.workload, s.program,
                      fmt("%.2f", static_cast<double>(s.runs) / static_cast<double>(s.units)),
                      fmt("%.0f", static_cast<double>(s.run_ns) / static_cast<double>(s.runs)), fmt("%.0f", per_unit)});
  }
  for (const auto& [k, v] : total) t.rows.push_back({k.first, k.second, "(all)", "", "", fmt("%.0f", v)});
  return t;
}

std::string interference(const Results& r) {
  if (r.foreign_share.empty()) return "interference: not measured";
  std::vector<double> v = r.foreign_share;
  std::sort(v.begin(), v.end());
  const double p90 = v[std::min(v.size() - 1, static_cast<size_t>(0.9 * static_cast<double>(v.size())))];
  return "interference: other work used a median " + fmt("%.0f%%", median(v) * 100) + " (p90 " +
         fmt("%.0f%%", p90 * 100) + ", max " + fmt("%.0f%%", v.back() * 100) +
         ") of the data-path CPU time during the " + std::to_string(v.size()) + " measurements";
}

std::string target_line(const Target& t) {
  return "target " + t.name + ": " + t.measured + " (goal " + t.goal + ") " + (t.pass ? "PASS" : "MISS");
}

// ---- targets ----

const InitRecord* find_init(const Results& r, const std::string& cap, size_t n) {
  for (const auto& i : r.init)
    if (i.capture == cap && i.exclusions == n) return &i;
  return nullptr;
}

}  // namespace

const VariantDef* Results::variant(const std::string& name) const {
  for (const auto& v : variants)
    if (v.name == name) return &v;
  return nullptr;
}

const Cell* Results::cell(const std::string& phase, const std::string& workload, const std::string& variant,
                          size_t exclusions) const {
  auto it = cells.find(CellKey{phase, workload, variant, exclusions});
  return it == cells.end() || it->second.samples.empty() ? nullptr : &it->second;
}

void compute_targets(Results& r) {
  r.targets.clear();
  auto p50 = [&](const std::string& v, size_t s) -> std::optional<double> {
    const Cell* c = r.cell("scaling", "connect", v, s);
    if (!c) return std::nullopt;
    return c->p50;
  };
  // Overheads and ratios are paired per round (median over rounds), so
  // drift of the shared machine between rounds cancels out.
  auto overhead = [&](const std::string& cap, size_t s) -> std::optional<double> {
    const Cell* a = r.cell("scaling", "connect", cap + "-mech", s);
    const Cell* b = r.cell("scaling", "connect", "local-direct", s);
    if (!a || !b) return std::nullopt;
    return paired_diff(*a, *b);
  };
  // iptables: the faster of the two backends at that size (the stricter comparison).
  auto ipt_overhead = [&](size_t s) -> std::optional<std::pair<double, std::string>> {
    std::optional<std::pair<double, std::string>> best;
    for (const std::string cap : {"iptables-nft", "iptables-legacy"})
      if (auto o = overhead(cap, s); o && (!best || *o < best->first)) best = std::pair{*o, cap};
    return best;
  };
  auto not_measured = [&](const std::string& name, const std::string& goal) {
    r.targets.push_back({name, "not measured", goal, false});
  };
  auto has = [&](size_t s) { return std::find(r.sizes.begin(), r.sizes.end(), s) != r.sizes.end(); };

  // Mechanism: eBPF's connection-setup overhead against iptables'.
  auto mech_ratio = [&](const std::vector<size_t>& sizes, double goal, const std::string& name) {
    double worst = -std::numeric_limits<double>::infinity();
    std::string detail;
    bool ok = !sizes.empty();
    for (size_t s : sizes) {
      auto e = overhead("ebpf", s);
      auto i = ipt_overhead(s);
      if (!e || !i || i->first <= 0) {
        ok = false;
        break;
      }
      const double q = *e / i->first;
      if (q > worst) {
        worst = q;
        detail = "at " + std::to_string(s) + ": eBPF " + fmt("%+.1f", *e) + " µs, " + i->second + " " +
                 fmt("%+.1f", i->first) + " µs";
      }
    }
    if (!ok) return not_measured(name, fmt("<= %.2fx iptables' overhead", goal));
    r.targets.push_back({name, fmt("%.3fx", worst) + " [" + detail + "]", fmt("<= %.2fx iptables' overhead", goal),
                         worst <= goal});
  };
  if (has(0)) mech_ratio({0}, 0.25, "mechanism-overhead-0");
  else not_measured("mechanism-overhead-0", "<= 0.25x iptables' overhead");
  std::vector<size_t> big;
  for (size_t s : r.sizes)
    if (s >= 1000) big.push_back(s);
  mech_ratio(big, 0.1, "mechanism-overhead-1000plus");
  {
    auto lo = overhead("ebpf", 0), hi = overhead("ebpf", 10000);
    if (lo && hi)
      r.targets.push_back({"mechanism-ebpf-growth-0-10000", fmt("%+.2f µs", *hi - *lo) + " [" + fmt("%+.2f", *lo) +
                                                              " -> " + fmt("%+.2f", *hi) + " µs]",
                           "<= +2 µs", *hi - *lo <= 2.0});
    else
      not_measured("mechanism-ebpf-growth-0-10000", "<= +2 µs");
  }
  // Through haproxy.
  auto proxy_ratio = [&](const std::vector<size_t>& sizes, double goal, const std::string& name) {
    double worst = -1;
    std::string detail;
    bool ok = !sizes.empty();
    for (size_t s : sizes) {
      const Cell* e = r.cell("scaling", "connect", "ebpf+proxy", s);
      // Against the faster backend: the larger of the two ratios.
      std::optional<std::pair<double, std::string>> q;
      for (const std::string cap : {"iptables-nft", "iptables-legacy"}) {
        const Cell* i = r.cell("scaling", "connect", cap + "+proxy", s);
        const auto x = e && i ? paired_ratio(*e, *i) : std::nullopt;
        if (x && (!q || *x > q->first)) q = std::pair{*x, cap};
      }
      if (!q) {
        ok = false;
        break;
      }
      if (q->first > worst) {
        worst = q->first;
        detail = "at " + std::to_string(s) + ": eBPF " + num(*p50("ebpf+proxy", s)) + " µs, " + q->second + " " +
                 num(*p50(q->second + "+proxy", s)) + " µs";
      }
    }
    if (!ok) return not_measured(name, fmt("<= %.2fx iptables' p50", goal));
    r.targets.push_back({name, fmt("%.3fx", worst) + " [worst " + detail + "]", fmt("<= %.2fx iptables' p50", goal),
                         worst <= goal});
  };
  proxy_ratio(r.sizes, 1.0, "proxy-p50-every-size");
  proxy_ratio(big, 0.95, "proxy-p50-1000plus");
  // Init.
  {
    const InitRecord* e = find_init(r, "ebpf", 1000);
    std::optional<std::pair<double, std::string>> best;
    for (const std::string cap : {"iptables-nft", "iptables-legacy"})
      if (const InitRecord* i = find_init(r, cap, 1000); i && !i->apply_s.empty())
        if (!best || median(i->apply_s) < best->first) best = std::pair{median(i->apply_s), cap + " (" + i->how + ")"};
    if (e && !e->apply_s.empty() && best) {
      const double m = median(e->apply_s);
      r.targets.push_back({"init-apply-1000", fmt("%.1f ms", m * 1e3) + " [" + best->second + " " +
                                                  fmt("%.1f ms", best->first * 1e3) + "]",
                           "eBPF <= iptables-restore", m <= best->first});
    } else {
      not_measured("init-apply-1000", "eBPF <= iptables-restore");
    }
    const InitRecord* e10 = find_init(r, "ebpf", 10);
    const InitRecord* e10k = find_init(r, "ebpf", 10000);
    if (e10 && e10k && !e10->apply_s.empty() && !e10k->apply_s.empty()) {
      const double q = median(e10k->apply_s) / median(e10->apply_s);
      r.targets.push_back({"init-apply-10000-vs-10", fmt("%.2fx", q) + " [" + fmt("%.1f", median(e10k->apply_s) * 1e3) +
                                                         " ms vs " + fmt("%.1f", median(e10->apply_s) * 1e3) + " ms]",
                           "<= 3x", q <= 3.0});
    } else {
      not_measured("init-apply-10000-vs-10", "<= 3x");
    }
    if (e10k && !e10k->add_one_s.empty()) {
      const double m = median(e10k->add_one_s);
      r.targets.push_back({"init-add-one-at-10000", fmt("%.1f µs", m * 1e6) + " [" + e10k->add_how + "]", "<= 1 ms",
                           m <= 1e-3});
    } else {
      not_measured("init-add-one-at-10000", "<= 1 ms");
    }
  }
  // Acceleration: ebpf-accel+proxy against ebpf+proxy on persistent
  // connections, every request/response workload; the worst one counts.
  {
    struct Worst {
      double q = 0;
      std::string detail;
      bool set = false;
    };
    Worst p50q, rateq, tailq;
    bool ok = false;
    for (const auto& w : r.workloads) {
      if (w.rfind("rr-", 0) != 0) continue;
      const Cell* a = r.cell("main", w, "ebpf-accel+proxy", 0);
      const Cell* e = r.cell("main", w, "ebpf+proxy", 0);
      if (!a || !e) continue;
      ok = true;
      auto take = [&](Worst& worst, double q, bool higher_is_worse, const std::string& detail) {
        if (!worst.set || (higher_is_worse ? q > worst.q : q < worst.q)) worst = {q, w + ": " + detail, true};
      };
      if (auto q = paired_ratio(*a, *e))
        take(p50q, *q, true, num(a->p50) + " µs vs " + num(e->p50) + " µs");
      const double ra = median(a->round_rate), re = median(e->round_rate);
      if (re > 0) take(rateq, ra / re, false, fmt("%.0f", ra) + " vs " + fmt("%.0f", re) + " req/s");
      if (e->p999 > 0) take(tailq, a->p999 / e->p999, true, num(a->p999) + " µs vs " + num(e->p999) + " µs");
    }
    auto put = [&](const std::string& name, const Worst& w, const std::string& goal, bool pass) {
      if (!ok || !w.set) return not_measured(name, goal);
      r.targets.push_back({name, fmt("%.3fx", w.q) + " [worst " + w.detail + "]", goal, pass});
    };
    put("accel-rr-p50", p50q, "<= 0.7x eBPF without it", p50q.q <= 0.7);
    put("accel-rr-rate", rateq, ">= 1.4x eBPF's requests/s", rateq.q >= 1.4);
    put("accel-rr-p99.9", tailq, "<= 2x eBPF without it", tailq.q <= 2.0);
    // Stalls: any error or timeout of the accelerated variant, in any
    // workload (rr, throughput, connect), or a workload it did not finish.
    uint64_t errors = 0;
    size_t cells = 0, missing = 0;
    for (const auto& w : r.workloads) {
      auto it = r.cells.find(CellKey{"main", w, "ebpf-accel+proxy", 0});
      if (it == r.cells.end()) {
        missing++;
        continue;
      }
      cells++;
      errors += it->second.errors;
      if (it->second.samples.empty()) missing++;
    }
    if (cells == 0)
      not_measured("accel-no-stalls", "no stalls");
    else
      r.targets.push_back({"accel-no-stalls",
                           std::to_string(errors) + " errors/timeouts, " + std::to_string(missing) +
                               " unfinished workloads [" + std::to_string(cells) + " workloads]",
                           "no stalls", errors == 0 && missing == 0});
  }
}

std::string render_text(const Results& r) {
  std::ostringstream o;
  o << "meshcap-bench (" << r.profile << "), " << r.rounds << " round(s), " << fmt("%.0f", r.duration_s) << " s\n";
  for (const auto& [k, v] : r.machine) o << "  " << k << ": " << v << "\n";
  for (const auto& [k, v] : r.config) o << "  " << k << ": " << v << "\n";
  o << "  " << interference(r) << "\n";
  for (const auto& t : latency_tables(r)) o << t.text();
  if (auto t = throughput_table(r)) o << t->text();
  for (const auto& t : scaling_tables(r)) o << t.text();
  if (auto t = init_table(r)) o << t->text();
  if (auto t = prog_stats_table(r)) o << t->text();
  if (!r.notes.empty()) {
    o << "\nnotes:\n";
    for (const auto& n : r.notes) o << "  - " << n << "\n";
  }
  return o.str();
}

std::string render_targets(const Results& r) {
  std::string o;
  for (const auto& t : r.targets) o += target_line(t) + "\n";
  return o;
}

std::string render_markdown(const Results& r) {
  std::ostringstream o;
  o << "\n" << interference(r) << "\n";
  for (const auto& t : latency_tables(r)) o << t.markdown();
  if (auto t = throughput_table(r)) o << t->markdown();
  for (const auto& t : scaling_tables(r)) o << t.markdown();
  if (auto t = init_table(r)) o << t->markdown();
  if (auto t = prog_stats_table(r)) o << t->markdown();
  o << "\n```\n";
  for (const auto& t : r.targets) o << target_line(t) << "\n";
  o << "```\n";
  return o.str();
}

std::string render_json(const Results& r) {
  using nlohmann::json;
  json j;
  j["tool"] = "meshcap-bench";
  j["command"] = r.command;
  j["started"] = r.started;
  j["duration_s"] = r.duration_s;
  j["profile"] = r.profile;
  j["rounds"] = r.rounds;
  j["machine"] = r.machine;
  j["config"] = r.config;
  j["notes"] = r.notes;
  j["interference"] = interference(r);
  j["foreign_cpu_share_per_job"] = r.foreign_share;
  j["sizes"] = r.sizes;
  json vs = json::array();
  for (const auto& v : r.variants)
    vs.push_back({{"name", v.name}, {"view", v.view}, {"capture", v.capture}, {"dials_local", v.local},
                  {"port", v.echo_port}, {"expect", v.expect}});
  j["variants"] = vs;
  json cells = json::array();
  for (const auto& [k, c] : r.cells) {
    json x = {{"phase", k.phase}, {"workload", k.workload}, {"variant", k.variant}, {"exclusions", k.exclusions},
              {"errors", c.errors}};
    if (k.workload != "throughput") {
      x["samples"] = c.samples.size();
      x["p50_us"] = c.p50;
      x["p90_us"] = c.p90;
      x["p99_us"] = c.p99;
      x["p99_9_us"] = c.p999;
      x["mean_us"] = c.mean;
      x["round_p50_us"] = c.round_p50_us;
      x["spread_pct"] = spread_pct(c.round_p50_us);
    } else {
      x["rounds"] = c.round_rate.size();
    }
    if (!c.first_error.empty()) x["first_error"] = c.first_error;
    if (k.workload.rfind("rr-", 0) == 0) {
      x["round_requests_per_s"] = c.round_rate;
      x["requests_per_s"] = median(c.round_rate);
    }
    if (k.workload == "throughput") {
      x["round_mb_per_s"] = c.round_rate;
      x["mb_per_s"] = median(c.round_rate);
      x["round_cpu_s_per_gb"] = c.round_cpu_gb;
      x["cpu_s_per_gb"] = median(c.round_cpu_gb);
      x["round_system_cpu_s_per_gb"] = c.round_sys_gb;
      x["system_cpu_s_per_gb"] = median(c.round_sys_gb);
      x["spread_pct"] = spread_pct(c.round_rate);
    }
    cells.push_back(x);
  }
  j["cells"] = cells;
  json init = json::array();
  for (const auto& i : r.init)
    init.push_back({{"capture", i.capture},     {"exclusions", i.exclusions},   {"apply_with", i.how},
                    {"add_one_with", i.add_how}, {"apply_s", i.apply_s},        {"add_one_s", i.add_one_s},
                    {"cleanup_s", i.cleanup_s},  {"apply_median_s", median(i.apply_s)},
                    {"add_one_median_s", median(i.add_one_s)}, {"cleanup_median_s", median(i.cleanup_s)}});
  j["init"] = init;
  json ps = json::array();
  for (const auto& s : r.prog_stats)
    ps.push_back({{"variant", s.variant}, {"workload", s.workload}, {"program", s.program}, {"units", s.units},
                  {"runs", s.runs}, {"run_ns", s.run_ns}});
  j["bpf_run_time"] = ps;
  json targets = json::array();
  for (const auto& t : r.targets)
    targets.push_back({{"name", t.name}, {"measured", t.measured}, {"goal", t.goal}, {"pass", t.pass}});
  j["targets"] = targets;
  return j.dump(2) + "\n";
}

std::vector<std::string> write_plots(Results& r, const std::string& dir) {
  std::vector<std::string> pngs;
  const auto gp = test::find_binary("gnuplot");
  if (!gp) {
    r.notes.push_back("gnuplot is not installed (scripts/install-deps.sh installs gnuplot-nox): no PNG plots");
    return pngs;
  }
  std::ostringstream script;
  script << "set terminal pngcairo size 1100,650 noenhanced font ',10'\nset grid\nset key outside right\n";
  // Latency distribution (CDF) of connection setup per variant and view.
  for (const std::string view : {"proxy", "mechanism"}) {
    std::vector<std::pair<std::string, std::string>> series;
    for (const auto& v : r.variants) {
      if (v.view != view) continue;
      const Cell* c = r.cell("main", "connect", v.name, 0);
      if (!c) continue;
      const std::string file = dir + "/cdf-" + v.name + ".dat";
      std::ofstream d(file);
      d << "# latency_us cumulative_percent (" << c->sorted.size() << " samples)\n";
      const size_t n = c->sorted.size();
      for (int i = 0; i <= 1000; i++) {
        const double p = i / 10.0;
        d << c->sorted[std::min(n - 1, static_cast<size_t>(std::ceil(p / 100 * n)) - (p > 0 ? 1 : 0))] / 1000.0 << " "
          << p << "\n";
      }
      for (double p : {99.5, 99.9, 99.95, 99.99, 100.0})
        d << percentile_sorted(c->sorted, p) / 1000.0 << " " << p << "\n";
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
  // Rule-scaling curves.
  if (!r.sizes.empty()) {
    for (const std::string view : {"mechanism", "proxy"}) {
      std::vector<std::string> names;
      for (const auto& v : r.variants)
        if (v.view == view && v.scaling) names.push_back(v.name);
      if (names.empty()) continue;
      const std::string file = dir + "/scaling-" + view + ".dat";
      std::ofstream d(file);
      d << "# index exclusions";
      for (const auto& n : names) d << " " << n;
      d << "  (connection-setup p50, µs)\n";
      for (size_t i = 0; i < r.sizes.size(); i++) {
        d << i << " " << r.sizes[i];
        for (const auto& n : names) {
          const Cell* c = r.cell("scaling", "connect", n, r.sizes[i]);
          d << " " << (c ? num(c->p50) : std::string("NaN"));
        }
        d << "\n";
      }
      const std::string png = dir + "/scaling-" + view + ".png";
      script << "set output '" << png << "'\nset title 'rule scaling, "
             << (view == "proxy" ? "through haproxy" : "mechanism only (no proxy)")
             << ": connection-setup p50 vs excluded CIDRs (destination matches none)'\n"
             << "set xlabel 'excluded CIDRs (-x)'\nset ylabel 'p50 (µs)'\nset yrange [0:*]\nplot ";
      for (size_t i = 0; i < names.size(); i++)
        script << (i ? ", " : "") << "'" << file << "' using 1:" << i + 3 << ":xtic(2) with linespoints lw 2 title '"
               << names[i] << "'";
      script << "\nset yrange [*:*]\n";
      pngs.push_back(png);
    }
  }
  // Mechanism overhead by size (paired per round, as the goals use it).
  if (!r.sizes.empty()) {
    std::vector<std::string> caps;
    for (const std::string cap : {"iptables-nft", "iptables-legacy", "ebpf"})
      if (r.variant(cap + "-mech")) caps.push_back(cap);
    if (!caps.empty() && r.variant("local-direct")) {
      const std::string file = dir + "/scaling-overhead.dat";
      std::ofstream d(file);
      d << "# index exclusions";
      for (const auto& c : caps) d << " " << c;
      d << "  (connection-setup p50 minus local-direct's, median over rounds, µs)\n";
      for (size_t i = 0; i < r.sizes.size(); i++) {
        d << i << " " << r.sizes[i];
        for (const auto& c : caps) {
          const Cell* a = r.cell("scaling", "connect", c + "-mech", r.sizes[i]);
          const Cell* b = r.cell("scaling", "connect", "local-direct", r.sizes[i]);
          const auto x = a && b ? paired_diff(*a, *b) : std::nullopt;
          d << " " << (x ? fmt("%.2f", *x) : "NaN");
        }
        d << "\n";
      }
      const std::string png = dir + "/scaling-overhead.png";
      script << "set output '" << png << "'\nset title 'capture mechanism overhead on connection setup "
             << "(p50 minus local-direct, median over rounds)'\n"
             << "set xlabel 'excluded CIDRs (-x)'\nset ylabel 'overhead (µs)'\nset yrange [*:*]\nplot ";
      for (size_t i = 0; i < caps.size(); i++)
        script << (i ? ", " : "") << "'" << file << "' using 1:" << i + 3 << ":xtic(2) with linespoints lw 2 title '"
               << caps[i] << "'";
      script << "\n";
      pngs.push_back(png);
    }
  }
  // Init time by size.
  if (!r.init.empty()) {
    std::vector<size_t> sizes;
    std::vector<std::string> caps;
    for (const auto& i : r.init) {
      if (std::find(sizes.begin(), sizes.end(), i.exclusions) == sizes.end()) sizes.push_back(i.exclusions);
      if (std::find(caps.begin(), caps.end(), i.capture) == caps.end()) caps.push_back(i.capture);
    }
    std::sort(sizes.begin(), sizes.end());
    const std::string file = dir + "/init.dat";
    std::ofstream d(file);
    d << "# index exclusions";
    for (const auto& c : caps) d << " " << c;
    d << "  (apply time, ms, median)\n";
    for (size_t i = 0; i < sizes.size(); i++) {
      d << i << " " << sizes[i];
      for (const auto& c : caps) {
        const InitRecord* rec = find_init(r, c, sizes[i]);
        d << " " << (rec && !rec->apply_s.empty() ? fmt("%.3f", median(rec->apply_s) * 1e3) : "NaN");
      }
      d << "\n";
    }
    const std::string png = dir + "/init-apply.png";
    script << "set output '" << png << "'\nset title 'apply capture to a fresh pod (median)'\n"
           << "set xlabel 'excluded CIDRs (-x)'\nset ylabel 'ms (log scale)'\nset logscale y\nplot ";
    for (size_t i = 0; i < caps.size(); i++)
      script << (i ? ", " : "") << "'" << file << "' using 1:" << i + 3 << ":xtic(2) with linespoints lw 2 title '"
             << caps[i] << "'";
    script << "\nunset logscale y\n";
    pngs.push_back(png);
  }
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
