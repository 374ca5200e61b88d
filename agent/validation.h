// `--run-validation`: after capture is applied, real connections made inside
// the pod must land where the plan says, for each captured part:
//   - outbound: an application's connection to an address outside the pod
//     that the flags capture (a documentation address, RFC 5737, unless the
//     flags name others) must arrive at the outbound listener with
//     SO_ORIGINAL_DST naming that address;
//   - istio's own probe: the proxy's identity dialing 127.0.0.6:PROBE_PORT
//     from 127.0.0.1 must arrive at one of the listeners with
//     SO_ORIGINAL_DST naming 127.0.0.6:PROBE_PORT.
// The validator listens on the proxy's ports itself, as istio's does, so it
// runs before the proxy starts.
#pragma once

#include <optional>
#include <string>

#include "plan.h"
#include "pod_network.h"
#include "target.h"

namespace meshcap {

struct ValidationResult {
  bool ok = false;
  std::string detail;
};

/// A connection the flags capture outbound: destination (IPv4), port and
/// the identity that makes it; nullopt when the flags capture no IPv4
/// connection leaving the pod.
struct OutboundProbe {
  std::string address;
  uint16_t port = 0;
  uint32_t uid = 0, gid = 0;
};
std::optional<OutboundProbe> outbound_probe(const CaptureConfig& cfg, const PodNetwork& pod);

/// Runs the checks inside the pod: a child process joins a cgroup below
/// `programs_cgroup` (when not empty: where the eBPF programs are attached)
/// and the pod's network namespace. Never throws.
ValidationResult run_validation(const PodTarget& pod, const Plan& plan, const PodNetwork& net,
                                const std::string& programs_cgroup);

}  // namespace meshcap
