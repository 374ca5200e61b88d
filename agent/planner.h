// The one place that decides which engine captures each part of a pod's
// traffic: eBPF where the kernel, the privileges, the flags and the place
// to attach allow it, iptables for the rest. A requested feature is never
// dropped: what eBPF cannot honour goes to iptables (in auto mode) or is
// refused (in ebpf mode). Pure: it reads only its inputs and the kernel
// features object (which a test fakes).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "capture_config.h"
#include "kernel_features.h"
#include "plan.h"
#include "pod_network.h"

namespace meshcap {

/// What the planner decides from.
struct PlanInput {
  CaptureConfig config;
  Mode mode = Mode::Auto;
  PodNetwork pod;
  /// Why eBPF has nowhere to attach for this pod (no cgroup given and no
  /// node data path), or nullopt when it has.
  std::optional<std::string> no_ebpf_host;
  bool accelerate = false;  ///< --accelerate
};

/// Kernel features and privileges the eBPF outbound path lacks (empty when
/// none); each entry is a reason as the plan prints it.
std::vector<std::string> missing_for_ebpf_outbound(loader::KernelFeatures& k);
/// ... and the inbound path (sk_lookup); `interfaces`: -c or -k given.
std::vector<std::string> missing_for_ebpf_inbound(loader::KernelFeatures& k, bool interfaces);
/// Flags the eBPF outbound / inbound path cannot honour (pod-independent).
std::vector<std::string> ebpf_unsupported_outbound(const CaptureConfig& cfg);
std::vector<std::string> ebpf_unsupported_inbound(const CaptureConfig& cfg);

/// The plan. In Mode::Ebpf a configuration eBPF cannot honour throws
/// UsageError, a kernel, privilege or attach point it lacks throws
/// std::runtime_error; nothing has been touched either way.
Plan make_plan(const PlanInput& in, loader::KernelFeatures& kernel);

}  // namespace meshcap
