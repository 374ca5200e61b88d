// `--run-validation`: after capture is applied, a probe connection made the
// way istio's validator makes it (as the proxy's UID, from 127.0.0.1 to
// 127.0.0.6:PROBE_PORT) must arrive on one of the proxy's listener ports with
// SO_ORIGINAL_DST naming 127.0.0.6:PROBE_PORT.
#pragma once

#include <string>

#include "capture_config.h"
#include "pod.h"

namespace meshcap {

struct ValidationResult {
  bool ok = false;
  std::string detail;
};

/// Runs the probe inside the pod: a child process joins the pod's cgroup
/// (when `join_cgroup`) and network namespace, listens on the proxy's ports
/// and connects as the first proxy UID/GID. Never throws.
ValidationResult run_validation(const PodTarget& pod, const CaptureConfig& cfg, bool join_cgroup);

}  // namespace meshcap
