// The Plan: which engine captures each part of a pod's traffic, why, and
// what each engine is given. Made once by the planner (agent/planner.h),
// printed by --dry-run, carried out by the executors, recorded in the pod's
// state. A part the kernel refuses at run time moves with
// fall_back_to_iptables(); nothing re-plans.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "capture_config.h"

namespace meshcap {

/// How the caller asked for capture.
enum class Mode { Auto, Ebpf, Iptables };
/// What captures a part.
enum class Engine { None, Ebpf, Iptables };
/// The parts of a pod's traffic that are planned separately.
enum class Part { Outbound, Inbound };

const char* to_string(Mode m);
const char* to_string(Engine e);
const char* to_string(Part p);
std::optional<Mode> mode_from_string(std::string_view s);
std::optional<Engine> engine_from_string(std::string_view s);

/// One part's engine and the reasons for it.
struct PartPlan {
  Engine engine = Engine::None;
  std::vector<std::string> reasons;
};

/// True when the configuration asks for inbound capture at all (-b, -k, or
/// --drop-invalid, whose rule sits in the inbound chain).
bool inbound_requested(const CaptureConfig& cfg);

struct Plan {
  Mode mode = Mode::Auto;
  CaptureConfig config;  ///< the validated configuration, whole
  bool ipv6 = false;     ///< IPv6 captured (see ipv6_enabled in pod_network.h)
  PartPlan outbound;
  PartPlan inbound;
  bool accelerate = false;         ///< sk_msg between app and proxy (eBPF outbound only)
  bool dns = false;                ///< eBPF captures DNS (outbound eBPF with --redirect-dns in effect)
  std::vector<std::string> notes;  ///< what was asked for and is not done, and why

  PartPlan& part(Part p) { return p == Part::Outbound ? outbound : inbound; }
  const PartPlan& part(Part p) const { return p == Part::Outbound ? outbound : inbound; }
  bool uses(Engine e) const { return outbound.engine == e || inbound.engine == e; }

  /// What the eBPF engine carries out: the inbound settings only when
  /// inbound is eBPF's, --accelerate only when it stands.
  CaptureConfig ebpf_config() const;
  /// What the iptables engine renders: the whole rule set when iptables
  /// captures outbound; with eBPF outbound, the same without the outbound
  /// captures (-i, -q), which eBPF decides first (with -k the full set stays:
  /// its PREROUTING redirect depends on -i).
  CaptureConfig iptables_config() const;

  /// Moves part `p` to iptables for `reason` (a run-time refusal by the
  /// kernel). Inbound eBPF needs outbound eBPF (it shares the programs), so
  /// outbound takes inbound with it; --accelerate goes with outbound eBPF.
  /// Only in Mode::Auto: otherwise throws std::runtime_error with the reason.
  void fall_back_to_iptables(Part p, const std::string& reason);

  /// {"mode", "ipv6", "accelerate", "dns", "outbound": {engine, reasons}, "inbound": ..., "notes"}.
  nlohmann::json to_json() const;
  /// Reads what to_json() wrote (the configuration is not part of it).
  static Plan from_json(const nlohmann::json& j);
  /// One line: "outbound ebpf (...), inbound iptables (...)".
  std::string summary() const;
};

}  // namespace meshcap
