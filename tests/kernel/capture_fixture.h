// Shared by the kernel and e2e tests: a throwaway pod, the meshcap binary
// run for real, and checks that nothing is left attached or pinned.
// CaptureModeTest runs a scenario once per capture mode (capture_modes.h).
#pragma once

#include <bpf/bpf.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "capture_modes.h"
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
/// ... and with DNS capture's four (sendmsg4/6, recvmsg4/6): a pod's own
/// data path with --redirect-dns, and the node data path.
inline constexpr size_t kDnsCapturePrograms = kCapturePrograms + 4;
/// The cgroup attach types meshcap's capture uses.
inline const std::vector<bpf_attach_type>& capture_attach_types() {
  static const std::vector<bpf_attach_type> types = {
      BPF_CGROUP_INET4_CONNECT,     BPF_CGROUP_INET6_CONNECT,     BPF_CGROUP_SOCK_OPS,
      BPF_CGROUP_GETSOCKOPT,        BPF_CGROUP_INET4_GETPEERNAME, BPF_CGROUP_INET6_GETPEERNAME,
      BPF_CGROUP_INET4_BIND,        BPF_CGROUP_INET6_BIND,        BPF_CGROUP_UDP4_SENDMSG,
      BPF_CGROUP_UDP6_SENDMSG,      BPF_CGROUP_UDP4_RECVMSG,      BPF_CGROUP_UDP6_RECVMSG};
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

/// A CaptureTest run once per capture mode (the test's parameter): init and
/// cleanup through the meshcap binary with the mode's arguments, the engine
/// each part ended with, and what each engine counts. Teardown cleans up and
/// checks that nothing of meshcap is left in the pod, whatever the mode.
class CaptureModeTest : public CaptureTest, public ::testing::WithParamInterface<CaptureMode> {
 protected:
  void SetUp() override { set_up_mode(false); }
  /// Scenarios that capture inbound call this with true: skipped where the
  /// mode cannot capture inbound on this host.
  void set_up_mode(bool inbound) {
    CaptureTest::SetUp();
    if (IsSkipped()) return;
    if (auto why = mode().unavailable(inbound); !why.empty()) GTEST_SKIP() << mode().name << ": " << why;
    mode().prepare(*pod_);
    prepared_ = true;
  }
  void TearDown() override {
    if (!pod_) return;
    auto r = meshcap({"cleanup", "--name", name_});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(leftovers(), "");
    if (prepared_) mode().teardown(*pod_);
    pod_.reset();
  }

  const CaptureMode& mode() const { return GetParam(); }

  /// `meshcap init` with the mode's arguments for this pod, and istio flags.
  std::vector<std::string> init_args(const std::vector<std::string>& flags) const {
    std::vector<std::string> args = {"init"};
    args.insert(args.end(), mode().init_args.begin(), mode().init_args.end());
    args.insert(args.end(), {"--name", name_, "--cgroup", pod_->cgroup_path(), "--netns", pod_->pod_netns_path()});
    args.insert(args.end(), flags.begin(), flags.end());
    return args;
  }
  /// ASSERT_TRUE(init({...})): runs it and learns the engine of each part
  /// (for auto, from `meshcap status`); the command and its output when it
  /// fails.
  ::testing::AssertionResult init(const std::vector<std::string>& flags) {
    const CommandResult r = meshcap(init_args(flags));
    if (r.exit_code != 0) {
      std::string cmd;
      for (const auto& a : init_args(flags)) cmd += " " + (a.empty() ? "''" : a);
      return ::testing::AssertionFailure() << "meshcap" << cmd << " exited " << r.exit_code << ": " << r.output;
    }
    learn_engines();
    // An iptables mode's rules are in its backend's tables.
    if (mode().engine == Engine::iptables && nat_save(false).find("ISTIO_") == std::string::npos)
      return ::testing::AssertionFailure() << "no ISTIO_ chain in " << ipv4_save_ << " after init: " << r.output;
    return ::testing::AssertionSuccess();
  }

  /// The engine a part ended with at the last init ("ebpf", "iptables",
  /// "none"). Where the expectations of the engines differ, scenarios branch
  /// on these, naming the difference (docs/known-differences.md).
  bool ebpf_outbound() const { return outbound_engine_ == "ebpf"; }
  bool ebpf_inbound() const { return inbound_engine_ == "ebpf"; }

  /// eBPF: the pod's decision counters.
  loader::Counters counters() { return loader::pinned_counters(name_); }

  /// iptables: `<save> -t nat` in the pod's netns with the backend of the
  /// last init (its IPv6 twin for v6), with the rules' counters when asked.
  std::string nat_save(bool v6, bool with_counters = false) {
    if (ipv4_save_.empty()) {
      ADD_FAILURE() << "no iptables backend: the last init used none";
      return "";
    }
    std::vector<std::string> argv = {"nsenter", "--net=" + pod_->pod_netns_path(),
                                     v6 ? ipv6_save() : ipv4_save_, "-t", "nat"};
    if (with_counters) argv.push_back("-c");
    const CommandResult r = run_command(argv);
    EXPECT_TRUE(r.ok()) << argv[2] << ": " << r.output;
    return r.output;
  }
  /// The nat rules without counters or comments, in order.
  std::string nat_rules(bool v6) {
    std::istringstream in(nat_save(v6));
    std::string line, out;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#') continue;
      if (line[0] == ':') line = line.substr(0, line.find(' '));  // chain policy counters
      out += line + "\n";
    }
    return out;
  }
  /// Packets that matched the nat rule written exactly `rule` (as
  /// iptables-save prints it); a nat rule sees the first packet of a
  /// connection only, so this counts connections. -1 if the rule is not there.
  int64_t packets(bool v6, const std::string& rule) {
    std::istringstream in(nat_save(v6, true));
    int64_t total = -1;
    for (std::string line; std::getline(in, line);) {
      const auto close = line.find("] ");
      if (line.empty() || line[0] != '[' || close == std::string::npos || line.substr(close + 2) != rule) continue;
      total = std::max<int64_t>(total, 0) + std::stoll(line.substr(1, line.find(':') - 1));
    }
    return total;
  }
  int64_t outbound_redirects(bool v6) { return packets(v6, "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"); }
  int64_t inbound_redirects(bool v6) { return packets(v6, "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"); }

  /// What is left of meshcap in the pod: "" when nothing (no cgroup or
  /// sk_lookup program, no pins, no ISTIO chain in a backend an init used).
  std::string leftovers() {
    std::string s;
    if (size_t n = programs_attached(pod_->cgroup_path())) s += std::to_string(n) + " cgroup programs; ";
    if (size_t n = sk_lookup_attached(pod_->pod_netns_path())) s += std::to_string(n) + " sk_lookup programs; ";
    if (loader::pinned_state(name_).present) s += "pins of " + name_ + "; ";
    for (const auto& save : saves_used_) {
      auto r = run_command({"nsenter", "--net=" + pod_->pod_netns_path(), save});
      if (r.output.find("ISTIO") != std::string::npos) s += save + " shows ISTIO chains; ";
    }
    return s;
  }

 private:
  void learn_engines() {
    // A mode of one engine with a forced backend says it all; otherwise ask
    // `meshcap status` (50 ms with iptables, so not for every init).
    const auto& a = mode().init_args;
    const auto forced = std::find(a.begin(), a.end(), "--force-iptables-binary");
    if (mode().engine == Engine::ebpf || (mode().engine == Engine::iptables && forced != a.end())) {
      outbound_engine_ = inbound_engine_ = mode().engine == Engine::ebpf ? "ebpf" : "iptables";
      if (mode().engine == Engine::iptables) {
        ipv4_save_ = "iptables-" + *(forced + 1) + "-save";
        saves_used_.insert({ipv4_save_, ipv6_save()});
      }
      return;
    }
    const nlohmann::json st = status_json(name_);
    auto engine_of = [&](const char* part) -> std::string {
      const auto parts = st.find("parts");
      if (parts == st.end() || !parts->contains(part)) return "none";
      return (*parts)[part].value("engine", "none");
    };
    outbound_engine_ = engine_of("outbound");
    inbound_engine_ = engine_of("inbound");
    ipv4_save_.clear();
    if (const auto ipt = st.find("iptables"); ipt != st.end())
      for (const auto& b : ipt->value("backends", std::vector<std::string>{}))
        if (b.rfind("iptables-", 0) == 0) ipv4_save_ = b;
    if (!ipv4_save_.empty()) saves_used_.insert({ipv4_save_, ipv6_save()});
  }

  /// "iptables-nft-save" -> "ip6tables-nft-save".
  std::string ipv6_save() const { return "ip6" + ipv4_save_.substr(2); }

  bool prepared_ = false;
  std::string outbound_engine_ = "none", inbound_engine_ = "none";
  std::string ipv4_save_;             ///< e.g. "iptables-nft-save"; "" without iptables
  std::set<std::string> saves_used_;  ///< every save binary an init of this test used
};

}  // namespace meshcap::test
