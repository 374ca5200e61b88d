// Which engine captures each direction of a pod: eBPF where the kernel, the
// privileges and the flags allow it, iptables for the rest. A requested
// feature is never dropped: what eBPF cannot honour goes to iptables.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "capture_config.h"
#include "kernel_features.h"

namespace meshcap {

enum class Engine { None, Ebpf, Iptables };
std::string to_string(Engine e);

struct DirectionPlan {
  Engine engine = Engine::None;
  std::vector<std::string> reasons;  // why this engine (or why not eBPF)
};

struct Plan {
  DirectionPlan outbound;
  DirectionPlan inbound;
  bool uses_ebpf() const { return outbound.engine == Engine::Ebpf || inbound.engine == Engine::Ebpf; }
  bool uses_iptables() const {
    return outbound.engine == Engine::Iptables || inbound.engine == Engine::Iptables;
  }
  nlohmann::json to_json() const;
  /// One line: "outbound ebpf, inbound iptables (…)".
  std::string summary() const;
};

/// Kernel features and privileges the eBPF outbound path needs but lacks.
std::vector<std::string> missing_for_ebpf_outbound(loader::KernelFeatures& k);
/// ... and the inbound path (sk_lookup).
std::vector<std::string> missing_for_ebpf_inbound(loader::KernelFeatures& k);
/// True when the configuration asks for inbound capture at all.
bool inbound_requested(const CaptureConfig& cfg);

/// The plan for `mode` ("auto", "ebpf" or "iptables"). In "ebpf" mode a
/// configuration eBPF cannot honour throws UsageError; a kernel or privilege
/// it lacks throws std::runtime_error (nothing has been touched either way).
Plan make_plan(const CaptureConfig& cfg, loader::KernelFeatures& kernel, const std::string& mode);

/// The configuration the iptables rules are rendered from for a plan: the
/// full one when iptables captures outbound, else the same with outbound
/// capture switched off (eBPF does it).
CaptureConfig iptables_part(const CaptureConfig& cfg, const Plan& plan);

}  // namespace meshcap
