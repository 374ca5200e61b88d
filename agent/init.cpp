// meshcap init: parse -> plan -> apply -> record (-> validate).
#include <iostream>

#include <spdlog/spdlog.h>

#include "host.h"
#include "pins.h"
#include "commands.h"
#include "executor.h"
#include "istio_rules.h"
#include "kernel_features.h"
#include "planner.h"
#include "pod_netns.h"
#include "pod_state.h"
#include "report.h"
#include "target.h"
#include "validation.h"

namespace meshcap {

namespace {

// Everything init needs, validated; nothing touched yet.
struct InitRequest {
  FlagSet flags;
  PlanInput input;
  PodTarget target;
  EbpfHost host;
};

InitRequest parse_init(InitOptions& o) {
  InitRequest r;
  if (o.istio.network_namespace && !o.istio.network_namespace->empty()) {
    if (!o.netns.empty() && o.netns != *o.istio.network_namespace)
      throw UsageError("--network-namespace: invalid value '" + *o.istio.network_namespace +
                       "': conflicts with --netns '" + o.netns + "'");
    o.netns = *o.istio.network_namespace;
  }
  auto mode = mode_from_string(o.mode);
  if (!mode) throw UsageError("--mode: invalid value '" + o.mode + "': expected auto, ebpf or iptables");
  r.flags = FlagSet::resolve(o.istio, process_env());
  r.input.config = r.flags.build();
  if (!o.dry_run) require_resolved_ids(r.input.config);
  r.input.mode = *mode;
  r.input.accelerate = o.accelerate;
  r.target = resolve_target(o.name, o.cgroup, o.netns);
  r.host = find_ebpf_host(r.target);
  if (r.host.kind == EbpfHost::Kind::None) r.input.no_ebpf_host = r.host.why_none;
  r.input.pod = loader::read_pod_network(r.target.netns_path);
  return r;
}

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

int run_init(InitOptions& o) {
  InitRequest r = parse_init(o);
  auto kernel = kernel_for(r.host, !o.dry_run);
  Plan plan = make_plan(r.input, *kernel);
  spdlog::info("plan for pod {}: {}", r.target.name, plan.summary());
  for (const auto& note : plan.notes) spdlog::warn("{}", note);
  if (o.dry_run) {
    print_plan(std::cout, r.target, plan, r.input.pod, r.host);
    return kExitOk;
  }

  const auto previous = read_pod_state(r.target.name);
  PodState st;
  st.name = r.target.name;
  st.netns_path = r.target.netns_path;
  st.netns = r.input.pod.netns;
  st.flags = r.flags;
  const Applied applied = apply_plan(plan, r.target, r.input.pod, r.host);
  st.ebpf = applied.ebpf;
  st.iptables = applied.iptables;
  if (st.ebpf) st.netns.cookie = st.ebpf->cookie;
  st.cgroup = st.ebpf ? r.host.cgroup_dir : "";
  st.plan = plan;
  retire_previous(st, previous);
  write_pod_state(st);
  loader::fault_point("state");

  if (plan.config.run_validation) {
    // The validator runs below the cgroup the programs are attached to.
    auto v = run_validation(r.target, plan, r.input.pod, st.cgroup);
    if (!v.ok) {
      spdlog::error("validation failed: {}; removing the capture", v.detail);
      remove_capture(st.name, st, std::nullopt);
      return kExitValidation;
    }
    spdlog::info("validation passed: {}", v.detail);
  }
  spdlog::info("pod {}: outbound by {}, inbound by {}", st.name, to_string(plan.outbound.engine),
               to_string(plan.inbound.engine));
  return kExitOk;
}

}  // namespace meshcap
