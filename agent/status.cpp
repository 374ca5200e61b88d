// meshcap status: per pod and per part, what is really in place (links
// attached and switched on, rules that really reach the proxy), compared
// with what the pod's record says was applied.
#include <algorithm>
#include <iostream>
#include <set>

#include <spdlog/spdlog.h>

#include "applier.h"
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "datapath.h"
#include "enrollment.h"
#include "pins.h"
#include "target.h"
#include "command_runner.h"
#include "commands.h"
#include "executor.h"
#include "istio_rules.h"
#include "pod_state.h"
#include "report.h"
#include "status.h"
#include "saved_ruleset.h"

using nlohmann::json;

namespace meshcap {

namespace {

std::string save_of(iptables::CommandRunner& runner, const std::string& save_binary, bool counters) {
  std::vector<std::string> argv = {save_binary};
  if (counters) argv.push_back("-c");
  auto r = runner.run(argv);
  return r.ok() ? r.out : "";
}

// What the eBPF pins of a pod show, and per part whether eBPF is in place.
struct EbpfView {
  json j;
  bool cgroup_links = false;  // every cgroup program attached
  bool enrolled = false;      // the pod's namespace is in the data path's pods map
  bool sk_lookup = false;     // sk_lookup attached to the pod's namespace
  size_t outside = 0;         // processes in the pod's namespace outside the programs' cgroup
};

EbpfView ebpf_view(const std::string& name, const std::optional<PodState>& st) {
  EbpfView v;
  const std::string dir = st && st->ebpf ? st->ebpf->datapath_dir : loader::pin_dir(name);
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) return v;
  json links = json::array();
  std::set<std::string> attached;
  for (const auto& l : loader::pinned_links(dir)) {
    links.push_back({{"link", l.pin}, {"attached", l.attached}, {"prog_id", l.prog_id}});
    if (l.attached) attached.insert(l.pin);
  }
  // The DNS programs are needed only by a pod that captures DNS.
  const bool dns = st && st->ebpf && st->plan.dns;
  v.cgroup_links = std::all_of(loader::cgroup_programs().begin(), loader::cgroup_programs().end(),
                               [&](const loader::ProgramSpec& p) { return (p.dns && !dns) || attached.count(p.pin); });
  for (const auto& l : loader::pinned_links(loader::pod_pins(dir, name))) {
    links.push_back({{"link", l.pin}, {"attached", l.attached}, {"prog_id", l.prog_id}});
    if (l.pin == "link_sk_lookup") v.sk_lookup = l.attached && (!st || l.netns_ino == st->netns.ino);
  }
  uint32_t index = 0;
  if (st && st->ebpf) {
    try {
      const auto pods = loader::PodTable(dir).enrolled();
      auto it = pods.find(st->ebpf->cookie);
      v.enrolled = it != pods.end() && it->second == st->ebpf->index;
      index = st->ebpf->index;
    } catch (const loader::LoaderError&) {
    }
    v.outside = processes_outside(st->netns.ino, st->cgroup).size();
  }
  v.j = {{"pins", dir},
         {"host", st && st->ebpf ? st->ebpf->host : "pod"},
         {"links", links},
         {"enrolled", v.enrolled},
         {"index", index},
         {"counters", loader::pinned_counters(dir, index)},
         {"awaiting_proxy", loader::pinned_entries(dir, "orig_dst")},
         {"accelerated_sockets", loader::pinned_entries(dir, "accel_socks")},
         {"processes_outside_cgroup", v.outside}};
  return v;
}

// What the pod's iptables rules show, and per part whether they send it to
// the proxy.
struct IptablesView {
  json j;
  iptables::Coverage coverage;
  std::vector<std::string> drift;
};

IptablesView iptables_view(const PodState& st, const std::string& netns) {
  IptablesView v;
  iptables::ProcessRunner runner(netns);
  json counts = json::object();
  size_t rules = 0;
  const auto binaries = st.iptables->save_binaries();
  for (const auto& bin : binaries) {
    const std::string counted = save_of(runner, bin, true);
    const auto parsed = iptables::parse_iptables_save(save_of(runner, bin, false));
    const auto cov = iptables::capture_coverage(parsed);
    // IPv4 decides; an IPv6 family that lost its rules is drift too.
    if (bin == st.iptables->ipv4_save) v.coverage = cov;
    for (const auto& t : parsed.tables)
      for (const auto& c : t.chains)
        if (iptables::is_istio_chain(c.name)) rules += c.rules.size();
    for (const std::string chain : {"ISTIO_REDIRECT", "ISTIO_IN_REDIRECT", "ISTIO_TPROXY"}) {
      auto n = iptables::rule_packets(counted, [&](std::string_view rule) { return rule.rfind("-A " + chain + " ", 0) == 0; });
      if (n) counts[bin + " " + chain] = *n;
    }
  }
  iptables::IptablesApplier applier(runner, iptables::ApplierOptions{iptables_state_dir()});
  if (auto d = applier.drift()) v.drift = *d;
  v.j = {{"backends", binaries}, {"rules", rules}, {"packets", counts}};
  return v;
}

// Whether the rules meshcap renders for this plan send `part` to the proxy
// at all (flags such as -i '' capture nothing outbound).
iptables::Coverage expected_iptables_coverage(const PodState& st) {
  try {
    Plan p = st.plan;
    p.config = st.config();
    auto payloads = iptables::render_istio_rules(p.iptables_config(), false);
    return iptables::capture_coverage(iptables::parse_iptables_save(payloads.ipv4.text()));
  } catch (const std::exception&) {
    return {true, true};
  }
}

}  // namespace

json pod_status(const std::string& name) {
  const auto st = read_pod_state(name);
  json out = {{"name", name}};
  std::vector<std::string> drift;
  const auto ebpf = ebpf_view(name, st);
  if (!ebpf.j.is_null()) out["ebpf"] = ebpf.j;
  if (!st) {
    out["drift"] = ebpf.j.is_null() ? std::vector<std::string>{} : std::vector<std::string>{"eBPF pins without a record"};
    return out;
  }
  const auto ns = st->current_netns();
  out["cgroup"] = st->cgroup;
  out["netns"] = ns.value_or(st->netns_path + " (gone)");
  out["plan"] = st->plan.to_json();
  out["accelerate"] = st->plan.accelerate;

  IptablesView ipt;
  if (st->iptables && ns) {
    ipt = iptables_view(*st, *ns);
    out["iptables"] = ipt.j;
    drift.insert(drift.end(), ipt.drift.begin(), ipt.drift.end());
  }
  const auto expected = expected_iptables_coverage(*st);
  json parts = json::object();
  for (Part part : {Part::Outbound, Part::Inbound}) {
    const PartPlan& pp = st->plan.part(part);
    const bool out_part = part == Part::Outbound;
    bool in_place = true;
    std::string detail;
    if (pp.engine == Engine::Ebpf) {
      const bool on = ebpf.cgroup_links && ebpf.enrolled;
      in_place = ns && (out_part ? on : on && ebpf.sk_lookup);
      detail = !ebpf.cgroup_links ? "eBPF programs missing or detached"
               : !ebpf.enrolled   ? "the pod is not enrolled in its data path"
               : !out_part && !ebpf.sk_lookup ? "sk_lookup is not attached to the pod's namespace"
                                              : "eBPF programs attached, the pod enrolled";
      if (in_place && ebpf.outside)
        detail += "; but " + std::to_string(ebpf.outside) +
                  " process(es) in the pod's namespace are outside the programs' cgroup and not captured";
    } else if (pp.engine == Engine::Iptables) {
      const bool wanted = out_part ? expected.outbound : expected.inbound;
      const bool live = out_part ? ipt.coverage.outbound : ipt.coverage.inbound;
      in_place = !wanted || (ns && live);
      detail = !wanted ? "the flags capture nothing here"
               : in_place ? "rules reach the proxy's listener"
                          : "no rule sends it to the proxy";
    } else {
      detail = "not captured (not requested)";
    }
    if (!ns && pp.engine != Engine::None) {
      in_place = false;
      detail = "the pod's network namespace is gone";
    }
    parts[to_string(part)] = {{"engine", to_string(pp.engine)}, {"in_place", in_place}, {"detail", detail}};
    if (!in_place) drift.push_back(std::string(to_string(part)) + " is recorded as captured by " + to_string(pp.engine) +
                                   " but " + detail);
  }
  out["parts"] = parts;
  if (!ebpf.j.is_null()) {
    for (const auto& l : ebpf.j["links"])
      if (!l["attached"].get<bool>()) drift.push_back(l["link"].get<std::string>() + " is detached");
    if (ebpf.outside)
      drift.push_back(std::to_string(ebpf.outside) +
                      " process(es) in the pod's namespace are outside the cgroup the eBPF programs are attached "
                      "to: their connections are not captured");
  }
  out["drift"] = drift;
  return out;
}

namespace {

void print_prometheus(const json& all) {
  auto pod = [](const json& p) { return "pod=\"" + p["name"].get<std::string>() + "\""; };
  std::cout << "# HELP meshcap_decisions_total eBPF capture decisions and events per pod.\n"
            << "# TYPE meshcap_decisions_total counter\n";
  for (const auto& p : all)
    if (p.contains("ebpf"))
      for (auto& [k, v] : p["ebpf"]["counters"].items())
        std::cout << "meshcap_decisions_total{" << pod(p) << ",decision=\"" << k << "\"} " << v << "\n";
  std::cout << "# HELP meshcap_iptables_packets_total Packets that took an istio redirect chain.\n"
            << "# TYPE meshcap_iptables_packets_total counter\n";
  for (const auto& p : all)
    if (p.contains("iptables"))
      for (auto& [k, v] : p["iptables"]["packets"].items())
        std::cout << "meshcap_iptables_packets_total{" << pod(p) << ",chain=\"" << k.substr(k.find(' ') + 1)
                  << "\",binary=\"" << k.substr(0, k.find(' ')) << "\"} " << v << "\n";
  std::cout << "# HELP meshcap_captured Whether a part of a pod's traffic is captured as recorded (1) or not (0).\n"
            << "# TYPE meshcap_captured gauge\n";
  for (const auto& p : all)
    if (p.contains("parts"))
      for (auto& [part, v] : p["parts"].items())
        if (v["engine"] != "none")
          std::cout << "meshcap_captured{" << pod(p) << ",part=\"" << part << "\",engine=\""
                    << v["engine"].get<std::string>() << "\"} " << (v["in_place"].get<bool>() ? 1 : 0) << "\n";
  std::cout << "# HELP meshcap_drift Whether a pod's capture differs from what meshcap applied.\n"
            << "# TYPE meshcap_drift gauge\n";
  for (const auto& p : all) std::cout << "meshcap_drift{" << pod(p) << "} " << (p["drift"].empty() ? 0 : 1) << "\n";
}

void print_text(const json& all) {
  if (all.empty()) std::cout << "no pods captured by meshcap\n";
  for (const auto& p : all) {
    std::cout << "pod " << p["name"].get<std::string>() << "\n";
    if (p.contains("parts"))
      for (const char* part : {"outbound", "inbound"}) {
        const auto& v = p["parts"][part];
        std::cout << "  " << part << ": " << v["engine"].get<std::string>() << ", "
                  << (v["engine"] == "none" ? "" : v["in_place"].get<bool>() ? "in place: " : "NOT IN PLACE: ")
                  << v["detail"].get<std::string>() << " ("
                  << join(p["plan"][part]["reasons"].get<std::vector<std::string>>()) << ")\n";
      }
    if (p.contains("netns"))
      std::cout << "  cgroup " << (p["cgroup"].get<std::string>().empty() ? "-" : p["cgroup"].get<std::string>())
                << ", netns " << p["netns"].get<std::string>() << "\n";
    if (p.contains("ebpf")) {
      std::cout << "  eBPF links:";
      for (const auto& l : p["ebpf"]["links"])
        std::cout << " " << l["link"].get<std::string>().substr(5) << (l["attached"].get<bool>() ? "" : "(DETACHED)");
      std::cout << "\n  eBPF counters:";
      for (auto& [k, v] : p["ebpf"]["counters"].items())
        if (v.get<uint64_t>()) std::cout << " " << k << "=" << v;
      std::cout << "\n  records awaiting the proxy: " << p["ebpf"]["awaiting_proxy"];
      if (p.value("accelerate", false))
        std::cout << "; accelerated: on, " << p["ebpf"]["accelerated_sockets"] << " sockets";
      std::cout << "\n";
    }
    if (p.contains("iptables")) {
      std::cout << "  iptables: " << join(p["iptables"]["backends"].get<std::vector<std::string>>(), ", ") << ", "
                << p["iptables"]["rules"] << " rules in istio's chains; redirected packets:";
      for (auto& [k, v] : p["iptables"]["packets"].items()) std::cout << " " << k << "=" << v;
      std::cout << "\n";
    }
    std::cout << "  drift: " << (p["drift"].empty() ? "none" : join(p["drift"].get<std::vector<std::string>>())) << "\n";
  }
}

}  // namespace

std::vector<std::string> known_pods() {
  std::set<std::string> names;
  for (const auto& n : loader::pinned_pods()) names.insert(n);
  for (const auto& n : loader::enrolled_pins(loader::node_dir())) names.insert(n);
  for (const auto& n : recorded_pods()) names.insert(n);
  return {names.begin(), names.end()};
}

int run_status(const StatusOptions& o) {
  if (!o.name.empty()) loader::validate_pod_name(o.name);
  std::vector<std::string> names = o.name.empty() ? known_pods() : std::vector<std::string>{o.name};
  json all = json::array();
  for (const auto& n : names) all.push_back(pod_status(n));
  if (o.json)
    std::cout << all.dump(2) << "\n";
  else if (o.prometheus)
    print_prometheus(all);
  else
    print_text(all);
  return kExitOk;
}

}  // namespace meshcap
