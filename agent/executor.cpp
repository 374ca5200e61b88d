#include "executor.h"

#include <spdlog/spdlog.h>

#include "applier.h"
#include "bpf_capture.h"
#include "command_runner.h"

namespace meshcap {

namespace {

// The eBPF part, all or nothing: pinned and switched on when this returns.
void apply_ebpf(const Plan& plan, const PodTarget& t, const PodNetwork& pod) {
  loader::BpfCapture capture(loader::EbpfSpec{plan.ebpf_config(), pod, plan.inbound.engine == Engine::Ebpf, plan.ipv6});
  capture.load();
  capture.attach(t.cgroup_dir, t.netns_path);
  capture.adopt_listeners(t.netns_path);
  capture.pin(t.name);
}

// Tries the eBPF part until it is in place or no part is left on eBPF: a
// refused piece moves only the part it belongs to.
void apply_ebpf_with_fallback(Plan& plan, const PodTarget& t, const PodNetwork& pod) {
  while (plan.uses(Engine::Ebpf)) {
    try {
      apply_ebpf(plan, t, pod);
      return;
    } catch (const loader::LoaderError& e) {
      if (plan.mode != Mode::Auto) throw;
      const Part part = plan.inbound.engine == Engine::Ebpf ? e.part() : Part::Outbound;
      spdlog::warn("eBPF {} capture failed ({}); {} moves to iptables", to_string(part), e.what(), to_string(part));
      plan.fall_back_to_iptables(part, std::string("eBPF failed at run time: ") + e.what());
    }
  }
}

}  // namespace

std::string iptables_state_dir() { return state_root() + "/iptables"; }

std::optional<PodState::Iptables> apply_plan(Plan& plan, const PodTarget& t, const PodNetwork& pod) {
  apply_ebpf_with_fallback(plan, t, pod);
  if (!plan.uses(Engine::Iptables)) return std::nullopt;
  iptables::ProcessRunner runner(t.netns_path);
  iptables::IptablesApplier applier(runner, iptables::ApplierOptions{iptables_state_dir()});
  bool applied = false;
  try {
    auto result = applier.apply(plan.iptables_config(), plan.ipv6);
    applied = true;
    loader::fault_point("iptables");
    PodState::Iptables out;
    out.ipv4_save = result.ipv4.save_binary;
    if (result.ipv6) out.ipv6_save = result.ipv6->save_binary;
    return out;
  } catch (...) {
    // All or nothing: undo this run's rules and programs.
    if (applied) {
      try {
        applier.cleanup(plan.iptables_config());
      } catch (const std::exception& e) {
        spdlog::error("undoing the iptables rules failed too: {}", e.what());
      }
    }
    loader::remove_pins(t.name);
    throw;
  }
}

bool remove_iptables(const std::string& netns_path, const CaptureConfig& cfg) {
  iptables::ProcessRunner runner(netns_path);
  iptables::IptablesApplier applier(runner, iptables::ApplierOptions{iptables_state_dir()});
  auto r = applier.cleanup(cfg);
  return !r.backends.empty() || r.routes_removed;
}

bool remove_capture(const std::string& name, const std::optional<PodState>& st,
                    const std::optional<std::string>& netns_path) {
  bool removed = loader::remove_pins(name);
  // iptables only where meshcap applied it (or where the caller names the
  // pod's namespace): never in a namespace nobody named.
  std::optional<std::string> ns = netns_path;
  if (!ns && st && st->iptables) ns = st->current_netns();
  if (ns && (netns_path || (st && st->iptables))) removed |= remove_iptables(*ns, st ? st->config() : CaptureConfig{});
  removed |= remove_pod_state(name);
  return removed;
}

}  // namespace meshcap
