// Node mode at scale (docs/reliability.md): a thousand pods enrolled with
// `meshcap init`, traffic in each, removed with `meshcap cleanup`, twice,
// and every map of the data path back to its baseline with no pin left; a
// full pod table that refuses, falls back, and reuses freed rows without
// leaking a previous pod's settings or counts; 100,000 connections across
// 100 enrolled pods (part through haproxy) with no capture failure;
// `cleanup --all-stale` unenrols only the pods whose namespace is gone.
//
// The pods are bare namespaces (NetnsFleet) with one veth to a hub
// namespace; a worker process in a cgroup below the node's makes the
// traffic, entering each pod's namespace in turn: outbound to the hub's end
// of the veth (captured: it lands on the pod's outbound listener, which
// reads the original destination), inbound from the hub to the pod
// (sk_lookup steers it to the inbound listener). Several pods at a time:
// threads of the worker, each in its own pod's namespace (setns is per
// thread), and a few `meshcap init` / `cleanup` processes at a time (the
// node lock serializes their map updates). Only correctness is asserted
// (counts, zero failures); times, map entries and memory are printed as
// "[ figures ]" lines.
#include <bpf/bpf.h>
#include <poll.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "kernel/capture_fixture.h"
#include "meshcap.h"
#include "support/haproxy.h"
#include "support/netns_fleet.h"
#include "support/test_node.h"

namespace meshcap::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

const std::vector<std::string> kIstioInit = {"-p", "15001", "-z", "15006", "-u", "1337", "-g", "1337", "-m",
                                             "REDIRECT", "-i", "*", "-b", "*", "-d", "15090,15021,15020"};
constexpr uint16_t kUpstreamPort = 8080;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

/// Entries of every map of the data path pinned at `dir` (socket-storage
/// maps, which cannot be walked, are left out), and the rows of pod_slots
/// that name a pod or are marked dirty.
std::map<std::string, size_t> map_entries(const std::string& dir) {
  std::map<std::string, size_t> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string pin = e.path().filename();
    if (pin.rfind("map_", 0) != 0) continue;
    UniqueFd fd(bpf_obj_get(e.path().c_str()));
    bpf_map_info info{};
    __u32 len = sizeof info;
    if (!fd || bpf_obj_get_info_by_fd(fd.get(), &info, &len) != 0) continue;
    if (info.type == BPF_MAP_TYPE_SK_STORAGE) continue;
    std::vector<uint8_t> key(info.key_size), next(info.key_size), value(info.value_size);
    size_t n = 0, held = 0;
    void* prev = nullptr;
    while (bpf_map_get_next_key(fd.get(), prev, next.data()) == 0) {
      key = next;
      prev = key.data();
      n++;
      if (pin == "map_pod_slots" && bpf_map_lookup_elem(fd.get(), key.data(), value.data()) == 0 &&
          std::any_of(value.begin(), value.end(), [](uint8_t b) { return b != 0; }))
        held++;
    }
    out[pin] = n;
    if (pin == "map_pod_slots") out["pod_slots rows held or dirty"] = held;
  }
  return out;
}

/// Every file below `dir`, relative.
std::vector<std::string> pins_below(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) out.push_back(fs::relative(e.path(), dir));
  std::sort(out.begin(), out.end());
  return out;
}

/// Runs fn in a child process that joined `cgroup` (below the node's, so
/// the data path sees its sockets), and returns the line fn returns.
std::string in_cgroup(const std::string& cgroup, const std::function<std::string()>& fn) {
  int p[2];
  if (pipe(p) != 0) throw TestSupportError("pipe", errno);
  const pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    std::string out = "error: cgroup";
    try {
      write_text_file(cgroup + "/cgroup.procs", std::to_string(getpid()));
      out = fn();
    } catch (const std::exception& e) {
      out = std::string("error: ") + e.what();
    }
    [[maybe_unused]] ssize_t w = write(p[1], out.data(), out.size());
    _exit(0);
  }
  close(p[1]);
  std::string out;
  char buf[4096];
  for (ssize_t r; (r = read(p[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(r));
  close(p[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return out;
}

/// Runs fn(i) for every i in [0, n) on `threads` threads, each i once.
void parallel_for(size_t n, int threads, const std::function<void(size_t)>& fn) {
  std::atomic<size_t> next{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; t++)
    pool.emplace_back([&] {
      for (size_t i; (i = next++) < n;) fn(i);
    });
  for (auto& th : pool) th.join();
}

/// In the calling thread: enters pod i's namespace, listens as the proxy
/// would (outbound 15001, inbound 15006), makes one outbound connection to
/// the hub and one inbound from the hub, and checks where they landed.
/// `captured`: each must land on its listener with SO_ORIGINAL_DST naming
/// where it was going; otherwise each must be refused (nothing listens on
/// the upstream port on either side) and neither listener may have it.
/// Returns the failures, one line each ("" when none).
std::string pod_traffic(const NetnsFleet& f, size_t i, bool captured) {
  const std::string pod_name = "pod " + std::to_string(i);
  if (setns(f.fd(i), CLONE_NEWNET) != 0) return pod_name + ": setns: " + std::strerror(errno) + "\n";
  UniqueFd out_l = listen_tcp("127.0.0.1", 15001), in_l = listen_tcp("0.0.0.0", 15006);
  std::string failures;
  auto check = [&](const char* way, int listener, const std::string& ip) {
    const std::string dst = ip + ":" + std::to_string(kUpstreamPort);
    Connection c = connect_tcp(ip, kUpstreamPort, Millis(5000), {"", 0, true});
    pollfd p{listener, POLLIN, 0};
    std::string failure;
    if (captured) {
      // On loopback (outbound) or a local veth (inbound) the handshake is
      // done when connect() returns: the listener has it at once.
      if (!c.ok()) {
        failure = std::string("connect: ") + std::strerror(c.error);
      } else if (poll(&p, 1, 5000) != 1) {
        failure = "connected, but not to the listener";
      } else {
        UniqueFd a(accept(listener, nullptr, nullptr));
        if (a) set_linger_zero(a.get());
        const OriginalDst o = a ? original_dst(a.get()) : OriginalDst{};
        if (!o.ok) failure = std::string("SO_ORIGINAL_DST: ") + std::strerror(o.error);
        else if (o.address != dst) failure = "SO_ORIGINAL_DST " + o.address;
      }
    } else if (c.ok() || c.error != ECONNREFUSED) {
      failure = c.ok() ? "connected" : std::string("connect: ") + std::strerror(c.error) + ", not refused";
    } else if (poll(&p, 1, 0) != 0) {
      failure = "the listener has a connection";
    }
    if (!failure.empty()) failures += pod_name + " " + way + " to " + dst + ": " + failure + "\n";
  };
  check("outbound", out_l.get(), f.hub_ipv4(i));
  if (setns(f.hub_fd(), CLONE_NEWNET) != 0) return failures + pod_name + ": setns hub: " + std::strerror(errno) + "\n";
  check("inbound", in_l.get(), f.pod_ipv4(i));
  return failures;
}

/// Traffic in every pod of the fleet from a process in `cgroup`, kThreads
/// pods at a time (each thread enters the pods' namespaces in turn).
/// Returns the failures; prints the first few.
constexpr int kTrafficThreads = 4;
int fleet_traffic(const NetnsFleet& f, const std::string& cgroup, bool captured) {
  const std::string r = in_cgroup(cgroup, [&] {
    std::mutex m;
    std::vector<std::string> failures;
    parallel_for(f.size(), kTrafficThreads, [&](size_t i) {
      const std::string lines = pod_traffic(f, i, captured);
      std::lock_guard<std::mutex> g(m);
      for (size_t a = 0, b; a < lines.size(); a = b + 1) failures.push_back(lines.substr(a, (b = lines.find('\n', a)) - a));
    });
    std::string out = std::to_string(failures.size()) + "\n";
    for (size_t k = 0; k < failures.size() && k < 20; k++) out += failures[k] + "\n";
    return out;
  });
  try {
    const int n = std::stoi(r);
    if (n) std::printf("[ traffic ] %d failure(s) (captured=%d), the first:\n%s", n, captured, r.substr(r.find('\n') + 1).c_str());
    return n;
  } catch (...) {
    ADD_FAILURE() << "traffic worker: " << r;
    return -1;
  }
}

class NodeFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root: creates namespaces and cgroups and loads BPF";
    node_ = std::make_unique<TestNode>(MESHCAP_BIN);
    worker_cg_ = node_->cgroup_path() + "/worker";
    ASSERT_EQ(mkdir(worker_cg_.c_str(), 0755), 0);
  }
  void TearDown() override { node_.reset(); }
  std::string dp() const { return node_->pin_dir() + "/node"; }
  CommandResult init(const std::string& name, const std::string& netns, std::vector<std::string> extra = {},
                     const std::string& mode = "auto") {
    std::vector<std::string> a = {"init", "--mode", mode, "--name", name, "--netns", netns};
    a.insert(a.end(), kIstioInit.begin(), kIstioInit.end());
    a.insert(a.end(), extra.begin(), extra.end());
    return node_->meshcap(a);
  }
  json node_status() {
    const auto r = node_->meshcap({"node", "status", "--json"});
    return json::parse(r.output.substr(r.output.find('{')));
  }
  /// Pod name -> its row in `node status`.
  std::map<std::string, json> pods() {
    std::map<std::string, json> out;
    const json st = node_status();
    for (const auto& p : st["pods"]) out[p["name"].get<std::string>()] = p;
    return out;
  }
  /// Pod records in the node's state directory.
  size_t records() const {
    std::error_code ec;
    size_t n = 0;
    for (const auto& e : fs::directory_iterator(node_->state_dir() + "/pods", ec)) n += e.path().extension() == ".json";
    return n;
  }
  std::unique_ptr<TestNode> node_;
  std::string worker_cg_;
};

using NodeScale = NodeFixture;
using NodeTable = NodeFixture;

/// "name=n ..." of the entries of every map, for a figures line.
std::string entries_line(const std::map<std::string, size_t>& m) {
  std::string out;
  for (const auto& [k, v] : m) out += (out.empty() ? "" : " ") + k.substr(k.rfind("map_", 0) == 0 ? 4 : 0) + "=" + std::to_string(v);
  return out;
}

// The numbers: 1,000 pods enrolled with `meshcap init`, traffic in
// each, removed with `meshcap cleanup`, twice; after each pass every map is
// back to its baseline and no pin is left.
TEST_F(NodeScale, ThousandPodsEnrolledTwiceLeaveEveryMapAsItWas) {
  constexpr size_t kPods = 1000;
  constexpr int kCommands = 4;  // meshcap init / cleanup processes at a time
  const auto test_t0 = Clock::now();
  ASSERT_EQ(node_->start({"--max-pods", "1024"}).exit_code, 0);
  const auto baseline = map_entries(dp());
  const auto baseline_pins = pins_below(dp());
  const uint64_t baseline_memlock = node_status()["maps"]["memlock_bytes"];
  auto t0 = Clock::now();
  NetnsFleet fleet(kPods);
  std::printf("[ figures ] %zu namespaces with a veth each: %.1f s\n", kPods, since(t0));
  auto run_all = [&](const char* what, const std::function<CommandResult(size_t)>& cmd) {
    std::mutex m;
    std::vector<std::string> failed;
    parallel_for(kPods, kCommands, [&](size_t i) {
      const CommandResult r = cmd(i);
      if (r.exit_code == 0) return;
      std::lock_guard<std::mutex> g(m);
      failed.push_back("pod " + std::to_string(i) + ": exit " + std::to_string(r.exit_code) + ": " + r.output);
    });
    EXPECT_TRUE(failed.empty()) << failed.size() << " x " << what << " failed; the first: " << failed.front();
    return failed.empty();
  };
  for (int pass = 1; pass <= 2; pass++) {
    t0 = Clock::now();
    ASSERT_TRUE(run_all("meshcap init", [&](size_t i) { return init("f" + std::to_string(i), fleet.path(i)); }));
    const double enrol_s = since(t0);
    const auto st = node_status();
    EXPECT_EQ(st["pods_enrolled"], kPods);
    const auto full = map_entries(dp());
    EXPECT_EQ(full.at("map_pods"), kPods);
    EXPECT_EQ(full.at("map_pod_by_addr"), kPods) << "one address per pod";
    t0 = Clock::now();
    EXPECT_EQ(fleet_traffic(fleet, worker_cg_, true), 0) << "pass " << pass;
    const double traffic_s = since(t0);
    size_t counted = 0;
    std::string odd;
    for (const auto& [name, p] : pods()) {
      const json& c = p["counters"];
      // One outbound and one inbound connection, and SO_ORIGINAL_DST asked
      // on each (the inbound one answers from inbound_orig).
      const bool exact = c["redirected_outbound"] == 1 && c["in_redirected"] == 1 && c["orig_dst_answered"] == 2;
      counted += exact;
      if (!exact && odd.size() < 2000) odd += name + " " + c.dump() + "\n";
    }
    EXPECT_EQ(counted, kPods) << "pods whose counters show exactly their one outbound and one inbound connection; "
                                 "the others:\n"
                              << odd;
    const uint64_t memlock = node_status()["maps"]["memlock_bytes"];
    const auto after_traffic = map_entries(dp());
    t0 = Clock::now();
    ASSERT_TRUE(run_all("meshcap cleanup", [&](size_t i) { return node_->meshcap({"cleanup", "--name", "f" + std::to_string(i)}); }));
    const double cleanup_s = since(t0);
    EXPECT_EQ(node_status()["pods_enrolled"], 0);
    const auto after = map_entries(dp());
    EXPECT_EQ(after, baseline) << "pass " << pass;
    EXPECT_EQ(pins_below(dp()), baseline_pins) << "pass " << pass;
    EXPECT_EQ(records(), 0u) << "pass " << pass;
    t0 = Clock::now();
    EXPECT_EQ(fleet_traffic(fleet, worker_cg_, false), 0) << "pass " << pass << ": traffic captured after cleanup";
    const double uncaptured_s = since(t0);
    std::printf("[ figures ] pass %d: %zu x meshcap init (%d at a time) %.1f s (%.1f ms per pod), traffic in each "
                "(2 connections, %d pods at a time) %.1f s, %zu x cleanup %.1f s, traffic uncaptured after %.1f s\n",
                pass, kPods, kCommands, enrol_s, 1000 * enrol_s / kPods, kTrafficThreads, traffic_s, kPods,
                cleanup_s, uncaptured_s);
    std::printf("[ figures ] pass %d: map entries with %zu pods enrolled, after their traffic: %s\n", pass, kPods,
                entries_line(after_traffic).c_str());
    std::printf("[ figures ] pass %d: after cleanup: %s (baseline: %s)\n", pass, entries_line(after).c_str(),
                entries_line(baseline).c_str());
    std::printf("[ figures ] pass %d: kernel memory of the maps (memlock) %llu bytes, at start %llu\n", pass,
                static_cast<unsigned long long>(memlock), static_cast<unsigned long long>(baseline_memlock));
  }
  std::printf("[ figures ] whole test %.1f s\n", since(test_t0));
}

// A full table: refused in ebpf mode, iptables in auto mode; a freed row is
// reused with fresh counters and none of its previous pod's settings.
TEST_F(NodeTable, FullTableRefusesFallsBackAndReusesFreedRows) {
  constexpr size_t kMax = 8;
  ASSERT_EQ(node_->start({"--max-pods", std::to_string(kMax)}).exit_code, 0);
  const auto baseline = map_entries(dp());
  NetnsFleet fleet(kMax + 1);
  for (size_t i = 0; i < kMax; i++) {
    // Pod 3 excludes the upstream port: its row must not keep that.
    const auto extra = i == 3 ? std::vector<std::string>{"-o", std::to_string(kUpstreamPort)} : std::vector<std::string>{};
    ASSERT_EQ(init("f" + std::to_string(i), fleet.path(i), extra, "ebpf").exit_code, 0);
  }
  EXPECT_EQ(fleet_traffic(fleet, worker_cg_, true), 3) << "pod 3's outbound excluded (-o), pod 8 not enrolled";
  auto r = init("f8", fleet.path(kMax), {}, "ebpf");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("maximum of 8 pods"), std::string::npos) << r.output;
  r = init("f8", fleet.path(kMax));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto st = json::parse(node_->meshcap({"status", "--name", "f8", "--json"}).output);
  EXPECT_EQ(st.at(0)["parts"]["outbound"]["engine"], "iptables") << st.dump();
  ASSERT_TRUE(pods().count("f3")) << node_status().dump();
  const uint32_t freed = pods()["f3"]["index"];
  ASSERT_EQ(node_->meshcap({"cleanup", "--name", "f3"}).exit_code, 0);
  // Again in ebpf mode: the pod leaves iptables for the freed row.
  r = init("f8", fleet.path(kMax), {}, "ebpf");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto rows = pods();
  EXPECT_EQ(rows["f8"]["index"], freed);
  EXPECT_EQ(rows["f8"]["counters"]["redirected_outbound"], 0) << "counters of the row's previous pod";
  EXPECT_EQ(rows["f8"]["counters"]["excluded_port"], 0);
  EXPECT_EQ(fleet_traffic(fleet, worker_cg_, true), 2) << "only pod 3 (now not enrolled) uncaptured, both ways";
  EXPECT_EQ(pods()["f8"]["counters"]["redirected_outbound"], 1) << "pod 3's -o must not apply to its row's new pod";
  for (size_t i = 0; i <= kMax; i++) node_->meshcap({"cleanup", "--name", "f" + std::to_string(i)});
  EXPECT_EQ(map_entries(dp()), baseline);
}

// cleanup --all-stale: pods whose namespace is gone are unenrolled, the
// others (still present) keep their rows and stay captured.
TEST_F(NodeTable, AllStaleUnenrolsOnlyPodsWhoseNamespaceIsGone) {
  ASSERT_EQ(node_->start({"--max-pods", "16"}).exit_code, 0);
  const auto baseline = map_entries(dp());
  NetnsFleet fleet(2);
  for (size_t i = 0; i < 2; i++) ASSERT_EQ(init("f" + std::to_string(i), fleet.path(i), {}, "ebpf").exit_code, 0);
  {
    std::vector<std::unique_ptr<TestPod>> gone;
    for (int k = 0; k < 3; k++) {
      TestPod::Options o;
      o.cgroup_parent = node_->cgroup_path();
      gone.push_back(std::make_unique<TestPod>(o));
      ASSERT_EQ(init("g" + std::to_string(k), gone.back()->pod_netns_path(), {}, "ebpf").exit_code, 0);
    }
  }  // the three namespaces are removed here
  EXPECT_EQ(node_status()["pods_enrolled"], 5);
  const auto r = node_->meshcap({"cleanup", "--all-stale"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  auto rows = pods();
  EXPECT_EQ(rows.size(), 2u) << node_status().dump();
  EXPECT_TRUE(rows.count("f0") && rows.count("f1")) << node_status().dump();
  EXPECT_EQ(records(), 2u);
  EXPECT_EQ(fleet_traffic(fleet, worker_cg_, true), 0) << "pods still present must stay captured";
  for (size_t i = 0; i < 2; i++) node_->meshcap({"cleanup", "--name", "f" + std::to_string(i)});
  EXPECT_EQ(records(), 0u);
  auto after = map_entries(dp());
  EXPECT_EQ(after, baseline) << "rows left after every pod was removed";
}

// Each pod's rows are listed in a journal pinned beside it
// (pods/NAME/map_rows): removing a pod deletes them by key. A pod without
// its journal (enrolled by an older meshcap, or a kill at the wrong moment)
// is still removed whole, by a walk, and its neighbour keeps its rows. A
// slot still held for a pod that is gone (a removal killed after the pod's
// entry went) is freed by `meshcap node start`, and the node then takes its
// full --max-pods again.
TEST_F(NodeTable, RowsGoByJournalAndNodeStartFreesSlotsOfGonePods) {
  constexpr size_t kMax = 3;
  ASSERT_EQ(node_->start({"--max-pods", std::to_string(kMax)}).exit_code, 0);
  const auto baseline = map_entries(dp());
  NetnsFleet fleet(kMax);
  const std::vector<std::string> ports = {"-o", "9001,9002", "-d", "15020,15021,15090"};
  for (size_t i = 0; i < 2; i++) ASSERT_EQ(init("f" + std::to_string(i), fleet.path(i), ports, "ebpf").exit_code, 0);
  for (size_t i = 0; i < 2; i++)
    EXPECT_TRUE(fs::exists(dp() + "/pods/f" + std::to_string(i) + "/map_rows")) << "pod f" << i << "'s journal";
  const auto two = map_entries(dp());
  EXPECT_GT(two.at("map_pod_ports"), baseline.at("map_pod_ports"));

  // f0 loses its journal: its removal walks, and takes only its own rows.
  ASSERT_EQ(unlink((dp() + "/pods/f0/map_rows").c_str()), 0);
  ASSERT_EQ(node_->meshcap({"cleanup", "--name", "f0"}).exit_code, 0);
  const auto one = map_entries(dp());
  EXPECT_EQ(two.at("map_pod_ports") - one.at("map_pod_ports"), one.at("map_pod_ports") - baseline.at("map_pod_ports"))
      << "f0 took exactly its own port rows";
  EXPECT_EQ(one.at("map_pod_addrs") - baseline.at("map_pod_addrs"), two.at("map_pod_addrs") - one.at("map_pod_addrs"));
  // f1 removed by its journal: back to the baseline.
  ASSERT_EQ(node_->meshcap({"cleanup", "--name", "f1"}).exit_code, 0);
  EXPECT_EQ(map_entries(dp()), baseline) << "rows left after both pods went";

  // A slot held for a cookie no pod has: enrolling finds one index fewer
  // until node start repairs.
  {
    UniqueFd slots(bpf_obj_get((dp() + "/map_pod_slots").c_str()));
    ASSERT_TRUE(slots);
    const uint32_t index = 0;
    const mc_pod_slot held{0x5eedf00dULL, 0, 0};
    ASSERT_EQ(bpf_map_update_elem(slots.get(), &index, &held, BPF_ANY), 0);
  }
  const auto r = node_->start({"--max-pods", std::to_string(kMax)});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("put right"), std::string::npos) << r.output;
  for (size_t i = 0; i < kMax; i++) {
    const auto e = init("g" + std::to_string(i), fleet.path(i), {}, "ebpf");
    EXPECT_EQ(e.exit_code, 0) << e.output;
  }
  EXPECT_EQ(fleet_traffic(fleet, worker_cg_, true), 0) << "every pod captured, both ways";
  for (size_t i = 0; i < kMax; i++) node_->meshcap({"cleanup", "--name", "g" + std::to_string(i)});
  EXPECT_EQ(map_entries(dp()), baseline);
  EXPECT_FALSE(fs::exists(dp() + "/pods")) << "pods/ goes with the last pod";
}

/// `n` connections in pod i's namespace from the calling thread, each
/// captured onto the pod's outbound listener: connect, SO_ORIGINAL_DST on
/// the accepted socket, 16 bytes there and back, close with SO_LINGER 0 on
/// both ends (no TIME_WAIT: the pod's source ports are reused at once).
/// Returns the failures; the first one's reason goes to `first`.
uint64_t connections_in_pod(const NetnsFleet& f, size_t i, uint64_t n, std::string* first) {
  if (setns(f.fd(i), CLONE_NEWNET) != 0) {
    *first = "setns: " + std::string(std::strerror(errno));
    return n;
  }
  UniqueFd l = listen_tcp("127.0.0.1", 15001, 64);
  const std::string hub = f.hub_ipv4(i), dst = hub + ":" + std::to_string(kUpstreamPort);
  const std::string msg(16, 'x');
  uint64_t failures = 0;
  for (uint64_t k = 0; k < n; k++) {
    Connection c = connect_tcp(hub, kUpstreamPort, Millis(5000), {"", 0, true});
    pollfd p{l.get(), POLLIN, 0};
    UniqueFd a(c.ok() && poll(&p, 1, 5000) == 1 ? accept(l.get(), nullptr, nullptr) : -1);
    const OriginalDst o = a ? original_dst(a.get()) : OriginalDst{};
    std::string why = !c.ok()             ? "connect: " + std::string(std::strerror(c.error))
                      : !a                ? "not on the listener"
                      : o.address != dst  ? "SO_ORIGINAL_DST '" + o.address + "'"
                      : !send_all(c.fd.get(), msg) || recv_exact(a.get(), msg.size()) != msg ||
                              !send_all(a.get(), msg) || recv_exact(c.fd.get(), msg.size()) != msg
                          ? "echo"
                          : "";
    if (a) set_linger_zero(a.get());
    if (!why.empty() && first->empty()) *first = "pod " + std::to_string(i) + " connection " + std::to_string(k) + ": " + why;
    failures += !why.empty();
  }
  return failures;
}

// The numbers: 100,000 connections across 100 enrolled pods, 99
// bare ones (909 each, kTrafficThreads pods at a time) and one through a
// real haproxy (10,012), with no capture failure: every one counted as
// redirected and its SO_ORIGINAL_DST answered, nothing left in the
// connection table.
TEST_F(NodeScale, HundredThousandConnectionsAcrossHundredPods) {
  constexpr size_t kFleet = 99;             // and one pod with haproxy
  constexpr uint64_t kPerFleetPod = 909;    // 89,991
  constexpr int kHaproxyThreads = 4;
  constexpr int kHaproxyPerThread = 2503;   // 10,012: 100,003 in all
  ASSERT_TRUE(have_binary("haproxy")) << "haproxy is installed by scripts/install-deps.sh";
  const auto test_t0 = Clock::now();
  ASSERT_EQ(node_->start({"--max-pods", "128"}).exit_code, 0);
  NetnsFleet fleet(kFleet);
  for (size_t i = 0; i < kFleet; i++) ASSERT_EQ(init("f" + std::to_string(i), fleet.path(i)).exit_code, 0);
  TestPod::Options o;
  o.cgroup_parent = node_->cgroup_path();
  TestPod hp(o);
  ASSERT_EQ(init("hp", hp.pod_netns_path()).exit_code, 0);
  EchoServer upstream(Placement::peer_thread(hp), hp.peer_ipv4(), kUpstreamPort);
  HaproxyOptions ho;
  ho.inbound_bind = "";
  start_haproxy(hp, haproxy_config(hp, ho));
  const double setup_s = since(test_t0);
  const auto t0 = Clock::now();
  const std::string r = in_cgroup(worker_cg_, [&] {
    std::atomic<uint64_t> failures{0};
    std::mutex m;
    std::string first;
    parallel_for(kFleet, kTrafficThreads, [&](size_t i) {
      std::string why;
      failures += connections_in_pod(fleet, i, kPerFleetPod, &why);
      std::lock_guard<std::mutex> g(m);
      if (first.empty()) first = why;
    });
    return std::to_string(failures.load()) + (first.empty() ? "" : " (the first: " + first + ")");
  });
  const double fleet_s = since(t0);
  EXPECT_EQ(r, "0") << "failed connections (or the worker's error) in the bare pods";
  const auto t1 = Clock::now();
  EXPECT_EQ(parallel_roundtrips_in_pod(hp, hp.peer_ipv4(), kUpstreamPort, kHaproxyThreads, kHaproxyPerThread), 0)
      << "failed connections through haproxy";
  const double hp_s = since(t1);
  const json st = node_status();
  uint64_t redirected = 0, answered = 0, bad = 0;
  std::string bad_pods;
  for (const auto& p : st["pods"]) {
    const json& c = p["counters"];
    redirected += c["redirected_outbound"].get<uint64_t>();
    answered += c["orig_dst_answered"].get<uint64_t>();
    uint64_t b = 0;
    for (const char* k : {"orig_dst_not_found", "map_full", "storage_failed", "bind_failed"}) b += c[k].get<uint64_t>();
    if (b) bad_pods += p["name"].get<std::string>() + " " + c.dump() + "\n";
    bad += b;
  }
  const uint64_t total = kFleet * kPerFleetPod + uint64_t(kHaproxyThreads) * kHaproxyPerThread;
  EXPECT_EQ(redirected, total);
  EXPECT_EQ(answered, total);
  EXPECT_EQ(bad, 0u) << bad_pods;
  EXPECT_EQ(st["node_counters"]["orig_dst_not_found"], 0) << "SO_ORIGINAL_DST asked of a connection without a record";
  uint64_t hp_exempt = 0;
  for (const auto& p : st["pods"])
    if (p["name"] == "hp") hp_exempt = p["counters"]["exempt_uid"];
  EXPECT_EQ(hp_exempt, uint64_t(kHaproxyThreads) * kHaproxyPerThread) << "haproxy's own connections onward";
  EXPECT_EQ(st["maps"]["orig_dst"], 0) << "records left in the connection table";
  std::printf("[ figures ] 99 bare pods + 1 haproxy pod enrolled, haproxy up: %.1f s\n", setup_s);
  std::printf("[ figures ] %llu connections: %llu in %zu bare pods (%d at a time) in %.1f s (%.0f/s), %d through "
              "haproxy (%d threads) in %.1f s (%.0f/s)\n",
              static_cast<unsigned long long>(total), static_cast<unsigned long long>(kFleet * kPerFleetPod), kFleet,
              kTrafficThreads, fleet_s, kFleet * kPerFleetPod / fleet_s, kHaproxyThreads * kHaproxyPerThread,
              kHaproxyThreads, hp_s, kHaproxyThreads * kHaproxyPerThread / hp_s);
  std::printf("[ figures ] counters: redirected_outbound %llu, orig_dst_answered %llu, failures counted %llu; "
              "connection table after: %llu; kernel memory of the maps %llu bytes\n",
              static_cast<unsigned long long>(redirected), static_cast<unsigned long long>(answered),
              static_cast<unsigned long long>(bad), static_cast<unsigned long long>(st["maps"]["orig_dst"].get<uint64_t>()),
              static_cast<unsigned long long>(st["maps"]["memlock_bytes"].get<uint64_t>()));
  for (size_t i = 0; i < kFleet; i++) node_->meshcap({"cleanup", "--name", "f" + std::to_string(i)});
  node_->meshcap({"cleanup", "--name", "hp"});
  std::printf("[ figures ] whole test %.1f s\n", since(test_t0));
}

}  // namespace
}  // namespace meshcap::test
