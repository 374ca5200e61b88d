// Keeping a run to itself and stoppable: its own meshcap pin and state
// directories, a stop flag checked between jobs, and the check that
// nothing was left behind.
#pragma once

#include <sys/types.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace meshcap::bench {

/// Thrown by check_stop() after the first SIGINT, SIGTERM or SIGHUP: the
/// run unwinds and removes its pods normally. A second signal falls back to
/// the harness's emergency removal.
struct Interrupted : std::runtime_error {
  Interrupted() : std::runtime_error("interrupted") {}
};
void install_stop_handlers();
void check_stop();

/// The meshcap directories of this run: MESHCAP_PIN_DIR and
/// MESHCAP_STATE_DIR are set in this process (every meshcap it starts, and
/// the loader calls it makes, inherit them), so the benchmark's captures
/// never meet the machine's or another run's, and a node data path running
/// elsewhere never takes its pods. Removed by the destructor, on fatal
/// signals (the harness's registry) and, for runs that were SIGKILLed, by
/// the next run.
class RunDirs {
 public:
  RunDirs();
  ~RunDirs();
  RunDirs(const RunDirs&) = delete;
  RunDirs& operator=(const RunDirs&) = delete;
  const std::string& pins() const { return pins_; }
  const std::string& state() const { return state_; }
  /// Captures meshcap still knows in these directories (pins or records).
  std::vector<std::string> captures() const;

 private:
  std::string pins_, state_;
  int slots_[2] = {-1, -1};
};

/// Points MESHCAP_PIN_DIR and MESHCAP_STATE_DIR at other directories (a
/// test node's) for the scope.
class ScopedMeshcapDirs {
 public:
  ScopedMeshcapDirs(const std::string& pins, const std::string& state);
  ~ScopedMeshcapDirs();
  ScopedMeshcapDirs(const ScopedMeshcapDirs&) = delete;
  ScopedMeshcapDirs& operator=(const ScopedMeshcapDirs&) = delete;

 private:
  std::string pins_, state_;
};

/// What the run left behind: namespaces of its pods (by suffix), live
/// server processes, captures in its directories.
std::vector<std::string> leftovers(const std::vector<std::string>& pod_suffixes, const std::vector<pid_t>& pids,
                                   const RunDirs& dirs);

}  // namespace meshcap::bench
