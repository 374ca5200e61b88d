// meshcap node serve: what the DaemonSet runs on each node. Starts the node
// data path (or replaces a running one's programs in place), keeps
// meshcap-cni in the node's CNI configuration, serves Prometheus metrics
// and a health check, and on SIGTERM leaves everything in place: pods stay
// captured while the agent itself is replaced.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <sstream>

#include <spdlog/spdlog.h>

#include "commands.h"
#include "cni_config.h"
#include "cni_conflist.h"
#include "host.h"

namespace fs = std::filesystem;

namespace meshcap {

namespace {

volatile std::sig_atomic_t stop_requested = 0;
std::string iptables_only;  // why the node data path is not running, when it is not
void on_signal(int) { stop_requested = 1; }

// What `fn` prints on stdout, as a string.
template <typename F>
std::string captured(F fn) {
  std::ostringstream out;
  auto* old = std::cout.rdbuf(out.rdbuf());
  try {
    fn();
  } catch (...) {
    std::cout.rdbuf(old);
    throw;
  }
  std::cout.rdbuf(old);
  return out.str();
}

// HOST:PORT -> a listening socket (IPv4).
int listen_on(const std::string& spec, uint16_t* bound) {
  const auto colon = spec.rfind(':');
  if (colon == std::string::npos) throw UsageError("--metrics-listen: invalid value '" + spec + "': expected HOST:PORT");
  const std::string host = spec.substr(0, colon), port_s = spec.substr(colon + 1);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  if (inet_pton(AF_INET, host.empty() ? "0.0.0.0" : host.c_str(), &sa.sin_addr) != 1)
    throw UsageError("--metrics-listen: invalid value '" + spec + "': not an IPv4 address");
  if (port_s.empty() || port_s.size() > 5 || port_s.find_first_not_of("0123456789") != std::string::npos ||
      std::stoul(port_s) > 65535)
    throw UsageError("--metrics-listen: invalid value '" + spec + "': not a port");
  sa.sin_port = htons(static_cast<uint16_t>(std::stoul(port_s)));
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(s, reinterpret_cast<sockaddr*>(&sa), sizeof sa) || listen(s, 16))
    throw std::runtime_error("--metrics-listen " + spec + ": " + std::strerror(errno));
  socklen_t len = sizeof sa;
  getsockname(s, reinterpret_cast<sockaddr*>(&sa), &len);
  *bound = ntohs(sa.sin_port);
  return s;
}

std::string http_reply(int code, const std::string& body) {
  const char* reason = code == 200 ? "OK" : code == 404 ? "Not Found" : "Service Unavailable";
  return "HTTP/1.0 " + std::to_string(code) + " " + reason + "\r\nContent-Type: text/plain; version=0.0.4\r\n" +
         "Content-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
}

// One request: GET /metrics (node and pods) or GET /healthz.
void serve_one(int client) {
  char buf[2048];
  ssize_t n = recv(client, buf, sizeof buf - 1, 0);
  const std::string req = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  std::string reply;
  if (req.rfind("GET /metrics", 0) == 0) {
    StatusOptions prom;
    prom.prometheus = true;
    reply = http_reply(200, captured([&] { run_node_status(prom); }) + captured([&] { run_status(prom); }));
  } else if (req.rfind("GET /healthz", 0) == 0) {
    if (!iptables_only.empty()) {
      reply = http_reply(200, "ok: iptables only (" + iptables_only + ")\n");
    } else {
      const bool ready = NodeRecord::read().has_value() && !node_not_ready();
      reply = http_reply(ready ? 200 : 503, ready ? "ok\n" : "node data path not whole\n");
    }
  } else {
    reply = http_reply(404, "GET /metrics or /healthz\n");
  }
  (void)!send(client, reply.data(), reply.size(), MSG_NOSIGNAL);
}

// The meshcap-cni binary shipped with this meshcap.
std::string cni_binary(const std::string& given) {
  if (!given.empty()) return given;
  const fs::path self = fs::read_symlink("/proc/self/exe").parent_path();
  for (const auto& p : {self / "meshcap-cni", self / "../cni/meshcap-cni", self / "../lib/cni/meshcap-cni"})
    if (fs::exists(p)) return fs::weakly_canonical(p).string();
  throw UsageError("--cni-binary: not given and no meshcap-cni next to meshcap");
}

}  // namespace

int run_node_serve(const NodeServeOptions& o) {
  if (o.cni_conf_dir.empty() != o.cni_bin_dir.empty())
    throw UsageError("--cni-conf-dir and --cni-bin-dir go together");
  cni::InstallOptions cni;
  if (!o.cni_conf_dir.empty()) {
    for (const auto& [flag, dir] : {std::pair{"--cni-conf-dir", o.cni_conf_dir}, {"--cni-bin-dir", o.cni_bin_dir}})
      if (!fs::is_directory(dir)) throw UsageError(std::string(flag) + ": invalid value '" + dir + "': not a directory");
    cni.conf_dir = o.cni_conf_dir;
    cni.bin_dir = o.cni_bin_dir;
    cni.source_binary = cni_binary(o.cni_binary);
    if (!o.cni_plugin_config.empty()) cni.settings = cni::read_plugin_settings(o.cni_plugin_config, "--cni-plugin-config");
  }
  uint16_t port = 0;
  const int listener = o.metrics_listen.empty() ? -1 : listen_on(o.metrics_listen, &port);
  try {
    if (int rc = run_node_start(o.start); rc != kExitOk) return rc;
  } catch (const UsageError&) {
    throw;
  } catch (const std::exception& e) {
    // A node whose kernel or privileges cannot hold the data path still
    // captures its pods: meshcap-cni applies iptables in each pod's
    // namespace when no node data path is running.
    iptables_only = e.what();
    spdlog::warn("node data path not started ({}); pods are captured by iptables through meshcap-cni", e.what());
  }
  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);
  if (o.on_serving) o.on_serving();
  if (listener >= 0) std::cout << "metrics on " << o.metrics_listen.substr(0, o.metrics_listen.rfind(':')) << ":" << port
                               << std::endl;
  std::string last_error;  // said once, not every second
  while (!stop_requested) {
    forget_changed_node();  // a node stopped or started elsewhere: its old maps are not kept alive here
    if (!cni.conf_dir.empty()) {
      try {
        if (auto f = cni::install_plugin(cni); !f.empty()) spdlog::info("meshcap-cni (re)added to {}", f);
        last_error.clear();
      } catch (const std::exception& e) {
        if (last_error != e.what()) spdlog::warn("{} (retrying every second)", e.what());
        last_error = e.what();
      }
    }
    pollfd p{listener, POLLIN, 0};
    if (listener >= 0 && poll(&p, 1, 1000) > 0) {
      int client = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
      if (client >= 0) {
        serve_one(client);
        close(client);
      }
    } else if (listener < 0) {
      sleep(1);
    }
  }
  spdlog::info("stopping: the node data path and the CNI configuration stay in place");
  return kExitOk;
}

}  // namespace meshcap
