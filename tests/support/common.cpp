#include "support/common.h"

#include "support/cleanup.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

extern char** environ;

namespace meshcap::test {

namespace {

std::string describe(const std::string& step, int err, const std::string& detail) {
  std::string msg = step;
  if (err != 0) msg += ": " + std::string(std::strerror(err));
  if (!detail.empty()) msg += (err != 0 ? " (" : ": ") + detail + (err != 0 ? ")" : "");
  return msg;
}

bool is_executable(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
         ::access(path.c_str(), X_OK) == 0;
}

std::string join(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) {
    if (!s.empty()) s += ' ';
    s += a;
  }
  return s;
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape_mountinfo(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      const std::string oct = s.substr(i + 1, 3);
      if (oct.size() == 3 && oct.find_first_not_of("01234567") == std::string::npos) {
        out += static_cast<char>(std::stoi(oct, nullptr, 8));
        i += 3;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

// Every test process gets meshcap directories of its own: the state
// directory and the BPF pin root (and its staging area) that the meshcap
// commands it runs, and the loader inside it, use. A test never meets the
// machine's /run/meshcap or /sys/fs/bpf/meshcap, nor another test's, and
// what is left in them goes at exit or on a fatal signal (cleanup.h). A
// test or harness that sets MESHCAP_STATE_DIR / MESHCAP_PIN_DIR itself
// (TestNode, the equivalence suite's children) keeps its own.
struct OwnMeshcapDirs {
  OwnMeshcapDirs() {
    if (std::getenv("MESHCAP_STATE_DIR") || std::getenv("MESHCAP_PIN_DIR")) return;
    const std::string id = std::to_string(::getpid());
    const std::string state = "/run/mctest-" + id, pins = "/sys/fs/bpf/mctest-" + id;
    ::setenv("MESHCAP_STATE_DIR", state.c_str(), 1);
    ::setenv("MESHCAP_PIN_DIR", pins.c_str(), 1);
    detail::install_cleanup_handlers();
    const int group = detail::new_group();
    for (const auto& d : {state, pins, pins + "_staging"})
      detail::register_resource(detail::Resource::directory, group, d);
  }
};
const OwnMeshcapDirs own_meshcap_dirs;

}  // namespace

TestSupportError::TestSupportError(std::string step, int err, const std::string& detail)
    : std::runtime_error(describe(step, err, detail)), step_(std::move(step)), err_(err) {}

UniqueFd& UniqueFd::operator=(UniqueFd&& o) noexcept {
  if (this != &o) reset(o.release());
  return *this;
}

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

std::optional<std::string> find_binary(const std::string& name) {
  if (name.empty()) return std::nullopt;
  if (name.find('/') != std::string::npos) {
    return is_executable(name) ? std::optional<std::string>(name) : std::nullopt;
  }
  std::vector<std::string> dirs;
  if (const char* path = std::getenv("PATH")) {
    std::stringstream ss(path);
    std::string dir;
    while (std::getline(ss, dir, ':')) {
      if (!dir.empty()) dirs.push_back(dir);
    }
  }
  for (const char* d : {"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}) {
    dirs.emplace_back(d);
  }
  for (const auto& dir : dirs) {
    const std::string candidate = dir + "/" + name;
    if (is_executable(candidate)) return candidate;
  }
  return std::nullopt;
}

bool have_binary(const std::string& name) { return find_binary(name).has_value(); }

int wait_status_to_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

CommandResult run_command(const std::vector<std::string>& argv) {
  CommandResult result;
  if (argv.empty()) return result;
  const auto exe = find_binary(argv[0]);
  if (!exe) {
    result.exit_code = 127;
    result.output = argv[0] + ": command not found";
    return result;
  }
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) {
    throw TestSupportError("pipe for " + argv[0], errno);
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, pipefd[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, pipefd[1], STDERR_FILENO);

  // The harness installs cleanup handlers and may run with signals blocked;
  // the tool gets default dispositions and an empty mask.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t all, none;
  sigfillset(&all);
  sigemptyset(&none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);

  std::vector<char*> cargv;
  cargv.push_back(const_cast<char*>(exe->c_str()));
  for (size_t i = 1; i < argv.size(); ++i) cargv.push_back(const_cast<char*>(argv[i].c_str()));
  cargv.push_back(nullptr);

  // Registered for the emergency cleanup while it runs: a fatal signal kills
  // and reaps it before removing namespaces, so an `ip netns add` cannot
  // finish after the cleanup and leave a namespace behind.
  pid_t pid = -1;
  detail::SignalBlock block;
  const int rc = posix_spawn(&pid, exe->c_str(), &actions, &attr, cargv.data(), environ);
  const int slot = rc == 0 ? detail::register_resource(detail::Resource::process, 0, "", pid) : -1;
  block.release();
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(pipefd[1]);
  if (rc != 0) {
    ::close(pipefd[0]);
    throw TestSupportError("spawn " + join(argv), rc);
  }
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(pipefd[0], buf, sizeof buf);
    if (n > 0) {
      result.output.append(buf, static_cast<size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      break;
    }
  }
  ::close(pipefd[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  detail::unregister_resource(slot);
  result.exit_code = wait_status_to_code(status);
  spdlog::debug("test-support: `{}` -> {}{}{}", join(argv), result.exit_code,
                result.output.empty() ? "" : ": ", result.output);
  return result;
}

void run_command_checked(const std::vector<std::string>& argv) {
  const CommandResult r = run_command(argv);
  if (!r.ok()) {
    std::string out = r.output;
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    throw TestSupportError("`" + join(argv) + "` exited " + std::to_string(r.exit_code), 0, out);
  }
}

std::string cgroup2_mount() {
  std::ifstream in("/proc/self/mountinfo");
  if (!in) throw TestSupportError("open /proc/self/mountinfo", errno);
  std::string line;
  while (std::getline(in, line)) {
    // "<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> <source> <superopts>"
    const auto sep = line.find(" - ");
    if (sep == std::string::npos) continue;
    std::istringstream tail(line.substr(sep + 3));
    std::string fstype;
    tail >> fstype;
    if (fstype != "cgroup2") continue;
    std::istringstream head(line.substr(0, sep));
    std::string id, parent, dev, root, mount_point;
    head >> id >> parent >> dev >> root >> mount_point;
    if (!mount_point.empty()) return unescape_mountinfo(mount_point);
  }
  throw TestSupportError("find the cgroup2 mount in /proc/self/mountinfo", ENOENT);
}

NewCgroup make_unique_cgroup(const std::string& prefix) {
  std::random_device rd;
  const std::string root = cgroup2_mount();
  for (int attempt = 0; attempt < 32; attempt++) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "%06x", rd() & 0xffffff);
    const std::string cg = root + "/" + prefix + "-" + buf;
    if (::mkdir(cg.c_str(), 0755) == 0) return {cg, buf};
  }
  throw TestSupportError("mkdir a cgroup " + root + "/" + prefix + "-*", errno);
}

std::string read_text_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw TestSupportError("open " + path, errno);
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      const int err = n < 0 ? errno : 0;
      ::close(fd);
      if (err != 0) throw TestSupportError("read " + path, err);
      return out;
    }
  }
}

void write_text_file(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) throw TestSupportError("open " + path, errno);
  const ssize_t n = ::write(fd, text.data(), text.size());
  const int err = errno;
  ::close(fd);
  if (n < 0) throw TestSupportError("write '" + text + "' to " + path, err);
  if (static_cast<size_t>(n) != text.size()) throw TestSupportError("short write to " + path, EIO);
}

}  // namespace meshcap::test
