// meshcap probe: what this kernel and process can do, and the plan init
// would make for the flags.
#include <iostream>

#include "commands.h"
#include "kernel_features.h"
#include "planner.h"
#include "pod_netns.h"
#include "report.h"
#include "target.h"

using nlohmann::json;

namespace meshcap {

int run_probe(const ProbeOptions& o) {
  PlanInput in;
  in.config = FlagSet::resolve(o.istio, process_env()).build();
  in.pod = loader::read_pod_network(resolve_netns(o.netns));
  loader::KernelFeatures kernel;
  Plan plan = make_plan(in, kernel);
  json j;
  j["kernel"] = kernel.kernel_release();
  j["cgroup2"] = kernel.cgroup2_mount().value_or("");
  json feats = json::object();
  const auto report = kernel.report();
  for (const auto& f : report) feats[f.name] = f.present;
  j["features"] = feats;
  j["plan"] = plan.to_json();
  if (o.json) {
    std::cout << j.dump(2) << "\n";
    return kExitOk;
  }
  std::cout << "kernel " << j["kernel"].get<std::string>() << "; cgroup v2 "
            << (j["cgroup2"].get<std::string>().empty() ? "not mounted" : "at " + j["cgroup2"].get<std::string>())
            << "\n";
  for (const auto& f : report)
    std::cout << "  " << (f.present ? "yes " : "no  ") << f.name << (f.detail.empty() ? "" : "  (" + f.detail + ")")
              << "\n";
  std::cout << "plan for these flags (with a pod cgroup to attach to):\n";
  for (Part p : {Part::Outbound, Part::Inbound})
    std::cout << "  " << to_string(p) << ": " << to_string(plan.part(p).engine) << " ("
              << join(plan.part(p).reasons) << ")\n";
  for (const auto& n : plan.notes) std::cout << "  note: " << n << "\n";
  return kExitOk;
}

}  // namespace meshcap
