// Small building blocks shared by the test-pod harness: the one error type,
// an owning file descriptor, tool look-up and running a command.
#pragma once

#include <sys/types.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace meshcap::test {

/// The one error the harness throws: which step failed, with errno (0 when
/// not a syscall failure) and details such as a command's output.
class TestSupportError : public std::runtime_error {
 public:
  TestSupportError(std::string step, int err, const std::string& detail = {});
  const std::string& step() const { return step_; }
  int error() const { return err_; }

 private:
  std::string step_;
  int err_;
};

/// An owned file descriptor, closed on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }
  /// Gives up ownership.
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

/// Full path of an executable found in PATH or in /usr/sbin, /sbin,
/// /usr/bin, /bin (root tools live in sbin, which PATH may lack).
std::optional<std::string> find_binary(const std::string& name);

/// True when `name` is an executable the harness can run.
bool have_binary(const std::string& name);

struct CommandResult {
  int exit_code = -1;  ///< exit status, or 128+signal
  std::string output;  ///< stdout and stderr together
  bool ok() const { return exit_code == 0; }
};

/// Runs argv (argv[0] looked up with find_binary) with no stdin and returns
/// its exit code and output. Never throws for a non-zero exit.
CommandResult run_command(const std::vector<std::string>& argv);

/// Like run_command, but throws TestSupportError with the output on failure.
void run_command_checked(const std::vector<std::string>& argv);

/// Mount point of the cgroup v2 hierarchy, from /proc/self/mountinfo
/// (e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified in hybrid mode).
/// Throws when no cgroup2 file system is mounted.
std::string cgroup2_mount();

/// A new cgroup v2 directory <cgroup2>/<prefix>-XXXXXX (six random hex
/// digits, tried until one is free): its path and suffix. Throws
/// TestSupportError. The caller registers it for removal.
struct NewCgroup {
  std::string path;
  std::string suffix;
};
NewCgroup make_unique_cgroup(const std::string& prefix);

/// Whole contents of a file; throws TestSupportError on failure.
std::string read_text_file(const std::string& path);

/// Writes `text` to an existing file (sysctl, cgroup file) in one write;
/// throws TestSupportError on failure.
void write_text_file(const std::string& path, const std::string& text);

/// Converts a wait(2) status to an exit code: WEXITSTATUS, or 128+signal.
int wait_status_to_code(int status);

}  // namespace meshcap::test
