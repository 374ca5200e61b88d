// Many bare network namespaces at once, for node-mode scale tests and the
// benchmark: a thousand pods cost a few seconds, not the minutes a thousand
// TestPods would (each TestPod is two named namespaces, a cgroup and a
// dozen `ip` commands).
//
//   hub netns                                pod netns i
//   h<i> 10.<a>.<b>.<c+1>/30   <-- veth -->   eth0 10.<a>.<b>.<c+2>/30, lo up,
//                                             default route via the hub end
//
// Both ends have fixed MAC addresses and permanent neighbour entries for
// each other: no ARP, and nothing counted against the kernel's ARP table
// limit, which all namespaces share (gc_thresh3, 1024 by default: a
// thousand pods learning neighbours by ARP overflow it and lose packets).
//
// Every namespace is held only by a file descriptor of this process: no
// /run/netns entry, no mount, nothing to register for emergency removal.
// When the process ends, however it ends, the kernel removes them and their
// veths. Pod namespaces are named to other processes (`meshcap init
// --netns`) by path(i), /proc/PID/fd/N, valid while the fleet lives.
// Addresses come from 10.224.0.0/12 (16,384 pods at most), apart from
// TestPod's 10.211/16. Needs root.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "support/common.h"

namespace meshcap::test {

class NetnsFleet {
 public:
  /// Creates `pods` namespaces and the hub. Throws TestSupportError (and
  /// leaves nothing) when one cannot be made.
  explicit NetnsFleet(size_t pods);
  ~NetnsFleet() = default;
  NetnsFleet(const NetnsFleet&) = delete;
  NetnsFleet& operator=(const NetnsFleet&) = delete;

  size_t size() const { return pods_.size(); }
  /// Open file descriptor of pod namespace i (setns(fd(i), CLONE_NEWNET)).
  int fd(size_t i) const { return pods_.at(i).get(); }
  /// /proc/PID/fd/N: a path that opens pod namespace i, for other processes.
  std::string path(size_t i) const;
  int hub_fd() const { return hub_.get(); }
  std::string hub_path() const;
  /// Pod i's address (eth0) and the hub's end of its veth.
  std::string pod_ipv4(size_t i) const;
  std::string hub_ipv4(size_t i) const;

 private:
  UniqueFd hub_;
  std::vector<UniqueFd> pods_;
};

}  // namespace meshcap::test
