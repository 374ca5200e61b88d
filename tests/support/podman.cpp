#include "support/podman.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "support/cleanup.h"
#include "support/haproxy.h"
#include "support/netns.h"
#include "support/sockets.h"

extern char** environ;

namespace meshcap::test {

namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kLockDir = "/run/meshcap-testpodman";
constexpr const char* kDefaultNetwork = "mcnet";
constexpr const char* kPodSubnetPrefix = "10.213.";
constexpr const char* kPodSupernet = "10.213.0.0/16";
constexpr int kCommandTimeoutMs = 180000;
// Inside the proxy container (an overlay of the machine's /tmp, writable by
// UID 1337); reached from the node as /proc/<haproxy>/root/...
constexpr const char* kProxyStatsSocket = "/tmp/meshcap-haproxy-stats.sock";

// ---- async-signal-safe removal of a directory tree on one file system ----

struct Dirent64 {
  ino64_t d_ino;
  off64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[1];
};

bool is_dot(const char* n) { return n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0')); }

// Removes everything inside the directory dfd, never leaving the file system
// `dev` (a mount point below is left alone, so is what it holds). Plain
// syscalls on stack buffers: safe in a signal handler.
void remove_entries(int dfd, dev_t dev, int depth) {
  if (depth > 64) return;
  for (int pass = 0; pass < 4; ++pass) {
    bool removed = false;
    ::lseek(dfd, 0, SEEK_SET);
    alignas(8) char buf[2048];
    for (;;) {
      const long n = ::syscall(SYS_getdents64, dfd, buf, sizeof buf);
      if (n <= 0) break;
      for (long off = 0; off < n;) {
        auto* d = reinterpret_cast<Dirent64*>(buf + off);
        off += d->d_reclen;
        if (is_dot(d->d_name)) continue;
        if (::unlinkat(dfd, d->d_name, 0) == 0) {
          removed = true;
          continue;
        }
        if (errno != EISDIR) continue;
        const int sub = ::openat(dfd, d->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0) continue;
        struct stat st {};
        if (::fstat(sub, &st) == 0 && st.st_dev == dev) remove_entries(sub, dev, depth + 1);
        ::close(sub);
        if (::unlinkat(dfd, d->d_name, AT_REMOVEDIR) == 0) removed = true;
      }
    }
    if (!removed) break;
  }
}

bool remove_tree_one_fs(const char* path) noexcept {
  if (path == nullptr || path[0] == '\0') return true;
  const int fd = ::open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT || ::unlink(path) == 0;
  struct stat st {};
  if (::fstat(fd, &st) == 0) remove_entries(fd, st.st_dev, 0);
  ::close(fd);
  return ::rmdir(path) == 0 || errno == ENOENT;
}

// ---- the emergency path for what cleanup.h cannot remove: T (deep) ----

constexpr size_t kPathMax = 512;
struct EmergencySlot {
  std::atomic<int> state{0};  // 0 free, 1 claimed, 2 live
  pid_t owner = 0;
  char dir[kPathMax] = {};
  char lock[kPathMax] = {};
};
EmergencySlot g_emergency[16];
std::atomic<pid_t> g_em_running{0};

constexpr int kHandledSignals[] = {SIGINT, SIGTERM, SIGHUP,  SIGQUIT, SIGABRT, SIGSEGV, SIGBUS,  SIGFPE,
                                   SIGILL, SIGPIPE, SIGALRM, SIGUSR1, SIGUSR2, SIGXCPU, SIGXFSZ, SIGSYS};
struct sigaction g_prev[NSIG];

void podman_emergency() noexcept {
  const pid_t me = ::getpid();
  pid_t none = 0;
  if (!g_em_running.compare_exchange_strong(none, me) && none == me) return;
  // Processes, cgroups (conmon's v1 ones too, so the private mount namespace
  // dies with its last process) and namespaces first.
  detail::emergency_cleanup();
  for (auto& s : g_emergency) {
    if (s.state.load() != 2 || s.owner != me) continue;
    if (remove_tree_one_fs(s.dir)) {
      ::unlink(s.lock);
      ::rmdir(kLockDir);  // only when empty: another node may hold a lock
    }
    s.state.store(0);
  }
  g_em_running.store(0);
}

void on_fatal_signal(int sig, siginfo_t*, void*) {
  const int saved = errno;
  podman_emergency();
  if (sig > 0 && sig < NSIG) ::sigaction(sig, &g_prev[sig], nullptr);
  ::raise(sig);
  errno = saved;
}

void install_podman_handlers() {
  static std::once_flag once;
  std::call_once(once, [] {
    // cleanup.h's handlers first: ours run before them (and call the same
    // emergency cleanup), then hand the signal on to them.
    detail::install_cleanup_handlers();
    struct sigaction sa {};
    sa.sa_sigaction = on_fatal_signal;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    for (int sig : kHandledSignals) sigaddset(&sa.sa_mask, sig);
    for (int sig : kHandledSignals) {
      struct sigaction old {};
      if (::sigaction(sig, nullptr, &old) != 0) continue;
      if (!(old.sa_flags & SA_SIGINFO) && old.sa_handler == SIG_IGN) continue;
      g_prev[sig] = old;
      ::sigaction(sig, &sa, nullptr);
    }
    std::atexit([] { podman_emergency(); });
  });
}

int register_emergency(const std::string& dir, const std::string& lock) {
  if (dir.size() >= kPathMax || lock.size() >= kPathMax) return -1;
  for (int i = 0; i < 16; ++i) {
    int expected = 0;
    if (!g_emergency[i].state.compare_exchange_strong(expected, 1)) continue;
    g_emergency[i].owner = ::getpid();
    std::memcpy(g_emergency[i].dir, dir.c_str(), dir.size() + 1);
    std::memcpy(g_emergency[i].lock, lock.c_str(), lock.size() + 1);
    g_emergency[i].state.store(2);
    return i;
  }
  return -1;
}

void unregister_emergency(int i) {
  if (i >= 0 && i < 16) g_emergency[i].state.store(0);
}

// ---- small helpers ----

std::string random_suffix() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[8];
  std::snprintf(buf, sizeof buf, "%06x", static_cast<unsigned>(rng() & 0xffffff));
  return buf;
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r' || s.back() == '\t')) s.pop_back();
  size_t b = 0;
  while (b < s.size() && (s[b] == ' ' || s[b] == '\n')) ++b;
  return s.substr(b);
}

std::vector<std::string> split_ws(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  std::string w;
  while (in >> w) out.push_back(w);
  return out;
}

std::string join(const std::vector<std::string>& v, const std::string& sep = " ") {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

std::string json_string(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o + "\"";
}

void write_file(const std::string& path, const std::string& text, mode_t mode = 0644) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  out.close();
  if (!out) throw TestSupportError("write " + path, errno);
  ::chmod(path.c_str(), mode);
}

void mkdir_p(const std::string& path, mode_t mode = 0755) {
  for (size_t i = 1; i <= path.size(); ++i) {
    if (i == path.size() || path[i] == '/') {
      const std::string p = path.substr(0, i);
      if (::mkdir(p.c_str(), mode) != 0 && errno != EEXIST) throw TestSupportError("mkdir " + p, errno);
    }
  }
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && s.substr(i + 1, 3).find_first_not_of("01234567") == std::string::npos) {
      out += static_cast<char>(std::stoi(s.substr(i + 1, 3), nullptr, 8));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

struct MountEntry {
  std::string point, fstype;
  bool shared = false;
};

std::vector<MountEntry> mounts() {
  std::vector<MountEntry> out;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    const auto sep = line.find(" - ");
    if (sep == std::string::npos) continue;
    const auto head = split_ws(line.substr(0, sep));
    const auto tail = split_ws(line.substr(sep + 3));
    if (head.size() < 6 || tail.empty()) continue;
    MountEntry m;
    m.point = unescape(head[4]);
    m.fstype = tail[0];
    for (size_t i = 6; i < head.size(); ++i) m.shared = m.shared || head[i].rfind("shared:", 0) == 0;
    out.push_back(m);
  }
  return out;
}

bool under(const std::string& path, const std::string& dir) {
  return path == dir || (path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 && path[dir.size()] == '/');
}

// "<errno> <step>" to the setup pipe, then _exit. Async-signal-safe.
[[noreturn]] void child_fail(int fd, const char* step, int err) {
  char buf[256];
  int n = std::snprintf(buf, sizeof buf, "%d %s", err, step);  // no allocation
  if (n > 0) [[maybe_unused]] auto w = ::write(fd, buf, static_cast<size_t>(n));
  ::_exit(121);
}

void report_problem(const std::string& msg) {
  spdlog::error("podman-node: {}", msg);
  if (::testing::UnitTest::GetInstance()->current_test_info() != nullptr) ADD_FAILURE() << "PodmanNode: " << msg;
}

std::vector<std::string> environ_plus(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string kv = *e;
    const auto key = kv.substr(0, kv.find('=') + 1);
    bool overridden = false;
    for (const auto& x : extra) overridden = overridden || x.rfind(key, 0) == 0;
    if (!overridden) env.push_back(kv);
  }
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

bool cgroup_has_procs(const std::string& dir) {
  try {
    if (!trim(read_text_file(dir + "/cgroup.procs")).empty()) return true;
  } catch (...) {
    return false;
  }
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return false;
  bool busy = false;
  while (const dirent* e = ::readdir(d)) {
    if (e->d_type == DT_DIR && !is_dot(e->d_name)) busy = busy || cgroup_has_procs(dir + "/" + e->d_name);
  }
  ::closedir(d);
  return busy;
}

}  // namespace

// ---------------------------------------------------------------------------
// exec_with_input

ExecResult exec_with_input(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                           const std::string& input, std::chrono::milliseconds timeout) {
  ExecResult r;
  if (argv.empty()) return r;
  int in_p[2], out_p[2], err_p[2];
  if (::pipe2(in_p, O_CLOEXEC) != 0) throw TestSupportError("pipe", errno);
  if (::pipe2(out_p, O_CLOEXEC) != 0) throw TestSupportError("pipe", errno);
  if (::pipe2(err_p, O_CLOEXEC) != 0) throw TestSupportError("pipe", errno);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in_p[0], STDIN_FILENO);
  posix_spawn_file_actions_adddup2(&fa, out_p[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&fa, err_p[1], STDERR_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setsigmask(&attr, &none);
  // Its own process group: a timeout kills what it started too.
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP);
  std::vector<char*> cargv, cenv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  for (const auto& e : env) cenv.push_back(const_cast<char*>(e.c_str()));
  cenv.push_back(nullptr);
  pid_t pid = -1;
  detail::SignalBlock block;
  const int rc = posix_spawn(&pid, argv[0].c_str(), &fa, &attr, cargv.data(), cenv.data());
  const int slot = rc == 0 ? detail::register_resource(detail::Resource::process, 0, "", pid) : -1;
  block.release();
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(in_p[0]);
  ::close(out_p[1]);
  ::close(err_p[1]);
  if (rc != 0) {
    ::close(in_p[1]);
    ::close(out_p[0]);
    ::close(err_p[0]);
    throw TestSupportError("spawn " + argv[0], rc);
  }
  // Feed stdin and drain both outputs without blocking on either.
  size_t written = 0;
  int in_fd = in_p[1];
  ::fcntl(in_fd, F_SETFL, O_NONBLOCK);
  if (input.empty()) {
    ::close(in_fd);
    in_fd = -1;
  }
  int fds[2] = {out_p[0], err_p[0]};
  std::string* sinks[2] = {&r.out, &r.err};
  const auto deadline = Clock::now() + timeout;
  bool timed_out = false;
  while (fds[0] >= 0 || fds[1] >= 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    struct pollfd p[3];
    int np = 0;
    int map[3];
    for (int i = 0; i < 2; ++i) {
      if (fds[i] >= 0) {
        p[np] = {fds[i], POLLIN, 0};
        map[np++] = i;
      }
    }
    if (in_fd >= 0) {
      p[np] = {in_fd, POLLOUT, 0};
      map[np++] = 2;
    }
    const int k = ::poll(p, static_cast<nfds_t>(np), static_cast<int>(std::min<long>(left, 1000)));
    if (k < 0 && errno != EINTR) break;
    for (int j = 0; j < np && k > 0; ++j) {
      if (p[j].revents == 0) continue;
      if (map[j] == 2) {
        const ssize_t w = ::write(in_fd, input.data() + written, input.size() - written);
        if (w > 0) written += static_cast<size_t>(w);
        if ((w < 0 && errno != EAGAIN && errno != EINTR) || written == input.size()) {
          ::close(in_fd);
          in_fd = -1;
        }
        continue;
      }
      char buf[8192];
      const ssize_t n = ::read(fds[map[j]], buf, sizeof buf);
      if (n > 0) {
        sinks[map[j]]->append(buf, static_cast<size_t>(n));
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        ::close(fds[map[j]]);
        fds[map[j]] = -1;
      }
    }
  }
  if (in_fd >= 0) ::close(in_fd);
  for (int fd : fds) {
    if (fd >= 0) ::close(fd);
  }
  if (timed_out) {
    ::kill(-pid, SIGKILL);
    ::kill(pid, SIGKILL);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  detail::unregister_resource(slot);
  r.exit_code = timed_out ? -1 : wait_status_to_code(status);
  return r;
}

// ---------------------------------------------------------------------------
// the app

namespace {

std::atomic<bool> g_app_quiet{false};

// One connection of the app's client; returns the line it prints.
std::string app_one(const std::string& ip, uint16_t port, bool& ok) {
  ok = false;
  Connection c = connect_tcp(ip, port, Millis(5000));
  if (!c.ok()) return std::string("fail step=connect error=") + std::strerror(c.error);
  const std::string local = getsockname_str(c.fd.get());
  const std::string peer = getpeername_str(c.fd.get());
  if (!send_all(c.fd.get(), "ping\n")) return std::string("fail step=send error=") + std::strerror(errno);
  std::string reply;
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  while (reply.find('\n') == std::string::npos && Clock::now() < deadline) {
    const std::string part = recv_some(c.fd.get(), Millis(5000));
    if (part.empty()) break;
    reply += part;
  }
  if (reply.find('\n') == std::string::npos) {
    return "fail step=recv error=" + std::string(reply.empty() ? "no reply" : "partial reply") + " local=" + local +
           " peer=" + peer;
  }
  ok = true;
  return "ok local=" + local + " peer=" + peer + " reply=" + trim(reply.substr(0, reply.find('\n')));
}

void app_serve_one(int fd) {
  UniqueFd c(fd);
  std::string line;
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  while (line.find('\n') == std::string::npos && Clock::now() < deadline) {
    const std::string part = recv_some(c.get(), Millis(5000));
    if (part.empty()) break;
    line += part;
  }
  const std::string reply = "peer=" + getpeername_str(c.get()) + " local=" + getsockname_str(c.get()) + "\n";
  send_all(c.get(), reply);
}

}  // namespace

int podman_app_main(int argc, char** argv) {
  struct sigaction sa {};
  sa.sa_handler = [](int) { ::_exit(0); };
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  std::vector<std::string> a(argv + 1, argv + argc);
  if (!a.empty() && a[0] == kPodmanAppFlag) a.erase(a.begin());
  try {
    if (a.size() == 2 && a[0] == "serve") {
      UniqueFd l = listen_tcp("0.0.0.0", static_cast<uint16_t>(std::stoi(a[1])), 512);
      // listen_tcp's socket is non-blocking: accept here blocks.
      ::fcntl(l.get(), F_SETFL, ::fcntl(l.get(), F_GETFL) & ~O_NONBLOCK);
      for (;;) {
        const int fd = ::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) {
          if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE) continue;
          return 1;
        }
        std::thread(app_serve_one, fd).detach();
      }
    }
    if ((a.size() == 3 || a.size() == 4) && a[0] == "connect") {
      const int n = a.size() == 4 ? std::stoi(a[3]) : 1;
      int ok = 0, failed = 0;
      for (int i = 0; i < n; ++i) {
        bool good = false;
        const std::string line = app_one(a[1], static_cast<uint16_t>(std::stoi(a[2])), good);
        (good ? ok : failed)++;
        std::printf("%s\n", line.c_str());
      }
      std::printf("summary ok=%d failed=%d\n", ok, failed);
      std::fflush(stdout);
      return failed == 0 ? 0 : 1;
    }
    if (a.size() == 4 && a[0] == "load") {
      const auto until = Clock::now() + std::chrono::milliseconds(std::stoi(a[3]));
      int ok = 0, failed = 0;
      while (Clock::now() < until) {
        bool good = false;
        const std::string line = app_one(a[1], static_cast<uint16_t>(std::stoi(a[2])), good);
        (good ? ok : failed)++;
        if (!good) std::printf("%s\n", line.c_str());
      }
      std::printf("summary ok=%d failed=%d\n", ok, failed);
      std::fflush(stdout);
      return failed == 0 ? 0 : 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "app: %s\n", e.what());
    return 2;
  }
  std::fprintf(stderr, "usage: %s serve PORT | connect IP PORT [N] | load IP PORT MS\n", kPodmanAppFlag);
  return 2;
}

// ---------------------------------------------------------------------------
// PodmanNode

std::string PodmanNode::unavailable_reason() {
  if (::geteuid() != 0) return "needs root: creates network namespaces, cgroups and mounts";
  for (const char* b : {"podman", "runc", "conmon", "nsenter", "haproxy", "ip"}) {
    if (!have_binary(b)) return std::string("needs `") + b + "` (scripts/install-deps.sh installs it)";
  }
  for (const char* p : {"/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback"}) {
    if (!exists(p)) return std::string("needs the CNI reference plugins (") + p + "; containernetworking-plugins)";
  }
  if (!exists("/usr/libexec/podman/catatonit") && !have_binary("catatonit")) {
    return "needs catatonit (podman builds its pause image from it)";
  }
  return {};
}

PodmanNode::PodmanNode() : PodmanNode(PodmanNodeOptions{}) {}

PodmanNode::PodmanNode(PodmanNodeOptions options) : options_(std::move(options)) {
  try {
    build();
  } catch (...) {
    cleanup();
    throw;
  }
}

PodmanNode::~PodmanNode() { cleanup(); }

void PodmanNode::record(const std::string& kind, const std::string& path) {
  detail::Resource r = kind == "cgroup" ? detail::Resource::cgroup : detail::Resource::netns;
  slots_.push_back(detail::register_resource(r, group_, path));
  if (lock_fd_) {
    const std::string line = kind + " " + path + "\n";
    [[maybe_unused]] auto w = ::write(lock_fd_.get(), line.data(), line.size());
  }
}

void PodmanNode::reserve_names() {
  for (int attempt = 0; attempt < 64; ++attempt) {
    // Made again each time: the last node to go removes it when empty.
    mkdir_p(kLockDir);
    const std::string s = random_suffix();
    const std::string lock = std::string(kLockDir) + "/" + s + ".lock";
    UniqueFd fd(::open(lock.c_str(), O_RDWR | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0644));
    if (!fd) {
      if (errno == EEXIST || errno == ENOENT) continue;
      throw TestSupportError("create " + lock, errno);
    }
    // A reaper may have opened it between our create and lock: then it holds
    // the lock, or already unlinked the file.
    struct stat a {}, b {};
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0 || ::fstat(fd.get(), &a) != 0 || ::stat(lock.c_str(), &b) != 0 ||
        a.st_ino != b.st_ino || a.st_dev != b.st_dev) {
      continue;
    }
    if (exists("/run/netns/mcpnode-" + s) || exists("/run/netns/mcpout-" + s) || exists("/tmp/mcpodman-" + s) ||
        exists(cgroup2_mount() + "/mcpodman-" + s)) {
      ::unlink(lock.c_str());
      continue;
    }
    suffix_ = s;
    lock_path_ = lock;
    lock_fd_ = std::move(fd);
    return;
  }
  throw TestSupportError("find unused podman node names", EEXIST);
}

std::vector<std::string> PodmanNode::v1_dirs(const std::string& relative) const {
  std::vector<std::string> out;
  for (const auto& m : v1_mounts_) out.push_back(m + relative);
  return out;
}

void PodmanNode::build() {
  if (const std::string why = unavailable_reason(); !why.empty()) throw TestSupportError("podman node", 0, why);
  install_podman_handlers();
  group_ = detail::new_group();
  try {
    reap_stale();
  } catch (const std::exception& e) {
    spdlog::warn("podman-node: reaping stale nodes failed: {}", e.what());
  }
  reserve_names();
  node_netns_ = "mcpnode-" + suffix_;
  outside_netns_ = "mcpout-" + suffix_;
  dir_ = "/tmp/mcpodman-" + suffix_;
  for (const auto& m : mounts()) {
    if (m.fstype == "cgroup") v1_mounts_.push_back(m.point);
  }

  // T first (its removal is the emergency path's last step).
  emergency_slot_ = register_emergency(dir_, lock_path_);
  {
    const std::string line = "dir " + dir_ + "\n";
    [[maybe_unused]] auto w = ::write(lock_fd_.get(), line.data(), line.size());
  }
  if (::mkdir(dir_.c_str(), 0755) != 0) throw TestSupportError("mkdir " + dir_, errno);
  ::chmod(dir_.c_str(), 0755);  // the containers' users read the configs
  for (const char* sub : {"net.d", "root", "runroot", "tmp", "cni", "vartmp", "varlib/upper", "varlib/work"}) {
    mkdir_p(dir_ + "/" + sub);
  }

  // Cgroups: the parent (own or given) and its copies in the v1 hierarchies.
  if (options_.cgroup_parent.empty()) {
    cgroup_parent_ = cgroup2_mount() + "/mcpodman-" + suffix_;
    own_cgroup_ = true;
    record("cgroup", cgroup_parent_);
    if (::mkdir(cgroup_parent_.c_str(), 0755) != 0) throw TestSupportError("mkdir " + cgroup_parent_, errno);
  } else {
    cgroup_parent_ = options_.cgroup_parent;
    while (cgroup_parent_.size() > 1 && cgroup_parent_.back() == '/') cgroup_parent_.pop_back();
  }
  const std::string root = cgroup2_mount();
  if (!under(cgroup_parent_, root) || cgroup_parent_ == root) {
    throw TestSupportError("podman node: cgroup parent must be below " + root, EINVAL, cgroup_parent_);
  }
  cgroup_parent_rel_ = cgroup_parent_.substr(root.size());
  for (const auto& d : v1_dirs(cgroup_parent_rel_)) record("cgroup", d);
  // podman's cgroupfs manager creates its default parent, libpod_parent, at
  // the top of each hierarchy for whatever it starts outside ours. Where it
  // is missing now, it is this node's to remove, on every path (recorded
  // like our own cgroups: teardown, fatal signals, and the next run's reap).
  std::vector<std::string> defaults = v1_dirs("/libpod_parent");
  defaults.push_back(root + "/libpod_parent");
  for (const auto& d : defaults) {
    if (exists(d)) continue;
    podman_default_cgroups_.push_back(d);
    record("cgroup", d);
  }

  // The node and the outside namespaces, a veth between them. `ip netns
  // add` also makes /run/netns a shared mount, which the private mount
  // namespace below relies on.
  record("netns", node_netns_path());
  run_command_checked({"ip", "netns", "add", node_netns_});
  record("netns", outside_netns_path());
  run_command_checked({"ip", "netns", "add", outside_netns_});
  run_command_checked({"ip", "-n", node_netns_, "link", "add", "vout", "type", "veth", "peer", "name", "vnode",
                       "netns", outside_netns_});
  for (const auto& ns : {node_netns_, outside_netns_}) run_command_checked({"ip", "-n", ns, "link", "set", "lo", "up"});
  run_command_checked({"ip", "-n", node_netns_, "addr", "add", node_ipv4_ + "/24", "dev", "vout"});
  run_command_checked({"ip", "-n", outside_netns_, "addr", "add", outside_ipv4_ + "/24", "dev", "vnode"});
  run_command_checked({"ip", "-n", node_netns_, "link", "set", "vout", "up"});
  run_command_checked({"ip", "-n", outside_netns_, "link", "set", "vnode", "up"});
  run_command_checked({"ip", "-n", outside_netns_, "route", "add", kPodSupernet, "via", node_ipv4_});
  call_in_netns(node_netns_path(), [] { write_text_file("/proc/sys/net/ipv4/ip_forward", "1"); });
  call_in_netns(outside_netns_path(), [] {
    write_text_file("/proc/sys/net/ipv4/tcp_tw_reuse", "1");
    write_text_file("/proc/sys/net/ipv4/ip_local_port_range", "10000 65535");
  });

  start_holder();

  // The app: this binary, linked into T (readable by the containers' users
  // whatever the build tree's permissions), copied when it cannot be.
  std::string app = options_.app_binary;
  if (app.empty()) {
    char buf[4096];
    const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) throw TestSupportError("readlink /proc/self/exe", errno);
    app.assign(buf, static_cast<size_t>(n));
  }
  app_binary_ = dir_ + "/app";
  if (::link(app.c_str(), app_binary_.c_str()) != 0) {
    run_command_checked({"cp", app, app_binary_});
  }
  ::chmod(app_binary_.c_str(), 0755);

  HaproxyOptions h;
  // Logs on stdout are written without blocking: haproxy drops lines when
  // conmon falls behind. Its stats socket counts every connection.
  h.extra_global = {"log stdout format raw local0", std::string("stats socket ") + kProxyStatsSocket + " mode 600 level user"};
  h.extra_defaults = {"log global", "option tcplog"};
  haproxy_cfg_ = dir_ + "/haproxy.cfg";
  write_file(haproxy_cfg_, haproxy_config_text(h));

  containers_conf_ = dir_ + "/containers.conf";
  write_containers_conf();
  PodmanNetwork def;
  def.name = kDefaultNetwork;
  def.chained = options_.chained;
  add_network(def);
}

void PodmanNode::start_holder() {
  // Every shared mount but /run/netns becomes a slave in the private
  // namespace: what podman mounts there never propagates to the machine,
  // while pod namespaces bound under /run/netns still do.
  std::vector<std::string> slaves;
  for (const auto& m : mounts()) {
    if (m.shared && !under(m.point, "/run/netns")) slaves.push_back(m.point);
  }
  const std::string ovl =
      "lowerdir=/var/lib,upperdir=" + dir_ + "/varlib/upper,workdir=" + dir_ + "/varlib/work";
  if (::mkdir("/run/runc", 0700) != 0 && errno != EEXIST) throw TestSupportError("mkdir /run/runc", errno);
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) throw TestSupportError("pipe", errno);
  const pid_t parent = ::getpid();
  detail::SignalBlock block;
  const pid_t pid = ::fork();
  if (pid == 0) {
    detail::reset_signals_in_child();
    ::close(p[0]);
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(0);
    if (::unshare(CLONE_NEWNS) != 0) child_fail(p[1], "unshare(CLONE_NEWNS)", errno);
    for (const auto& s : slaves) {
      if (::mount(nullptr, s.c_str(), nullptr, MS_SLAVE, nullptr) != 0 && errno != EINVAL) {
        child_fail(p[1], "make a mount a slave", errno);
      }
    }
    if (::mount("overlay", "/var/lib", "overlay", 0, ovl.c_str()) != 0) child_fail(p[1], "overlay on /var/lib", errno);
    if (::mount("tmpfs", "/run/runc", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700") != 0) {
      child_fail(p[1], "tmpfs on /run/runc", errno);
    }
    ::close(p[1]);
    for (;;) ::pause();
  }
  const int fork_err = errno;
  if (pid > 0) {
    holder_pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    holder_pid_ = pid;
    slots_.push_back(detail::register_resource(detail::Resource::process, group_, "", pid, holder_pidfd_));
  }
  block.release();
  ::close(p[1]);
  if (pid < 0) {
    ::close(p[0]);
    throw TestSupportError("fork the mount namespace holder", fork_err);
  }
  std::string report;
  char buf[256];
  for (;;) {
    struct pollfd pfd {p[0], POLLIN, 0};
    if (::poll(&pfd, 1, 10000) <= 0) {
      report = "0 the mount namespace holder did not get ready";
      break;
    }
    const ssize_t n = ::read(p[0], buf, sizeof buf);
    if (n > 0) {
      report.append(buf, static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  ::close(p[0]);
  if (!report.empty()) {
    const auto sp = report.find(' ');
    const int err = std::atoi(report.substr(0, sp).c_str());
    throw TestSupportError("mount namespace holder: " + report.substr(sp + 1), err);
  }
}

void PodmanNode::write_containers_conf() {
  std::vector<std::string> plugin_dirs = options_.plugin_dirs;
  plugin_dirs.push_back("/usr/lib/cni");
  std::vector<std::string> dirs, conmon_env;
  for (const auto& d : plugin_dirs) dirs.push_back(json_string(d));
  // conmon starts `podman container cleanup` when a container exits: it
  // tears the network down (CNI DEL) with this environment, not ours.
  conmon_env.push_back(json_string("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"));
  conmon_env.push_back(json_string("CONTAINERS_CONF=" + containers_conf_));
  for (const auto& e : options_.env) conmon_env.push_back(json_string(e));
  std::ostringstream c;
  c << "# meshcap test node " << suffix_ << "\n"
    << "[containers]\n"
    << "default_ulimits = []\n"  // no CAP_SYS_RESOURCE here
    << "pids_limit = 0\n"
    << "[network]\n"
    << "network_backend = \"cni\"\n"
    << "network_config_dir = " << json_string(dir_ + "/net.d") << "\n"
    << "cni_plugin_dirs = [" << join(dirs, ", ") << "]\n"
    << "default_network = " << json_string(kDefaultNetwork) << "\n"
    << "[engine]\n"
    << "cgroup_manager = \"cgroupfs\"\n"
    << "events_logger = \"file\"\n"
    << "runtime = \"runc\"\n"
    << "lock_type = \"file\"\n"
    << "tmp_dir = " << json_string(dir_ + "/tmp") << "\n"
    << "image_copy_tmp_dir = " << json_string(dir_ + "/vartmp") << "\n"
    << "conmon_env_vars = [" << join(conmon_env, ", ") << "]\n";
  write_file(containers_conf_, c.str());
}

void PodmanNode::write_conflist(const PodmanNetwork& n) {
  std::ostringstream c;
  c << "{\n  \"cniVersion\": \"1.0.0\",\n  \"name\": " << json_string(n.name) << ",\n  \"plugins\": [\n"
    << "    {\"type\": \"bridge\", \"bridge\": " << json_string(n.bridge)
    << ", \"isGateway\": true, \"ipMasq\": false, \"hairpinMode\": true,\n"
    << "     \"ipam\": {\"type\": \"host-local\", \"dataDir\": " << json_string(dir_ + "/cni/" + n.name)
    << ", \"routes\": [{\"dst\": \"0.0.0.0/0\"}], \"ranges\": [[{\"subnet\": " << json_string(n.subnet)
    << ", \"gateway\": " << json_string(n.gateway) << "}]]}},\n"
    << "    {\"type\": \"loopback\"}";
  for (const auto& p : n.chained) c << ",\n    " << p;
  c << "\n  ]\n}\n";
  write_file(n.conflist_path, c.str());
}

const PodmanNetwork& PodmanNode::add_network(PodmanNetwork net) {
  std::lock_guard lock(mu_);
  if (net.name.empty() || networks_.count(net.name) != 0) {
    throw TestSupportError("add network", EINVAL, "empty or duplicate name '" + net.name + "'");
  }
  const int k = next_network_++;
  net.bridge = "mcbr" + std::to_string(k);
  net.subnet = kPodSubnetPrefix + std::to_string(k) + ".0/24";
  net.gateway = kPodSubnetPrefix + std::to_string(k) + ".1";
  net.conflist_path = dir_ + "/net.d/" + net.name + ".conflist";
  write_conflist(net);
  return networks_[net.name] = net;
}

const PodmanNetwork& PodmanNode::network(const std::string& name) const {
  std::lock_guard lock(mu_);
  auto it = networks_.find(name);
  if (it == networks_.end()) throw TestSupportError("no network " + name, ENOENT);
  return it->second;
}

void PodmanNode::set_chained(const std::string& name, std::vector<std::string> chained) {
  std::lock_guard lock(mu_);
  auto it = networks_.find(name);
  if (it == networks_.end()) throw TestSupportError("no network " + name, ENOENT);
  it->second.chained = std::move(chained);
  write_conflist(it->second);
}

ExecResult PodmanNode::exec_in_node(const std::vector<std::string>& argv,
                                    const std::vector<std::string>& extra_env) const {
  ExecResult r;
  if (argv.empty()) return r;
  // The holder must still be ours: its pid names the mount namespace.
  struct pollfd pfd {holder_pidfd_, POLLIN, 0};
  if (holder_pid_ <= 0 || (holder_pidfd_ >= 0 && ::poll(&pfd, 1, 0) != 0)) {
    r.exit_code = 127;
    r.err = "podman node " + suffix_ + ": the mount namespace holder is gone";
    return r;
  }
  std::vector<std::string> full = {*find_binary("nsenter"),
                                   "--mount=/proc/" + std::to_string(holder_pid_) + "/ns/mnt",
                                   "--net=" + node_netns_path()};
  const auto exe = find_binary(argv[0]);
  full.push_back(exe ? *exe : argv[0]);
  full.insert(full.end(), argv.begin() + 1, argv.end());
  std::vector<std::string> env = {"CONTAINERS_CONF=" + containers_conf_};
  env.insert(env.end(), options_.env.begin(), options_.env.end());
  env.insert(env.end(), extra_env.begin(), extra_env.end());
  r = exec_with_input(full, environ_plus(env), "", Millis(kCommandTimeoutMs));
  spdlog::debug("podman-node: `{}` -> {}: {}{}", join(argv), r.exit_code, r.out, r.err);
  return r;
}

CommandResult PodmanNode::in_node(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env) const {
  const ExecResult e = exec_in_node(argv, extra_env);
  return CommandResult{e.exit_code, e.out + e.err};
}

std::vector<std::string> PodmanNode::podman_argv(const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {"podman", "--root", dir_ + "/root", "--runroot", dir_ + "/runroot"};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

CommandResult PodmanNode::podman(const std::vector<std::string>& args) const { return in_node(podman_argv(args)); }

std::string PodmanNode::podman_checked(const std::vector<std::string>& args) const {
  const ExecResult r = exec_in_node(podman_argv(args));
  if (r.exit_code != 0) {
    throw TestSupportError("`podman " + join(args) + "` exited " + std::to_string(r.exit_code), 0,
                           trim(r.out + r.err));
  }
  return trim(r.out);
}

PodmanPod PodmanNode::create_pod(PodmanPodSpec spec) {
  PodmanPod pod;
  {
    std::lock_guard lock(mu_);
    pod.name = spec.name.empty() ? "p" + suffix_ + "-" + std::to_string(next_pod_++) : spec.name;
    pod.network = spec.network.empty() ? kDefaultNetwork : spec.network;
    if (networks_.count(pod.network) == 0) throw TestSupportError("no network " + pod.network, ENOENT);
  }
  podman_checked({"pod", "create", "--name", pod.name, "--infra-name", pod.name + "-infra",
                                    "--cgroup-parent", cgroup_parent_rel_, "--network", pod.network});
  const std::vector<std::string> common = {"run", "-d", "--pod", pod.name, "--stop-timeout", "1"};
  if (spec.app) {
    pod.app_container = pod.name + "-app";
    std::vector<std::string> a = common;
    a.insert(a.end(), {"--name", pod.app_container, "--user", "1000:1000", "--rootfs", "/:O", app_binary_,
                       kPodmanAppFlag, "serve", std::to_string(spec.app_port)});
    podman_checked(a);
  }
  if (spec.proxy) {
    pod.proxy_container = pod.name + "-proxy";
    std::vector<std::string> a = common;
    // --init: haproxy as a container's PID 1 ignores SIGTERM (every stop
    // would wait out the timeout and end in SIGKILL); catatonit forwards it.
    a.insert(a.end(), {"--name", pod.proxy_container, "--user", "1337:1337", "--init", "--rootfs", "/:O",
                       *find_binary("haproxy"), "-db", "-f", haproxy_cfg_});
    podman_checked(a);
  }
  if (!spec.app && !spec.proxy) podman_checked({"pod", "start", pod.name});

  const auto pod_fields =
      split_ws(podman_checked({"pod", "inspect", pod.name, "--format", "{{.Id}} {{.InfraContainerID}} {{.CgroupPath}}"}));
  if (pod_fields.size() != 3) throw TestSupportError("pod inspect " + pod.name, 0, join(pod_fields));
  pod.id = pod_fields[0];
  pod.infra_id = pod_fields[1];
  pod.cgroup_path = cgroup2_mount() + pod_fields[2];
  const auto infra = split_ws(podman_checked(
      {"inspect", pod.name + "-infra", "--format",
       "{{.State.Pid}} {{.NetworkSettings.SandboxKey}} {{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"}));
  if (infra.size() < 3) throw TestSupportError("inspect " + pod.name + "-infra", 0, join(infra));
  pod.infra_pid = std::stoi(infra[0]);
  pod.netns_path = infra[1];
  pod.ipv4 = infra[2];
  {
    std::lock_guard lock(mu_);
    auto& slots = pod_slots_[pod.name];
    slots.push_back(detail::register_resource(detail::Resource::netns, group_, pod.netns_path));
    if (!own_cgroup_) slots.push_back(detail::register_resource(detail::Resource::cgroup, group_, pod.cgroup_path));
    const std::string line = "netns " + pod.netns_path + "\n" + (own_cgroup_ ? "" : "cgroup " + pod.cgroup_path + "\n");
    [[maybe_unused]] auto w = ::write(lock_fd_.get(), line.data(), line.size());
    pods_[pod.name] = pod;
  }
  auto pid_of = [&](const std::string& c) {
    return std::stoi(podman_checked({"inspect", c, "--format", "{{.State.Pid}}"}));
  };
  if (spec.app) pod.app_pid = pid_of(pod.app_container);
  if (spec.proxy) {
    // The container's PID 1 is catatonit (--init); haproxy is its child.
    const pid_t init = pid_of(pod.proxy_container);
    const auto until = Clock::now() + std::chrono::seconds(5);
    for (;;) {
      std::vector<std::string> children;
      try {
        const std::string t = std::to_string(init);
        children = split_ws(read_text_file("/proc/" + t + "/task/" + t + "/children"));
      } catch (const std::exception&) {
      }
      if (!children.empty()) {
        pod.proxy_pid = std::stoi(children[0]);
        break;
      }
      if (Clock::now() >= until) throw TestSupportError("pod " + pod.name + ": haproxy did not start", ESRCH);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  {
    std::lock_guard lock(mu_);
    pods_[pod.name] = pod;
  }

  // Ready when they listen (read from /proc, never by connecting: an
  // uncaptured connection to haproxy's outbound listener loops).
  const auto deadline = Clock::now() + std::chrono::seconds(15);
  for (;;) {
    bool ready = true;
    if (spec.app) ready = ready && is_listening(pod.app_pid, "0.0.0.0", spec.app_port);
    if (spec.proxy) {
      ready = ready && is_listening(pod.proxy_pid, "127.0.0.1", 15001) && is_listening(pod.proxy_pid, "0.0.0.0", 15006);
    }
    if (ready) break;
    if (Clock::now() >= deadline) {
      std::string logs = "podman ps -a:\n" +
                         podman({"ps", "-a", "--pod", "--format",
                                 "{{.Names}} {{.Status}} exit={{.ExitCode}} pid={{.Pid}}"})
                             .output;
      for (const auto& c : {pod.app_container, pod.proxy_container}) {
        if (c.empty()) continue;
        logs += c + " log: " + podman({"logs", c}).output + "\n";
        logs += c + " state: " +
                podman({"inspect", c, "--format", "{{.State.Status}} exit={{.State.ExitCode}} error={{.State.Error}}"})
                    .output;
      }
      for (const auto& [c, pid] : {std::pair{pod.app_container, pod.app_pid}, std::pair{pod.proxy_container, pod.proxy_pid}}) {
        if (c.empty()) continue;
        std::string net;
        try {
          net = read_text_file("/proc/" + std::to_string(pid) + "/net/tcp");
        } catch (const std::exception& e) {
          net = e.what();
        }
        logs += c + " pid " + std::to_string(pid) + " /proc/net/tcp:\n" + net;
      }
      throw TestSupportError("pod " + pod.name + " did not listen within 15 s", ETIMEDOUT, logs);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return pod;
}

std::vector<PodmanPod> PodmanNode::create_pods(int n, const PodmanPodSpec& spec, int parallel) {
  std::vector<PodmanPod> out(static_cast<size_t>(std::max(n, 0)));
  if (n <= 0) return out;
  auto spec_for = [&](int i) {
    PodmanPodSpec s = spec;
    if (!s.name.empty()) s.name += "-" + std::to_string(i);
    return s;
  };
  // The first pod alone: it builds podman's pause image.
  bool first_pod;
  {
    std::lock_guard lock(mu_);
    first_pod = pods_.empty();
  }
  int start = 0;
  if (first_pod) out[static_cast<size_t>(start++)] = create_pod(spec_for(0));
  std::atomic<int> next{start};
  std::mutex err_mu;
  std::string first_error;
  std::vector<std::thread> workers;
  for (int w = 0; w < std::max(1, parallel); ++w) {
    workers.emplace_back([&] {
      for (;;) {
        const int i = next.fetch_add(1);
        if (i >= n) return;
        {
          std::lock_guard lock(err_mu);
          if (!first_error.empty()) return;
        }
        try {
          out[static_cast<size_t>(i)] = create_pod(spec_for(i));
        } catch (const std::exception& e) {
          std::lock_guard lock(err_mu);
          if (first_error.empty()) first_error = e.what();
        }
      }
    });
  }
  for (auto& t : workers) t.join();
  if (!first_error.empty()) throw TestSupportError("create " + std::to_string(n) + " pods", 0, first_error);
  return out;
}

PodRemoval PodmanNode::remove_pod(const PodmanPod& pod) {
  PodRemoval r;
  r.command = podman({"pod", "rm", "-f", "-t", "1", pod.name});
  if (!r.command.ok()) return r;
  // podman leaves the pod's empty cgroup (v2, and v1 name=systemd) behind.
  std::vector<std::string> dirs = {pod.cgroup_path};
  for (const auto& d : v1_dirs(cgroup_parent_rel_ + "/" + pod.id)) dirs.push_back(d);
  for (const auto& d : dirs) {
    if (!exists(d)) continue;
    (cgroup_has_procs(d) ? r.busy_cgroups : r.empty_cgroups).push_back(d);
    detail::kill_cgroup_and_remove(d.c_str(), 5000);
  }
  std::lock_guard lock(mu_);
  if (exists(pod.netns_path)) return r;  // keep it registered: the destructor removes it
  for (int s : pod_slots_[pod.name]) detail::unregister_resource(s);
  pod_slots_.erase(pod.name);
  pods_.erase(pod.name);
  return r;
}

std::vector<std::string> PodmanNode::pod_names() const {
  try {
    return split_ws(podman_checked({"pod", "ps", "--format", "{{.Name}}"}));
  } catch (const TestSupportError&) {
    return {};
  }
}

AppRun PodmanNode::parse_app(CommandResult r) const {
  AppRun a;
  a.command = std::move(r);
  std::istringstream in(a.command.output);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("ok ", 0) == 0 || line.rfind("fail ", 0) == 0) a.lines.push_back(line);
    if (line.rfind("ok ", 0) == 0 && a.local.empty()) {
      for (const auto& f : split_ws(line)) {
        if (f.rfind("local=", 0) == 0) a.local = f.substr(6);
        if (f.rfind("peer=", 0) == 0) a.peer = f.substr(5);
      }
      const auto rp = line.find(" reply=");
      if (rp != std::string::npos) a.reply = line.substr(rp + 7);
    }
    int ok = 0, failed = 0;
    if (std::sscanf(line.c_str(), "summary ok=%d failed=%d", &ok, &failed) == 2) {
      a.ok = ok;
      a.failed = failed;
    }
  }
  return a;
}

AppRun PodmanNode::app_connect(const PodmanPod& pod, const std::string& ip, uint16_t port, int count) const {
  return parse_app(podman({"exec", "--user", "1000:1000", pod.app_container, app_binary_, kPodmanAppFlag, "connect",
                           ip, std::to_string(port), std::to_string(count)}));
}

AppRun PodmanNode::app_load(const PodmanPod& pod, const std::string& ip, uint16_t port, Millis duration) const {
  return parse_app(podman({"exec", "--user", "1000:1000", pod.app_container, app_binary_, kPodmanAppFlag, "load", ip,
                           std::to_string(port), std::to_string(duration.count())}));
}

std::string PodmanNode::ask_from_outside(const std::string& ip, uint16_t port, Millis timeout) const {
  return call_in_netns(outside_netns_path(), [&]() -> std::string {
    Connection c = connect_tcp(ip, port, timeout);
    if (!c.ok()) return std::string("error: connect: ") + std::strerror(c.error);
    if (!send_all(c.fd.get(), "hi\n", timeout)) return std::string("error: send: ") + std::strerror(errno);
    std::string reply;
    const auto deadline = Clock::now() + timeout;
    while (reply.find('\n') == std::string::npos && Clock::now() < deadline) {
      const std::string part = recv_some(c.fd.get(), timeout);
      if (part.empty()) break;
      reply += part;
    }
    if (reply.find('\n') == std::string::npos) return "error: no reply (" + reply + ")";
    return reply.substr(0, reply.find('\n'));
  });
}

std::string PodmanNode::proxy_log(const PodmanPod& pod) const {
  if (pod.proxy_container.empty()) return {};
  return podman({"logs", pod.proxy_container}).output;
}

std::string PodmanNode::proxy_command(const PodmanPod& pod, const std::string& command) const {
  if (pod.proxy_pid <= 0) return "error: no proxy";
  const std::string path = "/proc/" + std::to_string(pod.proxy_pid) + "/root" + kProxyStatsSocket;
  sockaddr_un sa {};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path) return "error: path too long";
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return std::string("error: socket: ") + std::strerror(errno);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&sa), sizeof sa) != 0) {
    return "error: connect " + path + ": " + std::strerror(errno);
  }
  if (!send_all(fd.get(), command + "\n")) return std::string("error: send: ") + std::strerror(errno);
  std::string out;
  for (;;) {  // haproxy closes after answering one command
    const std::string part = recv_some(fd.get(), Millis(5000));
    if (part.empty()) break;
    out += part;
  }
  return out;
}

long PodmanNode::proxy_sessions(const PodmanPod& pod, const std::string& listener) const {
  // show stat: CSV "# pxname,svname,qcur,qmax,scur,smax,slim,stot,..."
  std::istringstream in(proxy_command(pod, "show stat"));
  std::string line;
  int stot = -1;
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::string cell;
    std::istringstream cells(line.rfind("# ", 0) == 0 ? line.substr(2) : line);
    while (std::getline(cells, cell, ',')) f.push_back(cell);
    if (line.rfind("# ", 0) == 0) {
      for (size_t i = 0; i < f.size(); ++i) {
        if (f[i] == "stot") stot = static_cast<int>(i);
      }
      continue;
    }
    if (stot >= 0 && f.size() > static_cast<size_t>(stot) && f[0] == listener && f[1] == "FRONTEND") {
      return std::stol(f[static_cast<size_t>(stot)]);
    }
  }
  return -1;
}

int PodmanNode::proxy_log_count(const PodmanPod& pod, const std::string& listener) const {
  // tcplog: "<client> [<date>] <frontend> <backend>/<server> ..."; a listen
  // section's frontend and backend share its name.
  const std::string needle = " " + listener + " " + listener + "/";
  std::istringstream in(proxy_log(pod));
  std::string line;
  int n = 0;
  while (std::getline(in, line)) n += line.find(needle) != std::string::npos;
  return n;
}

void PodmanNode::cleanup() noexcept {
  try {
    bool problems = false;
    // Pods first, through podman: the CNI plugins' DEL runs for each.
    struct pollfd pfd {holder_pidfd_, POLLIN, 0};
    const bool holder_alive = holder_pid_ > 0 && holder_pidfd_ >= 0 && ::poll(&pfd, 1, 0) == 0;
    if (holder_alive && !networks_.empty()) {
      const CommandResult a = podman({"pod", "rm", "-a", "-f", "-t", "0"});
      const CommandResult b = podman({"rm", "-a", "-f", "-t", "0"});
      if (!a.ok() || !b.ok()) {
        report_problem("removing the pods failed: " + a.output + b.output);
        problems = true;
      }
    }
    // What podman left: pod cgroups (and conmon, in the v1 hierarchies).
    std::vector<std::string> cgroups;
    {
      std::lock_guard lock(mu_);
      for (const auto& [name, pod] : pods_) {
        if (!own_cgroup_ && !pod.cgroup_path.empty()) cgroups.push_back(pod.cgroup_path);
      }
    }
    if (own_cgroup_) cgroups.push_back(cgroup_parent_);
    if (!cgroup_parent_rel_.empty()) {
      for (const auto& d : v1_dirs(cgroup_parent_rel_)) cgroups.push_back(d);
    }
    for (const auto& d : podman_default_cgroups_) {
      if (exists(d)) cgroups.push_back(d);
    }
    for (const auto& d : cgroups) {
      if (!detail::kill_cgroup_and_remove(d.c_str(), 5000)) {
        report_problem("cgroup " + d + " could not be removed");
        problems = true;
      }
    }
    if (holder_pid_ > 0 && !detail::kill_and_reap(holder_pid_, holder_pidfd_, 5000)) {
      report_problem("the mount namespace holder did not exit");
      problems = true;
    }
    if (holder_pidfd_ >= 0) ::close(holder_pidfd_);
    holder_pidfd_ = -1;
    {
      std::lock_guard lock(mu_);
      for (const auto& [name, pod] : pods_) {
        if (!pod.netns_path.empty() && exists(pod.netns_path)) {
          report_problem("pod " + name + "'s namespace " + pod.netns_path + " was left by podman");
          detail::remove_netns_name(pod.netns_path.c_str());
        }
      }
    }
    if (!node_netns_.empty()) detail::remove_netns_name(node_netns_path().c_str());
    if (!outside_netns_.empty()) detail::remove_netns_name(outside_netns_path().c_str());
    if (!dir_.empty()) {
      // Nothing is mounted below T in this namespace (podman's mounts were
      // in the holder's); detach anything that is all the same.
      for (const auto& m : mounts()) {
        if (under(m.point, dir_)) {
          report_problem("mount " + m.point + " in the machine's namespace");
          ::umount2(m.point.c_str(), MNT_DETACH);
        }
      }
      if (!remove_tree_one_fs(dir_.c_str())) {
        report_problem("could not remove " + dir_);
        problems = true;
      }
    }
    {
      std::lock_guard lock(mu_);
      for (auto& [name, slots] : pod_slots_) {
        for (int s : slots) detail::unregister_resource(s);
      }
      pod_slots_.clear();
    }
    for (int s : slots_) detail::unregister_resource(s);
    slots_.clear();
    unregister_emergency(emergency_slot_);
    emergency_slot_ = -1;
    if (!problems && !lock_path_.empty()) {
      ::unlink(lock_path_.c_str());
      ::rmdir(kLockDir);  // only when empty: another node may hold a lock
    }
    lock_fd_.reset();
  } catch (const std::exception& e) {
    report_problem(std::string("cleanup threw: ") + e.what());
  }
}

int PodmanNode::reap_stale() {
  int reaped = 0;
  DIR* d = ::opendir(kLockDir);
  if (d == nullptr) return 0;
  std::vector<std::string> locks;
  while (const dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n.size() > 5 && n.substr(n.size() - 5) == ".lock") locks.push_back(std::string(kLockDir) + "/" + n);
  }
  ::closedir(d);
  for (const auto& lock : locks) {
    UniqueFd fd(::open(lock.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd || ::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) continue;
    std::string text;
    try {
      text = read_text_file(lock);
    } catch (...) {
      continue;
    }
    std::vector<std::pair<std::string, std::string>> items;
    std::istringstream in(text);
    std::string kind, path;
    while (in >> kind >> path) items.emplace_back(kind, path);
    bool ok = true;
    for (const char* k : {"cgroup", "netns", "dir"}) {
      for (const auto& [kd, p] : items) {
        if (kd != k) continue;
        if (kd == "cgroup") ok = detail::kill_cgroup_and_remove(p.c_str(), 5000) && ok;
        if (kd == "netns") ok = detail::remove_netns_name(p.c_str()) && ok;
        if (kd == "dir" && under(p, "/tmp") && p.find("/mcpodman-") != std::string::npos) {
          ok = remove_tree_one_fs(p.c_str()) && ok;
        }
      }
    }
    if (ok) {
      ::unlink(lock.c_str());
      ::rmdir(kLockDir);
      ++reaped;
      spdlog::info("podman-node: reaped the stale node of {}", lock);
    }
  }
  return reaped;
}

}  // namespace meshcap::test
