// Reading a pod's network namespace: addresses, interfaces, routes and its
// identity, from a helper thread that enters it (setns is per thread), so
// the caller's namespace never changes.
#pragma once

#include <optional>
#include <string>

#include "pod_network.h"

namespace meshcap::loader {

/// Reads the namespace at `netns_path`. Throws LoaderError.
PodNetwork read_pod_network(const std::string& netns_path);
/// The identity of the namespace at `path` (no cookie; nullopt when `path`
/// is not there).
std::optional<NetnsId> netns_identity(const std::string& path);
/// A path that names the namespace `id` now, looked up in /run/netns and in
/// /proc/*/ns/net; nullopt when none does (the namespace is gone, or held
/// only by a bind mount elsewhere).
std::optional<std::string> find_netns(const NetnsId& id);

}  // namespace meshcap::loader
