// meshcap cleanup: removes what meshcap installed for a pod (or for every
// pod whose namespace or cgroup is gone), whatever the engines; safe twice.
#include <filesystem>

#include <spdlog/spdlog.h>

#include "pins.h"
#include "commands.h"
#include "executor.h"
#include "pod_state.h"
#include "status.h"
#include "target.h"

namespace meshcap {

namespace {

bool path_gone(const std::string& p) {
  std::error_code ec;
  return !p.empty() && !std::filesystem::exists(p, ec);
}

// A pod is stale when its namespace is gone, its cgroup is gone, or every
// pinned link of it is defunct.
bool stale(const std::string& name) {
  const auto st = read_pod_state(name, /*with_flags=*/false);
  const auto links = loader::pinned_links(loader::pin_dir(name));
  const bool links_defunct =
      !links.empty() && std::none_of(links.begin(), links.end(), [](const loader::PinnedLink& l) { return l.attached; });
  if (!st) return true;  // pins without a record: an init that never finished
  return !st->current_netns() || path_gone(st->cgroup) || links_defunct;
}

}  // namespace

int run_cleanup(const CleanupOptions& o) {
  if (o.all_stale) {
    int removed = 0;
    for (const auto& name : known_pods()) {
      if (!stale(name)) continue;
      // The namespace is gone or its capture is dead: remove pins and the
      // record; rules die with their namespace.
      const auto st = read_pod_state(name, /*with_flags=*/false);
      std::optional<std::string> ns = st ? st->current_netns() : std::nullopt;
      remove_capture(name, st, ns && st && st->iptables ? ns : std::nullopt);
      spdlog::info("pod {}: stale (network namespace, cgroup or links gone), removed", name);
      removed++;
    }
    // Staging directories of any pod whose init was killed half-way and
    // never run again (their links hold nothing once the cgroup is gone).
    if (loader::remove_dead_staging("")) spdlog::info("removed what killed runs left in staging");
    forget_gone_namespaces(std::nullopt);
    spdlog::info("{} stale pod(s) removed", removed);
    return kExitOk;
  }
  if (o.name.empty() && o.netns.empty())
    throw UsageError("cleanup: give --name, or --netns (with --cgroup when the pod was captured with one), or --all-stale");
  PodTarget t;
  std::optional<std::string> netns;
  if (!o.netns.empty()) netns = resolve_netns(o.netns);
  if (o.name.empty()) {
    t = resolve_target("", o.cgroup, o.netns);
  } else {
    loader::validate_pod_name(o.name);
    t.name = o.name;
  }
  const auto st = read_pod_state(t.name, /*with_flags=*/false);
  const bool removed = remove_capture(t.name, st, netns);
  spdlog::info("pod {}: {}", t.name, removed ? "capture removed" : "nothing to remove");
  return kExitOk;
}

}  // namespace meshcap
