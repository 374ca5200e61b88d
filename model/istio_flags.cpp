#include "istio_flags.h"

#include <arpa/inet.h>

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

namespace meshcap {

namespace {

// One istio-iptables setting: its flag, its environment variables (later
// names win, as istio's AdditionalEnv overrides BindEnv), and where it lands.
struct FlagSpec {
  const char* flags;  // CLI11 spelling: "-p,--envoy-port"
  std::vector<const char*> env;
  std::optional<std::string> IstioFlagValues::*field;
  bool is_bool;
  const char* help;
};

const std::vector<FlagSpec>& flag_specs() {
  using V = IstioFlagValues;
  static const std::vector<FlagSpec> specs = {
      {"-p,--envoy-port", {}, &V::proxy_port, false, "Port to which all outbound TCP traffic is redirected (default 15001)"},
      {"-z,--inbound-capture-port", {"INBOUND_CAPTURE_PORT"}, &V::inbound_capture_port, false,
       "Port to which all inbound TCP traffic is redirected (default 15006)"},
      {"-e,--inbound-tunnel-port", {"INBOUND_TUNNEL_PORT"}, &V::inbound_tunnel_port, false,
       "Istio tunnel port for inbound TCP, never captured (default 15008)"},
      {"-u,--proxy-uid", {"PROXY_UID"}, &V::proxy_uid, false,
       "Comma-separated UIDs whose traffic is not captured (default: ENVOY_USER's UID or 1337)"},
      {"-g,--proxy-gid", {"PROXY_GID"}, &V::proxy_gid, false,
       "Comma-separated GIDs whose traffic is not captured (default: same as -u)"},
      {"-m,--istio-inbound-interception-mode", {"ISTIO_INBOUND_INTERCEPTION_MODE"}, &V::inbound_interception_mode,
       false, "Inbound interception mode: REDIRECT or TPROXY"},
      {"-t,--istio-inbound-tproxy-mark", {"ISTIO_INBOUND_TPROXY_MARK"}, &V::tproxy_mark, false,
       "TPROXY packet mark (default 1337)"},
      {"-r,--istio-inbound-tproxy-route-table", {"ISTIO_INBOUND_TPROXY_ROUTE_TABLE"}, &V::tproxy_route_table, false,
       "TPROXY route table (default 133)"},
      {"-b,--istio-inbound-ports", {"ISTIO_INBOUND_PORTS"}, &V::inbound_ports, false,
       "Comma-separated inbound ports to capture, '*' for all, empty for none"},
      {"-d,--istio-local-exclude-ports", {"ISTIO_LOCAL_EXCLUDE_PORTS"}, &V::local_exclude_ports, false,
       "Comma-separated inbound ports not captured when -b is '*'"},
      {"-c,--istio-exclude-interfaces", {"ISTIO_EXCLUDE_INTERFACES"}, &V::exclude_interfaces, false,
       "Comma-separated interfaces whose traffic is not captured"},
      {"-i,--istio-service-cidr", {"ISTIO_SERVICE_CIDR"}, &V::service_cidr, false,
       "Comma-separated outbound CIDRs to capture, '*' for all, empty for none"},
      {"-x,--istio-service-exclude-cidr", {"ISTIO_SERVICE_EXCLUDE_CIDR"}, &V::service_exclude_cidr, false,
       "Comma-separated outbound CIDRs not captured"},
      {"-q,--istio-outbound-ports", {"ISTIO_OUTBOUND_PORTS"}, &V::outbound_ports, false,
       "Comma-separated outbound ports always captured"},
      {"-o,--istio-local-outbound-ports-exclude", {"ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE"},
       &V::local_outbound_ports_exclude, false, "Comma-separated outbound ports never captured"},
      {"-k,--kube-virt-interfaces", {"KUBE_VIRT_INTERFACES"}, &V::kube_virt_interfaces, false,
       "Comma-separated virtual interfaces whose inbound traffic is treated as outbound"},
      {"--dns-servers", {}, &V::dns_servers, false,
       "Comma-separated DNS servers for --redirect-dns (default: nameservers of /etc/resolv.conf)"},
      {"--force-iptables-binary", {"FORCE_IPTABLES_BINARY"}, &V::force_iptables_binary, false,
       "iptables backend to use: nft or legacy (default: detect)"},
      {"--iptables-probe-port", {"IPTABLES_PROBE_PORT"}, &V::iptables_probe_port, false,
       "Port of the --run-validation probe listener (default 15002)"},
      {"--probe-timeout", {"PROBE_TIMEOUT"}, &V::probe_timeout, false,
       "Timeout of the --run-validation probe (Go duration, default 5s)"},
      {"--network-namespace", {"NETWORK_NAMESPACE"}, &V::network_namespace, false,
       "Network namespace to apply capture in (same as --netns)"},
      {"--redirect-dns", {"REDIRECT_DNS", "ISTIO_META_DNS_CAPTURE"}, &V::redirect_dns, true,
       "Capture DNS traffic to the agent's DNS proxy on 15053"},
      {"--capture-all-dns", {"CAPTURE_ALL_DNS"}, &V::capture_all_dns, true,
       "Capture all DNS traffic on port 53, not only to the resolvers"},
      {"--drop-invalid", {"DROP_INVALID", "INVALID_DROP"}, &V::drop_invalid, true,
       "Drop packets conntrack marks INVALID"},
      {"--dual-stack", {"DUAL_STACK", "ISTIO_DUAL_STACK"}, &V::dual_stack, true, "Capture IPv6 as well as IPv4"},
      {"--run-validation", {"RUN_VALIDATION"}, &V::run_validation, true,
       "Check capture with a probe connection after applying"},
      {"--skip-rule-apply", {"SKIP_RULE_APPLY"}, &V::skip_rule_apply, true, "Skip applying rules"},
  };
  return specs;
}

// Go's strconv.ParseBool.
std::optional<bool> parse_go_bool(const std::string& s) {
  for (const char* t : {"1", "t", "T", "TRUE", "true", "True"})
    if (s == t) return true;
  for (const char* f : {"0", "f", "F", "FALSE", "false", "False"})
    if (s == f) return false;
  return std::nullopt;
}

bool to_bool(const std::optional<std::string>& v, const std::string& what) {
  if (!v) return false;
  auto b = parse_go_bool(*v);
  if (!b) throw UsageError(what + ": invalid value '" + *v + "': expected true or false");
  return *b;
}

// A packet mark or route table: decimal or 0x-hex, 32 bits.
void check_u32(const std::string& text, const std::string& what, bool allow_zero) {
  bool hex = text.rfind("0x", 0) == 0 || text.rfind("0X", 0) == 0;
  std::string digits = hex ? text.substr(2) : text;
  bool ok = !digits.empty() && digits.size() <= (hex ? 8u : 10u);
  for (unsigned char ch : digits) ok = ok && (hex ? std::isxdigit(ch) : std::isdigit(ch));
  if (ok) {
    unsigned long long v = std::stoull(digits, nullptr, hex ? 16 : 10);
    ok = v <= 0xffffffffULL && (allow_zero || v != 0);
  }
  if (!ok) throw UsageError(what + ": invalid value '" + text + "': expected a 32-bit number");
}

// Go's time.ParseDuration for the simple forms istio users write: "5s",
// "500ms", "1m", "1.5s".
double parse_duration_seconds(const std::string& text, const std::string& what) {
  static const std::vector<std::pair<std::string, double>> units = {
      {"ms", 1e-3}, {"us", 1e-6}, {"ns", 1e-9}, {"s", 1}, {"m", 60}, {"h", 3600}};
  for (const auto& [suffix, scale] : units) {
    if (text.size() > suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0) {
      std::string num = text.substr(0, text.size() - suffix.size());
      char* end = nullptr;
      double v = std::strtod(num.c_str(), &end);
      if (end && *end == '\0' && v >= 0 && std::isdigit(static_cast<unsigned char>(num[0])))
        return v * scale;
      break;
    }
  }
  throw UsageError(what + ": invalid value '" + text + "': expected a duration such as 5s or 500ms");
}

// Nameservers of a resolv.conf, in order.
std::vector<std::string> resolv_conf_nameservers(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw UsageError("--dns-servers: not given and cannot read '" + path + "' for nameservers");
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string key, value;
    if (words >> key >> value && key == "nameserver") out.push_back(value);
  }
  return out;
}

}  // namespace

EnvLookup process_env() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (!v) return std::nullopt;
    return std::string(v);
  };
}

void add_istio_flags(CLI::App& app, IstioFlagValues& values, bool with_dry_run) {
  for (const auto& spec : flag_specs()) {
    auto* target = &(values.*spec.field);
    if (spec.is_bool) {
      // `--dual-stack` alone means true; `--dual-stack=false` is accepted too.
      app.add_option_function<std::string>(
             spec.flags, [target](const std::string& v) { *target = v; }, spec.help)
          ->expected(0, 1)
          ->default_str("true")
          ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    } else {
      // Given twice, the last one wins, as with istio's pflag.
      app.add_option_function<std::string>(
             spec.flags, [target](const std::string& v) { *target = v; }, spec.help)
          ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    }
  }
  if (with_dry_run) {
    app.add_option_function<std::string>(
           "-n,--dry-run", [&values](const std::string& v) { values.dry_run = v; },
           "Print the rules instead of applying them")
        ->expected(0, 1)
        ->default_str("true");
  }
}

namespace {

// Flags filled in from istio's environment variables where not given (later
// names override earlier ones).
IstioFlagValues with_environment(const IstioFlagValues& given, const EnvLookup& env) {
  IstioFlagValues v = given;
  for (const auto& spec : flag_specs()) {
    if (v.*spec.field) continue;
    for (const char* name : spec.env) {
      if (auto value = env(name)) v.*spec.field = *value;
    }
  }
  if (!v.dry_run) {
    if (auto value = env("DRY_RUN")) v.dry_run = *value;
  }
  return v;
}

// A list flag's value: the text itself, or, as "@PATH" ("@-" for standard
// input), the contents of a file with items separated by commas, spaces or
// new lines (a 10,000-CIDR -x does not fit in an argument list).
std::string list_value(const std::optional<std::string>& v, const std::string& what) {
  if (!v || v->empty() || (*v)[0] != '@') return v.value_or("");
  const std::string path = v->substr(1);
  std::ifstream file;
  std::istream* in = &std::cin;
  if (path != "-") {
    file.open(path);
    if (!file) throw UsageError(what + ": invalid value '" + *v + "': cannot read " + path);
    in = &file;
  }
  std::string out, word;
  while (*in >> word) {
    if (word[0] == '#') {
      std::string rest;
      std::getline(*in, rest);
      continue;
    }
    out += (out.empty() ? "" : ",") + word;
  }
  return out;
}

void require_resolved(const IdList& list, const std::string& what, const char* kind) {
  for (size_t i = 0; i < list.tokens.size(); i++)
    if (!list.ids[i])
      throw UsageError(what + ": invalid value '" + list.tokens[i] + "': no such " + kind + " on this machine");
}

// -p, -z and -e.
void read_capture_ports(const IstioFlagValues& v, CaptureConfig& c) {
  if (v.proxy_port && !v.proxy_port->empty()) {
    c.proxy_port = parse_port(*v.proxy_port, "-p");
    c.proxy_port_text = *v.proxy_port;
  }
  if (v.inbound_capture_port && !v.inbound_capture_port->empty()) {
    c.inbound_capture_port = parse_port(*v.inbound_capture_port, "-z");
    c.inbound_capture_port_text = *v.inbound_capture_port;
  }
  if (v.inbound_tunnel_port && !v.inbound_tunnel_port->empty()) {
    c.inbound_tunnel_port = parse_port(*v.inbound_tunnel_port, "-e");
    c.inbound_tunnel_port_text = *v.inbound_tunnel_port;
  }
}

void read_proxy_ids(const IstioFlagValues& v, const EnvLookup& env, CaptureConfig& c) {
  // -u defaults to ENVOY_USER's UID (user "istio-proxy"), else 1337; -g to -u.
  std::string uids = v.proxy_uid.value_or("");
  if (uids.empty()) {
    std::string user = env("ENVOY_USER").value_or("istio-proxy");
    const auto uid = lookup_account(user, false);
    uids = uid ? std::to_string(*uid) : "1337";
  }
  c.proxy_uids = parse_id_list(uids, "-u", false);
  if (c.proxy_uids.empty()) throw UsageError("-u: invalid value '" + uids + "': no UID given");
  std::string gids = v.proxy_gid.value_or("");
  if (gids.empty()) gids = uids;
  c.proxy_gids = parse_id_list(gids, "-g", true);
  if (c.proxy_gids.empty()) throw UsageError("-g: invalid value '" + gids + "': no GID given");
}

// -m, -t and -r.
void read_interception(const IstioFlagValues& v, CaptureConfig& c) {
  const std::string mode = v.inbound_interception_mode.value_or("");
  if (mode == "TPROXY") {
    c.inbound_mode = InterceptionMode::Tproxy;
  } else if (mode == "REDIRECT" || mode.empty()) {
    c.inbound_mode = InterceptionMode::Redirect;
  } else {
    throw UsageError("-m: invalid value '" + mode + "': expected REDIRECT or TPROXY");
  }
  if (v.tproxy_mark && !v.tproxy_mark->empty()) {
    check_u32(*v.tproxy_mark, "-t", false);
    c.tproxy_mark = *v.tproxy_mark;
  }
  if (v.tproxy_route_table && !v.tproxy_route_table->empty()) {
    check_u32(*v.tproxy_route_table, "-r", false);
    c.tproxy_route_table = *v.tproxy_route_table;
  }
}

// The port, CIDR and interface lists.
void read_lists(const IstioFlagValues& v, CaptureConfig& c) {
  c.inbound_ports_include = parse_port_list(list_value(v.inbound_ports, "-b"), "-b", true);
  c.inbound_ports_exclude = parse_port_list(list_value(v.local_exclude_ports, "-d"), "-d", false);
  c.outbound_ports_include = parse_port_list(list_value(v.outbound_ports, "-q"), "-q", false);
  c.outbound_ports_exclude = parse_port_list(list_value(v.local_outbound_ports_exclude, "-o"), "-o", false);
  c.outbound_ranges_include = parse_cidr_list(list_value(v.service_cidr, "-i"), "-i", true);
  c.outbound_ranges_exclude = parse_cidr_list(list_value(v.service_exclude_cidr, "-x"), "-x", false);
  c.exclude_interfaces = parse_interface_list(v.exclude_interfaces.value_or(""), "-c");
  c.reroute_virtual_interfaces = parse_interface_list(v.kube_virt_interfaces.value_or(""), "-k");
}

void read_owner_groups(const EnvLookup& env, CaptureConfig& c) {
  // Owner groups (env only): include "*" means "all except the exclude list".
  const std::string groups_in = env("ISTIO_OUTBOUND_OWNER_GROUPS").value_or("*");
  const std::string groups_ex = env("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE").value_or("");
  if (groups_in == "*") {
    c.owner_groups_except = true;
    c.owner_groups = parse_id_list(groups_ex, "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", true);
  } else {
    c.owner_groups_except = false;
    c.owner_groups = parse_id_list(groups_in, "ISTIO_OUTBOUND_OWNER_GROUPS", true);
    if (c.owner_groups.tokens.size() > 64)
      throw UsageError("ISTIO_OUTBOUND_OWNER_GROUPS: invalid value '" + groups_in +
                       "': at most 64 groups, got " + std::to_string(c.owner_groups.tokens.size()));
  }
}

void read_loopback_cidr(const EnvLookup& env, CaptureConfig& c) {
  c.ipv4_loopback_cidr_text = env("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR").value_or("127.0.0.1/32");
  c.ipv4_loopback_cidr = parse_cidr(c.ipv4_loopback_cidr_text, "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR");
  if (c.ipv4_loopback_cidr.family != AF_INET || !c.ipv4_loopback_cidr.is_loopback() ||
      c.ipv4_loopback_cidr.prefix_len < 8)
    throw UsageError("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR: invalid value '" + c.ipv4_loopback_cidr_text +
                     "': expected an IPv4 loopback CIDR with a mask of 8 to 32 bits");
}

// The on/off flags (--dry-run only checked: the caller acts on it).
void read_switches(const IstioFlagValues& v, CaptureConfig& c) {
  c.redirect_dns = to_bool(v.redirect_dns, "--redirect-dns");
  c.capture_all_dns = to_bool(v.capture_all_dns, "--capture-all-dns");
  c.drop_invalid = to_bool(v.drop_invalid, "--drop-invalid");
  c.dual_stack = to_bool(v.dual_stack, "--dual-stack");
  c.run_validation = to_bool(v.run_validation, "--run-validation");
  c.skip_rule_apply = to_bool(v.skip_rule_apply, "--skip-rule-apply");
  (void)to_bool(v.dry_run, "--dry-run");
}

// --dns-servers, else (DNS redirected but not all of it) resolv.conf's nameservers.
void read_dns_servers(const IstioFlagValues& v, const std::string& resolv_conf, CaptureConfig& c) {
  std::vector<std::string> servers;
  if (v.dns_servers) {
    servers = split_list(*v.dns_servers);
  } else if (c.redirect_dns && !c.capture_all_dns) {
    servers = resolv_conf_nameservers(resolv_conf);
  }
  for (const auto& s : servers) {
    unsigned char buf[16];
    if (inet_pton(AF_INET, s.c_str(), buf) == 1) {
      c.dns_servers_v4.push_back(s);
    } else if (inet_pton(AF_INET6, s.c_str(), buf) == 1) {
      c.dns_servers_v6.push_back(s);
    } else {
      throw UsageError("--dns-servers: invalid value '" + s + "': not an IP address");
    }
  }
}

// The iptables backend and probe settings.
void read_iptables_options(const IstioFlagValues& v, CaptureConfig& c) {
  if (v.force_iptables_binary) {
    const auto& b = *v.force_iptables_binary;
    if (!b.empty() && b != "nft" && b != "legacy")
      throw UsageError("--force-iptables-binary: invalid value '" + b + "': expected nft or legacy");
    c.force_iptables_binary = b;
  }
  if (v.iptables_probe_port && !v.iptables_probe_port->empty())
    c.iptables_probe_port = parse_port(*v.iptables_probe_port, "--iptables-probe-port");
  if (v.probe_timeout && !v.probe_timeout->empty())
    c.probe_timeout_seconds = parse_duration_seconds(*v.probe_timeout, "--probe-timeout");
}

}  // namespace

void require_resolved_ids(const CaptureConfig& c) {
  require_resolved(c.proxy_uids, "-u", "user");
  require_resolved(c.proxy_gids, "-g", "group");
  require_resolved(c.owner_groups,
                   c.owner_groups_except ? "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE" : "ISTIO_OUTBOUND_OWNER_GROUPS",
                   "group");
}

CaptureConfig build_capture_config(const IstioFlagValues& given, const EnvLookup& env,
                                   const std::string& resolv_conf) {
  const IstioFlagValues v = with_environment(given, env);

  CaptureConfig c;
  read_capture_ports(v, c);
  read_proxy_ids(v, env, c);
  read_interception(v, c);
  read_lists(v, c);
  read_owner_groups(env, c);
  read_loopback_cidr(env, c);
  read_switches(v, c);
  read_dns_servers(v, resolv_conf, c);
  read_iptables_options(v, c);
  return c;
}

CaptureConfig parse_capture_args(const std::vector<std::string>& args, const EnvLookup& env) {
  CLI::App app{"istio-iptables"};
  IstioFlagValues values;
  add_istio_flags(app, values, true);
  std::vector<std::string> reversed(args.rbegin(), args.rend());
  try {
    app.parse(reversed);
  } catch (const CLI::ParseError& e) {
    throw UsageError(e.what());
  }
  return build_capture_config(values, env);
}

namespace {

// "-p,--envoy-port" -> "envoy-port".
std::string long_name(const FlagSpec& spec) {
  std::string f = spec.flags;
  return f.substr(f.find("--") + 2);
}

std::string long_name_of(std::optional<std::string> IstioFlagValues::*field) {
  for (const auto& spec : flag_specs())
    if (spec.field == field) return long_name(spec);
  return "?";
}

}  // namespace

std::vector<std::string> istio_flag_names() {
  std::vector<std::string> out;
  for (const auto& spec : flag_specs()) out.push_back(long_name(spec));
  return out;
}

bool set_istio_flag(IstioFlagValues& values, const std::string& name, const std::string& value) {
  for (const auto& spec : flag_specs())
    if (long_name(spec) == name) {
      values.*spec.field = value;
      return true;
    }
  return false;
}

nlohmann::json istio_flags_to_json(const IstioFlagValues& values) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& spec : flag_specs())
    if (values.*spec.field) j[long_name(spec)] = *(values.*spec.field);
  return j;
}

IstioFlagValues istio_flags_from_json(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) throw UsageError(where + ": expected an object of istio-iptables flags");
  IstioFlagValues v;
  for (const auto& [key, value] : j.items()) {
    std::string text;
    if (value.is_string())
      text = value.get<std::string>();
    else if (value.is_boolean())
      text = value.get<bool>() ? "true" : "false";
    else if (value.is_number_unsigned() || value.is_number_integer())
      text = value.dump();
    else
      throw UsageError(where + ": invalid value for '" + key + "': expected a string, number or boolean");
    if (!set_istio_flag(v, key, text)) throw UsageError(where + ": unknown key '" + key + "'");
  }
  return v;
}

const std::vector<std::string>& env_only_settings() {
  static const std::vector<std::string> names = {"ISTIO_OUTBOUND_OWNER_GROUPS", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
                                                 "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "ENVOY_USER"};
  return names;
}

FlagSet FlagSet::resolve(const IstioFlagValues& given, const EnvLookup& env) {
  FlagSet f;
  f.flags = with_environment(given, env);
  // Lists given as @FILE are read now, once: the set stands on its own.
  for (auto field : {&IstioFlagValues::inbound_ports, &IstioFlagValues::local_exclude_ports,
                     &IstioFlagValues::outbound_ports, &IstioFlagValues::local_outbound_ports_exclude,
                     &IstioFlagValues::service_cidr, &IstioFlagValues::service_exclude_cidr})
    if (f.flags.*field) f.flags.*field = list_value(f.flags.*field, "--" + long_name_of(field));
  f.flags.dry_run.reset();
  f.flags.network_namespace.reset();
  for (const auto& name : env_only_settings())
    if (auto v = env(name)) f.env[name] = *v;
  return f;
}

CaptureConfig FlagSet::build() const {
  auto lookup = [this](const std::string& name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  };
  return build_capture_config(flags, lookup);
}

nlohmann::json FlagSet::to_json() const { return {{"flags", istio_flags_to_json(flags)}, {"env", env}}; }

FlagSet FlagSet::from_json(const nlohmann::json& j) {
  FlagSet f;
  f.flags = istio_flags_from_json(j.at("flags"), "flags");
  f.env = j.value("env", std::map<std::string, std::string>{});
  return f;
}

}  // namespace meshcap
