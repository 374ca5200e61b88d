// meshcap: the init step that captures a pod's TCP for its sidecar proxy,
// with eBPF where the kernel and privileges allow it and istio-identical
// iptables rules elsewhere.
//
// Exit codes: 0 ok; 1 failed at run time, nothing left applied; 2 bad usage
// or input, nothing touched; 126 validation failed (everything rolled back).
// Invoked as `istio-iptables`, it takes istio-iptables' flags and exit codes.
#include <bpf/libbpf.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <mutex>

#include <nlohmann/json.hpp>

#include <spdlog/spdlog.h>

#include "agent_socket.h"
#include "commands.h"
#include "forward.h"
#include "host.h"
#include "istio_flags.h"

namespace {

// libbpf's messages, through spdlog: warnings stay warnings, the rest debug.
int libbpf_to_spdlog(enum libbpf_print_level level, const char* fmt, va_list args) {
  // Verifier logs come as one long message: no fixed buffer cuts them.
  char* buf = nullptr;
  if (vasprintf(&buf, fmt, args) < 0) return 0;
  std::string msg(buf);
  free(buf);
  while (!msg.empty() && msg.back() == '\n') msg.pop_back();
  if (level == LIBBPF_WARN)
    spdlog::warn("libbpf: {}", msg);
  else
    spdlog::debug("libbpf: {}", msg);
  return 0;
}

// Logs go to stderr; stdout carries only what was asked for.
void setup_logging(const std::string& level) {
  spdlog::set_default_logger(std::make_shared<spdlog::logger>("meshcap", meshcap::stderr_sink()));
  spdlog::set_pattern("%^%l%$ %v");
  auto lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off")
    throw meshcap::UsageError("--log-level: invalid value '" + level +
                              "': expected trace, debug, info, warn, error or off");
  spdlog::set_level(lvl);
  libbpf_set_print(libbpf_to_spdlog);
}

// istio-iptables' personality: its flags, its environment, its exit codes
// (1 for any error, 126 for a failed validation).
int istio_iptables_main(int argc, char** argv) {
  using namespace meshcap;
  CLI::App app{"istio-iptables (meshcap): set up traffic capture for the Istio sidecar"};
  InitOptions o;
  add_istio_flags(app, o.istio, true);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off");
  app.add_option("--mode", o.mode, "auto, ebpf or iptables (meshcap)")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "istio-iptables: " << e.what() << "\n";
    return 1;
  }
  try {
    setup_logging(log_level);
    o.dry_run = o.istio.dry_run && (o.istio.dry_run->empty() || *o.istio.dry_run != "false");
    int rc = run_init(o);
    return rc == kExitUsage ? 1 : rc;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
}

// The meshcap command line: each sub-command's options, and the sub-commands
// to tell which one was given.
struct CommandLine {
  std::string log_level = "info";
  meshcap::InitOptions init;
  meshcap::CleanupOptions cleanup;
  meshcap::StatusOptions status;
  meshcap::ProbeOptions probe;
  meshcap::NodeStartOptions node_start;
  meshcap::NodeServeOptions node_serve;
  meshcap::NodeStopOptions node_stop;
  meshcap::StatusOptions node_status;
  CLI::App* init_cmd = nullptr;
  CLI::App* cleanup_cmd = nullptr;
  CLI::App* status_cmd = nullptr;
  CLI::App* probe_cmd = nullptr;
  CLI::App* node_start_cmd = nullptr;
  CLI::App* node_serve_cmd = nullptr;
  CLI::App* node_stop_cmd = nullptr;
  CLI::App* node_status_cmd = nullptr;
};

void add_log_level(CLI::App* cmd, std::string& log_level) {
  cmd->add_option("--log-level", log_level, "trace, debug, info, warn, error or off");
}

void add_init_command(CLI::App& app, CommandLine& cl) {
  meshcap::InitOptions& init = cl.init;
  auto* init_cmd = app.add_subcommand("init", "Capture a pod's traffic");
  init_cmd->add_option("--mode", init.mode, "auto, ebpf or iptables")->capture_default_str();
  init_cmd->add_option("--name", init.name, "Name of the pod's capture (default: derived from cgroup and netns)");
  init_cmd->add_option("--cgroup", init.cgroup, "The pod's cgroup v2 directory (default: the caller's)");
  init_cmd->add_option("--netns", init.netns, "The pod's network namespace: a path or a name under /run/netns");
  init_cmd->add_flag("-n,--dry-run", init.dry_run, "Print what would be applied and change nothing");
  init_cmd->add_flag("--accelerate", init.accelerate,
                     "Also pass bytes between the application's and the proxy's sockets with sk_msg, skipping "
                     "TCP/IP on loopback (eBPF outbound only; off by default; not with a proxy that uses splice)");
  add_log_level(init_cmd, cl.log_level);
  meshcap::add_istio_flags(*init_cmd, init.istio, false);
  cl.init_cmd = init_cmd;
}

void add_cleanup_command(CLI::App& app, CommandLine& cl) {
  meshcap::CleanupOptions& cleanup = cl.cleanup;
  auto* cleanup_cmd = app.add_subcommand("cleanup", "Remove everything meshcap installed for a pod");
  cleanup_cmd->add_option("--name", cleanup.name, "Name of the pod's capture");
  cleanup_cmd->add_option("--cgroup", cleanup.cgroup, "The pod's cgroup v2 directory");
  cleanup_cmd->add_option("--netns", cleanup.netns, "The pod's network namespace");
  cleanup_cmd->add_flag("--all-stale", cleanup.all_stale, "Remove what is left of pods whose cgroup or netns is gone");
  add_log_level(cleanup_cmd, cl.log_level);
  cl.cleanup_cmd = cleanup_cmd;
}

void add_status_command(CLI::App& app, CommandLine& cl) {
  meshcap::StatusOptions& status = cl.status;
  auto* status_cmd = app.add_subcommand("status", "Show each pod's capture: modes, programs or chains, counters, drift");
  status_cmd->add_option("--name", status.name, "Only this pod");
  status_cmd->add_flag("--json", status.json, "JSON on stdout");
  status_cmd->add_flag("--prometheus", status.prometheus, "Prometheus text format on stdout");
  add_log_level(status_cmd, cl.log_level);
  cl.status_cmd = status_cmd;
}

void add_probe_command(CLI::App& app, CommandLine& cl) {
  meshcap::ProbeOptions& probe = cl.probe;
  auto* probe_cmd = app.add_subcommand("probe", "Show what this kernel and process can do, and the plan init would make");
  probe_cmd->add_flag("--json", probe.json, "JSON on stdout");
  probe_cmd->add_option("--netns", probe.netns, "Plan for the pod with this network namespace (default: the caller's)");
  add_log_level(probe_cmd, cl.log_level);
  meshcap::add_istio_flags(*probe_cmd, probe.istio, false);
  cl.probe_cmd = probe_cmd;
}

// A size option: a whole number from 1 (leaving the option out gives the
// default; 0 is no size).
CLI::Validator positive_count() {
  return CLI::Validator(
      [](std::string& v) -> std::string {
        if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos)
          return "invalid value '" + v + "': expected a whole number";
        if (v.find_first_not_of('0') == std::string::npos) return "invalid value '" + v + "': expected at least 1";
        return {};
      },
      "", "positive count");
}

void add_node_start_command(CLI::App* node_cmd, CommandLine& cl) {
  meshcap::NodeStartOptions& node_start = cl.node_start;
  auto* node_start_cmd = node_cmd->add_subcommand(
      "start", "Load and attach the node data path, or replace a running one's programs in place");
  node_start_cmd->add_option("--cgroup", node_start.cgroup,
                             "cgroup v2 directory holding every pod (default: the kubelet's kubepods, else the root)");
  node_start_cmd->add_option("--max-pods", node_start.max_pods, "Pods it takes (default 256)")
      ->check(positive_count());
  node_start_cmd
      ->add_option("--max-connections", node_start.max_connections,
                   "Connections the proxies have not asked about yet (default 16384)")
      ->check(positive_count());
  node_start_cmd->add_flag("--accelerate", node_start.accelerate, "Load sk_msg, so pods may ask --accelerate");
  node_start_cmd->add_flag("--no-dns", node_start.no_dns,
                           "Leave out DNS capture's sendmsg/recvmsg programs (pods asking --redirect-dns use iptables)");
  add_log_level(node_start_cmd, cl.log_level);
  cl.node_start_cmd = node_start_cmd;
}

void add_node_serve_command(CLI::App* node_cmd, CommandLine& cl) {
  meshcap::NodeServeOptions& node_serve = cl.node_serve;
  auto* node_serve_cmd = node_cmd->add_subcommand(
      "serve", "node start, keep meshcap-cni installed, serve metrics; leaves everything in place on exit");
  node_serve_cmd->add_option("--cgroup", node_serve.start.cgroup, "As for node start");
  node_serve_cmd->add_option("--max-pods", node_serve.start.max_pods, "As for node start")->check(positive_count());
  node_serve_cmd->add_option("--max-connections", node_serve.start.max_connections, "As for node start")
      ->check(positive_count());
  node_serve_cmd->add_flag("--accelerate", node_serve.start.accelerate, "As for node start");
  node_serve_cmd->add_flag("--no-dns", node_serve.start.no_dns, "As for node start");
  node_serve_cmd->add_option("--metrics-listen", node_serve.metrics_listen, "HOST:PORT for /metrics and /healthz");
  node_serve_cmd->add_option("--cni-conf-dir", node_serve.cni_conf_dir, "CNI configuration directory to keep meshcap-cni in");
  node_serve_cmd->add_option("--cni-bin-dir", node_serve.cni_bin_dir, "CNI plugin directory to copy meshcap-cni to");
  node_serve_cmd->add_option("--cni-binary", node_serve.cni_binary, "The meshcap-cni binary (default: beside meshcap)");
  node_serve_cmd->add_option("--cni-plugin-config", node_serve.cni_plugin_config, "JSON file: the plugin entry's keys");
  add_log_level(node_serve_cmd, cl.log_level);
  cl.node_serve_cmd = node_serve_cmd;
}

// `node` and its sub-commands start, serve, stop and status.
void add_node_commands(CLI::App& app, CommandLine& cl) {
  auto* node_cmd = app.add_subcommand("node", "The node data path: programs loaded once for every pod of the node");
  node_cmd->require_subcommand(1);
  add_node_start_command(node_cmd, cl);
  add_node_serve_command(node_cmd, cl);
  auto* node_stop_cmd = node_cmd->add_subcommand("stop", "Remove the node data path");
  node_stop_cmd->add_flag("--move-to-iptables", cl.node_stop.move_to_iptables,
                          "Capture enrolled pods with iptables first (refused otherwise while pods are enrolled)");
  add_log_level(node_stop_cmd, cl.log_level);
  cl.node_stop_cmd = node_stop_cmd;
  auto* node_status_cmd = node_cmd->add_subcommand("status", "Programs, sizes, pods, map use, counters per pod");
  node_status_cmd->add_flag("--json", cl.node_status.json, "JSON on stdout");
  node_status_cmd->add_flag("--prometheus", cl.node_status.prometheus, "Prometheus text format on stdout");
  add_log_level(node_status_cmd, cl.log_level);
  cl.node_status_cmd = node_status_cmd;
}

// Whether `cmd` was built (see main) and given.
bool given(const CLI::App* cmd) { return cmd && cmd->parsed(); }

// A `meshcap init` command line the node agent was handed (forward.h),
// parsed as main parses it. The parser is built once and kept: building
// CLI11's options and their callbacks cost the agent more than the parse
// (0.1-0.2 ms per request here). Before each parse the values it writes
// into are reset to a fresh command line's (the options hold their
// addresses) and CLI11's own state is cleared.
std::optional<meshcap::ParsedInit> parse_forwarded_init(const std::vector<std::string>& args) {
  struct Kept {
    CLI::App app{"meshcap"};
    CommandLine cl;
    std::mutex m;
    Kept() {
      app.require_subcommand(1);
      add_log_level(&app, cl.log_level);
      add_init_command(app, cl);
    }
  };
  static Kept* kept = new Kept;  // never destroyed: the agent's socket thread may use it at exit
  std::lock_guard<std::mutex> hold(kept->m);
  CommandLine& cl = kept->cl;
  cl.log_level = CommandLine{}.log_level;
  cl.init = meshcap::InitOptions{};
  kept->app.clear();
  std::vector<std::string> reversed(args.rbegin(), args.rend());
  try {
    kept->app.parse(reversed);
  } catch (const CLI::Error&) {
    return std::nullopt;
  }
  if (!given(cl.init_cmd)) return std::nullopt;
  return meshcap::ParsedInit{cl.init, cl.log_level};
}

// Runs the sub-command that was given; errors become messages and exit codes.
int run_command(CommandLine& cl) {
  using namespace meshcap;
  try {
    setup_logging(cl.log_level);
    if (given(cl.init_cmd)) return run_init(cl.init);
    if (given(cl.cleanup_cmd)) return run_cleanup(cl.cleanup);
    if (given(cl.status_cmd)) return run_status(cl.status);
    if (given(cl.probe_cmd)) return run_probe(cl.probe);
    if (given(cl.node_start_cmd)) return run_node_start(cl.node_start);
    if (given(cl.node_stop_cmd)) return run_node_stop(cl.node_stop);
    if (given(cl.node_serve_cmd)) {
      cni::AgentSocket cni_socket;  // meshcap-cni's requests, answered in this process
      cl.node_serve.on_serving = [&cni_socket] {
        // The `meshcap init`s it answers look for processes in the pod's
        // namespace many times: a task iterator, loaded once, does it.
        std::string why;
        keep_node_open();  // and the node's links, tables and record, between requests
        if (!read_namespaces_with_bpf(why))
          spdlog::info("processes in a pod's namespace are found by walking /proc: {}", why);
        cni_socket.start(cni::agent_socket_path(), [](const cni::InitRequest& request, int peer) {
          return answer_init(request, peer, parse_forwarded_init);
        });
      };
      return run_node_serve(cl.node_serve);
    }
    if (given(cl.node_status_cmd)) return run_node_status(cl.node_status);
  } catch (const UsageError& e) {
    spdlog::error("{}", e.what());
    return kExitUsage;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return kExitRuntime;
  }
  return kExitUsage;
}

}  // namespace

// Into a running node, the node's agent answers `meshcap init` when one
// listens (forward.h). On x86-64 the command is handed over at the entry
// point, before the C library starts (start.cpp); where that entry point is
// not linked, here, before the C++ runtime's own static initialisers (the
// iostreams and their locale facets, CLI11's validators): a command the
// agent answers never builds them. glibc passes argc, argv and envp to
// initialisers. This runs before frame_dummy registers the frame tables
// (this executable is static), so nothing on its path may throw. When the
// entry point asked already, this returns at once.
__attribute__((constructor(101))) static void hand_init_to_the_agent(int argc, char** argv, char** envp) {
  const int rc = meshcap::cni::hand_over_if_asked(argc, argv, envp);
  if (rc >= 0) _exit(rc);
}

int main(int argc, char** argv) {
  using namespace meshcap;
  if (std::filesystem::path(argv[0]).filename() == "istio-iptables") return istio_iptables_main(argc, argv);

  CLI::App app{"meshcap: sidecar traffic capture with eBPF, or istio-identical iptables"};
  app.require_subcommand(1);
  CommandLine cl;
  add_log_level(&app, cl.log_level);
  // Only the sub-command asked for is built when it comes first (CLI11
  // builds every option and validator it is given, a good part of a short
  // command's time); the others, for help and errors, otherwise.
  const std::string first = argc > 1 ? argv[1] : "";
  const bool all = first != "init" && first != "cleanup" && first != "status" && first != "probe" && first != "node";
  if (all || first == "init") add_init_command(app, cl);
  if (all || first == "cleanup") add_cleanup_command(app, cl);
  if (all || first == "status") add_status_command(app, cl);
  if (all || first == "probe") add_probe_command(app, cl);
  if (all || first == "node") add_node_commands(app, cl);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "meshcap: " << e.what() << "\n";
    return kExitUsage;
  }
  return run_command(cl);
}
