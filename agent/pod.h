// A pod as meshcap sees it: a cgroup v2 directory (where the connect hooks
// attach), a network namespace (where iptables rules and sk_lookup go) and a
// name (where pins and state live).
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace meshcap {

struct PodTarget {
  std::string name;
  std::string cgroup_dir;  // absolute path in the cgroup2 mount
  std::string netns_path;  // /proc/PID/ns/net, /run/netns/NAME, ...
};

/// The cgroup2 mount point from /proc/self/mountinfo, if any.
std::optional<std::string> cgroup2_mount();
/// The caller's own cgroup v2 directory.
std::optional<std::string> own_cgroup_dir();

/// Resolves `--netns` (a path, or a name under /run/netns; empty = the
/// caller's) and checks it is a network namespace. Throws UsageError.
std::string resolve_netns(const std::string& given);
/// Checks `dir` is a cgroup v2 directory that is not the root of the
/// hierarchy (meshcap never attaches to a root cgroup). Throws UsageError.
std::string validate_cgroup(const std::string& dir);
/// A stable name for a cgroup and netns pair: "cg<cgroup id>-ns<netns inode>".
std::string derive_pod_name(const std::string& cgroup_dir, const std::string& netns_path);

/// Where the agent records what it applied to a pod (mode, target, flags).
std::string state_file(const std::string& name);

}  // namespace meshcap
