// Internal: the last line of defence that removes what the harness created
// when the normal destructors cannot run (fatal signal, exit() from inside a
// test). Every namespace, cgroup, directory and child process is registered
// here the moment it exists; handlers for the fatal signals (SIGINT,
// SIGTERM, SIGHUP, SIGQUIT, SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL,
// SIGPIPE, SIGALRM, SIGUSR1/2, SIGXCPU, SIGXFSZ, SIGSYS) and an atexit hook
// remove them, then the signal is re-raised with its previous disposition.
//
// Everything reachable from a signal handler here is async-signal-safe:
// plain syscalls on fixed buffers, no allocation, no locks.
//
// Resources are owned by the process that registered them: a forked child
// (run_in_pod, gtest death tests) never removes its parent's resources.
// SIGKILL cannot be handled; TestPod::reap_stale() covers that case.
#pragma once

#include <sys/types.h>

#include <string>

namespace meshcap::test::detail {

enum class Resource : int {
  process = 1,    ///< pid (+ pidfd) killed with SIGKILL, with its process group
  cgroup = 2,     ///< cgroup v2 directory: members killed, then removed
  netns = 3,      ///< /run/netns/NAME: unmounted and unlinked
  directory = 4,  ///< scratch directory removed recursively
  lockfile = 5,   ///< removed last, only if its group's resources all went
};

/// Installs the signal handlers and the atexit hook (once per process).
/// Signals whose disposition is SIG_IGN are left ignored.
void install_cleanup_handlers();

/// A new group id: resources of one TestPod share a group.
int new_group();

/// Records a resource for emergency removal; returns a handle, or -1 when
/// the table is full (logged; the normal path still removes it).
int register_resource(Resource kind, int group, const std::string& path, pid_t pid = 0,
                      int pidfd = -1) noexcept;

/// Forgets a resource (the normal path removed it). -1 is ignored.
void unregister_resource(int handle) noexcept;

/// Removes everything this process registered. Async-signal-safe.
void emergency_cleanup() noexcept;

/// First thing in a forked child: default dispositions for the handled
/// signals and an empty signal mask. Async-signal-safe.
void reset_signals_in_child() noexcept;

/// Blocks the handled signals in the calling thread until release() or
/// destruction: covers the gap between creating a resource (fork, spawn)
/// and registering it.
class SignalBlock {
 public:
  SignalBlock();
  ~SignalBlock() { release(); }
  SignalBlock(const SignalBlock&) = delete;
  SignalBlock& operator=(const SignalBlock&) = delete;
  void release();

 private:
  bool active_ = false;
  unsigned long long old_[16] = {};  // a sigset_t, kept opaque here
};

// Removal primitives, async-signal-safe, shared with the normal path.

/// SIGKILLs pid (through pidfd when >= 0) and its process group, then reaps
/// it, waiting at most timeout_ms. True when it is gone.
bool kill_and_reap(pid_t pid, int pidfd, int timeout_ms) noexcept;

/// Kills every process in the cgroup (cgroup.kill, else cgroup.procs) and
/// removes it and any child cgroups; true when the directory is gone.
bool kill_cgroup_and_remove(const char* cgroup_dir, int timeout_ms) noexcept;

/// Unmounts and unlinks a /run/netns/NAME entry, like `ip netns del`.
bool remove_netns_name(const char* netns_path) noexcept;

/// Removes a directory tree (files and sub-directories, a few levels deep).
bool remove_tree(const char* path) noexcept;

}  // namespace meshcap::test::detail
