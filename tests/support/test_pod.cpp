#include "support/test_pod.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <mutex>
#include <set>
#include <random>
#include <sstream>

#include "support/cleanup.h"
#include "support/netns.h"

namespace meshcap::test {

namespace {

constexpr const char* kLockDir = "/run/meshcap-testpod";
constexpr const char* kPodPrefix = "mcpod-";
constexpr const char* kPeerPrefix = "mcpeer-";
constexpr int kSetupTimeoutMs = 10000;

using Clock = std::chrono::steady_clock;

std::string random_suffix() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[8];
  std::snprintf(buf, sizeof buf, "%06x", static_cast<unsigned>(rng() & 0xffffff));
  return buf;
}

// The subnets of this process's living pods. Pods in one node data path
// (TestNode) must not share an address: the node keys pods by address
// too, and refuses a second pod with one (inbound then falls back to
// iptables). Pods of other processes never share this process's node.
std::mutex g_subnets_mu;
std::set<int> g_subnets;

int take_subnet() {
  static thread_local std::mt19937 rng{std::random_device{}()};
  std::lock_guard lock(g_subnets_mu);
  if (g_subnets.size() >= 250) throw TestSupportError("more than 250 test pods alive at once", EBUSY);
  for (;;) {
    const int n = std::uniform_int_distribution<int>(1, 250)(rng);
    if (g_subnets.insert(n).second) return n;
  }
}

void give_back_subnet(int n) {
  std::lock_guard lock(g_subnets_mu);
  g_subnets.erase(n);
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

int pidfd_open(pid_t pid) {
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

// Writes "<errno> <step>" to the setup pipe and leaves. Async-signal-safe:
// runs in a child forked from a multi-threaded process.
[[noreturn]] void fail_setup(int setup_fd, const char* step, int err) {
  char buf[256];
  size_t n = 0;
  char digits[16];
  int d = 0;
  unsigned v = static_cast<unsigned>(err);
  do {
    digits[d++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0 && d < 15);
  while (d > 0 && n < sizeof buf - 1) buf[n++] = digits[--d];
  buf[n++] = ' ';
  for (const char* p = step; *p != '\0' && n < sizeof buf; ++p) buf[n++] = *p;
  [[maybe_unused]] const ssize_t w = ::write(setup_fd, buf, n);
  ::_exit(kChildSetupFailed);
}

// Reads the setup pipe until EOF (child ready) or the deadline.
std::string read_setup_report(int fd, int timeout_ms) {
  std::string msg;
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return msg.empty() ? "0 setup did not finish in time" : msg;
    struct pollfd pfd {fd, POLLIN, 0};
    const int r = ::poll(&pfd, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    char buf[256];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      msg.append(buf, static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      return msg;
    }
  }
}

std::string describe_setup_failure(const std::string& report) {
  const auto sp = report.find(' ');
  int err = 0;
  try {
    err = std::stoi(report.substr(0, sp));
  } catch (...) {
  }
  std::string step = sp == std::string::npos ? report : report.substr(sp + 1);
  return step + (err != 0 ? ": " + std::string(std::strerror(err)) : "");
}

// Waits for a child to exit and reaps it; nullopt on timeout.
std::optional<int> wait_child(pid_t pid, int pidfd, int timeout_ms) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return wait_status_to_code(status);
    if (r < 0 && errno != EINTR) return kChildLost;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return std::nullopt;
    if (pidfd >= 0) {
      struct pollfd pfd {pidfd, POLLIN, 0};
      ::poll(&pfd, 1, static_cast<int>(std::min<long>(left.count(), 1000)));
    } else {
      ::usleep(2000);
    }
  }
}

void report_cleanup_problem(const std::string& msg) {
  spdlog::error("test-support: {}", msg);
  if (::testing::UnitTest::GetInstance()->current_test_info() != nullptr) {
    ADD_FAILURE() << "TestPod cleanup: " << msg;
  }
}

ino_t netns_inode(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

// Threads of this process still inside the namespace keep it alive after
// its name is gone (a server not stopped before its pod).
int own_threads_in_netns(ino_t ino) {
  if (ino == 0) return 0;
  int count = 0;
  DIR* d = ::opendir("/proc/self/task");
  if (d == nullptr) return 0;
  while (const dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    struct stat st {};
    const std::string p = std::string("/proc/self/task/") + e->d_name + "/ns/net";
    if (::stat(p.c_str(), &st) == 0 && st.st_ino == ino) ++count;
  }
  ::closedir(d);
  return count;
}

bool same_file(int fd, const std::string& path) {
  struct stat a {}, b {};
  return ::fstat(fd, &a) == 0 && ::stat(path.c_str(), &b) == 0 && a.st_dev == b.st_dev &&
         a.st_ino == b.st_ino;
}

}  // namespace

TestPod::TestPod() : TestPod(Options{}) {}

TestPod::TestPod(Options options) : options_(std::move(options)) {
  try {
    build();
  } catch (...) {
    cleanup();
    throw;
  }
}

TestPod::~TestPod() { cleanup(); }

void TestPod::step_done(const std::string& step) {
  if (!options_.fail_after_step.empty() && options_.fail_after_step == step) {
    throw TestSupportError("injected failure after step '" + step + "' in pod " + suffix_, 0);
  }
}

void TestPod::reserve_names() {
  for (int attempt = 0; attempt < 64; ++attempt) {
    const std::string s = random_suffix();
    if (::mkdir(kLockDir, 0755) != 0 && errno != EEXIST) {
      throw TestSupportError(std::string("mkdir ") + kLockDir, errno);
    }
    const std::string lock = std::string(kLockDir) + "/" + s + ".lock";
    UniqueFd fd(::open(lock.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (!fd) {
      if (errno == EEXIST || errno == ENOENT) continue;  // taken, or dir just removed
      throw TestSupportError("create " + lock, errno);
    }
    // A reaper may have opened it between our create and lock: then it
    // holds the lock, or already unlinked the file.
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0 || !same_file(fd.get(), lock)) continue;
    const std::string cg =
        (options_.cgroup_parent.empty() ? cgroup2_mount() : options_.cgroup_parent) + "/" + kPodPrefix + s;
    if (exists("/run/netns/" + std::string(kPodPrefix) + s) ||
        exists("/run/netns/" + std::string(kPeerPrefix) + s) || exists(cg) ||
        exists("/tmp/" + std::string(kPodPrefix) + s)) {
      ::unlink(lock.c_str());
      continue;
    }
    suffix_ = s;
    lock_path_ = lock;
    lock_fd_ = std::move(fd);
    lock_slot_ = detail::register_resource(detail::Resource::lockfile, group_, lock_path_);
    cgroup_path_ = cg;
    return;
  }
  throw TestSupportError("find unused test pod names", EEXIST);
}

void TestPod::build() {
  detail::install_cleanup_handlers();
  group_ = detail::new_group();
  try {
    reap_stale();
  } catch (const std::exception& e) {
    spdlog::warn("test-support: reaping stale pods failed: {}", e.what());
  }
  reserve_names();
  subnet_ = take_subnet();
  const std::string n = std::to_string(subnet_);
  pod_netns_ = kPodPrefix + suffix_;
  peer_netns_ = kPeerPrefix + suffix_;
  cgroup_relative_ = cgroup_path_.substr(cgroup2_mount().size());
  pod_ipv4_ = "10.211." + n + ".2";
  peer_ipv4_ = "10.211." + n + ".1";
  pod_ipv6_ = "fd00:211:" + n + "::2";
  peer_ipv6_ = "fd00:211:" + n + "::1";
  pod_veth_ = "vpod-" + suffix_;
  peer_veth_ = "vpeer-" + suffix_;
  spdlog::debug("test-support: creating pod {} (10.211.{}.0/24)", suffix_, subnet_);

  scratch_dir_ = "/tmp/" + pod_netns_;
  scratch_slot_ = detail::register_resource(detail::Resource::directory, group_, scratch_dir_);
  if (::mkdir(scratch_dir_.c_str(), 0755) != 0) throw TestSupportError("mkdir " + scratch_dir_, errno);
  ::chmod(scratch_dir_.c_str(), 0755);  // readable by the proxy's uid despite umask

  cgroup_slot_ = detail::register_resource(detail::Resource::cgroup, group_, cgroup_path_);
  if (::mkdir(cgroup_path_.c_str(), 0755) != 0) throw TestSupportError("mkdir " + cgroup_path_, errno);
  step_done("cgroup");

  // iproute2 serializes `ip netns add` itself (flock on /run/netns).
  pod_ns_slot_ = detail::register_resource(detail::Resource::netns, group_, pod_netns_path());
  run_command_checked({"ip", "netns", "add", pod_netns_});
  peer_ns_slot_ = detail::register_resource(detail::Resource::netns, group_, peer_netns_path());
  run_command_checked({"ip", "netns", "add", peer_netns_});
  step_done("netns");

  // Created inside the pod with its peer end moved straight into the peer:
  // the machine's own namespace never sees either end.
  run_command_checked({"ip", "-n", pod_netns_, "link", "add", pod_veth_, "type", "veth", "peer",
                       "name", peer_veth_, "netns", peer_netns_});
  // No duplicate address detection on the link: link-local addresses are
  // usable at once too (global ones are added with nodad as well).
  for (const auto& [path, dev] : {std::pair{pod_netns_path(), pod_veth_},
                                  std::pair{peer_netns_path(), peer_veth_}}) {
    call_in_netns(path, [&dev = dev] {
      write_text_file("/proc/sys/net/ipv6/conf/" + dev + "/accept_dad", "0");
    });
  }
  step_done("veth");

  for (const auto& [ns, dev] : {std::pair{pod_netns_, pod_veth_}, std::pair{peer_netns_, peer_veth_}}) {
    run_command_checked({"ip", "-n", ns, "link", "set", "lo", "up"});
    run_command_checked({"ip", "-n", ns, "link", "set", dev, "up"});
  }
  run_command_checked({"ip", "-n", pod_netns_, "addr", "add", pod_ipv4_ + "/24", "dev", pod_veth_});
  run_command_checked({"ip", "-n", peer_netns_, "addr", "add", peer_ipv4_ + "/24", "dev", peer_veth_});
  // nodad: usable at once instead of tentative for a second or more.
  run_command_checked({"ip", "-n", pod_netns_, "-6", "addr", "add", pod_ipv6_ + "/64", "dev",
                       pod_veth_, "nodad"});
  run_command_checked({"ip", "-n", peer_netns_, "-6", "addr", "add", peer_ipv6_ + "/64", "dev",
                       peer_veth_, "nodad"});
  run_command_checked({"ip", "-n", pod_netns_, "route", "add", "default", "via", peer_ipv4_});
  run_command_checked({"ip", "-n", pod_netns_, "-6", "route", "add", "default", "via", peer_ipv6_});
  step_done("addresses");

  // Connect-per-request loops exhaust ephemeral ports otherwise. Sysctls
  // under /proc/sys/net belong to the namespace of the thread opening them.
  for (const auto& path : {pod_netns_path(), peer_netns_path()}) {
    call_in_netns(path, [this] {
      write_text_file("/proc/sys/net/ipv4/tcp_tw_reuse", "1");
      write_text_file("/proc/sys/net/ipv4/ip_local_port_range", options_.local_port_range);
    });
  }
  step_done("sysctls");
}

void TestPod::cleanup() noexcept {
  // Attached servers first: they stop their own children through stop().
  std::map<int, std::function<void()>> teardown;
  {
    std::lock_guard lock(mu_);
    teardown.swap(teardown_);
  }
  for (auto& [token, fn] : teardown) {
    try {
      fn();
    } catch (const std::exception& e) {
      report_cleanup_problem("teardown callback threw: " + std::string(e.what()));
    } catch (...) {
      report_cleanup_problem("teardown callback threw");
    }
  }

  std::map<pid_t, Child> children;
  {
    std::lock_guard lock(mu_);
    children.swap(children_);
  }
  bool all_ok = true;
  for (auto& [pid, c] : children) {
    if (detail::kill_and_reap(c.pid, c.pidfd, 5000)) {
      detail::unregister_resource(c.slot);
      if (c.pidfd >= 0) ::close(c.pidfd);
    } else {
      all_ok = false;
      report_cleanup_problem("child " + std::to_string(pid) + " did not exit after SIGKILL");
    }
  }

  if (!cgroup_path_.empty() && cgroup_slot_ >= 0) {
    if (detail::kill_cgroup_and_remove(cgroup_path_.c_str(), 5000)) {
      detail::unregister_resource(cgroup_slot_);
    } else {
      all_ok = false;
      report_cleanup_problem("cannot remove cgroup " + cgroup_path_ + ": " + std::strerror(errno));
    }
  }

  for (auto [name, slot] : {std::pair{pod_netns_, pod_ns_slot_}, std::pair{peer_netns_, peer_ns_slot_}}) {
    if (name.empty() || slot < 0) continue;
    const std::string path = "/run/netns/" + name;
    const int holders = own_threads_in_netns(netns_inode(path));
    if (holders > 0) {
      report_cleanup_problem(std::to_string(holders) + " thread(s) of this process are still in " +
                             name + ": stop servers before their pod, or it outlives its name");
    }
    if (detail::remove_netns_name(path.c_str())) {
      detail::unregister_resource(slot);
    } else {
      all_ok = false;
      report_cleanup_problem("cannot remove " + path + ": " + std::strerror(errno));
    }
  }

  if (!scratch_dir_.empty() && scratch_slot_ >= 0) {
    if (detail::remove_tree(scratch_dir_.c_str())) {
      detail::unregister_resource(scratch_slot_);
    } else {
      all_ok = false;
      report_cleanup_problem("cannot remove " + scratch_dir_ + ": " + std::strerror(errno));
    }
  }

  if (lock_fd_) {
    // Keep the lock file when something is left: reap_stale() retries once
    // this process is gone.
    if (all_ok) ::unlink(lock_path_.c_str());
    detail::unregister_resource(lock_slot_);
    lock_fd_.reset();
    ::rmdir(kLockDir);  // fails while other pods exist; that is fine
  }
  if (subnet_ != 0) {
    give_back_subnet(subnet_);
    subnet_ = 0;
  }
}

int TestPod::reap_stale() {
  DIR* d = ::opendir(kLockDir);
  if (d == nullptr) return 0;
  std::vector<std::string> suffixes;
  while (const dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.size() == 11 && name.ends_with(".lock") &&
        name.find_first_not_of("0123456789abcdef") == 6) {
      suffixes.push_back(name.substr(0, 6));
    }
  }
  ::closedir(d);
  int reaped = 0;
  for (const auto& s : suffixes) {
    const std::string lock = std::string(kLockDir) + "/" + s + ".lock";
    UniqueFd fd(::open(lock.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd || ::flock(fd.get(), LOCK_EX | LOCK_NB) != 0 || !same_file(fd.get(), lock)) continue;
    spdlog::warn("test-support: removing test pod {} left by a process that died", s);
    const std::string cg = cgroup2_mount() + "/" + kPodPrefix + s;
    bool ok = detail::kill_cgroup_and_remove(cg.c_str(), 5000);
    ok = detail::remove_netns_name(("/run/netns/" + std::string(kPodPrefix) + s).c_str()) && ok;
    ok = detail::remove_netns_name(("/run/netns/" + std::string(kPeerPrefix) + s).c_str()) && ok;
    ok = detail::remove_tree(("/tmp/" + std::string(kPodPrefix) + s).c_str()) && ok;
    if (ok) {
      ::unlink(lock.c_str());
      ++reaped;
    } else {
      spdlog::error("test-support: could not fully remove stale test pod {}", s);
    }
  }
  ::rmdir(kLockDir);
  return reaped;
}

// ---- children ----

namespace {

// Serializes forks from different threads, so that a pipe end meant for one
// child is not inherited by another (which would delay its EOF).
std::recursive_mutex g_fork_mu;

// The end of a function child: flush C and C++ streams, never run atexit
// handlers or destructors of the parent's copy.
[[noreturn]] void finish_child(int code) {
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  ::_exit(code & 0xff);
}

template <class Fn>
auto call_guarded(Fn& fn, int& code) -> decltype(fn()) {
  code = 0;
  try {
    return fn();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "test-support: child threw: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "test-support: child threw a non-std exception\n");
  }
  code = kChildThrew;
  return {};
}

bool write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

TestPod::Child TestPod::fork_child(Where where, const Identity& id,
                                   const std::function<void(int)>& body, bool track,
                                   UniqueFd* parent_close) {
  const std::string ns_path = where == Where::pod ? pod_netns_path() : peer_netns_path();
  UniqueFd nsfd(::open(ns_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!nsfd) throw TestSupportError("open " + ns_path, errno);
  UniqueFd procs;
  if (where == Where::pod) {
    procs.reset(::open((cgroup_path_ + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC));
    if (!procs) throw TestSupportError("open " + cgroup_path_ + "/cgroup.procs", errno);
  }

  std::unique_lock fork_lock(g_fork_mu);
  int setup[2];
  if (::pipe2(setup, O_CLOEXEC) != 0) throw TestSupportError("pipe", errno);
  UniqueFd setup_read(setup[0]), setup_write(setup[1]);

  const pid_t parent = ::getpid();
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  // No cleanup handler in this thread between fork and registration.
  detail::SignalBlock block;
  const pid_t pid = ::fork();
  if (pid < 0) throw TestSupportError("fork", errno);
  if (pid == 0) {
    // Child: only syscalls until body(); the parent may have had threads.
    detail::reset_signals_in_child();
    const int sfd = setup_write.get();
    ::close(setup_read.get());
    ::setpgid(0, 0);
    if (procs) {
      // Join the cgroup first, while still root and before the netns switch
      // (writing "0" moves the writing process itself).
      if (::write(procs.get(), "0", 1) != 1) fail_setup(sfd, "join cgroup", errno);
      ::close(procs.get());
    }
    if (::setns(nsfd.get(), CLONE_NEWNET) != 0) fail_setup(sfd, "setns", errno);
    ::close(nsfd.get());
    if (id.changes()) {
      if (::setgroups(id.groups.size(), id.groups.empty() ? nullptr : id.groups.data()) != 0) {
        fail_setup(sfd, "setgroups", errno);
      }
      if (id.gid && ::setgid(*id.gid) != 0) fail_setup(sfd, "setgid", errno);
      if (id.uid && ::setuid(*id.uid) != 0) fail_setup(sfd, "setuid", errno);
    }
    // After the credential change, which clears it: die with the thread that
    // forked us, so nothing outlives a killed test.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) fail_setup(sfd, "parent exited", 0);
    body(sfd);
    ::_exit(kChildSetupFailed);
  }

  setup_write.reset();
  if (parent_close != nullptr) parent_close->reset();
  fork_lock.unlock();

  Child c;
  c.pid = pid;
  c.pidfd = pidfd_open(pid);
  c.slot = detail::register_resource(detail::Resource::process, group_, "", pid, c.pidfd);
  block.release();
  const std::string report = read_setup_report(setup_read.get(), kSetupTimeoutMs);
  if (!report.empty()) {
    detail::kill_and_reap(pid, c.pidfd, 5000);
    detail::unregister_resource(c.slot);
    if (c.pidfd >= 0) ::close(c.pidfd);
    throw TestSupportError(std::string("child entering the ") +
                               (where == Where::pod ? "pod " : "peer of pod ") + suffix_ +
                               " failed at " + describe_setup_failure(report),
                           0);
  }
  if (track) {
    std::lock_guard lock(mu_);
    children_[pid] = c;
  }
  return c;
}

void TestPod::forget_child(const Child& c) {
  {
    std::lock_guard lock(mu_);
    children_.erase(c.pid);
  }
  detail::unregister_resource(c.slot);
  if (c.pidfd >= 0) ::close(c.pidfd);
}

int TestPod::run_child(Where where, std::function<int()> fn, const Identity& id,
                       std::optional<Timeout> timeout) {
  const Child c = fork_child(
      where, id,
      [&fn](int setup_fd) {
        ::close(setup_fd);  // setup done: the parent stops waiting for it
        int code = 0;
        const int rc = call_guarded(fn, code);
        finish_child(code != 0 ? code : rc);
      },
      false);
  const Timeout limit = timeout.value_or(options_.default_timeout);
  auto code = wait_child(c.pid, c.pidfd, static_cast<int>(limit.count()));
  if (!code) {
    spdlog::error("test-support: child {} in {} still running after {} ms, killing it", c.pid,
                  where == Where::pod ? pod_netns_ : peer_netns_, limit.count());
    detail::kill_and_reap(c.pid, c.pidfd, 5000);
  }
  detail::unregister_resource(c.slot);
  if (c.pidfd >= 0) ::close(c.pidfd);
  return code.value_or(kChildTimedOut);
}

int TestPod::run_in_pod(std::function<int()> fn, Identity id, std::optional<Timeout> timeout) {
  return run_child(Where::pod, std::move(fn), id, timeout);
}

int TestPod::run_in_peer(std::function<int()> fn, Identity id, std::optional<Timeout> timeout) {
  return run_child(Where::peer, std::move(fn), id, timeout);
}

std::string TestPod::run_capture(Where where, std::function<std::string()> fn, const Identity& id,
                                 std::optional<Timeout> timeout) {
  const Timeout limit = timeout.value_or(options_.default_timeout);
  const auto deadline = Clock::now() + limit;
  UniqueFd result_read, result_write;
  Child c;
  {
    std::lock_guard fork_lock(g_fork_mu);
    int rp[2];
    if (::pipe2(rp, O_CLOEXEC) != 0) throw TestSupportError("pipe", errno);
    result_read.reset(rp[0]);
    result_write.reset(rp[1]);
    const int rfd = rp[0], wfd = rp[1];
    c = fork_child(
        where, id,
        [&fn, rfd, wfd](int setup_fd) {
          ::close(setup_fd);
          ::close(rfd);
          int code = 0;
          const std::string out = call_guarded(fn, code);
          if (code == 0 && !write_all(wfd, out.data(), out.size())) code = kChildThrew;
          finish_child(code);
        },
        false, &result_write);
  }

  std::string out;
  bool timed_out = false;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    struct pollfd pfd {result_read.get(), POLLIN, 0};
    const int r = ::poll(&pfd, 1, static_cast<int>(left.count()));
    if (r <= 0) continue;
    char buf[8192];
    const ssize_t n = ::read(result_read.get(), buf, sizeof buf);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  std::optional<int> code;
  if (!timed_out) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    code = wait_child(c.pid, c.pidfd, static_cast<int>(std::max<long>(left.count(), 0)));
  }
  if (!code) detail::kill_and_reap(c.pid, c.pidfd, 5000);
  detail::unregister_resource(c.slot);
  if (c.pidfd >= 0) ::close(c.pidfd);
  const std::string where_name = where == Where::pod ? pod_netns_ : peer_netns_;
  if (!code) {
    throw TestSupportError("child in " + where_name + " still running after " +
                               std::to_string(limit.count()) + " ms (killed)",
                           ETIMEDOUT, "output so far: '" + out + "'");
  }
  if (*code != 0) {
    throw TestSupportError("child in " + where_name + " exited with " + std::to_string(*code), 0,
                           "output so far: '" + out + "'");
  }
  return out;
}

std::string TestPod::run_in_pod_capture(std::function<std::string()> fn, Identity id,
                                        std::optional<Timeout> timeout) {
  return run_capture(Where::pod, std::move(fn), id, timeout);
}

std::string TestPod::run_in_peer_capture(std::function<std::string()> fn, Identity id,
                                         std::optional<Timeout> timeout) {
  return run_capture(Where::peer, std::move(fn), id, timeout);
}

pid_t TestPod::spawn(Where where, std::vector<std::string> argv, const Identity& id,
                     const std::string& log_file) {
  if (argv.empty()) throw TestSupportError("spawn: empty argv", EINVAL);
  const auto exe = find_binary(argv[0]);
  if (!exe) throw TestSupportError("spawn: " + argv[0] + " not found", ENOENT);
  std::vector<char*> cargv;
  cargv.push_back(const_cast<char*>(exe->c_str()));
  for (size_t i = 1; i < argv.size(); ++i) cargv.push_back(argv[i].data());
  cargv.push_back(nullptr);
  const std::string exec_step = "exec " + *exe;

  UniqueFd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!devnull) throw TestSupportError("open /dev/null", errno);
  UniqueFd log;
  if (!log_file.empty()) {
    // Opened here as root: the program's uid may not be able to create it.
    log.reset(::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
    if (!log) throw TestSupportError("open log file " + log_file, errno);
  }
  const int in_fd = devnull.get(), log_fd = log.get();
  const Child c = fork_child(
      where, id,
      [&](int setup_fd) {
        if (::dup2(in_fd, STDIN_FILENO) < 0) fail_setup(setup_fd, "redirect stdin", errno);
        if (log_fd >= 0 &&
            (::dup2(log_fd, STDOUT_FILENO) < 0 || ::dup2(log_fd, STDERR_FILENO) < 0)) {
          fail_setup(setup_fd, "redirect output", errno);
        }
        struct rlimit rl {};
        if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
          rl.rlim_cur = rl.rlim_max;
          ::setrlimit(RLIMIT_NOFILE, &rl);
        }
        ::execv(cargv[0], cargv.data());
        fail_setup(setup_fd, exec_step.c_str(), errno);
      },
      true);
  spdlog::debug("test-support: started {} as pid {} in {}", *exe, c.pid,
                where == Where::pod ? pod_netns_ : peer_netns_);
  return c.pid;
}

pid_t TestPod::spawn_in_pod(std::vector<std::string> argv, Identity id, std::string log_file) {
  return spawn(Where::pod, std::move(argv), id, log_file);
}

pid_t TestPod::spawn_in_peer(std::vector<std::string> argv, Identity id, std::string log_file) {
  return spawn(Where::peer, std::move(argv), id, log_file);
}

std::pair<pid_t, UniqueFd> TestPod::start(Where where, std::function<int(int)> fn,
                                          const Identity& id, bool with_pipe) {
  UniqueFd pipe_read, pipe_write;
  std::lock_guard fork_lock(g_fork_mu);
  if (with_pipe) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw TestSupportError("pipe", errno);
    pipe_read.reset(p[0]);
    pipe_write.reset(p[1]);
  }
  const int rfd = pipe_read.get(), wfd = pipe_write.get();
  const Child c = fork_child(
      where, id,
      [&fn, rfd, wfd](int setup_fd) {
        ::close(setup_fd);
        if (rfd >= 0) ::close(rfd);
        auto call = [&] { return fn(wfd); };
        int code = 0;
        const int rc = call_guarded(call, code);
        finish_child(code != 0 ? code : rc);
      },
      true, with_pipe ? &pipe_write : nullptr);
  return {c.pid, std::move(pipe_read)};
}

pid_t TestPod::start_in_pod(std::function<int()> fn, Identity id) {
  return start(Where::pod, [fn = std::move(fn)](int) { return fn(); }, id, false).first;
}

pid_t TestPod::start_in_peer(std::function<int()> fn, Identity id) {
  return start(Where::peer, [fn = std::move(fn)](int) { return fn(); }, id, false).first;
}

std::pair<pid_t, UniqueFd> TestPod::start_in_pod_with_pipe(std::function<int(int)> fn, Identity id) {
  return start(Where::pod, std::move(fn), id, true);
}

std::pair<pid_t, UniqueFd> TestPod::start_in_peer_with_pipe(std::function<int(int)> fn,
                                                            Identity id) {
  return start(Where::peer, std::move(fn), id, true);
}

bool TestPod::is_running(pid_t pid) const {
  {
    std::lock_guard lock(mu_);
    if (children_.find(pid) == children_.end()) return false;
  }
  siginfo_t info {};
  if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0) return false;
  return info.si_pid == 0;
}

std::optional<int> TestPod::wait_exit(pid_t pid, Timeout timeout) {
  Child c;
  {
    std::lock_guard lock(mu_);
    const auto it = children_.find(pid);
    if (it == children_.end()) return std::nullopt;
    c = it->second;
  }
  const auto code = wait_child(c.pid, c.pidfd, static_cast<int>(timeout.count()));
  if (code) forget_child(c);
  return code;
}

std::optional<int> TestPod::stop(pid_t pid, Timeout grace) {
  Child c;
  {
    std::lock_guard lock(mu_);
    const auto it = children_.find(pid);
    if (it == children_.end()) return std::nullopt;
    c = it->second;
  }
  siginfo_t info {};
  if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
      info.si_pid == 0) {
    ::kill(-pid, SIGTERM);
    ::kill(pid, SIGTERM);
  }
  auto code = wait_child(c.pid, c.pidfd, static_cast<int>(grace.count()));
  if (!code) {
    ::kill(-pid, SIGKILL);
    if (c.pidfd >= 0) ::syscall(SYS_pidfd_send_signal, c.pidfd, SIGKILL, nullptr, 0);
    code = wait_child(c.pid, c.pidfd, 5000);
  }
  if (code) forget_child(c);
  return code;
}

std::vector<pid_t> TestPod::cgroup_pids() const {
  std::vector<pid_t> pids;
  std::istringstream in(read_text_file(cgroup_path_ + "/cgroup.procs"));
  long p = 0;
  while (in >> p) pids.push_back(static_cast<pid_t>(p));
  return pids;
}

int TestPod::add_teardown(std::function<void()> fn) {
  std::lock_guard lock(mu_);
  const int token = next_teardown_++;
  teardown_[token] = std::move(fn);
  return token;
}

void TestPod::remove_teardown(int token) {
  std::lock_guard lock(mu_);
  teardown_.erase(token);
}

}  // namespace meshcap::test
