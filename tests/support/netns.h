// Entering a network namespace from a thread, without forking.
//
// setns(CLONE_NEWNET) changes the namespace of the calling thread only, and
// a socket keeps the namespace it was created in; so a thread can serve or
// connect inside a test namespace while the rest of the process stays where
// it is. Note that a thread does not change cgroup: sockets it creates belong
// to the process's cgroup, so cgroup BPF hooks of the pod do not see them
// (use TestPod::run_in_pod for that).
#pragma once

#include <functional>
#include <future>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

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

}  // namespace meshcap::test
