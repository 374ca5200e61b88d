// Reading a pod's network namespace: addresses, interfaces, routes and its
// identity, from the calling thread, which enters it and comes back (setns
// is per thread), so the caller's namespace never changes.
#pragma once

#include <functional>
#include <optional>
#include <set>
#include <string>

#include "pod_network.h"

namespace meshcap::loader {

/// Reads the namespace at `netns_path`. Throws LoaderError.
PodNetwork read_pod_network(const std::string& netns_path);

/// Runs `job` on the calling thread inside the network namespace at
/// `netns_path` (a thread already there does not move) and brings the
/// thread back before returning, also when `job` throws (rethrown then).
/// A thread that cannot come back aborts the process rather than go on in
/// the pod's namespace. Returns the namespace's identity (no cookie).
/// Throws LoaderError when the namespace cannot be opened or entered.
/// The thread's own namespace is opened once per thread and kept: a thread
/// that changes its network namespace by other means must not call this
/// afterwards (calls nested in `job` are fine: they come back to the job's).
NetnsId in_network_namespace(const std::string& netns_path, const std::function<void()>& job);

/// The TCP ports with a listening socket in the calling thread's network
/// namespace: an inet_diag dump of listening sockets only (the kernel walks
/// its listening hash, not every connection of the machine as
/// /proc/net/tcp does). nullopt when it cannot tell.
std::optional<std::set<uint16_t>> listening_ports_here();
/// The identity of the namespace at `path` (no cookie; nullopt when `path`
/// is not there).
std::optional<NetnsId> netns_identity(const std::string& path);
/// The cookie of the namespace at `path` (SO_NETNS_COOKIE, from a socket
/// made inside it); 0 when it cannot tell (a kernel before 5.14, or the
/// namespace cannot be entered).
uint64_t netns_cookie(const std::string& path);
/// Whether `path` names the namespace `id`: the same device and inode and,
/// when both cookies are known, the same cookie. A namespace's inode number
/// goes to the next namespace made once it is gone (the kernel hands out
/// the lowest free one); a cookie is never given twice. Without a cookie on
/// either side, device and inode decide.
bool names_namespace(const std::string& path, const NetnsId& id);
/// A path that names the namespace `id` now (names_namespace), looked up in
/// /run/netns and in /proc/*/ns/net; nullopt when none does (the namespace
/// is gone, or held only by a bind mount elsewhere).
std::optional<std::string> find_netns(const NetnsId& id);

}  // namespace meshcap::loader
