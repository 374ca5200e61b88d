// Running external commands (iptables-restore, iptables-save, ip) behind an
// interface, so dry-run, tests and real runs share one code path.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace meshcap::iptables {

class KernelTables;

/// The outcome of one command.
struct CommandResult {
  int exit_code = 0;  // the exit status; 128+N when killed by signal N; 127 when not found
  std::string out;    // stdout
  std::string err;    // stderr

  bool ok() const { return exit_code == 0; }
};

/// Runs a command and returns its exit status and output. Implementations do
/// not throw for a failing command, only when the command cannot be started
/// in the intended place (e.g. the network namespace cannot be entered).
/// The context_id() of a network namespace, by its device and inode.
std::string netns_context_id(uint64_t dev, uint64_t ino);
/// The device and inode in a context_id() of that form; nullopt otherwise.
std::optional<std::pair<uint64_t, uint64_t>> parse_netns_context_id(const std::string& id);

class CommandRunner {
 public:
  virtual ~CommandRunner() = default;

  /// Runs `argv` (argv[0] is looked up in PATH) with `stdin_data` as input.
  virtual CommandResult run(const std::vector<std::string>& argv, const std::string& stdin_data = "") = 0;

  /// A stable name of where commands run, e.g. "netns-4-4026532290" for a
  /// network namespace; used to key state kept between runs.
  virtual std::string context_id() const = 0;

  /// Reads (and removes empty nf_tables) tables in the same place commands
  /// run, without running a command; nullptr when this runner cannot, and
  /// the applier then learns everything from iptables-save.
  virtual KernelTables* kernel_tables() { return nullptr; }

  /// Whether `binary` can be run here (found in PATH or the sbin dirs).
  virtual bool has_binary(const std::string& binary) const;
};

/// The path `name` runs from (PATH, then the sbin and bin dirs); "" when none.
std::string find_binary(const std::string& name);

/// Runs commands with fork/exec, optionally inside a network namespace
/// (setns(2) in the child before exec, so the caller never changes namespace).
class ProcessRunner : public CommandRunner {
 public:
  /// Runs commands in the caller's network namespace.
  ProcessRunner();
  /// Runs commands in the network namespace at `netns_path`
  /// (/var/run/netns/NAME, /proc/PID/ns/net). Throws IptablesError if it cannot be opened.
  explicit ProcessRunner(const std::string& netns_path);
  /// Runs commands in the network namespace `netns_fd` refers to (duplicated;
  /// the caller keeps ownership of its fd).
  explicit ProcessRunner(int netns_fd);
  ~ProcessRunner() override;
  ProcessRunner(const ProcessRunner&) = delete;
  ProcessRunner& operator=(const ProcessRunner&) = delete;

  CommandResult run(const std::vector<std::string>& argv, const std::string& stdin_data = "") override;
  std::string context_id() const override;
  KernelTables* kernel_tables() override;

 private:
  int netns_fd_ = -1;
  std::string where_;  // for messages
  std::unique_ptr<KernelTables> tables_;
};

/// Records every call and answers with a scripted handler; for tests and for
/// printing what would run.
class RecordingRunner : public CommandRunner {
 public:
  struct Call {
    std::vector<std::string> argv;
    std::string stdin_data;
    /// argv joined with spaces.
    std::string line() const;
  };
  using Handler = std::function<CommandResult(const Call&)>;

  /// `handler` answers each call; without one every call succeeds with no output.
  explicit RecordingRunner(Handler handler = {}, std::string context_id = "recording");

  CommandResult run(const std::vector<std::string>& argv, const std::string& stdin_data = "") override;
  std::string context_id() const override { return context_id_; }
  KernelTables* kernel_tables() override { return tables_; }
  bool has_binary(const std::string&) const override { return true; }

  /// Lets the applier read tables from `tables` (borrowed; nullptr: none).
  void set_kernel_tables(KernelTables* tables) { tables_ = tables; }

  const std::vector<Call>& calls() const { return calls_; }
  /// Every call as one line (argv joined with spaces).
  std::vector<std::string> lines() const;
  void set_handler(Handler handler) { handler_ = std::move(handler); }

 private:
  Handler handler_;
  KernelTables* tables_ = nullptr;
  std::string context_id_;
  std::vector<Call> calls_;
};

}  // namespace meshcap::iptables
