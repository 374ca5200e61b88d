// Reading a pod's network namespace: addresses, interfaces, routes and its
// identity, from a helper thread that enters it (setns is per thread), so
// the caller's namespace never changes.
#pragma once

#include <optional>
#include <optional>
#include <set>
#include <string>

#include "pod_network.h"

namespace meshcap::loader {

/// Reads the namespace at `netns_path`. Throws LoaderError.
PodNetwork read_pod_network(const std::string& netns_path);

/// The TCP ports with a listening socket in the calling thread's network
/// namespace: an inet_diag dump of listening sockets only (the kernel walks
/// its listening hash, not every connection of the machine as
/// /proc/net/tcp does). nullopt when it cannot tell.
std::optional<std::set<uint16_t>> listening_ports_here();
/// The identity of the namespace at `path` (no cookie; nullopt when `path`
/// is not there).
std::optional<NetnsId> netns_identity(const std::string& path);
/// A path that names the namespace `id` now, looked up in /run/netns and in
/// /proc/*/ns/net; nullopt when none does (the namespace is gone, or held
/// only by a bind mount elsewhere).
std::optional<std::string> find_netns(const NetnsId& id);

}  // namespace meshcap::loader
