#include "pod_network.h"

#include <arpa/inet.h>

namespace meshcap {

std::string PodAddress::str() const {
  char buf[INET6_ADDRSTRLEN] = {};
  inet_ntop(family, addr.data(), buf, sizeof(buf));
  return buf;
}

bool ipv6_enabled(const CaptureConfig& cfg, const PodNetwork& pod) { return cfg.dual_stack || pod.source6.has_value(); }

std::vector<std::string> missing_interfaces(const CaptureConfig& cfg, const PodNetwork& pod) {
  std::vector<std::string> missing;
  for (const auto* list : {&cfg.exclude_interfaces, &cfg.reroute_virtual_interfaces})
    for (const auto& name : *list)
      if (!pod.interfaces.count(name)) missing.push_back(name);
  return missing;
}

}  // namespace meshcap
