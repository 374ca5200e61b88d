#include "support/netns.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <exception>
#include <thread>

namespace meshcap::test {

namespace {

UniqueFd open_netns(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) throw TestSupportError("open network namespace " + path, errno);
  return fd;
}

}  // namespace

ScopedNetns::ScopedNetns(const std::string& netns_path) {
  if (netns_path.empty()) return;
  UniqueFd target = open_netns(netns_path);
  previous_ = open_netns("/proc/thread-self/ns/net");
  if (::setns(target.get(), CLONE_NEWNET) != 0) {
    const int err = errno;
    previous_.reset();
    throw TestSupportError("setns into " + netns_path, err);
  }
}

ScopedNetns::~ScopedNetns() {
  if (previous_) {
    // Cannot fail for a namespace we came from while we hold a reference;
    // if it ever did, the thread would stay in the test namespace.
    if (::setns(previous_.get(), CLONE_NEWNET) != 0) std::terminate();
  }
}

std::thread in_netns(const std::string& netns_path, std::function<void()> fn) {
  UniqueFd target;
  if (!netns_path.empty()) target = open_netns(netns_path);
  std::promise<void> entered;
  std::future<void> entered_future = entered.get_future();
  std::thread t([fd = target.release(), path = netns_path, fn = std::move(fn),
                 entered = std::move(entered)]() mutable {
    UniqueFd own(fd);
    if (own && ::setns(own.get(), CLONE_NEWNET) != 0) {
      entered.set_exception(
          std::make_exception_ptr(TestSupportError("setns into " + path, errno)));
      return;
    }
    own.reset();
    entered.set_value();
    fn();
  });
  try {
    entered_future.get();
  } catch (...) {
    t.join();
    throw;
  }
  return t;
}

UniqueFd new_netns_fd() {
  UniqueFd out;
  std::exception_ptr failed;
  std::thread maker([&] {
    // unshare() moves only this thread, which then ends.
    if (::unshare(CLONE_NEWNET) != 0) {
      failed = std::make_exception_ptr(TestSupportError("unshare(CLONE_NEWNET)", errno));
      return;
    }
    try {
      out = open_netns("/proc/thread-self/ns/net");
    } catch (...) {
      failed = std::current_exception();
    }
  });
  maker.join();
  if (failed) std::rethrow_exception(failed);
  return out;
}

std::string fd_path(const UniqueFd& fd) {
  return "/proc/" + std::to_string(::getpid()) + "/fd/" + std::to_string(fd.get());
}

uint64_t netns_inode(const UniqueFd& fd) {
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw TestSupportError("fstat of a namespace", errno);
  return static_cast<uint64_t>(st.st_ino);
}

std::optional<UniqueFd> netns_with_inode(uint64_t ino, std::vector<UniqueFd>& spares,
                                         std::chrono::milliseconds budget) {
  // The number is free once the kernel has finished removing the gone
  // namespace, a moment after its last reference went: wait for that
  // first. Every namespace also takes numbers for its /proc/net entries
  // from the same pool, so one of those may get it first: then the
  // namespaces made so far are let go (freeing it again), and the search
  // starts over.
  const auto until = std::chrono::steady_clock::now() + budget;
  while (std::chrono::steady_clock::now() < until) {
    spares.clear();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    for (int i = 0; i < 40 && std::chrono::steady_clock::now() < until; i++) {
      UniqueFd ns = new_netns_fd();
      if (netns_inode(ns) == ino) return ns;
      spares.push_back(std::move(ns));
    }
  }
  return std::nullopt;
}

ProcessInNetns::ProcessInNetns(const UniqueFd& fd) {
  int ready[2];
  if (::pipe2(ready, O_CLOEXEC) != 0) throw TestSupportError("pipe", errno);
  pid_ = ::fork();
  if (pid_ < 0) {
    const int err = errno;
    ::close(ready[0]);
    ::close(ready[1]);
    throw TestSupportError("fork", err);
  }
  if (pid_ == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    const char ok = ::setns(fd.get(), CLONE_NEWNET) == 0 ? 'y' : 'n';
    (void)!::write(ready[1], &ok, 1);
    for (;;) ::pause();
  }
  ::close(ready[1]);
  char ok = 0;
  entered_ = ::read(ready[0], &ok, 1) == 1 && ok == 'y';
  ::close(ready[0]);
}

ProcessInNetns::~ProcessInNetns() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, nullptr, 0);
}

}  // namespace meshcap::test
