// The rule model and its restore rendering, and istio rule sets for flag
// combinations beyond the goldens. Expected payloads are derived by hand
// from istio's capture/run.go (step order and spelling) and builder
// (chain creation, table order).
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "istio_flags.h"
#include "istio_rules.h"
#include "rule_builder.h"

namespace {

using meshcap::iptables::build_istio_rules;
using meshcap::iptables::Family;
using meshcap::iptables::kIpVersionSpecific;
using meshcap::iptables::needs_tproxy_routes;
using meshcap::iptables::render_istio_rules;
using meshcap::iptables::RuleBuilder;

std::string lines(const std::vector<std::string>& ls) {
  std::string out;
  for (const auto& l : ls) out += l + "\n";
  return out;
}

meshcap::CaptureConfig parse(std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
  // -u is explicit so the result does not depend on an istio-proxy user here.
  args.insert(args.begin(), {"-u", "1337"});
  return meshcap::parse_capture_args(args, [env](const std::string& name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  });
}

// The ISTIO_OUTPUT owner rules for -u 1337 (-g defaults to -u), without DNS.
std::vector<std::string> owner_rules(const std::string& loopback) {
  return {
      "-A ISTIO_OUTPUT -o lo ! -d " + loopback +
          " -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
      "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN",
      "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
      "-A ISTIO_OUTPUT -o lo ! -d " + loopback +
          " -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
      "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN",
      "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
  };
}

// The same with DNS capture on (port 53 spared on lo).
std::vector<std::string> owner_rules_dns(const std::string& loopback) {
  return {
      "-A ISTIO_OUTPUT -o lo ! -d " + loopback +
          " -p tcp -m multiport ! --dports 53,15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
      "-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --uid-owner 1337 -j RETURN",
      "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
      "-A ISTIO_OUTPUT -o lo ! -d " + loopback +
          " -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
      "-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --gid-owner 1337 -j RETURN",
      "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN",
  };
}

std::vector<std::string> concat(std::vector<std::vector<std::string>> parts) {
  std::vector<std::string> out;
  for (auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

const std::vector<std::string> kNatHead = {
    "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN",
    "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
};
const std::vector<std::string> kNatChains = {"-N ISTIO_INBOUND", "-N ISTIO_REDIRECT", "-N ISTIO_IN_REDIRECT",
                                             "-N ISTIO_OUTPUT"};

// ---------------------------------------------------------------------------
// Rule model

TEST(RuleBuilder, CreatesChainsWithRulesFirstThenJumpTargetsPerTable) {
  RuleBuilder b(false);
  b.append("nat", "ISTIO_A", {"-j", "ISTIO_B"});
  b.append("nat", "OUTPUT", {"-j", "ISTIO_C"});
  b.append("nat", "ISTIO_D", {"-p", "tcp", "-j", "REDIRECT", "--to-ports", "1"});
  b.append("mangle", "ISTIO_A", {"-j", "RETURN"});
  EXPECT_EQ(b.restore_payload(Family::V4).text(),
            lines({"* mangle", "-N ISTIO_A", "-A ISTIO_A -j RETURN", "COMMIT",  //
                   "* nat", "-N ISTIO_A", "-N ISTIO_D", "-N ISTIO_B", "-N ISTIO_C", "-A ISTIO_A -j ISTIO_B",
                   "-A OUTPUT -j ISTIO_C", "-A ISTIO_D -p tcp -j REDIRECT --to-ports 1", "COMMIT"}));
}

TEST(RuleBuilder, OrdersTablesByNameAndSkipsEmptyOnes) {
  RuleBuilder b(false);
  b.append("raw", "OUTPUT", {"-j", "RETURN"});
  b.append("nat", "OUTPUT", {"-j", "RETURN"});
  b.append("filter", "INPUT", {"-j", "ACCEPT"});
  b.append("mangle", "PREROUTING", {"-j", "DROP"});
  const auto payload = b.restore_payload(Family::V4);
  ASSERT_EQ(payload.tables.size(), 4u);
  EXPECT_EQ(payload.tables[0].table, "filter");
  EXPECT_EQ(payload.tables[1].table, "mangle");
  EXPECT_EQ(payload.tables[2].table, "nat");
  EXPECT_EQ(payload.tables[3].table, "raw");
  // Built-in chains and targets are never created.
  for (const auto& t : payload.tables) EXPECT_EQ(t.lines.size(), 1u) << t.table;
}

TEST(RuleBuilder, InsertsKeepTheirPositionTextAndAddOrder) {
  RuleBuilder b(true);
  b.append("nat", "ISTIO_X", {"-j", "RETURN"});
  b.insert("nat", "PREROUTING", 1, {"-i", "eth0", "-j", "RETURN"});
  b.insert_v4("nat", "ISTIO_X", 2, {"-s", "127.0.0.6/32", "-j", "RETURN"});
  b.insert_v6("nat", "ISTIO_X", 2, {"-s", "::6/128", "-j", "RETURN"});
  EXPECT_EQ(b.restore_payload(Family::V4).text(),
            lines({"* nat", "-N ISTIO_X", "-A ISTIO_X -j RETURN", "-I PREROUTING 1 -i eth0 -j RETURN",
                   "-I ISTIO_X 2 -s 127.0.0.6/32 -j RETURN", "COMMIT"}));
  EXPECT_EQ(b.restore_payload(Family::V6).text(),
            lines({"* nat", "-N ISTIO_X", "-A ISTIO_X -j RETURN", "-I PREROUTING 1 -i eth0 -j RETURN",
                   "-I ISTIO_X 2 -s ::6/128 -j RETURN", "COMMIT"}));
  const auto& r = b.rules(Family::V4)[1];
  EXPECT_TRUE(r.is_insert());
  EXPECT_EQ(r.spec(), (std::vector<std::string>{"-i", "eth0", "-j", "RETURN"}));
  EXPECT_EQ(r.trailing_jump(), "RETURN");
}

TEST(RuleBuilder, VersionedRulesSubstituteEveryPlaceholderPerFamily) {
  RuleBuilder b(true);
  const std::string ph(kIpVersionSpecific);
  b.append_versioned("127.0.0.1/32", "::1/128", "nat", "ISTIO_O", {"!", "-d", ph, "-s", ph, "-j", "RETURN"});
  ASSERT_EQ(b.rules(Family::V4).size(), 1u);
  ASSERT_EQ(b.rules(Family::V6).size(), 1u);
  EXPECT_EQ(b.rules(Family::V4)[0].text(), "-A ISTIO_O ! -d 127.0.0.1/32 -s 127.0.0.1/32 -j RETURN");
  EXPECT_EQ(b.rules(Family::V6)[0].text(), "-A ISTIO_O ! -d ::1/128 -s ::1/128 -j RETURN");
}

TEST(RuleBuilder, Ipv6RulesAreDroppedWhenIpv6IsDisabled) {
  RuleBuilder b(false);
  b.append("nat", "OUTPUT", {"-j", "ISTIO_OUTPUT"});
  b.append_v6("nat", "ISTIO_OUTPUT", {"-d", "::1/128", "-j", "RETURN"});
  b.insert_v6("nat", "PREROUTING", 1, {"-j", "RETURN"});
  b.append_versioned("a", "b", "nat", "ISTIO_OUTPUT", {std::string(kIpVersionSpecific), "-j", "RETURN"});
  EXPECT_TRUE(b.rules(Family::V6).empty());
  EXPECT_TRUE(b.restore_payload(Family::V6).empty());
  EXPECT_EQ(b.restore_payload(Family::V6).text(), "");
  EXPECT_EQ(b.rules(Family::V4).size(), 2u);
}

// ---------------------------------------------------------------------------
// istio rule sets not covered by the goldens

TEST(IstioRules, OutboundPortExclusionsReturnTcpAndUdpBeforeLoopbackRules) {
  const auto cfg = parse({"-o", "9000,9001", "-b", "80"});
  const auto p = render_istio_rules(cfg, false);
  EXPECT_EQ(p.dry_run_output(),
            lines(concat({{"* nat"},
                          kNatChains,
                          kNatHead,
                          {"-A PREROUTING -p tcp -j ISTIO_INBOUND",
                           "-A ISTIO_INBOUND -p tcp --dport 80 -j ISTIO_IN_REDIRECT", "-A OUTPUT -j ISTIO_OUTPUT",
                           "-A ISTIO_OUTPUT -p tcp --dport 9000 -j RETURN",
                           "-A ISTIO_OUTPUT -p udp --dport 9000 -j RETURN",
                           "-A ISTIO_OUTPUT -p tcp --dport 9001 -j RETURN",
                           "-A ISTIO_OUTPUT -p udp --dport 9001 -j RETURN",
                           "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN"},
                          owner_rules("127.0.0.1/32"),
                          {"-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN", "COMMIT"}})));
  EXPECT_TRUE(p.ipv6.empty());
}

TEST(IstioRules, ExcludeCidrsOfBothFamiliesGoToTheirOwnPayloadInOrder) {
  const auto cfg =
      parse({"-x", "10.1.0.0/16,fd00::/8,192.168.0.0/24,2001:db8::/48", "-i", "*", "-k", "eth7", "--dual-stack"});
  const auto p = render_istio_rules(cfg, cfg.dual_stack);
  auto expected = [](const std::string& src, const std::string& lo, const std::vector<std::string>& excludes) {
    std::vector<std::string> out = concat({{"* nat"}, kNatChains, {"-I PREROUTING 1 -i eth7 -j RETURN"}, kNatHead,
                                           {"-A OUTPUT -j ISTIO_OUTPUT", "-A ISTIO_OUTPUT -o lo -s " + src + " -j RETURN"},
                                           owner_rules(lo), {"-A ISTIO_OUTPUT -d " + lo + " -j RETURN"}});
    for (const auto& x : excludes) out.push_back("-A ISTIO_OUTPUT -d " + x + " -j RETURN");
    out.insert(out.end(),
               {"-A ISTIO_OUTPUT -j ISTIO_REDIRECT", "-I PREROUTING 1 -i eth7 -j ISTIO_REDIRECT", "COMMIT"});
    return lines(out);
  };
  EXPECT_EQ(p.ipv4.text(), expected("127.0.0.6/32", "127.0.0.1/32", {"10.1.0.0/16", "192.168.0.0/24"}));
  EXPECT_EQ(p.ipv6.text(), expected("::6/128", "::1/128", {"fd00::/8", "2001:db8::/48"}));
  EXPECT_EQ(p.dry_run_output(), p.ipv4.text() + p.ipv6.text());
}

TEST(IstioRules, IncludeCidrsWithVirtualInterfacesInsertPerCidrAndInterface) {
  const auto cfg = parse({"-i", "10.0.0.0/8,172.16.0.0/12", "-k", "veth1,veth2"});
  const auto p = render_istio_rules(cfg, false);
  const auto& nat = p.ipv4.tables.at(0);
  const std::vector<std::string> tail(nat.lines.end() - 6, nat.lines.end());
  EXPECT_EQ(tail, (std::vector<std::string>{
                      "-I PREROUTING 1 -i veth1 -d 10.0.0.0/8 -j ISTIO_REDIRECT",
                      "-I PREROUTING 1 -i veth2 -d 10.0.0.0/8 -j ISTIO_REDIRECT",
                      "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT",
                      "-I PREROUTING 1 -i veth1 -d 172.16.0.0/12 -j ISTIO_REDIRECT",
                      "-I PREROUTING 1 -i veth2 -d 172.16.0.0/12 -j ISTIO_REDIRECT",
                      "-A ISTIO_OUTPUT -d 172.16.0.0/12 -j ISTIO_REDIRECT",
                  }));
}

TEST(IstioRules, CaptureAllDnsRedirectsEveryResolverInBothFamilies) {
  const auto cfg = parse({"--redirect-dns", "--capture-all-dns", "--dual-stack"});
  const auto p = render_istio_rules(cfg, true);
  auto expected = [](const std::string& src, const std::string& lo) {
    return lines(concat({{"* nat"},
                         kNatChains,
                         {"-N ISTIO_OUTPUT_DNS"},
                         kNatHead,
                         {"-A OUTPUT -j ISTIO_OUTPUT", "-A ISTIO_OUTPUT -o lo -s " + src + " -j RETURN"},
                         owner_rules_dns(lo),
                         {"-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS",
                          "-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -j REDIRECT --to-ports 15053",
                          "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j REDIRECT --to-port 15053",
                          "-A ISTIO_OUTPUT -d " + lo + " -j RETURN", "COMMIT"},
                         {"* raw", "-N ISTIO_OUTPUT_DNS", "-N ISTIO_INBOUND", "-A OUTPUT -j ISTIO_OUTPUT_DNS",
                          "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1",
                          "-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --uid-owner 1337 -j CT --zone 2",
                          "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --gid-owner 1337 -j CT --zone 1",
                          "-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --gid-owner 1337 -j CT --zone 2",
                          "-A PREROUTING -j ISTIO_INBOUND", "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j CT --zone 2",
                          "-A ISTIO_INBOUND -p udp --sport 53 -j CT --zone 1", "COMMIT"}}));
  };
  EXPECT_EQ(p.ipv4.text(), expected("127.0.0.6/32", "127.0.0.1/32"));
  EXPECT_EQ(p.ipv6.text(), expected("::6/128", "::1/128"));
}

TEST(IstioRules, Ipv6OnlyDnsServersJumpToDnsChainOnlyInIpv6) {
  const auto cfg = parse({"--redirect-dns", "--dns-servers", "fd00::53", "--dual-stack"});
  const auto p = render_istio_rules(cfg, true);
  const std::vector<std::string> zones = {
      "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --uid-owner 1337 -j CT --zone 1",
      "-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --uid-owner 1337 -j CT --zone 2",
      "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --gid-owner 1337 -j CT --zone 1",
      "-A ISTIO_OUTPUT_DNS -p udp --sport 15053 -m owner --gid-owner 1337 -j CT --zone 2",
  };
  // IPv4: DNS capture is on (port 53 spared on lo) but there is nothing to redirect.
  EXPECT_EQ(p.ipv4.text(),
            lines(concat({{"* nat"}, kNatChains, kNatHead,
                          {"-A OUTPUT -j ISTIO_OUTPUT", "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN"},
                          owner_rules_dns("127.0.0.1/32"),
                          {"-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN", "COMMIT"},
                          {"* raw", "-N ISTIO_OUTPUT_DNS", "-A OUTPUT -j ISTIO_OUTPUT_DNS"}, zones, {"COMMIT"}})));
  EXPECT_EQ(p.ipv6.text(),
            lines(concat({{"* nat"}, kNatChains, {"-N ISTIO_OUTPUT_DNS"}, kNatHead,
                          {"-A OUTPUT -j ISTIO_OUTPUT", "-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN"},
                          owner_rules_dns("::1/128"),
                          {"-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS",
                           "-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -d fd00::53/128 -j REDIRECT --to-ports 15053",
                           "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d fd00::53/128 -j REDIRECT --to-port 15053",
                           "-A ISTIO_OUTPUT -d ::1/128 -j RETURN", "COMMIT"},
                          {"* raw", "-N ISTIO_OUTPUT_DNS", "-N ISTIO_INBOUND", "-A OUTPUT -j ISTIO_OUTPUT_DNS"},
                          zones,
                          {"-A PREROUTING -j ISTIO_INBOUND",
                           "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d fd00::53/128 -j CT --zone 2",
                           "-A ISTIO_INBOUND -p udp --sport 53 -s fd00::53/128 -j CT --zone 1", "COMMIT"}})));
}

TEST(IstioRules, RedirectDnsWithoutServersIsOff) {
  const auto with = parse({"--redirect-dns", "--dns-servers", ""});
  const auto without = parse({});
  EXPECT_FALSE(meshcap::iptables::dns_redirect_active(with));
  EXPECT_EQ(render_istio_rules(with, false).dry_run_output(), render_istio_rules(without, false).dry_run_output());
}

// A split plan (eBPF outbound with DNS, iptables inbound): the owner rules
// stay istio's DNS variants, the DNS redirect and its zones are eBPF's.
TEST(IstioRules, DnsRedirectByEbpfKeepsTheOwnerVariantsOnly) {
  auto cfg = parse({"-u", "1337", "--redirect-dns", "--capture-all-dns"});
  cfg.dns_redirect_by_ebpf = true;
  const std::string v4 = render_istio_rules(cfg, false).ipv4.text();
  EXPECT_NE(v4.find("-m multiport ! --dports 53,15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT"), std::string::npos)
      << v4;
  EXPECT_NE(v4.find("-o lo -p tcp ! --dport 53 -m owner ! --uid-owner 1337 -j RETURN"), std::string::npos) << v4;
  EXPECT_EQ(v4.find("ISTIO_OUTPUT_DNS"), std::string::npos) << v4;
  EXPECT_EQ(v4.find("* raw"), std::string::npos) << v4;
  EXPECT_EQ(v4.find("15053"), std::string::npos) << v4;
}

TEST(IstioRules, ExcludeInterfacesWithTproxyAlsoReturnInMangle) {
  const auto cfg = parse({"-c", "eth9", "-m", "TPROXY", "-b", "80"});
  const auto p = render_istio_rules(cfg, false);
  EXPECT_EQ(p.ipv4.text(),
            lines(concat({{"* mangle", "-N ISTIO_DIVERT", "-N ISTIO_TPROXY", "-N ISTIO_INBOUND",
                           "-A PREROUTING -i eth9 -j RETURN", "-A OUTPUT -o eth9 -j RETURN",
                           "-A ISTIO_DIVERT -j MARK --set-mark 1337", "-A ISTIO_DIVERT -j ACCEPT",
                           "-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff "
                           "--on-port 15006",
                           "-A PREROUTING -p tcp -j ISTIO_INBOUND",
                           "-A ISTIO_INBOUND -p tcp --dport 80 -m conntrack --ctstate RELATED,ESTABLISHED -j "
                           "ISTIO_DIVERT",
                           "-A ISTIO_INBOUND -p tcp --dport 80 -j ISTIO_TPROXY",
                           "-A PREROUTING -p tcp -m mark --mark 1337 -j CONNMARK --save-mark",
                           "-A OUTPUT -p tcp -o lo -m mark --mark 1337 -j RETURN",
                           "-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --uid-owner 1337 -j MARK --set-mark 1338",
                           "-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --gid-owner 1337 -j MARK --set-mark 1338",
                           "-A OUTPUT -p tcp -m connmark --mark 1337 -j CONNMARK --restore-mark",
                           "-I ISTIO_INBOUND 1 -p tcp -m mark --mark 1337 -j RETURN",
                           "-I ISTIO_INBOUND 2 -p tcp -s 127.0.0.6/32 -i lo -j RETURN",
                           "-I ISTIO_INBOUND 3 -p tcp -i lo -m mark ! --mark 1338 -j RETURN", "COMMIT"},
                          {"* nat"}, kNatChains,
                          {"-A PREROUTING -i eth9 -j RETURN", "-A OUTPUT -o eth9 -j RETURN"}, kNatHead,
                          {"-A OUTPUT -j ISTIO_OUTPUT", "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN"},
                          owner_rules("127.0.0.1/32"), {"-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN", "COMMIT"}})));
  EXPECT_TRUE(needs_tproxy_routes(cfg));
}

TEST(IstioRules, TproxyCustomMarkPortsAndInboundExclusions) {
  const auto cfg = parse({"-p", "15101", "-z", "15106", "-e", "15108", "-t", "0x10", "-r", "200", "-m", "TPROXY", "-b",
                          "*", "-d", "22,2222"});
  const auto p = render_istio_rules(cfg, false);
  const auto* mangle = p.ipv4.find("mangle");
  ASSERT_NE(mangle, nullptr);
  EXPECT_EQ(mangle->lines,
            (std::vector<std::string>{
                "-N ISTIO_DIVERT", "-N ISTIO_TPROXY", "-N ISTIO_INBOUND", "-A ISTIO_DIVERT -j MARK --set-mark 0x10",
                "-A ISTIO_DIVERT -j ACCEPT",
                "-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --tproxy-mark 0x10/0xffffffff --on-port 15106",
                "-A PREROUTING -p tcp -j ISTIO_INBOUND", "-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN",
                "-A ISTIO_INBOUND -p tcp --dport 2222 -j RETURN",
                "-A ISTIO_INBOUND -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT",
                "-A ISTIO_INBOUND -p tcp -j ISTIO_TPROXY",
                "-A PREROUTING -p tcp -m mark --mark 0x10 -j CONNMARK --save-mark",
                "-A OUTPUT -p tcp -o lo -m mark --mark 0x10 -j RETURN",
                "-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --uid-owner 1337 -j MARK --set-mark 1338",
                "-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --gid-owner 1337 -j MARK --set-mark 1338",
                "-A OUTPUT -p tcp -m connmark --mark 0x10 -j CONNMARK --restore-mark",
                "-I ISTIO_INBOUND 1 -p tcp -m mark --mark 0x10 -j RETURN",
                "-I ISTIO_INBOUND 2 -p tcp -s 127.0.0.6/32 -i lo -j RETURN",
                "-I ISTIO_INBOUND 3 -p tcp -i lo -m mark ! --mark 1338 -j RETURN"}));
  const auto* nat = p.ipv4.find("nat");
  ASSERT_NE(nat, nullptr);
  EXPECT_EQ(std::vector<std::string>(nat->lines.begin() + 4, nat->lines.begin() + 7),
            (std::vector<std::string>{"-A ISTIO_INBOUND -p tcp --dport 15108 -j RETURN",
                                      "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15101",
                                      "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15106"}));
  // In TPROXY mode inbound capture lives in mangle only.
  for (const auto& l : nat->lines) EXPECT_EQ(l.find("PREROUTING"), std::string::npos) << l;
}

TEST(IstioRules, RedirectAllInboundExceptExcludedPorts) {
  const auto cfg = parse({"-b", "*", "-d", "22,15090"});
  const auto p = render_istio_rules(cfg, false);
  const auto& nat = p.ipv4.tables.at(0).lines;
  EXPECT_EQ(std::vector<std::string>(nat.begin() + 7, nat.begin() + 12),
            (std::vector<std::string>{"-A PREROUTING -p tcp -j ISTIO_INBOUND",
                                      "-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN",
                                      "-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN",
                                      "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT", "-A OUTPUT -j ISTIO_OUTPUT"}));
  EXPECT_EQ(p.ipv4.tables.size(), 1u);  // no mangle without TPROXY
}

TEST(IstioRules, InboundExclusionsOnlyApplyToTheWildcard) {
  EXPECT_EQ(render_istio_rules(parse({"-b", "80", "-d", "22"}), false).dry_run_output(),
            render_istio_rules(parse({"-b", "80"}), false).dry_run_output());
}

TEST(IstioRules, TproxyWithoutInboundPortsKeepsMarksButNoDivertOrRoutes) {
  const auto cfg = parse({"-m", "TPROXY"});
  const auto p = render_istio_rules(cfg, false);
  const auto* mangle = p.ipv4.find("mangle");
  ASSERT_NE(mangle, nullptr);
  EXPECT_EQ(mangle->lines,
            (std::vector<std::string>{
                "-N ISTIO_INBOUND", "-A PREROUTING -p tcp -m mark --mark 1337 -j CONNMARK --save-mark",
                "-A OUTPUT -p tcp -o lo -m mark --mark 1337 -j RETURN",
                "-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --uid-owner 1337 -j MARK --set-mark 1338",
                "-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --gid-owner 1337 -j MARK --set-mark 1338",
                "-A OUTPUT -p tcp -m connmark --mark 1337 -j CONNMARK --restore-mark",
                "-I ISTIO_INBOUND 1 -p tcp -m mark --mark 1337 -j RETURN",
                "-I ISTIO_INBOUND 2 -p tcp -s 127.0.0.6/32 -i lo -j RETURN",
                "-I ISTIO_INBOUND 3 -p tcp -i lo -m mark ! --mark 1338 -j RETURN"}));
  EXPECT_FALSE(needs_tproxy_routes(cfg));
}

TEST(IstioRules, OwnerGroupsIncludeListReturnsForEveryOtherGroup) {
  const auto cfg = parse({"--dual-stack"}, {{"ISTIO_OUTBOUND_OWNER_GROUPS", "1000,2000,wheel"}});
  const auto p = render_istio_rules(cfg, true);
  const std::string rule =
      "-A ISTIO_OUTPUT -m owner ! --gid-owner 1000 -m owner ! --gid-owner 2000 -m owner ! --gid-owner wheel -j RETURN";
  for (const auto* payload : {&p.ipv4, &p.ipv6}) {
    const auto& nat = payload->tables.at(0).lines;
    // Right after the proxy GID rules, right before the loopback RETURN.
    ASSERT_GE(nat.size(), 2u);
    EXPECT_EQ(nat[nat.size() - 2], rule);
    EXPECT_EQ(nat[nat.size() - 3], "-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN");
  }
}

TEST(IstioRules, OwnerGroupsExcludeListReturnsPerGroup) {
  const auto cfg = parse({}, {{"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "100,200"}});
  const auto p = render_istio_rules(cfg, false);
  const auto& nat = p.ipv4.tables.at(0).lines;
  EXPECT_EQ(std::vector<std::string>(nat.end() - 3, nat.end()),
            (std::vector<std::string>{"-A ISTIO_OUTPUT -m owner --gid-owner 100 -j RETURN",
                                      "-A ISTIO_OUTPUT -m owner --gid-owner 200 -j RETURN",
                                      "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN"}));
}

TEST(IstioRules, LoopbackIncludeRangeOfEitherFamilyKeepsLoopbackTrafficCaptured) {
  // istio checks both families: an IPv6 loopback in -i affects IPv4 rules too.
  for (const auto& include : {std::string("127.0.0.0/8,10.0.0.0/8"), std::string("::1/128")}) {
    const auto cfg = parse({"-i", include, "--dual-stack"});
    const auto p = render_istio_rules(cfg, true);
    for (const auto* payload : {&p.ipv4, &p.ipv6}) {
      for (const auto& l : payload->tables.at(0).lines) {
        EXPECT_EQ(l.find("-o lo -m owner !"), std::string::npos) << include << ": " << l;
      }
    }
  }
  const auto p = render_istio_rules(parse({"-i", "127.0.0.0/8,10.0.0.0/8"}), false);
  const auto& nat = p.ipv4.tables.at(0).lines;
  EXPECT_EQ(std::vector<std::string>(nat.end() - 2, nat.end()),
            (std::vector<std::string>{"-A ISTIO_OUTPUT -d 127.0.0.0/8 -j ISTIO_REDIRECT",
                                      "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT"}));
}

TEST(IstioRules, Ipv6RangesAndServersAreIgnoredWithoutIpv6) {
  const auto cfg = parse({"-i", "10.0.0.0/8,fd00::/8", "-x", "fd01::/16", "--redirect-dns", "--dns-servers", "fd00::53"});
  const auto p = render_istio_rules(cfg, false);
  EXPECT_TRUE(p.ipv6.empty());
  const std::string out = p.dry_run_output();
  EXPECT_EQ(out, p.ipv4.text());
  EXPECT_EQ(out.find("fd0"), std::string::npos);
  EXPECT_NE(out.find("-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT\n"), std::string::npos);
}

TEST(IstioRules, Ipv6CidrsPrintInCanonicalForm) {
  const auto cfg = parse({"-i", "2001:DB8:0:0::/64", "--dual-stack"});
  const auto p = render_istio_rules(cfg, true);
  EXPECT_NE(p.ipv6.text().find("-A ISTIO_OUTPUT -d 2001:db8::/64 -j ISTIO_REDIRECT\n"), std::string::npos);
}

TEST(IstioRules, WildcardExcludeRangeIsRejected) {
  meshcap::CaptureConfig cfg = parse({});
  cfg.outbound_ranges_exclude.wildcard = true;
  EXPECT_THROW(render_istio_rules(cfg, false), meshcap::UsageError);
}

TEST(IstioRules, BuiltRulesMatchTheRenderedPayloads) {
  const auto cfg = parse({"-m", "TPROXY", "-b", "*", "-k", "eth1", "-i", "*", "--dual-stack"});
  const auto rules = build_istio_rules(cfg, true);
  const auto p = render_istio_rules(cfg, true);
  EXPECT_EQ(rules.restore_payload(Family::V4).text(), p.ipv4.text());
  EXPECT_EQ(rules.restore_payload(Family::V6).text(), p.ipv6.text());
}

}  // namespace
