// meshcap node start | stop | status: one data path per node. Programs are
// loaded once and attached to the cgroup that holds every pod; `init` and
// the CNI plugin then enrol pods by network namespace (map updates, no
// program load).
#include <sys/statfs.h>
#include <unistd.h>
#include <linux/magic.h>

#include <filesystem>
#include <iostream>

#include <spdlog/spdlog.h>

#include "applier.h"
#include "commands.h"
#include "datapath.h"
#include "enrollment.h"
#include "executor.h"
#include "host.h"
#include "pins.h"
#include "pod_state.h"
#include "report.h"
#include "target.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace meshcap {

namespace {

// The node's pods cgroup when an orchestrator made one (the kubelet's
// kubepods, with either cgroup driver), else the hierarchy's root.
std::string default_node_cgroup() {
  const auto mount = cgroup2_mount();
  if (!mount) throw UsageError("node start: no cgroup v2 hierarchy is mounted");
  for (const char* pods : {"kubepods.slice", "kubepods"})
    if (fs::is_directory(*mount + "/" + pods)) return *mount + "/" + pods;
  return *mount;
}

std::string node_cgroup(const std::string& given) {
  if (given.empty()) return default_node_cgroup();
  const std::string flag = "--cgroup: invalid value '" + given + "': ";
  if (given[0] != '/') throw UsageError(flag + "expected an absolute path");
  struct statfs sfs {};
  if (statfs(given.c_str(), &sfs) || sfs.f_type != CGROUP2_SUPER_MAGIC)
    throw UsageError(flag + "not a cgroup v2 directory");
  return fs::weakly_canonical(given).string();
}

void check_sizes(const NodeStartOptions& o) {
  if (o.max_pods > loader::max_pods_limit())
    throw UsageError("--max-pods: invalid value '" + std::to_string(o.max_pods) + "': at most " +
                     std::to_string(loader::max_pods_limit()));
  if (o.max_connections && (o.max_connections < 64 || o.max_connections > (1u << 22)))
    throw UsageError("--max-connections: invalid value '" + std::to_string(o.max_connections) +
                     "': expected 64 to 4194304");
}

// Pods whose records say they are enrolled in the node data path.
std::vector<PodState> node_pods() {
  std::vector<PodState> out;
  for (const auto& name : recorded_pods())
    if (auto st = read_pod_state(name); st && st->ebpf && st->ebpf->host == "node") out.push_back(*st);
  return out;
}

}  // namespace

int run_node_start(const NodeStartOptions& o) {
  check_sizes(o);
  const std::string cgroup = node_cgroup(o.cgroup);
  NodeLock lock;
  const auto record = NodeRecord::read();
  const auto running = loader::pinned_spec(loader::node_dir());
  if (running && record && record->cgroup != cgroup && !o.cgroup.empty())
    throw UsageError("--cgroup: invalid value '" + o.cgroup + "': the node data path is attached to " + record->cgroup +
                     "; stop it first");
  loader::DataPathSpec want;
  want.max_pods = o.max_pods;
  want.max_connections = o.max_connections;
  want.accelerate = o.accelerate;
  want.key_netns = want.ingress_ifindex = true;
  want.dns = !o.no_dns;
  std::vector<std::string> dropped;
  const loader::DataPathSpec spec = loader::loadable_spec(want, &dropped);
  for (const auto& d : dropped) spdlog::warn("node data path without {}", d);
  if (running && running->dns && !spec.dns) {
    // Its links would go: the pods that capture DNS would be left without.
    std::vector<std::string> names;
    for (const auto& p : node_pods())
      if (p.plan.dns) names.push_back(p.name);
    if (!names.empty())
      throw std::runtime_error("node start: " + std::to_string(names.size()) + " enrolled pod(s) capture DNS (" +
                               join(names, ", ") + "); a data path without DNS capture would leave them uncaptured. " +
                               "Clean them up or capture them again first");
  }
  NodeRecord next{running && record ? record->cgroup : cgroup, spec, dropped, ""};
  loader::DataPath dp(spec);
  if (running) {
    // In place: the pods stay enrolled, every link switches to the new
    // programs (BPF_LINK_UPDATE), no moment without capture.
    mark_upgrade(true);
    try {
      dp.load(loader::node_dir());
      dp.take_over(loader::node_dir(), next.cgroup);
    } catch (...) {
      // Refused before it changed anything (the new programs did not load,
      // or the old maps' entries do not fit the new maps): the running data
      // path is whole as it was, and pods go on enrolling in it.
      if (!dp.changed_pinned()) mark_upgrade(false);
      throw;
    }
    mark_upgrade(false);
    spdlog::info("node data path replaced in place ({} pods enrolled)", node_pods().size());
  } else {
    loader::remove_dead_staging("node");
    dp.load();
    dp.attach(next.cgroup);
    dp.pin(loader::node_dir());
    mark_upgrade(false);
    spdlog::info("node data path attached to {}", next.cgroup);
  }
  // What enrolments or removals killed half-way left, and an older
  // meshcap's bookkeeping after an upgrade.
  if (const size_t n = loader::PodTable(loader::node_dir()).repair())
    spdlog::info("node data path: {} leftover(s) of interrupted enrolments put right", n);
  next.write();
  std::cout << "node data path on " << next.cgroup << ": up to " << spec.pods() << " pods, " << spec.connections()
            << " connections in the table; inbound " << (spec.inbound ? "yes" : "no") << ", --accelerate "
            << (spec.accelerate ? "yes" : "no") << ", connection key with netns cookie "
            << (spec.key_netns ? "yes" : "no") << ", -c/-k inbound " << (spec.ingress_ifindex ? "yes" : "no")
            << ", DNS capture " << (spec.dns ? "yes" : "no") << "\n";
  return kExitOk;
}

int run_node_stop(const NodeStopOptions& o) {
  NodeLock lock;
  const auto pods = node_pods();
  if (!pods.empty() && !o.move_to_iptables) {
    std::vector<std::string> names;
    for (const auto& p : pods) names.push_back(p.name);
    throw std::runtime_error("node stop: " + std::to_string(pods.size()) + " pod(s) are enrolled (" + join(names, ", ") +
                             "); removing the data path would leave them uncaptured. Use --move-to-iptables to "
                             "capture them with iptables first, or clean them up");
  }
  for (PodState st : pods) {
    // Each pod: iptables first, then out of the data path: no moment
    // without capture.
    if (st.plan.mode != Mode::Auto)
      throw std::runtime_error("node stop: pod " + st.name + " was captured with --mode " + to_string(st.plan.mode) +
                               ", which iptables cannot stand in for; clean it up first");
    const auto ns = st.current_netns();
    if (ns) {
      st.plan.config = st.config();
      st.plan.fall_back_to_iptables(Part::Outbound, "the node data path was stopped");
      iptables::ProcessRunner runner(*ns);
      iptables::IptablesApplier applier(runner, iptables::ApplierOptions{iptables_state_dir()});
      auto r = applier.apply(st.plan.iptables_config(), st.plan.ipv6);
      st.iptables = PodState::Iptables{r.ipv4.save_binary, r.ipv6 ? r.ipv6->save_binary : "", {}};
    }
    unenroll_from_node(st.name, st);
    st.ebpf.reset();
    st.cgroup.clear();
    if (ns) {
      write_pod_state(st);
      spdlog::info("pod {}: moved to iptables", st.name);
    } else {
      remove_pod_state(st.name);
    }
  }
  std::error_code ec;
  const bool was = fs::exists(loader::node_dir(), ec);
  loader::remove_tree(loader::node_dir());
  loader::remove_dead_staging("node");
  rmdir(loader::pin_root().c_str());  // only when empty: per-pod data paths pin there too
  NodeRecord::remove();
  mark_upgrade(false);
  spdlog::info("node data path {}", was ? "removed" : "was not running");
  return kExitOk;
}

namespace {

// The node data path's links, pods, sizes and counters, added to `j`.
void add_node_details(json& j, const std::string& dir, const loader::DataPathSpec& spec,
                      const std::optional<NodeRecord>& record) {
  json links = json::array();
  bool whole = true;
  for (const auto& l : loader::pinned_links(dir)) {
    links.push_back({{"link", l.pin}, {"attached", l.attached}, {"prog_id", l.prog_id}});
    whole &= l.attached;
  }
  json pods = json::array();
  std::map<uint64_t, uint32_t> enrolled;
  try {
    enrolled = loader::PodTable(dir).enrolled();
  } catch (const loader::LoaderError&) {
  }
  size_t recorded = 0;
  for (const auto& st : node_pods()) {
    recorded++;
    const bool in = enrolled.count(st.ebpf->cookie) && enrolled[st.ebpf->cookie] == st.ebpf->index;
    pods.push_back({{"name", st.name},
                    {"index", st.ebpf->index},
                    {"enrolled", in},
                    {"counters", loader::pinned_counters(dir, st.ebpf->index)}});
  }
  j["cgroup"] = record ? record->cgroup : "";
  j["spec"] = spec.to_json();
  j["dropped"] = record ? record->dropped : std::vector<std::string>{};
  j["links"] = links;
  j["whole"] = whole && record.has_value() && !upgrade_interrupted();
  j["pods"] = pods;
  j["pods_enrolled"] = enrolled.size();
  j["pods_without_record"] = enrolled.size() > recorded ? enrolled.size() - recorded : 0;
  j["maps"] = {{"orig_dst", loader::pinned_entries(dir, "orig_dst")},
               {"inbound_orig", loader::pinned_entries(dir, "inbound_orig")},
               {"accel_socks", loader::pinned_entries(dir, "accel_socks")},
               {"memlock_bytes", loader::pinned_memlock(dir)}};
  j["node_counters"] = loader::pinned_counters(dir, spec.pods());
}

void print_node_prometheus(const json& j, const loader::DataPathSpec* spec) {
  std::cout << "# HELP meshcap_node_up Whether the node data path is loaded and attached.\n"
            << "# TYPE meshcap_node_up gauge\nmeshcap_node_up " << (spec && j["whole"].get<bool>() ? 1 : 0) << "\n";
  if (spec) {
    std::cout << "# HELP meshcap_node_pods Pods enrolled in the node data path.\n# TYPE meshcap_node_pods gauge\n"
              << "meshcap_node_pods " << j["pods_enrolled"] << "\n"
              << "# HELP meshcap_node_pods_max Pods the node data path takes.\n# TYPE meshcap_node_pods_max gauge\n"
              << "meshcap_node_pods_max " << spec->pods() << "\n"
              << "# HELP meshcap_node_awaiting_proxy Records in the connection table.\n"
              << "# TYPE meshcap_node_awaiting_proxy gauge\nmeshcap_node_awaiting_proxy " << j["maps"]["orig_dst"]
              << "\n# HELP meshcap_node_memlock_bytes Kernel memory of the node data path's maps.\n"
              << "# TYPE meshcap_node_memlock_bytes gauge\nmeshcap_node_memlock_bytes " << j["maps"]["memlock_bytes"]
              << "\n# HELP meshcap_decisions_total eBPF capture decisions and events per pod.\n"
              << "# TYPE meshcap_decisions_total counter\n";
    for (const auto& p : j["pods"])
      for (auto& [k, v] : p["counters"].items())
        std::cout << "meshcap_decisions_total{pod=\"" << p["name"].get<std::string>() << "\",decision=\"" << k
                  << "\"} " << v << "\n";
    for (auto& [k, v] : j["node_counters"].items())
      if (v.get<uint64_t>()) std::cout << "meshcap_decisions_total{pod=\"\",decision=\"" << k << "\"} " << v << "\n";
  }
}

void print_node_text(const json& j, const loader::DataPathSpec& spec) {
  std::cout << "node data path on " << j["cgroup"].get<std::string>() << ": "
            << (j["whole"].get<bool>() ? "attached" : "NOT WHOLE (run meshcap node start)") << "\n"
            << "  sizes: " << spec.pods() << " pods, " << spec.connections() << " connections\n"
            << "  loaded: inbound " << spec.inbound << ", accelerate " << spec.accelerate << ", key_netns "
            << spec.key_netns << ", ingress_ifindex " << spec.ingress_ifindex << ", dns " << spec.dns << "\n";
  for (const auto& d : j["dropped"]) std::cout << "  without: " << d.get<std::string>() << "\n";
  std::cout << "  links:";
  for (const auto& l : j["links"])
    std::cout << " " << l["link"].get<std::string>().substr(5) << (l["attached"].get<bool>() ? "" : "(DETACHED)");
  std::cout << "\n  pods enrolled: " << j["pods_enrolled"] << " (" << j["pods_without_record"]
            << " without a record)\n  records awaiting the proxy: " << j["maps"]["orig_dst"]
            << "; kernel memory of the maps: " << j["maps"]["memlock_bytes"] << " bytes\n";
  for (const auto& p : j["pods"]) {
    std::cout << "  pod " << p["name"].get<std::string>() << " (row " << p["index"] << ")"
              << (p["enrolled"].get<bool>() ? "" : " NOT ENROLLED") << ":";
    for (auto& [k, v] : p["counters"].items())
      if (v.get<uint64_t>()) std::cout << " " << k << "=" << v;
    std::cout << "\n";
  }
}

}  // namespace

int run_node_status(const StatusOptions& o) {
  const auto record = NodeRecord::read();
  const std::string dir = loader::node_dir();
  const auto spec = loader::pinned_spec(dir);
  json j = {{"running", spec.has_value()}};
  if (spec) add_node_details(j, dir, *spec, record);
  if (o.json) {
    std::cout << j.dump(2) << "\n";
  } else if (o.prometheus) {
    print_node_prometheus(j, spec ? &*spec : nullptr);
  } else if (!spec) {
    std::cout << "no node data path is running\n";
  } else {
    print_node_text(j, *spec);
  }
  return kExitOk;
}

}  // namespace meshcap
