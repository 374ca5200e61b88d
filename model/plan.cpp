#include "plan.h"

#include <stdexcept>

namespace meshcap {

namespace {

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : "; ") + s;
  return out;
}

}  // namespace

const char* to_string(Mode m) {
  switch (m) {
    case Mode::Ebpf:
      return "ebpf";
    case Mode::Iptables:
      return "iptables";
    default:
      return "auto";
  }
}

const char* to_string(Engine e) {
  switch (e) {
    case Engine::Ebpf:
      return "ebpf";
    case Engine::Iptables:
      return "iptables";
    default:
      return "none";
  }
}

const char* to_string(Part p) { return p == Part::Outbound ? "outbound" : "inbound"; }

std::optional<Mode> mode_from_string(std::string_view s) {
  for (Mode m : {Mode::Auto, Mode::Ebpf, Mode::Iptables})
    if (s == to_string(m)) return m;
  return std::nullopt;
}

std::optional<Engine> engine_from_string(std::string_view s) {
  for (Engine e : {Engine::None, Engine::Ebpf, Engine::Iptables})
    if (s == to_string(e)) return e;
  return std::nullopt;
}

bool inbound_requested(const CaptureConfig& cfg) {
  return !cfg.inbound_ports_include.empty() || !cfg.reroute_virtual_interfaces.empty() || cfg.drop_invalid;
}

CaptureConfig Plan::ebpf_config() const {
  CaptureConfig c = config;
  c.accelerate = accelerate;
  if (inbound.engine != Engine::Ebpf) {
    c.inbound_ports_include = PortList{};
    c.reroute_virtual_interfaces.clear();
  }
  return c;
}

CaptureConfig Plan::iptables_config() const {
  CaptureConfig c = config;
  c.accelerate = false;
  if (outbound.engine == Engine::Ebpf && config.reroute_virtual_interfaces.empty()) {
    c.outbound_ranges_include = CidrList{};
    c.outbound_ports_include = PortList{};
  }
  // DNS is outbound: eBPF's when outbound is. The owner rules keep istio's
  // DNS variants; ISTIO_OUTPUT_DNS and the conntrack zones are left out.
  if (outbound.engine == Engine::Ebpf) c.dns_redirect_by_ebpf = true;
  return c;
}

void Plan::fall_back_to_iptables(Part p, const std::string& reason) {
  if (mode != Mode::Auto)
    throw std::runtime_error(std::string("--mode ") + to_string(mode) + ": " + to_string(p) +
                             " cannot be captured with eBPF here: " + reason);
  part(p) = {Engine::Iptables, {reason}};
  if (p == Part::Outbound) {
    if (inbound.engine == Engine::Ebpf)
      inbound = {Engine::Iptables, {"outbound uses iptables (eBPF inbound shares the outbound programs)"}};
    dns = false;
    if (accelerate) {
      accelerate = false;
      notes.push_back("--accelerate: not applied, outbound capture is by iptables");
    }
  }
}

nlohmann::json Plan::to_json() const {
  auto part_json = [](const PartPlan& d) {
    return nlohmann::json{{"engine", to_string(d.engine)}, {"reasons", d.reasons}};
  };
  return {{"mode", to_string(mode)},       {"ipv6", ipv6},          {"accelerate", accelerate}, {"dns", dns},
          {"outbound", part_json(outbound)}, {"inbound", part_json(inbound)}, {"notes", notes}};
}

Plan Plan::from_json(const nlohmann::json& j) {
  Plan p;
  p.mode = mode_from_string(j.value("mode", "auto")).value_or(Mode::Auto);
  p.ipv6 = j.value("ipv6", false);
  p.accelerate = j.value("accelerate", false);
  p.dns = j.value("dns", false);
  for (Part part : {Part::Outbound, Part::Inbound}) {
    const auto& d = j.at(to_string(part));
    p.part(part).engine = engine_from_string(d.value("engine", "none")).value_or(Engine::None);
    p.part(part).reasons = d.value("reasons", std::vector<std::string>{});
  }
  p.notes = j.value("notes", std::vector<std::string>{});
  return p;
}

std::string Plan::summary() const {
  return std::string("outbound ") + to_string(outbound.engine) + " (" + join(outbound.reasons) + "), inbound " +
         to_string(inbound.engine) + " (" + join(inbound.reasons) + ")";
}

}  // namespace meshcap
