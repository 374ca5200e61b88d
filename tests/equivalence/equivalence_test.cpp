// The equivalence suite: the same matrix of (istio flag set x traffic case)
// run for real in one throwaway pod under eight modes of the real `meshcap`
// binary -- `--mode ebpf` (with and without --accelerate), `--mode
// iptables` with the nft backend and with the legacy backend, `--mode auto`,
// and `--mode auto` with a run-time eBPF failure injected at the load, the
// cgroup attach and the sk_lookup attach -- checking connection by connection
// that every mode gives the outcome istio's rules define (reference_model.h)
// and therefore that the modes agree with each other:
//
//   1. where the connection landed: the proxy's outbound listener (15001),
//      its inbound listener (15006), or the real destination;
//   2. what the proxy reads with SO_ORIGINAL_DST (IP6T_SO_ORIGINAL_DST);
//   3. what the application sees: getpeername (the address it dialed) and
//      getsockname (the local IP it would have had without capture);
//   4. that the round trip worked, and who the listener saw as its peer.
//
// DNS (--redirect-dns, --capture-all-dns, --dns-servers): TCP and UDP to
// port 53 from every identity, both families and v4-mapped, to the peer, to
// the pod's own addresses and to loopback. The proxy's DNS listener is
// bound as istio's agent binds it (127.0.0.1:15053 and [::1]:15053, UDP and
// TCP, as UID/GID 1337). For UDP, connected (connect, send, recvfrom) and
// unconnected (sendto, recvfrom) sockets; the outcome is where the datagram
// landed, the address it was sent to there (IP_PKTINFO), the source of the
// answer the application reads (it must be the address it sent to), and who
// the listener saw as the sender (under REDIRECT: the pod's own address,
// the application's port).
//
// Flag sets: named ones covering every row of shared/CAPTURE-SEMANTICS.md,
// plus random combinations from a seed that is printed; replay with
// MESHCAP_EQ_SEED=<seed>. After each (flag set, mode) the capture is removed,
// the pod is checked to hold nothing of meshcap, and a sample of the cases
// must go direct again.
//
// Differences that cannot be avoided are listed in docs/known-differences.md
// and excluded here by name (kKnownDifferences), never silently.
//
// Environment (all optional):
//   MESHCAP_EQ_SEED=N       seed of the random flag sets (printed every run)
//   MESHCAP_EQ_RANDOM=N     how many random flag sets (default 10)
//   MESHCAP_EQ_MODES=a,b    only these modes, in this order (ebpf, ebpf-accel, auto, iptables-nft,
//                           iptables-legacy, auto-fault-load, auto-fault-attach,
//                           auto-fault-sk_lookup; the default order)
//   MESHCAP_EQ_SETS=a,b     only the flag sets with these names
//   MESHCAP_EQ_VERBOSE=1    print every case's outcome
#include <bpf/bpf.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "equivalence/reference_model.h"
#include "equivalence/tagged_server.h"
#include "kernel/capture_fixture.h"

namespace meshcap::test::eq {
namespace {

using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------
// Known, documented differences (docs/known-differences.md). Each one names
// the outcome field it exempts and the cases it applies to.

struct KnownDifference {
  const char* name;
  const char* field;
  const char* reason;
};

const KnownDifference kSteeredInboundLocal = {
    "inbound-proxy-local-address", "listener local address",
    "for a connection from outside the pod captured to a proxy listener, eBPF (sk_lookup) hands the "
    "connection to the listener unchanged, so the proxy's local address is the original destination; "
    "iptables REDIRECT rewrites it to the pod's address and the listener's port. The proxy reads "
    "SO_ORIGINAL_DST, which is compared."};

const KnownDifference kUncapturedOrigDst = {
    "orig-dst-of-uncaptured-connections", "SO_ORIGINAL_DST",
    "on a socket that was not redirected (the real destination's accepted socket), iptables mode answers "
    "from conntrack with the socket's own local address whenever conntrack tracks the pod's traffic; "
    "eBPF mode keeps no conntrack entry and the kernel says ENOENT. Both mean \"not redirected\" to a proxy; "
    "SO_ORIGINAL_DST is compared on the proxy's listeners only."};

const KnownDifference kNatSourcePortRemap = {
    "nat-source-port-remap", "listener's peer (port only, iptables-NAT'd connections only)",
    "every connection REDIRECTed to a listener has the reply tuple (listener -> client ip:port); when a "
    "client port is reused while conntrack still holds an older NAT'd connection with that reply tuple "
    "(TIME_WAIT), netfilter's clash resolution gives the new connection another source port, so the proxy "
    "sees the client's IP with a port the application's socket does not have. eBPF rewrites the "
    "destination before connect() picks the port, so it never remaps. Istio's iptables behave the same. "
    "The same holds for DNS over UDP: every query REDIRECTed to the DNS listener has the reply tuple "
    "(listener -> client ip:port), and conntrack keeps an answered exchange for 30 s or more."};

const std::vector<const KnownDifference*> kKnownDifferences = {&kSteeredInboundLocal, &kUncapturedOrigDst,
                                                               &kNatSourcePortRemap};

/// The observed "listener's peer" value for a remapped source port.
const std::string kSameIpOtherPort = "= app's IP, another port";

// ---------------------------------------------------------------------------
// Small helpers.

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

std::vector<std::string> split(const std::string& s, char sep = ',') {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, sep))
    if (!cur.empty()) out.push_back(cur);
  return out;
}

template <typename T>
std::string join(const std::vector<T>& v, const char* sep = ",") {
  std::ostringstream o;
  for (size_t i = 0; i < v.size(); ++i) o << (i ? sep : "") << v[i];
  return o.str();
}

/// "[::ffff:a.b.c.d]:p" -> "a.b.c.d:p", "::ffff:a.b.c.d" -> "a.b.c.d": a
/// v4-mapped address is the same IPv4 endpoint whichever socket family shows it.
std::string normalize(const std::string& s) {
  if (s.rfind("[::ffff:", 0) == 0 && s.find('.') != std::string::npos) {
    const auto close = s.find(']');
    return s.substr(8, close - 8) + s.substr(close + 1);
  }
  if (s.rfind("::ffff:", 0) == 0 && s.find('.') != std::string::npos) return s.substr(7);
  return s;
}

std::string errno_name(int e) {
  switch (e) {
    case ECONNREFUSED:
      return "ECONNREFUSED";
    case ETIMEDOUT:
      return "ETIMEDOUT";
    case ECONNRESET:
      return "ECONNRESET";
    case ENOENT:
      return "ENOENT";
    case ENOPROTOOPT:
      return "ENOPROTOOPT";
    case EBADMSG:
      return "EBADMSG (wrong echo)";
    default:
      return "errno " + std::to_string(e) + " (" + std::strerror(e) + ")";
  }
}

// ---------------------------------------------------------------------------
// The pod's addresses, and symbolic CIDRs for flag sets (so a seed means the
// same flags on any pod subnet).

struct Addrs {
  std::string pod4, pod6, peer4, peer4b, peer6, peer6b, subnet4, subnet6, veth;
};

enum class Sym { peer4, peer4b, subnet4, peer6, peer6b, subnet6 };
const std::vector<Sym> kAllSyms = {Sym::peer4, Sym::peer4b, Sym::subnet4, Sym::peer6, Sym::peer6b, Sym::subnet6};

std::string cidr_of(Sym s, const Addrs& a) {
  switch (s) {
    case Sym::peer4:
      return a.peer4 + "/32";
    case Sym::peer4b:
      return a.peer4b + "/32";
    case Sym::subnet4:
      return a.subnet4;
    case Sym::peer6:
      return a.peer6 + "/128";
    case Sym::peer6b:
      return a.peer6b + "/128";
    default:
      return a.subnet6;
  }
}

// ---------------------------------------------------------------------------
// Flag sets.

const std::vector<uint16_t> kPorts = {8080, 8081, 8082, 8083, 8084, 15008, 15020};

struct FlagSet {
  std::string name;
  CaptureFlags flags;
  std::vector<std::string> args;  ///< istio flags for meshcap init
  std::vector<std::string> env;   ///< "NAME=value" for istio's env-only settings
  /// Modes that must refuse this flag set (exit 2, nothing applied) because
  /// they cannot honour a flag: a refusal by design, not a traffic difference.
  std::vector<std::string> refused_by;
  std::string shown() const {
    std::string s;
    for (const auto& e : env) s += e + " ";
    for (const auto& a : args) s += (a.empty() ? "''" : a.find('*') != std::string::npos ? "'" + a + "'" : a) + " ";
    return s;
  }
};

FlagSet render(std::string name, CaptureFlags f, const Addrs& a) {
  FlagSet fs;
  fs.name = std::move(name);
  const std::string b = f.inbound == CaptureFlags::Inbound::all    ? "*"
                        : f.inbound == CaptureFlags::Inbound::list ? join(f.in_ports)
                                                                   : "";
  fs.args = {"-p", std::to_string(f.proxy_port),
             "-z", std::to_string(f.inbound_port),
             "-e", std::to_string(f.tunnel_port),
             "-u", join(f.uids),
             "-g", join(f.gids),
             "-m", "REDIRECT",
             "-i", f.out_include_all ? "*" : join(f.out_include),
             "-x", join(f.out_exclude),
             "-b", b,
             "-d", join(f.in_ports_exclude),
             "-o", join(f.out_ports_exclude),
             "-q", join(f.out_ports_include)};
  if (f.exclude_pod_iface) fs.args.insert(fs.args.end(), {"-c", a.veth});
  if (f.virt_pod_iface) fs.args.insert(fs.args.end(), {"-k", a.veth});
  if (f.drop_invalid) {
    fs.args.push_back("--drop-invalid");
    fs.refused_by.push_back("ebpf");
    fs.refused_by.push_back("ebpf-accel");
    fs.refused_by.push_back("node");
  }
  if (f.redirect_dns) {
    fs.args.push_back("--redirect-dns");
    if (f.capture_all_dns) fs.args.push_back("--capture-all-dns");
    // Always given, so that meshcap never reads the machine's resolv.conf.
    fs.args.insert(fs.args.end(), {"--dns-servers", join(f.dns_servers)});
  }
  fs.args.push_back("--dual-stack");
  if (f.groups == CaptureFlags::Groups::include)
    fs.env.push_back("ISTIO_OUTBOUND_OWNER_GROUPS=" + join(f.owner_groups));
  if (f.groups == CaptureFlags::Groups::exclude)
    fs.env.push_back("ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE=" + join(f.owner_groups));
  if (f.loopback4 != "127.0.0.1/32") fs.env.push_back("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR=" + f.loopback4);
  fs.flags = std::move(f);
  return fs;
}

/// istio-init's own arguments: -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*'
/// -x '' -b '*' -d 15090,15021,15020.
CaptureFlags istio_init() {
  CaptureFlags f;
  f.out_include_all = true;
  f.inbound = CaptureFlags::Inbound::all;
  f.in_ports_exclude = {15090, 15021, 15020};
  return f;
}

std::vector<FlagSet> named_flag_sets(const Addrs& a) {
  std::vector<FlagSet> out;
  auto add = [&](const std::string& name, auto&& edit) {
    CaptureFlags f = istio_init();
    edit(f);
    out.push_back(render(name, f, a));
  };
  add("istio-init", [](CaptureFlags&) {});
  add("exclude-ports-and-cidrs", [&](CaptureFlags& f) {
    f.out_exclude = {cidr_of(Sym::peer4b, a), cidr_of(Sym::peer6, a)};
    f.out_ports_exclude = {8081, 15008};
    f.in_ports_exclude = {8083, 15020};
  });
  add("include-cidrs-and-ports", [&](CaptureFlags& f) {
    f.out_include_all = false;
    f.out_include = {cidr_of(Sym::peer4, a), cidr_of(Sym::peer6b, a)};
    f.out_ports_include = {8082};
    f.inbound = CaptureFlags::Inbound::list;
    f.in_ports = {8084, 8080};
  });
  add("exclude-inside-include", [&](CaptureFlags& f) {
    f.out_include_all = false;
    f.out_include = {cidr_of(Sym::subnet4, a), cidr_of(Sym::subnet6, a)};
    f.out_exclude = {cidr_of(Sym::peer4, a), cidr_of(Sym::peer6b, a)};
    f.out_ports_include = {8083};
    f.out_ports_exclude = {8082};
  });
  add("no-outbound-inbound-list", [&](CaptureFlags& f) {
    f.out_include_all = false;
    f.inbound = CaptureFlags::Inbound::list;
    f.in_ports = {8084, 15008};
  });
  add("outbound-only", [&](CaptureFlags& f) {
    f.inbound = CaptureFlags::Inbound::none;
    f.in_ports_exclude.clear();
  });
  add("several-uids-and-gids", [&](CaptureFlags& f) {
    f.uids = {1337, 1000};
    f.gids = {1500};  // GID 1337 is not exempt here
  });
  add("exclude-interface", [&](CaptureFlags& f) { f.exclude_pod_iface = true; });
  add("virtual-interface", [&](CaptureFlags& f) {
    f.virt_pod_iface = true;
    f.inbound = CaptureFlags::Inbound::list;
    f.in_ports = {8084};
  });
  add("virtual-interface-cidr", [&](CaptureFlags& f) {
    f.virt_pod_iface = true;
    f.out_include_all = false;
    f.out_include = {cidr_of(Sym::subnet4, a), cidr_of(Sym::peer6, a)};
  });
  add("tunnel-port", [&](CaptureFlags& f) { f.tunnel_port = 8081; });
  add("owner-groups-exclude", [&](CaptureFlags& f) {
    f.groups = CaptureFlags::Groups::exclude;
    f.owner_groups = {1000};
  });
  add("owner-groups-include", [&](CaptureFlags& f) {
    f.groups = CaptureFlags::Groups::include;
    f.owner_groups = {2000, 1337};
  });
  add("loopback-cidr-8", [&](CaptureFlags& f) { f.loopback4 = "127.0.0.1/8"; });
  // -i listing a loopback range: istio drops the "-o lo ! --uid-owner" RETURN
  // rules, so loopback destinations other than 127.0.0.1 go to the proxy.
  add("include-loopback-range", [&](CaptureFlags& f) {
    f.out_include_all = false;
    f.out_include = {"127.0.0.0/8", cidr_of(Sym::peer6, a)};
  });
  // auto: eBPF outbound, iptables inbound (conntrack active in the pod).
  add("drop-invalid-split-plan", [&](CaptureFlags& f) { f.drop_invalid = true; });
  // DNS: the pod's resolvers listed (one per family; the peer's second
  // addresses and loopback are not resolvers), or all of port 53.
  add("dns-listed", [&](CaptureFlags& f) {
    f.redirect_dns = true;
    f.dns_servers = {a.peer4, a.peer6};
  });
  add("dns-capture-all", [&](CaptureFlags& f) {
    f.redirect_dns = true;
    f.capture_all_dns = true;
  });
  // As the dns-uid-gid golden: several UIDs and GIDs, a loopback resolver
  // (systemd-resolved's) and an IPv6 one. GID 1337 alone is still exempt
  // from the owner RETURN but not from the GID in-redirect rule.
  add("dns-uid-gid", [&](CaptureFlags& f) {
    f.redirect_dns = true;
    f.dns_servers = {"127.0.0.53", a.peer6b};
    f.uids = {1500, 1337};
    f.gids = {2000, 1337};
  });
  // -o 53 comes first in ISTIO_OUTPUT, for tcp and udp: no DNS is captured.
  add("dns-exclude-port-53", [&](CaptureFlags& f) {
    f.redirect_dns = true;
    f.capture_all_dns = true;
    f.out_ports_exclude = {53, 8081};
  });
  // --redirect-dns with neither --capture-all-dns nor resolvers: DNS capture
  // is off (istio warns), and the owner rules are the ones without DNS.
  add("dns-no-resolvers", [&](CaptureFlags& f) { f.redirect_dns = true; });
  // Only an IPv4 resolver: IPv6 has no jump to ISTIO_OUTPUT_DNS.
  add("dns-v4-resolver-include-list", [&](CaptureFlags& f) {
    f.redirect_dns = true;
    f.dns_servers = {a.peer4b};
    f.out_include_all = false;
    f.out_include = {cidr_of(Sym::subnet4, a)};
    f.out_ports_include = {53};
    f.inbound = CaptureFlags::Inbound::list;
    f.in_ports = {53, 8080};
  });
  // auto: eBPF outbound (DNS included), iptables inbound. The iptables part
  // holds the owner rules' inbound redirect, which must keep its DNS variant.
  add("dns-drop-invalid-split-plan", [&](CaptureFlags& f) {
    f.redirect_dns = true;
    f.capture_all_dns = true;
    f.drop_invalid = true;
  });
  return out;
}

/// Random flag combinations. Only the seed matters: addresses are symbolic.
std::vector<FlagSet> random_flag_sets(uint64_t seed, int count, const Addrs& a) {
  std::mt19937_64 rng(seed);
  auto pct = [&](int p) { return static_cast<int>(rng() % 100) < p; };
  auto pick = [&](size_t n) { return static_cast<size_t>(rng() % n); };
  auto some_ports = [&](int max) {
    std::vector<uint16_t> out;
    const int n = 1 + static_cast<int>(pick(static_cast<size_t>(max)));
    for (int i = 0; i < n; ++i) {
      uint16_t p = kPorts[pick(kPorts.size())];
      if (!std::count(out.begin(), out.end(), p)) out.push_back(p);
    }
    return out;
  };
  auto some_cidrs = [&](int max) {
    std::vector<std::string> out;
    const int n = 1 + static_cast<int>(pick(static_cast<size_t>(max)));
    for (int i = 0; i < n; ++i) {
      std::string c = cidr_of(kAllSyms[pick(kAllSyms.size())], a);
      if (!std::count(out.begin(), out.end(), c)) out.push_back(c);
    }
    return out;
  };
  std::vector<FlagSet> out;
  for (int i = 0; i < count; ++i) {
    CaptureFlags f;
    const int inc = static_cast<int>(pick(100));
    if (inc < 40) {
      f.out_include_all = true;
    } else if (inc >= 55) {
      f.out_include = some_cidrs(3);
    }
    if (pct(50)) f.out_exclude = some_cidrs(2);
    if (pct(40)) f.out_ports_exclude = some_ports(2);
    if (pct(35)) f.out_ports_include = some_ports(2);
    const int in = static_cast<int>(pick(100));
    if (in < 40) {
      f.inbound = CaptureFlags::Inbound::all;
      f.in_ports_exclude = pct(40)   ? std::vector<uint16_t>{15090, 15021, 15020}
                           : pct(50) ? some_ports(2)
                                     : std::vector<uint16_t>{};
    } else if (in < 75) {
      f.inbound = CaptureFlags::Inbound::list;
      f.in_ports = some_ports(3);
    }
    const int u = static_cast<int>(pick(100));
    f.uids = u < 60   ? std::vector<uint32_t>{1337}
             : u < 80 ? std::vector<uint32_t>{1337, 1000}
                      : std::vector<uint32_t>{1500, 1337};
    const int g = static_cast<int>(pick(100));
    f.gids = g < 60   ? std::vector<uint32_t>{1337}
             : g < 80 ? std::vector<uint32_t>{2000}
                      : std::vector<uint32_t>{1000, 1337};
    if (pct(15)) f.tunnel_port = 8081;
    const int ifc = static_cast<int>(pick(100));
    if (ifc < 10)
      f.exclude_pod_iface = true;
    else if (ifc < 22)
      f.virt_pod_iface = true;
    const int grp = static_cast<int>(pick(100));
    if (grp < 12) {
      f.groups = CaptureFlags::Groups::exclude;
      f.owner_groups = {pct(50) ? 1000u : 1337u};
    } else if (grp < 24) {
      f.groups = CaptureFlags::Groups::include;
      f.owner_groups = pct(50) ? std::vector<uint32_t>{1000} : std::vector<uint32_t>{2000, 1337};
    }
    if (pct(20)) f.loopback4 = "127.0.0.1/8";
    if (pct(10)) f.drop_invalid = true;
    if (pct(40)) {
      f.redirect_dns = true;
      f.capture_all_dns = pct(40);
      const std::vector<std::string> resolvers = {a.peer4, a.peer4b, a.peer6, a.peer6b, "127.0.0.53", "::1", a.pod4};
      const int n = static_cast<int>(pick(4));  // 0 to 3; none without capture-all turns DNS capture off
      for (int k = 0; k < n; ++k) {
        const std::string& r = resolvers[pick(resolvers.size())];
        if (!std::count(f.dns_servers.begin(), f.dns_servers.end(), r)) f.dns_servers.push_back(r);
      }
      if (pct(12)) f.out_ports_exclude.push_back(53);
      if (pct(12)) f.out_ports_include.push_back(53);
    }
    out.push_back(render("random-" + std::to_string(i), f, a));
  }
  return out;
}

// ---------------------------------------------------------------------------
// Traffic cases.

struct Who {
  const char* name;
  uint32_t uid, gid;
};
const Who kApp{"app", 1000, 1000};          // an application
const Who kUid1337{"uid1337", 1337, 1000};  // UID 1337 alone
const Who kGid1337{"gid1337", 1000, 1337};  // GID 1337 alone
const Who kProxy{"proxy", 1337, 1337};      // the sidecar's identity
const std::vector<const Who*> kWhos = {&kApp, &kUid1337, &kGid1337, &kProxy};

struct Case {
  std::string name;        ///< stable and symbolic: "out/app/peer4:8080"
  bool from_peer = false;  ///< a connection arriving from outside the pod
  bool udp = false;
  bool unconnected = false;  ///< UDP by sendto() on an unconnected socket
  const Who* who = nullptr;  ///< the client's credentials (pod side)
  std::string dst_ip;        ///< as dialed
  uint16_t port = 0;
  std::string bind_ip;      ///< bind() before connect()
  std::string natural_src;  ///< the local IP the kernel picks without capture (getsockname)
  std::string wire_src;     ///< unconnected: the source IP the kernel picks for the datagram
  bool via_lo = false;
};

std::vector<Case> build_cases(const Addrs& a) {
  struct Dst {
    std::string sym, ip, natural_src;
    bool via_lo;
  };
  const std::vector<Dst> d = {{"peer4", a.peer4, a.pod4, false},
                              {"peer4b", a.peer4b, a.pod4, false},
                              {"peer6", a.peer6, a.pod6, false},
                              {"peer6b", a.peer6b, a.pod6, false},
                              {"mapped-peer4", "::ffff:" + a.peer4, "::ffff:" + a.pod4, false},
                              {"pod4", a.pod4, a.pod4, true},
                              {"pod6", a.pod6, a.pod6, true},
                              {"127.0.0.1", "127.0.0.1", "127.0.0.1", true},
                              {"127.0.0.2", "127.0.0.2", "127.0.0.1", true},
                              {"::1", "::1", "::1", true}};
  // (destination index, port) per pod-side identity.
  const std::vector<std::pair<size_t, uint16_t>> out_targets = {
      {0, 8080},  {0, 8081}, {0, 8082},  {0, 8083},  {0, 8084}, {0, 15008}, {1, 8080}, {1, 8082},
      {2, 8080},  {2, 8081}, {2, 8082},  {2, 15008}, {3, 8080}, {4, 8080},  {5, 8080}, {5, 8081},
      {5, 15008}, {6, 8080}, {6, 15008}, {7, 8080},  {8, 8080}, {9, 8080}};
  std::vector<Case> cases;
  for (const Who* w : kWhos) {
    for (auto [i, port] : out_targets) {
      Case c;
      c.name = std::string("out/") + w->name + "/" + d[i].sym + ":" + std::to_string(port);
      c.who = w;
      c.dst_ip = d[i].ip;
      c.port = port;
      c.natural_src = d[i].natural_src;
      c.via_lo = d[i].via_lo;
      cases.push_back(c);
    }
    // The proxy's inbound passthrough: bind 127.0.0.6 before connecting.
    for (auto [i, port] : std::vector<std::pair<size_t, uint16_t>>{{5, 8080}, {5, 8081}, {7, 8080}}) {
      Case c;
      c.name = std::string("out/") + w->name + "/src-127.0.0.6->" + d[i].sym + ":" + std::to_string(port);
      c.who = w;
      c.dst_ip = d[i].ip;
      c.port = port;
      c.bind_ip = "127.0.0.6";
      c.natural_src = "127.0.0.6";
      c.via_lo = true;
      cases.push_back(c);
    }
  }
  // From outside the pod, to each port, both families.
  for (const auto& [sym, ip, src] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"pod4", a.pod4, a.peer4}, {"pod6", a.pod6, a.peer6}}) {
    for (uint16_t port : kPorts) {
      Case c;
      c.name = "in/" + sym + ":" + std::to_string(port);
      c.from_peer = true;
      c.dst_ip = ip;
      c.port = port;
      c.natural_src = src;
      cases.push_back(c);
    }
  }
  // UDP flows: never captured (O8), whatever the ports.
  for (auto [i, port] : std::vector<std::pair<size_t, uint16_t>>{{0, 8080}, {0, 53}, {2, 8082}, {5, 8080}}) {
    Case c;
    c.name = "udp/app/" + d[i].sym + ":" + std::to_string(port);
    c.udp = true;
    c.who = &kApp;
    c.dst_ip = d[i].ip;
    c.port = port;
    c.natural_src = d[i].natural_src;
    c.via_lo = d[i].via_lo;
    cases.push_back(c);
  }
  for (const auto& [sym, ip, src] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"pod4", a.pod4, a.peer4}, {"pod6", a.pod6, a.peer6}}) {
    for (uint16_t port : {uint16_t(8080), uint16_t(53)}) {
      Case c;
      c.name = "udp/in/" + sym + ":" + std::to_string(port);
      c.udp = true;
      c.from_peer = true;
      c.dst_ip = ip;
      c.port = port;
      c.natural_src = src;
      cases.push_back(c);
    }
    // TCP DNS from outside: inbound capture knows nothing of DNS.
    Case c;
    c.name = "in/" + sym + ":53";
    c.from_peer = true;
    c.dst_ip = ip;
    c.port = 53;
    c.natural_src = src;
    cases.push_back(c);
  }
  // DNS from inside the pod, from every identity: TCP, connected UDP and
  // unconnected UDP to port 53 of the peer (the listed resolvers and other
  // addresses), of the pod itself and of loopback (127.0.0.53 is
  // systemd-resolved's stub).
  const std::vector<Dst> dns = {d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], {"127.0.0.53", "127.0.0.53", "127.0.0.1", true},
                                d[9]};
  const std::set<std::string> sendto_syms = {"peer4", "peer6b", "mapped-peer4", "pod6", "127.0.0.53"};
  for (const Who* w : kWhos) {
    for (const auto& t : dns) {
      for (const char* kind : {"dns-tcp", "dns-udp", "dns-udp-sendto"}) {
        Case c;
        c.udp = kind != std::string("dns-tcp");
        c.unconnected = kind == std::string("dns-udp-sendto");
        if (c.unconnected && !sendto_syms.count(t.sym)) continue;
        c.name = std::string(kind) + "/" + w->name + "/" + t.sym + ":53";
        c.who = w;
        c.dst_ip = t.ip;
        c.port = 53;
        c.via_lo = t.via_lo;
        if (c.unconnected) {
          // getsockname of a socket that only sent: the wildcard address.
          c.natural_src = t.ip.find(':') == std::string::npos ? "0.0.0.0" : "::";
          c.wire_src = t.natural_src;
        } else {
          c.natural_src = t.natural_src;
        }
        cases.push_back(c);
      }
    }
  }
  return cases;
}

// ---------------------------------------------------------------------------
// Outcomes: observed per mode, expected from the model.

const char* const kFields[] = {"landed on",       "listener local address", "SO_ORIGINAL_DST",
                               "app getpeername", "app getsockname IP",     "listener's peer",
                               "answer's source"};
constexpr size_t kNumFields = sizeof(kFields) / sizeof(kFields[0]);

struct Outcome {
  std::string v[kNumFields];
  const KnownDifference* excluded[kNumFields] = {};  ///< expected side only
  std::string note;  ///< observed side, not compared: where a failed connection stopped
  std::string str() const {
    std::string s;
    for (size_t i = 0; i < kNumFields; ++i)
      s += std::string(i ? "; " : "") + kFields[i] + " " +
           (excluded[i] ? "(" + std::string(excluded[i]->name) + ")" : v[i]);
    return s;
  }
};

std::string endpoint_of(const std::string& ip, uint16_t port) { return normalize(endpoint(ip, port)); }

Outcome expected_outcome(const CaptureFlags* f, const Case& c) {
  Landing l = Landing::destination;
  const IpAddr dst = IpAddr::parse(c.dst_ip);
  if (f && !(c.udp && c.from_peer)) {  // inbound UDP: never captured
    if (c.from_peer) {
      l = decide_inbound(*f, InboundConn{dst, c.port});
    } else {
      OutboundConn oc;
      oc.udp = c.udp;
      oc.dst = dst;
      oc.dport = c.port;
      if (!c.bind_ip.empty()) oc.bound_src = IpAddr::parse(c.bind_ip);
      oc.uid = c.who->uid;
      oc.gid = c.who->gid;
      oc.via_lo = c.via_lo;
      l = decide_outbound(*f, oc);
    }
  }
  Outcome o;
  o.v[0] = to_string(l);
  const bool v4 = dst.family == AF_INET;
  if (l == Landing::destination) {
    o.v[1] = endpoint_of(c.dst_ip, c.port);  // UDP: the datagram's destination
    if (c.udp)
      o.v[2] = "n/a (udp)";
    else
      o.excluded[2] = &kUncapturedOrigDst;
  } else {
    const uint16_t port = l == Landing::outbound_listener  ? f->proxy_port
                          : l == Landing::inbound_listener ? f->inbound_port
                                                           : CaptureFlags::kDnsListenerPort;
    if (c.from_peer) {
      o.excluded[1] = &kSteeredInboundLocal;
    } else {
      o.v[1] = endpoint(v4 ? "127.0.0.1" : "::1", port);
    }
    o.v[2] = c.udp ? "n/a (udp)" : endpoint_of(c.dst_ip, c.port);
  }
  o.v[3] = c.unconnected ? "n/a (unconnected)" : endpoint_of(c.dst_ip, c.port);
  o.v[4] = normalize(c.natural_src);
  o.v[5] = c.unconnected ? "= app's port, from " + normalize(c.wire_src) : "= app's getsockname";
  // UDP: the source of the answer must be the address the application sent
  // to (a resolver drops other answers).
  o.v[6] = c.udp ? endpoint_of(c.dst_ip, c.port) : "n/a (tcp)";
  return o;
}

struct ClientResult {
  int error = -1;
  std::string local, peer;
  std::string reply_src;  ///< UDP: the answer's source, as recvfrom() gives it
  std::string detail;     ///< TCP, on failure: the step that failed and the socket's state then
};

std::string port_of(const std::string& ep) { return ep.substr(ep.rfind(':') + 1); }

Outcome observed_outcome(const ClientResult& r, const std::vector<TagRecord>& recs, const CaptureFlags* f,
                         const Case& c) {
  Outcome o;
  const uint16_t proxy_port = f ? f->proxy_port : 15001, inbound_port = f ? f->inbound_port : 15006;
  o.v[3] = c.unconnected ? "n/a (unconnected)" : normalize(r.peer);
  o.v[4] = normalize(host_of(r.local));
  o.v[6] = !c.udp ? "n/a (tcp)" : r.reply_src.empty() ? "no answer" : normalize(r.reply_src);
  if (recs.size() > 1) {
    o.v[0] = "recorded " + std::to_string(recs.size()) + " times";
    return o;
  }
  if (recs.empty()) {
    o.v[0] = r.error ? "failed: " + errno_name(r.error) : "no listener recorded it";
    o.note = r.detail;
    return o;
  }
  const TagRecord& rec = recs[0];
  const bool proxy = rec.server == "proxy";
  if (proxy && rec.listener.port == proxy_port)
    o.v[0] = to_string(Landing::outbound_listener);
  else if (proxy && rec.listener.port == inbound_port)
    o.v[0] = to_string(Landing::inbound_listener);
  else if (proxy && rec.listener.port == CaptureFlags::kDnsListenerPort)
    o.v[0] = to_string(Landing::dns_listener);
  else if (!proxy)
    o.v[0] = to_string(Landing::destination);
  else
    o.v[0] = "proxy listener " + rec.listener.str();
  if (r.error) o.v[0] += " (then failed: " + errno_name(r.error) + ")";
  o.v[1] = rec.local.empty() ? "unknown" : normalize(rec.local);
  if (rec.listener.udp)
    o.v[2] = "n/a (udp)";
  else
    o.v[2] = rec.orig_ok ? normalize(rec.orig_dst) : "failed: " + errno_name(rec.orig_errno);
  if (normalize(rec.peer) == normalize(r.local))
    o.v[5] = "= app's getsockname";
  else if (c.unconnected && !r.local.empty() && port_of(rec.peer) == port_of(r.local))
    o.v[5] = "= app's port, from " + host_of(normalize(rec.peer));
  else if (c.unconnected && host_of(normalize(rec.peer)) == normalize(c.wire_src))
    o.v[5] = kSameIpOtherPort + " (" + normalize(rec.peer) + " vs app's port " + port_of(r.local) + ")";
  else if (host_of(normalize(rec.peer)) == host_of(normalize(r.local)))
    o.v[5] = kSameIpOtherPort + " (" + normalize(rec.peer) + " vs " + normalize(r.local) + ")";
  else
    o.v[5] = normalize(rec.peer);
  return o;
}

// ---------------------------------------------------------------------------
// Clients: one forked child per identity runs a batch of connections.

struct ClientSpec {
  std::string tag;
  bool udp;
  std::string ip;
  uint16_t port;
  std::string bind_ip;
  bool unconnected = false;
};

constexpr Millis kConnTimeout{2000};

/// One datagram and its answer: connect() + send(), or sendto() on an
/// unconnected socket (what glibc's resolver does first); the answer is read
/// with recvfrom() to learn its source.
ClientResult udp_exchange(const ClientSpec& s) {
  ClientResult r;
  socklen_t len = 0;
  sockaddr_storage ss = make_sockaddr(s.ip, s.port, &len);
  UniqueFd fd(::socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd || (!s.unconnected && ::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0)) {
    r.error = errno;
    return r;
  }
  const std::string msg = s.tag + "\n";
  const ssize_t sent = s.unconnected
                           ? ::sendto(fd.get(), msg.data(), msg.size(), 0, reinterpret_cast<sockaddr*>(&ss), len)
                           : ::send(fd.get(), msg.data(), msg.size(), 0);
  const int send_errno = errno;
  r.local = getsockname_str(fd.get());
  if (!s.unconnected) r.peer = getpeername_str(fd.get());
  if (sent != static_cast<ssize_t>(msg.size())) {
    r.error = send_errno;
    return r;
  }
  pollfd p{fd.get(), POLLIN, 0};
  char buf[256];
  if (::poll(&p, 1, static_cast<int>(kConnTimeout.count())) <= 0) {
    r.error = ETIMEDOUT;
    return r;
  }
  sockaddr_storage from{};
  socklen_t flen = sizeof from;
  const ssize_t n = ::recvfrom(fd.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &flen);
  r.error = n < 0 ? errno : std::string(buf, static_cast<size_t>(n)) == msg ? 0 : EBADMSG;
  if (n >= 0) r.reply_src = format_sockaddr(reinterpret_cast<sockaddr*>(&from), flen);
  return r;
}

std::string run_batch(const std::vector<ClientSpec>& specs) {
  std::string out;
  for (const auto& s : specs) {
    ClientResult r;
    if (s.udp) {
      r = udp_exchange(s);
    } else {
      ConnectOptions opt;
      opt.bind_ip = s.bind_ip;
      RoundTrip rt = tcp_roundtrip(s.ip, s.port, s.tag + "\n", kConnTimeout, opt);
      r.error = rt.error;
      r.local = rt.local;
      r.peer = rt.peer;
      r.detail = rt.detail;
    }
    out += s.tag + " " + std::to_string(r.error) + " " + (r.local.empty() ? "-" : r.local) + " " +
           (r.peer.empty() ? "-" : r.peer) + " " + (r.reply_src.empty() ? "-" : r.reply_src);
    if (!r.detail.empty()) out += " " + r.detail;  // the rest of the line
    out += "\n";
  }
  return out;
}

std::map<std::string, ClientResult> parse_batch(const std::string& text) {
  std::map<std::string, ClientResult> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream w(line);
    std::string tag, local, peer, reply_src;
    ClientResult r;
    if (!(w >> tag >> r.error >> local >> peer >> reply_src)) continue;
    std::getline(w >> std::ws, r.detail);
    r.local = local == "-" ? "" : local;
    r.peer = peer == "-" ? "" : peer;
    r.reply_src = reply_src == "-" ? "" : reply_src;
    out[tag] = r;
  }
  return out;
}

// ---------------------------------------------------------------------------
// The fixture: one pod, recording listeners everywhere, the meshcap binary.

struct Mode {
  std::string name;
  std::vector<std::string> args;
  bool ebpf_inbound_possible;  ///< restarting the proxy after init exercises sockops
  std::vector<std::string> env = {};  ///< "NAME=value" for meshcap init (a fault to inject)
  bool node = false;  ///< a node data path on the pod's cgroup (pins and state of its own); init enrols
};

const std::vector<Mode> kModes = {
    {"ebpf", {"--mode", "ebpf"}, true},
    // The same capture with sk_msg acceleration between the application's
    // and the proxy's sockets: what the modes observe must not change.
    {"ebpf-accel", {"--mode", "ebpf", "--accelerate"}, true},
    {"auto", {"--mode", "auto"}, true},
    {"iptables-nft", {"--mode", "iptables", "--force-iptables-binary", "nft"}, false},
    {"iptables-legacy", {"--mode", "iptables", "--force-iptables-binary", "legacy"}, false},
    // auto when the kernel refuses eBPF at run time (the fault hook): the
    // program load (everything moves to iptables), the cgroup attach (the
    // same), and sk_lookup's attach (only inbound moves). Every case must
    // still land as under real iptables.
    {"auto-fault-load", {"--mode", "auto"}, false, {"MESHCAP_FAULT_AT=load"}},
    {"auto-fault-attach", {"--mode", "auto"}, false, {"MESHCAP_FAULT_AT=attach"}},
    {"auto-fault-sk_lookup", {"--mode", "auto"}, false, {"MESHCAP_FAULT_AT=sk_lookup"}},
    // The node data path: loaded once for the mode, the pod enrolled by its
    // network namespace at each init and taken out at each cleanup.
    {"node", {"--mode", "ebpf"}, true, {}, true},
};

class Equivalence : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root: creates namespaces and cgroups, loads BPF, applies iptables";
    pod_ = std::make_unique<TestPod>();
    name_ = "eq" + pod_->suffix();
    a_.pod4 = pod_->pod_ipv4();
    a_.pod6 = pod_->pod_ipv6();
    a_.peer4 = pod_->peer_ipv4();
    a_.peer6 = pod_->peer_ipv6();
    a_.peer4b = a_.pod4.substr(0, a_.pod4.rfind('.')) + ".3";
    a_.peer6b = a_.pod6.substr(0, a_.pod6.size() - 1) + "ff03";
    a_.subnet4 = a_.pod4.substr(0, a_.pod4.rfind('.')) + ".0/24";
    a_.subnet6 = a_.pod6.substr(0, a_.pod6.size() - 1) + "/64";
    a_.veth = pod_->pod_veth();
    // A second address on the peer for each family, so CIDR flags can
    // split the destinations outside the pod.
    run_command_checked({"ip", "-n", pod_->peer_netns(), "addr", "add", a_.peer4b + "/24", "dev", pod_->peer_veth()});
    run_command_checked({"ip", "-n", pod_->peer_netns(), "-6", "addr", "add", a_.peer6b + "/64", "dev",
                         pod_->peer_veth(), "nodad", "preferred_lft",
                         "0"});  // deprecated: never chosen as a source, still reachable

    std::vector<ListenSpec> app;
    for (uint16_t p : kPorts) app.insert(app.end(), {{false, "0.0.0.0", p}, {false, "::", p}});
    std::vector<ListenSpec> peer = app;
    app.insert(app.end(), {{true, "0.0.0.0", 8080}, {true, "::", 8080}});
    for (uint16_t p : {8080, 8082, 53})
      peer.insert(peer.end(), {{true, "0.0.0.0", uint16_t(p)}, {true, "::", uint16_t(p)}});
    // DNS on 53 over TCP too (the peer is the pod's resolver), and in the
    // pod, where root binds port 53 (DNS to the pod's own addresses and
    // loopback that is not captured lands there).
    peer.insert(peer.end(), {{false, "0.0.0.0", 53}, {false, "::", 53}});
    const std::vector<ListenSpec> pod_dns = {
        {false, "0.0.0.0", 53}, {false, "::", 53}, {true, "0.0.0.0", 53}, {true, "::", 53}};
    pod_app_ = std::make_unique<TaggedServer>(*pod_, TaggedServer::Where::pod, Identity::user(1000, 1000), "pod-app",
                                              app, store_);
    pod_dns_ = std::make_unique<TaggedServer>(*pod_, TaggedServer::Where::pod, Identity::root(), "pod-dns", pod_dns,
                                              store_);
    peer_ = std::make_unique<TaggedServer>(*pod_, TaggedServer::Where::peer, Identity{}, "peer", peer, store_);
    start_proxy();
  }

  void TearDown() override {
    if (!pod_) return;
    meshcap({"cleanup", "--name", name_});
    node_mode(false);
    proxy_.reset();
    pod_app_.reset();
    pod_dns_.reset();
    peer_.reset();
    EXPECT_FALSE(loader::pinned_state(name_).present);
    pod_.reset();
  }

  /// The proxy's listeners, as Envoy binds them (all addresses), and the
  /// agent's DNS listener, as istio's agent binds it for a dual-stack pod
  /// (127.0.0.1:15053 and [::1]:15053, UDP and TCP), in the pod's cgroup as
  /// UID/GID 1337 so the eBPF getsockopt hook answers them.
  void start_proxy() {
    proxy_.reset();
    proxy_ = std::make_unique<TaggedServer>(*pod_, TaggedServer::Where::pod, Identity::proxy(), "proxy",
                                            std::vector<ListenSpec>{{false, "0.0.0.0", 15001},
                                                                    {false, "::", 15001},
                                                                    {false, "0.0.0.0", 15006},
                                                                    {false, "::", 15006},
                                                                    {true, "127.0.0.1", 15053},
                                                                    {true, "::1", 15053},
                                                                    {false, "127.0.0.1", 15053},
                                                                    {false, "::1", 15053}},
                                            store_);
  }

  CommandResult meshcap(std::vector<std::string> args, const std::vector<std::string>& env = {}) {
    args.insert(args.begin(), MESHCAP_BIN);
    std::vector<std::string> all_env = node_env_;
    all_env.insert(all_env.end(), env.begin(), env.end());
    if (!all_env.empty()) {
      args.insert(args.begin(), all_env.begin(), all_env.end());
      args.insert(args.begin(), "env");
    }
    return run_command(args);
  }

  /// Starts (true) or stops the node data path of the "node" mode, on the
  /// pod's cgroup, with pins and state of its own.
  void node_mode(bool on) {
    const std::string pins = "/sys/fs/bpf/mceq-" + pod_->suffix(), state = "/run/mceq-" + pod_->suffix();
    if (on) {
      node_env_ = {"MESHCAP_PIN_DIR=" + pins, "MESHCAP_STATE_DIR=" + state};
      auto r = meshcap({"node", "start", "--cgroup", pod_->cgroup_path()});
      ASSERT_EQ(r.exit_code, 0) << r.output;
      return;
    }
    if (node_env_.empty()) return;
    meshcap({"node", "stop", "--move-to-iptables"});
    meshcap({"cleanup", "--all-stale"});
    node_env_.clear();
    run_command({"rm", "-rf", pins, state});
  }

  CommandResult init(const Mode& m, const FlagSet& fs) {
    std::vector<std::string> args = {
        "init", "--name", name_, "--cgroup", pod_->cgroup_path(), "--netns", pod_->pod_netns_path()};
    args.insert(args.end(), m.args.begin(), m.args.end());
    args.insert(args.end(), fs.args.begin(), fs.args.end());
    std::vector<std::string> env = fs.env;
    env.insert(env.end(), m.env.begin(), m.env.end());
    return meshcap(args, env);
  }

  /// What is left of meshcap in the pod: "" when nothing.
  std::string leftovers() {
    std::string s;
    for (const char* save :
         {"iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save"}) {
      auto r = run_command({"nsenter", "--net=" + pod_->pod_netns_path(), save});
      if (r.output.find("ISTIO_") != std::string::npos) s += std::string(save) + " shows ISTIO_ chains; ";
    }
    if (!node_env_.empty()) {
      // The node's programs stay attached; the pod must be out of its tables.
      auto r = meshcap({"node", "status", "--json"});
      if (r.output.find("\"pods_enrolled\": 0") == std::string::npos) s += "the pod is still enrolled; ";
    } else if (size_t n = programs_attached(pod_->cgroup_path())) {
      s += std::to_string(n) + " cgroup programs attached; ";
    }
    if (size_t n = sk_lookup_attached(pod_->pod_netns_path())) s += std::to_string(n) + " sk_lookup programs; ";
    if (loader::pinned_state(name_).present) s += "pins under " + loader::pin_dir(name_) + "; ";
    return s;
  }

  /// For a pod's TCP connection that failed ("from ADDR:PORT, ..."): what
  /// the pod's namespace holds for its source port once the client's batch
  /// is done, the conntrack entries and the sockets (a TIME_WAIT twin, a
  /// NAT binding) that could have answered or swallowed its SYN.
  std::string kernel_view_of(const std::string& detail) {
    const auto from = detail.find("from ");
    const auto comma = detail.find(',', from);
    if (from == std::string::npos || comma == std::string::npos) return "";
    const std::string ep = detail.substr(from + 5, comma - from - 5);
    const std::string port = port_of(ep);
    if (port.empty() || port == "0") return "";
    auto grep = [&](const std::vector<std::string>& argv, const std::vector<std::string>& needles) {
      std::string out;
      std::istringstream in(run_command(argv).output);
      for (std::string line; std::getline(in, line);)
        for (const auto& n : needles)
          if (line.find(n) != std::string::npos) {
            out += "\n        " + line;
            break;
          }
      return out.empty() ? std::string("\n        (none)") : out;
    };
    const std::string ns = "--net=" + pod_->pod_netns_path();
    // conntrack's per-CPU statistics (insert_failed: a new entry that
    // clashed and was dropped) and TCP's non-zero counters for SYNs a
    // TIME_WAIT socket or a listener turned away, both since the namespace
    // began; the tables that hold netfilter's hooks there.
    std::string stats;
    std::istringstream cpus(run_command({"nsenter", ns, "conntrack", "-S"}).output);
    for (std::string line; std::getline(cpus, line);)
      if (line.find("insert_failed=0") == std::string::npos || line.find("drop=0") == std::string::npos)
        stats += "\n        " + line;
    return "\n      conntrack entries with port " + port + ":" +
           grep({"nsenter", ns, "conntrack", "-L"}, {"sport=" + port + " ", "dport=" + port + " "}) +
           "\n      sockets with port " + port + ":" +
           grep({"nsenter", ns, "ss", "-tanoiH", "state", "all"}, {":" + port + " "}) +
           "\n      conntrack statistics with an insert that failed or a drop:" +
           (stats.empty() ? std::string("\n        (none)") : stats) + "\n      TCP counters:" +
           grep({"nsenter", ns, "nstat", "-as"},
                {"PAWS", "TimeWait", "TW", "Listen", "ChallengeACK", "ACKSkipped", "TCPReqQFull"}) +
           // (the legacy tables from the kernel's lists: iptables-legacy-save
           // would create a table it reads)
           "\n      tables:" + grep({"nsenter", ns, "sh", "-c",
                                       "for f in ip_tables_names ip6_tables_names; do sed \"s/^/$f: /\" "
                                       "/proc/net/$f; done; nft list tables"},
                                      {""});
  }

  /// Runs the cases (one child per identity, one in the peer) and returns
  /// the observed outcome of each, by case index.
  std::map<size_t, Outcome> run_cases(const std::vector<Case>& cases, const std::vector<size_t>& which,
                                      const CaptureFlags* f) {
    std::map<std::string, std::vector<ClientSpec>> batches;  // by client ("peer" or identity)
    std::map<std::string, size_t> by_tag;
    for (size_t i : which) {
      const Case& c = cases[i];
      const std::string tag = "t" + std::to_string(++tag_counter_);
      by_tag[tag] = i;
      batches[c.from_peer ? "peer" : c.who->name].push_back({tag, c.udp, c.dst_ip, c.port, c.bind_ip, c.unconnected});
    }
    std::map<std::string, ClientResult> results;
    auto run = [&](const std::string& client, const std::vector<ClientSpec>& specs) {
      const auto timeout = Millis(10000 + 2500 * static_cast<long>(specs.size()));
      std::string text;
      if (client == "peer") {
        text = pod_->run_in_peer_capture([&specs] { return run_batch(specs); }, Identity{}, timeout);
      } else {
        const Who* w = *std::find_if(kWhos.begin(), kWhos.end(), [&](const Who* x) { return client == x->name; });
        text = pod_->run_in_pod_capture([&specs] { return run_batch(specs); }, Identity::user(w->uid, w->gid), timeout);
      }
      auto got = parse_batch(text);
      for (auto& [tag, r] : got)
        if (r.error != 0 && client != "peer") r.detail += kernel_view_of(r.detail);
      return got;
    };
    for (const auto& [client, specs] : batches)
      for (auto& [tag, r] : run(client, specs)) results[tag] = r;
    // A TCP connection whose SYN went unanswered until the timeout (the
    // client still in SYN_SENT) is tried once more on a new connection, and
    // that one's outcome is compared: the stall is reported (stalls_) with
    // what the pod's namespace held for its source port, not hidden; a
    // second stall of the same case is a failure like any other.
    stalls_.clear();
    for (const auto& [client, specs] : batches) {
      std::vector<ClientSpec> again;
      std::map<std::string, std::string> first_tag;  // new tag -> stalled tag
      for (const auto& spec : specs) {
        const auto it = results.find(spec.tag);
        if (spec.udp || it == results.end() || it->second.error != ETIMEDOUT ||
            it->second.detail.find("SYN_SENT") == std::string::npos)
          continue;
        ClientSpec s = spec;
        s.tag = "t" + std::to_string(++tag_counter_);
        first_tag[s.tag] = spec.tag;
        again.push_back(s);
      }
      if (again.empty()) continue;
      for (auto& [tag, r] : run(client, again)) {
        const std::string& stalled = first_tag[tag];
        const size_t i = by_tag[stalled];
        stalls_.push_back(cases[i].name + ": " + results[stalled].detail + "\n    tried again: " +
                          (r.error == 0 ? std::string("connected") : errno_name(r.error) + " " + r.detail));
        by_tag.erase(stalled);
        by_tag[tag] = i;
        results[tag] = r;
      }
    }
    // Every echoed tag was recorded before the echo was sent: give the
    // readers a moment, then take what is there.
    std::vector<std::string> answered;
    for (const auto& [tag, r] : results)
      if (r.error == 0) answered.push_back(tag);
    store_.wait_for(answered, Millis(5000));
    std::map<size_t, Outcome> out;
    for (const auto& [tag, i] : by_tag) {
      auto it = results.find(tag);
      ClientResult r = it == results.end() ? ClientResult{} : it->second;
      out[i] = observed_outcome(r, store_.get(tag), f, cases[i]);
    }
    return out;
  }

  std::unique_ptr<TestPod> pod_;
  std::string name_;
  std::vector<std::string> node_env_;  ///< the node mode's pins and state, while it runs
  Addrs a_;
  TagStore store_;
  std::unique_ptr<TaggedServer> proxy_, pod_app_, pod_dns_, peer_;
  uint64_t tag_counter_ = 0;
  std::vector<std::string> stalls_;  ///< the last run_cases' connections tried again after a stall
};

TEST_F(Equivalence, AllModesGiveIstiosOutcomeConnectionByConnection) {
  const auto t0 = Clock::now();
  const std::string seed_text = env_or("MESHCAP_EQ_SEED", "");
  const uint64_t seed = seed_text.empty()
                            ? std::random_device{}() ^ static_cast<uint64_t>(Clock::now().time_since_epoch().count())
                            : std::stoull(seed_text);
  const int n_random = std::stoi(env_or("MESHCAP_EQ_RANDOM", "10"));
  const bool verbose = env_or("MESHCAP_EQ_VERBOSE", "") == "1";
  std::printf("[equivalence] seed %llu (replay: MESHCAP_EQ_SEED=%llu), %d random flag sets\n",
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed), n_random);

  std::vector<FlagSet> sets = named_flag_sets(a_);
  for (auto& fs : random_flag_sets(seed, n_random, a_)) sets.push_back(std::move(fs));
  // The node data path tells -c/-k interfaces apart in sk_lookup by the
  // packet's ingress interface; where the kernel lacks that field (5.10),
  // node mode refuses those sets, as its planner says: a refusal by design.
  {
    const auto probe = meshcap({"probe", "--json"});
    const size_t at = probe.output.rfind('{', 0) == 0 ? 0 : probe.output.find("\n{") + 1;
    const auto features = nlohmann::json::parse(probe.output.substr(at)).at("features");
    if (!features.value("prog_sk_lookup_ifindex", false)) {
      std::printf("[equivalence] no sk_lookup ingress_ifindex here: node mode refuses -c/-k\n");
      for (auto& fs : sets)
        if (std::count(fs.args.begin(), fs.args.end(), "-c") || std::count(fs.args.begin(), fs.args.end(), "-k"))
          fs.refused_by.push_back("node");
    }
  }
  if (auto only = split(env_or("MESHCAP_EQ_SETS", "")); !only.empty()) {
    std::erase_if(sets, [&](const FlagSet& fs) { return !std::count(only.begin(), only.end(), fs.name); });
  }
  std::vector<Mode> modes = kModes;
  if (auto only = split(env_or("MESHCAP_EQ_MODES", "")); !only.empty()) {
    modes.clear();  // in the order given
    for (const auto& name : only)
      for (const auto& m : kModes)
        if (m.name == name) modes.push_back(m);
  }
  ASSERT_FALSE(sets.empty());
  ASSERT_FALSE(modes.empty());
  for (const auto& fs : sets) std::printf("[equivalence] flag set %-24s %s\n", fs.name.c_str(), fs.shown().c_str());

  const std::vector<Case> cases = build_cases(a_);
  std::vector<size_t> all(cases.size());
  for (size_t i = 0; i < cases.size(); ++i) all[i] = i;
  // After cleanup, a sample goes direct again: the application's outbound
  // cases, the proxy's own-address cases, and everything from outside.
  std::vector<size_t> sample;
  for (size_t i = 0; i < cases.size(); ++i)
    if (cases[i].from_peer || cases[i].udp || cases[i].who == &kApp || (cases[i].who == &kProxy && cases[i].via_lo))
      sample.push_back(i);

  // observed[set][mode][case]
  std::vector<std::vector<std::map<size_t, Outcome>>> observed(sets.size(),
                                                               std::vector<std::map<size_t, Outcome>>(modes.size()));
  std::vector<std::vector<std::string>> plans(sets.size(), std::vector<std::string>(modes.size()));  // as init logs it
  size_t direct_checks = 0, direct_failures = 0, init_failures = 0, refusals = 0;
  std::map<std::string, size_t> excluded_counts;  // comparisons skipped, per known difference
  std::vector<std::string> problems;              // init/cleanup/leftover/direct failures
  std::vector<std::string> stalls;                // connections tried again after their SYN went unanswered
  auto note_stalls = [&](const std::string& set, const std::string& mode, const std::string& when) {
    for (const auto& st : stalls_) {
      stalls.push_back("[" + set + "] " + mode + ": " + when + st);
      std::printf("[equivalence] STALL %s\n", stalls.back().c_str());
    }
    std::fflush(stdout);
  };

  // Mode-major: each mode runs every flag set in the same pod, one init per
  // flag set, many connections per init. The eBPF modes run before the
  // iptables ones, and flag sets that put iptables beside eBPF (auto with
  // --drop-invalid; DNS sets, which NAT UDP under iptables) run last in each mode: conntrack entries left by NAT'd
  // or tracked connections must not meet a later eBPF capture that reuses
  // their ports (see AfterSwitchingFromIptablesToEbpf... below).
  std::vector<size_t> order;
  for (int split = 0; split < 2; ++split)
    for (size_t si = 0; si < sets.size(); ++si)
      if ((sets[si].flags.drop_invalid || sets[si].flags.redirect_dns) == (split == 1)) order.push_back(si);
  auto secs = [](Clock::time_point from) { return std::chrono::duration<double>(Clock::now() - from).count(); };
  // Sockets whose sends went by sk_msg redirection, per accelerated mode:
  // the accelerated mode must really have accelerated.
  std::map<std::string, uint64_t> accel_redirected;
  for (size_t mi = 0; mi < modes.size(); ++mi) {
    const Mode& m = modes[mi];
    const bool accelerated = std::count(m.args.begin(), m.args.end(), "--accelerate") > 0;
    if (accelerated) accel_redirected[m.name] = 0;
    if (m.node) node_mode(true);
    // Each mode starts as a fresh pod would: without the conntrack entries
    // of the previous mode's NAT'd connections, which linger in TIME_WAIT
    // and would remap the source ports of later connections with the same
    // four-tuple (docs/known-differences.md, "after leaving iptables").
    run_command({"nsenter", "--net=" + pod_->pod_netns_path(), "conntrack", "-F"});
    const auto tm = Clock::now();
    double t_init = 0, t_cases = 0, t_cleanup = 0, t_direct = 0;
    for (size_t step = 0; step < order.size(); ++step) {
      const size_t si = order[step];
      const FlagSet& fs = sets[si];
      auto tp = Clock::now();
      auto r = init(m, fs);
      t_init += secs(tp);
      if (std::count(fs.refused_by.begin(), fs.refused_by.end(), m.name)) {
        refusals++;
        if (r.exit_code != 2)
          problems.push_back("[" + fs.name + "] " + m.name + ": meshcap init should refuse (exit 2), exited " +
                             std::to_string(r.exit_code) + ": " + r.output);
        if (std::string left = leftovers(); !left.empty())
          problems.push_back("[" + fs.name + "] " + m.name + ": a refused init left: " + left);
        meshcap({"cleanup", "--name", name_});
        continue;
      }
      if (r.exit_code != 0) {
        init_failures++;
        problems.push_back("[" + fs.name + "] " + m.name + ": meshcap init exited " + std::to_string(r.exit_code) +
                           ": " + r.output);
        for (size_t i : all) observed[si][mi][i].v[0] = "meshcap init failed";
        meshcap({"cleanup", "--name", name_});
        continue;
      }
      if (auto pos = r.output.find("plan for pod"); pos != std::string::npos) {
        const std::string line = r.output.substr(pos, r.output.find('\n', pos) - pos);
        plans[si][mi] = line.substr(line.find(": ") + 2);
      }
      // A part that fell back at run time: the engines it ended with.
      if (auto pos = r.output.rfind(": outbound by "); pos != std::string::npos)
        plans[si][mi] += " [ended: " + r.output.substr(pos + 2, r.output.find('\n', pos) - pos - 2) + "]";
      // Every other flag set, the proxy (re)starts after init: its listeners
      // are then found by the sockops hook rather than adopted at init.
      tp = Clock::now();
      if (m.ebpf_inbound_possible && step % 2 == 1) start_proxy();
      observed[si][mi] = run_cases(cases, all, &fs.flags);
      note_stalls(fs.name, m.name, "");
      t_cases += secs(tp);
      if (accelerated) accel_redirected[m.name] += loader::pinned_counters(name_)["accel_redirected"];

      tp = Clock::now();
      auto c = meshcap({"cleanup", "--name", name_});
      if (c.exit_code != 0)
        problems.push_back("[" + fs.name + "] " + m.name + ": meshcap cleanup exited " + std::to_string(c.exit_code) +
                           ": " + c.output);
      if (std::string left = leftovers(); !left.empty())
        problems.push_back("[" + fs.name + "] " + m.name + ": after cleanup: " + left);
      t_cleanup += secs(tp);
      // The same cases go direct again.
      tp = Clock::now();
      auto direct = run_cases(cases, sample, nullptr);
      note_stalls(fs.name, m.name, "after cleanup ");
      t_direct += secs(tp);
      for (const auto& [i, o] : direct) {
        direct_checks++;
        const Outcome e = expected_outcome(nullptr, cases[i]);
        for (size_t k = 0; k < kNumFields; ++k) {
          if (e.excluded[k]) {
            excluded_counts[e.excluded[k]->name]++;
            continue;
          }
          if (o.v[k] != e.v[k]) {
            direct_failures++;
            problems.push_back("[" + fs.name + "] " + m.name + ": after cleanup " + cases[i].name + ": " + kFields[k] +
                               " is " + o.v[k] + ", expected " + e.v[k]);
            break;
          }
        }
      }
    }
    std::printf(
        "[equivalence] mode %-16s %zu flag sets x %zu cases in %.1f s (init %.1f, cases %.1f, cleanup+checks "
        "%.1f, direct again %.1f)\n",
        m.name.c_str(), sets.size(), cases.size(), secs(tm), t_init, t_cases, t_cleanup, t_direct);
    std::fflush(stdout);
    if (m.node) node_mode(false);
  }

  // Compare: every mode against the model, and the modes among themselves.
  size_t compared = 0, mismatched_cases = 0, disagreements = 0, model_only = 0;
  for (size_t si = 0; si < sets.size(); ++si) {
    std::vector<size_t> ran;  // the modes that applied this flag set
    for (size_t mi = 0; mi < modes.size(); ++mi)
      if (!std::count(sets[si].refused_by.begin(), sets[si].refused_by.end(), modes[mi].name)) ran.push_back(mi);
    for (size_t i : all) {
      compared++;
      const Outcome e = expected_outcome(&sets[si].flags, cases[i]);
      bool bad = false, modes_differ = false;
      std::string detail;
      for (size_t k = 0; k < kNumFields; ++k) {
        if (e.excluded[k]) {
          excluded_counts[e.excluded[k]->name]++;
          continue;
        }
        std::set<std::string> seen;
        bool field_bad = false;
        for (size_t mi : ran) {
          std::string& got = observed[si][mi][i].v[k];
          // nat-source-port-remap: only where iptables NAT took the
          // connection (an iptables mode, or auto with iptables in its plan).
          if (k == 5 && got.rfind(kSameIpOtherPort, 0) == 0 && e.v[0] != to_string(Landing::destination) &&
              (modes[mi].name.rfind("iptables", 0) == 0 || plans[si][mi].find("iptables") != std::string::npos)) {
            excluded_counts[kNatSourcePortRemap.name]++;
            if (verbose)
              std::printf("[equivalence] %s %s %s: excluded (%s): %s\n", sets[si].name.c_str(), cases[i].name.c_str(),
                          modes[mi].name.c_str(), kNatSourcePortRemap.name, got.c_str());
            got = e.v[k];
          }
          seen.insert(got);
          field_bad |= got != e.v[k];
        }
        if (seen.size() > 1) modes_differ = true;
        if (field_bad) {
          bad = true;
          detail += std::string("\n    ") + kFields[k] + ": expected " + e.v[k];
          for (size_t mi : ran) {
            detail += "\n      " + modes[mi].name + ": " + observed[si][mi][i].v[k];
            if (k == 0 && !observed[si][mi][i].note.empty()) detail += "   [in " + observed[si][mi][i].note + "]";
            if (modes[mi].name == "auto" && !plans[si][mi].empty()) detail += "   [auto plan: " + plans[si][mi] + "]";
          }
        }
      }
      if (verbose) {
        std::printf("[equivalence] %s %s: %s\n", sets[si].name.c_str(), cases[i].name.c_str(), e.str().c_str());
        for (size_t mi : ran) std::printf("    %-16s %s\n", modes[mi].name.c_str(), observed[si][mi][i].str().c_str());
      }
      if (!bad) continue;
      mismatched_cases++;
      if (modes_differ)
        disagreements++;
      else
        model_only++;
      ADD_FAILURE() << (modes_differ ? "MODES DISAGREE" : "all modes agree, but not with istio's rules") << " ["
                    << sets[si].name << "] " << cases[i].name << "\n  flags: " << sets[si].shown() << detail
                    << "\n  (replay: MESHCAP_EQ_SEED=" << seed << " MESHCAP_EQ_SETS=" << sets[si].name << ")";
    }
  }
  for (const auto& p : problems) ADD_FAILURE() << p;

  std::string excluded;
  for (const auto* k : kKnownDifferences)
    excluded += std::string(excluded.empty() ? "" : ", ") + k->name + " (" + k->field +
                "): " + std::to_string(excluded_counts[k->name]) + " comparisons";
  std::printf(
      "[equivalence] SUMMARY: %zu cases (%zu flag sets x %zu traffic cases) x %zu modes = %zu connections; "
      "%zu mismatched cases (%zu where the modes disagree, %zu where they agree but not with the model); "
      "%zu direct-after-cleanup checks, %zu failed; %zu init failures; %zu refusals by design; %zu connections "
      "stalled in SYN_SENT and tried again; known differences excluded by name: %s; "
      "seed %llu; %.1f s\n",
      compared, sets.size(), cases.size(), modes.size(), compared * modes.size(), mismatched_cases, disagreements,
      model_only, direct_checks, direct_failures, init_failures, refusals, stalls.size(), excluded.c_str(),
      static_cast<unsigned long long>(seed), std::chrono::duration<double>(Clock::now() - t0).count());
  std::fflush(stdout);
  for (const auto& [mode, n] : accel_redirected) {
    std::printf("[equivalence] mode %s: %llu sockets sent by sk_msg redirection\n", mode.c_str(),
                static_cast<unsigned long long>(n));
    EXPECT_GT(n, 0u) << mode << " accelerated nothing";
  }
  if (env_or("MESHCAP_EQ_SETS", "").empty()) {
    EXPECT_GE(compared, 200u);
  }
  // About one connection in a million has stalled here (docs/known-differences.md,
  // "Not explained yet"); more than two in one run is a pattern, not chance.
  std::string stall_list;
  for (const auto& st : stalls) stall_list += "\n  " + st;
  EXPECT_LE(stalls.size(), 2u) << "connections whose SYN went unanswered until the timeout:" << stall_list;
}

// Switching a pod from iptables to eBPF (`init` with the same name replaces
// the capture): conntrack keeps the entries of connections NATed under
// iptables (TIME_WAIT: 120 s). A new eBPF-captured connection that reuses
// an old one's source port has the same proxy-side tuple, and the proxy
// must still read the new connection's destination. The main matrix runs
// the eBPF modes before the iptables ones so that it never depends on this;
// this test makes the port reuse happen on purpose.
TEST_F(Equivalence, AfterSwitchingFromIptablesToEbpfTheProxyReadsTheNewDestination) {
  const FlagSet fs = render("istio-init", istio_init(), a_);
  const uint16_t src_port = 41234;
  auto roundtrip = [&](uint16_t dport) {
    const std::string tag = "s" + std::to_string(++tag_counter_);
    const std::string ip = a_.peer4, src = a_.pod4;
    std::string out = pod_->run_in_pod_capture(
        [&] {
          ConnectOptions o;
          o.bind_ip = src;  // the pod's address: the connect hook keeps it as is
          o.bind_port = src_port;
          return std::to_string(tcp_roundtrip(ip, dport, tag + "\n", kConnTimeout, o).error);
        },
        Identity::user(1000, 1000));
    EXPECT_EQ(out, "0") << "round trip to port " << dport;
    store_.wait_for({tag}, Millis(5000));
    return store_.get(tag);
  };
  for (const Mode* from : {&kModes[2], &kModes[3]}) {
    SCOPED_TRACE(from->name + " then ebpf");
    auto r = init(*from, fs);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto before = roundtrip(8080);
    ASSERT_EQ(before.size(), 1u);
    EXPECT_EQ(before[0].listener.port, 15001);
    EXPECT_EQ(before[0].orig_dst, endpoint(a_.peer4, 8080));
    r = init(kModes[0], fs);  // replaces the iptables capture
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto after = roundtrip(8083);
    ASSERT_EQ(after.size(), 1u);
    EXPECT_EQ(after[0].listener.port, 15001);
    EXPECT_EQ(after[0].orig_dst, endpoint(a_.peer4, 8083))
        << "the proxy read the destination of an earlier connection (stale conntrack entry answered first)";
    ASSERT_EQ(meshcap({"cleanup", "--name", name_}).exit_code, 0);
  }
}

}  // namespace
}  // namespace meshcap::test::eq
