// Carrying out a Plan: the eBPF part first (all or nothing inside), then the
// iptables part; a part the kernel refuses at run time moves to iptables
// with Plan::fall_back_to_iptables (auto mode) before anything of it stays
// attached. The executors check nothing the planner decided.
#pragma once

#include <optional>
#include <string>

#include "plan.h"
#include "pod_network.h"
#include "pod_state.h"
#include "target.h"

namespace meshcap {

/// Applies `plan` (which may change: a refused eBPF part falls back) to the
/// pod. Returns the iptables part applied, if any. On failure nothing of
/// this run stays applied, and the exception propagates (LoaderError,
/// IptablesError, std::runtime_error).
std::optional<PodState::Iptables> apply_plan(Plan& plan, const PodTarget& target, const PodNetwork& pod);

/// Removes the capture a pod's record describes, and whatever else meshcap
/// left for that name: eBPF pins, and iptables in `netns_path` when given
/// (the record's namespace when it still exists otherwise). True when
/// anything was removed.
bool remove_capture(const std::string& name, const std::optional<PodState>& st,
                    const std::optional<std::string>& netns_path);

/// Removes meshcap's iptables capture from the namespace at `netns_path`
/// (rules of `cfg`'s TPROXY routing too); true when anything was removed.
bool remove_iptables(const std::string& netns_path, const CaptureConfig& cfg);

/// Where the iptables engine keeps what it applied per namespace.
std::string iptables_state_dir();

}  // namespace meshcap
