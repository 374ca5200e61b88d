// Shared by the eBPF kernel and e2e tests: a throwaway pod, the meshcap
// binary run for real, and checks that nothing is left attached or pinned.
#pragma once

#include <bpf/bpf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "datapath.h"
#include "support/common.h"
#include "support/sockets.h"
#include "support/test_pod.h"

#ifndef MESHCAP_BIN
#error "MESHCAP_BIN must name the meshcap binary under test"
#endif

namespace meshcap::test {

/// How many programs one eBPF capture attaches to a cgroup.
inline constexpr size_t kCapturePrograms = 8;
/// The cgroup attach types meshcap's capture uses.
inline const std::vector<bpf_attach_type>& capture_attach_types() {
  static const std::vector<bpf_attach_type> types = {
      BPF_CGROUP_INET4_CONNECT,     BPF_CGROUP_INET6_CONNECT,     BPF_CGROUP_SOCK_OPS,
      BPF_CGROUP_GETSOCKOPT,        BPF_CGROUP_INET4_GETPEERNAME, BPF_CGROUP_INET6_GETPEERNAME,
      BPF_CGROUP_INET4_BIND,        BPF_CGROUP_INET6_BIND};
  return types;
}

/// Programs attached to a cgroup at the capture's hooks.
inline size_t programs_attached(const std::string& cgroup) {
  int fd = open(cgroup.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return 0;
  size_t total = 0;
  for (auto type : capture_attach_types()) {
    __u32 ids[64], count = 64, flags = 0;
    if (bpf_prog_query(fd, type, 0, &flags, ids, &count) == 0) total += count;
  }
  close(fd);
  return total;
}

/// Programs attached at a network namespace's sk_lookup hook.
inline size_t sk_lookup_attached(const std::string& netns_path) {
  int fd = open(netns_path.c_str(), O_RDONLY);
  if (fd < 0) return 0;
  __u32 ids[16], count = 16, flags = 0;
  size_t n = bpf_prog_query(fd, BPF_SK_LOOKUP, 0, &flags, ids, &count) == 0 ? count : 0;
  close(fd);
  return n;
}

class CaptureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root: creates namespaces and cgroups and loads BPF";
    pod_ = std::make_unique<TestPod>();
    name_ = "t" + pod_->suffix();
  }
  void TearDown() override {
    if (pod_) {
      meshcap({"cleanup", "--name", name_});
      EXPECT_FALSE(loader::pinned_state(name_).present);
      pod_.reset();
    }
  }

  /// Runs the meshcap binary; returns exit code and output.
  CommandResult meshcap(std::vector<std::string> args) {
    args.insert(args.begin(), MESHCAP_BIN);
    return run_command(args);
  }
  /// meshcap init --mode ebpf for this pod, with istio flags.
  CommandResult init_ebpf(std::vector<std::string> flags) {
    std::vector<std::string> args = {"init", "--mode", "ebpf", "--name", name_, "--cgroup", pod_->cgroup_path(),
                                     "--netns", pod_->pod_netns_path()};
    args.insert(args.end(), flags.begin(), flags.end());
    return meshcap(args);
  }

  /// A round trip made by an application in the pod (in its cgroup) as id.
  RoundTrip app_roundtrip(const std::string& ip, uint16_t port, Identity id = Identity::user(1000, 1000),
                          const ConnectOptions& options = {}) {
    return roundtrip_in_pod(*pod_, ip, port, id, options);
  }
  /// A round trip made from outside the pod (its peer namespace).
  RoundTrip peer_roundtrip(const std::string& ip, uint16_t port) { return roundtrip_in_peer(*pod_, ip, port); }
  /// `meshcap status --name NAME --json`, the pod's entry.
  nlohmann::json status_json(const std::string& name) {
    auto r = meshcap({"status", "--name", name, "--json"});
    return nlohmann::json::parse(r.output.substr(r.output.find('['))).at(0);
  }

  std::unique_ptr<TestPod> pod_;
  std::string name_;
};

/// Waits (up to `timeout`) until `count()` reaches `expected`, and returns
/// the count: servers in other processes report accepts asynchronously.
inline size_t settle(const std::function<size_t()>& count, size_t expected, Millis timeout = Millis(5000)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  size_t n = count();
  while (n < expected && std::chrono::steady_clock::now() < deadline) {
    usleep(10 * 1000);
    n = count();
  }
  return n;
}
/// EXPECT_EQ on a count of accepted connections, once it has settled.
#define EXPECT_ACCEPTS(expr, n) EXPECT_EQ(::meshcap::test::settle([&] { return size_t(expr); }, (n)), size_t(n))

/// "[ip6]:port" or "ip:port".
inline std::string endpoint(const std::string& ip, uint16_t port) {
  return ip.find(':') == std::string::npos ? ip + ":" + std::to_string(port)
                                            : "[" + ip + "]:" + std::to_string(port);
}
/// The address part of "ip:port" / "[ip6]:port".
inline std::string host_of(const std::string& ep) {
  if (!ep.empty() && ep[0] == '[') return ep.substr(1, ep.find(']') - 1);
  return ep.substr(0, ep.rfind(':'));
}

}  // namespace meshcap::test
