// The one error type of the iptables fallback: which step failed, and why.
#pragma once

#include <stdexcept>
#include <string>

namespace meshcap::iptables {

/// A failed step of detecting, applying or removing iptables capture
/// ("detect-backend ipv4", "restore ipv6 iptables-nft", "route ipv4", ...).
/// `exit_code` is the failing command's exit status (or -1 when no command
/// ran); `sys_errno` is the errno of a failed system call (or 0).
class IptablesError : public std::runtime_error {
 public:
  IptablesError(std::string step, const std::string& message, int exit_code = -1, int sys_errno = 0);

  const std::string& step() const { return step_; }
  /// The message without the "step: " prefix what() carries.
  const std::string& detail() const { return detail_; }
  int exit_code() const { return exit_code_; }
  int sys_errno() const { return sys_errno_; }

 private:
  std::string step_;
  std::string detail_;
  int exit_code_;
  int sys_errno_;
};

}  // namespace meshcap::iptables
