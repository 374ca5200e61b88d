#include "support/cleanup.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/poll.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace meshcap::test::detail {

namespace {

// ---- fixed-buffer helpers (async-signal-safe) ----

constexpr size_t kPathMax = 512;

struct PathBuf {
  char s[kPathMax];
  size_t n = 0;
  PathBuf() { s[0] = '\0'; }
  bool append(const char* part) {
    const size_t len = std::strlen(part);
    if (n + len + 1 > kPathMax) return false;
    std::memcpy(s + n, part, len + 1);
    n += len;
    return true;
  }
  bool join(const char* dir, const char* name) {
    n = 0;
    s[0] = '\0';
    return append(dir) && append("/") && append(name);
  }
};

void sleep_ms(int ms) {
  struct timespec ts {};
  ts.tv_sec = ms / 1000;
  ts.tv_nsec = static_cast<long>(ms % 1000) * 1000000L;
  while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

long now_ms() {
  struct timespec ts {};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

struct Dirent64 {
  ino64_t d_ino;
  off64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[1];
};

bool is_dot(const char* name) {
  return std::strcmp(name, ".") == 0 || std::strcmp(name, "..") == 0;
}

// Calls fn(name, d_type) for each entry of the directory at path.
template <class Fn>
bool for_each_entry(const char* path, Fn fn) {
  const int fd = ::open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return false;
  alignas(8) char buf[4096];
  for (;;) {
    const long n = ::syscall(SYS_getdents64, fd, buf, sizeof buf);
    if (n <= 0) break;
    for (long off = 0; off < n;) {
      auto* d = reinterpret_cast<Dirent64*>(buf + off);
      off += d->d_reclen;
      if (!is_dot(d->d_name)) fn(d->d_name, d->d_type);
    }
  }
  ::close(fd);
  return true;
}

// Kills every pid listed in <cgroup>/cgroup.procs.
void kill_listed_procs(const char* cgroup_dir) {
  PathBuf p;
  if (!p.join(cgroup_dir, "cgroup.procs")) return;
  const int fd = ::open(p.s, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  char buf[8192];
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return;
  long pid = 0;
  for (ssize_t i = 0; i <= n; ++i) {
    const char c = i < n ? buf[i] : '\n';
    if (c >= '0' && c <= '9') {
      pid = pid * 10 + (c - '0');
    } else {
      if (pid > 1) ::kill(static_cast<pid_t>(pid), SIGKILL);
      pid = 0;
    }
  }
}

// Kills the members of a cgroup subtree; cgroup.kill (Linux 5.14+) does the
// whole subtree atomically, cgroup.procs is the fallback per directory.
void kill_cgroup_members(const char* cgroup_dir, int depth) {
  PathBuf p;
  if (p.join(cgroup_dir, "cgroup.kill")) {
    const int fd = ::open(p.s, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
      const ssize_t w = ::write(fd, "1", 1);
      ::close(fd);
      if (w == 1) return;
    }
  }
  kill_listed_procs(cgroup_dir);
  if (depth <= 0) return;
  for_each_entry(cgroup_dir, [&](const char* name, unsigned char type) {
    if (type != DT_DIR) return;
    PathBuf sub;
    if (sub.join(cgroup_dir, name)) kill_cgroup_members(sub.s, depth - 1);
  });
}

// Removes child cgroups depth-first, then the directory itself.
bool rmdir_cgroup_tree(const char* cgroup_dir, int depth) {
  if (depth > 0) {
    for_each_entry(cgroup_dir, [&](const char* name, unsigned char type) {
      if (type != DT_DIR) return;
      PathBuf sub;
      if (sub.join(cgroup_dir, name)) rmdir_cgroup_tree(sub.s, depth - 1);
    });
  }
  return ::rmdir(cgroup_dir) == 0 || errno == ENOENT;
}

bool remove_tree_depth(const char* path, int depth) {
  if (::unlink(path) == 0 || errno == ENOENT) return true;
  if (errno != EISDIR && errno != EPERM) return false;
  if (depth > 0) {
    for_each_entry(path, [&](const char* name, unsigned char) {
      PathBuf sub;
      if (sub.join(path, name)) remove_tree_depth(sub.s, depth - 1);
    });
  }
  return ::rmdir(path) == 0 || errno == ENOENT;
}

// ---- the registry ----

enum SlotState : int { kFree = 0, kClaimed = 1, kLive = 2, kCleaning = 3, kFailed = 4 };

struct Slot {
  std::atomic<int> state{kFree};
  Resource kind = Resource::process;
  int group = 0;
  pid_t owner = 0;
  pid_t pid = 0;
  int pidfd = -1;
  char path[kPathMax] = {};
};

constexpr int kSlots = 512;
Slot g_slots[kSlots];
std::atomic<int> g_next_group{1};
std::atomic<pid_t> g_cleaning_pid{0};

// Every signal whose default action ends the process, except SIGKILL and
// SIGSTOP (impossible), SIGTRAP (debuggers) and SIGPROF/SIGVTALRM (profilers).
constexpr int kHandledSignals[] = {SIGINT,  SIGTERM, SIGHUP,  SIGQUIT, SIGABRT, SIGSEGV,
                                   SIGBUS,  SIGFPE,  SIGILL,  SIGPIPE, SIGALRM, SIGUSR1,
                                   SIGUSR2, SIGXCPU, SIGXFSZ, SIGSYS};
struct sigaction g_previous[NSIG];
bool g_installed[NSIG];

bool remove_one(const Slot& s) {
  switch (s.kind) {
    case Resource::process:
      return kill_and_reap(s.pid, s.pidfd, 2000);
    case Resource::cgroup:
      return kill_cgroup_and_remove(s.path, 3000);
    case Resource::netns:
      return remove_netns_name(s.path);
    case Resource::directory:
      return remove_tree(s.path);
    case Resource::lockfile: {
      const bool gone = ::unlink(s.path) == 0 || errno == ENOENT;
      // The lock directory too, once it holds no other lock (rmdir refuses
      // while it does).
      char dir[sizeof s.path];
      std::memcpy(dir, s.path, sizeof dir);
      dir[sizeof dir - 1] = '\0';
      if (char* slash = std::strrchr(dir, '/'); slash && slash != dir) {
        *slash = '\0';
        ::rmdir(dir);
      }
      return gone;
    }
  }
  return false;
}

bool group_failed(int group, pid_t owner) {
  for (auto& s : g_slots) {
    if (s.state.load() == kFailed && s.group == group && s.owner == owner) return true;
  }
  return false;
}

void on_fatal_signal(int sig, siginfo_t*, void*) {
  const int saved_errno = errno;
  emergency_cleanup();
  // Back to what was there before us, and deliver the signal again: it is
  // blocked while this handler runs, so it arrives as soon as we return.
  if (sig > 0 && sig < NSIG) ::sigaction(sig, &g_previous[sig], nullptr);
  ::raise(sig);
  errno = saved_errno;
}

void at_exit_cleanup() { emergency_cleanup(); }

}  // namespace

bool kill_and_reap(pid_t pid, int pidfd, int timeout_ms) noexcept {
  if (pid <= 0) return true;
  // The process group id equals pid (children call setpgid(0, 0)); it cannot
  // be reused while our unreaped child exists, so check that first.
  siginfo_t info {};
  const bool our_unreaped =
      ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0;
  if (our_unreaped) ::kill(-pid, SIGKILL);
  if (pidfd >= 0) {
    ::syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);
  } else if (our_unreaped) {
    ::kill(pid, SIGKILL);
  }
  const long deadline = now_ms() + timeout_ms;
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return true;
    if (r < 0 && errno == ECHILD) {
      // Reaped elsewhere, or not our child: gone when the pidfd says so.
      if (pidfd < 0) return true;
      struct pollfd pfd {pidfd, POLLIN, 0};
      if (::poll(&pfd, 1, 0) == 1) return true;
    }
    if (now_ms() >= deadline) return false;
    sleep_ms(5);
  }
}

bool kill_cgroup_and_remove(const char* cgroup_dir, int timeout_ms) noexcept {
  if (cgroup_dir == nullptr || cgroup_dir[0] == '\0') return true;
  const long deadline = now_ms() + timeout_ms;
  for (;;) {
    if (::access(cgroup_dir, F_OK) != 0 && errno == ENOENT) return true;
    kill_cgroup_members(cgroup_dir, 4);
    if (rmdir_cgroup_tree(cgroup_dir, 4)) return true;
    if (now_ms() >= deadline) return false;
    sleep_ms(10);
  }
}

bool remove_netns_name(const char* netns_path) noexcept {
  if (netns_path == nullptr || netns_path[0] == '\0') return true;
  ::umount2(netns_path, MNT_DETACH);
  return ::unlink(netns_path) == 0 || errno == ENOENT;
}

bool remove_tree(const char* path) noexcept {
  if (path == nullptr || path[0] == '\0') return true;
  return remove_tree_depth(path, 6);
}

void install_cleanup_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_fatal_signal;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    for (int sig : kHandledSignals) sigaddset(&sa.sa_mask, sig);
    for (int sig : kHandledSignals) {
      struct sigaction old {};
      if (::sigaction(sig, nullptr, &old) != 0) continue;
      // Ignored on purpose (nohup, background jobs): a handler that cleans
      // up and then returns would tear down pods still in use.
      if (!(old.sa_flags & SA_SIGINFO) && old.sa_handler == SIG_IGN) continue;
      g_previous[sig] = old;
      if (::sigaction(sig, &sa, nullptr) == 0) g_installed[sig] = true;
    }
    std::atexit(at_exit_cleanup);
  });
}

int new_group() { return g_next_group.fetch_add(1); }

int register_resource(Resource kind, int group, const std::string& path, pid_t pid,
                      int pidfd) noexcept {
  if (path.size() >= kPathMax) {
    spdlog::error("test-support: path too long to register for cleanup: {}", path);
    return -1;
  }
  for (int i = 0; i < kSlots; ++i) {
    int expected = kFree;
    if (!g_slots[i].state.compare_exchange_strong(expected, kClaimed)) continue;
    Slot& s = g_slots[i];
    s.kind = kind;
    s.group = group;
    s.owner = ::getpid();
    s.pid = pid;
    s.pidfd = pidfd;
    std::memcpy(s.path, path.c_str(), path.size() + 1);
    s.state.store(kLive);
    return i;
  }
  spdlog::error("test-support: cleanup table full; {} is not covered by signal cleanup", path);
  return -1;
}

void unregister_resource(int handle) noexcept {
  if (handle < 0 || handle >= kSlots) return;
  int expected = kLive;
  if (g_slots[handle].state.compare_exchange_strong(expected, kFree)) return;
  expected = kFailed;
  g_slots[handle].state.compare_exchange_strong(expected, kFree);
}

void emergency_cleanup() noexcept {
  const pid_t me = ::getpid();
  pid_t none = 0;
  if (!g_cleaning_pid.compare_exchange_strong(none, me)) {
    // A fork of a process that was cleaning inherits the flag; the original
    // cleaner itself must not re-enter (e.g. a fault during cleanup).
    if (none == me) return;
    g_cleaning_pid.store(me);
  }
  constexpr Resource kOrder[] = {Resource::process, Resource::cgroup, Resource::netns,
                                 Resource::directory, Resource::lockfile};
  for (Resource kind : kOrder) {
    for (auto& s : g_slots) {
      if (s.owner != me || s.kind != kind) continue;
      int expected = kLive;
      if (!s.state.compare_exchange_strong(expected, kCleaning)) continue;
      // A lock file marks a pod for TestPod::reap_stale(): keep it while any
      // part of that pod could not be removed.
      if (kind == Resource::lockfile && group_failed(s.group, me)) {
        s.state.store(kFailed);
        continue;
      }
      s.state.store(remove_one(s) ? kFree : kFailed);
    }
  }
  g_cleaning_pid.store(0);
}

SignalBlock::SignalBlock() {
  static_assert(sizeof(old_) >= sizeof(sigset_t));
  sigset_t set;
  sigemptyset(&set);
  for (int sig : kHandledSignals) sigaddset(&set, sig);
  active_ = ::pthread_sigmask(SIG_BLOCK, &set, reinterpret_cast<sigset_t*>(old_)) == 0;
}

void SignalBlock::release() {
  if (!active_) return;
  active_ = false;
  ::pthread_sigmask(SIG_SETMASK, reinterpret_cast<sigset_t*>(old_), nullptr);
}

void reset_signals_in_child() noexcept {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int sig : kHandledSignals) {
    if (g_installed[sig]) ::sigaction(sig, &dfl, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

}  // namespace meshcap::test::detail
