#include "variants.h"

#include <sstream>

namespace meshcap::bench {

namespace {

using Caps = std::vector<std::pair<Capture, std::string>>;

// Through haproxy, and the proxy alone.
void proxy_variants(const Caps& caps, std::vector<RigDef>& rigs, std::vector<VariantDef>& vs) {
  rigs.push_back({"E", "explicit-proxy", Capture::none, Sidecar::explicit_proxy});
  vs.push_back({"explicit-proxy", "E", true, kExplicitEchoPort, kExplicitSinkPort, "proxy", "none", true, false,
                "relay"});
  for (const auto& [cap, name] : caps) {
    rigs.push_back({"P-" + name, name + "+proxy", cap, Sidecar::haproxy});
    vs.push_back({name + "+proxy", "P-" + name, false, kEchoPort, kSinkPort, "proxy", name, true, true, "relay"});
  }
  // eBPF with --accelerate (haproxy does not splice in this configuration).
  rigs.push_back({"P-ebpf-accel", "ebpf-accel+proxy", Capture::ebpf, Sidecar::haproxy, false, true});
  vs.push_back({"ebpf-accel+proxy", "P-ebpf-accel", false, kEchoPort, kSinkPort, "proxy", "ebpf-accel", true, false,
                "relay"});
}

// Mechanism only: the capture redirects to a plain echo server in the pod.
// local-direct and ebpf-mech also run the request/response workloads when
// the diagnostics do (against ebpf-accel-mech). local-direct-podsrc, from
// the pod's own address as a redirect keeps it, is the floor the
// mechanism targets measure above.
void mechanism_variants(const Profile& p, const Caps& caps, std::vector<RigDef>& rigs, std::vector<VariantDef>& vs) {
  const bool mech_rr = p.diagnostics;
  vs.push_back({"local-direct", "D", true, kOutboundPort, 0, "mechanism", "none", mech_rr, true, "local"});
  vs.push_back({"local-direct-podsrc", "D", true, kOutboundPort, 0, "mechanism", "none", false, true, "local", true});
  for (const auto& [cap, name] : caps) {
    rigs.push_back({"M-" + name, name + "-mech", cap, Sidecar::echo});
    vs.push_back({name + "-mech", "M-" + name, false, kEchoPort, 0, "mechanism", name, mech_rr && cap == Capture::ebpf,
                  true, "local"});
  }
}

// Not product variants: meshcap's connect hooks alone (the other programs
// detached), to split eBPF's overhead; and --accelerate with the local
// echo server as the other end, so request/response shows what sk_msg
// redirection does to the one hop it replaces (the goals use
// ebpf-accel+proxy).
void diagnostic_variants(std::vector<RigDef>& rigs, std::vector<VariantDef>& vs) {
  rigs.push_back({"M-ebpf-connect-only", "ebpf-connect-only-mech", Capture::ebpf, Sidecar::echo, true});
  vs.push_back({"ebpf-connect-only-mech", "M-ebpf-connect-only", false, kEchoPort, 0, "mechanism", "ebpf", false, true,
                "local"});
  rigs.push_back({"M-ebpf-accel", "ebpf-accel-mech", Capture::ebpf, Sidecar::echo, false, true});
  vs.push_back({"ebpf-accel-mech", "M-ebpf-accel", false, kEchoPort, 0, "mechanism", "ebpf-accel", true, false,
                "local"});
}

}  // namespace

void define_variants(const Profile& p, std::vector<RigDef>& rigs, std::vector<VariantDef>& vs) {
  rigs.push_back({"D", "direct", Capture::none, Sidecar::none});
  vs.push_back({"direct", "D", false, kEchoPort, kSinkPort, "proxy", "none", true, true, "direct"});
  if (p.aa) {
    rigs.push_back({"D2", "direct-aa", Capture::none, Sidecar::none});
    vs.push_back({"direct-aa", "D2", false, kEchoPort, kSinkPort, "proxy", "none", true, false, "direct"});
  }
  Caps caps = {{Capture::nft, "iptables-nft"}};
  if (p.legacy) caps.push_back({Capture::legacy, "iptables-legacy"});
  caps.push_back({Capture::ebpf, "ebpf"});
  if (p.proxies) proxy_variants(caps, rigs, vs);
  mechanism_variants(p, caps, rigs, vs);
  if (p.diagnostics) diagnostic_variants(rigs, vs);
}

std::string verify_variant(Rig& rig, const VariantDef& v) {
  const std::string ip = v.local ? "127.0.0.1" : rig.peer_ip();
  const std::string reply = rig.probe(ip, v.echo_port);
  std::istringstream in(reply);
  std::string tag, seen, local;
  in >> tag >> seen >> local;
  auto port = [](const std::string& s) { return s.substr(s.rfind(':') + 1); };
  const bool ok = v.expect == "local"    ? tag == "LOCAL"
                  : v.expect == "direct" ? tag == "PEER" && seen == local
                                         : tag == "PEER" && !seen.empty() && !local.empty() && port(seen) != port(local);
  if (ok) return "";
  return v.name + ": probe to " + ip + ":" + std::to_string(v.echo_port) + " answered '" + reply + "', expected " +
         (v.expect == "local"    ? "the pod's local server"
          : v.expect == "direct" ? "the peer, seeing the client itself"
                                 : "the peer through a relay");
}

}  // namespace meshcap::bench
