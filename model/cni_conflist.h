// Putting meshcap-cni into the node's CNI configuration, as istio-cni's
// installer does: the plugin binary into the runtime's plugin directory,
// and an entry at the end of the primary network's plugin chain (the first
// configuration file in the directory, as the kubelet and libcni pick it; a
// single-plugin .conf becomes a .conflist). Idempotent, atomic writes.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace meshcap::cni {

struct InstallOptions {
  std::string conf_dir;
  std::string bin_dir;        ///< "" leaves the binaries alone
  std::string source_binary;  ///< the meshcap-cni binary to copy (meshcap-cni-local beside it goes too)
  nlohmann::json settings = nlohmann::json::object();  ///< keys of the entry besides "type"
};

/// The primary network configuration file in `conf_dir`, if any.
std::optional<std::string> primary_config(const std::string& conf_dir);
/// Adds the entry (and copies the binary when it differs). Returns the file
/// it changed, or "" when everything was already in place. Throws
/// std::runtime_error (no configuration file, an unreadable one).
std::string install_plugin(const InstallOptions& o);
/// Removes the entry from every configuration file in `conf_dir`, and the
/// binaries from `bin_dir` when given; true when anything was removed.
bool uninstall_plugin(const std::string& conf_dir, const std::string& bin_dir);

}  // namespace meshcap::cni
