// A small, independent reference model of istio-iptables' nat rules (the
// specification, /work/shared/CAPTURE-SEMANTICS.md and the golden files in
// shared/istio-golden): for one TCP connection, where it lands. Written from
// the rule order of the generated rule set, not from meshcap's code, so the
// equivalence suite can tell "all modes agree" from "all modes are right".
//
// nat OUTPUT (a connect() made inside the pod), first match wins:
//   -A OUTPUT -o <-c iface> -j RETURN                                  (-c)
//   ISTIO_OUTPUT:
//     -p tcp --dport <-o port> -j RETURN                                (-o)
//     -o lo -s 127.0.0.6/32 (::6/128) -j RETURN                         O1
//     per UID in -u:
//       -o lo ! -d <loopback> -p tcp ! --dport <-e> --uid-owner U -> 15006   O2
//       -o lo --uid-owner !U -j RETURN  (absent when -i lists a loopback net) O3
//       --uid-owner U -j RETURN                                         O4
//     per GID in -g: the same with --gid-owner
//     owner groups (ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE])
//     -j ISTIO_OUTPUT_DNS (--redirect-dns, see below)
//     -d <loopback: ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR, ::1/128> -j RETURN
//     -d <-x cidr> -j RETURN                                            O5
//     -p tcp --dport <-q port> -> 15001                                 O6
//     -d <-i cidr> (or everything for '*') -> ISTIO_REDIRECT (-p tcp) -> 15001  O6
//   anything else: not captured                                         O7
//
// DNS (--redirect-dns, active when --capture-all-dns is set or resolvers are
// known; the dns-uid-gid and tproxy goldens):
//   - the -o exclusion has a "-p udp --dport P -j RETURN" twin, and -c, O1,
//     "--uid-owner U -j RETURN", "--gid-owner G -j RETURN" and the owner
//     groups match every protocol: the proxy's own queries go out untouched;
//   - per UID, the in-redirect rule excludes port 53 besides the tunnel port
//     ("-m multiport ! --dports 53,<-e>") and the lo RETURN becomes
//     "-o lo -p tcp ! --dport 53 -m owner ! --uid-owner U -j RETURN";
//   - per GID, the in-redirect rule has no DNS variant (GID 1337 alone dialing
//     the pod's own address on TCP 53 lands on 15006), the lo RETURN becomes
//     "-o lo -p tcp ! --dport 53 -m owner ! --gid-owner G -j RETURN";
//   - ISTIO_OUTPUT_DNS, after the owner groups and before the loopback
//     RETURN (so it sees loopback destinations too), TCP and UDP alike:
//       -p tcp|udp --dport 53 [-d <resolver of the family>] -> 15053
//     ("-d" per resolver, or no "-d" at all with --capture-all-dns);
//   - UDP to any other port, and UDP that no DNS rule takes: not captured.
//   The raw table's conntrack zones only keep the two legs of a NATed UDP
//   exchange apart; they decide nothing about where a datagram lands.
// nat PREROUTING (a connection arriving from outside the pod):
//   -i <-k iface> [-d <-i cidr>] -> 15001, then -i <-k iface> -j RETURN   I2
//   -i <-c iface> -j RETURN                                             I1
//   ISTIO_INBOUND (only when -b is not empty):
//     --dport <-e> -j RETURN                                            I3
//     -b '*': --dport <-d port> -j RETURN, then everything -> 15006     I4
//     -b LIST: --dport P -> 15006 for P in LIST                         I5
//   -b '': nothing                                                      I6
// UDP and other protocols without DNS capture: never captured (O8).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace meshcap::test::eq {

/// An IPv4 or IPv6 address; v4-mapped IPv6 literals are parsed as IPv4 (the
/// connection is IPv4 on the wire, which is what both netfilter and the
/// connect4 path see).
struct IpAddr {
  int family = 0;                                ///< AF_INET or AF_INET6
  uint8_t bytes[16]{};                           ///< network order; IPv4 in the first 4 bytes
  static IpAddr parse(const std::string& text);  ///< throws std::invalid_argument
  bool operator==(const IpAddr& o) const;
};

struct Cidr {
  IpAddr net;
  int prefix = 0;
  static Cidr parse(const std::string& text);  ///< "a.b.c.d/n", "x::/n"
  bool contains(const IpAddr& a) const;        ///< false across families
  bool is_loopback() const;                    ///< istio's HasLoopBackIP
};

/// The istio-iptables flags the suite varies. Rendered to meshcap's command
/// line (and env) by the test; interpreted here.
struct CaptureFlags {
  uint16_t proxy_port = 15001;
  uint16_t inbound_port = 15006;
  uint16_t tunnel_port = 15008;                                    ///< -e
  std::vector<uint32_t> uids{1337};                                ///< -u
  std::vector<uint32_t> gids{1337};                                ///< -g
  bool out_include_all = false;                                    ///< -i '*'
  std::vector<std::string> out_include;                            ///< -i CIDRs
  std::vector<std::string> out_exclude;                            ///< -x CIDRs
  std::vector<uint16_t> out_ports_exclude;                         ///< -o
  std::vector<uint16_t> out_ports_include;                         ///< -q
  enum class Inbound { none, list, all } inbound = Inbound::none;  ///< -b '' / LIST / '*'
  std::vector<uint16_t> in_ports;                                  ///< -b LIST
  std::vector<uint16_t> in_ports_exclude;                          ///< -d
  bool exclude_pod_iface = false;                                  ///< -c <pod veth>
  bool virt_pod_iface = false;                                     ///< -k <pod veth>
  enum class Groups { all, include, exclude } groups = Groups::all;
  std::vector<uint32_t> owner_groups;      ///< ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]
  std::string loopback4 = "127.0.0.1/32";  ///< ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR
  /// --drop-invalid: a mangle rule dropping packets conntrack calls INVALID.
  /// No effect on where a connection lands; it makes `auto` split the plan
  /// (eBPF outbound, iptables inbound) and `--mode ebpf` refuse.
  bool drop_invalid = false;
  bool redirect_dns = false;             ///< --redirect-dns
  bool capture_all_dns = false;          ///< --capture-all-dns
  std::vector<std::string> dns_servers;  ///< --dns-servers (always given with --redirect-dns)
  static constexpr uint16_t kDnsPort = 53;
  static constexpr uint16_t kDnsListenerPort = 15053;  ///< the agent's DNS proxy
  /// istio's rule: DNS capture is on only with capture-all or known resolvers.
  bool dns_active() const { return redirect_dns && (capture_all_dns || !dns_servers.empty()); }
};

enum class Landing { outbound_listener, inbound_listener, dns_listener, destination };
std::string to_string(Landing l);

/// A TCP connect(), or a UDP datagram (udp), sent from inside the pod.
struct OutboundConn {
  bool udp = false;
  IpAddr dst;
  uint16_t dport = 0;
  std::optional<IpAddr> bound_src;  ///< bind() before connect (127.0.0.6)
  uint32_t uid = 0, gid = 0;
  bool via_lo = false;  ///< dst is loopback or one of the pod's own addresses
};

/// A TCP connection from outside the pod, arriving on the pod's veth.
struct InboundConn {
  IpAddr dst;  ///< one of the pod's addresses
  uint16_t dport = 0;
};

/// The nat OUTPUT decision (rows O1-O8, and DNS).
Landing decide_outbound(const CaptureFlags& f, const OutboundConn& c);
/// The nat PREROUTING decision (rows I1-I6).
Landing decide_inbound(const CaptureFlags& f, const InboundConn& c);

}  // namespace meshcap::test::eq
