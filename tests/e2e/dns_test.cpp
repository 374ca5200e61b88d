// DNS capture (istio's --redirect-dns) with real parts, in every mode:
// iptables (nft, legacy), eBPF per pod, and the node data path, all driven
// through the meshcap binary. What istio's rules do is the specification
// (issue #18): UDP and TCP to port 53 of a listed resolver, or of any
// address with --capture-all-dns, reach the proxy's DNS listener on 15053;
// the proxy's UID/GID are exempt; the application sees the resolver as the
// source of the answers; the proxy sees the pod's address as the source of
// the query; with the proxy stopped, queries fail rather than bypass it.
//
// Parts: an upstream dnsmasq in the peer namespace is "the resolver outside
// the pod" (it answers *.mcdns.test with 10.9.9.9); a second dnsmasq is the
// proxy's DNS listener on 127.0.0.1:15053 and [::1]:15053 as UID/GID 1337
// in the pod, forwarding upstream. Both log every query they receive, so
// each query's name (unique per query) says who answered it. Clients: dig
// (UDP and +tcp), glibc (getent hosts / ahosts with a resolv.conf of their
// own in a private mount namespace), and this file's own connected and
// unconnected UDP clients, all in the pod's cgroup so cgroup hooks see them.
// Root only; namespaces, cgroups, iptables and BPF only in the test's pod.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "datapath.h"
#include "support/test_support.h"

#ifndef MESHCAP_BIN
#error "MESHCAP_BIN must name the meshcap binary under test"
#endif

namespace meshcap::test {
namespace {

/// The upstream answers every name under this domain with kAnswer.
constexpr const char* kDomain = "mcdns.test";
constexpr const char* kAnswer = "10.9.9.9";
/// The application's identity (not exempt) and the proxy's (-u/-g).
constexpr uid_t kAppId = 1000;
constexpr uid_t kProxyId = 1337;

// ---- DNS messages (RFC 1035 section 4) ----

/// A standard query (RD set) for the A record of `name`.
std::string dns_query(uint16_t id, const std::string& name) {
  std::string m;
  auto u16 = [&m](uint16_t v) {
    m.push_back(static_cast<char>(v >> 8));
    m.push_back(static_cast<char>(v & 0xff));
  };
  u16(id);
  u16(0x0100);  // QR=0, OPCODE=0, RD=1
  u16(1);       // QDCOUNT
  u16(0);
  u16(0);
  u16(0);
  for (size_t start = 0; start < name.size();) {
    size_t dot = name.find('.', start);
    if (dot == std::string::npos) dot = name.size();
    m.push_back(static_cast<char>(dot - start));
    m.append(name, start, dot - start);
    start = dot + 1;
  }
  m.push_back(0);
  u16(1);  // QTYPE A
  u16(1);  // QCLASS IN
  return m;
}

/// Skips a (possibly compressed) name at pos; false when it runs off the end.
bool skip_name(const std::string& m, size_t& pos) {
  while (pos < m.size()) {
    const auto len = static_cast<uint8_t>(m[pos]);
    if (len == 0) {
      ++pos;
      return true;
    }
    if ((len & 0xc0) == 0xc0) {
      pos += 2;
      return pos <= m.size();
    }
    pos += 1 + len;
  }
  return false;
}

/// "10.9.9.9" from the first A record of a response to query `id`, or a
/// description of what is wrong with it.
std::string dns_answer(const std::string& m, uint16_t id) {
  auto u16 = [&m](size_t at) {
    return static_cast<uint16_t>(static_cast<uint8_t>(m[at]) << 8 | static_cast<uint8_t>(m[at + 1]));
  };
  if (m.size() < 12) return "short reply (" + std::to_string(m.size()) + " bytes)";
  if (u16(0) != id) return "reply id " + std::to_string(u16(0)) + ", query id " + std::to_string(id);
  const uint16_t flags = u16(2);
  if (!(flags & 0x8000)) return "not a response";
  if ((flags & 0xf) != 0) return "rcode " + std::to_string(flags & 0xf);
  size_t pos = 12;
  for (uint16_t q = 0; q < u16(4); ++q) {
    if (!skip_name(m, pos) || pos + 4 > m.size()) return "truncated question";
    pos += 4;
  }
  for (uint16_t a = 0; a < u16(6); ++a) {
    if (!skip_name(m, pos) || pos + 10 > m.size()) return "truncated answer";
    const uint16_t type = u16(pos), rdlen = u16(pos + 8);
    pos += 10;
    if (pos + rdlen > m.size()) return "truncated rdata";
    if (type == 1 && rdlen == 4) {
      char ip[INET_ADDRSTRLEN] = {};
      ::inet_ntop(AF_INET, m.data() + pos, ip, sizeof ip);
      return ip;
    }
    pos += rdlen;
  }
  return "no A record";
}

// ---- this file's own clients (run in a forked child in the pod) ----

enum class Client {
  unconnected,     ///< UDP: sendto the resolver, recvfrom (glibc's first try)
  connected,       ///< UDP: connect, send, recvfrom (glibc's parallel A/AAAA)
  connected_read,  ///< UDP: connect, write, read
  tcp,             ///< TCP: connect, two-byte length and query, read the answer (RFC 1035 4.2.2)
};

struct ClientResult {
  std::string answer;  ///< the A record, or what was wrong with the reply
  std::string from;    ///< recvfrom's source address (UDP but read)
  std::string peer;    ///< getpeername after the answer (connected and TCP)
  std::string error;   ///< the failed step and errno; "" when answered
};

std::string encode(const ClientResult& r) {
  return "answer=" + r.answer + "\nfrom=" + r.from + "\npeer=" + r.peer + "\nerror=" + r.error + "\n";
}

ClientResult decode(const std::string& text) {
  std::map<std::string, std::string> kv;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    const size_t eq = line.find('=');
    if (eq != std::string::npos) kv[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return {kv["answer"], kv["from"], kv["peer"], kv["error"]};
}

/// The wildcard address of the socket family a server literal needs.
std::string wildcard_for(const std::string& server) { return server.find(':') == std::string::npos ? "0.0.0.0" : "::"; }

/// One A query for `name` to server:53 (IPv4, IPv6 or v4-mapped literal;
/// the socket's family follows it), the way `how` says. With `bind_first`
/// the socket is bound to the wildcard address, port 0, before it connects
/// or sends, as dig (BIND's libuv network manager) does.
ClientResult dns_exchange(const std::string& server, Client how, const std::string& name, bool bind_first = false) {
  ClientResult r;
  auto fail = [&r](const std::string& step) {
    r.error = step + ": " + std::strerror(errno);
    return r;
  };
  const auto id = static_cast<uint16_t>(::getpid() ^ 0x5a5a);
  const std::string q = dns_query(id, name);
  if (how == Client::tcp) {
    ConnectOptions options;
    if (bind_first) options.bind_ip = wildcard_for(server);
    const Connection c = connect_tcp(server, 53, Millis(3000), options);
    if (!c.ok()) {
      errno = c.error;
      return fail("connect");
    }
    const std::string framed = std::string{static_cast<char>(q.size() >> 8), static_cast<char>(q.size() & 0xff)} + q;
    if (!send_all(c.fd.get(), framed, Millis(3000))) return fail("send");
    const std::string head = recv_exact(c.fd.get(), 2, Millis(3000));
    if (head.size() != 2) return fail("read length");
    const size_t len = static_cast<uint8_t>(head[0]) << 8 | static_cast<uint8_t>(head[1]);
    const std::string reply = recv_exact(c.fd.get(), len, Millis(3000));
    if (reply.size() != len) return fail("read answer");
    r.answer = dns_answer(reply, id);
    r.peer = getpeername_str(c.fd.get());
    return r;
  }
  socklen_t len = 0;
  const sockaddr_storage to = make_sockaddr(server, 53, &len);
  UniqueFd fd(::socket(to.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) return fail("socket");
  const timeval tv{3, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (bind_first) {
    socklen_t blen = 0;
    const sockaddr_storage any = make_sockaddr(wildcard_for(server), 0, &blen);
    if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&any), blen) != 0) return fail("bind");
  }
  const auto* sa = reinterpret_cast<const sockaddr*>(&to);
  if (how == Client::unconnected) {
    if (::sendto(fd.get(), q.data(), q.size(), 0, sa, len) != static_cast<ssize_t>(q.size())) return fail("sendto");
  } else {
    if (::connect(fd.get(), sa, len) != 0) return fail("connect");
    const ssize_t n = how == Client::connected ? ::send(fd.get(), q.data(), q.size(), 0)
                                               : ::write(fd.get(), q.data(), q.size());
    if (n != static_cast<ssize_t>(q.size())) return fail("send");
  }
  char buf[1500];
  ssize_t n;
  if (how == Client::connected_read) {
    n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) return fail("read");
  } else {
    sockaddr_storage src{};
    socklen_t slen = sizeof src;
    n = ::recvfrom(fd.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&src), &slen);
    if (n < 0) return fail("recvfrom");
    r.from = format_sockaddr(reinterpret_cast<sockaddr*>(&src), slen);
  }
  r.answer = dns_answer(std::string(buf, static_cast<size_t>(n)), id);
  if (how != Client::unconnected) r.peer = getpeername_str(fd.get());
  return r;
}

/// One unconnected IPv4 socket sends a query to each server (name i to
/// servers[i]) before reading any answer, then reads them all; the result
/// has a line "i=<source of the answer to query i>" per answer, or "error=".
std::string two_resolvers_one_socket(const std::vector<std::string>& servers, const std::vector<std::string>& names) {
  UniqueFd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) return std::string("error=socket: ") + std::strerror(errno) + "\n";
  const timeval tv{3, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  const auto base = static_cast<uint16_t>(::getpid() << 4);
  for (size_t i = 0; i < servers.size(); ++i) {
    socklen_t len = 0;
    const sockaddr_storage to = make_sockaddr(servers[i], 53, &len);
    const std::string q = dns_query(static_cast<uint16_t>(base + i), names[i]);
    if (::sendto(fd.get(), q.data(), q.size(), 0, reinterpret_cast<const sockaddr*>(&to), len) < 0)
      return std::string("error=sendto: ") + std::strerror(errno) + "\n";
  }
  std::string out;
  for (size_t n = 0; n < servers.size(); ++n) {
    char buf[1500];
    sockaddr_storage src{};
    socklen_t slen = sizeof src;
    const ssize_t got = ::recvfrom(fd.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&src), &slen);
    if (got < 12) return out + "error=recvfrom: " + std::strerror(errno) + "\n";
    const auto id = static_cast<uint16_t>(static_cast<uint8_t>(buf[0]) << 8 | static_cast<uint8_t>(buf[1]));
    out += std::to_string(static_cast<uint16_t>(id - base)) + "=" +
           format_sockaddr(reinterpret_cast<sockaddr*>(&src), slen) + "\n";
  }
  return out;
}

/// "ip:53" / "[ip6]:53", as format_sockaddr writes the resolver.
std::string port53(const std::string& ip) {
  return ip.find(':') == std::string::npos ? ip + ":53" : "[" + ip + "]:53";
}

/// The number of times `what` occurs in the file at path.
size_t count_in(const std::string& path, const std::string& what) {
  const std::string text = read_text_file(path);
  size_t n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

/// Every cgroup hook a capture could attach to (DNS adds sendmsg/recvmsg).
const std::vector<bpf_attach_type>& cgroup_hooks() {
  static const std::vector<bpf_attach_type> types = {
      BPF_CGROUP_INET4_CONNECT,     BPF_CGROUP_INET6_CONNECT,     BPF_CGROUP_UDP4_SENDMSG,
      BPF_CGROUP_UDP6_SENDMSG,      BPF_CGROUP_UDP4_RECVMSG,      BPF_CGROUP_UDP6_RECVMSG,
      BPF_CGROUP_INET4_GETPEERNAME, BPF_CGROUP_INET6_GETPEERNAME, BPF_CGROUP_INET4_GETSOCKNAME,
      BPF_CGROUP_INET6_GETSOCKNAME, BPF_CGROUP_INET4_BIND,        BPF_CGROUP_INET6_BIND,
      BPF_CGROUP_INET4_POST_BIND,   BPF_CGROUP_INET6_POST_BIND,   BPF_CGROUP_INET_SOCK_CREATE,
      BPF_CGROUP_SOCK_OPS,          BPF_CGROUP_GETSOCKOPT,        BPF_CGROUP_SETSOCKOPT};
  return types;
}

/// Programs attached to the cgroup at any of cgroup_hooks().
size_t cgroup_programs(const std::string& cgroup) {
  UniqueFd fd(::open(cgroup.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return 0;
  size_t total = 0;
  for (auto type : cgroup_hooks()) {
    __u32 ids[64], count = 64, flags = 0;
    if (bpf_prog_query(fd.get(), type, 0, &flags, ids, &count) == 0) total += count;
  }
  return total;
}

// ---- modes ----

struct Mode {
  std::string name;               ///< gtest parameter name
  std::vector<std::string> args;  ///< meshcap init's mode flags
  bool node = false;              ///< a node data path on the pod's cgroup first; init enrols
  std::string iptables;           ///< the backend iptables modes force ("" for eBPF)
};

/// gtest prints a parameter by its name.
void PrintTo(const Mode& m, std::ostream* os) { *os << m.name; }

const std::vector<Mode> kModes = {
    {"iptables_nft", {"--mode", "iptables", "--force-iptables-binary", "nft"}, false, "nft"},
    {"iptables_legacy", {"--mode", "iptables", "--force-iptables-binary", "legacy"}, false, "legacy"},
    {"ebpf", {"--mode", "ebpf"}, false, ""},
    {"node", {"--mode", "ebpf"}, true, ""},
};

class Dns : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    MESHCAP_REQUIRE_ROOT();
    for (const char* tool : {"dnsmasq", "dig", "getent", "unshare", "setpriv", "nsenter"}) MESHCAP_REQUIRE_BINARY(tool);
    const Mode& m = GetParam();
    if (!m.iptables.empty()) MESHCAP_REQUIRE_BINARY("iptables-" + m.iptables + "-restore");
    pod_ = std::make_unique<TestPod>();
    name_ = "dns" + pod_->suffix();
    // The resolver outside the pod: every name under kDomain is kAnswer.
    upstream_log_ = pod_->scratch_dir() + "/upstream.log";
    pod_->spawn_in_peer({"dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                         "--pid-file=", "--user=root", "--bind-interfaces",
                         "--listen-address=" + pod_->peer_ipv4() + "," + pod_->peer_ipv6(), "--port=53",
                         std::string("--address=/") + kDomain + "/" + kAnswer, "--log-queries", "--log-facility=-"},
                        Identity::root(), upstream_log_);
    start_proxy();
    ASSERT_TRUE(wait_ready()) << "proxy log:\n" << read_text_file(proxy_log_) << "upstream log:\n"
                              << read_text_file(upstream_log_);
    if (m.node) {
      pins_ = "/sys/fs/bpf/mcdns-" + pod_->suffix();
      state_ = "/run/mcdns-" + pod_->suffix();
      node_env_ = {"MESHCAP_PIN_DIR=" + pins_, "MESHCAP_STATE_DIR=" + state_};
      const CommandResult r = meshcap({"node", "start", "--cgroup", pod_->cgroup_path()});
      ASSERT_EQ(r.exit_code, 0) << r.output;
    }
  }

  void TearDown() override {
    if (pod_) {
      const CommandResult c = meshcap({"cleanup", "--name", name_});
      if (inited_) {
        EXPECT_EQ(c.exit_code, 0) << "meshcap cleanup: " << c.output;
      }
    }
    if (!node_env_.empty()) {
      CommandResult s = meshcap({"node", "stop"});
      if (s.exit_code != 0) {
        // A pod still enrolled: once its namespace is gone, it is stale.
        ADD_FAILURE() << "meshcap node stop: " << s.output;
        pod_.reset();
        meshcap({"cleanup", "--all-stale"});
        s = meshcap({"node", "stop"});
        EXPECT_EQ(s.exit_code, 0) << "meshcap node stop after cleanup --all-stale: " << s.output;
      }
      node_env_.clear();
    }
    if (!pins_.empty()) run_command({"rm", "-rf", pins_, state_});
    if (pod_ && !GetParam().node && inited_) {
      EXPECT_FALSE(loader::pinned_state(name_).present);
    }
    pod_.reset();
  }

  void start_proxy() {
    proxy_log_ = pod_->scratch_dir() + "/proxy.log";
    proxy_ = pod_->spawn_in_pod({"dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                                 "--conf-file=/dev/null", "--pid-file=", "--bind-interfaces",
                                 "--listen-address=127.0.0.1,::1", "--port=15053", "--server=" + pod_->peer_ipv4(),
                                 "--log-queries", "--log-facility=-"},
                                Identity::proxy(), proxy_log_);
  }

  /// The meshcap binary, with the node mode's pin and state directories.
  CommandResult meshcap(std::vector<std::string> args) {
    args.insert(args.begin(), MESHCAP_BIN);
    if (!node_env_.empty()) {
      args.insert(args.begin(), node_env_.begin(), node_env_.end());
      args.insert(args.begin(), "env");
    }
    return run_command(args);
  }

  /// meshcap init for this pod in the mode under test, with istio's flags
  /// (-u/-g 1337, all outbound and inbound TCP, DNS capture) and `extra`.
  void init(const std::vector<std::string>& extra) {
    std::vector<std::string> args = {
        "init", "--name", name_, "--cgroup", pod_->cgroup_path(), "--netns", pod_->pod_netns_path()};
    args.insert(args.end(), GetParam().args.begin(), GetParam().args.end());
    for (const char* a : {"-p", "15001", "-z", "15006", "-u", "1337", "-g", "1337", "-m", "REDIRECT", "-i", "*",
                          "-b", "*", "--redirect-dns"})
      args.emplace_back(a);
    args.insert(args.end(), extra.begin(), extra.end());
    const CommandResult r = meshcap(args);
    inited_ = r.exit_code == 0;
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  /// A fresh name under kDomain, so each query's log lines are its own.
  std::string fresh(const std::string& what) {
    return what + "-" + std::to_string(++serial_) + "." + pod_->suffix() + "." + kDomain;
  }

  /// argv run in the pod's cgroup (joined first) and netns, as uid/gid
  /// (0/0: stays root).
  CommandResult in_pod(const std::vector<std::string>& argv, uid_t uid = kAppId, gid_t gid = kAppId) {
    const std::string procs = pod_->cgroup_path() + "/cgroup.procs";
    std::vector<std::string> all = {"sh", "-c", "echo $$ > \"$0\" && exec \"$@\"", procs};
    all.insert(all.end(), {tool("nsenter"), "--net=" + pod_->pod_netns_path()});
    if (uid != 0 || gid != 0)
      all.insert(all.end(), {tool("setpriv"), "--reuid=" + std::to_string(uid), "--regid=" + std::to_string(gid),
                             "--clear-groups"});
    all.insert(all.end(), argv.begin(), argv.end());
    return run_command(all);
  }

  /// dig for the A record of `name` at server:53, in the pod.
  CommandResult dig(const std::string& server, const std::string& name, bool tcp = false, uid_t uid = kAppId,
                    gid_t gid = kAppId) {
    std::vector<std::string> argv = {"dig", "@" + server, name, "A", "+short", "+tries=1", "+time=2"};
    if (tcp) argv.push_back("+tcp");
    return in_pod(argv, uid, gid);
  }

  /// `getent DB name` in the pod with a resolv.conf naming only `resolver`
  /// (and nsswitch "hosts: files dns"), both bind-mounted in a private
  /// mount namespace of the child's: the machine's files are not touched.
  CommandResult getent(const std::string& db, const std::string& resolver, const std::string& name) {
    const std::string resolv = pod_->scratch_dir() + "/resolv.conf." + std::to_string(++serial_);
    const std::string nss = pod_->scratch_dir() + "/nsswitch.conf";
    write_file(resolv, "nameserver " + resolver + "\noptions attempts:1 timeout:2\n");
    write_file(nss, "hosts: files dns\n");
    const std::string mount = tool("mount"), setpriv = tool("setpriv");
    return in_pod({tool("unshare"), "--mount", "--propagation", "private", "sh", "-c",
                   mount + " --bind \"$1\" /etc/resolv.conf && " + mount + " --bind \"$2\" /etc/nsswitch.conf && "
                   "shift 2 && exec " + setpriv + " --reuid=" + std::to_string(kAppId) + " --regid=" +
                       std::to_string(kAppId) + " --clear-groups \"$@\"",
                   "sh", resolv, nss, tool("getent"), db, name},
                  0, 0);
  }

  /// A tool's full path: a shell (busybox's, in the kernel matrix's guest)
  /// would run its own applet of the same name before anything on PATH.
  static std::string tool(const std::string& name) { return find_binary(name).value_or(name); }

  /// One of this file's clients in the pod (its cgroup and netns) as id.
  ClientResult ask(const std::string& server, Client how, const std::string& name,
                   Identity id = Identity::user(kAppId, kAppId), bool bind_first = false) {
    return decode(pod_->run_in_pod_capture([&] { return encode(dns_exchange(server, how, name, bind_first)); }, id,
                                           std::chrono::milliseconds(10000)));
  }

  /// Queries of `name` the proxy received (from any source, or from `src`).
  size_t at_proxy(const std::string& name, const std::string& src = "") {
    return count_in(proxy_log_, "query[A] " + name + " from " + (src.empty() ? "" : src + "\n"));
  }
  /// Queries of `name` the upstream resolver received.
  size_t at_upstream(const std::string& name, const std::string& src = "") {
    return count_in(upstream_log_, "query[A] " + name + " from " + (src.empty() ? "" : src + "\n"));
  }

  /// Waits until both servers have logged everything received so far: a
  /// marker query through the proxy (or, with the proxy stopped, straight to
  /// the upstream from the peer) shows up in the logs, which are written in
  /// order. Bounded; afterwards the counts are final.
  bool sync_logs() {
    const std::string marker = fresh("sync");
    const bool via_proxy = pod_->is_running(proxy_);
    const CommandResult r =
        via_proxy ? run_command({"nsenter", "--net=" + pod_->pod_netns_path(), "dig", "@127.0.0.1", "-p", "15053",
                                 marker, "+short", "+tries=1", "+time=2"})
                  : run_command({"nsenter", "--net=" + pod_->peer_netns_path(), "dig", "@" + pod_->peer_ipv4(),
                                 marker, "+short", "+tries=1", "+time=2"});
    if (r.output.find(kAnswer) == std::string::npos) return false;
    for (int i = 0; i < 200; ++i) {
      if (at_upstream(marker) > 0 && (!via_proxy || at_proxy(marker) > 0)) return true;
      ::usleep(10 * 1000);
    }
    return false;
  }

  /// Both servers answer (bounded retries; asserts are on answers and logs).
  bool wait_ready() {
    for (int i = 0; i < 50; ++i) {
      if (run_command({"nsenter", "--net=" + pod_->pod_netns_path(), "dig", "@127.0.0.1", "-p", "15053",
                       fresh("ready"), "+short", "+tries=1", "+time=1"})
              .output.find(kAnswer) != std::string::npos)
        return true;
      ::usleep(50 * 1000);
    }
    return false;
  }

  /// What is left of meshcap for the pod after cleanup: "" when nothing.
  std::string leftovers() {
    std::string s;
    for (const char* save :
         {"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"}) {
      const CommandResult r = run_command({"nsenter", "--net=" + pod_->pod_netns_path(), save});
      if (r.output.find("ISTIO_") != std::string::npos) s += std::string(save) + " shows ISTIO_ chains; ";
    }
    if (GetParam().node) {
      // The node's programs stay on the cgroup; the pod must be out of its tables.
      const CommandResult r = meshcap({"node", "status", "--json"});
      try {
        const auto j = nlohmann::json::parse(r.output.substr(r.output.find('{')));
        if (j.at("pods_enrolled").get<int>() != 0) s += "the pod is still enrolled; ";
      } catch (const std::exception& e) {
        s += std::string("node status --json unreadable (") + e.what() + "): " + r.output + "; ";
      }
    } else {
      if (size_t n = cgroup_programs(pod_->cgroup_path())) s += std::to_string(n) + " cgroup programs attached; ";
      if (loader::pinned_state(name_).present) s += "pins under " + loader::pin_dir(name_) + "; ";
    }
    return s;
  }

  static void write_file(const std::string& path, const std::string& text) {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd || ::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()))
      throw TestSupportError("write " + path, errno);
  }

  std::string logs() {
    return "\n--- proxy log:\n" + read_text_file(proxy_log_) + "--- upstream log:\n" + read_text_file(upstream_log_);
  }

  std::unique_ptr<TestPod> pod_;
  std::string name_;
  std::string upstream_log_, proxy_log_;
  pid_t proxy_ = -1;
  bool inited_ = false;
  std::vector<std::string> node_env_;
  std::string pins_, state_;
  int serial_ = 0;
};

TEST_P(Dns, ListedResolverUdpAndTcpGoThroughTheProxy) {
  ASSERT_NO_FATAL_FAILURE(init({"--dns-servers", pod_->peer_ipv4()}));
  const std::string u = fresh("udp"), t = fresh("tcp");
  const CommandResult udp = dig(pod_->peer_ipv4(), u);
  EXPECT_TRUE(udp.ok()) << udp.output;
  EXPECT_NE(udp.output.find(kAnswer), std::string::npos) << udp.output;  // dig checks the reply's source
  const CommandResult tcp = dig(pod_->peer_ipv4(), t, /*tcp=*/true);
  EXPECT_TRUE(tcp.ok()) << tcp.output;
  EXPECT_NE(tcp.output.find(kAnswer), std::string::npos) << tcp.output;
  ASSERT_TRUE(sync_logs()) << logs();
  EXPECT_EQ(at_proxy(u), 1u) << logs();
  EXPECT_EQ(at_proxy(t), 1u) << logs();
}

// The proxy's UID, and its GID alone, reach the resolver directly: the
// upstream sees the pod's address, the proxy sees nothing.
TEST_P(Dns, ProxyUidAndGidAreExempt) {
  ASSERT_NO_FATAL_FAILURE(init({"--dual-stack", "--dns-servers", pod_->peer_ipv4() + "," + pod_->peer_ipv6()}));
  struct Query {
    std::string label, server;
    bool tcp;
    uid_t uid;
    gid_t gid;
    std::string src;
    std::string name = {};
  };
  std::vector<Query> queries = {
      {"uid-udp", pod_->peer_ipv4(), false, kProxyId, kProxyId, pod_->pod_ipv4()},
      {"uid-tcp", pod_->peer_ipv4(), true, kProxyId, kProxyId, pod_->pod_ipv4()},
      {"gid-udp", pod_->peer_ipv4(), false, kAppId, kProxyId, pod_->pod_ipv4()},
      {"gid-tcp", pod_->peer_ipv4(), true, kAppId, kProxyId, pod_->pod_ipv4()},
      {"uid-udp6", pod_->peer_ipv6(), false, kProxyId, kProxyId, pod_->pod_ipv6()},
      {"uid-tcp6", pod_->peer_ipv6(), true, kProxyId, kProxyId, pod_->pod_ipv6()},
  };
  for (Query& q : queries) {
    q.name = fresh(q.label);
    const CommandResult r = dig(q.server, q.name, q.tcp, q.uid, q.gid);
    EXPECT_NE(r.output.find(kAnswer), std::string::npos) << q.label << ": " << r.output;
  }
  const std::string own = fresh("uid-own-client");
  const ClientResult c = ask(pod_->peer_ipv4(), Client::unconnected, own, Identity::proxy());
  EXPECT_EQ(c.answer, kAnswer) << c.error;
  EXPECT_EQ(c.from, port53(pod_->peer_ipv4()));
  ASSERT_TRUE(sync_logs()) << logs();
  for (const Query& q : queries) {
    EXPECT_EQ(at_proxy(q.name), 0u) << q.label << ": the proxy's own query was captured" << logs();
    EXPECT_EQ(at_upstream(q.name, q.src), 1u) << q.label << ": not at the resolver from " << q.src << logs();
  }
  EXPECT_EQ(at_proxy(own), 0u) << logs();
  EXPECT_EQ(at_upstream(own, pod_->pod_ipv4()), 1u) << logs();
}

TEST_P(Dns, UnlistedResolverIsNotCapturedWithoutCaptureAll) {
  ASSERT_NO_FATAL_FAILURE(init({"--dns-servers", "10.99.99.99"}));
  const std::string d = fresh("dig"), c = fresh("connected");
  const CommandResult r = dig(pod_->peer_ipv4(), d);
  EXPECT_NE(r.output.find(kAnswer), std::string::npos) << r.output;
  const ClientResult u = ask(pod_->peer_ipv4(), Client::connected, c);
  EXPECT_EQ(u.answer, kAnswer) << u.error;
  ASSERT_TRUE(sync_logs()) << logs();
  EXPECT_EQ(at_proxy(d), 0u) << logs();
  EXPECT_EQ(at_proxy(c), 0u) << logs();
  EXPECT_EQ(at_upstream(d, pod_->pod_ipv4()), 1u) << logs();
  EXPECT_EQ(at_upstream(c, pod_->pod_ipv4()), 1u) << logs();
}

// --capture-all-dns takes queries to any address (even one nothing answers
// at) to the proxy; with the proxy stopped they fail and never reach the
// resolver.
TEST_P(Dns, CaptureAllDnsAndProxyStoppedFailsClosed) {
  ASSERT_NO_FATAL_FAILURE(init({"--dual-stack", "--capture-all-dns"}));
  const std::string to_peer = fresh("peer"), nowhere4 = fresh("nowhere4"), nowhere6 = fresh("nowhere6");
  const CommandResult r = dig(pod_->peer_ipv4(), to_peer);
  EXPECT_NE(r.output.find(kAnswer), std::string::npos) << r.output;
  const CommandResult n4 = dig("10.99.99.99", nowhere4);
  EXPECT_NE(n4.output.find(kAnswer), std::string::npos) << n4.output;
  const CommandResult n6 = dig("fd00:99::99", nowhere6);
  EXPECT_NE(n6.output.find(kAnswer), std::string::npos) << n6.output;
  ASSERT_TRUE(sync_logs()) << logs();
  EXPECT_EQ(at_proxy(to_peer), 1u) << logs();
  EXPECT_EQ(at_proxy(nowhere4), 1u) << logs();
  EXPECT_EQ(at_proxy(nowhere6), 1u) << logs();

  ASSERT_TRUE(pod_->stop(proxy_).has_value());
  const std::string udp4 = fresh("down-udp"), tcp4 = fresh("down-tcp"), udp6 = fresh("down-udp6"),
                    conn = fresh("down-connected"), unconn = fresh("down-unconnected"), tcpc = fresh("down-tcp-client");
  const CommandResult d1 = dig(pod_->peer_ipv4(), udp4);
  EXPECT_EQ(d1.output.find(kAnswer), std::string::npos) << d1.output;
  const CommandResult d2 = dig(pod_->peer_ipv4(), tcp4, /*tcp=*/true);
  EXPECT_EQ(d2.output.find(kAnswer), std::string::npos) << d2.output;
  const CommandResult d3 = dig(pod_->peer_ipv6(), udp6);
  EXPECT_EQ(d3.output.find(kAnswer), std::string::npos) << d3.output;
  const ClientResult c = ask(pod_->peer_ipv4(), Client::connected, conn);
  EXPECT_NE(c.error, "") << "answered by " << c.from << ": " << c.answer;
  const ClientResult u = ask(pod_->peer_ipv4(), Client::unconnected, unconn);
  EXPECT_NE(u.error, "") << "answered by " << u.from << ": " << u.answer;
  const ClientResult t = ask(pod_->peer_ipv4(), Client::tcp, tcpc);
  EXPECT_NE(t.error, "") << "answered by " << t.peer << ": " << t.answer;
  ASSERT_TRUE(sync_logs()) << logs();
  for (const std::string& name : {udp4, tcp4, udp6, conn, unconn, tcpc})
    EXPECT_EQ(at_upstream(name), 0u) << name << " bypassed the stopped proxy" << logs();
}

TEST_P(Dns, Ipv6ListedResolverGoesThroughTheProxy) {
  ASSERT_NO_FATAL_FAILURE(init({"--dual-stack", "--dns-servers", pod_->peer_ipv6()}));
  const std::string u = fresh("udp6"), t = fresh("tcp6");
  const CommandResult udp = dig(pod_->peer_ipv6(), u);
  EXPECT_NE(udp.output.find(kAnswer), std::string::npos) << udp.output;
  const CommandResult tcp = dig(pod_->peer_ipv6(), t, /*tcp=*/true);
  EXPECT_NE(tcp.output.find(kAnswer), std::string::npos) << tcp.output;
  ASSERT_TRUE(sync_logs()) << logs();
  EXPECT_EQ(at_proxy(u), 1u) << logs();
  EXPECT_EQ(at_proxy(t), 1u) << logs();
}

// A resolver on loopback (a node-local stub such as 127.0.0.53, as in
// istio's dns goldens): nothing listens there in the pod, so only the
// capture can answer. Loopback TCP to port 53 is captured too (istio's
// loopback RETURN rule skips port 53).
TEST_P(Dns, LoopbackResolverGoesThroughTheProxy) {
  const std::string stub = "127.0.0.53";
  ASSERT_NO_FATAL_FAILURE(init({"--dns-servers", stub}));
  const std::string u = fresh("udp"), t = fresh("tcp"), conn = fresh("connected"), unconn = fresh("unconnected");
  const CommandResult udp = dig(stub, u);
  EXPECT_NE(udp.output.find(kAnswer), std::string::npos) << udp.output;
  const CommandResult tcp = dig(stub, t, /*tcp=*/true);
  EXPECT_NE(tcp.output.find(kAnswer), std::string::npos) << tcp.output;
  const ClientResult c = ask(stub, Client::connected, conn);
  EXPECT_EQ(c.answer, kAnswer) << c.error;
  EXPECT_EQ(c.from, port53(stub));
  EXPECT_EQ(c.peer, port53(stub));
  const ClientResult un = ask(stub, Client::unconnected, unconn);
  EXPECT_EQ(un.answer, kAnswer) << un.error;
  EXPECT_EQ(un.from, port53(stub));
  ASSERT_TRUE(sync_logs()) << logs();
  for (const std::string& name : {u, t, conn, unconn}) EXPECT_EQ(at_proxy(name), 1u) << name << logs();
}

// glibc's resolver (connected UDP, A and AAAA in parallel for ahosts) with
// an IPv4 and an IPv6 resolver in resolv.conf.
TEST_P(Dns, GlibcGetentGoesThroughTheProxy) {
  ASSERT_NO_FATAL_FAILURE(init({"--dual-stack", "--dns-servers", pod_->peer_ipv4() + "," + pod_->peer_ipv6()}));
  std::vector<std::pair<std::string, std::string>> asked;  // name, what
  for (const std::string& resolver : {pod_->peer_ipv4(), pod_->peer_ipv6()}) {
    for (const char* db : {"hosts", "ahosts"}) {
      const std::string what = std::string("getent ") + db + " via " + resolver;
      const std::string name = fresh(db);
      const CommandResult r = getent(db, resolver, name);
      EXPECT_TRUE(r.ok()) << what << ": " << r.output;
      EXPECT_NE(r.output.find(kAnswer), std::string::npos) << what << ": " << r.output;
      asked.emplace_back(name, what);
    }
  }
  ASSERT_TRUE(sync_logs()) << logs();
  for (const auto& [name, what] : asked) EXPECT_GE(at_proxy(name), 1u) << what << ": not at the proxy" << logs();
}

// A connected UDP socket: getpeername and recvfrom say the resolver (not
// the proxy's listener), and read() gets the answer. IPv4, IPv6, and an
// AF_INET6 socket to a v4-mapped address.
TEST_P(Dns, ConnectedUdpClientSeesTheResolver) {
  ASSERT_NO_FATAL_FAILURE(init({"--dual-stack", "--dns-servers", pod_->peer_ipv4() + "," + pod_->peer_ipv6()}));
  std::vector<std::string> names;
  for (const std::string& server : {pod_->peer_ipv4(), pod_->peer_ipv6(), "::ffff:" + pod_->peer_ipv4()}) {
    const std::string name = fresh("connected");
    const ClientResult r = ask(server, Client::connected, name);
    EXPECT_EQ(r.error, "") << server;
    EXPECT_EQ(r.answer, kAnswer) << server;
    EXPECT_EQ(r.from, port53(server)) << "recvfrom's source, querying " << server;
    EXPECT_EQ(r.peer, port53(server)) << "getpeername, querying " << server;
    const std::string name_read = fresh("connected-read");
    const ClientResult rr = ask(server, Client::connected_read, name_read);
    EXPECT_EQ(rr.error, "") << server;
    EXPECT_EQ(rr.answer, kAnswer) << server;
    EXPECT_EQ(rr.peer, port53(server)) << "getpeername, querying " << server;
    names.insert(names.end(), {name, name_read});
  }
  ASSERT_TRUE(sync_logs()) << logs();
  for (const std::string& name : names) EXPECT_EQ(at_proxy(name), 1u) << name << logs();
}

// An unconnected UDP socket (sendto/recvfrom): the answer's source is the
// resolver. IPv4, IPv6, v4-mapped.
TEST_P(Dns, UnconnectedUdpClientSeesTheResolver) {
  ASSERT_NO_FATAL_FAILURE(init({"--dual-stack", "--dns-servers", pod_->peer_ipv4() + "," + pod_->peer_ipv6()}));
  std::vector<std::string> names;
  for (const std::string& server : {pod_->peer_ipv4(), pod_->peer_ipv6(), "::ffff:" + pod_->peer_ipv4()}) {
    const std::string name = fresh("unconnected");
    const ClientResult r = ask(server, Client::unconnected, name);
    EXPECT_EQ(r.error, "") << server;
    EXPECT_EQ(r.answer, kAnswer) << server;
    EXPECT_EQ(r.from, port53(server)) << "recvfrom's source, querying " << server;
    names.push_back(name);
  }
  ASSERT_TRUE(sync_logs()) << logs();
  for (const std::string& name : names) EXPECT_EQ(at_proxy(name), 1u) << name << logs();
}

// A TCP client: the connection reaches the proxy's DNS listener (not the
// outbound listener, 15001, where nothing listens here), and getpeername
// says the resolver. IPv4, IPv6, v4-mapped.
TEST_P(Dns, TcpClientSeesTheResolver) {
  ASSERT_NO_FATAL_FAILURE(init({"--dual-stack", "--dns-servers", pod_->peer_ipv4() + "," + pod_->peer_ipv6()}));
  std::vector<std::string> names;
  for (const std::string& server : {pod_->peer_ipv4(), pod_->peer_ipv6(), "::ffff:" + pod_->peer_ipv4()}) {
    const std::string name = fresh("tcp");
    const ClientResult r = ask(server, Client::tcp, name);
    EXPECT_EQ(r.error, "") << server;
    EXPECT_EQ(r.answer, kAnswer) << server;
    EXPECT_EQ(r.peer, port53(server)) << "getpeername, querying " << server;
    names.push_back(name);
  }
  ASSERT_TRUE(sync_logs()) << logs();
  for (const std::string& name : names) EXPECT_EQ(at_proxy(name), 1u) << name << logs();
}

// As under iptables REDIRECT, the proxy sees the pod's own address as the
// query's source, whichever client and transport asked.
TEST_P(Dns, ProxySeesThePodAddressAsSource) {
  ASSERT_NO_FATAL_FAILURE(init({"--dual-stack", "--dns-servers", pod_->peer_ipv4() + "," + pod_->peer_ipv6()}));
  std::vector<std::pair<std::string, std::string>> asked;  // name, expected source
  const std::string pod4 = pod_->pod_ipv4(), pod6 = pod_->pod_ipv6();
  for (Client how : {Client::connected, Client::unconnected, Client::tcp}) {
    for (const auto& [server, src] : std::vector<std::pair<std::string, std::string>>{
             {pod_->peer_ipv4(), pod4}, {pod_->peer_ipv6(), pod6}, {"::ffff:" + pod_->peer_ipv4(), pod4}}) {
      const std::string name = fresh(how == Client::connected ? "connected"
                                     : how == Client::tcp     ? "tcp"
                                                              : "unconnected");
      const ClientResult r = ask(server, how, name);
      EXPECT_EQ(r.answer, kAnswer) << server << ": " << r.error;
      asked.emplace_back(name, src);
    }
  }
  const std::string g = fresh("getent");
  const CommandResult r = getent("hosts", pod_->peer_ipv4(), g);
  EXPECT_NE(r.output.find(kAnswer), std::string::npos) << r.output;
  ASSERT_TRUE(sync_logs()) << logs();
  for (const auto& [name, src] : asked) EXPECT_EQ(at_proxy(name, src), 1u) << name << " not from " << src << logs();
  EXPECT_GE(at_proxy(g, pod4), 1u) << logs();
  EXPECT_EQ(at_proxy(g), at_proxy(g, pod4)) << logs();
}

// The same for sockets bound to the wildcard address (port 0) before they
// connect or send, as dig does: the kernel has given them a port, so only
// their address is open; under REDIRECT the route to the resolver picks
// the pod's address. The answers still come from the resolver.
// Under iptables every query from a socket bound to the wildcard first (as
// dig binds) reaches the proxy from the pod's address. Under eBPF a
// connected one reaches it from the listener's loopback address: such a
// socket can no longer take a source at connect (docs/known-differences.md,
// "DNS capture"); unconnected sends still carry the pod's address.
TEST_P(Dns, ProxySeesThePodAddressFromWildcardBoundSockets) {
  ASSERT_NO_FATAL_FAILURE(init({"--dual-stack", "--dns-servers", pod_->peer_ipv4() + "," + pod_->peer_ipv6()}));
  std::vector<std::pair<std::string, std::string>> asked;  // name, expected source
  const std::string pod4 = pod_->pod_ipv4(), pod6 = pod_->pod_ipv6();
  const bool ebpf = GetParam().iptables.empty();
  for (const auto& [server, src] :
       std::vector<std::pair<std::string, std::string>>{{pod_->peer_ipv4(), pod4}, {pod_->peer_ipv6(), pod6}}) {
    const std::string loopback = server == pod_->peer_ipv4() ? "127.0.0.1" : "::1";
    const std::string connected_src = ebpf ? loopback : src;
    for (bool tcp : {false, true}) {
      const std::string name = fresh(tcp ? "dig-tcp" : "dig-udp");
      const CommandResult r = dig(server, name, tcp);
      EXPECT_NE(r.output.find(kAnswer), std::string::npos) << r.output;
      asked.emplace_back(name, connected_src);
    }
    for (Client how : {Client::connected, Client::unconnected, Client::tcp}) {
      const std::string name = fresh(how == Client::connected ? "bound-connected"
                                     : how == Client::tcp     ? "bound-tcp"
                                                              : "bound-unconnected");
      const ClientResult r = ask(server, how, name, Identity::user(kAppId, kAppId), /*bind_first=*/true);
      EXPECT_EQ(r.answer, kAnswer) << server << ": " << r.error;
      if (how != Client::tcp) {
        EXPECT_EQ(r.from, port53(server)) << name;
      }
      if (how != Client::unconnected) {
        EXPECT_EQ(r.peer, port53(server)) << name;
      }
      asked.emplace_back(name, how == Client::unconnected ? src : connected_src);
    }
  }
  ASSERT_TRUE(sync_logs()) << logs();
  for (const auto& [name, src] : asked) EXPECT_EQ(at_proxy(name, src), 1u) << name << " not from " << src << logs();
}

// One unconnected socket with queries outstanding at two resolvers (both
// listed): under REDIRECT each answer comes from the resolver its query went
// to, as conntrack keeps the two exchanges apart; under eBPF both come from
// the resolver the socket addressed last (docs/known-differences.md, "DNS
// capture": one resolver per socket and listener address).
TEST_P(Dns, UnconnectedSocketAskingTwoResolvers) {
  const std::string stub = "127.0.0.53";
  ASSERT_NO_FATAL_FAILURE(init({"--dns-servers", pod_->peer_ipv4() + "," + stub}));
  const std::vector<std::string> servers = {pod_->peer_ipv4(), stub};
  const std::vector<std::string> names = {fresh("first"), fresh("second")};
  const std::string out = pod_->run_in_pod_capture([&] { return two_resolvers_one_socket(servers, names); },
                                                   Identity::user(kAppId, kAppId), std::chrono::milliseconds(10000));
  EXPECT_EQ(out.find("error="), std::string::npos) << out;
  const bool ebpf = GetParam().iptables.empty();
  EXPECT_NE(out.find("0=" + port53(servers[ebpf ? 1 : 0]) + "\n"), std::string::npos) << out;
  EXPECT_NE(out.find("1=" + port53(servers[1]) + "\n"), std::string::npos) << out;
  ASSERT_TRUE(sync_logs()) << logs();
  for (const std::string& name : names) EXPECT_EQ(at_proxy(name), 1u) << name << logs();
}

// After meshcap cleanup nothing of the capture is left, and queries go to
// the resolver directly again.
TEST_P(Dns, CleanupLeavesNothing) {
  ASSERT_NO_FATAL_FAILURE(init({"--dual-stack", "--dns-servers", pod_->peer_ipv4() + "," + pod_->peer_ipv6()}));
  const std::string before = fresh("captured");
  const CommandResult b = dig(pod_->peer_ipv4(), before);
  EXPECT_NE(b.output.find(kAnswer), std::string::npos) << b.output;
  ASSERT_TRUE(sync_logs()) << logs();
  ASSERT_EQ(at_proxy(before), 1u) << "not captured before cleanup" << logs();

  const CommandResult c = meshcap({"cleanup", "--name", name_});
  ASSERT_EQ(c.exit_code, 0) << c.output;
  inited_ = false;
  EXPECT_EQ(leftovers(), "");

  const std::string udp4 = fresh("udp"), tcp4 = fresh("tcp"), udp6 = fresh("udp6"), tcp6 = fresh("tcp6"),
                    conn = fresh("connected"), unconn = fresh("unconnected"), g = fresh("getent");
  for (const auto& [server, name, tcp] : std::vector<std::tuple<std::string, std::string, bool>>{
           {pod_->peer_ipv4(), udp4, false},
           {pod_->peer_ipv4(), tcp4, true},
           {pod_->peer_ipv6(), udp6, false},
           {pod_->peer_ipv6(), tcp6, true}}) {
    const CommandResult r = dig(server, name, tcp);
    EXPECT_NE(r.output.find(kAnswer), std::string::npos) << name << ": " << r.output;
  }
  const ClientResult cu = ask(pod_->peer_ipv4(), Client::connected, conn);
  EXPECT_EQ(cu.answer, kAnswer) << cu.error;
  const ClientResult uu = ask(pod_->peer_ipv4(), Client::unconnected, unconn);
  EXPECT_EQ(uu.answer, kAnswer) << uu.error;
  const CommandResult ge = getent("hosts", pod_->peer_ipv4(), g);
  EXPECT_NE(ge.output.find(kAnswer), std::string::npos) << ge.output;
  ASSERT_TRUE(sync_logs()) << logs();
  for (const std::string& name : {udp4, tcp4, udp6, tcp6, conn, unconn, g}) {
    EXPECT_EQ(at_proxy(name), 0u) << name << " was captured after cleanup" << logs();
    EXPECT_GE(at_upstream(name), 1u) << name << logs();
  }
  EXPECT_EQ(at_upstream(udp6, pod_->pod_ipv6()), 1u) << logs();
}

INSTANTIATE_TEST_SUITE_P(Modes, Dns, ::testing::ValuesIn(kModes), [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace meshcap::test
