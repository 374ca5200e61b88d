// The outbound decision (bpf/decision.h) against istio's rule semantics
// (shared/CAPTURE-SEMANTICS.md O1-O8), run in user space with a fake map
// environment: the same code the connect hooks run.
#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <string>
#include <vector>

#define MC_INLINE inline
#include "meshcap.h"

struct mc_addr;
namespace {
struct FakeEnv {
  std::set<std::vector<uint32_t>> pod_addrs;
  std::vector<std::pair<std::vector<uint8_t>, int>> excl4, incl4, excl6, incl6;  // addr bytes, prefix
  uint8_t port_flags[65536] = {};
  std::set<uint32_t> owner_groups;
  std::vector<std::pair<std::vector<uint8_t>, int>> excluded_routes4;  // routes via a -c interface
  std::vector<std::pair<std::vector<uint8_t>, int>> dns4, dns6;          // --dns-servers
} env;

bool prefix_match(const uint8_t* a, const std::vector<uint8_t>& p, int bits) {
  for (int i = 0; i < bits; i++) {
    int byte = i / 8, bit = 7 - i % 8;
    if (((a[byte] >> bit) & 1) != ((p[byte] >> bit) & 1)) return false;
  }
  return true;
}
bool any_match(const mc_addr* a, bool v4, const std::vector<std::pair<std::vector<uint8_t>, int>>& l);
}  // namespace

// The fake environment ignores the pod: one pod's settings per test.
static bool mc_env_pod_addr(const struct mc_pod*, const struct mc_addr* a);
static bool mc_env_excluded(const struct mc_pod*, const struct mc_addr* a, bool v4);
static bool mc_env_included(const struct mc_pod*, const struct mc_addr* a, bool v4);
static __u8 mc_env_port_flags(const struct mc_pod*, __u16 port) { return env.port_flags[port]; }
static bool mc_env_owner_group(const struct mc_pod*, __u32 gid) { return env.owner_groups.count(gid) > 0; }
static bool mc_env_route_excluded(const struct mc_pod*, const struct mc_addr* a, bool v4);
static bool mc_env_dns_server(const struct mc_pod*, const struct mc_addr* a, bool v4);

#include "decision.h"

static bool mc_env_pod_addr(const struct mc_pod*, const struct mc_addr* a) {
  return env.pod_addrs.count({a->ip[0], a->ip[1], a->ip[2], a->ip[3]}) > 0;
}
namespace {
bool any_match(const mc_addr* a, bool v4, const std::vector<std::pair<std::vector<uint8_t>, int>>& l) {
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(v4 ? &a->ip[3] : &a->ip[0]);
  for (const auto& [p, bits] : l)
    if (prefix_match(bytes, p, bits)) return true;
  return false;
}
}  // namespace
static bool mc_env_route_excluded(const struct mc_pod*, const struct mc_addr* a, bool v4) {
  return v4 && any_match(a, v4, env.excluded_routes4);
}
static bool mc_env_dns_server(const struct mc_pod*, const struct mc_addr* a, bool v4) {
  return any_match(a, v4, v4 ? env.dns4 : env.dns6);
}
static bool mc_env_excluded(const struct mc_pod*, const struct mc_addr* a, bool v4) { return any_match(a, v4, v4 ? env.excl4 : env.excl6); }
static bool mc_env_included(const struct mc_pod*, const struct mc_addr* a, bool v4) { return any_match(a, v4, v4 ? env.incl4 : env.incl6); }

namespace {

mc_addr addr(const std::string& s) {
  mc_addr a{};
  if (s.find(':') == std::string::npos) {
    a.ip[2] = htonl(0xffff);
    inet_pton(AF_INET, s.c_str(), &a.ip[3]);
  } else {
    inet_pton(AF_INET6, s.c_str(), a.ip);
  }
  return a;
}

std::pair<std::vector<uint8_t>, int> prefix(const std::string& s, int bits) {
  std::vector<uint8_t> b(16);
  inet_pton(s.find(':') == std::string::npos ? AF_INET : AF_INET6, s.c_str(), b.data());
  return {b, bits};
}

class DecisionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    env = FakeEnv{};
    cfg = mc_pod{};
    cfg.proxy_port = 15001;
    cfg.inbound_port = 15006;
    cfg.tunnel_port = 15008;
    cfg.n_uids = 1;
    cfg.uids[0] = 1337;
    cfg.n_gids = 1;
    cfg.gids[0] = 1337;
    cfg.flags = MC_POD_OWNER_EXCEPT | MC_POD_INCLUDE_ALL | MC_POD_IPV6;  // istio-init: -i '*'; IPv6
    inet_pton(AF_INET, "127.0.0.1", &cfg.loopback4);
    cfg.loopback4_mask = 0xffffffff;
    env.pod_addrs.insert({0, 0, htonl(0xffff), addr("10.1.1.2").ip[3]});
    auto a6 = addr("fd00::2");
    env.pod_addrs.insert({a6.ip[0], a6.ip[1], a6.ip[2], a6.ip[3]});
  }

  mc_decision decide(const std::string& dst, uint16_t port, uint32_t uid = 1000, uint32_t gid = 1000,
                     const std::string& src = "", bool udp = false) {
    mc_connect c{};
    c.udp = udp;
    c.dst = addr(dst);
    if (!src.empty()) c.src = addr(src);
    c.dport = port;
    c.v4 = __mc_is_v4_mapped(&c.dst);
    c.uid = uid;
    c.gid = gid;
    return mc_decide_outbound(&cfg, &c);
  }
  mc_decision udp53(const std::string& dst, uint32_t uid = 1000, uint32_t gid = 1000, const std::string& src = "") {
    return decide(dst, 53, uid, gid, src, true);
  }
  /// --redirect-dns with these resolvers (none: --capture-all-dns).
  void dns(const std::vector<std::string>& servers) {
    cfg.flags |= MC_POD_DNS;
    if (servers.empty()) cfg.flags |= MC_POD_DNS_ALL | MC_POD_DNS4 | MC_POD_DNS6;
    for (const auto& s : servers) {
      const bool v4 = s.find(':') == std::string::npos;
      (v4 ? env.dns4 : env.dns6).push_back(prefix(s, v4 ? 32 : 128));
      cfg.flags |= v4 ? MC_POD_DNS4 : MC_POD_DNS6;
    }
  }

  mc_pod cfg{};
};

#define EXPECT_DECISION(d, v, r)   \
  do {                             \
    auto got = (d);                \
    EXPECT_EQ(got.verdict, (v));   \
    EXPECT_EQ(got.reason, (r));    \
  } while (0)

TEST_F(DecisionTest, O1PassthroughSourceIsNotCaptured) {
  EXPECT_DECISION(decide("10.1.1.2", 8080, 1337, 1337, "127.0.0.6"), MC_PASS, MC_CNT_PASSTHROUGH_SRC);
  EXPECT_DECISION(decide("fd00::2", 8080, 1337, 1337, "::6"), MC_PASS, MC_CNT_PASSTHROUGH_SRC);
  // Not via lo: 127.0.0.6 to a remote address is not the passthrough rule.
  EXPECT_DECISION(decide("10.9.9.9", 80, 1000, 1000, "127.0.0.6"), MC_TO_OUTBOUND, MC_CNT_REDIRECTED_OUT);
}

TEST_F(DecisionTest, O2ProxyToOwnAddressGoesToInboundListener) {
  EXPECT_DECISION(decide("10.1.1.2", 8080, 1337, 1337), MC_TO_INBOUND, MC_CNT_REDIRECTED_IN);
  EXPECT_DECISION(decide("fd00::2", 8080, 1337, 1337), MC_TO_INBOUND, MC_CNT_REDIRECTED_IN);
  // 127.0.0.2 is via lo and outside 127.0.0.1/32: also the inbound listener.
  EXPECT_DECISION(decide("127.0.0.2", 8080, 1337, 1337), MC_TO_INBOUND, MC_CNT_REDIRECTED_IN);
  // Except the tunnel port and the loopback CIDR.
  EXPECT_DECISION(decide("10.1.1.2", 15008, 1337, 1337), MC_PASS, MC_CNT_EXEMPT_UID);
  EXPECT_DECISION(decide("127.0.0.1", 8080, 1337, 1337), MC_PASS, MC_CNT_EXEMPT_UID);
  EXPECT_DECISION(decide("::1", 8080, 1337, 1337), MC_PASS, MC_CNT_EXEMPT_UID);
  // GID 1337 alone (another UID) also goes to the inbound listener... after
  // the UID rules: "-o lo ! --uid-owner 1337 -j RETURN" catches it first.
  EXPECT_DECISION(decide("10.1.1.2", 8080, 1000, 1337), MC_PASS, MC_CNT_LOCAL_DST);
}

TEST_F(DecisionTest, O3OtherUsersOverLoopbackAreNotCaptured) {
  EXPECT_DECISION(decide("127.0.0.1", 8080), MC_PASS, MC_CNT_LOCAL_DST);
  EXPECT_DECISION(decide("127.1.2.3", 8080), MC_PASS, MC_CNT_LOCAL_DST);
  EXPECT_DECISION(decide("10.1.1.2", 8080), MC_PASS, MC_CNT_LOCAL_DST);
  EXPECT_DECISION(decide("::1", 8080), MC_PASS, MC_CNT_LOCAL_DST);
  EXPECT_DECISION(decide("fd00::2", 8080), MC_PASS, MC_CNT_LOCAL_DST);
  EXPECT_DECISION(decide("0.0.0.0", 8080), MC_PASS, MC_CNT_LOCAL_DST);
}

TEST_F(DecisionTest, O4ProxyUidOrGidElsewhereIsNotCaptured) {
  EXPECT_DECISION(decide("10.9.9.9", 80, 1337, 1000), MC_PASS, MC_CNT_EXEMPT_UID);
  EXPECT_DECISION(decide("10.9.9.9", 80, 1000, 1337), MC_PASS, MC_CNT_EXEMPT_GID);
  EXPECT_DECISION(decide("2001:db8::9", 80, 1000, 1337), MC_PASS, MC_CNT_EXEMPT_GID);
}

TEST_F(DecisionTest, O5ExcludedPortsAndCidrs) {
  env.port_flags[3306] = MC_PORT_OUT_EXCLUDE;
  env.excl4.push_back(prefix("10.9.0.0", 16));
  env.excl6.push_back(prefix("2001:db8::", 32));
  EXPECT_DECISION(decide("10.8.8.8", 3306), MC_PASS, MC_CNT_EXCLUDED_PORT);
  // -o comes before everything, even the proxy's inbound redirect.
  EXPECT_DECISION(decide("10.1.1.2", 3306, 1337, 1337), MC_PASS, MC_CNT_EXCLUDED_PORT);
  EXPECT_DECISION(decide("10.9.1.1", 80), MC_PASS, MC_CNT_EXCLUDED_CIDR);
  EXPECT_DECISION(decide("2001:db8:1::1", 80), MC_PASS, MC_CNT_EXCLUDED_CIDR);
  EXPECT_DECISION(decide("10.10.1.1", 80), MC_TO_OUTBOUND, MC_CNT_REDIRECTED_OUT);
}

TEST_F(DecisionTest, O6IncludedPortsAndCidrs) {
  cfg.flags &= ~MC_POD_INCLUDE_ALL;
  env.incl4.push_back(prefix("10.96.0.0", 12));
  env.incl6.push_back(prefix("fd01::", 16));
  env.port_flags[9000] = MC_PORT_OUT_INCLUDE;
  EXPECT_DECISION(decide("10.96.3.4", 80), MC_TO_OUTBOUND, MC_CNT_REDIRECTED_OUT);
  EXPECT_DECISION(decide("fd01::5", 80), MC_TO_OUTBOUND, MC_CNT_REDIRECTED_OUT);
  EXPECT_DECISION(decide("192.0.2.1", 9000), MC_TO_OUTBOUND, MC_CNT_REDIRECTED_OUT);
  // O7: anything else is not captured.
  EXPECT_DECISION(decide("192.0.2.1", 80), MC_PASS, MC_CNT_NOT_INCLUDED);
  EXPECT_DECISION(decide("2001:db8::1", 80), MC_PASS, MC_CNT_NOT_INCLUDED);
}

TEST_F(DecisionTest, ExclusionWinsOverALongerInclusion) {
  // istio checks every -x rule before any -i rule, whatever the lengths.
  cfg.flags &= ~MC_POD_INCLUDE_ALL;
  env.excl4.push_back(prefix("10.0.0.0", 8));
  env.incl4.push_back(prefix("10.1.2.0", 24));
  EXPECT_DECISION(decide("10.1.2.3", 80), MC_PASS, MC_CNT_EXCLUDED_CIDR);
  // -x also comes before -q ports.
  env.port_flags[80] = MC_PORT_OUT_INCLUDE;
  EXPECT_DECISION(decide("10.1.2.3", 80), MC_PASS, MC_CNT_EXCLUDED_CIDR);
}

TEST_F(DecisionTest, EmptyIncludeCapturesNothing) {
  cfg.flags &= ~MC_POD_INCLUDE_ALL;  // istio's default -i ""
  EXPECT_DECISION(decide("10.9.9.9", 80), MC_PASS, MC_CNT_NOT_INCLUDED);
}

TEST_F(DecisionTest, SeveralUidsFollowIstioOrder) {
  // -u 3,4: UID 3's "-o lo ! --uid-owner 3 -j RETURN" returns UID 4's
  // traffic to the pod before UID 4's inbound redirect rule is reached.
  cfg.n_uids = 2;
  cfg.uids[0] = 3;
  cfg.uids[1] = 4;
  EXPECT_DECISION(decide("10.1.1.2", 8080, 3, 100), MC_TO_INBOUND, MC_CNT_REDIRECTED_IN);
  EXPECT_DECISION(decide("10.1.1.2", 8080, 4, 100), MC_PASS, MC_CNT_LOCAL_DST);
  EXPECT_DECISION(decide("10.9.9.9", 80, 4, 100), MC_PASS, MC_CNT_EXEMPT_UID);
  EXPECT_DECISION(decide("10.9.9.9", 80, 5, 100), MC_TO_OUTBOUND, MC_CNT_REDIRECTED_OUT);
}

TEST_F(DecisionTest, LoopbackInIncludeKeepsLoopbackTrafficCapturable) {
  // -i 127.0.0.0/8 drops the "other users over lo return" rules.
  cfg.flags &= ~MC_POD_INCLUDE_ALL;
  cfg.flags |= MC_POD_INCLUDE_HAS_LOOPBACK;
  env.incl4.push_back(prefix("127.0.0.0", 8));
  EXPECT_DECISION(decide("127.0.0.5", 8080), MC_TO_OUTBOUND, MC_CNT_REDIRECTED_OUT);
  // 127.0.0.1 still returns ("-d 127.0.0.1/32 -j RETURN").
  EXPECT_DECISION(decide("127.0.0.1", 8080), MC_PASS, MC_CNT_LOCAL_DST);
}

TEST_F(DecisionTest, HostLoopbackCidrWidensTheLoopbackReturn) {
  // ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR=127.0.0.1/8
  cfg.loopback4_mask = htonl(0xff000000);
  EXPECT_DECISION(decide("127.0.0.2", 8080, 1337, 1337), MC_PASS, MC_CNT_EXEMPT_UID);
}

TEST_F(DecisionTest, OwnerGroups) {
  env.owner_groups.insert(888);  // ..._EXCLUDE=888
  EXPECT_DECISION(decide("10.9.9.9", 80, 1000, 888), MC_PASS, MC_CNT_OWNER_GROUP);
  EXPECT_DECISION(decide("10.9.9.9", 80, 1000, 889), MC_TO_OUTBOUND, MC_CNT_REDIRECTED_OUT);
  cfg.flags &= ~MC_POD_OWNER_EXCEPT;  // ISTIO_OUTBOUND_OWNER_GROUPS=888: only 888
  EXPECT_DECISION(decide("10.9.9.9", 80, 1000, 888), MC_TO_OUTBOUND, MC_CNT_REDIRECTED_OUT);
  EXPECT_DECISION(decide("10.9.9.9", 80, 1000, 889), MC_PASS, MC_CNT_OWNER_GROUP);
}

TEST_F(DecisionTest, V4MappedAddressesAreDecidedAsIpv4) {
  env.excl4.push_back(prefix("10.9.0.0", 16));
  EXPECT_DECISION(decide("::ffff:10.9.1.1", 80), MC_PASS, MC_CNT_EXCLUDED_CIDR);
  EXPECT_DECISION(decide("::ffff:127.0.0.1", 80), MC_PASS, MC_CNT_LOCAL_DST);
  EXPECT_DECISION(decide("::ffff:10.8.1.1", 80), MC_TO_OUTBOUND, MC_CNT_REDIRECTED_OUT);
}

TEST_F(DecisionTest, Ipv6IsLeftAloneWithoutIpv6Rules) {
  cfg.flags &= ~MC_POD_IPV6;  // no --dual-stack and no IPv6 address in the pod
  EXPECT_DECISION(decide("2001:db8::9", 80), MC_PASS, MC_CNT_NOT_INCLUDED);
  EXPECT_DECISION(decide("::ffff:10.9.9.9", 80), MC_TO_OUTBOUND, MC_CNT_REDIRECTED_OUT);
}

// ISTIO_OUTPUT_DNS (the dns-uid-gid and tproxy goldens): port 53 of a
// resolver goes to the DNS listener, after the owner rules and before the
// loopback RETURN; UDP goes nowhere else.
TEST_F(DecisionTest, DnsListedResolversOverUdpAndTcp) {
  dns({"10.96.0.10", "fd00:53::10"});
  EXPECT_DECISION(udp53("10.96.0.10"), MC_TO_DNS, MC_CNT_DNS_UDP_REDIRECTED);
  EXPECT_DECISION(decide("10.96.0.10", 53), MC_TO_DNS, MC_CNT_DNS_TCP_REDIRECTED);
  EXPECT_DECISION(udp53("fd00:53::10"), MC_TO_DNS, MC_CNT_DNS_UDP_REDIRECTED);
  EXPECT_DECISION(udp53("::ffff:10.96.0.10"), MC_TO_DNS, MC_CNT_DNS_UDP_REDIRECTED);
  // Another address's port 53: UDP untouched, TCP as any TCP (-i '*').
  EXPECT_DECISION(udp53("10.96.0.11"), MC_PASS, MC_CNT_UDP_NOT_DNS);
  EXPECT_DECISION(decide("10.96.0.11", 53), MC_TO_OUTBOUND, MC_CNT_REDIRECTED_OUT);
  // The proxy's own queries leave untouched ("--uid-owner 1337 -j RETURN"
  // is for every protocol).
  EXPECT_DECISION(udp53("10.96.0.10", 1337, 1000), MC_PASS, MC_CNT_EXEMPT_UID);
  EXPECT_DECISION(udp53("10.96.0.10", 1000, 1337), MC_PASS, MC_CNT_EXEMPT_GID);
  EXPECT_DECISION(decide("10.96.0.10", 53, 1337, 1337), MC_PASS, MC_CNT_EXEMPT_UID);
  // -o 53 comes first, for UDP too.
  env.port_flags[53] = MC_PORT_OUT_EXCLUDE;
  EXPECT_DECISION(udp53("10.96.0.10"), MC_PASS, MC_CNT_EXCLUDED_PORT);
}

TEST_F(DecisionTest, DnsRulesExistOnlyForFamiliesWithResolvers) {
  dns({"10.96.0.10"});
  EXPECT_DECISION(udp53("fd00:53::10"), MC_PASS, MC_CNT_UDP_NOT_DNS);
  // And no IPv6 at all without IPv6 rules.
  cfg.flags &= ~MC_POD_IPV6;
  env.dns6.push_back(prefix("fd00:53::10", 128));
  cfg.flags |= MC_POD_DNS6;
  EXPECT_DECISION(udp53("fd00:53::10"), MC_PASS, MC_CNT_NOT_INCLUDED);
}

TEST_F(DecisionTest, CaptureAllDnsComesBeforeTheLoopbackReturn) {
  dns({});
  EXPECT_DECISION(udp53("192.0.2.1"), MC_TO_DNS, MC_CNT_DNS_UDP_REDIRECTED);
  EXPECT_DECISION(udp53("2001:db8::1"), MC_TO_DNS, MC_CNT_DNS_UDP_REDIRECTED);
  // "-p tcp --dport 53 -j REDIRECT" precedes "-d 127.0.0.1/32 -j RETURN",
  // and the DNS variant of "-o lo ! --uid-owner 1337 -j RETURN" spares 53.
  EXPECT_DECISION(decide("127.0.0.1", 53), MC_TO_DNS, MC_CNT_DNS_TCP_REDIRECTED);
  EXPECT_DECISION(udp53("127.0.0.53"), MC_TO_DNS, MC_CNT_DNS_UDP_REDIRECTED);
  // But the passthrough source over lo returns first.
  EXPECT_DECISION(udp53("127.0.0.53", 1000, 1000, "127.0.0.6"), MC_PASS, MC_CNT_PASSTHROUGH_SRC);
  // Other TCP over lo is unchanged.
  EXPECT_DECISION(decide("127.0.0.1", 8080), MC_PASS, MC_CNT_LOCAL_DST);
}

TEST_F(DecisionTest, DnsVariantsOfTheOwnerRules) {
  // The dns-uid-gid golden: -u 3,4 -g 1,2 --redirect-dns.
  cfg.n_uids = 2;
  cfg.uids[0] = 3;
  cfg.uids[1] = 4;
  cfg.n_gids = 2;
  cfg.gids[0] = 1;
  cfg.gids[1] = 2;
  // Without DNS: UID 4 to the pod's own port 53 is returned by UID 3's
  // "-o lo ! --uid-owner 3 -j RETURN".
  EXPECT_DECISION(decide("10.1.1.2", 53, 4, 100), MC_PASS, MC_CNT_LOCAL_DST);
  dns({"10.96.0.10"});
  // With it that rule is "-o lo -p tcp ! --dport 53 ...", and the UIDs'
  // inbound redirect spares 53: UID 4 reaches "--uid-owner 4 -j RETURN".
  EXPECT_DECISION(decide("10.1.1.2", 53, 4, 100), MC_PASS, MC_CNT_EXEMPT_UID);
  EXPECT_DECISION(decide("10.1.1.2", 53, 3, 100), MC_PASS, MC_CNT_EXEMPT_UID);
  // The GIDs' inbound redirect has no DNS variant: GID 2 over lo to 53 is
  // sent to the inbound listener.
  EXPECT_DECISION(decide("10.1.1.2", 53, 100, 2), MC_TO_INBOUND, MC_CNT_REDIRECTED_IN);
  // Anyone else's TCP to its own pod's 53 is no longer returned over lo:
  // it goes on to -i '*'.
  EXPECT_DECISION(decide("10.1.1.2", 53, 100, 100), MC_TO_OUTBOUND, MC_CNT_REDIRECTED_OUT);
  // Ports other than 53 are as without DNS.
  EXPECT_DECISION(decide("10.1.1.2", 8080, 4, 100), MC_PASS, MC_CNT_LOCAL_DST);
  EXPECT_DECISION(decide("10.1.1.2", 8080, 3, 100), MC_TO_INBOUND, MC_CNT_REDIRECTED_IN);
  // UDP: only "--uid-owner/--gid-owner ID -j RETURN" apply.
  EXPECT_DECISION(udp53("10.96.0.10", 4, 100), MC_PASS, MC_CNT_EXEMPT_UID);
  EXPECT_DECISION(udp53("10.96.0.10", 100, 2), MC_PASS, MC_CNT_EXEMPT_GID);
  EXPECT_DECISION(udp53("10.96.0.10", 100, 100), MC_TO_DNS, MC_CNT_DNS_UDP_REDIRECTED);
}

TEST_F(DecisionTest, ExcludedInterfaceRoutesComeFirst) {
  // -c eth1 with 10.5.0.0/24 routed out of eth1: before even the -o ports.
  env.excluded_routes4.push_back(prefix("10.5.0.0", 24));
  env.port_flags[80] = MC_PORT_OUT_EXCLUDE;
  EXPECT_DECISION(decide("10.5.0.9", 80), MC_PASS, MC_CNT_EXCLUDED_IFACE);
  EXPECT_DECISION(decide("10.6.0.9", 443), MC_TO_OUTBOUND, MC_CNT_REDIRECTED_OUT);
  // Traffic over lo never leaves through an excluded interface.
  env.excluded_routes4.push_back(prefix("10.1.1.0", 24));
  EXPECT_DECISION(decide("10.1.1.2", 8080, 1337, 1337), MC_TO_INBOUND, MC_CNT_REDIRECTED_IN);
}

class InboundDecisionTest : public DecisionTest {
 protected:
  mc_decision arrive(const std::string& dst, uint16_t port, uint8_t iface_flags = 0) {
    mc_arrival a{};
    a.dst = addr(dst);
    a.dport = port;
    a.v4 = __mc_is_v4_mapped(&a.dst);
    a.iface_flags = iface_flags;
    return mc_decide_inbound(&cfg, &a);
  }
};

TEST_F(InboundDecisionTest, AllPortsExceptExcludedAndTunnel) {
  cfg.inbound = MC_INBOUND_ALL;  // -b '*' -d 15090,15021
  env.port_flags[15090] = MC_PORT_IN_EXCLUDE;
  env.port_flags[15021] = MC_PORT_IN_EXCLUDE;
  EXPECT_DECISION(arrive("10.1.1.2", 8080), MC_TO_INBOUND, MC_CNT_IN_REDIRECTED);
  EXPECT_DECISION(arrive("fd00::2", 8080), MC_TO_INBOUND, MC_CNT_IN_REDIRECTED);
  EXPECT_DECISION(arrive("10.1.1.2", 15090), MC_PASS, MC_CNT_IN_EXCLUDED_PORT);
  EXPECT_DECISION(arrive("10.1.1.2", 15008), MC_PASS, MC_CNT_IN_TUNNEL);
}

TEST_F(InboundDecisionTest, PortListOnlyAndEmptyList) {
  cfg.inbound = MC_INBOUND_LIST;  // -b 8080
  env.port_flags[8080] = MC_PORT_IN_INCLUDE;
  EXPECT_DECISION(arrive("10.1.1.2", 8080), MC_TO_INBOUND, MC_CNT_IN_REDIRECTED);
  EXPECT_DECISION(arrive("10.1.1.2", 9090), MC_PASS, MC_CNT_IN_NOT_INCLUDED);
  // -d only applies with '*'.
  env.port_flags[8080] |= MC_PORT_IN_EXCLUDE;
  EXPECT_DECISION(arrive("10.1.1.2", 8080), MC_TO_INBOUND, MC_CNT_IN_REDIRECTED);
  cfg.inbound = MC_INBOUND_NONE;  // -b ''
  EXPECT_DECISION(arrive("10.1.1.2", 8080), MC_PASS, MC_CNT_IN_NOT_INCLUDED);
}

TEST_F(InboundDecisionTest, ExcludedAndVirtualInterfaces) {
  cfg.inbound = MC_INBOUND_ALL;
  EXPECT_DECISION(arrive("10.1.1.2", 8080, MC_IF_EXCLUDE), MC_PASS, MC_CNT_IN_EXCLUDED_IFACE);
  // -k with -i '*': everything to the outbound listener, before -c.
  EXPECT_DECISION(arrive("10.9.9.9", 80, MC_IF_VIRT | MC_IF_EXCLUDE), MC_TO_OUTBOUND, MC_CNT_IN_VIRT_REDIRECTED);
  // -k with -i CIDRs: only those; the rest returns.
  cfg.flags &= ~MC_POD_INCLUDE_ALL;
  env.incl4.push_back(prefix("10.9.0.0", 16));
  EXPECT_DECISION(arrive("10.9.9.9", 80, MC_IF_VIRT), MC_TO_OUTBOUND, MC_CNT_IN_VIRT_REDIRECTED);
  EXPECT_DECISION(arrive("10.8.9.9", 80, MC_IF_VIRT), MC_PASS, MC_CNT_IN_EXCLUDED_IFACE);
}

}  // namespace
