#include "agent_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <nlohmann/json.hpp>

namespace meshcap::cni {

namespace {

using nlohmann::json;

constexpr size_t kMaxMessage = 8u << 20;  // a configuration with a large prevResult fits
constexpr int kAgentTimeoutMs = 120'000;  // how long an ADD waits for the agent's answer

const char* env_or(const char* name, const char* fallback) noexcept {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

AgentReply agent_failed(const std::string& why) {
  const json e = {{"cniVersion", "1.1.0"},
                  {"code", 11},
                  {"msg", "the node agent did not answer"},
                  {"details", why}};
  return {1, e.dump(-1, ' ', false, json::error_handler_t::replace) + "\n"};
}

}  // namespace

std::string client_state_root() { return env_or("MESHCAP_STATE_DIR", "/run/meshcap"); }
std::string client_pin_root() { return env_or("MESHCAP_PIN_DIR", "/sys/fs/bpf/meshcap"); }
std::string agent_socket_path(const std::string& state_root) { return state_root + "/cni.sock"; }

int connect_agent(const std::string& path) { return connect_agent(path.c_str()); }

int connect_agent(const char* path) noexcept {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  const size_t n = std::strlen(path);
  if (n >= sizeof sa.sun_path) return -1;
  std::memcpy(sa.sun_path, path, n + 1);
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  // No socket file, or nobody listening on it (an agent that stopped).
  if (connect(fd, reinterpret_cast<const sockaddr*>(&sa), sizeof sa) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

bool read_message(int fd, std::string& out, int timeout_ms) {
  char buf[16384];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    const int ready = poll(&p, 1, timeout_ms);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return false;
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0) return true;
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > kMaxMessage) return false;
  }
}

bool write_message(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = send(fd, text.data() + done, text.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

namespace {

// Sends `request`, then reads the whole answer: false with `why` when
// either fails. `fd` is closed.
bool round_trip(int fd, const json& request, json& answer, std::string& why) {
  std::string text;
  bool ok = false;
  if (!write_message(fd, request.dump(-1, ' ', false, json::error_handler_t::replace)) || shutdown(fd, SHUT_WR) != 0) {
    why = std::string("sending the request: ") + std::strerror(errno);
  } else if (!read_message(fd, text, kAgentTimeoutMs)) {
    why = "no complete answer from the agent";
  } else {
    // Parsed without exceptions (the plugin's answers never throw).
    answer = json::parse(text, nullptr, false);
    ok = !answer.is_discarded() && answer.is_object();
    if (!ok) why = "malformed answer (not a JSON object)";
  }
  ::close(fd);
  return ok;
}

}  // namespace

std::optional<AgentReply> exchange(int fd, const std::map<std::string, std::string>& env,
                                   const std::string& stdin_text, const std::string& pin_dir) {
  json j;
  std::string why;
  if (!round_trip(fd, {{"env", env}, {"stdin", stdin_text}, {"pin_dir", pin_dir}}, j, why)) return agent_failed(why);
  try {
    if (j.value("local", false)) return std::nullopt;
    return AgentReply{j.at("exit_code").get<int>(), j.at("stdout").get<std::string>()};
  } catch (const json::exception& e) {
    return agent_failed(std::string("malformed answer: ") + e.what());
  }
}

}  // namespace meshcap::cni
