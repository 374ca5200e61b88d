#include "support/netns.h"

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <exception>

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

}  // namespace meshcap::test
