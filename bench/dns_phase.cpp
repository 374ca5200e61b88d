// DNS capture (issue 18, istio's --redirect-dns) on fresh pods. Three
// parts:
//  - a DNS query's round trip through the proxy's DNS listener, per
//    capture (eBPF, iptables-nft, iptables-legacy), with an A/A pair (the
//    eBPF pod twice per round), rounds interleaved and shuffled. The
//    resolver is a dnsmasq in the peer namespace; the proxy's listener a
//    dnsmasq in the pod as UID/GID 1337 on 127.0.0.1,::1:15053 forwarding
//    to it, answering repeated queries from its cache (the same in every
//    mode, so the capture path is what differs). The client is the app:
//    UID 1000 in the pod's cgroup, one unconnected UDP socket, sendto the
//    resolver's port 53 and recvfrom, the reply's source and ID checked.
//  - connection setup of other (TCP) traffic on the eBPF data path with
//    DNS capture on (--redirect-dns --capture-all-dns) and off, and off
//    twice as the A/A pair: the node phase's workload (connect + 16 B
//    request/response + close to the in-pod echo server on 15001).
//  - the UDP reply mapping's state (dns_reverse, an LRU) after many queries
//    from many sockets: entries, max_entries and the map's memlock.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <spdlog/spdlog.h>

#include "datapath.h"
#include "phases.h"
#include "pins.h"
#include "run_control.h"

namespace meshcap::bench {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

constexpr uint16_t kDnsPort = 53;
constexpr uint16_t kDnsListenerPort = 15053;  // istio's DNS proxy port
constexpr const char* kName = "bench.test";
constexpr uint8_t kAnswer[4] = {10, 9, 9, 9};
constexpr uint64_t kWarmup = 20;        // queries before sampling starts
constexpr uint64_t kStatePerSocket = 10;  // state part: a new socket every this many queries

// Variant names (cells of phase "dns").
const char* const kRtt = "dns-rtt";
const char* const kEbpf = "dns-ebpf";
const char* const kEbpfAa = "dns-ebpf-aa";
const char* const kNft = "dns-iptables-nft";
const char* const kLegacy = "dns-iptables-legacy";
const char* const kOn = "dns-capture-on";
const char* const kOff = "dns-capture-off";
const char* const kOffAa = "dns-capture-off-aa";

/// istio-init's arguments (the sidecar injector's defaults).
const std::vector<std::string> kIstioFlags = {"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
                                              "-i", "*",     "-b", "*",     "-d", "15090,15021,15020"};

std::vector<std::string> with(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// ---- the client (runs in a child in the pod) ----

struct DnsClientSpec {
  std::string ip;             ///< the resolver the app addresses (IPv4)
  uint16_t port = kDnsPort;
  uint64_t count = 0;         ///< timed queries
  uint64_t warmup = kWarmup;  ///< untimed queries first
  uint64_t per_socket = 0;    ///< a new socket every this many queries (0: one socket for all)
  bool keep_samples = true;
  int timeout_ms = 2000;      ///< per reply
  double seconds = 60;        ///< bound on the whole run
};

// A query for kName, type A, class IN, recursion desired, no EDNS.
std::vector<uint8_t> dns_query(uint16_t id) {
  std::vector<uint8_t> q = {static_cast<uint8_t>(id >> 8), static_cast<uint8_t>(id), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
  std::istringstream labels(kName);
  for (std::string l; std::getline(labels, l, '.');) {
    q.push_back(static_cast<uint8_t>(l.size()));
    q.insert(q.end(), l.begin(), l.end());
  }
  q.insert(q.end(), {0, 0, 1, 0, 1});
  return q;
}

std::string addr_text(const sockaddr_in& a) {
  char ip[INET_ADDRSTRLEN] = "?";
  ::inet_ntop(AF_INET, &a.sin_addr, ip, sizeof ip);
  return std::string(ip) + ":" + std::to_string(ntohs(a.sin_port));
}

// Waits for the reply to query `id` on fd: "" when it came from `to` and
// answers kName with kAnswer, else what was wrong. Late replies to earlier
// queries (after a timeout) are skipped.
std::string await_reply(int fd, uint16_t id, const sockaddr_in& to) {
  uint8_t buf[512];
  for (int stale = 0; stale < 64; stale++) {
    sockaddr_in from{};
    socklen_t len = sizeof from;
    const ssize_t n = ::recvfrom(fd, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &len);
    if (n < 0)
      return errno == EAGAIN || errno == EWOULDBLOCK ? "no reply in time" : std::string("recvfrom: ") + std::strerror(errno);
    if (from.sin_family != AF_INET || from.sin_addr.s_addr != to.sin_addr.s_addr || from.sin_port != to.sin_port)
      return "reply from " + addr_text(from) + ", not from the resolver " + addr_text(to);
    if (n < 12) return "short reply";
    const uint16_t got = static_cast<uint16_t>(buf[0] << 8 | buf[1]);
    if (got != id) continue;
    if (!(buf[2] & 0x80) || (buf[3] & 0x0f) != 0) return "reply rcode " + std::to_string(buf[3] & 0x0f);
    if ((buf[6] << 8 | buf[7]) < 1 || n < 16 || std::memcmp(buf + n - 4, kAnswer, 4) != 0) return "reply without the answer";
    return "";
  }
  return "only replies to other queries";
}

ClientResult run_dns_client(const DnsClientSpec& s) {
  ClientResult r;
  auto fail = [&r](const std::string& what) {
    r.errors++;
    if (r.first_error.empty()) r.first_error = what;
  };
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(s.port);
  if (::inet_pton(AF_INET, s.ip.c_str(), &to.sin_addr) != 1) {
    fail("bad address " + s.ip);
    return r;
  }
  const auto deadline = Clock::now() + std::chrono::duration<double>(s.seconds);
  if (s.keep_samples) r.samples_ns.reserve(s.count);
  int fd = -1;
  uint64_t on_socket = 0;
  Clock::time_point t_start = Clock::now();
  for (uint64_t i = 0; i < s.warmup + s.count && Clock::now() < deadline; i++) {
    if (i == s.warmup) t_start = Clock::now();
    if (fd < 0 || (s.per_socket && on_socket == s.per_socket)) {
      if (fd >= 0) ::close(fd);
      fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      if (fd < 0) {
        fail(std::string("socket: ") + std::strerror(errno));
        break;
      }
      timeval tv{s.timeout_ms / 1000, (s.timeout_ms % 1000) * 1000};
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      on_socket = 0;
    }
    on_socket++;
    const uint16_t id = static_cast<uint16_t>(i + 1);
    const std::vector<uint8_t> q = dns_query(id);
    const auto t0 = Clock::now();
    if (::sendto(fd, q.data(), q.size(), 0, reinterpret_cast<const sockaddr*>(&to), sizeof to) !=
        static_cast<ssize_t>(q.size())) {
      fail(std::string("sendto: ") + std::strerror(errno));
      continue;
    }
    const std::string bad = await_reply(fd, id, to);
    const auto t1 = Clock::now();
    if (!bad.empty()) {
      fail(bad);
      continue;
    }
    if (i >= s.warmup && s.keep_samples)
      r.samples_ns.push_back(static_cast<uint32_t>(
          std::min<int64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count(), UINT32_MAX)));
  }
  if (fd >= 0) ::close(fd);
  r.elapsed_ns = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t_start).count());
  return r;
}

// ---- a pod with the two resolvers ----

// A fresh pod: the upstream dnsmasq in the peer, the proxy's dnsmasq in
// the pod, and the capture (applied by apply()).
struct DnsPod {
  std::unique_ptr<Rig> rig;
  pid_t upstream = -1, proxy = -1;
  std::string upstream_log;

  size_t upstream_queries() const {
    std::ifstream in(upstream_log);
    const std::string q = std::string("query[A] ") + kName + " from ";
    size_t n = 0;
    for (std::string line; std::getline(in, line);) n += line.find(q) != std::string::npos;
    return n;
  }
};

class DnsPhase {
 public:
  explicit DnsPhase(Bench& b) : b_(b), p_(b.profile()), fig_(b.res.dns) {}
  void run();

 private:
  std::unique_ptr<DnsPod> make_dns_pod(const std::string& label, Capture c, const RigOptions& ro);
  void start_resolvers(DnsPod& d);
  ClientResult query(Rig& rig, const DnsClientSpec& s, test::Identity id = test::Identity::user(1000, 1000));
  void check_captured(DnsPod& d, const std::string& variant);
  void stop(DnsPod& d);
  void measure_rtt();
  void measure_state(DnsPod& d);
  void measure_connect();
  void define_variants();

  Bench& b_;
  const Profile& p_;
  DnsRecord& fig_;
};

void DnsPhase::start_resolvers(DnsPod& d) {
  test::TestPod& pod = d.rig->pod();
  const auto& cpus = b_.ro.cpus;
  const std::string peer = pod.peer_ipv4();
  d.upstream_log = pod.scratch_dir() + "/dns-upstream.log";
  // dnsmasq inherits the CPU mask of the thread that starts it.
  pin_to_cpu(cpus.server);
  try {
    d.upstream = pod.spawn_in_peer({"dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                                    "--conf-file=/dev/null", "--pid-file=", "--user=root", "--bind-interfaces",
                                    "--listen-address=" + peer, "--port=53",
                                    std::string("--address=/") + kName + "/10.9.9.9", "--local-ttl=3600",
                                    "--log-queries", "--log-facility=-"},
                                   test::Identity::root(), d.upstream_log);
    b_.server_pids.push_back(d.upstream);
    pin_to_cpu(cpus.proxy);
    d.proxy = pod.spawn_in_pod({"dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                                "--conf-file=/dev/null", "--pid-file=", "--bind-interfaces",
                                "--listen-address=127.0.0.1,::1", "--port=" + std::to_string(kDnsListenerPort),
                                "--server=" + peer, "--log-facility=-"},
                               test::Identity::proxy(), pod.scratch_dir() + "/dns-proxy.log");
    b_.server_pids.push_back(d.proxy);
  } catch (...) {
    pin_to_cpu(cpus.controller);
    throw;
  }
  pin_to_cpu(cpus.controller);
  // Ready once the proxy answers with the upstream's address (before any
  // capture; this query also fills the proxy's cache).
  DnsClientSpec s;
  s.ip = "127.0.0.1";
  s.port = kDnsListenerPort;
  s.count = 1;
  s.warmup = 0;
  s.timeout_ms = 300;
  s.seconds = 2;
  std::string last;
  for (int i = 0; i < 50; i++) {
    const ClientResult r = query(*d.rig, s, test::Identity::root());
    if (r.errors == 0 && r.samples_ns.size() == 1) return;
    last = r.first_error;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  throw std::runtime_error(d.rig->label() + ": the DNS listener did not answer (" + last + ")");
}

std::unique_ptr<DnsPod> DnsPhase::make_dns_pod(const std::string& label, Capture c, const RigOptions& ro) {
  auto d = std::make_unique<DnsPod>();
  d->rig = std::make_unique<Rig>(label, c, Sidecar::bare, ro);
  b_.track(*d->rig);
  start_resolvers(*d);
  d->rig->apply_flags(with(kIstioFlags, {"--redirect-dns", "--dns-servers", d->rig->peer_ip()}));
  return d;
}

// The client job: in the pod's cgroup as `id` (the app by default), on the
// client CPU.
ClientResult DnsPhase::query(Rig& rig, const DnsClientSpec& s, test::Identity id) {
  const int cpu = b_.ro.cpus.client;
  auto [pid, fd] = rig.pod().start_in_pod_with_pipe(
      [s, cpu](int wfd) {
        pin_to_cpu(cpu);
        return write_result(wfd, run_dns_client(s)) ? 0 : 1;
      },
      id);
  ClientResult r;
  if (!read_result(fd.get(), r, static_cast<int>(s.seconds * 1000) + 30000)) {
    r = ClientResult{};
    r.errors = 1;
    r.first_error = "client produced no result";
  }
  if (!rig.pod().wait_exit(pid, std::chrono::milliseconds(10000))) rig.pod().stop(pid);
  return r;
}

// The capture takes the app's queries: they are answered (from the
// resolver's address), and the upstream does not see them (the proxy's
// cache answers). Throws otherwise.
void DnsPhase::check_captured(DnsPod& d, const std::string& variant) {
  DnsClientSpec s;
  s.ip = d.rig->peer_ip();
  s.count = 20;
  s.warmup = 0;
  const size_t before = d.upstream_queries();
  const ClientResult r = query(*d.rig, s);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the upstream's log
  const size_t seen = d.upstream_queries() - before;
  if (r.errors || seen * 2 >= s.count)
    throw std::runtime_error(variant + ": queries to " + s.ip + ":53 not taken by the proxy: " +
                             std::to_string(r.errors) + " failed" + (r.errors ? " (first: " + r.first_error + ")" : "") +
                             ", the upstream saw " + std::to_string(seen) + " of " + std::to_string(s.count));
}

void DnsPhase::stop(DnsPod& d) {
  test::TestPod& pod = d.rig->pod();
  for (pid_t* pid : {&d.proxy, &d.upstream})
    if (*pid > 0) {
      pod.stop(*pid);
      *pid = -1;
    }
  try {
    d.rig->remove();
  } catch (const std::exception& e) {
    b_.res.notes.push_back(std::string("dns phase: ") + e.what());
  }
  d.rig.reset();
}

void DnsPhase::define_variants() {
  auto add = [&](const char* name, const std::string& capture, const std::string& expect) {
    b_.res.variants.push_back({name, name, false, kDnsPort, 0, "dns", capture, false, false, expect});
  };
  add(kEbpf, "ebpf", "dns-listener");
  if (p_.aa) add(kEbpfAa, "ebpf", "dns-listener");
  add(kNft, "iptables-nft", "dns-listener");
  if (p_.legacy) add(kLegacy, "iptables-legacy", "dns-listener");
  for (const char* name : {kOn, kOff})
    b_.res.variants.push_back({name, name, false, kEchoPort, 0, "dns", "ebpf", false, false, "local"});
  if (p_.aa) b_.res.variants.push_back({kOffAa, kOffAa, false, kEchoPort, 0, "dns", "ebpf", false, false, "local"});
}

void DnsPhase::measure_rtt() {
  RigOptions ro = b_.ro;
  std::map<std::string, std::unique_ptr<DnsPod>> pods;  // by variant (the A/A pair shares kEbpf's)
  std::vector<std::pair<const char*, Capture>> caps = {{kEbpf, Capture::ebpf}, {kNft, Capture::nft}};
  if (p_.legacy) caps.push_back({kLegacy, Capture::legacy});
  try {
    for (const auto& [name, cap] : caps) {
      check_stop();
      if (cap != Capture::ebpf && !ro.meshcap_iptables && b_.opt.iptables_via != "restore") {
        ro.meshcap_iptables = meshcap_has_iptables_mode(b_.opt.meshcap_bin, pods.at(kEbpf)->rig->pod());
        if (b_.opt.iptables_via == "meshcap" && !ro.meshcap_iptables)
          throw std::runtime_error("--iptables-via meshcap: `meshcap init --mode iptables` does not work in this build");
      }
      pods[name] = make_dns_pod(name, cap, ro);
      fig_.how[name] = cap == Capture::ebpf ? "meshcap init --mode ebpf"
                       : ro.meshcap_iptables
                           ? std::string("meshcap init --mode iptables --force-iptables-binary ") +
                                 (cap == Capture::nft ? "nft" : "legacy")
                           : (cap == Capture::nft ? "iptables-nft-restore" : "iptables-legacy-restore") +
                                 std::string(" of istio's payload");
      check_captured(*pods[name], name);
    }
    if (p_.aa) fig_.how[kEbpfAa] = fig_.how[kEbpf];
    fig_.queries = p_.dns_queries;
    for (int round = 0; round < p_.rounds; round++) {
      std::vector<std::string> jobs;
      for (const auto& [name, cap] : caps) jobs.push_back(name);
      if (p_.aa) jobs.push_back(kEbpfAa);
      std::shuffle(jobs.begin(), jobs.end(), b_.rng);
      for (const auto& v : jobs) {
        check_stop();
        DnsPod& d = *pods.at(v == kEbpfAa ? kEbpf : v);
        DnsClientSpec s;
        s.ip = d.rig->peer_ip();
        s.count = p_.dns_queries;
        const size_t before = d.upstream_queries();
        const ClientResult r = query(*d.rig, s);
        fig_.sent[v] += s.warmup + s.count;
        fig_.upstream[v] += d.upstream_queries() - before;
        record(b_.res.cells[CellKey{"dns", kRtt, v, 0}], kRtt, r, b_.res, "dns rtt " + v, round);
      }
    }
    spdlog::info("dns phase: round trips done");
    fig_.counters = loader::pinned_counters(pods.at(kEbpf)->rig->name());
    std::erase_if(fig_.counters, [](const auto& kv) { return kv.first.rfind("dns_", 0) != 0; });
    measure_state(*pods.at(kEbpf));
  } catch (...) {
    for (auto& [name, d] : pods) stop(*d);
    throw;
  }
  for (auto& [name, d] : pods) stop(*d);
  b_.res.config["dns_iptables_applied_with"] = fig_.how.count(kNft) ? fig_.how[kNft] : "-";
}

// The reply mapping after many queries from many sockets: entries,
// max_entries and memlock of the pinned dns_reverse map, at steps.
void DnsPhase::measure_state(DnsPod& d) {
  const std::string dir = loader::pin_dir(d.rig->name());
  const std::string pin = dir + "/map_dns_reverse";
  const test::UniqueFd map(::bpf_obj_get(pin.c_str()));
  if (!map) throw std::runtime_error("bpf_obj_get " + pin + ": " + std::strerror(errno));
  bpf_map_info info{};
  __u32 len = sizeof info;
  if (::bpf_obj_get_info_by_fd(map.get(), &info, &len) != 0)
    throw std::runtime_error("bpf_obj_get_info_by_fd " + pin + ": " + std::strerror(errno));
  fig_.max_entries = info.max_entries;
  auto memlock = [&map] {
    std::ifstream in("/proc/self/fdinfo/" + std::to_string(map.get()));
    std::string key;
    uint64_t value = 0;
    while (in >> key)
      if (key == "memlock:" && in >> value) return value;
    return uint64_t{0};
  };
  fig_.per_socket = kStatePerSocket;
  fig_.state_queries = p_.dns_state_queries;
  const auto t0 = Clock::now();
  uint64_t sent = 0;
  auto point = [&] { fig_.state.push_back({sent, loader::pinned_entries(dir, "dns_reverse"), memlock()}); };
  point();
  // Steps of 1%, 10%, 100% of the queries.
  for (uint64_t upto : {p_.dns_state_queries / 100, p_.dns_state_queries / 10, p_.dns_state_queries}) {
    check_stop();
    if (upto <= sent) continue;
    DnsClientSpec s;
    s.ip = d.rig->peer_ip();
    s.count = upto - sent;
    s.warmup = 0;
    s.per_socket = kStatePerSocket;
    s.keep_samples = false;
    s.seconds = 600;
    const ClientResult r = query(*d.rig, s);
    fig_.state_failures += r.errors;
    if (r.errors)
      b_.res.notes.push_back("dns state: " + std::to_string(r.errors) + " failed queries, first: " + r.first_error);
    sent = upto;
    point();
  }
  spdlog::info("dns phase: {} queries for the reply-mapping state in {:.1f} s", sent, since(t0));
}

void DnsPhase::measure_connect() {
  struct Pod {
    const char* name;
    bool dns;
    std::unique_ptr<Rig> rig;
  };
  std::vector<Pod> pods;
  pods.push_back({kOn, true, nullptr});
  pods.push_back({kOff, false, nullptr});
  if (p_.aa) pods.push_back({kOffAa, false, nullptr});
  for (auto& pod : pods) {
    check_stop();
    pod.rig = std::make_unique<Rig>(pod.name, Capture::ebpf, Sidecar::echo, b_.ro);
    b_.track(*pod.rig);
    pod.rig->apply_flags(pod.dns ? with(kIstioFlags, {"--redirect-dns", "--capture-all-dns"}) : kIstioFlags);
    if (const std::string bad = verify_variant(*pod.rig, *b_.res.variant(pod.name)); !bad.empty())
      throw std::runtime_error(bad);
  }
  for (int round = 0; round < p_.rounds; round++) {
    std::vector<size_t> order(pods.size());
    for (size_t i = 0; i < order.size(); i++) order[i] = i;
    std::shuffle(order.begin(), order.end(), b_.rng);
    for (size_t i : order) {
      check_stop();
      Pod& pod = pods[i];
      const VariantDef& v = *b_.res.variant(pod.name);
      const ClientResult r = pod.rig->run_client(spec_for(p_, v, *pod.rig, "connect", false));
      record(b_.res.cells[CellKey{"dns", "connect", pod.name, 0}], "connect", r, b_.res,
             std::string("dns connect ") + pod.name, round);
    }
  }
  for (auto& pod : pods) pod.rig.reset();  // meshcap cleanup, then the pod
  spdlog::info("dns phase: connection setup done");
}

void DnsPhase::run() {
  if (!test::have_binary("dnsmasq")) {
    b_.res.notes.push_back("dns phase skipped: dnsmasq not found");
    return;
  }
  const auto t0 = Clock::now();
  define_variants();
  b_.res.config["dns"] =
      "upstream dnsmasq in the peer on port 53 (--address=/" + std::string(kName) +
      "/10.9.9.9 --local-ttl=3600); the proxy's DNS listener: dnsmasq in the pod as UID/GID 1337 on "
      "127.0.0.1,::1:15053 forwarding to it, default cache: repeated queries are answered from its cache; capture: " +
      join(kIstioFlags, " ") + " --redirect-dns --dns-servers <peer>";
  b_.res.config["dns_samples"] =
      std::to_string(p_.dns_queries) + " queries/variant/round after " + std::to_string(kWarmup) +
      " warm-up, one unconnected UDP socket as UID 1000 in the pod's cgroup; connection setup " +
      std::to_string(p_.connect_n) + "/variant/round; reply-mapping state: " + std::to_string(p_.dns_state_queries) +
      " queries, a new socket every " + std::to_string(kStatePerSocket) +
      (p_.name == "full" ? "" : " (" + p_.name + " run)");
  // Each part on its own pods; one failing leaves the others' figures.
  for (auto [part, fn] : {std::pair{"round trips", &DnsPhase::measure_rtt}, std::pair{"connection setup", &DnsPhase::measure_connect}}) {
    try {
      (this->*fn)();
    } catch (const Interrupted&) {
      throw;
    } catch (const std::exception& e) {
      b_.res.notes.push_back(std::string("dns phase, ") + part + ": " + e.what());
      spdlog::error("dns phase, {}: {}", part, e.what());
    }
  }
  spdlog::info("dns phase: {:.0f} s", since(t0));
}

}  // namespace

void run_dns_phase(Bench& b) {
  if (b.opt.no_dns) return;
  DnsPhase(b).run();
}

}  // namespace meshcap::bench
