#include "equivalence/reference_model.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace meshcap::test::eq {

IpAddr IpAddr::parse(const std::string& text) {
  IpAddr a;
  unsigned char buf[16];
  if (inet_pton(AF_INET, text.c_str(), buf) == 1) {
    a.family = AF_INET;
    std::memcpy(a.bytes, buf, 4);
    return a;
  }
  if (inet_pton(AF_INET6, text.c_str(), buf) == 1) {
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(buf, mapped, 12) == 0) {
      a.family = AF_INET;
      std::memcpy(a.bytes, buf + 12, 4);
    } else {
      a.family = AF_INET6;
      std::memcpy(a.bytes, buf, 16);
    }
    return a;
  }
  throw std::invalid_argument("not an IP address: " + text);
}

bool IpAddr::operator==(const IpAddr& o) const {
  return family == o.family && std::memcmp(bytes, o.bytes, family == AF_INET ? 4 : 16) == 0;
}

Cidr Cidr::parse(const std::string& text) {
  Cidr c;
  const auto slash = text.find('/');
  c.net = IpAddr::parse(text.substr(0, slash));
  const int max = c.net.family == AF_INET ? 32 : 128;
  c.prefix = slash == std::string::npos ? max : std::stoi(text.substr(slash + 1));
  if (c.prefix < 0 || c.prefix > max) throw std::invalid_argument("bad prefix: " + text);
  return c;
}

bool Cidr::contains(const IpAddr& a) const {
  if (a.family != net.family) return false;
  int bits = prefix;
  for (int i = 0; bits > 0; ++i, bits -= 8) {
    const uint8_t mask = bits >= 8 ? 0xff : static_cast<uint8_t>(0xff << (8 - bits));
    if ((a.bytes[i] & mask) != (net.bytes[i] & mask)) return false;
  }
  return true;
}

bool Cidr::is_loopback() const {
  if (net.family == AF_INET) return net.bytes[0] == 127;
  static const uint8_t one[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  return std::memcmp(net.bytes, one, 16) == 0;
}

std::string to_string(Landing l) {
  switch (l) {
    case Landing::outbound_listener:
      return "outbound-listener";
    case Landing::inbound_listener:
      return "inbound-listener";
    case Landing::dns_listener:
      return "dns-listener";
    default:
      return "destination";
  }
}

namespace {

template <typename T>
bool has(const std::vector<T>& v, T x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

bool any_contains(const std::vector<std::string>& cidrs, const IpAddr& a) {
  return std::any_of(cidrs.begin(), cidrs.end(), [&](const std::string& c) { return Cidr::parse(c).contains(a); });
}

// "-d 127.0.0.1/32" for IPv4 (ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR), "::1/128" for IPv6.
bool in_loopback_cidr(const CaptureFlags& f, const IpAddr& a) {
  return Cidr::parse(a.family == AF_INET ? f.loopback4 : "::1/128").contains(a);
}

// The inbound passthrough source: "-s 127.0.0.6/32" / "-s ::6/128".
bool is_passthrough_source(const IpAddr& a) {
  return Cidr::parse(a.family == AF_INET ? "127.0.0.6/32" : "::6/128").contains(a);
}

}  // namespace

Landing decide_outbound(const CaptureFlags& f, const OutboundConn& c) {
  const bool tcp = !c.udp;
  const bool dns = f.dns_active();
  // -c: "-A OUTPUT -o IF -j RETURN" before "-A OUTPUT -j ISTIO_OUTPUT", any
  // protocol. Every destination that is not local is routed out of the veth.
  if (f.exclude_pod_iface && !c.via_lo) return Landing::destination;
  // -o: first in ISTIO_OUTPUT, a tcp and a udp rule per port (lo too).
  if (has(f.out_ports_exclude, c.dport)) return Landing::destination;
  // O1, any protocol.
  if (c.via_lo && c.bound_src && is_passthrough_source(*c.bound_src)) return Landing::destination;

  bool include_has_loopback = false;
  if (!f.out_include_all)
    for (const auto& s : f.out_include) include_has_loopback |= Cidr::parse(s).is_loopback();

  // O2 / O3 / O4, per UID then per GID; with several IDs the first one's
  // "other owners over lo" rule already returns the later ones' lo traffic.
  // With DNS on, the UID in-redirect rule also spares port 53 (the GID one
  // does not), and the "other owners over lo" RETURN is TCP to ports other
  // than 53 only, for both. The owner RETURN matches every protocol.
  auto owner_rules = [&](const std::vector<uint32_t>& ids, uint32_t who, bool is_uid) -> std::optional<Landing> {
    for (uint32_t id : ids) {
      const bool spares_dns = dns && is_uid;
      if (tcp && c.via_lo && !in_loopback_cidr(f, c.dst) && c.dport != f.tunnel_port &&
          !(spares_dns && c.dport == CaptureFlags::kDnsPort) && who == id)
        return Landing::inbound_listener;
      const bool lo_return_matches = dns ? tcp && c.dport != CaptureFlags::kDnsPort : true;
      if (!include_has_loopback && c.via_lo && who != id && lo_return_matches) return Landing::destination;
      if (who == id) return Landing::destination;
    }
    return std::nullopt;
  };
  if (auto l = owner_rules(f.uids, c.uid, true)) return *l;
  if (auto l = owner_rules(f.gids, c.gid, false)) return *l;

  // Owner groups: "--gid-owner G -j RETURN" per excluded group, or one rule
  // returning every owner that is in none of the included groups.
  if (f.groups == CaptureFlags::Groups::exclude && has(f.owner_groups, c.gid)) return Landing::destination;
  if (f.groups == CaptureFlags::Groups::include && !has(f.owner_groups, c.gid)) return Landing::destination;

  // ISTIO_OUTPUT_DNS: TCP and UDP to port 53, of any address with
  // --capture-all-dns, else of the listed resolvers of the packet's family.
  if (dns && c.dport == CaptureFlags::kDnsPort) {
    const bool listed = std::any_of(f.dns_servers.begin(), f.dns_servers.end(),
                                    [&](const std::string& s) { return IpAddr::parse(s) == c.dst; });
    if (f.capture_all_dns || listed) return Landing::dns_listener;
  }

  if (in_loopback_cidr(f, c.dst)) return Landing::destination;
  if (any_contains(f.out_exclude, c.dst)) return Landing::destination;  // O5
  if (!tcp) return Landing::destination;  // O8: the rules below are TCP only (ISTIO_REDIRECT is -p tcp)
  if (has(f.out_ports_include, c.dport)) return Landing::outbound_listener;                        // O6 (-q)
  if (f.out_include_all || any_contains(f.out_include, c.dst)) return Landing::outbound_listener;  // O6 (-i)
  return Landing::destination;                                                                     // O7
}

Landing decide_inbound(const CaptureFlags& f, const InboundConn& c) {
  // -k rules are inserted at the top of PREROUTING: the redirect (per -i
  // CIDR, or for everything with -i '*'), then a RETURN for the rest.
  if (f.virt_pod_iface) {
    if (f.out_include_all || any_contains(f.out_include, c.dst)) return Landing::outbound_listener;  // I2
    return Landing::destination;
  }
  if (f.exclude_pod_iface) return Landing::destination;                       // I1
  if (f.inbound == CaptureFlags::Inbound::none) return Landing::destination;  // I6
  if (c.dport == f.tunnel_port) return Landing::destination;                  // I3
  if (f.inbound == CaptureFlags::Inbound::all)                                // I4
    return has(f.in_ports_exclude, c.dport) ? Landing::destination : Landing::inbound_listener;
  return has(f.in_ports, c.dport) ? Landing::inbound_listener : Landing::destination;  // I5
}

}  // namespace meshcap::test::eq
