#include "planner.h"

#include "bpf_capture.h"

namespace meshcap {

std::string to_string(Engine e) {
  switch (e) {
    case Engine::Ebpf:
      return "ebpf";
    case Engine::Iptables:
      return "iptables";
    default:
      return "none";
  }
}

namespace {

void need(bool have, const std::string& what, std::vector<std::string>& missing) {
  if (!have) missing.push_back(what);
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : "; ") + s;
  return out;
}

}  // namespace

std::vector<std::string> missing_for_ebpf_outbound(loader::KernelFeatures& k) {
  std::vector<std::string> m;
  need(k.cap_bpf(), "no CAP_BPF or CAP_SYS_ADMIN (BPF not permitted)", m);
  need(k.cap_net_admin() || k.cap_sys_admin(), "no CAP_NET_ADMIN", m);
  if (!m.empty()) return m;  // the probes below would only fail for the same reason
  need(k.bpf_syscall(), "the bpf() system call fails", m);
  need(k.cgroup2(), "no cgroup v2 hierarchy mounted", m);
  need(k.prog_sock_addr(), "kernel has no cgroup connect programs", m);
  need(k.prog_getpeername(), "kernel has no cgroup getpeername programs", m);
  need(k.prog_sock_ops(), "kernel has no sockops programs", m);
  need(k.prog_sockopt(), "kernel has no cgroup getsockopt programs", m);
  need(k.helper_sk_storage(), "kernel has no socket storage for connect programs", m);
  need(k.helper_bind(), "kernel has no bpf_bind for connect programs", m);
  return m;
}

std::vector<std::string> missing_for_ebpf_inbound(loader::KernelFeatures& k) {
  std::vector<std::string> m;
  need(k.prog_sk_lookup(), "kernel has no sk_lookup programs", m);
  if (m.empty()) {
    need(k.helper_sk_assign(), "kernel has no bpf_sk_assign for sk_lookup", m);
    need(k.helper_sock_map_update(), "kernel cannot add listeners to a socket map from sockops", m);
  }
  return m;
}

bool inbound_requested(const CaptureConfig& cfg) { return loader::wants_inbound(cfg) || cfg.drop_invalid; }

Plan make_plan(const CaptureConfig& cfg, loader::KernelFeatures& kernel, const std::string& mode) {
  Plan p;
  const bool inbound = inbound_requested(cfg);
  if (mode == "iptables") {
    p.outbound = {Engine::Iptables, {"--mode iptables"}};
    p.inbound = inbound ? DirectionPlan{Engine::Iptables, {"--mode iptables"}}
                        : DirectionPlan{Engine::None, {"no inbound capture requested"}};
    return p;
  }

  auto cfg_out = loader::ebpf_unsupported_outbound(cfg);
  auto cfg_in = loader::ebpf_unsupported_inbound(cfg);
  if (mode == "ebpf") {
    std::vector<std::string> all = cfg_out;
    if (inbound) all.insert(all.end(), cfg_in.begin(), cfg_in.end());
    if (!all.empty()) throw UsageError("--mode ebpf cannot honour this configuration: " + join(all));
    auto missing = missing_for_ebpf_outbound(kernel);
    if (inbound && loader::wants_inbound(cfg)) {
      auto mi = missing_for_ebpf_inbound(kernel);
      missing.insert(missing.end(), mi.begin(), mi.end());
    }
    if (!missing.empty()) throw std::runtime_error("--mode ebpf is not possible here: " + join(missing));
    p.outbound = {Engine::Ebpf, {"--mode ebpf"}};
    p.inbound = inbound ? DirectionPlan{Engine::Ebpf, {"--mode ebpf"}}
                        : DirectionPlan{Engine::None, {"no inbound capture requested"}};
    return p;
  }

  // auto
  auto kern_out = missing_for_ebpf_outbound(kernel);
  std::vector<std::string> why_out = kern_out;
  why_out.insert(why_out.end(), cfg_out.begin(), cfg_out.end());
  if (why_out.empty())
    p.outbound = {Engine::Ebpf, {"kernel, privileges and flags allow eBPF"}};
  else
    p.outbound = {Engine::Iptables, why_out};

  if (!inbound) {
    p.inbound = {Engine::None, {"no inbound capture requested"}};
  } else if (p.outbound.engine != Engine::Ebpf) {
    p.inbound = {Engine::Iptables, {"outbound uses iptables (eBPF inbound shares the outbound programs)"}};
  } else {
    std::vector<std::string> why_in = cfg_in;
    if (loader::wants_inbound(cfg)) {
      auto kern_in = missing_for_ebpf_inbound(kernel);
      why_in.insert(why_in.end(), kern_in.begin(), kern_in.end());
    }
    if (why_in.empty())
      p.inbound = {Engine::Ebpf, {"kernel and flags allow sk_lookup"}};
    else
      p.inbound = {Engine::Iptables, why_in};
  }
  return p;
}

CaptureConfig iptables_part(const CaptureConfig& cfg, const Plan& plan) {
  CaptureConfig c = cfg;
  // eBPF's connect hooks decide outbound first: the rules keep only their
  // RETURNs (which cannot capture) and the inbound part. -k's PREROUTING
  // redirect depends on -i, so with -k the full rule set stays (a connect
  // eBPF already redirected reaches the rules as 127.0.0.1 and returns).
  if (plan.outbound.engine == Engine::Ebpf && cfg.reroute_virtual_interfaces.empty()) {
    c.outbound_ranges_include = CidrList{};
    c.outbound_ports_include = PortList{};
  }
  return c;
}

nlohmann::json Plan::to_json() const {
  auto dir = [](const DirectionPlan& d) { return nlohmann::json{{"engine", to_string(d.engine)}, {"reasons", d.reasons}}; };
  return {{"outbound", dir(outbound)}, {"inbound", dir(inbound)}};
}

std::string Plan::summary() const {
  return "outbound " + to_string(outbound.engine) + " (" + join(outbound.reasons) + "), inbound " +
         to_string(inbound.engine) + " (" + join(inbound.reasons) + ")";
}

}  // namespace meshcap
