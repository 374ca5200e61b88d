// Where meshcap's BPF objects live in the BPF filesystem, so that capture
// outlives the process that set it up:
//   ROOT/node/            the node data path (meshcap node start)
//   ROOT/pods/NAME/       a per-pod data path (meshcap init without a node)
// and in each data path directory: link_* (cgroup links), map_* (maps),
// prog_sk_lookup, and pods/NAME/link_sk_lookup per enrolled pod.
// ROOT is /sys/fs/bpf/meshcap, or MESHCAP_PIN_DIR (tests keep theirs apart).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace meshcap::loader {

/// The pin root (MESHCAP_PIN_DIR or /sys/fs/bpf/meshcap).
std::string pin_root();
/// The node data path's directory.
std::string node_dir();
/// A per-pod data path's directory (ROOT/pods/NAME).
std::string pin_dir(const std::string& name);
/// Where a data path keeps what it made for enrolled pod `name`.
std::string pod_pins(const std::string& datapath_dir, const std::string& name);
/// Where new pins are made before they are renamed into place.
std::string staging_root();

/// Checks a pod name: 1-64 of [A-Za-z0-9_-]. Throws UsageError.
void validate_pod_name(const std::string& name);
/// Mounts the BPF filesystem at /sys/fs/bpf when it is not mounted there.
void ensure_bpffs();
/// Creates `dir` and its parents in the BPF filesystem.
void make_pin_dirs(const std::string& dir);
/// Removes what a killed process left in the staging area for a data path
/// directory named `base` ("<base>-<pid>" whose process is gone; "" any
/// base); true when there was something.
bool remove_dead_staging(const std::string& base);
/// Removes a pin directory and everything below it, detaching pinned links
/// first (a process may still hold them). Safe when it is not there.
void remove_tree(const std::string& dir);

/// A pinned link and whether it is still attached (its cgroup or network
/// namespace exists and nobody detached it).
struct PinnedLink {
  std::string pin;  ///< "link_connect4", ...
  bool attached = false;
  uint32_t prog_id = 0;
  uint64_t netns_ino = 0;  ///< for a netns link: the namespace it is attached to
  uint64_t cgroup_id = 0;  ///< for a cgroup link: the cgroup
};
/// The link_* pins directly in `dir`, sorted.
std::vector<PinnedLink> pinned_links(const std::string& dir);
/// Updates `l` from what the link open at `fd` says now: attached (a
/// detached link keeps its fd but loses its target), its program, its
/// target.
void read_link_state(int fd, PinnedLink& l);
/// Names of the per-pod data paths.
std::vector<std::string> pinned_pods();
/// Names of the pods a data path directory has pins for (pods/NAME).
std::vector<std::string> enrolled_pins(const std::string& datapath_dir);

}  // namespace meshcap::loader
