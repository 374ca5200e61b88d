// The rule logic follows istio's tools/istio-iptables/pkg/capture/run.go
// (Run, handleInboundPortsInclude, SetupDNSRedir, addDNSConntrackZones):
// same rules, same order, same spelling. Comments name istio's step so the
// two can be compared side by side.
#include "istio_rules.h"

#include <spdlog/spdlog.h>

#include <utility>

namespace meshcap::iptables {

namespace {

using Args = std::vector<std::string>;

// Fixed values istio hard-codes.
constexpr const char* kInboundPassthroughV4 = "127.0.0.6/32";  // bind address of Envoy's passthrough cluster
constexpr const char* kInboundPassthroughV6 = "::6/128";
constexpr const char* kLoopbackV6 = "::1/128";
constexpr const char* kOutboundMark = "1338";       // TPROXY: Envoy outbound -> app by pod IP
constexpr const char* kAgentDnsPort = "15053";      // istio-agent's DNS proxy
constexpr const char* kDnsPort = "53";

const std::string kVersioned(kIpVersionSpecific);

class IstioRules {
 public:
  IstioRules(const CaptureConfig& cfg, bool ipv6_enabled)
      : cfg_(cfg), b_(ipv6_enabled), tproxy_(cfg.inbound_mode == InterceptionMode::Tproxy) {}

  RuleBuilder build() {
    if (cfg_.outbound_ranges_exclude.wildcard) {
      throw UsageError("-x: invalid value '*': outbound exclude ranges cannot be a wildcard");
    }
    const std::string& lo4 = cfg_.ipv4_loopback_cidr_text;
    const bool dns = dns_redirect_active(cfg_);
    if (cfg_.redirect_dns && !dns) {
      spdlog::warn("--redirect-dns is set, but --capture-all-dns is not and no DNS servers are known; "
                   "DNS capture disabled");
    }

    // A rule per excluded range, and some fifty more.
    b_.reserve(cfg_.outbound_ranges_exclude.v4.size() + cfg_.outbound_ranges_include.v4.size() + 64,
               cfg_.outbound_ranges_exclude.v6.size() + cfg_.outbound_ranges_include.v6.size() + 64);
    exclude_interfaces();
    // Traffic arriving on the virtual interfaces is never inbound-captured.
    for (const auto& iface : cfg_.reroute_virtual_interfaces) {
      b_.insert("nat", "PREROUTING", 1, {"-i", iface, "-j", "RETURN"});
    }
    if (cfg_.drop_invalid) {
      b_.append("mangle", "PREROUTING", {"-m", "conntrack", "--ctstate", "INVALID", "-j", kIstioDrop});
      b_.append("mangle", kIstioDrop, {"-j", "DROP"});
    }
    // The tunnel port is never captured; the two redirect chains.
    b_.append("nat", kIstioInbound, {"-p", "tcp", "--dport", cfg_.inbound_tunnel_port_text, "-j", "RETURN"});
    b_.append("nat", kIstioRedirect, {"-p", "tcp", "-j", "REDIRECT", "--to-ports", cfg_.proxy_port_text});
    b_.append("nat", kIstioInRedirect,
              {"-p", "tcp", "-j", "REDIRECT", "--to-ports", cfg_.inbound_capture_port_text});

    inbound_ports();

    b_.append("nat", "OUTPUT", {"-j", kIstioOutput});
    for (const auto& port : cfg_.outbound_ports_exclude.tokens) {
      b_.append("nat", kIstioOutput, {"-p", "tcp", "--dport", port, "-j", "RETURN"});
      b_.append("nat", kIstioOutput, {"-p", "udp", "--dport", port, "-j", "RETURN"});
    }
    // Connections Envoy's inbound passthrough makes from 127.0.0.6 / ::6.
    b_.append_versioned(kInboundPassthroughV4, kInboundPassthroughV6, "nat", kIstioOutput,
                        {"-o", "lo", "-s", kVersioned, "-j", "RETURN"});

    proxy_owners(dns);
    owner_groups();
    if (dns && !cfg_.dns_redirect_by_ebpf) dns_redirect();

    // Localhost traffic (Envoy-aware apps, container to container) is not captured.
    b_.append_versioned(lo4, kLoopbackV6, "nat", kIstioOutput, {"-d", kVersioned, "-j", "RETURN"});
    // Exclusions before inclusions.
    for (const auto& cidr : cfg_.outbound_ranges_exclude.v4) {
      b_.append_v4("nat", kIstioOutput, {"-d", cidr.str(), "-j", "RETURN"});
    }
    for (const auto& cidr : cfg_.outbound_ranges_exclude.v6) {
      b_.append_v6("nat", kIstioOutput, {"-d", cidr.str(), "-j", "RETURN"});
    }
    for (const auto& port : cfg_.outbound_ports_include.tokens) {
      b_.append("nat", kIstioOutput, {"-p", "tcp", "--dport", port, "-j", kIstioRedirect});
    }
    outbound_ranges(Family::V4);
    outbound_ranges(Family::V6);

    if (tproxy_) tproxy_marks();
    return std::move(b_);
  }

 private:
  void exclude_interfaces() {
    for (const auto& iface : cfg_.exclude_interfaces) {
      b_.append("nat", "PREROUTING", {"-i", iface, "-j", "RETURN"});
      b_.append("nat", "OUTPUT", {"-o", iface, "-j", "RETURN"});
    }
    if (!tproxy_) return;
    for (const auto& iface : cfg_.exclude_interfaces) {
      b_.append("mangle", "PREROUTING", {"-i", iface, "-j", "RETURN"});
      b_.append("mangle", "OUTPUT", {"-o", iface, "-j", "RETURN"});
    }
  }

  // istio's handleInboundPortsInclude: nothing unless -b is non-empty.
  void inbound_ports() {
    const PortList& include = cfg_.inbound_ports_include;
    if (!include.wildcard && include.tokens.empty()) return;
    const std::string table = tproxy_ ? "mangle" : "nat";
    if (tproxy_) {
      // Marked packets are routed to lo (policy routing), where TPROXY hands them to Envoy.
      b_.append("mangle", kIstioDivert, {"-j", "MARK", "--set-mark", cfg_.tproxy_mark});
      b_.append("mangle", kIstioDivert, {"-j", "ACCEPT"});
      b_.append_versioned(cfg_.ipv4_loopback_cidr_text, kLoopbackV6, "mangle", kIstioTproxy,
                          {"!", "-d", kVersioned, "-p", "tcp", "-j", "TPROXY", "--tproxy-mark",
                           cfg_.tproxy_mark + "/0xffffffff", "--on-port", cfg_.inbound_capture_port_text});
    }
    b_.append(table, "PREROUTING", {"-p", "tcp", "-j", kIstioInbound});

    if (include.wildcard) {
      for (const auto& port : cfg_.inbound_ports_exclude.tokens) {
        b_.append(table, kIstioInbound, {"-p", "tcp", "--dport", port, "-j", "RETURN"});
      }
      if (tproxy_) {
        b_.append("mangle", kIstioInbound,
                  {"-p", "tcp", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", kIstioDivert});
        b_.append("mangle", kIstioInbound, {"-p", "tcp", "-j", kIstioTproxy});
      } else {
        b_.append("nat", kIstioInbound, {"-p", "tcp", "-j", kIstioInRedirect});
      }
      return;
    }
    for (const auto& port : include.tokens) {
      if (tproxy_) {
        b_.append("mangle", kIstioInbound,
                  {"-p", "tcp", "--dport", port, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j",
                   kIstioDivert});
        b_.append("mangle", kIstioInbound, {"-p", "tcp", "--dport", port, "-j", kIstioTproxy});
      } else {
        b_.append("nat", kIstioInbound, {"-p", "tcp", "--dport", port, "-j", kIstioInRedirect});
      }
    }
  }

  // The proxy's own traffic (istio's UID/GID rules): back to itself over lo
  // is inbound-captured, everything else it sends is never captured again.
  void proxy_owners(bool dns) {
    const std::string& lo4 = cfg_.ipv4_loopback_cidr_text;
    const bool include_has_loopback = !cfg_.outbound_ranges_include.wildcard &&
                                      (cfg_.outbound_ranges_include.has_loopback_v4 ||
                                       cfg_.outbound_ranges_include.has_loopback_v6);
    for (const auto& uid : cfg_.proxy_uids.tokens) {
      // App -> VIP -> Envoy -> back to the app over lo: inbound capture.
      if (dns) {
        b_.append_versioned(lo4, kLoopbackV6, "nat", kIstioOutput,
                            {"-o", "lo", "!", "-d", kVersioned, "-p", "tcp", "-m", "multiport", "!", "--dports",
                             std::string(kDnsPort) + "," + cfg_.inbound_tunnel_port_text, "-m", "owner",
                             "--uid-owner", uid, "-j", kIstioInRedirect});
      } else {
        b_.append_versioned(lo4, kLoopbackV6, "nat", kIstioOutput,
                            {"-o", "lo", "!", "-d", kVersioned, "-p", "tcp", "!", "--dport",
                             cfg_.inbound_tunnel_port_text, "-m", "owner", "--uid-owner", uid, "-j",
                             kIstioInRedirect});
      }
      // App -> itself over lo by endpoint address: not captured (unless -i lists a loopback range).
      if (!include_has_loopback) {
        if (dns) {
          b_.append("nat", kIstioOutput,
                    {"-o", "lo", "-p", "tcp", "!", "--dport", kDnsPort, "-m", "owner", "!", "--uid-owner", uid, "-j",
                     "RETURN"});
        } else {
          b_.append("nat", kIstioOutput, {"-o", "lo", "-m", "owner", "!", "--uid-owner", uid, "-j", "RETURN"});
        }
      }
      // Envoy's own traffic is never captured again.
      b_.append("nat", kIstioOutput, {"-m", "owner", "--uid-owner", uid, "-j", "RETURN"});
    }
    for (const auto& gid : cfg_.proxy_gids.tokens) {
      // Unlike the UID rule, istio's GID rule has no DNS variant.
      b_.append_versioned(lo4, kLoopbackV6, "nat", kIstioOutput,
                          {"-o", "lo", "!", "-d", kVersioned, "-p", "tcp", "!", "--dport",
                           cfg_.inbound_tunnel_port_text, "-m", "owner", "--gid-owner", gid, "-j", kIstioInRedirect});
      if (!include_has_loopback) {
        if (dns) {
          b_.append("nat", kIstioOutput,
                    {"-o", "lo", "-p", "tcp", "!", "--dport", kDnsPort, "-m", "owner", "!", "--gid-owner", gid, "-j",
                     "RETURN"});
        } else {
          b_.append("nat", kIstioOutput, {"-o", "lo", "-m", "owner", "!", "--gid-owner", gid, "-j", "RETURN"});
        }
      }
      b_.append("nat", kIstioOutput, {"-m", "owner", "--gid-owner", gid, "-j", "RETURN"});
    }
  }

  // istio's handleCaptureByOwnerGroup.
  void owner_groups() {
    if (cfg_.owner_groups_except) {
      for (const auto& group : cfg_.owner_groups.tokens) {
        b_.append("nat", kIstioOutput, {"-m", "owner", "--gid-owner", group, "-j", "RETURN"});
      }
      return;
    }
    // Only the listed groups are captured: return when the owner is none of them.
    Args args;
    for (const auto& group : cfg_.owner_groups.tokens) {
      args.insert(args.end(), {"-m", "owner", "!", "--gid-owner", group});
    }
    args.insert(args.end(), {"-j", "RETURN"});
    b_.append("nat", kIstioOutput, std::move(args));
  }

  // istio's SetupDNSRedir.
  void dns_redirect() {
    const bool all = cfg_.capture_all_dns;
    const auto& v4 = cfg_.dns_servers_v4;
    const auto& v6 = cfg_.dns_servers_v6;
    b_.append("raw", "OUTPUT", {"-j", kIstioOutputDns});
    // Jump only for the families that have DNS rules.
    if (all || !v4.empty()) b_.append_v4("nat", kIstioOutput, {"-j", kIstioOutputDns});
    if (all || !v6.empty()) b_.append_v6("nat", kIstioOutput, {"-j", kIstioOutputDns});

    if (all) {
      b_.append("nat", kIstioOutputDns,
                {"-p", "tcp", "--dport", kDnsPort, "-j", "REDIRECT", "--to-ports", kAgentDnsPort});
    } else {
      // Only the resolvers, so a local DNS proxy's upstream queries do not loop back.
      for (const auto& s : v4) {
        b_.append_v4("nat", kIstioOutputDns,
                     {"-p", "tcp", "--dport", kDnsPort, "-d", s + "/32", "-j", "REDIRECT", "--to-ports",
                      kAgentDnsPort});
      }
      for (const auto& s : v6) {
        b_.append_v6("nat", kIstioOutputDns,
                     {"-p", "tcp", "--dport", kDnsPort, "-d", s + "/128", "-j", "REDIRECT", "--to-ports",
                      kAgentDnsPort});
      }
    }
    // istio spells the UDP rules with --to-port (singular).
    if (all) {
      b_.append("nat", kIstioOutputDns,
                {"-p", "udp", "--dport", kDnsPort, "-j", "REDIRECT", "--to-port", kAgentDnsPort});
    } else {
      for (const auto& s : v4) {
        b_.append_v4("nat", kIstioOutputDns,
                     {"-p", "udp", "--dport", kDnsPort, "-d", s + "/32", "-j", "REDIRECT", "--to-port",
                      kAgentDnsPort});
      }
      for (const auto& s : v6) {
        b_.append_v6("nat", kIstioOutputDns,
                     {"-p", "udp", "--dport", kDnsPort, "-d", s + "/128", "-j", "REDIRECT", "--to-port",
                      kAgentDnsPort});
      }
    }
    dns_conntrack_zones();
  }

  // istio's addDNSConntrackZones: zone 1 for proxy <-> upstream resolvers,
  // zone 2 for app <-> proxy, so the two UDP flows never share an entry.
  void dns_conntrack_zones() {
    for (const auto& uid : cfg_.proxy_uids.tokens) {
      b_.append("raw", kIstioOutputDns,
                {"-p", "udp", "--dport", kDnsPort, "-m", "owner", "--uid-owner", uid, "-j", "CT", "--zone", "1"});
      b_.append("raw", kIstioOutputDns,
                {"-p", "udp", "--sport", kAgentDnsPort, "-m", "owner", "--uid-owner", uid, "-j", "CT", "--zone", "2"});
    }
    for (const auto& gid : cfg_.proxy_gids.tokens) {
      b_.append("raw", kIstioOutputDns,
                {"-p", "udp", "--dport", kDnsPort, "-m", "owner", "--gid-owner", gid, "-j", "CT", "--zone", "1"});
      b_.append("raw", kIstioOutputDns,
                {"-p", "udp", "--sport", kAgentDnsPort, "-m", "owner", "--gid-owner", gid, "-j", "CT", "--zone", "2"});
    }
    if (cfg_.capture_all_dns) {
      b_.append("raw", "PREROUTING", {"-j", kIstioInbound});
      b_.append("raw", kIstioOutputDns, {"-p", "udp", "--dport", kDnsPort, "-j", "CT", "--zone", "2"});
      b_.append("raw", kIstioInbound, {"-p", "udp", "--sport", kDnsPort, "-j", "CT", "--zone", "1"});
      return;
    }
    if (!cfg_.dns_servers_v4.empty()) b_.append_v4("raw", "PREROUTING", {"-j", kIstioInbound});
    for (const auto& s : cfg_.dns_servers_v4) {
      b_.append_v4("raw", kIstioOutputDns, {"-p", "udp", "--dport", kDnsPort, "-d", s + "/32", "-j", "CT", "--zone", "2"});
      b_.append_v4("raw", kIstioInbound, {"-p", "udp", "--sport", kDnsPort, "-s", s + "/32", "-j", "CT", "--zone", "1"});
    }
    if (!cfg_.dns_servers_v6.empty()) b_.append_v6("raw", "PREROUTING", {"-j", kIstioInbound});
    for (const auto& s : cfg_.dns_servers_v6) {
      b_.append_v6("raw", kIstioOutputDns,
                   {"-p", "udp", "--dport", kDnsPort, "-d", s + "/128", "-j", "CT", "--zone", "2"});
      b_.append_v6("raw", kIstioInbound,
                   {"-p", "udp", "--sport", kDnsPort, "-s", s + "/128", "-j", "CT", "--zone", "1"});
    }
  }

  // istio's handleOutboundIncludeRules for one family.
  void outbound_ranges(Family family) {
    const CidrList& include = cfg_.outbound_ranges_include;
    auto append = [&](Args args) {
      family == Family::V4 ? b_.append_v4("nat", kIstioOutput, std::move(args))
                           : b_.append_v6("nat", kIstioOutput, std::move(args));
    };
    auto insert_prerouting = [&](Args args) {
      family == Family::V4 ? b_.insert_v4("nat", "PREROUTING", 1, std::move(args))
                           : b_.insert_v6("nat", "PREROUTING", 1, std::move(args));
    };
    if (include.wildcard) {
      append({"-j", kIstioRedirect});
      for (const auto& iface : cfg_.reroute_virtual_interfaces) insert_prerouting({"-i", iface, "-j", kIstioRedirect});
      return;
    }
    for (const auto& cidr : family == Family::V4 ? include.v4 : include.v6) {
      const std::string text = cidr.str();
      for (const auto& iface : cfg_.reroute_virtual_interfaces) {
        insert_prerouting({"-i", iface, "-d", text, "-j", kIstioRedirect});
      }
      append({"-d", text, "-j", kIstioRedirect});
    }
  }

  // The TPROXY tail of istio's Run(): connection marks and the ISTIO_INBOUND
  // guards (added even when -b is empty, as istio does).
  void tproxy_marks() {
    const std::string& mark = cfg_.tproxy_mark;
    const std::string& lo4 = cfg_.ipv4_loopback_cidr_text;
    b_.append("mangle", "PREROUTING", {"-p", "tcp", "-m", "mark", "--mark", mark, "-j", "CONNMARK", "--save-mark"});
    b_.append("mangle", "OUTPUT", {"-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN"});
    for (const auto& uid : cfg_.proxy_uids.tokens) {
      b_.append_versioned(lo4, kLoopbackV6, "mangle", "OUTPUT",
                          {"!", "-d", kVersioned, "-p", "tcp", "-o", "lo", "-m", "owner", "--uid-owner", uid, "-j",
                           "MARK", "--set-mark", kOutboundMark});
    }
    for (const auto& gid : cfg_.proxy_gids.tokens) {
      b_.append_versioned(lo4, kLoopbackV6, "mangle", "OUTPUT",
                          {"!", "-d", kVersioned, "-p", "tcp", "-o", "lo", "-m", "owner", "--gid-owner", gid, "-j",
                           "MARK", "--set-mark", kOutboundMark});
    }
    b_.append("mangle", "OUTPUT",
              {"-p", "tcp", "-m", "connmark", "--mark", mark, "-j", "CONNMARK", "--restore-mark"});
    b_.insert("mangle", kIstioInbound, 1, {"-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN"});
    b_.insert_v4("mangle", kIstioInbound, 2, {"-p", "tcp", "-s", kInboundPassthroughV4, "-i", "lo", "-j", "RETURN"});
    b_.insert_v6("mangle", kIstioInbound, 2, {"-p", "tcp", "-s", kInboundPassthroughV6, "-i", "lo", "-j", "RETURN"});
    b_.insert("mangle", kIstioInbound, 3,
              {"-p", "tcp", "-i", "lo", "-m", "mark", "!", "--mark", kOutboundMark, "-j", "RETURN"});
  }

  const CaptureConfig& cfg_;
  RuleBuilder b_;
  bool tproxy_;
};

}  // namespace

std::string RulePayloads::dry_run_output() const {
  std::string out = ipv4.text();
  if (ipv6_enabled) out += ipv6.text();
  return out;
}

bool needs_tproxy_routes(const CaptureConfig& cfg) {
  return cfg.inbound_mode == InterceptionMode::Tproxy &&
         (cfg.inbound_ports_include.wildcard || !cfg.inbound_ports_include.tokens.empty());
}

RuleBuilder build_istio_rules(const CaptureConfig& cfg, bool ipv6_enabled) {
  return IstioRules(cfg, ipv6_enabled).build();
}

RulePayloads render_istio_rules(const CaptureConfig& cfg, bool ipv6_enabled) {
  const RuleBuilder rules = build_istio_rules(cfg, ipv6_enabled);
  RulePayloads out;
  out.ipv4 = rules.restore_payload(Family::V4);
  out.ipv6 = rules.restore_payload(Family::V6);
  out.ipv6_enabled = ipv6_enabled;
  return out;
}

}  // namespace meshcap::iptables
