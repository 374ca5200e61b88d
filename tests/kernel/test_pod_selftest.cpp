// Self-test of the test-pod harness (tests/support): namespaces, addresses,
// cgroup membership, identities, servers, haproxy, and that nothing is left
// behind on any path (destructor, failed constructor, crashing children,
// fatal signals, SIGKILL + reap_stale). Label: kernel (needs root).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdlib>
#include <algorithm>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "support/test_support.h"

namespace meshcap::test {
namespace {

using std::chrono::milliseconds;

bool path_exists(const std::string& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}

ino_t inode_of(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 ? st.st_ino : 0;
}

// Gone, or a zombie waiting for init to reap it.
bool process_gone(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return true;
  const auto close_paren = stat.rfind(')');
  return close_paren != std::string::npos && close_paren + 2 < stat.size() &&
         stat[close_paren + 2] == 'Z';
}

// Every trace of the pod with this suffix is gone.
void expect_pod_gone(const std::string& s) {
  EXPECT_FALSE(path_exists("/run/netns/mcpod-" + s)) << s;
  EXPECT_FALSE(path_exists("/run/netns/mcpeer-" + s)) << s;
  EXPECT_FALSE(path_exists(cgroup2_mount() + "/mcpod-" + s)) << s;
  EXPECT_FALSE(path_exists("/tmp/mcpod-" + s)) << s;
  EXPECT_FALSE(path_exists("/run/meshcap-testpod/" + s + ".lock")) << s;
  const auto netns_list = run_command({"ip", "netns", "list"});
  EXPECT_EQ(netns_list.output.find(s), std::string::npos) << netns_list.output;
}

std::string suffix_from_error(const std::string& what) {
  const auto pos = what.find("pod ");
  return pos == std::string::npos ? "" : what.substr(pos + 4, 6);
}

class TestPodSelfTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MESHCAP_REQUIRE_ROOT();
    MESHCAP_REQUIRE_BINARY("ip");
  }
};

TEST_F(TestPodSelfTest, CreatesNamespacesCgroupAddressesAndSysctls) {
  TestPod pod;
  EXPECT_EQ(pod.pod_netns(), "mcpod-" + pod.suffix());
  EXPECT_EQ(pod.peer_netns(), "mcpeer-" + pod.suffix());
  EXPECT_TRUE(path_exists(pod.pod_netns_path()));
  EXPECT_TRUE(path_exists(pod.peer_netns_path()));
  EXPECT_TRUE(path_exists(pod.cgroup_path() + "/cgroup.procs"));
  EXPECT_EQ(pod.cgroup_path(), cgroup2_mount() + pod.cgroup_relative());
  EXPECT_TRUE(path_exists(pod.scratch_dir()));
  EXPECT_EQ(pod.pod_ipv4(), "10.211." + std::to_string(pod.subnet()) + ".2");
  EXPECT_EQ(pod.peer_ipv6(), "fd00:211:" + std::to_string(pod.subnet()) + "::1");

  const auto addrs = run_command({"ip", "-n", pod.pod_netns(), "addr", "show", "dev", pod.pod_veth()});
  ASSERT_TRUE(addrs.ok()) << addrs.output;
  EXPECT_NE(addrs.output.find(pod.pod_ipv4() + "/24"), std::string::npos) << addrs.output;
  EXPECT_NE(addrs.output.find(pod.pod_ipv6() + "/64"), std::string::npos) << addrs.output;
  EXPECT_EQ(addrs.output.find("tentative"), std::string::npos) << addrs.output;
  const auto routes = run_command({"ip", "-n", pod.pod_netns(), "-6", "route", "show", "default"});
  EXPECT_NE(routes.output.find("via " + pod.peer_ipv6()), std::string::npos) << routes.output;

  const std::string sysctls = pod.run_in_pod_capture([] {
    return read_text_file("/proc/sys/net/ipv4/tcp_tw_reuse") + "|" +
           read_text_file("/proc/sys/net/ipv4/ip_local_port_range");
  });
  EXPECT_EQ(sysctls, "1\n|10000\t65535\n");

  // Threads can enter the namespaces without forking.
  EXPECT_EQ(call_in_netns(pod.pod_netns_path(), [] { return inode_of("/proc/thread-self/ns/net"); }),
            inode_of(pod.pod_netns_path()));
  ino_t seen = 0;
  std::thread t = in_netns(pod.peer_netns_path(), [&] { seen = inode_of("/proc/thread-self/ns/net"); });
  t.join();
  EXPECT_EQ(seen, inode_of(pod.peer_netns_path()));
  EXPECT_NE(inode_of("/proc/thread-self/ns/net"), inode_of(pod.pod_netns_path()));
}

TEST_F(TestPodSelfTest, PodReachesPeerEchoOverIPv4AndIPv6) {
  TestPod pod;
  EchoServer echo4(Placement::peer_thread(pod), pod.peer_ipv4(), 0);
  EchoServer echo6(Placement::peer_thread(pod), pod.peer_ipv6(), 0);
  const std::string v4 = pod.peer_ipv4(), v6 = pod.peer_ipv6();
  const uint16_t p4 = echo4.port(), p6 = echo6.port();

  const std::string result = pod.run_in_pod_capture(
      [&] {
        std::string out;
        for (const auto& [ip, port] : {std::pair{v4, p4}, std::pair{v6, p6}}) {
          const RoundTrip rt = tcp_roundtrip(ip, port, "hello " + ip);
          out += rt.ok() ? rt.reply : "error " + std::to_string(rt.error);
          out += "|";
        }
        // Many connections open at once, each echoing its own payload.
        std::vector<Connection> conns;
        for (int i = 0; i < 64; ++i) conns.push_back(connect_tcp(v4, p4));
        int good = 0;
        for (size_t i = 0; i < conns.size(); ++i) {
          const std::string msg = "conn-" + std::to_string(i);
          if (conns[i].ok() && send_all(conns[i].fd.get(), msg) &&
              recv_exact(conns[i].fd.get(), msg.size()) == msg) {
            ++good;
          }
        }
        return out + std::to_string(good);
      },
      Identity::proxy());
  EXPECT_EQ(result, "hello " + v4 + "|hello " + v6 + "|64");

  ASSERT_TRUE(echo4.wait_for_accepts(65));
  ASSERT_TRUE(echo6.wait_for_accepts(1));
  EXPECT_EQ(echo4.records()[0].peer.rfind(pod.pod_ipv4() + ":", 0), 0u) << echo4.records()[0].peer;
  EXPECT_EQ(echo4.records()[0].local, v4 + ":" + std::to_string(p4));
  EXPECT_EQ(echo6.records()[0].peer.rfind("[" + pod.pod_ipv6() + "]:", 0), 0u);
}

TEST_F(TestPodSelfTest, PeerReachesServerProcessInPod) {
  TestPod pod;
  EchoServer echo(Placement::pod_process(pod, Identity::user(1000, 1000)), pod.pod_ipv4(), 0);
  EXPECT_GT(echo.pid(), 0);
  const auto members = pod.cgroup_pids();
  EXPECT_NE(std::find(members.begin(), members.end(), echo.pid()), members.end());
  const std::string ip = pod.pod_ipv4();
  const uint16_t port = echo.port();
  EXPECT_EQ(pod.run_in_peer([&] { return tcp_roundtrip(ip, port, "inbound").ok() ? 0 : 1; }), 0);
  EXPECT_TRUE(echo.wait_for_accepts(1));
  EXPECT_EQ(echo.records().at(0).peer.rfind(pod.peer_ipv4() + ":", 0), 0u);
}

TEST_F(TestPodSelfTest, RunInPodAppliesIdentityCgroupAndNetns) {
  TestPod pod;
  const ino_t pod_ns = inode_of(pod.pod_netns_path());
  auto describe = [pod_ns] {
    std::ostringstream o;
    o << ::getuid() << "/" << ::getgid() << "/" << ::getgroups(0, nullptr) << "|";
    std::istringstream cg(read_text_file("/proc/self/cgroup"));
    std::string line;
    while (std::getline(cg, line)) {
      if (line.rfind("0::", 0) == 0) o << line.substr(3);
    }
    o << "|" << (inode_of("/proc/self/ns/net") == pod_ns ? "pod-netns" : "other-netns");
    return o.str();
  };
  EXPECT_EQ(pod.run_in_pod_capture(describe, Identity::proxy()),
            "1337/1337/0|" + pod.cgroup_relative() + "|pod-netns");
  EXPECT_EQ(pod.run_in_pod_capture(describe, Identity::user(1000, 1000, {1001})),
            "1000/1000/1|" + pod.cgroup_relative() + "|pod-netns");
  EXPECT_EQ(pod.run_in_pod([] { return ::getuid() == 1337 ? 0 : 1; }, Identity::proxy()), 0);
  EXPECT_EQ(pod.run_in_pod([] { return 7; }), 7);
  // The peer has no cgroup of its own: its children stay where we are.
  const std::string peer = pod.run_in_peer_capture([] { return read_text_file("/proc/self/cgroup"); });
  EXPECT_EQ(peer.find(pod.cgroup_relative()), std::string::npos) << peer;
}

TEST_F(TestPodSelfTest, RecordingListenerReportsAddressesAndMissingOriginalDst) {
  TestPod pod;
  // As a proxy would run: in the pod's cgroup and netns, as 1337.
  RecordingListener outbound(Placement::pod_process(pod, Identity::proxy()), "127.0.0.1", 15001);
  RecordingListener inbound6(Placement::pod_process(pod, Identity::proxy()), pod.pod_ipv6(), 15006);
  EXPECT_EQ(outbound.port(), 15001);
  const std::string v6 = pod.pod_ipv6();
  const std::string seen = pod.run_in_pod_capture([&] {
    const RoundTrip a = tcp_roundtrip("127.0.0.1", 15001, "x");
    const RoundTrip b = tcp_roundtrip(v6, 15006, "y");
    return a.local + " " + a.peer + " " + std::to_string(a.error) + " " + b.peer + " " +
           std::to_string(b.error);
  });
  ASSERT_TRUE(outbound.wait_for_accepts(1));
  ASSERT_TRUE(inbound6.wait_for_accepts(1));
  const AcceptRecord r4 = outbound.records().at(0);
  const AcceptRecord r6 = inbound6.records().at(0);
  EXPECT_EQ(seen, r4.peer + " 127.0.0.1:15001 0 [" + v6 + "]:15006 0");
  EXPECT_EQ(r4.local, "127.0.0.1:15001");
  EXPECT_EQ(r6.local, "[" + v6 + "]:15006");
  // Nothing redirected these: no original destination (ENOENT on 6.x,
  // ENOPROTOOPT on 6.1).
  EXPECT_FALSE(r4.original_dst.ok);
  EXPECT_TRUE(r4.original_dst.error == ENOENT || r4.original_dst.error == ENOPROTOOPT)
      << r4.original_dst.error;
  EXPECT_FALSE(r6.original_dst.ok);
  EXPECT_NE(r6.original_dst.error, 0);
}

TEST_F(TestPodSelfTest, HaproxyStartsListensAndDiesWithThePod) {
  MESHCAP_REQUIRE_BINARY("haproxy");
  auto pod = std::make_unique<TestPod>();
  const std::string s = pod->suffix();
  const std::string cfg = haproxy_config(*pod);
  EXPECT_NE(read_text_file(cfg).find("server orig 0.0.0.0"), std::string::npos);
  const HaproxyProcess h = start_haproxy(*pod, cfg);
  EXPECT_TRUE(is_listening(h.pid, "127.0.0.1", 15001));
  EXPECT_TRUE(is_listening(h.pid, "0.0.0.0", 15006));
  EXPECT_FALSE(is_listening(h.pid, "127.0.0.1", 15002));
  EXPECT_TRUE(pod->is_running(h.pid));
  const std::string status = read_text_file("/proc/" + std::to_string(h.pid) + "/status");
  EXPECT_NE(status.find("Uid:\t1337\t1337\t1337\t1337"), std::string::npos) << status;
  EXPECT_NE(status.find("Gid:\t1337\t1337\t1337\t1337"), std::string::npos) << status;
  EXPECT_NE(status.find("Groups:\t \n"), std::string::npos) << status;  // none
  EXPECT_NE(read_text_file("/proc/" + std::to_string(h.pid) + "/cgroup").find("0::" + pod->cgroup_relative()),
            std::string::npos);
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, h.pid, 0));
  ASSERT_GE(pidfd, 0);

  pod.reset();
  expect_pod_gone(s);
  struct pollfd pfd {pidfd, POLLIN, 0};
  EXPECT_EQ(::poll(&pfd, 1, 0), 1) << "haproxy still running";
  ::close(pidfd);
}

TEST_F(TestPodSelfTest, BadHaproxyConfigFailsWithItsLog) {
  MESHCAP_REQUIRE_BINARY("haproxy");
  TestPod pod;
  const std::string cfg = pod.scratch_dir() + "/bad.cfg";
  { std::ofstream(cfg) << "listen broken\n    bind 127.0.0.1:15001\n    no-such-keyword\n"; }
  try {
    start_haproxy(pod, cfg, milliseconds(5000));
    ADD_FAILURE() << "haproxy started with a broken config";
  } catch (const TestSupportError& e) {
    EXPECT_NE(std::string(e.what()).find("no-such-keyword"), std::string::npos) << e.what();
  }
}

TEST_F(TestPodSelfTest, CrashingAndRunawayChildrenLeakNothing) {
  auto pod = std::make_unique<TestPod>();
  const std::string s = pod->suffix();
  EXPECT_EQ(pod->run_in_pod([]() -> int { std::abort(); }), 128 + SIGABRT);
  EXPECT_EQ(pod->run_in_pod([]() -> int { throw std::runtime_error("boom"); }), kChildThrew);
  EXPECT_EQ(pod->run_in_pod([] { ::pause(); return 0; }, {}, milliseconds(200)), kChildTimedOut);
  EXPECT_THROW(pod->run_in_pod_capture([]() -> std::string { std::abort(); }), TestSupportError);

  // A grandchild that escapes its process group and outlives its parent is
  // still in the cgroup, and dies with the pod.
  const std::string grandchild = pod->run_in_pod_capture([] {
    const pid_t g = ::fork();
    if (g == 0) {
      ::setsid();
      ::syscall(SYS_close_range, 3u, ~0u, 0u);  // do not hold the result pipe open
      for (;;) ::pause();
    }
    return std::to_string(g);
  });
  const pid_t g = std::stoi(grandchild);
  EXPECT_FALSE(process_gone(g));
  const auto members = pod->cgroup_pids();
  EXPECT_NE(std::find(members.begin(), members.end(), g), members.end());

  const pid_t sleeper = pod->spawn_in_peer({"sleep", "600"});
  EXPECT_TRUE(pod->is_running(sleeper));
  const pid_t sleeper2 = pod->spawn_in_pod({"sleep", "600"}, Identity::user(1000, 1000));
  EXPECT_EQ(pod->stop(sleeper2), 128 + SIGTERM);

  pod.reset();
  expect_pod_gone(s);
  EXPECT_TRUE(process_gone(sleeper));
  for (int i = 0; i < 100 && !process_gone(g); ++i) ::usleep(10000);
  EXPECT_TRUE(process_gone(g));
}

TEST_F(TestPodSelfTest, SpawnOfMissingProgramThrows) {
  TestPod pod;
  EXPECT_THROW(pod.spawn_in_pod({"/nonexistent/program"}), TestSupportError);
  EXPECT_TRUE(pod.cgroup_pids().empty());
}

class FailedConstruction : public TestPodSelfTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(FailedConstruction, LeaksNothing) {
  TestPod::Options o;
  o.fail_after_step = GetParam();
  std::string what;
  try {
    TestPod pod(o);
    ADD_FAILURE() << "no injected failure";
  } catch (const TestSupportError& e) {
    what = e.what();
  }
  const std::string s = suffix_from_error(what);
  ASSERT_EQ(s.size(), 6u) << what;
  expect_pod_gone(s);
}

INSTANTIATE_TEST_SUITE_P(Steps, FailedConstruction,
                         ::testing::Values("cgroup", "netns", "veth", "addresses", "sysctls"));

// The process that owns a pod dies of a signal: the handlers remove the pod
// and its children, then the signal still kills the process.
class FatalSignal : public TestPodSelfTest, public ::testing::WithParamInterface<int> {};

TEST_P(FatalSignal, CleansUpAndReRaises) {
  const int sig = GetParam();
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(p[0]);
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // if this test dies, clean up too
    {
      TestPod pod;
      EchoServer echo(Placement::peer_thread(pod), pod.peer_ipv4(), 0);
      const pid_t sleeper = pod.spawn_in_pod({"sleep", "600"});
      const std::string msg = pod.suffix() + " " + std::to_string(sleeper) + "\n";
      if (::write(p[1], msg.data(), msg.size()) < 0) ::_exit(2);
      ::raise(sig);
    }
    ::_exit(99);  // the signal was ignored; the destructors cleaned up
  }
  ::close(p[1]);
  char buf[64] = {};
  const ssize_t n = ::read(p[0], buf, sizeof buf - 1);
  ::close(p[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_GT(n, 0);
  std::istringstream in(buf);
  std::string s;
  pid_t sleeper = 0;
  in >> s >> sleeper;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 99) {
    expect_pod_gone(s);
    GTEST_SKIP() << "signal " << sig << " is ignored in this environment";
  }
  ASSERT_TRUE(WIFSIGNALED(status)) << status;
  EXPECT_EQ(WTERMSIG(status), sig);
  expect_pod_gone(s);
  for (int i = 0; i < 100 && !process_gone(sleeper); ++i) ::usleep(10000);
  EXPECT_TRUE(process_gone(sleeper));
}

INSTANTIATE_TEST_SUITE_P(Signals, FatalSignal, ::testing::Values(SIGTERM, SIGINT, SIGABRT, SIGSEGV));

TEST_F(TestPodSelfTest, PodOfSigkilledOwnerIsReaped) {
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(p[0]);
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // if this test dies, clean up too
    TestPod pod;
    const std::string msg = pod.suffix() + "\n";
    if (::write(p[1], msg.data(), msg.size()) < 0) ::_exit(2);
    for (;;) ::pause();
  }
  ::close(p[1]);
  char buf[16] = {};
  const ssize_t n = ::read(p[0], buf, sizeof buf - 1);
  ::close(p[0]);
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_EQ(n, 7);
  const std::string s(buf, 6);
  // Left behind; reaped here, or by a pod of a parallel test (then wait for
  // that one to finish).
  for (int i = 0; i < 500 && path_exists("/run/meshcap-testpod/" + s + ".lock"); ++i) {
    TestPod::reap_stale();
    ::usleep(10000);
  }
  expect_pod_gone(s);
}

}  // namespace
}  // namespace meshcap::test
