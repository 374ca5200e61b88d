// meshcap init (and the istio-iptables drop-in): the command line turned
// into a CaptureRequest; the work is capture.h's.
#include <iostream>

#include "capture.h"
#include "commands.h"
#include "report.h"

namespace meshcap {

int run_init(InitOptions& o) {
  if (o.istio.network_namespace && !o.istio.network_namespace->empty()) {
    if (!o.netns.empty() && o.netns != *o.istio.network_namespace)
      throw UsageError("--network-namespace: invalid value '" + *o.istio.network_namespace +
                       "': conflicts with --netns '" + o.netns + "'");
    o.netns = *o.istio.network_namespace;
  }
  auto mode = mode_from_string(o.mode);
  if (!mode) throw UsageError("--mode: invalid value '" + o.mode + "': expected auto, ebpf or iptables");
  CaptureRequest r;
  r.name = o.name;
  r.cgroup = o.cgroup;
  r.netns = o.netns;
  r.mode = *mode;
  r.flags = FlagSet::resolve(o.istio, o.env ? o.env : process_env());
  r.accelerate = o.accelerate;
  r.node = o.node;
  PlannedCapture p = plan_capture(r, !o.dry_run);
  if (o.dry_run) {
    print_plan(std::cout, p.target, p.plan, p.pod, p.host);
    return kExitOk;
  }
  PodState st;
  std::string why;
  return apply_capture(r, p, st, why) ? kExitOk : kExitValidation;
}

}  // namespace meshcap
