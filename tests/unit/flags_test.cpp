// istio-iptables' flags and environment variables through meshcap's one
// parser: defaults, precedence, and a clear error for each bad value.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>

#include "istio_flags.h"

namespace meshcap {
namespace {

EnvLookup fake_env(std::map<std::string, std::string> vars) {
  return [vars](const std::string& k) -> std::optional<std::string> {
    auto it = vars.find(k);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

CaptureConfig parse(std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
  return parse_capture_args(args, fake_env(std::move(env)));
}

TEST(Flags, IstioDefaults) {
  auto c = parse({});
  EXPECT_EQ(c.proxy_port, 15001);
  EXPECT_EQ(c.inbound_capture_port, 15006);
  EXPECT_EQ(c.inbound_tunnel_port, 15008);
  ASSERT_EQ(c.proxy_uids.tokens.size(), 1u);
  // Default UID: ENVOY_USER's (istio-proxy) when it exists, else 1337.
  EXPECT_TRUE(c.proxy_uids.ids[0].has_value());
  EXPECT_EQ(c.proxy_gids.tokens, c.proxy_uids.tokens);
  EXPECT_EQ(c.inbound_mode, InterceptionMode::Redirect);
  EXPECT_TRUE(c.inbound_ports_include.empty());
  EXPECT_TRUE(c.outbound_ranges_include.empty());
  EXPECT_TRUE(c.owner_groups_except);
  EXPECT_TRUE(c.owner_groups.empty());
  EXPECT_EQ(c.ipv4_loopback_cidr.str(), "127.0.0.1/32");
  EXPECT_FALSE(c.dual_stack);
  EXPECT_EQ(c.tproxy_mark, "1337");
  EXPECT_EQ(c.tproxy_route_table, "133");
}

TEST(Flags, IstioInitArguments) {
  auto c = parse({"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d",
                  "15090,15021,15020"});
  EXPECT_TRUE(c.outbound_ranges_include.wildcard);
  EXPECT_TRUE(c.outbound_ranges_exclude.empty());
  EXPECT_TRUE(c.inbound_ports_include.wildcard);
  EXPECT_EQ(c.inbound_ports_exclude.ports, (std::vector<uint16_t>{15090, 15021, 15020}));
  EXPECT_EQ(c.proxy_uids.ids[0], 1337u);
  EXPECT_EQ(c.proxy_gids.ids[0], 1337u);
}

TEST(Flags, ListsKeepOrderAndSplitFamilies) {
  auto c = parse({"-u", "3,4", "-g", "1,2", "-x", "10.0.0.0/8,2001:db8::/32,192.168.0.0/16", "-q", "32000,31000",
                  "-c", "eth1,eth2", "-k", "veth0"});
  EXPECT_EQ(c.proxy_uids.tokens, (std::vector<std::string>{"3", "4"}));
  EXPECT_EQ(c.proxy_gids.tokens, (std::vector<std::string>{"1", "2"}));
  ASSERT_EQ(c.outbound_ranges_exclude.v4.size(), 2u);
  EXPECT_EQ(c.outbound_ranges_exclude.v4[1].str(), "192.168.0.0/16");
  ASSERT_EQ(c.outbound_ranges_exclude.v6.size(), 1u);
  EXPECT_EQ(c.outbound_ranges_exclude.v6[0].str(), "2001:db8::/32");
  EXPECT_EQ(c.outbound_ports_include.tokens, (std::vector<std::string>{"32000", "31000"}));
  EXPECT_EQ(c.exclude_interfaces, (std::vector<std::string>{"eth1", "eth2"}));
  EXPECT_EQ(c.reroute_virtual_interfaces, (std::vector<std::string>{"veth0"}));
}

TEST(Flags, CidrTextIsCanonicalAndUnmasked) {
  auto c = parse({"-i", "10.0.0.1/8,2001:DB8:0:0::/32"});
  EXPECT_EQ(c.outbound_ranges_include.v4[0].str(), "10.0.0.1/8");
  EXPECT_EQ(c.outbound_ranges_include.v6[0].str(), "2001:db8::/32");
  // Go's netip spelling: hex for ::a.b.c.d, dotted only for ::ffff:a.b.c.d.
  auto g = parse({"-x", "::127.0.0.53/128,::ffff:10.0.0.1/128,2001:db8:0:1:0:0:0:1/64,1:0:0:2:0:0:0:3/64,1:0:0:2:0:0:3:4/64"});
  EXPECT_EQ(g.outbound_ranges_exclude.v6[0].str(), "::7f00:35/128");
  EXPECT_EQ(g.outbound_ranges_exclude.v6[1].str(), "::ffff:10.0.0.1/128");
  EXPECT_EQ(g.outbound_ranges_exclude.v6[2].str(), "2001:db8:0:1::1/64");
  EXPECT_EQ(g.outbound_ranges_exclude.v6[3].str(), "1:0:0:2::3/64");  // the longest run
  EXPECT_EQ(g.outbound_ranges_exclude.v6[4].str(), "1::2:0:0:3:4/64");  // the first of equal runs
  auto l = parse({"-i", "127.0.0.0/8"});
  EXPECT_TRUE(l.outbound_ranges_include.has_loopback_v4);
}

TEST(Flags, EnvironmentFillsWhatFlagsDoNotGive) {
  auto c = parse({}, {{"ISTIO_SERVICE_CIDR", "*"}, {"INBOUND_CAPTURE_PORT", "16006"}, {"PROXY_UID", "7"}});
  EXPECT_TRUE(c.outbound_ranges_include.wildcard);
  EXPECT_EQ(c.inbound_capture_port, 16006);
  EXPECT_EQ(c.proxy_uids.ids[0], 7u);
  auto f = parse({"-z", "17006"}, {{"INBOUND_CAPTURE_PORT", "16006"}});
  EXPECT_EQ(f.inbound_capture_port, 17006);  // the flag wins
}

TEST(Flags, AdditionalEnvNamesOverrideThePrimaryOne) {
  EXPECT_TRUE(parse({}, {{"ISTIO_DUAL_STACK", "true"}}).dual_stack);
  EXPECT_FALSE(parse({}, {{"DUAL_STACK", "true"}, {"ISTIO_DUAL_STACK", "false"}}).dual_stack);
  EXPECT_TRUE(parse({}, {{"INVALID_DROP", "1"}}).drop_invalid);
  auto d = parse({}, {{"ISTIO_META_DNS_CAPTURE", "true"}, {"CAPTURE_ALL_DNS", "true"}});
  EXPECT_TRUE(d.redirect_dns);
  EXPECT_TRUE(d.capture_all_dns);
}

TEST(Flags, RepeatedFlagLastOneWins) {
  EXPECT_EQ(parse({"-p", "15001", "-p", "16001"}).proxy_port, 16001);
  EXPECT_TRUE(parse({"-b", "80", "-b", "*"}).inbound_ports_include.wildcard);
}

TEST(Flags, BooleanForms) {
  EXPECT_TRUE(parse({"--dual-stack"}).dual_stack);
  EXPECT_TRUE(parse({"--dual-stack=true"}).dual_stack);
  EXPECT_FALSE(parse({"--dual-stack=false"}).dual_stack);
  EXPECT_TRUE(parse({"--drop-invalid", "-p", "15001"}).drop_invalid);
}

TEST(Flags, OwnerGroupsAndLoopbackCidrFromEnvironment) {
  auto inc = parse({}, {{"ISTIO_OUTBOUND_OWNER_GROUPS", "java,202"}});
  EXPECT_FALSE(inc.owner_groups_except);
  EXPECT_EQ(inc.owner_groups.tokens, (std::vector<std::string>{"java", "202"}));
  EXPECT_EQ(inc.owner_groups.ids[1], 202u);
  auto exc = parse({}, {{"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "888,root"}});
  EXPECT_TRUE(exc.owner_groups_except);
  EXPECT_EQ(exc.owner_groups.ids[1], 0u);  // root resolves to GID 0
  auto lo = parse({}, {{"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/8"}});
  EXPECT_EQ(lo.ipv4_loopback_cidr.prefix_len, 8);
  EXPECT_EQ(lo.ipv4_loopback_cidr_text, "127.0.0.1/8");
}

TEST(Flags, DnsServersFromFlagOrResolvConf) {
  auto c = parse({"--redirect-dns", "--dns-servers", "127.0.0.53,::127.0.0.53"});
  EXPECT_EQ(c.dns_servers_v4, (std::vector<std::string>{"127.0.0.53"}));
  EXPECT_EQ(c.dns_servers_v6, (std::vector<std::string>{"::127.0.0.53"}));
  EXPECT_TRUE(parse({"--redirect-dns", "--dns-servers", ""}).dns_servers_v4.empty());

  std::string path = ::testing::TempDir() + "/resolv.conf";
  std::ofstream(path) << "search example\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\n";
  IstioFlagValues v;
  v.redirect_dns = "true";
  auto r = build_capture_config(v, fake_env({}), path);
  EXPECT_EQ(r.dns_servers_v4, (std::vector<std::string>{"10.96.0.10"}));
  EXPECT_EQ(r.dns_servers_v6, (std::vector<std::string>{"fd00::a"}));
  // Not read unless DNS redirect needs it.
  EXPECT_NO_THROW(build_capture_config(IstioFlagValues{}, fake_env({}), "/nonexistent/resolv.conf"));
}

struct BadInput {
  std::vector<std::string> args;
  std::map<std::string, std::string> env;
  std::string must_mention;
};

class BadFlags : public ::testing::TestWithParam<BadInput> {};

TEST_P(BadFlags, FailWithOneLineNamingTheValue) {
  const auto& p = GetParam();
  try {
    parse(p.args, p.env);
    FAIL() << "accepted bad input";
  } catch (const UsageError& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(p.must_mention), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Corpus, BadFlags,
    ::testing::Values(BadInput{{"-p", "0"}, {}, "'0'"}, BadInput{{"-p", "65536"}, {}, "'65536'"},
                      BadInput{{"-p", "15x01"}, {}, "'15x01'"}, BadInput{{"-p", "-1"}, {}, "-1"},
                      BadInput{{"-z", "080"}, {}, "'080'"}, BadInput{{"-b", "80,abc"}, {}, "'abc'"},
                      BadInput{{"-d", "*"}, {}, "'*'"}, BadInput{{"-q", "1,2,99999"}, {}, "'99999'"}, BadInput{{"-b", ","}, {}, "','"},
                      BadInput{{"-o", " 80"}, {}, "' 80'"}, BadInput{{"-i", "10.0.0.0"}, {}, "'10.0.0.0'"},
                      BadInput{{"-i", "10.0.0.0/33"}, {}, "'10.0.0.0/33'"},
                      BadInput{{"-x", "300.1.1.1/8"}, {}, "'300.1.1.1/8'"}, BadInput{{"-x", "*"}, {}, "'*'"},
                      BadInput{{"-x", "2001:db8::/129"}, {}, "'2001:db8::/129'"},
                      BadInput{{"-x", "fe80::1%eth0/64"}, {}, "fe80::1%eth0/64"},
                      BadInput{{"-u", "1337;rm"}, {}, "'1337;rm'"}, BadInput{{"-u", "99999999999"}, {}, "99999999999"},
                      BadInput{{"-g", "-5"}, {}, "'-5'"}, BadInput{{"-m", "redirect"}, {}, "'redirect'"},
                      BadInput{{"-m", "NAT"}, {}, "'NAT'"}, BadInput{{"-c", "a/b"}, {}, "'a/b'"},
                      BadInput{{"-k", "averyveryverylongname"}, {}, "'averyveryverylongname'"},
                      BadInput{{"-t", "abc"}, {}, "'abc'"}, BadInput{{"-r", "0"}, {}, "'0'"},
                      BadInput{{"--dual-stack=maybe"}, {}, "'maybe'"},
                      BadInput{{"--force-iptables-binary", "iptables"}, {}, "'iptables'"},
                      BadInput{{"--dns-servers", "1.2.3.4,dns.example"}, {}, "'dns.example'"},
                      BadInput{{"--probe-timeout", "soon"}, {}, "'soon'"}, BadInput{{"--bogus"}, {}, "--bogus"},
                      BadInput{{"-p"}, {}, "-p"}, BadInput{{}, {{"ISTIO_SERVICE_CIDR", "10.0.0.0/99"}}, "10.0.0.0/99"},
                      BadInput{{}, {{"ISTIO_DUAL_STACK", "yes"}}, "'yes'"},
                      BadInput{{}, {{"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "10.0.0.1/32"}}, "'10.0.0.1/32'"},
                      BadInput{{}, {{"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/4"}}, "'127.0.0.1/4'"},
                      BadInput{{}, {{"ISTIO_OUTBOUND_OWNER_GROUPS", "a b"}}, "'a b'"}));

// User and group names resolve from /etc/passwd and /etc/group as
// istio-iptables (Go without cgo) resolves them: the file's third field, the
// whole name matched, malformed lines skipped.
TEST(Flags, AccountNamesResolveFromTheFiles) {
  const std::string path = testing::TempDir() + "/meshcap-passwd-" + std::to_string(getpid());
  {
    std::ofstream out(path);
    out << "root:x:0:0:root:/root:/bin/bash\n"
        << "broken-line\n"
        << "istio:x:notanumber:1:\n"
        << "istio-proxy:x:1337:1337::/:/sbin/nologin\n"
        << "istio-proxy2:x:4242:4242::/:/sbin/nologin\n"
        << "grp:x:99999999999:\n";
  }
  EXPECT_EQ(lookup_account("istio-proxy", false, path), 1337u);
  EXPECT_EQ(lookup_account("istio-proxy2", false, path), 4242u);
  EXPECT_EQ(lookup_account("root", false, path), 0u);
  EXPECT_FALSE(lookup_account("istio", false, path));
  EXPECT_FALSE(lookup_account("istio-prox", false, path));
  EXPECT_FALSE(lookup_account("grp", true, path));
  EXPECT_FALSE(lookup_account("nobody-here", false, path));
  std::remove(path.c_str());
  // The machine's own files: root is 0 in both.
  EXPECT_EQ(lookup_account("root", false), 0u);
  EXPECT_EQ(lookup_account("root", true), 0u);
}

TEST(Flags, TooManyOwnerGroups) {
  std::string many;
  for (int i = 0; i < 65; i++) many += (i ? "," : "") + std::to_string(1000 + i);
  EXPECT_THROW(parse({}, {{"ISTIO_OUTBOUND_OWNER_GROUPS", many}}), UsageError);
}

// IPv4 prefixes print as inet_ntop prints the address (rule sets print
// thousands of them, so Cidr::str formats them by hand).
TEST(Cidr, Ipv4PrintsAsInetNtop) {
  uint32_t x = 0x9e3779b9u;
  for (int i = 0; i < 2000; i++) {
    x = x * 1664525u + 1013904223u;
    const unsigned prefix = static_cast<unsigned>(i % 33);
    in_addr a{};
    a.s_addr = htonl(prefix == 0 ? 0 : x & (0xffffffffu << (32 - prefix)));
    char want[INET_ADDRSTRLEN];
    ::inet_ntop(AF_INET, &a, want, sizeof want);
    const std::string text = std::string(want) + "/" + std::to_string(prefix);
    EXPECT_EQ(parse_cidr(text, "-x").str(), text);
  }
  for (const std::string t : {"0.0.0.0/0", "255.255.255.255/32", "10.0.0.0/8", "100.64.0.0/10", "1.2.3.4/32"})
    EXPECT_EQ(parse_cidr(t, "-x").str(), t);
}

}  // namespace
}  // namespace meshcap
