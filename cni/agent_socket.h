// The agent's side of meshcap-cni's socket (the protocol is in
// agent_client.h): `meshcap node serve` answers the plugin's requests in its
// own process, one at a time, with the same `run` the plugin uses when no
// agent listens.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <thread>

#include "cni_plugin.h"
#include "init_handover.h"

namespace meshcap::cni {

/// `<state directory>/cni.sock`, for this process's state directory.
std::string agent_socket_path();

/// Answers a forwarded `meshcap init` from process `peer`, or tells it to
/// run the command itself (agent/forward.h).
using InitHandler = std::function<InitAnswer(const InitRequest& request, int peer)>;

class AgentSocket {
 public:
  AgentSocket() = default;
  AgentSocket(const AgentSocket&) = delete;
  AgentSocket& operator=(const AgentSocket&) = delete;
  ~AgentSocket() { stop(); }

  /// Binds `socket_path` (root's alone; a stale socket file of an agent that
  /// was killed is replaced) and starts answering, `meshcap init` requests
  /// with `init` (without it the caller runs them); throws when it cannot.
  void start(const std::string& socket_path, InitHandler init = {});
  /// Stops answering and removes the socket file: plugins that come later
  /// run their commands themselves.
  void stop();
  /// Requests answered so far.
  uint64_t served() const { return served_; }

 private:
  void loop();
  void answer(int client);
  InitAnswer answer_init(const InitRequest& request, int peer);
  /// One CNI command, as cni_plugin.h's `run` runs it, in this process.
  Reply run_cni(const std::map<std::string, std::string>& env, const std::string& stdin_text);

  std::string path_;
  InitHandler init_;
  int listener_ = -1;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> served_{0};
  std::thread thread_;
};

}  // namespace meshcap::cni
