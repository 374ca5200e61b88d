// How the loader fails: one typed error that names the step, the errno and
// the part of a pod's capture that cannot be done; and the fault hook the
// tests use to make each step fail.
#pragma once

#include <stdexcept>
#include <string>

#include "plan.h"

namespace meshcap::loader {

/// A load, attach, pin or enrolment failure: which step, the errno, and the
/// part of the capture that cannot be done (Part::Outbound when it is all of
/// it: the cgroup programs; Part::Inbound when only sk_lookup or listener
/// adoption failed, so outbound can stay on eBPF).
class LoaderError : public std::runtime_error {
 public:
  LoaderError(std::string step, int err, const std::string& detail = "", Part part = Part::Outbound);
  const std::string& step() const { return step_; }
  int error() const { return err_; }
  Part part() const { return part_; }

 private:
  std::string step_;
  int err_;
  Part part_;
};

/// A test hook: when MESHCAP_FAULT_AT names `step` ("STEP" or "STEP:kill"),
/// throws a LoaderError there (or SIGKILLs the process). Steps and the part
/// they take with them: "load" (all: the kernel refuses the programs),
/// "load-sk_lookup" (inbound: the kernel refuses only sk_lookup), "attach"
/// (all), "pin-link", "pinned" (all), "enroll" (all: writing the pod's
/// settings), "sk_lookup" (inbound: attaching to the pod's netns), "adopt"
/// (inbound: taking the running proxy's listener), "enabled" (all: the
/// commit); "upgrade-link" (node start replacing programs); then "iptables"
/// and "state" in the agent.
void fault_point(const std::string& step, Part part = Part::Outbound);

}  // namespace meshcap::loader
