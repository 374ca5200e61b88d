// A pod's network namespace as the capture decision needs it: its own
// addresses (destinations the kernel routes over lo), the source address a
// connection leaving the pod gets, its interfaces and main routing table.
// Read from the namespace by loader/pod_network.h; used by the planner and
// both engines.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "capture_config.h"

namespace meshcap {

/// An address of the pod, as 4 or 16 network-order bytes.
struct PodAddress {
  int family = 0;  // AF_INET or AF_INET6
  std::array<uint8_t, 16> addr{};
  std::string str() const;
  bool operator==(const PodAddress&) const = default;
};

/// A network namespace's identity: the nsfs inode (what `ip netns identify`
/// compares) and, where the kernel tells it (SO_NETNS_COOKIE, 5.14), the
/// cookie BPF programs see (bpf_get_netns_cookie). A path such as
/// /proc/self/ns/net names different namespaces from different places; this
/// does not.
struct NetnsId {
  uint64_t dev = 0;
  uint64_t ino = 0;
  uint64_t cookie = 0;  ///< 0 when unknown
  bool same_namespace(const NetnsId& o) const { return dev == o.dev && ino == o.ino; }
  /// "dev:ino".
  std::string str() const { return std::to_string(dev) + ":" + std::to_string(ino); }
};

struct PodNetwork {
  NetnsId netns;
  std::vector<PodAddress> addresses;
  std::optional<PodAddress> source4;  ///< source of a connection leaving the pod
  std::optional<PodAddress> source6;
  std::map<std::string, uint32_t> interfaces;  ///< name -> ifindex
  /// The main routing table: a prefix and the interface it leaves through.
  struct Route {
    PodAddress prefix;
    uint8_t prefix_len = 0;
    std::string interface;
  };
  std::vector<Route> routes;
  /// TCP ports something listens on in the namespace when it was read
  /// (whether a proxy already runs there); nullopt when unknown.
  std::optional<std::set<uint16_t>> listening;
};

/// Whether IPv6 is captured, as istio decides it: --dual-stack, or the pod
/// has a global IPv6 address. One answer for dry runs and real runs.
bool ipv6_enabled(const CaptureConfig& cfg, const PodNetwork& pod);
/// Interfaces named by -c / -k that the pod does not have.
std::vector<std::string> missing_interfaces(const CaptureConfig& cfg, const PodNetwork& pod);

}  // namespace meshcap
