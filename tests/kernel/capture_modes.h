// The capture modes the kernel and e2e scenarios run under. Every mode is
// applied by the real `meshcap` binary (`meshcap init <init_args> --name N
// --cgroup CG --netns NS <istio flags>`, `meshcap cleanup --name N`), so a
// new mode is one more entry in all_modes().
#pragma once

#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support/common.h"
#include "support/test_pod.h"

#ifndef MESHCAP_BIN
#error "MESHCAP_BIN must name the meshcap binary under test"
#endif

namespace meshcap::test {

/// The engine a mode captures with.
enum class Engine {
  ebpf,
  iptables,
  chosen_at_init,  ///< auto: per part, what the plan chose (read from `meshcap status`)
};

struct CaptureMode {
  std::string name;                    ///< the test-name suffix: letters, digits, '_'
  std::vector<std::string> init_args;  ///< what `meshcap init` gets besides the pod and the istio flags
  Engine engine = Engine::ebpf;        ///< for the few expectations that differ by engine
  /// Why this host cannot run the mode (inbound: the inbound part too); ""
  /// when it can.
  std::function<std::string(bool inbound)> unavailable = [](bool) { return std::string(); };
  /// Called once the pod exists, before any init; teardown after the last
  /// cleanup, before the pod goes. For a mode whose data path lives beside
  /// the pod: a future "node" mode (one node-wide data path serving every
  /// pod) starts it here on a test cgroup and stops it in teardown. No mode
  /// needs them yet.
  std::function<void(TestPod&)> prepare = [](TestPod&) {};
  std::function<void(TestPod&)> teardown = [](TestPod&) {};
};

/// gtest prints a parameter by its name.
inline void PrintTo(const CaptureMode& m, std::ostream* os) { *os << m.name; }
inline std::string capture_mode_name(const ::testing::TestParamInfo<CaptureMode>& info) { return info.param.name; }

/// What this host can do, from `meshcap probe --json -i '*' -b '*'` (run
/// once per process): "" when eBPF outbound / inbound / an iptables backend
/// is possible, else why not. When the probe cannot be read, nothing is
/// ruled out (init then fails with its own message).
struct HostCapabilities {
  std::string no_ebpf_outbound, no_ebpf_inbound, no_iptables_nft, no_iptables_legacy;
};

inline const HostCapabilities& host_capabilities() {
  static const HostCapabilities caps = [] {
    HostCapabilities c;
    const CommandResult r = run_command({MESHCAP_BIN, "probe", "--json", "-i", "*", "-b", "*"});
    const auto start = r.output.find('{');
    if (start == std::string::npos) return c;
    try {
      const auto j = nlohmann::json::parse(r.output.substr(start));
      auto not_ebpf = [&](const char* part) -> std::string {
        const auto& p = j.at("plan").at(part);
        if (p.at("engine") == "ebpf") return "";
        std::string why = std::string("eBPF ") + part + " capture is not possible here:";
        for (const auto& reason : p.at("reasons")) why += " " + reason.get<std::string>() + ";";
        return why;
      };
      c.no_ebpf_outbound = not_ebpf("outbound");
      c.no_ebpf_inbound = not_ebpf("inbound");
      const auto& f = j.at("features");
      if (!f.value("iptables_nft", true)) c.no_iptables_nft = "no usable iptables-nft backend here";
      if (!f.value("iptables_legacy", true)) c.no_iptables_legacy = "no usable iptables-legacy backend here";
    } catch (const std::exception&) {
    }
    return c;
  }();
  return caps;
}

/// Every mode, in the order the scenarios run.
inline const std::vector<CaptureMode>& all_modes() {
  static const std::vector<CaptureMode> modes = {
      {"ebpf", {"--mode", "ebpf"}, Engine::ebpf,
       [](bool inbound) {
         const auto& h = host_capabilities();
         return !h.no_ebpf_outbound.empty() ? h.no_ebpf_outbound : inbound ? h.no_ebpf_inbound : "";
       }},
      {"iptables_nft", {"--mode", "iptables", "--force-iptables-binary", "nft"}, Engine::iptables,
       [](bool) { return host_capabilities().no_iptables_nft; }},
      {"iptables_legacy", {"--mode", "iptables", "--force-iptables-binary", "legacy"}, Engine::iptables,
       [](bool) { return host_capabilities().no_iptables_legacy; }},
      // Whatever the kernel allows per part: the scenarios read the engines
      // it chose (`meshcap status`) where expectations differ.
      {"auto", {"--mode", "auto"}, Engine::chosen_at_init},
  };
  return modes;
}

/// The modes that always capture with `engine`: for the scenarios that
/// exist in one engine only. auto is in neither list (its engine depends
/// on the host).
inline std::vector<CaptureMode> modes_with_engine(Engine engine) {
  std::vector<CaptureMode> out;
  for (const auto& m : all_modes())
    if (m.engine == engine) out.push_back(m);
  return out;
}

}  // namespace meshcap::test
