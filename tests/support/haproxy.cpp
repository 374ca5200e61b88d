#include "support/haproxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

namespace meshcap::test {

namespace {

std::atomic<int> g_instance{0};

// "ip:port" or "[ip6]:port" -> (ip, port); nullopt when not of that form.
std::optional<std::pair<std::string, uint16_t>> split_host_port(const std::string& s) {
  const auto colon = s.rfind(':');
  if (colon == std::string::npos || colon + 1 >= s.size()) return std::nullopt;
  std::string host = s.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  try {
    const int port = std::stoi(s.substr(colon + 1));
    if (port <= 0 || port > 65535) return std::nullopt;
    return std::pair{host.empty() ? std::string("0.0.0.0") : host, static_cast<uint16_t>(port)};
  } catch (...) {
    return std::nullopt;
  }
}

// Every `bind ADDR:PORT` of a config.
std::vector<std::pair<std::string, uint16_t>> config_binds(const std::string& text) {
  std::vector<std::pair<std::string, uint16_t>> binds;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string kw, addr;
    if ((words >> kw >> addr) && kw == "bind") {
      if (auto hp = split_host_port(addr)) binds.push_back(*hp);
    }
  }
  return binds;
}

// Normalises an address literal for comparison ("::0" -> "::").
std::string normalise(const std::string& ip) {
  unsigned char buf[sizeof(in6_addr)];
  char out[INET6_ADDRSTRLEN];
  if (::inet_pton(AF_INET, ip.c_str(), buf) == 1) return ::inet_ntop(AF_INET, buf, out, sizeof out);
  if (::inet_pton(AF_INET6, ip.c_str(), buf) == 1) return ::inet_ntop(AF_INET6, buf, out, sizeof out);
  return ip;
}

std::string read_log(const std::string& path) {
  try {
    return read_text_file(path);
  } catch (...) {
    return "(no log)";
  }
}

}  // namespace

std::string haproxy_config_text(const HaproxyOptions& o) {
  std::ostringstream c;
  c << "global\n    maxconn " << o.maxconn << "\n";
  for (const auto& l : o.extra_global) c << "    " << l << "\n";
  c << "defaults\n"
    << "    mode tcp\n"
    << "    timeout connect " << o.timeout_connect.count() << "s\n"
    << "    timeout client " << o.timeout_client.count() << "s\n"
    << "    timeout server " << o.timeout_server.count() << "s\n";
  for (const auto& l : o.extra_defaults) c << "    " << l << "\n";
  // `server orig 0.0.0.0` without a port: connect to the connection's
  // original destination (SO_ORIGINAL_DST), keeping its port.
  c << "listen outbound\n"
    << "    bind " << o.outbound_bind << "\n"
    << "    server orig 0.0.0.0\n";
  if (!o.inbound_bind.empty()) {
    c << "listen inbound\n"
      << "    bind " << o.inbound_bind << "\n"
      << "    source " << o.inbound_source << "\n"
      << "    server orig 0.0.0.0\n";
  }
  return c.str();
}

std::string haproxy_config(const TestPod& pod, const HaproxyOptions& options) {
  const std::string path =
      pod.scratch_dir() + "/haproxy-" + std::to_string(g_instance.fetch_add(1)) + ".cfg";
  std::ofstream out(path);
  out << haproxy_config_text(options);
  out.close();
  if (!out) throw TestSupportError("write " + path, errno);
  return path;
}

bool is_listening(pid_t pid, const std::string& ip, uint16_t port) {
  const std::string want = normalise(ip);
  for (const char* table : {"tcp", "tcp6"}) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/net/" + table);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string sl, local, remote, state;
      if (!(f >> sl >> local >> remote >> state)) continue;
      if (state != "0A") continue;  // TCP_LISTEN
      const auto colon = local.find(':');
      if (colon == std::string::npos) continue;
      const std::string hex = local.substr(0, colon);
      if (static_cast<uint16_t>(std::stoul(local.substr(colon + 1), nullptr, 16)) != port) continue;
      // The kernel prints each 32-bit word of the address as a host-order
      // integer, so storing the parsed value back gives the original bytes.
      char out[INET6_ADDRSTRLEN] = {};
      if (hex.size() == 8) {
        in_addr a {};
        a.s_addr = static_cast<uint32_t>(std::stoul(hex, nullptr, 16));
        ::inet_ntop(AF_INET, &a, out, sizeof out);
      } else if (hex.size() == 32) {
        in6_addr a {};
        for (int w = 0; w < 4; ++w) {
          const uint32_t v = static_cast<uint32_t>(std::stoul(hex.substr(w * 8, 8), nullptr, 16));
          std::memcpy(a.s6_addr + 4 * w, &v, 4);
        }
        ::inet_ntop(AF_INET6, &a, out, sizeof out);
      }
      if (want == out) return true;
    }
  }
  return false;
}

HaproxyProcess start_haproxy(TestPod& pod, const std::string& cfg_path,
                             std::chrono::milliseconds timeout) {
  const auto exe = find_binary("haproxy");
  if (!exe) throw TestSupportError("start haproxy: not installed", ENOENT);
  const auto binds = config_binds(read_text_file(cfg_path));
  HaproxyProcess h;
  h.config_path = cfg_path;
  h.log_path = cfg_path.substr(0, cfg_path.rfind('.')) + ".log";
  h.pid = pod.spawn_in_pod({*exe, "-db", "-f", cfg_path}, Identity::proxy(), h.log_path);

  // Ready when every bind address listens. Not probed with a connection: a
  // connection that was not redirected has no original destination, so
  // haproxy would connect to its own listener, again and again.
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (!pod.is_running(h.pid)) {
      const auto code = pod.wait_exit(h.pid, std::chrono::milliseconds(1000));
      throw TestSupportError("haproxy exited with " + std::to_string(code.value_or(-1)) +
                                 " in pod " + pod.suffix(),
                             0, "log " + h.log_path + ":\n" + read_log(h.log_path));
    }
    bool all = true;
    for (const auto& [ip, port] : binds) all = all && is_listening(h.pid, ip, port);
    if (all) return h;
    if (std::chrono::steady_clock::now() >= deadline) {
      pod.stop(h.pid);
      throw TestSupportError("haproxy did not listen within " + std::to_string(timeout.count()) +
                                 " ms in pod " + pod.suffix(),
                             ETIMEDOUT, "log " + h.log_path + ":\n" + read_log(h.log_path));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace meshcap::test
