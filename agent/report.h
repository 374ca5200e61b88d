// What meshcap prints: the plan of a dry run (the very Plan a real run
// applies: per part the engine and reasons, the eBPF programs and map
// contents, the iptables-restore payloads).
#pragma once

#include <ostream>

#include "host.h"
#include "plan.h"
#include "pod_network.h"
#include "target.h"

namespace meshcap {

void print_plan(std::ostream& out, const PodTarget& t, const Plan& plan, const PodNetwork& pod, const EbpfHost& host);

/// "a; b; c".
std::string join(const std::vector<std::string>& v, const std::string& sep = "; ");

}  // namespace meshcap
