#include "commands.h"

#include <bpf/bpf.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "applier.h"
#include "bpf_capture.h"
#include "command_runner.h"
#include "iptables_error.h"
#include "istio_rules.h"
#include "kernel_features.h"
#include "planner.h"
#include "pod.h"
#include "saved_ruleset.h"
#include "validation.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace meshcap {
namespace {

constexpr const char* kIptablesStateDir = "/run/meshcap/iptables";

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

// ---------------------------------------------------------------- state

json read_state(const std::string& name) {
  std::ifstream in(state_file(name));
  if (!in) return json();
  try {
    return json::parse(in);
  } catch (const std::exception&) {
    spdlog::warn("ignoring unreadable {}", state_file(name));
    return json();
  }
}

void write_state(const std::string& name, const json& j) {
  std::error_code ec;
  fs::create_directories(fs::path(state_file(name)).parent_path(), ec);
  std::string tmp = state_file(name) + ".tmp";
  {
    std::ofstream out(tmp);
    out << j.dump(2) << "\n";
    if (!out) throw std::runtime_error("cannot write " + tmp);
  }
  fs::rename(tmp, state_file(name));
}

// Lines of an iptables-save output that belong to istio's chains: the
// snapshot status compares against to find drift.
std::vector<std::string> istio_lines(const std::string& save) {
  std::vector<std::string> out;
  std::istringstream in(save);
  std::string line, table;
  while (std::getline(in, line)) {
    if (!line.empty() && line[0] == '*') table = line;
    if (line.find("ISTIO_") != std::string::npos) {
      // ":CHAIN - [0:0]" carries counters: keep the name only.
      if (line[0] == ':') line = line.substr(0, line.find(' '));
      out.push_back(table + " " + line);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The save binaries meshcap used in a pod, from its state.
std::vector<std::string> save_binaries(const json& st) {
  std::vector<std::string> out;
  for (const char* fam : {"ipv4", "ipv6"})
    if (st.contains("iptables") && st["iptables"].contains(fam)) out.push_back(st["iptables"][fam].get<std::string>());
  return out;
}

std::string save_of(iptables::CommandRunner& runner, const std::string& save_binary, bool counters) {
  std::vector<std::string> argv = {save_binary};
  if (counters) argv.push_back("-c");
  auto r = runner.run(argv);
  return r.ok() ? r.out : "";
}

bool path_gone(const std::string& p) {
  std::error_code ec;
  return !p.empty() && !fs::exists(p, ec);
}

std::string netns_id(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st)) return "";
  return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
}

// The pod's network namespace as recorded, if that path still names the
// same namespace ("/proc/self/ns/net" recorded by an init run inside the pod
// names another one when read from elsewhere).
std::string recorded_netns(const json& st) {
  std::string path = st.value("netns", "");
  if (path.empty() || path_gone(path)) return "";
  if (st.contains("netns_id") && netns_id(path) != st["netns_id"].get<std::string>()) return "";
  return path;
}

// Enough of a configuration for the iptables cleanup (TPROXY routing).
CaptureConfig cleanup_config(const json& st) {
  CaptureConfig c;
  if (st.contains("tproxy_mark")) c.tproxy_mark = st["tproxy_mark"];
  if (st.contains("tproxy_route_table")) c.tproxy_route_table = st["tproxy_route_table"];
  return c;
}

// ---------------------------------------------------------------- target

// The pod a command acts on, from --name / --cgroup / --netns. `cgroup_mode`:
// "required" (eBPF), "optional" (auto: the caller's cgroup when usable) or
// "none".
PodTarget resolve_target(const std::string& name, const std::string& cgroup, const std::string& netns,
                         const std::string& cgroup_mode) {
  PodTarget t;
  t.netns_path = resolve_netns(netns);
  if (!cgroup.empty()) {
    t.cgroup_dir = validate_cgroup(cgroup);
  } else if (cgroup_mode != "none") {
    auto own = own_cgroup_dir();
    if (!own) {
      if (cgroup_mode == "required") throw UsageError("--cgroup: not given and no cgroup v2 hierarchy is mounted");
    } else {
      try {
        t.cgroup_dir = validate_cgroup(*own);
      } catch (const UsageError&) {
        if (cgroup_mode == "required") throw;
        spdlog::info("the caller's cgroup {} is not usable for eBPF capture", *own);
      }
    }
  }
  if (!name.empty()) {
    loader::validate_pod_name(name);
    t.name = name;
  } else if (!t.cgroup_dir.empty()) {
    t.name = derive_pod_name(t.cgroup_dir, t.netns_path);
  } else {
    struct stat ns {};
    stat(t.netns_path.c_str(), &ns);
    t.name = "ns" + std::to_string(ns.st_ino);
  }
  return t;
}

// ---------------------------------------------------------------- init

void print_ebpf_plan(const PodTarget& t, const CaptureConfig& c, const loader::PodNetwork& pod, const Plan& plan) {
  auto cidrs = [](const CidrList& l) {
    if (l.wildcard) return std::string("*");
    std::vector<std::string> all;
    for (const auto& x : l.v4) all.push_back(x.str());
    for (const auto& x : l.v6) all.push_back(x.str());
    return all.empty() ? std::string("(none)") : join(all, ",");
  };
  auto ports = [](const PortList& l) { return l.ports.empty() ? std::string("(none)") : join(l.tokens, ","); };
  std::cout << "eBPF capture plan for pod " << t.name << "\n"
            << "  cgroup: " << t.cgroup_dir << "\n"
            << "  netns:  " << t.netns_path << "\n"
            << "  programs (cgroup, bpf_link): connect4 connect6 sockops getsockopt getpeername4 getpeername6\n";
  if (plan.inbound.engine == Engine::Ebpf) std::cout << "  program (netns, bpf_link): sk_lookup\n";
  if (c.accelerate)
    std::cout << "  program (socket map accel_socks): sk_msg; app<->proxy bytes bypass TCP (--accelerate)\n";
  std::cout << "  pins: " << loader::pin_dir(t.name) << "/\n"
            << "  outbound listener: 127.0.0.1:" << c.proxy_port << " / [::1]:" << c.proxy_port
            << "; the proxy dialing the pod itself: 127.0.0.1:" << c.inbound_capture_port << " (tunnel port "
            << c.inbound_tunnel_port << " excluded)\n"
            << "  exempt UIDs: " << join(c.proxy_uids.tokens, ",") << "; GIDs: " << join(c.proxy_gids.tokens, ",")
            << "\n"
            << "  map incl_cidr4/6 (-i): " << cidrs(c.outbound_ranges_include) << "\n"
            << "  map excl_cidr4/6 (-x): " << cidrs(c.outbound_ranges_exclude) << "\n"
            << "  ports -q (captured): " << ports(c.outbound_ports_include)
            << "; -o (not captured): " << ports(c.outbound_ports_exclude) << "\n"
            << "  owner groups: " << (c.owner_groups_except ? "all except " : "only ")
            << (c.owner_groups.tokens.empty() ? "(none)" : join(c.owner_groups.tokens, ",")) << "\n"
            << "  excluded interfaces (-c, through the pod's routes): "
            << (c.exclude_interfaces.empty() ? "(none)" : join(c.exclude_interfaces, ",")) << "\n";
  if (plan.inbound.engine == Engine::Ebpf) {
    std::string in = c.inbound_ports_include.wildcard
                         ? "* except " + (c.inbound_ports_exclude.tokens.empty() ? std::string("(none)")
                                                                                 : join(c.inbound_ports_exclude.tokens, ","))
                         : ports(c.inbound_ports_include);
    std::cout << "  inbound ports to " << c.inbound_capture_port << ": " << in << "; -k to " << c.proxy_port << ": "
              << (c.reroute_virtual_interfaces.empty() ? "(none)" : join(c.reroute_virtual_interfaces, ",")) << "\n";
  }
  std::vector<std::string> addrs;
  for (const auto& a : pod.addresses) addrs.push_back(a.str());
  std::cout << "  map pod_addrs: " << join(addrs, ",") << "\n"
            << "  source kept: " << (pod.source4 ? pod.source4->str() : "-") << " / "
            << (pod.source6 ? pod.source6->str() : "-") << "\n";
}

// The configuration the eBPF programs get: without the inbound part when
// iptables does inbound.
CaptureConfig ebpf_part(const CaptureConfig& cfg, const Plan& plan) {
  CaptureConfig c = cfg;
  c.accelerate = cfg.accelerate && plan.outbound.engine == Engine::Ebpf;
  if (plan.inbound.engine != Engine::Ebpf) {
    c.inbound_ports_include = PortList{};
    c.reroute_virtual_interfaces.clear();
  }
  return c;
}

// Removes a pod's iptables capture (in its netns) and eBPF pins.
void remove_everything(const PodTarget& t, const CaptureConfig& cfg, bool iptables) {
  loader::remove_pins(t.name);
  if (iptables) {
    iptables::ProcessRunner runner(t.netns_path);
    iptables::IptablesApplier applier(runner, iptables::ApplierOptions{kIptablesStateDir});
    applier.cleanup(cfg);
  }
  std::error_code ec;
  fs::remove(state_file(t.name), ec);
}

}  // namespace

int run_init(InitOptions& o) {
  // 1. Everything is validated before anything is touched.
  CaptureConfig cfg = build_capture_config(o.istio, process_env());
  if (o.istio.network_namespace && !o.istio.network_namespace->empty()) {
    if (!o.netns.empty() && o.netns != *o.istio.network_namespace)
      throw UsageError("--network-namespace: invalid value '" + *o.istio.network_namespace +
                       "': conflicts with --netns '" + o.netns + "'");
    o.netns = *o.istio.network_namespace;
  }
  if (o.mode != "auto" && o.mode != "ebpf" && o.mode != "iptables")
    throw UsageError("--mode: invalid value '" + o.mode + "': expected auto, ebpf or iptables");
  if (o.accelerate && o.mode == "iptables")
    throw UsageError("--accelerate: needs eBPF outbound capture, which --mode iptables does not use");
  cfg.accelerate = o.accelerate;
  PodTarget t = resolve_target(o.name, o.cgroup, o.netns,
                               o.mode == "ebpf" ? "required" : o.mode == "auto" ? "optional" : "none");

  loader::KernelFeatures kernel;
  Plan plan = make_plan(cfg, kernel, o.mode);
  if (plan.uses_ebpf() && t.cgroup_dir.empty()) {
    // auto without a usable cgroup: iptables for everything.
    plan = make_plan(cfg, kernel, "iptables");
    plan.outbound.reasons = {"no usable cgroup v2 directory for the pod (give --cgroup)"};
  }
  // The pod's addresses: eBPF needs them; they also tell whether the pod has
  // IPv6 (istio enables its IPv6 rules then).
  loader::PodNetwork pod;
  const bool iptables_dry_run_only = o.dry_run && !plan.uses_ebpf();
  if (!iptables_dry_run_only) pod = loader::read_pod_network(t.netns_path);
  const bool ipv6 = o.dry_run ? cfg.dual_stack : loader::ipv6_enabled(cfg, pod);
  const CaptureConfig ipt_cfg = iptables_part(cfg, plan);
  CaptureConfig bpf_cfg = ebpf_part(cfg, plan);
  if (bpf_cfg.accelerate && !kernel.prog_sk_msg()) {
    if (o.mode == "ebpf") throw std::runtime_error("--accelerate: this kernel has no sk_msg programs");
    spdlog::warn("--accelerate: not applied, this kernel has no sk_msg programs");
    bpf_cfg.accelerate = false;
  }
  if (plan.uses_ebpf()) {
    auto missing = loader::missing_interfaces(bpf_cfg, pod);
    if (!missing.empty())
      throw UsageError(std::string(std::count(cfg.exclude_interfaces.begin(), cfg.exclude_interfaces.end(), missing[0])
                                       ? "-c"
                                       : "-k") +
                       ": invalid value '" + missing[0] + "': no such interface in the pod's network namespace");
  }
  spdlog::info("plan for pod {}: {}", t.name, plan.summary());
  if (cfg.accelerate && !bpf_cfg.accelerate)
    spdlog::warn("--accelerate: not applied, outbound capture is by iptables ({})",
                 join(plan.outbound.reasons, "; "));

  if (o.dry_run) {
    if (plan.uses_ebpf()) {
      loader::BpfCapture check;  // validates the configuration against the pod
      check.configure(bpf_cfg, pod);
      print_ebpf_plan(t, bpf_cfg, pod, plan);
    }
    if (plan.uses_iptables()) std::cout << iptables::render_istio_rules(ipt_cfg, ipv6).dry_run_output();
    return kExitOk;
  }

  // 2. Apply: eBPF first (all or nothing inside), then iptables; a failure in
  // the second step removes the first.
  json st = {{"name", t.name},          {"cgroup", t.cgroup_dir},
             {"netns", t.netns_path},   {"netns_id", netns_id(t.netns_path)}, {"mode", o.mode},
             {"plan", plan.to_json()},  {"ipv6", ipv6},
             {"tproxy_mark", cfg.tproxy_mark}, {"tproxy_route_table", cfg.tproxy_route_table},
             {"accelerate", bpf_cfg.accelerate}};
  if (plan.uses_ebpf()) {
    try {
      loader::BpfCapture capture;
      capture.configure(bpf_cfg, pod);
      capture.load();
      loader::fault_point("loaded");
      capture.attach(t.cgroup_dir, t.netns_path);
      loader::fault_point("attached");
      if (plan.inbound.engine == Engine::Ebpf) capture.adopt_listeners(t.netns_path);
      capture.pin(t.name);
    } catch (const loader::LoaderError& e) {
      if (o.mode != "auto") throw;
      // The probes said yes but the kernel said no: iptables does it all.
      spdlog::warn("eBPF capture failed ({}); using iptables for every direction", e.what());
      plan = make_plan(cfg, kernel, "iptables");
      plan.outbound.reasons = {std::string("eBPF failed: ") + e.what()};
      st["plan"] = plan.to_json();
      st["accelerate"] = false;
    }
  }
  if (plan.uses_iptables()) {
    std::optional<iptables::ProcessRunner> runner;
    bool applied = false;
    try {
      runner.emplace(t.netns_path);
      iptables::IptablesApplier applier(*runner, iptables::ApplierOptions{kIptablesStateDir});
      auto result = applier.apply(ipt_cfg, ipv6);
      applied = true;
      loader::fault_point("iptables");
      st["iptables"] = {{"ipv4", result.ipv4.save_binary}};
      if (result.ipv6) st["iptables"]["ipv6"] = result.ipv6->save_binary;
      // The rules as the apply left them: its own last -save of each backend
      // (nothing ran since), or a fresh one where it has none.
      std::vector<std::string> snapshot;
      for (const auto& bin : save_binaries(st)) {
        auto saved = result.saved.find(bin);
        const std::string text = saved != result.saved.end() ? saved->second : save_of(*runner, bin, false);
        for (auto& l : istio_lines(text)) snapshot.push_back(bin + " " + l);
      }
      st["iptables"]["snapshot"] = snapshot;
    } catch (...) {
      // All or nothing: undo this run's rules and programs.
      if (applied) {
        try {
          iptables::IptablesApplier(*runner, iptables::ApplierOptions{kIptablesStateDir}).cleanup(ipt_cfg);
        } catch (const std::exception& e) {
          spdlog::error("undoing the iptables rules failed too: {}", e.what());
        }
      }
      loader::remove_pins(t.name);
      throw;
    }
  }
  // A previous capture of this pod by the engine no longer used goes now
  // (the new one is in place: no moment without capture).
  json previous = read_state(t.name);
  if (!previous.is_null() && previous.contains("iptables") && !plan.uses_iptables() &&
      !recorded_netns(previous).empty()) {
    iptables::ProcessRunner runner(recorded_netns(previous));
    iptables::IptablesApplier(runner, iptables::ApplierOptions{kIptablesStateDir}).cleanup(cleanup_config(previous));
    spdlog::info("pod {}: removed its previous iptables capture", t.name);
  }
  if (!plan.uses_ebpf() && loader::remove_pins(t.name)) spdlog::info("pod {}: removed its previous eBPF capture", t.name);
  write_state(t.name, st);
  loader::fault_point("state");

  // 3. Validation, as istio's --run-validation.
  if (cfg.run_validation) {
    auto v = run_validation(t, cfg, plan.outbound.engine == Engine::Ebpf);
    if (!v.ok) {
      spdlog::error("validation failed: {}; removing the capture", v.detail);
      remove_everything(t, cfg, plan.uses_iptables());
      return kExitValidation;
    }
    spdlog::info("validation passed: {}", v.detail);
  }
  spdlog::info("pod {}: outbound by {}, inbound by {}", t.name, to_string(plan.outbound.engine),
               to_string(plan.inbound.engine));
  return kExitOk;
}

// ---------------------------------------------------------------- cleanup

namespace {

// Whether a pinned link is still attached (its cgroup or netns exists and
// nobody detached it); fills `prog_id`.
bool link_attached(const std::string& pin, uint32_t* prog_id = nullptr) {
  int fd = bpf_obj_get(pin.c_str());
  if (fd < 0) return false;
  bpf_link_info info{};
  __u32 len = sizeof(info);
  bool alive = bpf_obj_get_info_by_fd(fd, &info, &len) == 0 &&
               ((info.type == BPF_LINK_TYPE_CGROUP && info.cgroup.cgroup_id != 0) ||
                (info.type == BPF_LINK_TYPE_NETNS && info.netns.netns_ino != 0));
  close(fd);
  if (prog_id) *prog_id = info.prog_id;
  return alive;
}

// True when every pinned link of a pod is defunct (its cgroup or netns gone).
bool links_defunct(const std::string& name) {
  auto st = loader::pinned_state(name);
  for (const auto& l : st.links)
    if (link_attached(loader::pin_dir(name) + "/" + l)) return false;
  return st.present;
}

std::vector<std::string> known_pods() {
  std::set<std::string> names;
  for (const auto& n : loader::pinned_pods()) names.insert(n);
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/run/meshcap/pods", ec)) {
    std::string f = e.path().filename();
    if (f.size() > 5 && f.substr(f.size() - 5) == ".json") names.insert(f.substr(0, f.size() - 5));
  }
  return {names.begin(), names.end()};
}

}  // namespace

int run_cleanup(const CleanupOptions& o) {
  if (o.all_stale) {
    int removed = 0;
    for (const auto& name : known_pods()) {
      json st = read_state(name);
      bool stale = st.is_null() ? links_defunct(name)
                                : path_gone(st.value("cgroup", "")) || path_gone(st.value("netns", "")) ||
                                      links_defunct(name);
      if (!stale) continue;
      loader::remove_pins(name);
      std::error_code ec;
      fs::remove(state_file(name), ec);
      spdlog::info("pod {}: stale (cgroup or network namespace gone), removed", name);
      removed++;
    }
    spdlog::info("{} stale pod(s) removed", removed);
    return kExitOk;
  }
  if (o.name.empty() && (o.cgroup.empty() || o.netns.empty()))
    throw UsageError("cleanup: give --name, or --cgroup and --netns, or --all-stale");
  std::string name = o.name;
  std::string netns;
  if (name.empty()) {
    PodTarget t = resolve_target("", o.cgroup, o.netns, "required");
    name = t.name;
  } else {
    loader::validate_pod_name(name);
  }
  json st = read_state(name);
  if (!o.netns.empty()) netns = resolve_netns(o.netns);
  else if (!st.is_null()) netns = recorded_netns(st);

  bool removed = loader::remove_pins(name);
  // iptables only where meshcap applied it (or where the caller names the
  // pod's netns): never in a namespace nobody named.
  bool had_iptables = !st.is_null() && st.contains("iptables");
  if (!netns.empty() && (had_iptables || !o.netns.empty())) {
    iptables::ProcessRunner runner(netns);
    iptables::IptablesApplier applier(runner, iptables::ApplierOptions{kIptablesStateDir});
    auto r = applier.cleanup(cleanup_config(st));
    removed |= !r.backends.empty() || r.routes_removed;
  }
  std::error_code ec;
  removed |= fs::remove(state_file(name), ec);
  spdlog::info("pod {}: {}", name, removed ? "capture removed" : "nothing to remove");
  return kExitOk;
}

// ---------------------------------------------------------------- status

namespace {

json pod_status(const std::string& name) {
  json st = read_state(name);
  json out = {{"name", name}};
  if (!st.is_null()) {
    out["cgroup"] = st.value("cgroup", "");
    out["netns"] = st.value("netns", "");
    out["plan"] = st.value("plan", json::object());
  }
  std::vector<std::string> drift;

  auto pins = loader::pinned_state(name);
  if (pins.present) {
    json links = json::array();
    for (const auto& l : pins.links) {
      uint32_t prog_id = 0;
      bool attached = link_attached(loader::pin_dir(name) + "/" + l, &prog_id);
      links.push_back({{"link", l}, {"attached", attached}, {"prog_id", prog_id}});
      if (!attached) drift.push_back(l + " is detached");
    }
    out["ebpf"] = {{"pins", loader::pin_dir(name)}, {"links", links}, {"counters", loader::pinned_counters(name)},
                   {"awaiting_proxy", loader::pinned_connection_entries(name)},
                   {"accelerated_sockets", loader::pinned_accelerated_sockets(name)}};
    out["accelerate"] = !st.is_null() && st.value("accelerate", false);
    size_t expected = 6 + (st.is_null() ? 0 : st["plan"]["inbound"]["engine"] == "ebpf");
    if (!st.is_null() && st["plan"]["outbound"]["engine"] == "ebpf" && pins.links.size() < expected)
      drift.push_back("links missing: " + std::to_string(pins.links.size()) + " of " + std::to_string(expected));
  } else if (!st.is_null() && st["plan"]["outbound"]["engine"] == "ebpf") {
    drift.push_back("eBPF pins missing");
  }

  if (!st.is_null() && st.contains("iptables") && !recorded_netns(st).empty()) {
    iptables::ProcessRunner runner(recorded_netns(st));
    std::vector<std::string> now;
    json counts = json::object();
    for (const auto& bin : save_binaries(st)) {
      for (auto& l : istio_lines(save_of(runner, bin, false))) now.push_back(bin + " " + l);
      // Packets that took each redirect chain.
      const std::string counted = save_of(runner, bin, true);
      for (const std::string chain : {"ISTIO_REDIRECT", "ISTIO_IN_REDIRECT", "ISTIO_TPROXY"}) {
        auto n = iptables::rule_packets(counted, [&](std::string_view rule) {
          return rule.rfind("-A " + chain + " ", 0) == 0;
        });
        if (n) counts[bin + " " + chain] = *n;
      }
    }
    std::sort(now.begin(), now.end());
    auto then = st["iptables"].value("snapshot", std::vector<std::string>{});
    std::sort(then.begin(), then.end());
    if (now.empty() && !then.empty())
      drift.push_back("iptables chains missing");
    else if (now != then)
      drift.push_back("iptables rules differ from what meshcap applied");
    out["iptables"] = {{"backends", save_binaries(st)}, {"rules", now.size()}, {"packets", counts}};
  }
  out["drift"] = drift;
  return out;
}

}  // namespace

int run_status(const StatusOptions& o) {
  std::vector<std::string> names = o.name.empty() ? known_pods() : std::vector<std::string>{o.name};
  if (!o.name.empty()) loader::validate_pod_name(o.name);
  json all = json::array();
  for (const auto& n : names) all.push_back(pod_status(n));
  if (o.json) {
    std::cout << all.dump(2) << "\n";
    return kExitOk;
  }
  if (o.prometheus) {
    std::cout << "# HELP meshcap_decisions_total eBPF capture decisions and events per pod.\n"
              << "# TYPE meshcap_decisions_total counter\n";
    for (const auto& p : all)
      if (p.contains("ebpf"))
        for (auto& [k, v] : p["ebpf"]["counters"].items())
          std::cout << "meshcap_decisions_total{pod=\"" << p["name"].get<std::string>() << "\",decision=\"" << k
                    << "\"} " << v << "\n";
    std::cout << "# HELP meshcap_iptables_packets_total Packets that took an istio redirect chain.\n"
              << "# TYPE meshcap_iptables_packets_total counter\n";
    for (const auto& p : all)
      if (p.contains("iptables"))
        for (auto& [k, v] : p["iptables"]["packets"].items())
          std::cout << "meshcap_iptables_packets_total{pod=\"" << p["name"].get<std::string>() << "\",chain=\""
                    << k.substr(k.find(' ') + 1) << "\",binary=\"" << k.substr(0, k.find(' ')) << "\"} " << v
                    << "\n";
    std::cout << "# HELP meshcap_drift Whether a pod's capture differs from what meshcap applied.\n"
              << "# TYPE meshcap_drift gauge\n";
    for (const auto& p : all)
      std::cout << "meshcap_drift{pod=\"" << p["name"].get<std::string>() << "\"} " << (p["drift"].empty() ? 0 : 1)
                << "\n";
    return kExitOk;
  }
  if (all.empty()) std::cout << "no pods captured by meshcap\n";
  for (const auto& p : all) {
    std::cout << "pod " << p["name"].get<std::string>() << "\n";
    if (p.contains("plan"))
      for (const char* dir : {"outbound", "inbound"})
        std::cout << "  " << dir << ": " << p["plan"][dir]["engine"].get<std::string>() << " ("
                  << join(p["plan"][dir]["reasons"].get<std::vector<std::string>>(), "; ") << ")\n";
    if (p.contains("cgroup")) std::cout << "  cgroup " << p["cgroup"].get<std::string>() << ", netns "
                                        << p["netns"].get<std::string>() << "\n";
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
                << p["iptables"]["rules"] << " istio lines; redirected packets:";
      for (auto& [k, v] : p["iptables"]["packets"].items()) std::cout << " " << k << "=" << v;
      std::cout << "\n";
    }
    std::cout << "  drift: "
              << (p["drift"].empty() ? "none" : join(p["drift"].get<std::vector<std::string>>(), "; ")) << "\n";
  }
  return kExitOk;
}

// ---------------------------------------------------------------- probe

int run_probe(const ProbeOptions& o) {
  CaptureConfig cfg = build_capture_config(o.istio, process_env());
  loader::KernelFeatures kernel;
  Plan plan = make_plan(cfg, kernel, "auto");
  json j;
  j["kernel"] = kernel.kernel_release();
  j["cgroup2"] = kernel.cgroup2_mount().value_or("");
  json feats = json::object();
  for (const auto& f : kernel.report()) feats[f.name] = f.present;
  j["features"] = feats;
  j["plan"] = plan.to_json();
  if (o.json) {
    std::cout << j.dump(2) << "\n";
    return kExitOk;
  }
  std::cout << "kernel " << j["kernel"].get<std::string>() << "; cgroup v2 "
            << (j["cgroup2"].get<std::string>().empty() ? "not mounted" : "at " + j["cgroup2"].get<std::string>())
            << "\n";
  for (const auto& f : kernel.report()) std::cout << "  " << (f.present ? "yes " : "no  ") << f.name << "\n";
  std::cout << "plan for these flags:\n";
  for (const char* dir : {"outbound", "inbound"})
    std::cout << "  " << dir << ": " << j["plan"][dir]["engine"].get<std::string>() << " ("
              << join(j["plan"][dir]["reasons"].get<std::vector<std::string>>(), "; ") << ")\n";
  return kExitOk;
}

}  // namespace meshcap
