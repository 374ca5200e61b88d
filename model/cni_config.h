// meshcap-cni's input: the CNI environment (CNI_COMMAND, CNI_CONTAINERID,
// CNI_NETNS, CNI_IFNAME, CNI_ARGS) and the network configuration on stdin
// (the plugin's entry of the conflist, with prevResult and runtimeConfig),
// checked whole before anything is touched. Every problem is a CniError
// carrying the CNI error code the runtime sees.
#pragma once

#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "istio_flags.h"
#include "plan.h"

namespace meshcap::cni {

/// CNI's well-known error codes (spec 1.1, "Error"), and meshcap's own.
enum ErrorCode : int {
  kIncompatibleVersion = 1,
  kUnsupportedField = 2,
  kUnknownContainer = 3,
  kInvalidEnv = 4,
  kIoFailure = 5,
  kDecodeFailure = 6,
  kInvalidConfig = 7,
  kTryAgainLater = 11,
  kNotAvailable = 50,          ///< STATUS: the plugin cannot serve ADDs now
  kCaptureFailed = 100,        ///< ADD: capture could not be put in place
  kCaptureDrifted = 101,       ///< CHECK: the pod's capture is not what ADD made
};

/// A failure as the runtime sees it: CNI error JSON on stdout.
class CniError : public std::runtime_error {
 public:
  CniError(int code, const std::string& msg, std::string details = "")
      : std::runtime_error(msg), code_(code), details_(std::move(details)) {}
  int code() const { return code_; }
  const std::string& details() const { return details_; }
  nlohmann::json to_json(const std::string& cni_version) const;

 private:
  int code_;
  std::string details_;
};

/// The CNI versions meshcap-cni speaks (VERSION lists them).
const std::vector<std::string>& supported_versions();

/// The CNI environment of one invocation.
struct CniEnv {
  std::string command;       ///< ADD, DEL, CHECK, VERSION, STATUS, GC
  std::string container_id;  ///< CNI_CONTAINERID
  std::string netns;         ///< CNI_NETNS
  std::string ifname;        ///< CNI_IFNAME
  std::map<std::string, std::string> args;  ///< CNI_ARGS, "K=V;K=V"
  /// One CNI_ARGS value ("" when absent).
  std::string arg(const std::string& key) const {
    auto it = args.find(key);
    return it == args.end() ? std::string() : it->second;
  }
};

/// The plugin's configuration for one pod: istio's flags (defaults of a
/// sidecar pod under istio-cni, the conflist entry, runtimeConfig.meshcap,
/// then MESHCAP_* keys of CNI_ARGS, later ones winning), and meshcap's own.
struct PluginConfig {
  std::string cni_version;
  std::string network_name;
  Mode mode = Mode::Auto;
  IstioFlagValues flags;
  std::vector<std::string> exclude_namespaces;
  std::vector<std::string> exclude_pods;  ///< "NAMESPACE/NAME" or "NAME"
  std::string log_level = "info";
  std::optional<nlohmann::json> prev_result;
  nlohmann::json raw;  ///< the configuration as given (GC reads its attachments)
};

/// Reads the environment (`getenv` injected for tests). Throws CniError
/// (kInvalidEnv) for what `command` needs and is missing or malformed.
CniEnv read_env(const std::function<std::optional<std::string>(const std::string&)>& getenv);
/// Parses the network configuration for `env`. Throws CniError: malformed
/// JSON (kDecodeFailure), an unsupported cniVersion (kIncompatibleVersion),
/// an unknown key or a bad value (kInvalidConfig).
PluginConfig parse_config(const std::string& stdin_text, const CniEnv& env);
/// Reads a file of plugin entry keys (what `meshcap node serve
/// --cni-plugin-config` and `meshcap-cni install --settings` put into the
/// conflist) and checks them as an ADD would parse them. Throws UsageError
/// naming `flag` and the file for anything unreadable or invalid.
nlohmann::json read_plugin_settings(const std::string& file, const std::string& flag);
/// The pod's record name for a container: "cni-" and its id (sanitized).
std::string pod_name_for(const std::string& container_id);
/// Whether the pod is excluded by namespace or name (K8S_POD_NAMESPACE,
/// K8S_POD_NAME in CNI_ARGS).
bool excluded(const PluginConfig& c, const CniEnv& env);

}  // namespace meshcap::cni
