// Carrying out a Plan: the eBPF part first (all or nothing inside), then the
// iptables part; a part the kernel refuses at run time moves to iptables
// with Plan::fall_back_to_iptables (auto mode) before anything of it stays
// in place. The executors check nothing the planner decided.
#pragma once

#include <optional>
#include <string>

#include "host.h"
#include "plan.h"
#include "pod_network.h"
#include "pod_state.h"
#include "target.h"

namespace meshcap {

/// What apply_plan put in place.
struct Applied {
  std::optional<PodState::Ebpf> ebpf;
  std::optional<PodState::Iptables> iptables;
};

/// Applies `plan` (which may change: a refused eBPF part falls back) to the
/// pod, on `host` for its eBPF part. On failure nothing of this run stays
/// applied (a previous capture of the pod is left as it was), and the
/// exception propagates (LoaderError, IptablesError, std::runtime_error).
Applied apply_plan(Plan& plan, const PodTarget& target, const PodNetwork& pod, const EbpfHost& host);

/// Takes pod `name` out of the node data path its record names; true when
/// it was there.
bool unenroll_from_node(const std::string& name, const PodState& st);
/// Removes the pod's own data path (and what a killed init staged); true
/// when there was one.
bool remove_own_data_path(const std::string& name);
/// Both of the above, as far as the record (if any) says.
bool remove_ebpf(const std::string& name, const std::optional<PodState>& st);
/// Removes meshcap's iptables capture from the namespace at `netns_path`
/// (rules of `cfg`'s TPROXY routing too); true when anything was removed.
bool remove_iptables(const std::string& netns_path, const CaptureConfig& cfg);
/// The same for pod `st`'s capture, its configuration made only if needed.
bool remove_iptables(const std::string& netns_path, const std::optional<PodState>& st);
/// Removes everything of pod `name`: eBPF, iptables in `netns_path` when
/// given (the record's namespace when it still exists otherwise; never a
/// namespace made later with its inode number), and its record. True when
/// anything was removed.
bool remove_capture(const std::string& name, const std::optional<PodState>& st,
                    const std::optional<std::string>& netns_path);
/// Forgets what the iptables engine kept of namespaces that are gone (of
/// `only`, or of every namespace it keeps something of): their rules went
/// with them. Kept while a pod's record names the device and inode, or a
/// namespace with them can be found (the record is that one's then).
void forget_gone_namespaces(const std::optional<NetnsId>& only);

/// Where the iptables engine keeps what it applied per namespace.
std::string iptables_state_dir();

}  // namespace meshcap
