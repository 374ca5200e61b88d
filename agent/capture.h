// Capturing one pod, the way every entry point does it (`meshcap init`, the
// `istio-iptables` drop-in, the CNI plugin): parse -> plan -> apply ->
// record (-> validate). Everything is validated before anything is touched.
#pragma once

#include <optional>
#include <string>

#include "host.h"
#include "istio_flags.h"
#include "plan.h"
#include "pod_state.h"
#include "target.h"

namespace meshcap {

/// What to capture, as the caller was given it.
struct CaptureRequest {
  std::string name;    ///< "" derives one from the namespace (and cgroup)
  std::string cgroup;  ///< the pod's own cgroup for a per-pod data path ("" without)
  std::string netns;   ///< path or /run/netns name ("" the caller's)
  Mode mode = Mode::Auto;
  FlagSet flags;       ///< resolved (FlagSet::resolve)
  bool accelerate = false;
  PodState::Origin origin;  ///< who asked (recorded)
  std::optional<NodeView> node;  ///< the node as the caller read it (else read when planning)
};

/// The request parsed and planned; nothing touched yet.
struct PlannedCapture {
  PodTarget target;
  EbpfHost host;
  PodNetwork pod;
  Plan plan;
};

/// Validates `r` (UsageError for bad input) and plans it. `loading`: the
/// plan will be applied (a pod's own programs then probe themselves).
PlannedCapture plan_capture(const CaptureRequest& r, bool loading);

/// Applies a planned capture, replaces whatever the pod had before (no
/// moment without capture), records it, and validates when the flags ask
/// (--run-validation): a failed validation removes everything and returns
/// false with the reason in `why`.
bool apply_capture(const CaptureRequest& r, PlannedCapture& p, PodState& out, std::string& why);

}  // namespace meshcap
