#include "cni_plugin.h"

#include <spdlog/spdlog.h>

#include <filesystem>
#include <set>

#include "capture.h"
#include "cni_config.h"
#include "executor.h"
#include "host.h"
#include "pod_state.h"
#include "status.h"

namespace meshcap::cni {

namespace {

using nlohmann::json;

// JSON for stdout; bytes that are not UTF-8 (a namespace path, CNI_ARGS)
// are replaced, never a reason to fail.
std::string text(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n"; }

// No istio environment variables in the plugin: the runtime's environment is
// not the pod's; settings come from the configuration alone.
EnvLookup no_env() {
  return [](const std::string&) { return std::optional<std::string>(); };
}

// What ADD prints: the previous plugin's result, unchanged (a chained plugin
// that adds no interface), or a result with no interfaces when first.
json result_of(const PluginConfig& c) {
  if (c.prev_result) return *c.prev_result;
  return {{"cniVersion", c.cni_version}};
}

json cmd_add(const PluginConfig& c, const CniEnv& env) {
  if (excluded(c, env)) {
    spdlog::info("pod {}/{} excluded by name: not captured", env.arg("K8S_POD_NAMESPACE"), env.arg("K8S_POD_NAME"));
    return result_of(c);
  }
  CaptureRequest r;
  r.node = NodeView::read();
  if (r.node->not_ready())
    throw CniError(kTryAgainLater, "the node data path is not ready",
                   "a node data path is configured here but is not whole (starting, or an upgrade was interrupted); "
                   "the pod is not started uncaptured");
  r.name = pod_name_for(env.container_id);
  r.netns = env.netns;
  r.mode = c.mode;
  r.origin = {"cni", env.container_id, env.ifname, env.arg("K8S_POD_NAMESPACE"), env.arg("K8S_POD_NAME")};
  PlannedCapture p;
  try {
    r.flags = FlagSet::resolve(c.flags, no_env());
    p = plan_capture(r, true);
  } catch (const UsageError& e) {
    throw CniError(kInvalidConfig, e.what());
  }
  PodState st;
  std::string why;
  try {
    if (!apply_capture(r, p, st, why)) throw CniError(kCaptureFailed, "capture validation failed", why);
  } catch (const CniError&) {
    throw;
  } catch (const std::exception& e) {
    throw CniError(kCaptureFailed, "capture could not be put in place", e.what());
  }
  return result_of(c);
}

void cmd_del(const CniEnv& env) {
  const std::string name = pod_name_for(env.container_id);
  const auto st = read_pod_state(name);
  std::optional<std::string> ns;
  std::error_code ec;
  if (!env.netns.empty() && std::filesystem::exists(env.netns, ec)) ns = env.netns;
  // iptables only in a namespace this pod's record names (or the one the
  // runtime gives for it): remove_capture never touches another.
  if (!st) ns.reset();
  remove_capture(name, st, ns);
}

void cmd_check(const PluginConfig& c, const CniEnv& env) {
  if (!c.prev_result) throw CniError(kInvalidConfig, "CHECK needs prevResult");
  if (excluded(c, env)) return;
  const std::string name = pod_name_for(env.container_id);
  if (!read_pod_state(name)) throw CniError(kUnknownContainer, "no capture recorded for container " + env.container_id);
  const json st = pod_status(name);
  if (!st["drift"].empty()) throw CniError(kCaptureDrifted, "the pod's capture drifted", st["drift"].dump(-1, ' ', false, json::error_handler_t::replace));
}

json cmd_status() {
  if (node_not_ready())
    throw CniError(kNotAvailable, "the node data path is not ready", "pods added now would wait (try again later)");
  return json::object();
}

void cmd_gc(const PluginConfig& c) {
  std::set<std::string> valid;
  if (c.raw.contains("cni.dev/valid-attachments")) {
    const json& list = c.raw["cni.dev/valid-attachments"];
    if (!list.is_array()) throw CniError(kInvalidConfig, "cni.dev/valid-attachments: expected a list");
    for (const auto& a : list) {
      if (!a.is_object() || !a.contains("containerID") || !a["containerID"].is_string())
        throw CniError(kInvalidConfig, "cni.dev/valid-attachments: each attachment needs a containerID string");
      valid.insert(a["containerID"].get<std::string>());
    }
  }
  for (const auto& name : recorded_pods()) {
    const auto st = read_pod_state(name);
    if (!st || st->origin.via != "cni" || valid.count(st->origin.container_id)) continue;
    spdlog::info("gc: container {} is gone, removing its capture", st->origin.container_id);
    remove_capture(name, st, std::nullopt);
  }
}

}  // namespace

Reply run(const std::function<std::optional<std::string>(const std::string&)>& getenv, const std::string& stdin_text) {
  std::string version = "1.1.0";
  try {
    const CniEnv env = read_env(getenv);
    if (env.command == "VERSION") {
      // VERSION may come with a configuration naming the version to answer in.
      try {
        auto j = json::parse(stdin_text.empty() ? "{}" : stdin_text);
        if (j.is_object() && j.contains("cniVersion") && j["cniVersion"].is_string()) version = j["cniVersion"];
      } catch (const json::exception&) {
      }
      return {0, json{{"cniVersion", version}, {"supportedVersions", supported_versions()}}.dump() + "\n"};
    }
    const PluginConfig c = parse_config(stdin_text, env);
    version = c.cni_version;
    spdlog::set_level(spdlog::level::from_str(c.log_level));  // checked by parse_config
    if (env.command == "ADD") return {0, text(cmd_add(c, env))};
    if (env.command == "DEL") {
      cmd_del(env);
      return {0, ""};
    }
    if (env.command == "CHECK") {
      cmd_check(c, env);
      return {0, ""};
    }
    if (env.command == "STATUS") {
      cmd_status();
      return {0, ""};
    }
    cmd_gc(c);
    return {0, ""};
  } catch (const CniError& e) {
    spdlog::error("{}{}", e.what(), e.details().empty() ? "" : " (" + e.details() + ")");
    return {1, text(e.to_json(version))};
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return {1, text(CniError(kCaptureFailed, e.what()).to_json(version))};
  }
}

}  // namespace meshcap::cni
