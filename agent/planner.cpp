#include "planner.h"

#include <algorithm>

#include "datapath.h"

namespace meshcap {

namespace {

void need(bool have, const std::string& what, std::vector<std::string>& missing) {
  if (!have) missing.push_back(what);
}

std::vector<std::string> operator+(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : "; ") + s;
  return out;
}

// A program row's reason, with the probe's detail when it has one.
std::string refused(loader::KernelFeatures& k, loader::Feature f, const std::string& what) {
  std::string d = k.detail(f);
  return what + (d.empty() ? "" : " (" + d + ")");
}

// Interfaces named by -c (outbound) or -k (inbound) that the pod lacks: the
// eBPF path resolves them once, at init; iptables matches names later too.
std::vector<std::string> missing_iface_reasons(const CaptureConfig& cfg, const PodNetwork& pod,
                                               const std::vector<std::string>& list, const char* flag) {
  std::vector<std::string> why;
  auto missing = missing_interfaces(cfg, pod);
  for (const auto& name : list)
    if (std::count(missing.begin(), missing.end(), name))
      why.push_back(std::string(flag) + " names " + name +
                    ", which the pod does not have (eBPF resolves interfaces once, at init)");
  return why;
}

}  // namespace

std::vector<std::string> missing_for_ebpf_outbound(loader::KernelFeatures& k) {
  std::vector<std::string> m;
  need(k.cap_bpf(), "no CAP_BPF or CAP_SYS_ADMIN (BPF not permitted)", m);
  need(k.cap_net_admin() || k.cap_sys_admin(), "no CAP_NET_ADMIN", m);
  if (!m.empty()) return m;  // the probes below would only fail for the same reason
  need(k.bpf_syscall(), "the bpf() system call fails", m);
  need(k.cgroup2(), "no cgroup v2 hierarchy mounted", m);
  if (!m.empty()) return m;
  using loader::Feature;
  if (!k.prog_connect()) m.push_back(refused(k, Feature::prog_connect, "kernel refuses meshcap's cgroup connect programs"));
  if (!k.prog_getpeername())
    m.push_back(refused(k, Feature::prog_getpeername, "kernel refuses meshcap's cgroup getpeername programs"));
  if (!k.prog_sockops()) m.push_back(refused(k, Feature::prog_sockops, "kernel refuses meshcap's sockops program"));
  if (!k.prog_getsockopt())
    m.push_back(refused(k, Feature::prog_getsockopt, "kernel refuses meshcap's cgroup getsockopt program"));
  return m;
}

std::vector<std::string> missing_for_ebpf_inbound(loader::KernelFeatures& k, bool interfaces) {
  std::vector<std::string> m;
  using loader::Feature;
  if (!k.prog_sk_lookup())
    m.push_back(refused(k, Feature::prog_sk_lookup, "kernel refuses meshcap's sk_lookup program"));
  else if (interfaces && !k.prog_sk_lookup_ifindex())
    m.push_back(refused(k, Feature::prog_sk_lookup_ifindex,
                        "-c / -k need the arrival interface in sk_lookup, which this kernel does not give"));
  return m;
}

std::vector<std::string> ebpf_unsupported_outbound(const CaptureConfig& cfg) {
  std::vector<std::string> why;
  const size_t max = loader::max_proxy_ids();
  if (cfg.proxy_uids.tokens.size() > max) why.push_back("more than " + std::to_string(max) + " UIDs in -u");
  if (cfg.proxy_gids.tokens.size() > max) why.push_back("more than " + std::to_string(max) + " GIDs in -g");
  return why;
}

std::vector<std::string> ebpf_unsupported_inbound(const CaptureConfig& cfg) {
  std::vector<std::string> why;
  if (cfg.inbound_mode == InterceptionMode::Tproxy && !cfg.inbound_ports_include.empty())
    why.push_back("-m TPROXY is iptables-only");
  if (cfg.drop_invalid) why.push_back("--drop-invalid is iptables-only");
  return why;
}

Plan make_plan(const PlanInput& in, loader::KernelFeatures& kernel) {
  const CaptureConfig& cfg = in.config;
  Plan p;
  p.mode = in.mode;
  p.config = cfg;
  p.ipv6 = ipv6_enabled(cfg, in.pod);
  const bool inbound = inbound_requested(cfg);
  const PartPlan no_inbound{Engine::None, {"no inbound capture requested"}};
  if (in.accelerate && in.mode == Mode::Iptables)
    throw UsageError("--accelerate: needs eBPF outbound capture, which --mode iptables does not use");

  if (in.mode == Mode::Iptables) {
    p.outbound = {Engine::Iptables, {"--mode iptables"}};
    p.inbound = inbound ? PartPlan{Engine::Iptables, {"--mode iptables"}} : no_inbound;
    return p;
  }

  // Why not eBPF, per part: what the flags ask that eBPF cannot do, what the
  // pod lacks, and what the kernel, the privileges or the host lack.
  const auto cfg_out = ebpf_unsupported_outbound(cfg) +
                       missing_iface_reasons(cfg, in.pod, cfg.exclude_interfaces, "-c");
  const auto cfg_in = ebpf_unsupported_inbound(cfg) +
                      missing_iface_reasons(cfg, in.pod, cfg.reroute_virtual_interfaces, "-k");
  std::vector<std::string> host_out;
  if (in.no_ebpf_host) host_out.push_back(*in.no_ebpf_host);
  auto kern_out = missing_for_ebpf_outbound(kernel);
  // DNS capture is part of outbound: its programs, when it is on.
  if (kern_out.empty() && dns_redirect_active(cfg) && !kernel.prog_dns())
    kern_out.push_back(refused(kernel, loader::Feature::prog_dns,
                               "--redirect-dns needs meshcap's cgroup sendmsg/recvmsg programs"));
  const bool ifaces = !cfg.exclude_interfaces.empty() || !cfg.reroute_virtual_interfaces.empty();
  const bool ebpf_inbound_wanted = !cfg.inbound_ports_include.empty() || !cfg.reroute_virtual_interfaces.empty();

  if (in.mode == Mode::Ebpf) {
    const auto refused_cfg = cfg_out + (inbound ? cfg_in : std::vector<std::string>{});
    if (!refused_cfg.empty()) throw UsageError("--mode ebpf cannot honour this configuration: " + join(refused_cfg));
    auto missing = host_out + kern_out;
    if (missing.empty() && ebpf_inbound_wanted) missing = missing_for_ebpf_inbound(kernel, ifaces);
    if (!missing.empty()) throw std::runtime_error("--mode ebpf is not possible here: " + join(missing));
    p.outbound = {Engine::Ebpf, {"--mode ebpf"}};
    p.inbound = inbound ? PartPlan{Engine::Ebpf, {"--mode ebpf"}} : no_inbound;
  } else {
    const auto why_out = host_out + kern_out + cfg_out;
    p.outbound = why_out.empty() ? PartPlan{Engine::Ebpf, {"kernel, privileges and flags allow eBPF"}}
                                 : PartPlan{Engine::Iptables, why_out};
    if (!inbound) {
      p.inbound = no_inbound;
    } else if (p.outbound.engine != Engine::Ebpf) {
      p.inbound = {Engine::Iptables, {"outbound uses iptables (eBPF inbound shares the outbound programs)"}};
    } else {
      auto why_in = cfg_in;
      if (why_in.empty() && ebpf_inbound_wanted) why_in = missing_for_ebpf_inbound(kernel, ifaces);
      p.inbound = why_in.empty() ? PartPlan{Engine::Ebpf, {"kernel and flags allow sk_lookup"}}
                                 : PartPlan{Engine::Iptables, why_in};
    }
  }

  p.dns = p.outbound.engine == Engine::Ebpf && dns_redirect_active(cfg);
  // --accelerate: eBPF outbound and sk_msg, or nothing (with a note).
  if (in.accelerate) {
    if (p.outbound.engine != Engine::Ebpf) {
      p.notes.push_back("--accelerate: not applied, outbound capture is by iptables");
    } else if (!kernel.prog_sk_msg()) {
      if (in.mode == Mode::Ebpf) throw std::runtime_error("--accelerate: the kernel refuses meshcap's sk_msg program");
      p.notes.push_back("--accelerate: not applied, the kernel refuses meshcap's sk_msg program");
    } else {
      p.accelerate = true;
    }
  }
  return p;
}

}  // namespace meshcap
