#include "cni_config.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <set>

namespace meshcap::cni {

namespace {

using nlohmann::json;

// The conflist entry's own keys (the CNI spec's) and meshcap's.
const std::set<std::string> kSpecKeys = {"cniVersion", "name", "type", "prevResult", "runtimeConfig",
                                         "args", "capabilities", "cni.dev/valid-attachments",
                                         "cni.dev/attachments"};
const std::set<std::string> kOwnKeys = {"mode", "exclude-namespaces", "exclude-pods", "log-level"};

// What istio-cni applies to a sidecar pod (its defaults for istio-init's
// arguments): -p 15001 -z 15006 -u 1337 -g 1337 -m REDIRECT -i '*' -x ''
// -b '*' -d 15090,15021,15020.
IstioFlagValues sidecar_defaults() {
  IstioFlagValues v;
  v.proxy_port = "15001";
  v.inbound_capture_port = "15006";
  v.proxy_uid = "1337";
  v.proxy_gid = "1337";
  v.inbound_interception_mode = "REDIRECT";
  v.service_cidr = "*";
  v.service_exclude_cidr = "";
  v.inbound_ports = "*";
  v.local_exclude_ports = "15090,15021,15020";
  return v;
}

std::string as_text(const json& value, const std::string& key) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_boolean()) return value.get<bool>() ? "true" : "false";
  if (value.is_number_integer() || value.is_number_unsigned()) return value.dump();
  throw CniError(kInvalidConfig, "invalid value for '" + key + "': expected a string, number or boolean");
}

std::vector<std::string> as_list(const json& value, const std::string& key) {
  if (!value.is_array()) throw CniError(kInvalidConfig, "invalid value for '" + key + "': expected a list of names");
  std::vector<std::string> out;
  for (const auto& v : value) {
    if (!v.is_string()) throw CniError(kInvalidConfig, "invalid value for '" + key + "': expected a list of names");
    out.push_back(v.get<std::string>());
  }
  return out;
}

// Sets one istio flag from `key`; false when it is not one.
bool set_flag(IstioFlagValues& v, const std::string& key, const json& value) {
  if (key == "network-namespace" || key == "dry-run")
    throw CniError(kInvalidConfig, "'" + key + "' cannot be set in the plugin's configuration");
  return set_istio_flag(v, key, as_text(value, key));
}

void apply_object(PluginConfig& c, const json& obj, const std::string& where, bool top) {
  for (const auto& [key, value] : obj.items()) {
    if (top && kSpecKeys.count(key)) continue;
    if (key == "mode") {
      auto m = mode_from_string(as_text(value, key));
      if (!m) throw CniError(kInvalidConfig, "invalid value for 'mode': '" + as_text(value, key) + "'",
                             "expected auto, ebpf or iptables");
      c.mode = *m;
    } else if (key == "exclude-namespaces") {
      c.exclude_namespaces = as_list(value, key);
    } else if (key == "exclude-pods") {
      c.exclude_pods = as_list(value, key);
    } else if (key == "log-level") {
      static const std::set<std::string> levels = {"trace", "debug", "info", "warn", "error", "off"};
      c.log_level = as_text(value, key);
      if (!levels.count(c.log_level))
        throw CniError(kInvalidConfig, "invalid value for 'log-level': '" + c.log_level + "'",
                       "expected trace, debug, info, warn, error or off");
    } else if (!set_flag(c.flags, key, value)) {
      throw CniError(kInvalidConfig, "unknown key '" + key + "' in " + where,
                     "keys are istio-iptables' long flag names (envoy-port, istio-service-cidr, ...) and mode, "
                     "exclude-namespaces, exclude-pods, log-level");
    }
  }
}

// CNI_ARGS keys MESHCAP_ENVOY_PORT=... -> "envoy-port".
void apply_args(PluginConfig& c, const CniEnv& env) {
  for (const auto& [k, v] : env.args) {
    if (k.rfind("MESHCAP_", 0) != 0) continue;
    std::string key = k.substr(8);
    for (auto& ch : key) ch = ch == '_' ? '-' : static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    apply_object(c, json{{key, v}}, "CNI_ARGS", false);
  }
}

}  // namespace

json CniError::to_json(const std::string& cni_version) const {
  json j = {{"cniVersion", cni_version.empty() ? "1.1.0" : cni_version}, {"code", code_}, {"msg", what()}};
  if (!details_.empty()) j["details"] = details_;
  return j;
}

const std::vector<std::string>& supported_versions() {
  static const std::vector<std::string> v = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};
  return v;
}

CniEnv read_env(const std::function<std::optional<std::string>(const std::string&)>& getenv) {
  CniEnv e;
  e.command = getenv("CNI_COMMAND").value_or("");
  static const std::set<std::string> commands = {"ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC"};
  if (e.command.empty()) throw CniError(kInvalidEnv, "CNI_COMMAND is not set");
  if (!commands.count(e.command))
    throw CniError(kInvalidEnv, "CNI_COMMAND: unknown command '" + e.command + "'",
                   "expected ADD, DEL, CHECK, VERSION, STATUS or GC");
  e.container_id = getenv("CNI_CONTAINERID").value_or("");
  e.netns = getenv("CNI_NETNS").value_or("");
  e.ifname = getenv("CNI_IFNAME").value_or("");
  const bool per_container = e.command == "ADD" || e.command == "DEL" || e.command == "CHECK";
  if (per_container && e.container_id.empty()) throw CniError(kInvalidEnv, "CNI_CONTAINERID is not set");
  if (per_container) {
    const bool ok = std::all_of(e.container_id.begin(), e.container_id.end(), [](unsigned char ch) {
      return std::isalnum(ch) || ch == '-' || ch == '_' || ch == '.';
    });
    if (!ok || e.container_id.size() > 256)
      throw CniError(kInvalidEnv, "CNI_CONTAINERID: invalid value '" + e.container_id + "'");
  }
  if ((e.command == "ADD" || e.command == "CHECK") && e.netns.empty()) throw CniError(kInvalidEnv, "CNI_NETNS is not set");
  if (per_container && e.command != "DEL" && e.ifname.empty()) throw CniError(kInvalidEnv, "CNI_IFNAME is not set");
  for (const auto& kv : split_list(getenv("CNI_ARGS").value_or(""), ';')) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) throw CniError(kInvalidEnv, "CNI_ARGS: invalid pair '" + kv + "'");
    e.args[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  return e;
}

PluginConfig parse_config(const std::string& stdin_text, const CniEnv& env) {
  PluginConfig c;
  json j;
  try {
    j = json::parse(stdin_text);
  } catch (const json::exception& e) {
    throw CniError(kDecodeFailure, "the network configuration is not valid JSON", e.what());
  }
  if (!j.is_object()) throw CniError(kDecodeFailure, "the network configuration is not a JSON object");
  c.raw = j;
  if (!j.contains("cniVersion") || !j["cniVersion"].is_string())
    throw CniError(kInvalidConfig, "the network configuration has no cniVersion");
  c.cni_version = j["cniVersion"].get<std::string>();
  const auto& versions = supported_versions();
  if (std::find(versions.begin(), versions.end(), c.cni_version) == versions.end())
    throw CniError(kIncompatibleVersion, "cniVersion '" + c.cni_version + "' is not supported",
                   "meshcap-cni speaks 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0");
  if (j.contains("name") && !j["name"].is_string())
    throw CniError(kInvalidConfig, "the network configuration's name is not a string");
  c.network_name = j.contains("name") ? j["name"].get<std::string>() : "";
  if (j.contains("type") && j["type"] != "meshcap-cni")
    throw CniError(kInvalidConfig, "this configuration is for plugin '" + j["type"].dump() + "'");
  c.flags = sidecar_defaults();
  apply_object(c, j, "the plugin's configuration", true);
  if (j.contains("runtimeConfig") && j["runtimeConfig"].is_object() && j["runtimeConfig"].contains("meshcap")) {
    const auto& rc = j["runtimeConfig"]["meshcap"];
    if (!rc.is_object()) throw CniError(kInvalidConfig, "runtimeConfig.meshcap: expected an object");
    apply_object(c, rc, "runtimeConfig.meshcap", false);
  }
  apply_args(c, env);
  if (j.contains("prevResult")) c.prev_result = j["prevResult"];
  // Every value is checked now, as init checks its flags: ADD and CHECK
  // refuse a bad one before touching anything. DEL takes what it is given
  // (it must clean up even after the configuration was broken).
  if (env.command != "DEL" && env.command != "GC" && env.command != "VERSION") {
    try {
      (void)FlagSet::resolve(c.flags, [](const std::string&) { return std::optional<std::string>(); }).build();
    } catch (const std::exception& e) {
      throw CniError(kInvalidConfig, e.what());
    }
  }
  return c;
}

std::string pod_name_for(const std::string& container_id) {
  std::string id;
  for (unsigned char ch : container_id)
    if (std::isalnum(ch) || ch == '-' || ch == '_') id += static_cast<char>(ch);
  return "cni-" + id.substr(0, 60);
}

nlohmann::json read_plugin_settings(const std::string& file, const std::string& flag) {
  const std::string bad = flag + ": invalid value '" + file + "': ";
  std::ifstream in(file);
  if (!in) throw UsageError(bad + "cannot read it");
  json settings = json::parse(in, nullptr, false);
  if (!settings.is_object()) throw UsageError(bad + "not a JSON object");
  json entry = settings;
  entry["cniVersion"] = "1.0.0";
  entry["name"] = "meshcap-check";
  entry["type"] = "meshcap-cni";
  CniEnv env;
  env.command = "ADD";
  try {
    (void)parse_config(entry.dump(), env);
  } catch (const CniError& e) {
    throw UsageError(bad + e.what());
  }
  return settings;
}

bool excluded(const PluginConfig& c, const CniEnv& env) {
  const std::string ns = env.arg("K8S_POD_NAMESPACE"), pod = env.arg("K8S_POD_NAME");
  if (!ns.empty() && std::count(c.exclude_namespaces.begin(), c.exclude_namespaces.end(), ns)) return true;
  for (const auto& p : c.exclude_pods)
    if ((!pod.empty() && p == pod) || (!ns.empty() && p == ns + "/" + pod)) return true;
  return false;
}

}  // namespace meshcap::cni
