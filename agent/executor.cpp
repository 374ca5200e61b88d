#include "executor.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <set>
#include <utility>

#include <spdlog/spdlog.h>

#include "applier.h"
#include "command_runner.h"
#include "datapath.h"
#include "enrollment.h"
#include "pod_netns.h"

namespace fs = std::filesystem;

namespace meshcap {

namespace {

loader::PodSettings settings_for(const Plan& plan, const PodNetwork& pod) {
  return {plan.ebpf_config(), pod, plan.inbound.engine == Engine::Ebpf, plan.ipv6, plan.accelerate};
}

// Enrols the pod in the running node data path: map updates and, for
// inbound, the pod's sk_lookup link. No program is loaded.
PodState::Ebpf enroll_in_node(const Plan& plan, const PodTarget& t, const PodNetwork& pod, const EbpfHost& host) {
  NodeLock lock;
  if (upgrade_interrupted())
    throw loader::LoaderError("enrol " + t.name, EAGAIN,
                              "an upgrade of the node data path was interrupted: run `meshcap node start` to finish it");
  const uint64_t cookie = loader::netns_cookie(pod.netns.cookie, t.netns_path, host.datapath_dir, host.cgroup_dir);
  const auto table = pod_table(host.datapath_dir);
  const auto e = table->enroll(t.name, cookie, t.netns_path, settings_for(plan, pod));
  return {"node", host.datapath_dir, e.index, e.cookie};
}

// A data path of the pod's own on its cgroup, with the pod enrolled: loaded,
// attached and pinned beside the previous one (inert until the pod is
// enrolled), then put in its place. No moment without capture: both run
// until the old one goes (the new one sees connections the old one already
// sent to 127.0.0.1 and leaves them).
PodState::Ebpf own_data_path(const Plan& plan, const PodTarget& t, const PodNetwork& pod, const EbpfHost& host) {
  const CaptureConfig cfg = plan.ebpf_config();
  loader::DataPathSpec spec;
  spec.max_pods = 1;
  spec.inbound = plan.inbound.engine == Engine::Ebpf;
  spec.accelerate = plan.accelerate;
  spec.ingress_ifindex = spec.inbound && (!cfg.exclude_interfaces.empty() || !cfg.reroute_virtual_interfaces.empty());
  spec.dns = plan.dns;
  // Room for the pod's whole CIDR lists, whatever their length (-x with
  // 10,000 prefixes is a real configuration).
  const auto& x = cfg.outbound_ranges_exclude;
  const auto& i = cfg.outbound_ranges_include;
  spec.extra_cidrs = static_cast<uint32_t>(std::max(x.v4.size() + i.v4.size() + cfg.dns_servers_v4.size(),
                                                    x.v6.size() + i.v6.size() + cfg.dns_servers_v6.size()));
  const std::string next = loader::pin_root() + "/next/" + t.name;
  loader::remove_tree(next);  // what a killed init left
  loader::remove_dead_staging(t.name);
  loader::DataPath dp(spec);
  dp.load();
  dp.attach(host.cgroup_dir);
  dp.pin(next);
  loader::Enrolment e;
  try {
    const uint64_t cookie = loader::netns_cookie(pod.netns.cookie, t.netns_path, next, host.cgroup_dir);
    e = loader::PodTable(next).enroll(t.name, cookie, t.netns_path, settings_for(plan, pod));
  } catch (...) {
    loader::remove_tree(next);
    throw;
  }
  loader::remove_tree(host.datapath_dir);
  loader::make_pin_dirs(fs::path(host.datapath_dir).parent_path());
  if (std::rename(next.c_str(), host.datapath_dir.c_str()))
    throw loader::LoaderError("rename " + next + " to " + host.datapath_dir, errno);
  std::error_code ec;
  fs::remove(fs::path(next).parent_path(), ec);  // only when empty
  return {"pod", host.datapath_dir, e.index, e.cookie};
}

// Tries the eBPF part until it is in place or no part is left on eBPF: a
// refused piece moves only the part it belongs to.
std::optional<PodState::Ebpf> apply_ebpf_with_fallback(Plan& plan, const PodTarget& t, const PodNetwork& pod,
                                                       const EbpfHost& host) {
  while (plan.uses(Engine::Ebpf)) {
    try {
      return host.kind == EbpfHost::Kind::Node ? enroll_in_node(plan, t, pod, host) : own_data_path(plan, t, pod, host);
    } catch (const loader::LoaderError& e) {
      if (plan.mode != Mode::Auto) throw;
      const Part part = plan.inbound.engine == Engine::Ebpf ? e.part() : Part::Outbound;
      spdlog::warn("eBPF {} capture failed ({}); {} moves to iptables", to_string(part), e.what(), to_string(part));
      plan.fall_back_to_iptables(part, std::string("eBPF failed at run time: ") + e.what());
    }
  }
  return std::nullopt;
}

}  // namespace

std::string iptables_state_dir() { return state_root() + "/iptables"; }

Applied apply_plan(Plan& plan, const PodTarget& t, const PodNetwork& pod, const EbpfHost& host) {
  Applied out;
  out.ebpf = apply_ebpf_with_fallback(plan, t, pod, host);
  if (!plan.uses(Engine::Iptables)) return out;
  iptables::ProcessRunner runner(t.netns_path);
  iptables::IptablesApplier applier(runner, iptables::ApplierOptions{iptables_state_dir()});
  bool applied = false;
  try {
    auto result = applier.apply(plan.iptables_config(), plan.ipv6);
    applied = true;
    loader::fault_point("iptables");
    PodState::Iptables ipt;
    ipt.ipv4_save = result.ipv4.save_binary;
    if (result.ipv6) ipt.ipv6_save = result.ipv6->save_binary;
    out.iptables = ipt;
    return out;
  } catch (...) {
    // All or nothing: undo this run's rules and eBPF part.
    if (applied) {
      try {
        applier.cleanup(plan.iptables_config());
      } catch (const std::exception& e) {
        spdlog::error("undoing the iptables rules failed too: {}", e.what());
      }
    }
    if (out.ebpf) {
      PodState undo;
      undo.name = t.name;
      undo.ebpf = out.ebpf;
      remove_ebpf(t.name, undo);
    }
    throw;
  }
}

bool unenroll_from_node(const std::string& name, const PodState& st) {
  std::error_code ec;
  if (!st.ebpf || st.ebpf->host != "node" || !fs::exists(st.ebpf->datapath_dir, ec)) return false;
  NodeLock lock;
  return pod_table(st.ebpf->datapath_dir)->unenroll(name, st.ebpf->cookie);
}

bool remove_own_data_path(const std::string& name) {
  bool removed = loader::remove_dead_staging(name);
  for (const auto& dir : {loader::pin_dir(name), loader::pin_root() + "/next/" + name}) {
    std::error_code ec;
    if (fs::exists(dir, ec)) {
      loader::remove_tree(dir);
      removed = true;
    }
  }
  return removed;
}

bool remove_ebpf(const std::string& name, const std::optional<PodState>& st) {
  bool removed = st && unenroll_from_node(name, *st);
  return remove_own_data_path(name) || removed;
}

void forget_gone_namespaces(const std::optional<NetnsId>& only) {
  std::set<std::pair<uint64_t, uint64_t>> named;
  for (const auto& name : recorded_pods())
    if (const auto st = read_pod_state(name, /*with_flags=*/false)) named.insert({st->netns.dev, st->netns.ino});
  const std::string dir = iptables_state_dir();
  const auto contexts = only ? std::vector<std::string>{iptables::netns_context_id(only->dev, only->ino)}
                             : iptables::IptablesApplier::recorded_contexts(dir);
  for (const auto& context : contexts) {
    const auto id = iptables::parse_netns_context_id(context);
    if (!id || named.count(*id) || loader::find_netns(NetnsId{id->first, id->second, 0})) continue;
    if (iptables::IptablesApplier::forget(dir, context))
      spdlog::info("forgot the iptables record of {}: that network namespace is gone", context);
  }
}

bool remove_iptables(const std::string& netns_path, const CaptureConfig& cfg) {
  iptables::ProcessRunner runner(netns_path);
  iptables::IptablesApplier applier(runner, iptables::ApplierOptions{iptables_state_dir()});
  auto r = applier.cleanup(cfg);
  return !r.backends.empty() || r.routes_removed;
}

bool remove_iptables(const std::string& netns_path, const std::optional<PodState>& st) {
  iptables::ProcessRunner runner(netns_path);
  iptables::IptablesApplier applier(runner, iptables::ApplierOptions{iptables_state_dir()});
  std::optional<CaptureConfig> cfg;  // made only if cleanup needs it (a pod's flags can hold 10,000 CIDRs)
  auto r = applier.cleanup([&]() -> const CaptureConfig& {
    if (!cfg) cfg = st ? st->config() : CaptureConfig{};
    return *cfg;
  });
  return !r.backends.empty() || r.routes_removed;
}

bool remove_capture(const std::string& name, const std::optional<PodState>& st,
                    const std::optional<std::string>& netns_path) {
  bool removed = remove_ebpf(name, st);
  // iptables only where meshcap applied it (or where the caller names the
  // pod's namespace): never in a namespace nobody named.
  std::optional<std::string> ns = netns_path;
  if (!ns && st && st->iptables) ns = st->current_netns();
  if (ns && (netns_path || (st && st->iptables))) removed |= remove_iptables(*ns, st);
  removed |= remove_pod_state(name);
  if (!ns && st && st->iptables) forget_gone_namespaces(st->netns);
  return removed;
}

}  // namespace meshcap
