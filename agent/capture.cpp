#include "capture.h"

#include <spdlog/spdlog.h>

#include "executor.h"
#include "kernel_features.h"
#include "planner.h"
#include "pod_netns.h"
#include "validation.h"

namespace meshcap {

namespace {

// A previous capture of this pod by an engine the new plan does not use
// goes now (the new one is in place: no moment without capture).
void retire_previous(const PodState& now, const std::optional<PodState>& previous) {
  const std::string home = now.ebpf ? now.ebpf->host : "";
  if (previous && previous->iptables && !now.iptables)
    if (auto ns = previous->current_netns(); ns && remove_iptables(*ns, previous->config()))
      spdlog::info("pod {}: removed its previous iptables capture", now.name);
  if (previous && home != "node" && unenroll_from_node(now.name, *previous))
    spdlog::info("pod {}: left the node data path", now.name);
  // The pod's own data path, when it no longer has one (or one that a
  // killed init left behind).
  if (home != "pod" && remove_own_data_path(now.name)) spdlog::info("pod {}: removed its own eBPF data path", now.name);
}

}  // namespace

PlannedCapture plan_capture(const CaptureRequest& r, bool loading) {
  PlannedCapture p;
  PlanInput in;
  in.config = r.flags.build();
  if (loading) require_resolved_ids(in.config);
  in.mode = r.mode;
  in.accelerate = r.accelerate;
  p.target = resolve_target(r.name, r.cgroup, r.netns);
  // A CNI ADD comes before the pod's containers start: no process to check
  // yet (status reports any that later run outside the node's cgroup). Nor
  // does iptables, which holds the whole namespace, need the check.
  p.host = find_ebpf_host(p.target, r.node, r.origin.via != "cni" && r.mode != Mode::Iptables);
  if (p.host.kind == EbpfHost::Kind::None) in.no_ebpf_host = p.host.why_none;
  p.pod = in.pod = loader::read_pod_network(p.target.netns_path);
  auto kernel = kernel_for(p.host, loading);
  p.plan = make_plan(in, *kernel);
  spdlog::info("plan for pod {}: {}", p.target.name, p.plan.summary());
  for (const auto& note : p.plan.notes) spdlog::warn("{}", note);
  return p;
}

bool apply_capture(const CaptureRequest& r, PlannedCapture& p, PodState& st, std::string& why) {
  const auto previous = read_pod_state(p.target.name);
  st = PodState{};
  st.name = p.target.name;
  st.netns_path = p.target.netns_path;
  st.netns = p.pod.netns;
  st.flags = r.flags;
  st.origin = r.origin;
  const Applied applied = apply_plan(p.plan, p.target, p.pod, p.host);
  st.ebpf = applied.ebpf;
  st.iptables = applied.iptables;
  if (st.ebpf) st.netns.cookie = st.ebpf->cookie;
  st.cgroup = st.ebpf ? p.host.cgroup_dir : "";
  st.plan = p.plan;
  retire_previous(st, previous);
  write_pod_state(st);
  loader::fault_point("state");

  if (p.plan.config.run_validation) {
    // The validator runs below the cgroup the programs are attached to.
    auto v = run_validation(p.target, p.plan, p.pod, st.cgroup);
    if (!v.ok) {
      why = v.detail;
      spdlog::error("validation failed: {}; removing the capture", v.detail);
      remove_capture(st.name, st, std::nullopt);
      return false;
    }
    spdlog::info("validation passed: {}", v.detail);
  }
  spdlog::info("pod {}: outbound by {}, inbound by {}", st.name, to_string(p.plan.outbound.engine),
               to_string(p.plan.inbound.engine));
  return true;
}

}  // namespace meshcap
