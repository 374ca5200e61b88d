// meshcap: the init step that captures a pod's TCP for its sidecar proxy,
// with eBPF where the kernel and privileges allow it and istio-identical
// iptables rules elsewhere.
//
// Exit codes: 0 ok; 1 failed at run time, nothing left applied; 2 bad usage
// or input, nothing touched; 126 validation failed.
#include <bpf/libbpf.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "bpf_capture.h"
#include "capture_config.h"
#include "istio_flags.h"
#include "pod.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace meshcap {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitRuntime = 1;
constexpr int kExitUsage = 2;

// libbpf's messages, through spdlog: warnings stay warnings, the rest debug.
int libbpf_to_spdlog(enum libbpf_print_level level, const char* fmt, va_list args) {
  char buf[1024];
  vsnprintf(buf, sizeof(buf), fmt, args);
  std::string msg(buf);
  while (!msg.empty() && msg.back() == '\n') msg.pop_back();
  if (level == LIBBPF_WARN)
    spdlog::warn("libbpf: {}", msg);
  else
    spdlog::debug("libbpf: {}", msg);
  return 0;
}

void setup_logging(const std::string& level) {
  auto logger = spdlog::stderr_color_mt("meshcap");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%^%l%$ %v");
  auto lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off")
    throw UsageError("--log-level: invalid value '" + level + "': expected trace, debug, info, warn, error or off");
  spdlog::set_level(lvl);
  libbpf_set_print(libbpf_to_spdlog);
}

struct InitOptions {
  std::string mode = "auto";
  std::string name, cgroup, netns;
  bool dry_run = false;
  IstioFlagValues istio;
};

struct CleanupOptions {
  std::string name, cgroup, netns;
};

// The pod a command acts on, from --name / --cgroup / --netns.
PodTarget resolve_target(const std::string& name, const std::string& cgroup, const std::string& netns,
                         bool need_cgroup) {
  PodTarget t;
  t.netns_path = resolve_netns(netns);
  if (!cgroup.empty()) {
    t.cgroup_dir = validate_cgroup(cgroup);
  } else if (need_cgroup) {
    auto own = own_cgroup_dir();
    if (!own) throw UsageError("--cgroup: not given and no cgroup v2 hierarchy is mounted");
    t.cgroup_dir = validate_cgroup(*own);
  }
  if (!name.empty()) {
    loader::validate_pod_name(name);
    t.name = name;
  } else {
    if (t.cgroup_dir.empty()) throw UsageError("--name: not given (or give --cgroup and --netns)");
    t.name = derive_pod_name(t.cgroup_dir, t.netns_path);
  }
  return t;
}

void write_state(const PodTarget& t, const json& extra) {
  std::error_code ec;
  fs::create_directories(fs::path(state_file(t.name)).parent_path(), ec);
  json j = extra;
  j["name"] = t.name;
  j["cgroup"] = t.cgroup_dir;
  j["netns"] = t.netns_path;
  std::ofstream out(state_file(t.name));
  out << j.dump(2) << "\n";
  if (!out) spdlog::warn("cannot write {}", state_file(t.name));
}

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

// The eBPF plan in readable form: what --dry-run prints in eBPF mode.
void print_ebpf_plan(const PodTarget& t, const CaptureConfig& c, const loader::PodNetwork& pod) {
  std::cout << "eBPF capture plan for pod " << t.name << "\n"
            << "  cgroup: " << t.cgroup_dir << "\n"
            << "  netns:  " << t.netns_path << "\n"
            << "  programs (cgroup hooks, bpf_link): connect4 connect6 sockops getsockopt getpeername4 getpeername6\n"
            << "  pins:   " << loader::pin_dir(t.name) << "/\n"
            << "  outbound listener: 127.0.0.1:" << c.proxy_port << " / [::1]:" << c.proxy_port << "\n"
            << "  inbound listener (proxy to the pod's own address): 127.0.0.1:" << c.inbound_capture_port
            << ", tunnel port " << c.inbound_tunnel_port << " excluded\n"
            << "  exempt UIDs: " << join(c.proxy_uids.tokens, ",") << "; GIDs: " << join(c.proxy_gids.tokens, ",")
            << "\n";
  auto cidrs = [](const CidrList& l) {
    if (l.wildcard) return std::string("*");
    std::vector<std::string> all;
    for (const auto& x : l.v4) all.push_back(x.str());
    for (const auto& x : l.v6) all.push_back(x.str());
    return all.empty() ? std::string("(none)") : join(all, ",");
  };
  auto ports = [](const PortList& l) { return l.ports.empty() ? std::string("(none)") : join(l.tokens, ","); };
  if (loader::wants_inbound(c)) {
    auto ports = c.inbound_ports_include.wildcard ? std::string("* except ") + (c.inbound_ports_exclude.tokens.empty() ? "(none)" : join(c.inbound_ports_exclude.tokens, ","))
                                                  : join(c.inbound_ports_include.tokens, ",");
    std::cout << "  inbound (sk_lookup on the netns): ports " << ports << " to the inbound listener; -k "
              << (c.reroute_virtual_interfaces.empty() ? "(none)" : join(c.reroute_virtual_interfaces, ","))
              << " to the outbound listener\n";
  }
  std::cout << "  excluded interfaces (-c): "
            << (c.exclude_interfaces.empty() ? "(none)" : join(c.exclude_interfaces, ",")) << "\n";
  std::cout << "  map incl_cidr4/6 (-i): " << cidrs(c.outbound_ranges_include) << "\n"
            << "  map excl_cidr4/6 (-x): " << cidrs(c.outbound_ranges_exclude) << "\n"
            << "  ports -q (captured): " << ports(c.outbound_ports_include)
            << "; -o (not captured): " << ports(c.outbound_ports_exclude) << "\n"
            << "  owner groups: " << (c.owner_groups_except ? "all except " : "only ")
            << (c.owner_groups.tokens.empty() ? "(none)" : join(c.owner_groups.tokens, ",")) << "\n";
  std::vector<std::string> addrs;
  for (const auto& a : pod.addresses) addrs.push_back(a.str());
  std::cout << "  map pod_addrs: " << join(addrs, ",") << "\n"
            << "  source kept: " << (pod.source4 ? pod.source4->str() : "-") << " / "
            << (pod.source6 ? pod.source6->str() : "-") << "\n";
}

int run_init_ebpf(const PodTarget& t, const CaptureConfig& cfg, bool dry_run) {
  auto pod = loader::read_pod_network(t.netns_path);
  if (dry_run) {
    print_ebpf_plan(t, cfg, pod);
    return kExitOk;
  }
  loader::BpfCapture capture;
  capture.configure(cfg, pod);
  capture.load();
  capture.attach(t.cgroup_dir, t.netns_path);
  const bool inbound = loader::wants_inbound(cfg);
  if (inbound) capture.adopt_listeners(t.netns_path);
  capture.pin(t.name);
  write_state(t, {{"mode", "ebpf"}, {"outbound", "ebpf"}, {"inbound", inbound ? "ebpf" : "none"}});
  spdlog::info("pod {}: outbound TCP captured by eBPF (cgroup {}){}; pins in {}", t.name, t.cgroup_dir,
               inbound ? ", inbound by sk_lookup on " + t.netns_path : "", loader::pin_dir(t.name));
  return kExitOk;
}

int run_init(InitOptions& o) {
  // Everything is validated before anything is touched.
  CaptureConfig cfg = build_capture_config(o.istio, process_env());
  if (o.istio.network_namespace && !o.istio.network_namespace->empty()) {
    if (!o.netns.empty() && o.netns != *o.istio.network_namespace)
      throw UsageError("--network-namespace: invalid value '" + *o.istio.network_namespace +
                       "': conflicts with --netns '" + o.netns + "'");
    o.netns = *o.istio.network_namespace;
  }
  if (o.mode != "auto" && o.mode != "ebpf" && o.mode != "iptables")
    throw UsageError("--mode: invalid value '" + o.mode + "': expected auto, ebpf or iptables");
  PodTarget t = resolve_target(o.name, o.cgroup, o.netns, o.mode != "iptables");

  std::string mode = o.mode;
  if (mode == "auto") {
    auto why = loader::ebpf_unsupported(cfg);
    mode = why.empty() ? "ebpf" : "iptables";
    spdlog::info("auto mode chose {}{}", mode, why.empty() ? "" : " (" + why.front() + ")");
  }
  if (mode == "ebpf") {
    auto why = loader::ebpf_unsupported(cfg);
    if (!why.empty()) throw UsageError("--mode ebpf cannot honour this configuration: " + join(why, "; "));
    return run_init_ebpf(t, cfg, o.dry_run);
  }
  throw UsageError("--mode iptables: not available in this build");
}

int run_cleanup(const CleanupOptions& o) {
  PodTarget t = resolve_target(o.name, o.cgroup, o.netns, false);
  bool removed = loader::remove_pins(t.name);
  std::error_code ec;
  removed |= fs::remove(state_file(t.name), ec);
  spdlog::info("pod {}: {}", t.name, removed ? "capture removed" : "nothing to remove");
  return kExitOk;
}

}  // namespace
}  // namespace meshcap

int main(int argc, char** argv) {
  using namespace meshcap;
  CLI::App app{"meshcap: sidecar traffic capture with eBPF, or istio-identical iptables"};
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")->capture_default_str();

  InitOptions init;
  auto* init_cmd = app.add_subcommand("init", "Capture a pod's traffic");
  init_cmd->add_option("--mode", init.mode, "auto, ebpf or iptables")->capture_default_str();
  init_cmd->add_option("--name", init.name, "Name of the pod's capture (default: derived from cgroup and netns)");
  init_cmd->add_option("--cgroup", init.cgroup, "The pod's cgroup v2 directory (default: the caller's)");
  init_cmd->add_option("--netns", init.netns, "The pod's network namespace: a path or a name under /run/netns");
  init_cmd->add_flag("-n,--dry-run", init.dry_run, "Print what would be applied and change nothing");
  init_cmd->add_option("--log-level", log_level, "trace, debug, info, warn, error or off");
  add_istio_flags(*init_cmd, init.istio, false);

  CleanupOptions cleanup;
  auto* cleanup_cmd = app.add_subcommand("cleanup", "Remove everything meshcap installed for a pod");
  cleanup_cmd->add_option("--name", cleanup.name, "Name of the pod's capture");
  cleanup_cmd->add_option("--cgroup", cleanup.cgroup, "The pod's cgroup v2 directory");
  cleanup_cmd->add_option("--netns", cleanup.netns, "The pod's network namespace");
  cleanup_cmd->add_option("--log-level", log_level, "trace, debug, info, warn, error or off");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    std::cerr << "meshcap: " << msg << "\n";
    return kExitUsage;
  }

  try {
    setup_logging(log_level);
    if (init_cmd->parsed()) return run_init(init);
    if (cleanup_cmd->parsed()) return run_cleanup(cleanup);
  } catch (const UsageError& e) {
    spdlog::error("{}", e.what());
    return kExitUsage;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return kExitRuntime;
  }
  return kExitUsage;
}
