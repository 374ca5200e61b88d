#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "report_format.h"
#include "results.h"
#include "rig.h"

namespace meshcap::bench {

namespace {

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
      bool any = false;
      for (size_t s : r.sizes) {
        const Cell* c = r.cell("scaling", "connect", v.name, s);
        row.push_back(c ? num(c->p50) + " (" + fmt("%.0f%%", spread_pct(c->round_p50_us)) + ")" : "-");
        any |= c != nullptr;
      }
      if (any) t.rows.push_back(row);  // none: a run without this phase (--cni-only, --dns-only)
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
  t.title = "init time on a fresh pod, median (min–max) over repetitions: apply, add one exclusion, clean up; "
            "first pod: the first repetition's apply (meshcap's iptables apply keeps an image of what "
            "iptables-restore made of a payload there, and later pods with the same payload replay it)";
  t.head = {"capture",      "exclusions", "reps",    "apply (ms)",   "first pod (ms)",
            "apply with",   "add one (µs)", "add with", "clean up (ms)"};
  for (const auto& i : r.init)
    t.rows.push_back({i.capture, std::to_string(i.exclusions), std::to_string(i.apply_s.size()),
                      ms_range(i.apply_s, 1e3, "%.1f"), i.apply_s.empty() ? "-" : fmt("%.1f", i.apply_s[0] * 1e3),
                      i.how, ms_range(i.add_one_s, 1e6, "%.0f"), i.add_how, ms_range(i.cleanup_s, 1e3, "%.1f")});
  return t;
}

std::optional<Table> prog_stats_table(const Results& r) {
  if (r.prog_stats.empty()) return std::nullopt;
  Table t;
  t.title = "diagnostic: BPF run time per connection (connect) or request (rr), kernel BPF statistics on for "
            "extra jobs: one each, the node phase's three each with its two states alternating (not included in any "
            "other figure)";
  t.head = {"variant", "workload", "program", "runs/unit", "ns/run", "ns/unit"};
  std::set<std::pair<std::string, std::string>> jobs;
  for (const auto& s : r.prog_stats) {
    if (s.units == 0 || s.runs == 0) continue;
    jobs.insert({s.variant, s.workload});
    t.rows.push_back({s.variant, s.workload, s.program,
                      fmt("%.2f", static_cast<double>(s.runs) / static_cast<double>(s.units)),
                      fmt("%.0f", static_cast<double>(s.run_ns) / static_cast<double>(s.runs)),
                      fmt("%.0f", static_cast<double>(s.run_ns) / static_cast<double>(s.units))});
  }
  for (const auto& [variant, workload] : jobs)
    t.rows.push_back({variant, workload, "(all)", "", "", fmt("%.0f", *r.bpf_ns_per_unit(variant, workload))});
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
  if (t.figure) return "figure " + t.name + ": " + t.measured + (t.goal.empty() ? "" : " (was a goal: " + t.goal + ")");
  return "target " + t.name + ": " + t.measured + " (goal " + t.goal + ") " + (t.pass ? "PASS" : "MISS");
}

// Node mode: connection setup of the enrolled pod and of the namespace not
// enrolled (paired by round against their reference).
std::optional<Table> node_connect_table(const Results& r) {
  Table t;
  t.title = "node mode: connection setup (connect + 16 B request/response + close), latency in µs, " +
            std::to_string(r.node.pods) + " pods or 1 enrolled; diff = median over rounds of the p50 difference";
  t.head = {"variant", "n", "p50", "p90", "p99", "p99.9", "vs", "diff (µs)", "spread"};
  const std::string many = "node-" + std::to_string(r.node.pods) + "-pods";
  const std::map<std::string, std::string> ref = {{many, "node-1-pod"},
                                                  {"unenrolled-node-on", "unenrolled-node-off"},
                                                  {"unenrolled-empty-programs", "unenrolled-node-off"}};
  for (const auto& v : r.variants) {
    const Cell* c = r.cell("node", "connect", v.name, 0);
    if (v.view != "node" || !c) continue;
    const auto it = ref.find(v.name);
    const Cell* b = it == ref.end() ? nullptr : r.cell("node", "connect", it->second, 0);
    const auto d = b ? paired_diff(*c, *b) : std::nullopt;
    t.rows.push_back({v.name, std::to_string(c->samples.size()) + (c->errors ? " (" + std::to_string(c->errors) + " err)" : ""),
                      num(c->p50), num(c->p90), num(c->p99), num(c->p999), b ? it->second : "-",
                      d ? fmt("%+.2f", *d) : "-", fmt("%.0f%%", spread_pct(c->round_p50_us))});
  }
  if (t.rows.empty()) return std::nullopt;
  return t;
}

std::optional<Table> node_time_table(const Results& r) {
  if (r.node.seconds.empty()) return std::nullopt;
  Table t;
  t.title = "node mode: times, median (min–max) over repetitions, each enrolment and restore on a fresh namespace "
            "while the node holds " + std::to_string(r.node.pods) + " pods";
  t.head = {"step", "reps", "ms", "how"};
  for (const auto& [step, v] : r.node.seconds) {
    const auto it = r.node.how.find(step);
    t.rows.push_back({step, std::to_string(v.size()), ms_range(v, 1e3, "%.3f"), it == r.node.how.end() ? "" : it->second});
  }
  const auto& k = r.node.enroll_by_count;
  if (k.size() >= 20) {
    const std::vector<double> first(k.begin(), k.begin() + 10), last(k.end() - 10, k.end());
    t.rows.push_back({"enroll in-process, pods 1-10", "10", ms_range(first, 1e3, "%.3f"), "as the node fills"});
    t.rows.push_back({"enroll in-process, last 10 pods", "10", ms_range(last, 1e3, "%.3f"), "as the node fills"});
  }
  return t;
}

std::optional<Table> node_memory_table(const Results& r) {
  if (r.node.memlock.empty()) return std::nullopt;
  Table t;
  t.title = "node mode: kernel memory of meshcap's maps (memlock, as `meshcap node status` and bpftool report); "
            "the node's --max-pods " + std::to_string(r.node.max_pods);
  t.head = {"data path", "pods enrolled", "bytes", "bytes/pod"};
  for (const auto& [state, bytes] : r.node.memlock) {
    const auto it = r.node.enrolled.find(state);
    const size_t pods = it == r.node.enrolled.end() ? 1 : it->second;
    t.rows.push_back({state, std::to_string(pods), std::to_string(bytes),
                      pods ? fmt("%.0f", static_cast<double>(bytes) / static_cast<double>(pods)) : "-"});
  }
  return t;
}

std::optional<Table> cni_table(const Results& r) {
  if (r.cni.seconds.empty()) return std::nullopt;
  Table t;
  t.title = "CNI ADD end to end (meshcap-cni executed with the configuration on stdin, to its exit), each into a "
            "fresh namespace, interleaved; ms";
  t.head = {"ADD", "n", "p50", "p90", "p99", "max"};
  for (const auto& [way, v] : r.cni.seconds)
    t.rows.push_back({way, std::to_string(v.size()), num(percentile(v, 50) * 1e3), num(percentile(v, 90) * 1e3),
                      num(percentile(v, 99) * 1e3), num(percentile(v, 100) * 1e3)});
  return t;
}

// DNS capture: a query's round trip per capture, paired by round against
// the eBPF pod's (the A/A row: the eBPF pod's second job of each round).
std::optional<Table> dns_rtt_table(const Results& r) {
  const Cell* e = r.cell("dns", "dns-rtt", "dns-ebpf", 0);
  Table t;
  t.title = "DNS: a query's round trip (sendto the resolver's port 53, recvfrom its reply, source and ID checked) "
            "on one unconnected UDP socket as the app, through the proxy's DNS listener (dnsmasq in the pod, "
            "answering from its cache), latency in µs, " +
            std::to_string(r.dns.queries) + " queries/variant/round, " + std::to_string(r.rounds) +
            " round(s); ebpf/this = median over rounds of the p50 ratio";
  t.head = {"variant", "capture applied with", "n", "failures", "p50", "p99", "mean", "ebpf/this", "upstream saw", "spread"};
  for (const auto& v : r.variants) {
    const Cell* c = r.cell("dns", "dns-rtt", v.name, 0);
    if (v.view != "dns" || !c) continue;
    const auto q = e && c != e ? paired_ratio(*e, *c) : std::nullopt;
    const auto how = r.dns.how.find(v.name);
    const auto sent = r.dns.sent.find(v.name);
    const auto up = r.dns.upstream.find(v.name);
    t.rows.push_back({v.name, how == r.dns.how.end() ? "-" : how->second, std::to_string(c->samples.size()),
                      std::to_string(c->errors), num(c->p50), num(c->p99), num(c->mean), q ? fmt("%.3fx", *q) : "-",
                      sent == r.dns.sent.end() || up == r.dns.upstream.end()
                          ? "-"
                          : std::to_string(up->second) + " of " + std::to_string(sent->second),
                      fmt("%.0f%%", spread_pct(c->round_p50_us))});
  }
  if (t.rows.empty()) return std::nullopt;
  return t;
}

// Connection setup of other traffic on the eBPF data path with DNS capture
// on and off, and off twice (the A/A pair), paired by round.
std::optional<Table> dns_connect_table(const Results& r) {
  Table t;
  t.title = "DNS capture and other traffic: connection setup (connect + 16 B request/response + close to the "
            "in-pod echo on 15001) on the eBPF data path, latency in µs, " +
            std::to_string(r.rounds) + " round(s); on: --redirect-dns --capture-all-dns; diff = median over rounds "
            "of the p50 difference";
  t.head = {"variant", "n", "p50", "p90", "p99", "vs", "diff (µs)", "spread"};
  const Cell* off = r.cell("dns", "connect", "dns-capture-off", 0);
  for (const auto& v : r.variants) {
    const Cell* c = r.cell("dns", "connect", v.name, 0);
    if (v.view != "dns" || !c) continue;
    const auto d = off && c != off ? paired_diff(*c, *off) : std::nullopt;
    t.rows.push_back({v.name, std::to_string(c->samples.size()) + (c->errors ? " (" + std::to_string(c->errors) + " err)" : ""),
                      num(c->p50), num(c->p90), num(c->p99), d ? "dns-capture-off" : "-", d ? fmt("%+.2f", *d) : "-",
                      fmt("%.0f%%", spread_pct(c->round_p50_us))});
  }
  if (t.rows.empty()) return std::nullopt;
  return t;
}

std::optional<Table> dns_state_table(const Results& r) {
  if (r.dns.state.empty()) return std::nullopt;
  Table t;
  t.title = "DNS: the UDP reply mapping (dns_reverse, LRU) of the eBPF pod as queries accumulate, a new socket every " +
            std::to_string(r.dns.per_socket) + " queries; " + std::to_string(r.dns.state_failures) +
            " failed queries" +
            (r.profile == "full" ? "" : "; " + r.profile + " run: " + std::to_string(r.dns.state_queries) +
                                            " queries, a full run sends 100000");
  t.head = {"queries", "sockets", "entries", "max_entries", "memlock (bytes)"};
  for (const auto& s : r.dns.state)
    t.rows.push_back({std::to_string(s.queries),
                      std::to_string(r.dns.per_socket ? (s.queries + r.dns.per_socket - 1) / r.dns.per_socket : 0),
                      std::to_string(s.entries), std::to_string(r.dns.max_entries), std::to_string(s.memlock)});
  return t;
}

std::optional<Table> dns_counters_table(const Results& r) {
  if (r.dns.counters.empty()) return std::nullopt;
  Table t;
  t.title = "DNS: the eBPF pod's DNS counters after its round-trip jobs (warm-up and checks included), before the "
            "reply-mapping queries";
  t.head = {"counter", "count"};
  for (const auto& [k, v] : r.dns.counters) t.rows.push_back({k, std::to_string(v)});
  return t;
}

std::vector<Table> all_tables(const Results& r) {
  std::vector<Table> out = latency_tables(r);
  auto add = [&](std::optional<Table> t) {
    if (t) out.push_back(std::move(*t));
  };
  add(throughput_table(r));
  for (auto& t : scaling_tables(r)) out.push_back(std::move(t));
  add(init_table(r));
  add(node_time_table(r));
  add(node_memory_table(r));
  add(node_connect_table(r));
  add(cni_table(r));
  add(dns_rtt_table(r));
  add(dns_counters_table(r));
  add(dns_connect_table(r));
  add(dns_state_table(r));
  add(prog_stats_table(r));
  return out;
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

std::optional<double> Results::bpf_ns_per_unit(const std::string& variant, const std::string& workload) const {
  std::optional<double> ns;
  for (const auto& s : prog_stats)
    if (s.variant == variant && s.workload == workload && s.units > 0 && s.runs > 0)
      ns = ns.value_or(0) + static_cast<double>(s.run_ns) / static_cast<double>(s.units);
  return ns;
}

std::string render_text(const Results& r) {
  std::ostringstream o;
  o << "meshcap-bench (" << r.profile << "), " << r.rounds << " round(s), " << fmt("%.0f", r.duration_s) << " s\n";
  for (const auto& [k, v] : r.machine) o << "  " << k << ": " << v << "\n";
  for (const auto& [k, v] : r.config) o << "  " << k << ": " << v << "\n";
  o << "  " << interference(r) << "\n";
  for (const auto& t : all_tables(r)) o << t.text();
  if (!r.notes.empty()) {
    o << "\nnotes:\n";
    for (const auto& n : r.notes) o << "  - " << n << "\n";
  }
  return o.str();
}

std::string render_targets(const Results& r) {
  std::string o;
  for (bool figures : {true, false})
    for (const auto& t : r.targets)
      if (t.figure == figures) o += target_line(t) + "\n";
  return o;
}

std::string render_markdown(const Results& r) {
  std::ostringstream o;
  o << "\n" << interference(r) << "\n";
  for (const auto& t : all_tables(r)) o << t.markdown();
  o << "\n```\n" << render_targets(r) << "```\n";
  return o.str();
}

namespace {

nlohmann::json cell_json(const CellKey& k, const Cell& c) {
  nlohmann::json x = {{"phase", k.phase}, {"workload", k.workload}, {"variant", k.variant},
                      {"exclusions", k.exclusions}, {"errors", c.errors}};
  if (k.workload != "throughput") {
    x.update({{"samples", c.samples.size()}, {"p50_us", c.p50}, {"p90_us", c.p90}, {"p99_us", c.p99},
              {"p99_9_us", c.p999}, {"mean_us", c.mean}, {"round_p50_us", c.round_p50_us},
              {"spread_pct", spread_pct(c.round_p50_us)}});
  } else {
    x.update({{"rounds", c.round_rate.size()}, {"round_mb_per_s", c.round_rate}, {"mb_per_s", median(c.round_rate)},
              {"round_cpu_s_per_gb", c.round_cpu_gb}, {"cpu_s_per_gb", median(c.round_cpu_gb)},
              {"round_system_cpu_s_per_gb", c.round_sys_gb}, {"system_cpu_s_per_gb", median(c.round_sys_gb)},
              {"spread_pct", spread_pct(c.round_rate)}});
  }
  if (!c.first_error.empty()) x["first_error"] = c.first_error;
  if (k.workload.rfind("rr-", 0) == 0) x.update({{"round_requests_per_s", c.round_rate}, {"requests_per_s", median(c.round_rate)}});
  return x;
}

nlohmann::json details_json(const Results& r) {
  using nlohmann::json;
  json j;
  json vs = json::array();
  for (const auto& v : r.variants)
    vs.push_back({{"name", v.name}, {"view", v.view}, {"capture", v.capture}, {"dials_local", v.local},
                  {"port", v.echo_port}, {"expect", v.expect}});
  j["variants"] = vs;
  json cells = json::array();
  for (const auto& [k, c] : r.cells) cells.push_back(cell_json(k, c));
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
  j["node"] = {{"pods", r.node.pods},         {"max_pods", r.node.max_pods}, {"seconds", r.node.seconds},
               {"how", r.node.how},           {"memlock_bytes", r.node.memlock}, {"pods_enrolled", r.node.enrolled},
               {"enroll_by_count_s", r.node.enroll_by_count}};
  j["cni"] = {{"adds", r.cni.adds}, {"max_pods", r.cni.max_pods}, {"seconds", r.cni.seconds}};
  json state = json::array();
  for (const auto& s : r.dns.state)
    state.push_back({{"queries", s.queries}, {"entries", s.entries}, {"memlock_bytes", s.memlock}});
  j["dns"] = {{"queries_per_job", r.dns.queries}, {"applied_with", r.dns.how},
              {"queries_sent", r.dns.sent},       {"upstream_saw", r.dns.upstream},
              {"ebpf_counters", r.dns.counters},  {"state_queries", r.dns.state_queries},
              {"state_queries_per_socket", r.dns.per_socket}, {"state_failures", r.dns.state_failures},
              {"dns_reverse_max_entries", r.dns.max_entries}, {"state", state}};
  return j;
}

}  // namespace

std::string render_json(const Results& r) {
  using nlohmann::json;
  json j = details_json(r);
  j.update({{"tool", "meshcap-bench"},        {"command", r.command}, {"started", r.started},
            {"duration_s", r.duration_s},     {"profile", r.profile}, {"rounds", r.rounds},
            {"machine", r.machine},           {"config", r.config},   {"notes", r.notes},
            {"interference", interference(r)}, {"foreign_cpu_share_per_job", r.foreign_share},
            {"sizes", r.sizes}});
  json targets = json::array();
  for (const auto& t : r.targets)
    targets.push_back({{"name", t.name}, {"measured", t.measured}, {"goal", t.goal}, {"pass", t.pass},
                       {"figure", t.figure}});
  j["targets"] = targets;
  return j.dump(2) + "\n";
}

}  // namespace meshcap::bench
