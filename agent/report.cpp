#include "report.h"

#include "datapath.h"
#include "pins.h"
#include "istio_rules.h"

namespace meshcap {

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

namespace {

std::string cidrs(const CidrList& l) {
  if (l.wildcard) return "*";
  std::vector<std::string> all;
  for (const auto& x : l.v4) all.push_back(x.str());
  for (const auto& x : l.v6) all.push_back(x.str());
  return all.empty() ? "(none)" : join(all, ",");
}

std::string ports(const PortList& l) { return l.ports.empty() ? "(none)" : join(l.tokens, ","); }

std::string or_none(const std::vector<std::string>& v) { return v.empty() ? "(none)" : join(v, ","); }

void print_ebpf(std::ostream& out, const PodTarget& t, const Plan& plan, const PodNetwork& pod, const EbpfHost& host) {
  const CaptureConfig c = plan.ebpf_config();
  std::vector<std::string> programs;
  for (const auto& p : loader::cgroup_programs())
    if (!p.dns || dns_redirect_active(c)) programs.push_back(p.program);
  out << "eBPF capture of pod " << t.name << "\n"
      << "  data path: "
      << (host.kind == EbpfHost::Kind::Node ? "the node's (enrolment: map updates, no program loaded)"
                                            : "the pod's own (programs loaded for this pod)")
      << "\n"
      << "  cgroup: " << host.cgroup_dir << "\n"
      << "  netns:  " << t.netns_path << "\n"
      << "  programs (cgroup, bpf_link): " << join(programs, " ") << "\n";
  if (plan.inbound.engine == Engine::Ebpf) out << "  program (the pod's netns, bpf_link): mc_sk_lookup\n";
  if (plan.accelerate) out << "  program (socket map accel_socks): mc_accel; app<->proxy bytes bypass TCP\n";
  out << "  pins: " << host.datapath_dir << "/ (the pod's: " << loader::pod_pins(host.datapath_dir, t.name) << "/)\n"
      << "  outbound listener: 127.0.0.1:" << c.proxy_port << " / [::1]:" << c.proxy_port
      << "; the proxy dialing the pod itself: 127.0.0.1:" << c.inbound_capture_port << " (tunnel port "
      << c.inbound_tunnel_port << " excluded)\n"
      << "  exempt UIDs: " << join(c.proxy_uids.tokens, ",") << "; GIDs: " << join(c.proxy_gids.tokens, ",") << "\n"
      << "  map incl_cidr4/6 (-i): " << cidrs(c.outbound_ranges_include) << "\n"
      << "  map excl_cidr4/6 (-x): " << cidrs(c.outbound_ranges_exclude) << "\n"
      << "  ports -q (captured): " << ports(c.outbound_ports_include)
      << "; -o (not captured): " << ports(c.outbound_ports_exclude) << "\n"
      << "  owner groups: " << (c.owner_groups_except ? "all except " : "only ") << or_none(c.owner_groups.tokens)
      << "\n"
      << "  excluded interfaces (-c, through the pod's routes): " << or_none(c.exclude_interfaces) << "\n";
  if (plan.inbound.engine == Engine::Ebpf) {
    std::string in = c.inbound_ports_include.wildcard ? "* except " + or_none(c.inbound_ports_exclude.tokens)
                                                      : ports(c.inbound_ports_include);
    out << "  inbound ports to " << c.inbound_capture_port << ": " << in << "; -k to " << c.proxy_port << ": "
        << or_none(c.reroute_virtual_interfaces) << "\n";
  }
  std::vector<std::string> addrs;
  for (const auto& a : pod.addresses) addrs.push_back(a.str());
  out << "  map pod_addrs: " << join(addrs, ",") << "\n"
      << "  source kept: " << (pod.source4 ? pod.source4->str() : "-") << " / "
      << (pod.source6 ? pod.source6->str() : "-") << "\n";
}

}  // namespace

void print_plan(std::ostream& out, const PodTarget& t, const Plan& plan, const PodNetwork& pod, const EbpfHost& host) {
  // Only the iptables payload when iptables does everything, as istio's
  // --dry-run prints it.
  if (plan.uses(Engine::Ebpf)) {
    out << "plan: " << plan.summary() << "\n";
    for (const auto& n : plan.notes) out << "note: " << n << "\n";
    print_ebpf(out, t, plan, pod, host);
  }
  if (plan.uses(Engine::Iptables)) out << iptables::render_istio_rules(plan.iptables_config(), plan.ipv6).dry_run_output();
}

}  // namespace meshcap
