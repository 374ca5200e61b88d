#include "agent_socket.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <stdexcept>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "agent_client.h"
#include "cni_plugin.h"
#include "pins.h"
#include "pod_state.h"

namespace meshcap::cni {

namespace {

using nlohmann::json;

constexpr int kRequestTimeoutMs = 10'000;  // how long the agent waits for a request's bytes

}  // namespace

std::string agent_socket_path() { return agent_socket_path(state_root()); }

void AgentSocket::start(const std::string& socket_path, InitHandler init) {
  init_ = std::move(init);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof sa.sun_path) throw std::runtime_error("socket path too long: " + socket_path);
  std::memcpy(sa.sun_path, socket_path.c_str(), socket_path.size() + 1);
  std::filesystem::create_directories(std::filesystem::path(socket_path).parent_path());
  listener_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listener_ < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  ::unlink(socket_path.c_str());
  const mode_t old = umask(0077);
  const int rc = bind(listener_, reinterpret_cast<const sockaddr*>(&sa), sizeof sa);
  umask(old);
  if (rc != 0 || listen(listener_, 128) != 0) {
    const std::string why = std::strerror(errno);
    ::close(listener_);
    listener_ = -1;
    throw std::runtime_error("cannot listen on " + socket_path + ": " + why);
  }
  path_ = socket_path;
  stopping_ = false;
  thread_ = std::thread([this] { loop(); });
  spdlog::info("meshcap-cni requests answered on {}", path_);
}

void AgentSocket::stop() {
  if (listener_ < 0) return;
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
  ::unlink(path_.c_str());
  ::close(listener_);
  listener_ = -1;
}

void AgentSocket::loop() {
  while (!stopping_) {
    pollfd p{listener_, POLLIN, 0};
    if (poll(&p, 1, 200) <= 0) continue;
    const int client = accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) continue;
    answer(client);
    ::close(client);
  }
}

void AgentSocket::answer(int client) {
  ucred peer{};
  socklen_t len = sizeof peer;
  if (getsockopt(client, SOL_SOCKET, SO_PEERCRED, &peer, &len) != 0 || peer.uid != geteuid()) {
    spdlog::warn("meshcap-cni socket: refusing a request from uid {}", peer.uid);
    return;
  }
  std::string text;
  if (!read_message(client, text, kRequestTimeoutMs)) {
    spdlog::warn("meshcap-cni socket: incomplete request from pid {}", peer.pid);
    return;
  }
  if (is_init_request(text)) {
    const auto req = parse_init_request(text);
    if (!req) {
      spdlog::warn("meshcap-cni socket: malformed meshcap init request from pid {}", peer.pid);
      return;
    }
    if (!write_message(client, init_answer_text(answer_init(*req, peer.pid))))
      spdlog::warn("meshcap-cni socket: meshcap init (pid {}) went away before its answer", peer.pid);
    return;
  }
  if (is_cni_request(text)) {
    const auto req = parse_cni_request(text);
    if (!req) {
      spdlog::warn("meshcap-cni socket: malformed request from pid {}", peer.pid);
      return;
    }
    InitAnswer a = run_locally();  // another pin directory than the one this agent serves
    if (req->pin_dir == loader::pin_root()) {
      const Reply r = run_cni(req->env, req->stdin_text);
      a = InitAnswer{false, r.exit_code, r.stdout_text, ""};
    }
    if (!write_message(client, init_answer_text(a, kCniMagic)))
      spdlog::warn("meshcap-cni socket: the plugin (pid {}) went away before its answer", peer.pid);
    return;
  }
  json reply;
  try {
    const json req = json::parse(text);
    if (req.at("pin_dir").get<std::string>() != loader::pin_root()) {
      reply = {{"local", true}};  // another pin directory than the one this agent serves
    } else if (req.contains("init")) {  // the JSON form, from a `meshcap` older than this agent
      const InitRequest r{req.at("init").at("argv").get<std::vector<std::string>>(),
                          req.at("init").at("env").get<std::map<std::string, std::string>>(), loader::pin_root()};
      const InitAnswer a = answer_init(r, peer.pid);
      reply = a.local ? json{{"local", true}}
                      : json{{"exit_code", a.exit_code}, {"stdout", a.stdout_text}, {"stderr", a.stderr_text}};
    } else {  // the JSON form, from a meshcap-cni older than this agent
      const Reply r = run_cni(req.at("env").get<std::map<std::string, std::string>>(), req.at("stdin").get<std::string>());
      reply = {{"exit_code", r.exit_code}, {"stdout", r.stdout_text}};
    }
  } catch (const json::exception& e) {
    spdlog::warn("meshcap-cni socket: malformed request from pid {}: {}", peer.pid, e.what());
    return;
  }
  if (!write_message(client, reply.dump(-1, ' ', false, json::error_handler_t::replace)))
    spdlog::warn("meshcap-cni socket: the plugin (pid {}) went away before its answer", peer.pid);
}

Reply AgentSocket::run_cni(const std::map<std::string, std::string>& env, const std::string& stdin_text) {
  auto getenv = [&env](const std::string& name) -> std::optional<std::string> {
    const auto it = env.find(name);
    return it == env.end() ? std::nullopt : std::optional<std::string>(it->second);
  };
  const auto level = spdlog::get_level();  // a configuration's log level is for its request only
  const auto t0 = std::chrono::steady_clock::now();
  const Reply r = run(getenv, stdin_text);
  spdlog::set_level(level);
  spdlog::debug("meshcap-cni {} for {} answered in {:.2f} ms (exit {})", env.count("CNI_COMMAND") ? env.at("CNI_COMMAND") : "?",
                env.count("CNI_CONTAINERID") ? env.at("CNI_CONTAINERID") : "?",
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(), r.exit_code);
  ++served_;
  return r;
}

InitAnswer AgentSocket::answer_init(const InitRequest& request, int peer) {
  // Another pin directory than the one this agent serves: the caller's own.
  if (!init_ || request.pin_dir != loader::pin_root()) return run_locally();
  ++served_;
  return init_(request, peer);
}

}  // namespace meshcap::cni
