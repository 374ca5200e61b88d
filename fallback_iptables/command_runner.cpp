#include "command_runner.h"

#include <fcntl.h>
#include <pthread.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <array>
#include <memory>
#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "iptables_error.h"
#include "kernel_tables.h"

extern char** environ;

namespace meshcap::iptables {

std::string netns_context_id(uint64_t dev, uint64_t ino) {
  return "netns-" + std::to_string(static_cast<unsigned long long>(dev)) + "-" +
         std::to_string(static_cast<unsigned long long>(ino));
}

std::optional<std::pair<uint64_t, uint64_t>> parse_netns_context_id(const std::string& id) {
  unsigned long long dev = 0, ino = 0;
  int used = 0;
  if (std::sscanf(id.c_str(), "netns-%llu-%llu%n", &dev, &ino, &used) != 2 || used != static_cast<int>(id.size()) ||
      netns_context_id(dev, ino) != id)
    return std::nullopt;
  return std::pair<uint64_t, uint64_t>{dev, ino};
}

namespace {

// Closes an fd once; -1 means "nothing to close".
struct Fd {
  int fd = -1;
  Fd() = default;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  void reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

std::string errno_text(int e) { return std::strerror(e); }

// iptables and ip live in sbin, which a non-login PATH may lack.
std::string resolve_binary(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  std::string path = std::getenv("PATH") ? std::getenv("PATH") : "";
  path += ":/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin";
  std::stringstream dirs(path);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (dir.empty()) continue;
    std::string candidate = dir + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

std::string stat_id(const struct stat& st) {
  return netns_context_id(static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino));
}

// What the child reports through the CLOEXEC error pipe before exec.
struct ChildFailure {
  char stage;  // 'n' setns, 'e' exec
  int err;
};

[[noreturn]] void child_fail(int pipe_fd, char stage) {
  ChildFailure f{stage, errno};
  ssize_t ignored = ::write(pipe_fd, &f, sizeof(f));
  (void)ignored;
  _exit(127);
}

// What the child needs, prepared before the clone: it shares the parent's
// memory until it execs, so it allocates nothing.
struct ChildArgs {
  int netns_fd, in_fd, out_fd, err_fd, fail_fd;
  const char* binary;
  char* const* argv;
  sigset_t mask;  // the parent's mask, restored before exec
};

int child_main(void* p) {
  const auto* a = static_cast<const ChildArgs*>(p);
  if (a->netns_fd >= 0 && ::setns(a->netns_fd, CLONE_NEWNET) != 0) child_fail(a->fail_fd, 'n');
  if (::dup2(a->in_fd, STDIN_FILENO) < 0 || ::dup2(a->out_fd, STDOUT_FILENO) < 0 ||
      ::dup2(a->err_fd, STDERR_FILENO) < 0) {
    child_fail(a->fail_fd, 'e');
  }
  ::sigprocmask(SIG_SETMASK, &a->mask, nullptr);
  ::execve(a->binary, a->argv, environ);
  child_fail(a->fail_fd, 'e');
}

// Both ends of the child's stdout, stderr and exec-failure pipes and of its
// stdin socket.
struct ChildPipes {
  Fd out_r, out_w, err_r, err_w, fail_r, fail_w, in_w, in_r;

  ChildPipes() {
    int out_pipe[2], err_pipe[2], fail_pipe[2], in_sock[2];
    if (::pipe2(out_pipe, O_CLOEXEC) != 0) throw IptablesError("run", "pipe: " + errno_text(errno), -1, errno);
    out_r.fd = out_pipe[0];
    out_w.fd = out_pipe[1];
    if (::pipe2(err_pipe, O_CLOEXEC) != 0) throw IptablesError("run", "pipe: " + errno_text(errno), -1, errno);
    err_r.fd = err_pipe[0];
    err_w.fd = err_pipe[1];
    if (::pipe2(fail_pipe, O_CLOEXEC) != 0) throw IptablesError("run", "pipe: " + errno_text(errno), -1, errno);
    fail_r.fd = fail_pipe[0];
    fail_w.fd = fail_pipe[1];
    // A socket for stdin, so writing to a child that exited early gives EPIPE
    // (MSG_NOSIGNAL) instead of killing us with SIGPIPE.
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in_sock) != 0) {
      throw IptablesError("run", "socketpair: " + errno_text(errno), -1, errno);
    }
    in_w.fd = in_sock[0];
    in_r.fd = in_sock[1];
  }
};

// Starts the child. As posix_spawn does (which cannot setns): the child
// borrows our memory and runs on its own stack until it execs, so no page
// tables are copied (fork of this process costs about as much as a small
// command runs); signals stay blocked in the child until just before exec.
pid_t spawn_child(ChildArgs& args) {
  sigset_t all;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &args.mask);
  // Not zeroed: only what the child touches is faulted in (each page fault
  // is dear on a virtual machine; a zeroed buffer touches every page).
  constexpr size_t kStack = 64 * 1024;
  const std::unique_ptr<char[]> stack(new char[kStack]);
  const pid_t pid = ::clone(child_main, stack.get() + kStack, CLONE_VM | CLONE_VFORK | SIGCHLD, &args);
  const int clone_errno = errno;
  ::pthread_sigmask(SIG_SETMASK, &args.mask, nullptr);
  if (pid < 0) throw IptablesError("run", "clone: " + errno_text(clone_errno), -1, clone_errno);
  return pid;
}

// Writes `stdin_data` to the child and reads its stdout and stderr into
// `result` until all three are closed.
void exchange_with_child(ChildPipes& p, const std::string& stdin_data, CommandResult& result) {
  size_t written = 0;
  std::array<char, 65536> buf;  // not zeroed (see spawn_child)
  while (p.out_r.fd >= 0 || p.err_r.fd >= 0 || p.in_w.fd >= 0) {
    std::array<pollfd, 3> fds{};
    nfds_t n = 0;
    if (p.out_r.fd >= 0) fds[n++] = {p.out_r.fd, POLLIN, 0};
    if (p.err_r.fd >= 0) fds[n++] = {p.err_r.fd, POLLIN, 0};
    if (p.in_w.fd >= 0) fds[n++] = {p.in_w.fd, POLLOUT, 0};
    if (::poll(fds.data(), n, -1) < 0) {
      if (errno == EINTR) continue;
      throw IptablesError("run", "poll: " + errno_text(errno), -1, errno);
    }
    for (nfds_t i = 0; i < n; ++i) {
      if (fds[i].revents == 0) continue;
      if (fds[i].fd == p.in_w.fd) {
        const ssize_t w = ::send(p.in_w.fd, stdin_data.data() + written, stdin_data.size() - written, MSG_NOSIGNAL);
        if (w > 0) written += static_cast<size_t>(w);
        if ((w < 0 && errno != EAGAIN && errno != EINTR) || written == stdin_data.size()) p.in_w.reset();
        continue;
      }
      const ssize_t r = ::read(fds[i].fd, buf.data(), buf.size());
      if (r > 0) {
        (fds[i].fd == p.out_r.fd ? result.out : result.err).append(buf.data(), static_cast<size_t>(r));
      } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
        (fds[i].fd == p.out_r.fd ? p.out_r : p.err_r).reset();
      }
    }
  }
}

// The child's wait status.
int wait_for_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw IptablesError("run", "waitpid: " + errno_text(errno), -1, errno);
  }
  return status;
}

}  // namespace

bool CommandRunner::has_binary(const std::string& binary) const { return !resolve_binary(binary).empty(); }

std::string find_binary(const std::string& name) { return resolve_binary(name); }

ProcessRunner::ProcessRunner() : where_("current network namespace") {}

ProcessRunner::ProcessRunner(const std::string& netns_path) : where_("network namespace " + netns_path) {
  netns_fd_ = ::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (netns_fd_ < 0) {
    const int e = errno;
    throw IptablesError("open-netns", "cannot open network namespace " + netns_path + ": " + errno_text(e), -1, e);
  }
  // Already there (an init container in the pod): no setns, which would need
  // CAP_SYS_ADMIN even for the namespace one is in.
  struct stat target {}, own {};
  if (::fstat(netns_fd_, &target) == 0 && ::stat("/proc/self/ns/net", &own) == 0 && target.st_dev == own.st_dev &&
      target.st_ino == own.st_ino) {
    ::close(netns_fd_);
    netns_fd_ = -1;
  }
}

ProcessRunner::ProcessRunner(int netns_fd) : where_("network namespace fd " + std::to_string(netns_fd)) {
  netns_fd_ = ::fcntl(netns_fd, F_DUPFD_CLOEXEC, 0);
  if (netns_fd_ < 0) {
    const int e = errno;
    throw IptablesError("open-netns", "cannot use network namespace fd " + std::to_string(netns_fd) + ": " +
                                          errno_text(e),
                        -1, e);
  }
}

ProcessRunner::~ProcessRunner() {
  if (netns_fd_ >= 0) ::close(netns_fd_);
}

std::string ProcessRunner::context_id() const {
  struct stat st {};
  const int rc = netns_fd_ >= 0 ? ::fstat(netns_fd_, &st) : ::stat("/proc/self/ns/net", &st);
  if (rc != 0) return "netns-unknown";
  return stat_id(st);
}

KernelTables* ProcessRunner::kernel_tables() {
  if (!tables_) tables_ = std::make_unique<NetnsKernelTables>(netns_fd_);
  return tables_.get();
}

CommandResult ProcessRunner::run(const std::vector<std::string>& argv, const std::string& stdin_data) {
  if (argv.empty()) throw IptablesError("run", "empty command line");
  const std::string binary = resolve_binary(argv[0]);
  if (binary.empty()) return CommandResult{127, "", argv[0] + ": command not found"};

  std::vector<char*> cargv;
  cargv.reserve(argv.size() + 1);
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);

  ChildPipes p;
  spdlog::debug("running in {}: {}", where_, RecordingRunner::Call{argv, ""}.line());
  const auto started = std::chrono::steady_clock::now();
  ChildArgs args{netns_fd_, p.in_r.fd, p.out_w.fd, p.err_w.fd, p.fail_w.fd, binary.c_str(), cargv.data(), {}};
  const pid_t pid = spawn_child(args);

  p.out_w.reset();
  p.err_w.reset();
  p.fail_w.reset();
  p.in_r.reset();
  if (stdin_data.empty()) {
    p.in_w.reset();
  } else {
    ::fcntl(p.in_w.fd, F_SETFL, ::fcntl(p.in_w.fd, F_GETFL) | O_NONBLOCK);
  }

  CommandResult result;
  exchange_with_child(p, stdin_data, result);

  const int status = wait_for_child(pid);
  ChildFailure failure{};
  if (::read(p.fail_r.fd, &failure, sizeof(failure)) == static_cast<ssize_t>(sizeof(failure))) {
    if (failure.stage == 'n') {
      throw IptablesError("enter-netns", "cannot enter " + where_ + ": " + errno_text(failure.err), -1, failure.err);
    }
    return CommandResult{127, "", binary + ": cannot execute: " + errno_text(failure.err)};
  }
  if (WIFEXITED(status)) {
    result.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    result.exit_code = 128 + WTERMSIG(status);
  }
  spdlog::debug("{} exited {} after {:.2f} ms", argv[0], result.exit_code,
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count());
  return result;
}

std::string RecordingRunner::Call::line() const {
  std::string out;
  for (const auto& a : argv) {
    if (!out.empty()) out += ' ';
    out += a;
  }
  return out;
}

RecordingRunner::RecordingRunner(Handler handler, std::string context_id)
    : handler_(std::move(handler)), context_id_(std::move(context_id)) {}

CommandResult RecordingRunner::run(const std::vector<std::string>& argv, const std::string& stdin_data) {
  calls_.push_back(Call{argv, stdin_data});
  if (!handler_) return CommandResult{};
  return handler_(calls_.back());
}

std::vector<std::string> RecordingRunner::lines() const {
  std::vector<std::string> out;
  out.reserve(calls_.size());
  for (const auto& c : calls_) out.push_back(c.line());
  return out;
}

}  // namespace meshcap::iptables
