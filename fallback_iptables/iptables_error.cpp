#include "iptables_error.h"

#include <utility>

namespace meshcap::iptables {

IptablesError::IptablesError(std::string step, const std::string& message, int exit_code, int sys_errno)
    : std::runtime_error(step + ": " + message),
      step_(std::move(step)),
      detail_(message),
      exit_code_(exit_code),
      sys_errno_(sys_errno) {}

}  // namespace meshcap::iptables
