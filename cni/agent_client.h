// The client side of meshcap-cni's agent socket in its JSON form, and the
// names both ends share.
//
// `meshcap node serve` listens on `<state directory>/cni.sock` and runs the
// plugin's commands in its own process, where the node data path's maps
// are open already (cni/agent_socket.h); istio-cni's plugin talks to its
// node agent the same way. One request per connection. The plugin sends
// its command in a form with no parser on its side (init_handover.h, from
// its entry point, before its C library starts). The JSON form here is
// what a meshcap-cni older than the agent sends, and the agent still
// answers it: the client sends {"env": {CNI_COMMAND, ...}, "stdin": "...",
// "pin_dir": "..."} and shuts its side down; the agent answers
// {"exit_code": N, "stdout": "..."}, or {"local": true} when it serves
// another pin directory (the plugin then runs the command itself), and
// closes. `meshcap init` uses the same socket in a form of its own
// (init_handover.h).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace meshcap::cni {

/// What a plugin run prints on stdout and exits with.
struct AgentReply {
  int exit_code = 0;
  std::string stdout_text;
};

/// MESHCAP_STATE_DIR or /run/meshcap, read as the agent reads it
/// (agent/pod_state.h state_root; a unit test holds the two together).
std::string client_state_root();
/// MESHCAP_PIN_DIR or /sys/fs/bpf/meshcap (loader/pins.h pin_root).
std::string client_pin_root();
/// `<state directory>/cni.sock`.
std::string agent_socket_path(const std::string& state_root);

/// A connected socket to the agent, or -1 when none listens at `path`.
int connect_agent(const std::string& path);
int connect_agent(const char* path) noexcept;

/// One request over `fd` (closed here). nullopt when the agent asks the
/// plugin to run the command itself. An agent that accepted and then did
/// not answer gives a CNI error (code 11, try again later), never a local
/// re-run of a command the agent may have half done.
std::optional<AgentReply> exchange(int fd, const std::map<std::string, std::string>& env,
                                   const std::string& stdin_text, const std::string& pin_dir);

/// Reads until the peer shuts its side down; false on error, after
/// `timeout_ms` without data, or past the size limit.
bool read_message(int fd, std::string& out, int timeout_ms);
/// Writes all of `text`; false when the peer went away.
bool write_message(int fd, const std::string& text);

}  // namespace meshcap::cni
