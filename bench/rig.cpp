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
#include <functional>
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
std::string restore6_binary(Capture c) {
  return c == Capture::legacy ? "ip6tables-legacy-restore" : "ip6tables-nft-restore";
}

// istio-init's way: iptables-restore, then ip6tables-restore when the pod
// has a global IPv6 address (istio writes ip6tables rules for such a pod, as
// meshcap does), each with its family's input; the times added up.
Timed restore_families(Capture c, bool ipv6, bool noflush, const std::function<std::string(bool v6)>& input,
                       const std::string& netns_path) {
  Timed t;
  for (const bool v6 : {false, true}) {
    if (v6 && (!ipv6 || !t.ok())) break;
    std::vector<std::string> argv = {v6 ? restore6_binary(c) : restore_binary(c)};
    if (noflush) argv.push_back("--noflush");
    if (c == Capture::legacy) argv.push_back("--wait=30");
    const double before = t.seconds;
    t = run_timed(argv, input(v6), netns_path);
    t.seconds += before;
  }
  return t;
}

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

namespace {

// The child of run_timed: enters the namespace, wires the pipes, execs.
// vfork, as a runtime written in Go starts its plugins and iptables
// (clone with CLONE_VM|CLONE_VFORK): fork would copy this process's page
// tables first, which cost 1.4 ms at 10 MB and 6 ms at 100 MB here, added
// to every process timed (docs/benchmarks.md, "How processes are started").
// The child only makes system calls until it execs or exits.
pid_t spawn(std::vector<char*>& args, int in_fd, int out_fd, int ns_fd) {
  const pid_t parent = ::getpid();
  const pid_t pid = ::vfork();
  if (pid != 0) return pid;
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(127);
  if (ns_fd >= 0 && ::setns(ns_fd, CLONE_NEWNET) != 0) ::_exit(126);
  ::dup2(in_fd, 0);
  ::dup2(out_fd, 1);
  ::dup2(out_fd, 2);
  ::execv(args[0], args.data());
  ::_exit(127);
}

// Feeds `input` to in_fd and collects out_fd together (neither side may
// fill a pipe) until the output closes or the deadline passes; false on
// the deadline.
bool pump(int in_fd, int out_fd, const std::string& input, std::string& output, Clock::time_point deadline) {
  size_t written = 0;
  if (input.empty()) {
    ::close(in_fd);
    in_fd = -1;
  } else {
    ::fcntl(in_fd, F_SETFL, O_NONBLOCK);
  }
  bool out_open = true, in_time = true;
  while (out_open && (in_time = Clock::now() <= deadline)) {
    pollfd fds[2] = {{out_fd, POLLIN, 0}, {in_fd, POLLOUT, 0}};
    const int n = ::poll(fds, in_fd >= 0 ? 2 : 1, 200);
    if (n < 0 && errno != EINTR) break;
    if (n <= 0) continue;
    if (fds[0].revents) {
      char buf[4096];
      const ssize_t r = ::read(out_fd, buf, sizeof buf);
      if (r > 0 && output.size() < (1u << 20)) output.append(buf, static_cast<size_t>(r));
      if (r == 0 || (r < 0 && errno != EINTR)) out_open = false;
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
  return in_time;
}

}  // namespace

Timed run_timed(const std::vector<std::string>& argv, const std::string& input, const std::string& netns_path,
                std::chrono::milliseconds timeout) {
  Timed t;
  const auto bin = test::find_binary(argv.at(0));
  if (!bin) {
    t.output = argv[0] + ": not found";
    return t;
  }
  test::UniqueFd ns;
  if (!netns_path.empty() && !(ns = test::UniqueFd(::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC)))) {
    t.output = "open " + netns_path + ": " + std::strerror(errno);
    return t;
  }
  int in[2], out[2];
  if (::pipe2(in, O_CLOEXEC) != 0) return t.output = std::string("pipe: ") + std::strerror(errno), t;
  if (::pipe2(out, O_CLOEXEC) != 0) {
    for (int fd : in) ::close(fd);
    return t.output = std::string("pipe: ") + std::strerror(errno), t;
  }
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args[0] = const_cast<char*>(bin->c_str());
  args.push_back(nullptr);
  const auto t0 = Clock::now();
  const pid_t pid = spawn(args, in[0], out[1], ns.get());
  ::close(in[0]);
  ::close(out[1]);
  if (pid < 0) {
    for (int fd : {in[1], out[0]}) ::close(fd);
    return t.output = std::string("fork: ") + std::strerror(errno), t;
  }
  const bool in_time = pump(in[1], out[0], input, t.output, t0 + timeout);
  ::close(out[0]);
  if (!in_time) {
    ::kill(pid, SIGKILL);
    t.output += "\n(killed after " + std::to_string(timeout.count()) + " ms)";
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  t.seconds = since(t0);
  t.exit_code = in_time ? test::wait_status_to_code(status) : -1;
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

const std::vector<std::string>& istio_sidecar_flags() {
  static const std::vector<std::string> flags = {"-p", "15001", "-z", "15006", "-u", "1337", "-g", "1337", "-m",
                                                 "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020"};
  return flags;
}

Timed bare_restore(bool legacy, const std::string& payload, const std::string& netns_path) {
  return restore_families(
      legacy ? Capture::legacy : Capture::nft, false, true, [&](bool) { return payload; }, netns_path);
}

std::string istio_payload_for(const std::vector<std::string>& flags, bool ipv6) {
  const EnvLookup no_env = [](const std::string&) { return std::optional<std::string>{}; };
  const CaptureConfig cfg = parse_capture_args(flags, no_env);
  const auto rules = iptables::render_istio_rules(cfg, ipv6);
  return ipv6 ? rules.ipv6.text() : rules.ipv4.text();
}

std::string istio_payload(const std::vector<std::string>& exclusions) {
  static std::map<size_t, std::string> cache;  // the lists are prefixes of one sequence
  if (auto it = cache.find(exclusions.size()); it != cache.end()) return it->second;
  return cache[exclusions.size()] = istio_payload_for(capture_flags(exclusions));
}

// ---- Rig ----

Rig::Rig(std::string label, Capture capture, Sidecar sidecar, const RigOptions& options)
    : label_(std::move(label)), capture_(capture), sidecar_(sidecar), options_(options) {
  test::TestPod::Options o;
  o.cgroup_parent = options_.cgroup_parent;
  pod_ = std::make_unique<test::TestPod>(o);
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
  return apply_flags(capture_flags(exclusions), exclusions.size());
}

double Rig::apply_flags(const std::vector<std::string>& flags, size_t exclusions) {
  if (capture_ == Capture::none) return 0;
  Timed t;
  if (capture_ == Capture::ebpf || options_.meshcap_iptables) {
    std::vector<std::string> argv = {options_.meshcap_bin, "init", "--log-level", "warn", "--mode",
                                     capture_ == Capture::ebpf ? "ebpf" : "iptables", "--name", name_,
                                     "--netns", pod_->pod_netns_path()};
    if (!options_.node) argv.insert(argv.end(), {"--cgroup", pod_->cgroup_path()});
    if (capture_ == Capture::ebpf && accelerate_) argv.push_back("--accelerate");
    if (capture_ != Capture::ebpf) {
      argv.push_back("--force-iptables-binary");
      argv.push_back(capture_ == Capture::nft ? "nft" : "legacy");
    }
    argv.insert(argv.end(), flags.begin(), flags.end());
    t = run_timed(argv);
  } else {
    // istio's payloads with --noflush; a re-apply replaces the whole nat
    // table (nothing else uses it in the pod).
    t = restore_families(
        capture_, !pod_->pod_ipv6().empty(), !captured_,
        [&](bool v6) { return istio_payload_for(flags, v6); }, pod_->pod_netns_path());
  }
  if (!t.ok())
    throw std::runtime_error(label_ + ": applying " + capture_name(capture_) + " capture with " +
                             std::to_string(exclusions) + " exclusions failed: " + t.output);
  captured_ = true;
  applied_ = exclusions;
  if (connect_only_ && capture_ == Capture::ebpf) {
    for (const auto& link : loader::pinned_state(name_).links)
      if (link.find("connect4") == std::string::npos && link.find("connect6") == std::string::npos)
        ::unlink((loader::pin_dir(name_) + "/" + link).c_str());  // the last reference: detaches
  }
  return t.seconds;
}

ProgramStats program_stats(const std::string& dir) {
  ProgramStats out;
  auto add_prog = [&](uint32_t id) {
    const test::UniqueFd fd(bpf_prog_get_fd_by_id(id));
    bpf_prog_info info{};
    __u32 len = sizeof info;
    if (fd && bpf_obj_get_info_by_fd(fd.get(), &info, &len) == 0) {
      auto& v = out[info.name];
      v.first += info.run_cnt;
      v.second += info.run_time_ns;
    }
  };
  for (const auto& link : loader::pinned_links(dir))
    if (link.prog_id) add_prog(link.prog_id);
  // The sk_msg program hangs off the accelerated-socket map, not a link.
  const test::UniqueFd map(bpf_obj_get((dir + "/map_accel_socks").c_str()));
  __u32 ids[4] = {}, n = 4;
  if (map && bpf_prog_query(map.get(), BPF_SK_MSG_VERDICT, 0, nullptr, ids, &n) == 0)
    for (__u32 i = 0; i < n; i++) add_prog(ids[i]);
  return out;
}

ProgramStats Rig::program_stats() const {
  if (capture_ != Capture::ebpf || !captured_) return {};
  return bench::program_stats(options_.node ? loader::node_dir() : loader::pin_dir(name_));
}

double Rig::remove() {
  if (capture_ == Capture::none || !captured_) return 0;
  Timed t;
  if (capture_ == Capture::ebpf || options_.meshcap_iptables) {
    t = run_timed({options_.meshcap_bin, "cleanup", "--log-level", "warn", "--name", name_, "--netns",
                   pod_->pod_netns_path()});
  } else {
    t = restore_families(
        capture_, !pod_->pod_ipv6().empty(), false, [](bool) { return std::string("*nat\nCOMMIT\n"); },
        pod_->pod_netns_path());
  }
  captured_ = false;
  if (!t.ok()) throw std::runtime_error(label_ + ": removing capture failed: " + t.output);
  return t.seconds;
}

ClientResult Rig::run_client(ClientSpec spec) {
  const int cpu = options_.cpus.client;
  spec.cpu_pids = servers_;
  spec.cpus = options_.cpus.data_cpus();
  const test::Identity id = spec.cgroup.empty() ? test::Identity::user(1000, 1000) : test::Identity::root();
  auto [pid, fd] = pod_->start_in_pod_with_pipe(
      [spec, cpu](int wfd) {
        if (!spec.cgroup.empty()) test::write_text_file(spec.cgroup + "/cgroup.procs", std::to_string(::getpid()));
        pin_to_cpu(cpu);
        const ClientResult r = bench::run_client(spec);
        return write_result(wfd, r) ? 0 : 1;
      },
      id);
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

bool meshcap_has_iptables_mode(const std::string& meshcap_bin, test::TestPod& pod) {
  const Timed t = run_timed({meshcap_bin, "init", "--log-level", "warn", "--mode", "iptables", "--dry-run", "--name",
                             "mcb-probe", "--netns", pod.pod_netns_path(), "-i", "*"});
  // The dry run prints istio's payload ("* nat" ... "COMMIT").
  return t.ok() && t.output.find("ISTIO_OUTPUT") != std::string::npos;
}

}  // namespace meshcap::bench
