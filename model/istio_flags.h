// istio-iptables' command-line flags and environment variables, read by one
// parser that every meshcap mode shares.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "capture_config.h"

namespace CLI {
class App;
}

namespace meshcap {

/// Looks up an environment variable; injected so tests need no real env.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
/// The process environment.
EnvLookup process_env();

/// The raw values of istio-iptables' flags, as strings, before validation
/// (booleans too: "true", "false", "1", ... as Go's strconv.ParseBool).
/// A field is unset when neither the flag nor its environment variable was
/// given. Environment variables use istio's spelling (flag name upper-cased,
/// '-' -> '_', e.g. ISTIO_SERVICE_CIDR for -i) plus its extra names
/// (ISTIO_META_DNS_CAPTURE, INVALID_DROP, ISTIO_DUAL_STACK).
struct IstioFlagValues {
  std::optional<std::string> proxy_port, inbound_capture_port, inbound_tunnel_port;
  std::optional<std::string> proxy_uid, proxy_gid, inbound_interception_mode;
  std::optional<std::string> tproxy_mark, tproxy_route_table;
  std::optional<std::string> inbound_ports, local_exclude_ports;
  std::optional<std::string> exclude_interfaces, service_cidr, service_exclude_cidr;
  std::optional<std::string> outbound_ports, local_outbound_ports_exclude;
  std::optional<std::string> kube_virt_interfaces;
  std::optional<std::string> dns_servers, force_iptables_binary;
  std::optional<std::string> iptables_probe_port, probe_timeout;
  std::optional<std::string> network_namespace;
  std::optional<std::string> dry_run, redirect_dns, capture_all_dns;
  std::optional<std::string> drop_invalid, dual_stack, run_validation;
  std::optional<std::string> skip_rule_apply;
};

/// Adds istio-iptables' flags (`-p -z -e -u -g -m -t -r -b -d -c -i -x -q -o -k
/// -n`, `--redirect-dns`, `--dual-stack`, ...) to a CLI11 app, bound to
/// `values`. `with_dry_run` adds istio's `-n/--dry-run` (the agent's own
/// subcommands define `--dry-run` themselves).
void add_istio_flags(CLI::App& app, IstioFlagValues& values, bool with_dry_run);

/// Validates the flag values, with istio's environment variables filling in
/// what no flag gave, and returns the typed configuration. Throws UsageError
/// naming the bad value. `resolv_conf` is read for DNS servers only when DNS
/// redirect is on, capture-all-dns is off, and --dns-servers was not given.
CaptureConfig build_capture_config(const IstioFlagValues& values, const EnvLookup& env,
                                   const std::string& resolv_conf = "/etc/resolv.conf");

/// Throws UsageError for a user or group name that does not resolve on this
/// machine: neither engine can capture by it (iptables' owner match refuses
/// it when the rules are applied). Rendering rules (a dry run) does not
/// need it.
void require_resolved_ids(const CaptureConfig& cfg);

/// Convenience for tests and tools: parses a whole istio-iptables argument
/// list (without argv[0]) with the given environment.
CaptureConfig parse_capture_args(const std::vector<std::string>& args, const EnvLookup& env);

/// istio-iptables' long flag names ("envoy-port", "istio-service-cidr", ...),
/// the keys of a flag set written as JSON (the CNI plugin's configuration,
/// a pod's recorded state).
std::vector<std::string> istio_flag_names();
/// Sets the flag with long name `name`; false when there is no such flag.
bool set_istio_flag(IstioFlagValues& values, const std::string& name, const std::string& value);
/// The flags that are set, as {long name: value}.
nlohmann::json istio_flags_to_json(const IstioFlagValues& values);
/// The reverse; an unknown key or a value that is not a string, number or
/// boolean throws UsageError naming it.
IstioFlagValues istio_flags_from_json(const nlohmann::json& j, const std::string& where);

/// The settings istio takes only from the environment
/// (ISTIO_OUTBOUND_OWNER_GROUPS, ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE,
/// ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR, ENVOY_USER).
const std::vector<std::string>& env_only_settings();

/// A flag set with everything that decides its configuration in it: the
/// flags with istio's environment variables filled in where no flag was
/// given, and the environment-only settings. Building its configuration
/// again later (a recorded pod, a node data path upgrade) gives the same.
struct FlagSet {
  IstioFlagValues flags;
  std::map<std::string, std::string> env;
  /// Resolves `given` against `env` (see build_capture_config).
  static FlagSet resolve(const IstioFlagValues& given, const EnvLookup& env);
  CaptureConfig build() const;
  nlohmann::json to_json() const;
  static FlagSet from_json(const nlohmann::json& j);
};

}  // namespace meshcap
