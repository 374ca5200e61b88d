// meshcap-cni's commands (CNI spec 1.0 and 1.1): ADD captures the pod's
// network namespace (enrolled in the node data path when one runs,
// istio's iptables rules inside the namespace otherwise -- the same planner
// as `meshcap init`), DEL removes what ADD made, CHECK reports drift,
// VERSION, STATUS (is the node data path ready), GC (captures of
// attachments the runtime no longer lists). Fail closed: ADD succeeds only
// once capture is in place.
#pragma once

#include <functional>
#include <optional>
#include <string>

namespace meshcap::cni {

/// What the plugin prints on stdout and exits with.
struct Reply {
  int exit_code = 0;
  std::string stdout_text;
};

/// Runs one invocation: the environment (`getenv`) and stdin's text.
Reply run(const std::function<std::optional<std::string>(const std::string&)>& getenv, const std::string& stdin_text);

}  // namespace meshcap::cni
