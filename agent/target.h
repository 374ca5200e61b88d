// The pod a command acts on: a network namespace (where iptables rules and
// sk_lookup go, and what identifies the pod), optionally a cgroup v2
// directory (where per-pod eBPF programs attach), and a name (where pins
// and the pod's record live).
#pragma once

#include <optional>
#include <string>

#include "pod_network.h"

namespace meshcap {

struct PodTarget {
  std::string name;
  std::string cgroup_dir;  ///< absolute path in the cgroup2 mount; "" when not given
  std::string netns_path;  ///< /proc/PID/ns/net, /run/netns/NAME, ...
  NetnsId netns;           ///< what netns_path names now
};

/// The cgroup2 mount point from /proc/self/mountinfo, if any (read once per
/// process while it stays a cgroup v2 mount).
std::optional<std::string> cgroup2_mount();

/// Resolves `--netns` (a path, or a name under /run/netns; empty = the
/// caller's) and checks it is a network namespace; `id`, when given, gets
/// its identity (no cookie). Throws UsageError.
std::string resolve_netns(const std::string& given, NetnsId* id = nullptr);
/// Checks `dir` is a cgroup v2 directory that is not the root of the
/// hierarchy (meshcap never attaches to a root cgroup). Throws UsageError.
std::string validate_cgroup(const std::string& dir);

/// The target from --name, --cgroup and --netns, all validated (UsageError).
/// Without --name the name is derived from the namespace: "ns<inode>", or
/// "cg<cgroup inode>-ns<netns inode>" with a cgroup.
PodTarget resolve_target(const std::string& name, const std::string& cgroup, const std::string& netns);

}  // namespace meshcap
