#include "forward.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "capture_config.h"
#include "host.h"
#include "target.h"

namespace meshcap {

namespace {

// The records of a forwarded init, on the thread that answers it.
struct Capture {
  std::string* text;
  spdlog::level::level_enum level;
  spdlog::pattern_formatter formatter{"%l %v"};
};
thread_local Capture* t_capture = nullptr;

// stderr, but a forwarded init's records go to its answer. The logger's
// level filters as before (a request may lower it while it runs: its
// records are then filtered here by the request's own level).
class RoutedSink final : public spdlog::sinks::sink {
 public:
  RoutedSink() : stderr_(std::make_shared<spdlog::sinks::stderr_color_sink_mt>()) {}
  void log(const spdlog::details::log_msg& msg) override {
    if (Capture* c = t_capture) {
      if (msg.level < c->level) return;
      spdlog::memory_buf_t buf;
      c->formatter.format(msg, buf);
      c->text->append(buf.data(), buf.size());
    } else {
      stderr_->log(msg);
    }
  }
  void flush() override { stderr_->flush(); }
  void set_pattern(const std::string& pattern) override { stderr_->set_pattern(pattern); }
  void set_formatter(std::unique_ptr<spdlog::formatter> f) override { stderr_->set_formatter(std::move(f)); }

 private:
  std::shared_ptr<spdlog::sinks::sink> stderr_;
};

// Whether the process `proc` (/proc/PID) is in this process's mount
// namespace, which does not change while the agent runs.
bool in_own_mount_namespace(const std::string& proc) {
  static const struct stat own = [] {
    struct stat st {};
    stat("/proc/self/ns/mnt", &st);
    return st;
  }();
  struct stat theirs {};
  return own.st_ino != 0 && stat((proc + "/ns/mnt").c_str(), &theirs) == 0 && theirs.st_dev == own.st_dev &&
         theirs.st_ino == own.st_ino;
}

// Why the command must run in the caller's process, or "" when the agent
// can answer it. `p.options.node`: the node as read for this request.
std::string why_local(const std::vector<std::string>& args, const std::map<std::string, std::string>& env,
                      const ParsedInit& p, const std::string& proc) {
  const InitOptions& o = p.options;
  for (const auto& a : args)
    if (!a.empty() && (a[0] == '@' || a.find("=@") != std::string::npos)) return "a list read from a file or stdin";
  for (const auto& [name, value] : env)
    if (!value.empty() && value[0] == '@') return name + " names a file";
  if (o.dry_run || o.istio.dry_run) return "--dry-run";
  if (o.istio.run_validation) return "--run-validation";
  const std::string netns =
      o.istio.network_namespace && !o.istio.network_namespace->empty() ? *o.istio.network_namespace : o.netns;
  if (netns.empty()) return "no --netns (the caller's own namespace)";
  if (netns.find('/') != std::string::npos && netns[0] != '/') return "a relative --netns";
  if (netns.rfind("/proc/self/", 0) == 0 || netns.rfind("/proc/thread-self/", 0) == 0)
    return "--netns names the caller's own namespace";
  if (!o.cgroup.empty() && o.cgroup[0] != '/') return "a relative --cgroup";
  if (o.cgroup.empty() && !(o.node && o.node->record))
    return "no node data path (a pod's own programs go on the caller's cgroup)";
  // As init resolves it (a bad one throws: the caller then prints the error).
  NetnsId pod;
  resolve_netns(netns, &pod);
  struct stat caller {};
  if (stat((proc + "/ns/net").c_str(), &caller) == 0 && pod.dev == static_cast<uint64_t>(caller.st_dev) &&
      pod.ino == static_cast<uint64_t>(caller.st_ino))
    return "the caller is in the pod's namespace";
  if (spdlog::level::from_str(p.log_level) == spdlog::level::off && p.log_level != "off") return "--log-level";
  return "";
}

}  // namespace

std::shared_ptr<spdlog::sinks::sink> stderr_sink() { return std::make_shared<RoutedSink>(); }

cni::InitAnswer answer_init(const cni::InitRequest& request, pid_t peer, const InitParser& parse) {
  const std::string proc = "/proc/" + std::to_string(peer);
  auto local = [peer](const std::string& why) {
    spdlog::debug("meshcap init of pid {} runs in its own process: {}", peer, why);
    return cni::run_locally();
  };
  try {
    if (!in_own_mount_namespace(proc)) return local("another mount namespace");
    const auto& args = request.argv;
    const auto& env = request.env;
    if (env.count("MESHCAP_NO_AGENT") || env.count("MESHCAP_FAULT_AT")) return local("asked to");
    auto parsed = parse(args);
    if (!parsed) return local("the command line does not parse");
    parsed->options.node = NodeView::read();  // once for the request: to decide here, and to plan
    if (const std::string why = why_local(args, env, *parsed, proc); !why.empty()) return local(why);
    InitOptions& o = parsed->options;
    o.env = [&env](const std::string& name) -> std::optional<std::string> {
      const auto it = env.find(name);
      return it == env.end() ? std::nullopt : std::optional<std::string>(it->second);
    };
    std::string text;
    Capture capture{&text, spdlog::level::from_str(parsed->log_level)};
    const auto base = spdlog::default_logger()->level();
    const auto t0 = std::chrono::steady_clock::now();
    int rc = kExitRuntime;
    t_capture = &capture;
    spdlog::set_level(std::min(base, capture.level));
    try {
      rc = run_init(o);
    } catch (const UsageError& e) {
      spdlog::error("{}", e.what());
      rc = kExitUsage;
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
      rc = kExitRuntime;
    } catch (...) {
      spdlog::error("meshcap init failed");
      rc = kExitRuntime;
    }
    spdlog::set_level(base);
    t_capture = nullptr;
    spdlog::info("meshcap init of pid {} answered: exit {}, {:.2f} ms", peer, rc,
                 std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    return cni::InitAnswer{false, rc, "", text};
  } catch (const std::exception& e) {
    t_capture = nullptr;
    return local(e.what());
  }
}

}  // namespace meshcap
