// The demo a newcomer runs first, the way a node runs meshcap: a throwaway
// "node" (its own cgroup, pin and state directories) with one throwaway pod
// under it (an application, haproxy as its sidecar running as UID 1337, a
// server outside the pod); the node data path started once, the pod
// enrolled by meshcap-cni as a container runtime calls it, traffic both
// ways, the counters that moved; then the same pod with iptables for
// comparison, and a cleanup that leaves nothing behind. Fails loudly.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <stdexcept>

#include "datapath.h"
#include "kernel/capture_fixture.h"
#include "support/haproxy.h"
#include "support/test_node.h"

#include <fstream>

using namespace meshcap;
using namespace meshcap::test;

namespace {

void step(const std::string& s) { std::cout << "\n== " << s << "\n" << std::flush; }

void check(bool ok, const std::string& what) {
  if (!ok) throw std::runtime_error(what);
  std::cout << "   ok: " << what << "\n" << std::flush;
}

const TestNode* g_node = nullptr;  // the demo's node: its directories for every command

CommandResult shown_run(const std::string& shown, const std::vector<std::string>& argv) {
  std::cout << "   $ " << shown << "\n" << std::flush;
  CommandResult r = run_command(argv);
  std::string out = r.output;
  while (!out.empty() && out.back() == '\n') out.pop_back();
  std::string indented;
  for (char c : out) indented += c == '\n' ? std::string("\n     ") : std::string(1, c);
  if (!out.empty()) std::cout << "     " << indented << "\n";
  return r;
}

CommandResult run_meshcap(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"env"};
  for (const auto& e : g_node->env()) argv.push_back(e);
  argv.push_back(MESHCAP_BIN);
  argv.insert(argv.end(), args.begin(), args.end());
  std::string shown = "meshcap";
  for (const auto& a : args) shown += " " + (a.empty() || a.find_first_of("* ") != std::string::npos ? "'" + a + "'" : a);
  return shown_run(shown, argv);
}

// meshcap-cni as a container runtime calls it: CNI_* in the environment,
// the network configuration on stdin.
CommandResult run_cni(const std::string& command, const TestPod& pod, const std::string& conf_file) {
  std::vector<std::string> argv = {"env"};
  for (const auto& e : g_node->env()) argv.push_back(e);
  const std::vector<std::string> cni = {"CNI_COMMAND=" + command, "CNI_CONTAINERID=demo" + pod.suffix(),
                                        "CNI_NETNS=" + pod.pod_netns_path(), "CNI_IFNAME=eth0",
                                        "CNI_ARGS=K8S_POD_NAMESPACE=demo;K8S_POD_NAME=shop"};
  argv.insert(argv.end(), cni.begin(), cni.end());
  argv.insert(argv.end(), {"sh", "-c", std::string("exec ") + MESHCAP_CNI_BIN + " < " + conf_file});
  std::string shown;
  for (const auto& c : cni) shown += (c.find(';') != std::string::npos ? "'" + c + "'" : c) + " ";
  return shown_run(shown + "meshcap-cni < " + conf_file, argv);
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
    step("1. A throwaway node (a cgroup of its own) and a pod under it");
    TestNode node(MESHCAP_BIN);
    g_node = &node;
    TestPod::Options po;
    po.cgroup_parent = node.cgroup_path();
    TestPod pod(po);
    std::cout << "   node cgroup " << node.cgroup_path() << ", pins " << node.pin_dir() << ", state "
              << node.state_dir() << "\n   pod netns " << pod.pod_netns() << " (" << pod.pod_ipv4() << ", "
              << pod.pod_ipv6() << "), cgroup " << pod.cgroup_path() << "\n   outside: netns " << pod.peer_netns()
              << " (" << pod.peer_ipv4() << ")\n";
    EchoServer outside(Placement::peer_thread(pod), pod.peer_ipv4(), 8080);
    EchoServer app(Placement::pod_process(pod), "0.0.0.0", 8080);
    auto proxy = start_haproxy(pod, haproxy_config(pod));
    check(true, "haproxy (the sidecar) runs as UID 1337 in the pod, pid " + std::to_string(proxy.pid));

    const std::vector<std::string> istio_init = {"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
                                                 "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"};
    auto with = [](std::vector<std::string> a, const std::vector<std::string>& b) {
      a.insert(a.end(), b.begin(), b.end());
      return a;
    };

    step("2. What can this kernel do? (meshcap probe)");
    check(run_meshcap(with({"probe"}, istio_init)).ok(), "meshcap probe exited 0");

    step("3. The node data path: programs loaded once, for every pod under the node's cgroup");
    check(run_meshcap({"node", "start", "--cgroup", node.cgroup_path()}).ok(), "meshcap node start exited 0");

    step("4. The container runtime creates the pod: meshcap-cni ADD enrols its network namespace");
    const std::string conf_file = node.state_dir() + "/demo-cni.json";
    std::ofstream(conf_file) << R"({"cniVersion":"1.0.0","name":"pods","type":"meshcap-cni",)"
                             << R"("prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[]}})";
    check(run_cni("ADD", pod, conf_file).ok(), "meshcap-cni ADD exited 0 (istio-cni's defaults for a sidecar pod)");

    step("5. Traffic: the application calls out, a client outside calls in");
    check(outbound_requests(pod, 20) == 20, "20 of 20 outbound requests answered (app -> haproxy -> server)");
    check(inbound_requests(pod, 20) == 20, "20 of 20 inbound requests answered (client -> haproxy -> app)");
    auto from_proxy = 0;
    for (const auto& rec : app.records()) from_proxy += rec.peer.rfind("127.0.0.6:", 0) == 0;
    check(from_proxy == 20, "the application saw all 20 inbound connections come from haproxy (127.0.0.6)");
    check(run_meshcap({"status"}).ok(), "meshcap status: the pod, enrolled in the node data path");
    check(run_meshcap({"node", "status"}).ok(), "meshcap node status: the counters that moved, per pod");

    step("6. The same pod with iptables, for comparison (no node data path needed)");
    check(run_cni("DEL", pod, conf_file).ok(), "meshcap-cni DEL exited 0: the pod is unenrolled");
    const std::string name = "demo" + pod.suffix();
    check(run_meshcap(with({"init", "--mode", "iptables", "--name", name, "--netns", pod.pod_netns_path()},
                           istio_init))
              .ok(),
          "meshcap init --mode iptables exited 0");
    check(outbound_requests(pod, 20) == 20, "20 of 20 outbound requests answered");
    check(inbound_requests(pod, 20) == 20, "20 of 20 inbound requests answered");
    check(run_meshcap({"status", "--name", name}).ok(), "meshcap status: iptables redirect packet counts");

    step("7. Clean up");
    check(run_meshcap({"cleanup", "--name", name}).ok(), "meshcap cleanup exited 0");
    auto save = run_command({"nsenter", "--net=" + pod.pod_netns_path(), "iptables-save"});
    check(save.output.find("ISTIO_") == std::string::npos, "no ISTIO chain left in the pod's iptables");
    check(run_meshcap({"node", "stop"}).ok(), "meshcap node stop exited 0 (no pod enrolled)");
    check(programs_attached(node.cgroup_path()) == 0, "no program left on the node's cgroup");
    pod.stop(proxy.pid);
    check(outbound_requests(pod, 5) == 5, "without capture and without haproxy, traffic goes direct again");
    std::cout << "\nDemo finished: the pod and everything in it are removed now.\n";
  } catch (const std::exception& e) {
    std::cerr << "\nDEMO FAILED: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
