// The demo a newcomer runs first: a throwaway pod (an application, haproxy
// as its sidecar running as UID 1337, and a server outside the pod), capture
// applied with `meshcap init`, traffic both ways, the counters that moved,
// and a cleanup that leaves nothing behind. Fails loudly with the reason.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <stdexcept>

#include "datapath.h"
#include "kernel/capture_fixture.h"
#include "support/haproxy.h"

using namespace meshcap;
using namespace meshcap::test;

namespace {

void step(const std::string& s) { std::cout << "\n== " << s << "\n" << std::flush; }

void check(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error(what);
  std::cout << "   ok: " << what << "\n" << std::flush;
}

CommandResult run_meshcap(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {MESHCAP_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string shown = "meshcap";
  for (const auto& a : args) shown += " " + (a.empty() || a.find_first_of("* ") != std::string::npos ? "'" + a + "'" : a);
  std::cout << "   $ " << shown << "\n" << std::flush;
  CommandResult r = run_command(argv);
  std::string out = r.output;
  while (!out.empty() && out.back() == '\n') out.pop_back();
  std::string indented;
  for (char c : out) indented += c == '\n' ? std::string("\n     ") : std::string(1, c);
  if (!out.empty()) std::cout << "     " << indented << "\n";
  return r;
}

int outbound_requests(TestPod& pod, int n) {
  std::string peer = pod.peer_ipv4();
  return pod.run_in_pod(
      [=] {
        int ok = 0;
        for (int i = 0; i < n; i++) ok += tcp_roundtrip(peer, 8080, "hello").ok();
        return ok;
      },
      Identity::user(1000, 1000));
}

int inbound_requests(TestPod& pod, int n) {
  std::string ip = pod.pod_ipv4();
  return pod.run_in_peer([=] {
    int ok = 0;
    for (int i = 0; i < n; i++) ok += tcp_roundtrip(ip, 8080, "hello", Millis(3000)).ok();
    return ok;
  });
}

}  // namespace

int main() {
  if (geteuid() != 0) {
    std::cerr << "meshcap-demo: needs root (it creates network namespaces and a cgroup)\n";
    return 1;
  }
  try {
    step("1. A throwaway pod: network namespace, cgroup, veth to a peer outside");
    TestPod pod;
    std::cout << "   pod netns " << pod.pod_netns() << " (" << pod.pod_ipv4() << ", " << pod.pod_ipv6() << "), cgroup "
              << pod.cgroup_path() << "\n   outside: netns " << pod.peer_netns() << " (" << pod.peer_ipv4() << ")\n";
    EchoServer outside(Placement::peer_thread(pod), pod.peer_ipv4(), 8080);
    EchoServer app(Placement::pod_process(pod), "0.0.0.0", 8080);
    auto proxy = start_haproxy(pod, haproxy_config(pod));
    check(true, "haproxy (the sidecar) runs as UID 1337 in the pod, pid " + std::to_string(proxy.pid));

    const std::string name = "demo" + pod.suffix();
    const std::vector<std::string> target = {"--name", name, "--cgroup", pod.cgroup_path(), "--netns",
                                             pod.pod_netns_path()};
    const std::vector<std::string> istio_init = {"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
                                                 "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"};
    auto with = [](std::vector<std::string> a, const std::vector<std::string>& b) {
      a.insert(a.end(), b.begin(), b.end());
      return a;
    };

    step("2. What can this kernel do? (meshcap probe)");
    check(run_meshcap(with({"probe"}, istio_init)).ok(), "meshcap probe exited 0");

    step("3. Capture in auto mode, with istio-init's flags");
    check(run_meshcap(with(with({"init"}, target), istio_init)).ok(), "meshcap init exited 0");

    step("4. Traffic: the application calls out, a client outside calls in");
    check(outbound_requests(pod, 20) == 20, "20 of 20 outbound requests answered (app -> haproxy -> server)");
    check(inbound_requests(pod, 20) == 20, "20 of 20 inbound requests answered (client -> haproxy -> app)");
    auto from_proxy = 0;
    for (const auto& rec : app.records()) from_proxy += rec.peer.rfind("127.0.0.6:", 0) == 0;
    check(from_proxy == 20, "the application saw all 20 inbound connections come from haproxy (127.0.0.6)");
    check(run_meshcap({"status", "--name", name}).ok(), "meshcap status: the counters that moved");

    step("5. The same with iptables, for comparison (replaces the eBPF capture)");
    check(run_meshcap(with(with({"init", "--mode", "iptables"}, target), istio_init)).ok(),
          "meshcap init --mode iptables exited 0");
    check(outbound_requests(pod, 20) == 20, "20 of 20 outbound requests answered");
    check(inbound_requests(pod, 20) == 20, "20 of 20 inbound requests answered");
    check(programs_attached(pod.cgroup_path()) == 0, "no eBPF program left on the pod's cgroup");
    check(run_meshcap({"status", "--name", name}).ok(), "meshcap status: iptables redirect packet counts");

    step("6. Clean up");
    check(run_meshcap({"cleanup", "--name", name}).ok(), "meshcap cleanup exited 0");
    check(programs_attached(pod.cgroup_path()) == 0, "no program left on the pod's cgroup");
    check(!loader::pinned_state(name).present, "no pins left under " + loader::pin_dir(name));
    auto save = run_command({"nsenter", "--net=" + pod.pod_netns_path(), "iptables-save"});
    check(save.output.find("ISTIO_") == std::string::npos, "no ISTIO chain left in the pod's iptables");
    pod.stop(proxy.pid);
    check(outbound_requests(pod, 5) == 5, "without capture and without haproxy, traffic goes direct again");
    std::cout << "\nDemo finished: the pod and everything in it are removed now.\n";
  } catch (const std::exception& e) {
    std::cerr << "\nDEMO FAILED: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
