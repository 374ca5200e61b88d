#include "rig.h"

#include <bpf/bpf.h>

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>

#include <spdlog/spdlog.h>

#include "datapath.h"
#include "istio_flags.h"
#include "istio_rules.h"
#include "support/common.h"
#include "support/haproxy.h"

namespace meshcap::bench {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string restore_binary(Capture c) { return c == Capture::legacy ? "iptables-legacy-restore" : "iptables-nft-restore"; }

}  // namespace

std::string capture_name(Capture c) {
  switch (c) {
    case Capture::none: return "none";
    case Capture::nft: return "iptables-nft";
    case Capture::legacy: return "iptables-legacy";
    case Capture::ebpf: return "ebpf";
  }
  return "?";
}

std::vector<int> CpuPlan::data_cpus() const {
  std::vector<int> v = {client, server, proxy};
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  return v;
}

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); i++) out += (i ? sep : "") + v[i];
  return out;
}

Timed run_timed(const std::vector<std::string>& argv, const std::string& input, const std::string& netns_path,
                std::chrono::milliseconds timeout) {
  Timed t;
  const auto bin = test::find_binary(argv.at(0));
  if (!bin) {
    t.output = argv[0] + ": not found";
    return t;
  }
  int in[2], out[2];
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) {
    t.output = std::string("pipe: ") + std::strerror(errno);
    return t;
  }
  int ns_fd = -1;
  if (!netns_path.empty()) {
    ns_fd = ::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (ns_fd < 0) {
      t.output = "open " + netns_path + ": " + std::strerror(errno);
      for (int fd : {in[0], in[1], out[0], out[1]}) ::close(fd);
      return t;
    }
  }
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args[0] = const_cast<char*>(bin->c_str());
  args.push_back(nullptr);
  const pid_t parent = ::getpid();
  const auto t0 = Clock::now();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    if (ns_fd >= 0 && ::setns(ns_fd, CLONE_NEWNET) != 0) ::_exit(126);
    ::dup2(in[0], 0);
    ::dup2(out[1], 1);
    ::dup2(out[1], 2);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(in[0]);
  ::close(out[1]);
  if (ns_fd >= 0) ::close(ns_fd);
  if (pid < 0) {
    ::close(in[1]);
    ::close(out[0]);
    t.output = std::string("fork: ") + std::strerror(errno);
    return t;
  }
  // Feed stdin and collect output together: neither side may fill a pipe.
  size_t written = 0;
  int in_fd = in[1];
  if (input.empty()) {
    ::close(in_fd);
    in_fd = -1;
  } else {
    ::fcntl(in_fd, F_SETFL, O_NONBLOCK);
  }
  const auto deadline = t0 + timeout;
  bool out_open = true;
  bool timed_out = false;
  while (out_open) {
    if (Clock::now() > deadline) {
      timed_out = true;
      break;
    }
    pollfd fds[2] = {{out[0], POLLIN, 0}, {in_fd, POLLOUT, 0}};
    const int n = ::poll(fds, in_fd >= 0 ? 2 : 1, 200);
    if (n < 0 && errno != EINTR) break;
    if (n <= 0) continue;
    if (fds[0].revents) {
      char buf[4096];
      const ssize_t r = ::read(out[0], buf, sizeof buf);
      if (r > 0) {
        if (t.output.size() < (1u << 20)) t.output.append(buf, static_cast<size_t>(r));
      } else if (r == 0 || errno != EINTR) {
        out_open = false;
      }
    }
    if (in_fd >= 0 && fds[1].revents) {
      const ssize_t w = ::write(in_fd, input.data() + written, input.size() - written);
      if (w > 0) written += static_cast<size_t>(w);
      if ((w < 0 && errno != EAGAIN && errno != EINTR) || written == input.size()) {
        ::close(in_fd);
        in_fd = -1;
      }
    }
  }
  if (in_fd >= 0) ::close(in_fd);
  ::close(out[0]);
  int status = 0;
  if (timed_out) {
    ::kill(pid, SIGKILL);
    t.output += "\n(killed after " + std::to_string(timeout.count()) + " ms)";
  }
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  t.seconds = since(t0);
  t.exit_code = timed_out ? -1 : test::wait_status_to_code(status);
  return t;
}

std::vector<std::string> exclusion_cidrs(size_t n) {
  static std::vector<std::string> all = [] {
    std::vector<std::string> v;
    for (int a = 1; a <= 223; a++) {
      if (a == 10 || a == 127) continue;  // the pods' 10.211.N.0/24 and loopback
      if (a == 198) continue;             // keeps extra_exclusion_cidr() out of the list
      for (int b = 0; b <= 255; b++) v.push_back(std::to_string(a) + "." + std::to_string(b) + ".0.0/16");
    }
    std::stable_sort(v.begin(), v.end(), [](const auto& x, const auto& y) { return x.size() < y.size(); });
    return v;
  }();
  if (n > all.size()) throw std::runtime_error("too many exclusions asked for");
  return {all.begin(), all.begin() + static_cast<std::ptrdiff_t>(n)};
}

std::string extra_exclusion_cidr() { return "198.51.100.0/24"; }

std::vector<std::string> capture_flags(const std::vector<std::string>& exclusions) {
  std::vector<std::string> f = {"-i", "*"};
  if (!exclusions.empty()) {
    f.push_back("-x");
    f.push_back(join(exclusions, ","));
  }
  return f;
}

std::string istio_payload(const std::vector<std::string>& exclusions) {
  static std::map<size_t, std::string> cache;  // the lists are prefixes of one sequence
  if (auto it = cache.find(exclusions.size()); it != cache.end()) return it->second;
  const EnvLookup no_env = [](const std::string&) { return std::optional<std::string>{}; };
  const CaptureConfig cfg = parse_capture_args(capture_flags(exclusions), no_env);
  std::string text = iptables::render_istio_rules(cfg, false).ipv4.text();
  cache[exclusions.size()] = text;
  return text;
}

// ---- Rig ----

Rig::Rig(std::string label, Capture capture, Sidecar sidecar, const RigOptions& options)
    : label_(std::move(label)), capture_(capture), sidecar_(sidecar), options_(options) {
  pod_ = std::make_unique<test::TestPod>();
  name_ = "mcb-" + pod_->suffix();
  start_servers();
}

Rig::~Rig() {
  if (captured_) {
    try {
      remove();
    } catch (const std::exception& e) {
      spdlog::warn("{}: removing capture: {}", label_, e.what());
    }
  }
  pod_.reset();
}

pid_t Rig::start_server(bool in_pod, std::vector<ListenSpec> listeners, int cpu) {
  const double life = options_.server_lifetime_s;
  const std::string tag = in_pod ? "LOCAL" : "PEER";
  auto fn = [listeners, cpu, life, tag](int wfd) {
    pin_to_cpu(cpu);
    return serve(listeners, wfd, life, tag);
  };
  auto [pid, fd] = in_pod ? pod_->start_in_pod_with_pipe(fn, test::Identity::proxy())
                          : pod_->start_in_peer_with_pipe(fn);
  std::string line;
  pollfd pfd{fd.get(), POLLIN, 0};
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (line.find('\n') == std::string::npos && Clock::now() < deadline) {
    if (::poll(&pfd, 1, 200) <= 0) continue;
    char buf[256];
    const ssize_t r = ::read(fd.get(), buf, sizeof buf);
    if (r <= 0) break;
    line.append(buf, static_cast<size_t>(r));
  }
  if (line.rfind("ready", 0) != 0)
    throw std::runtime_error(label_ + ": server did not start: " + (line.empty() ? "no answer" : line));
  servers_.push_back(pid);
  return pid;
}

void Rig::start_servers() {
  if (sidecar_ == Sidecar::bare) return;
  const auto& cpus = options_.cpus;
  const std::string peer = pod_->peer_ipv4();
  start_server(false, {{peer, kEchoPort, ServeMode::echo}, {peer, kSinkPort, ServeMode::sink}}, cpus.server);
  switch (sidecar_) {
    case Sidecar::bare:
      break;
    case Sidecar::none:
    case Sidecar::echo:
      // Direct pods get one too: local-direct dials it without capture.
      start_server(true, {{"127.0.0.1", kOutboundPort, ServeMode::echo}}, cpus.server);
      break;
    case Sidecar::haproxy:
    case Sidecar::explicit_proxy: {
      test::HaproxyOptions o;
      o.inbound_bind = "";                 // outbound only
      o.extra_global = {"nbthread 1"};     // one thread, on the proxy CPU
      std::string text = test::haproxy_config_text(o);
      if (sidecar_ == Sidecar::explicit_proxy) {
        text += "listen explicit_echo\n    bind 127.0.0.1:" + std::to_string(kExplicitEchoPort) +
                "\n    server up " + peer + ":" + std::to_string(kEchoPort) + "\n";
        text += "listen explicit_sink\n    bind 127.0.0.1:" + std::to_string(kExplicitSinkPort) +
                "\n    server up " + peer + ":" + std::to_string(kSinkPort) + "\n";
      }
      const std::string path = pod_->scratch_dir() + "/haproxy-bench.cfg";
      std::ofstream(path) << text;
      // haproxy inherits the CPU mask of the process that starts it.
      pin_to_cpu(cpus.proxy);
      test::HaproxyProcess hp;
      try {
        hp = test::start_haproxy(*pod_, path);
      } catch (...) {
        pin_to_cpu(cpus.controller);
        throw;
      }
      pin_to_cpu(cpus.controller);
      servers_.push_back(hp.pid);
      break;
    }
  }
}

std::vector<pid_t> Rig::server_pids() const { return servers_; }

double Rig::apply(const std::vector<std::string>& exclusions) {
  if (capture_ == Capture::none) return 0;
  const std::vector<std::string> flags = capture_flags(exclusions);
  Timed t;
  if (capture_ == Capture::ebpf || options_.meshcap_iptables) {
    std::vector<std::string> argv = {options_.meshcap_bin, "init", "--log-level", "warn", "--mode",
                                     capture_ == Capture::ebpf ? "ebpf" : "iptables", "--name", name_,
                                     "--cgroup", pod_->cgroup_path(), "--netns", pod_->pod_netns_path()};
    if (capture_ == Capture::ebpf && accelerate_) argv.push_back("--accelerate");
    if (capture_ != Capture::ebpf) {
      argv.push_back("--force-iptables-binary");
      argv.push_back(capture_ == Capture::nft ? "nft" : "legacy");
    }
    argv.insert(argv.end(), flags.begin(), flags.end());
    t = run_timed(argv);
  } else {
    // istio-init's way: iptables-restore --noflush with istio's payload. A
    // re-apply replaces the whole nat table (nothing else uses it in the pod).
    std::vector<std::string> argv = {restore_binary(capture_)};
    if (!captured_) argv.push_back("--noflush");
    if (capture_ == Capture::legacy) argv.push_back("--wait=30");
    t = run_timed(argv, istio_payload(exclusions), pod_->pod_netns_path());
  }
  if (!t.ok())
    throw std::runtime_error(label_ + ": applying " + capture_name(capture_) + " capture with " +
                             std::to_string(exclusions.size()) + " exclusions failed: " + t.output);
  captured_ = true;
  applied_ = exclusions.size();
  if (connect_only_ && capture_ == Capture::ebpf) {
    for (const auto& link : loader::pinned_state(name_).links)
      if (link.find("connect4") == std::string::npos && link.find("connect6") == std::string::npos)
        ::unlink((loader::pin_dir(name_) + "/" + link).c_str());  // the last reference: detaches
  }
  return t.seconds;
}

std::map<std::string, std::pair<uint64_t, uint64_t>> Rig::program_stats() const {
  std::map<std::string, std::pair<uint64_t, uint64_t>> out;
  if (capture_ != Capture::ebpf || !captured_) return out;
  auto add_prog = [&](uint32_t id) {
    int fd = bpf_prog_get_fd_by_id(id);
    if (fd < 0) return;
    bpf_prog_info info{};
    __u32 len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0) {
      auto& v = out[info.name];
      v.first += info.run_cnt;
      v.second += info.run_time_ns;
    }
    ::close(fd);
  };
  const std::string dir = loader::pin_dir(name_);
  for (const auto& link : loader::pinned_state(name_).links) {
    int fd = bpf_obj_get((dir + "/" + link).c_str());
    if (fd < 0) continue;
    bpf_link_info info{};
    __u32 len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0) add_prog(info.prog_id);
    ::close(fd);
  }
  // The sk_msg program hangs off the accelerated-socket map, not a link.
  int map = bpf_obj_get((dir + "/map_accel_socks").c_str());
  if (map >= 0) {
    __u32 ids[4] = {}, n = 4;
    if (bpf_prog_query(map, BPF_SK_MSG_VERDICT, 0, nullptr, ids, &n) == 0)
      for (__u32 i = 0; i < n; i++) add_prog(ids[i]);
    ::close(map);
  }
  return out;
}

double Rig::remove() {
  if (capture_ == Capture::none || !captured_) return 0;
  Timed t;
  if (capture_ == Capture::ebpf || options_.meshcap_iptables) {
    t = run_timed({options_.meshcap_bin, "cleanup", "--log-level", "warn", "--name", name_, "--netns",
                   pod_->pod_netns_path()});
  } else {
    std::vector<std::string> argv = {restore_binary(capture_)};
    if (capture_ == Capture::legacy) argv.push_back("--wait=30");
    t = run_timed(argv, "*nat\nCOMMIT\n", pod_->pod_netns_path());
  }
  captured_ = false;
  if (!t.ok()) throw std::runtime_error(label_ + ": removing capture failed: " + t.output);
  return t.seconds;
}

ClientResult Rig::run_client(ClientSpec spec) {
  const int cpu = options_.cpus.client;
  spec.cpu_pids = servers_;
  spec.cpus = options_.cpus.data_cpus();
  auto [pid, fd] = pod_->start_in_pod_with_pipe(
      [spec, cpu](int wfd) {
        pin_to_cpu(cpu);
        const ClientResult r = bench::run_client(spec);
        return write_result(wfd, r) ? 0 : 1;
      },
      test::Identity::user(1000, 1000));
  ClientResult r;
  const int limit_ms = static_cast<int>(spec.seconds * 1000) + 30000;
  if (!read_result(fd.get(), r, limit_ms)) {
    r = ClientResult{};
    r.errors = 1;
    r.first_error = "client produced no result";
  }
  if (!pod_->wait_exit(pid, std::chrono::milliseconds(10000))) pod_->stop(pid);
  return r;
}

std::string Rig::probe(const std::string& ip, uint16_t port) {
  try {
    return pod_->run_in_pod_capture([ip, port] { return bench::probe(ip, port, 2000); },
                                    test::Identity::user(1000, 1000), std::chrono::milliseconds(10000));
  } catch (const std::exception& e) {
    return std::string("error ") + e.what();
  }
}

std::vector<std::string> bench_captures() {
  std::vector<std::string> names;
  for (const auto& name : loader::pinned_pods())
    if (name.rfind("mcb-", 0) == 0) names.push_back(name);
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(kStateDir, ec)) {
    const std::string f = e.path().filename().string();
    if (f.rfind("mcb-", 0) == 0 && e.path().extension() == ".json") {
      const std::string name = e.path().stem().string();
      if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
    }
  }
  return names;
}

int remove_stale_captures(const std::string& meshcap_bin) {
  int n = 0;
  for (const auto& name : bench_captures()) {
    const Timed t = run_timed({meshcap_bin, "cleanup", "--log-level", "warn", "--name", name});
    if (!t.ok()) {
      loader::remove_pins(name);
      std::error_code ec;
      std::filesystem::remove(std::string(kStateDir) + "/" + name + ".json", ec);
    }
    n++;
  }
  return n;
}

bool meshcap_has_iptables_mode(const std::string& meshcap_bin, test::TestPod& pod) {
  const Timed t = run_timed({meshcap_bin, "init", "--log-level", "warn", "--mode", "iptables", "--dry-run", "--name",
                             "mcb-probe", "--netns", pod.pod_netns_path(), "-i", "*"});
  // The dry run prints istio's payload ("* nat" ... "COMMIT").
  return t.ok() && t.output.find("ISTIO_OUTPUT") != std::string::npos;
}

}  // namespace meshcap::bench
