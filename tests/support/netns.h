// Entering a network namespace from a thread, without forking.
//
// setns(CLONE_NEWNET) changes the namespace of the calling thread only, and
// a socket keeps the namespace it was created in; so a thread can serve or
// connect inside a test namespace while the rest of the process stays where
// it is. Note that a thread does not change cgroup: sockets it creates belong
// to the process's cgroup, so cgroup BPF hooks of the pod do not see them
// (use TestPod::run_in_pod for that).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "support/common.h"

namespace meshcap::test {

/// Moves the calling thread into the network namespace at `netns_path`
/// (e.g. /run/netns/NAME) and back to its previous one on destruction.
class ScopedNetns {
 public:
  explicit ScopedNetns(const std::string& netns_path);
  ~ScopedNetns();
  ScopedNetns(const ScopedNetns&) = delete;
  ScopedNetns& operator=(const ScopedNetns&) = delete;

 private:
  UniqueFd previous_;
};

/// Starts a thread that enters `netns_path` and then runs fn. Returns once
/// the thread is inside the namespace; throws TestSupportError (and starts
/// nothing) if it cannot enter. An empty path means "stay where you are".
/// The caller joins the thread.
std::thread in_netns(const std::string& netns_path, std::function<void()> fn);

/// Runs fn on a temporary thread inside `netns_path` and returns its result;
/// exceptions thrown by fn reach the caller.
template <class F>
auto call_in_netns(const std::string& netns_path, F&& fn) -> std::invoke_result_t<F> {
  auto task = std::async(std::launch::async, [&netns_path, &fn]() -> std::invoke_result_t<F> {
    ScopedNetns scope(netns_path);
    return std::forward<F>(fn)();
  });
  return task.get();
}

/// A new network namespace (loopback only, down), made on a thread of its
/// own and held only by the returned descriptor: the kernel removes it when
/// the descriptor closes, however the process ends. Throws TestSupportError.
UniqueFd new_netns_fd();
/// "/proc/PID/fd/N": a path that opens `fd` for other processes.
std::string fd_path(const UniqueFd& fd);
/// The inode number of the namespace `fd` holds.
uint64_t netns_inode(const UniqueFd& fd);
/// A namespace given the inode number `ino` of one that is gone: the kernel
/// hands a new namespace the lowest free number, the gone one's a moment
/// after its last reference went. Namespaces are made until one has it, in
/// rounds of 40, for at most `budget`; `spares` holds those of a round
/// while it lasts (so none of their numbers is handed out again meanwhile). nullopt
/// when none got it (another namespace or process took it, or this kernel
/// does not reuse numbers).
std::optional<UniqueFd> netns_with_inode(uint64_t ino, std::vector<UniqueFd>& spares,
                                         std::chrono::milliseconds budget = std::chrono::seconds(5));

/// A child process that waits in the namespace `fd` holds (so /proc/PID/ns/net
/// names it for other processes) until destroyed, or until the test process
/// ends (it dies with its parent).
class ProcessInNetns {
 public:
  explicit ProcessInNetns(const UniqueFd& fd);
  ~ProcessInNetns();
  ProcessInNetns(const ProcessInNetns&) = delete;
  ProcessInNetns& operator=(const ProcessInNetns&) = delete;

  pid_t pid() const { return pid_; }
  /// Whether it got into the namespace.
  bool entered() const { return entered_; }
  /// "/proc/PID/ns/net".
  std::string ns_path() const { return "/proc/" + std::to_string(pid_) + "/ns/net"; }

 private:
  pid_t pid_ = -1;
  bool entered_ = false;
};

}  // namespace meshcap::test
