// The one notion of "what to capture" that every mode shares: istio-iptables'
// settings, parsed and validated once. The iptables renderer, the eBPF loader
// and the agent's planner all read this struct; none of them parse flags.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace meshcap {

/// Bad user input (a flag, port, CIDR, UID, path...). The message is one line
/// that names the bad value; the command exits 2 and touches nothing.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A comma-separated port list as istio takes it (`-b`, `-d`, `-o`, `-q`).
/// `tokens` keeps the validated spelling in the order given (what the iptables
/// renderer prints); `ports` holds the same values as numbers.
struct PortList {
  bool wildcard = false;  // "*" (only meaningful for -b)
  std::vector<std::string> tokens;
  std::vector<uint16_t> ports;
  bool empty() const { return !wildcard && ports.empty(); }
};

/// One address prefix. `addr` holds 4 bytes (IPv4) or 16 bytes (IPv6) in
/// network order; `str()` gives the canonical text istio prints
/// (Go's netip.Prefix.String(): the address as given, not masked).
struct Cidr {
  int family = 0;  // AF_INET or AF_INET6
  std::array<uint8_t, 16> addr{};
  uint8_t prefix_len = 0;
  std::string str() const;
  bool is_loopback() const;  // 127.0.0.0/8 or ::1, as Go's Addr.IsLoopback
};

/// A CIDR list (`-i`, `-x`): "*" or prefixes, split by family in given order.
struct CidrList {
  bool wildcard = false;
  std::vector<Cidr> v4;
  std::vector<Cidr> v6;
  bool has_loopback_v4 = false;
  bool has_loopback_v6 = false;
  bool empty() const { return !wildcard && v4.empty() && v6.empty(); }
};

/// A UID or GID list (`-u`, `-g`, owner groups): tokens as given (a number or a
/// name, as iptables' owner match takes them) and, index for index, the
/// numeric id (empty for a name that does not resolve on this machine: the
/// iptables path leaves that to iptables, the eBPF path refuses it).
struct IdList {
  std::vector<std::string> tokens;
  std::vector<std::optional<uint32_t>> ids;
  bool empty() const { return tokens.empty(); }
};

enum class InterceptionMode { Redirect, Tproxy };

struct CaptureConfig {
  // Ports (-p, -z, -e) as given and as numbers.
  std::string proxy_port_text = "15001";
  uint16_t proxy_port = 15001;
  std::string inbound_capture_port_text = "15006";
  uint16_t inbound_capture_port = 15006;
  std::string inbound_tunnel_port_text = "15008";
  uint16_t inbound_tunnel_port = 15008;

  IdList proxy_uids;  // -u (default: 1337)
  IdList proxy_gids;  // -g (default: same as -u)

  InterceptionMode inbound_mode = InterceptionMode::Redirect;  // -m
  std::string tproxy_mark = "1337";                            // -t
  std::string tproxy_route_table = "133";                      // -r

  PortList inbound_ports_include;   // -b ("" = none, "*" = all)
  PortList inbound_ports_exclude;   // -d
  PortList outbound_ports_include;  // -q
  PortList outbound_ports_exclude;  // -o
  CidrList outbound_ranges_include;  // -i
  CidrList outbound_ranges_exclude;  // -x (never "*")
  std::vector<std::string> exclude_interfaces;          // -c
  std::vector<std::string> reroute_virtual_interfaces;  // -k

  // ISTIO_OUTBOUND_OWNER_GROUPS / _EXCLUDE (env only). When include is "*",
  // owner_groups_except is true and owner_groups lists the excluded groups;
  // otherwise owner_groups lists the only groups captured.
  bool owner_groups_except = true;
  IdList owner_groups;

  // ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR (env only), default 127.0.0.1/32.
  Cidr ipv4_loopback_cidr;
  std::string ipv4_loopback_cidr_text = "127.0.0.1/32";  // as given

  bool redirect_dns = false;     // --redirect-dns
  bool capture_all_dns = false;  // --capture-all-dns
  bool drop_invalid = false;     // --drop-invalid
  bool dual_stack = false;       // --dual-stack
  bool run_validation = false;   // --run-validation
  bool skip_rule_apply = false;  // --skip-rule-apply
  // --dns-servers (default: nameservers of /etc/resolv.conf, read only when
  // DNS redirect is on and capture-all-dns is off), split by family, as given.
  std::vector<std::string> dns_servers_v4;
  std::vector<std::string> dns_servers_v6;
  std::string force_iptables_binary;  // "", "nft" or "legacy"
  uint16_t iptables_probe_port = 15002;
  double probe_timeout_seconds = 5.0;
  // meshcap's own: --accelerate (sk_msg between the application's and the
  // proxy's sockets; eBPF outbound only, off by default).
  bool accelerate = false;
};

/// Parses a decimal port 1..65535 (no sign, spaces or leading zeros);
/// `what` names the flag in the error.
uint16_t parse_port(const std::string& text, const std::string& what);
/// Parses a port list; "*" is accepted only when `allow_wildcard`.
PortList parse_port_list(const std::string& text, const std::string& what,
                         bool allow_wildcard);
/// Parses one CIDR ("10.0.0.0/8", "2001:db8::/32"); a bare address is an error.
Cidr parse_cidr(const std::string& text, const std::string& what);
/// Parses a CIDR list; "*" is accepted only when `allow_wildcard`.
CidrList parse_cidr_list(const std::string& text, const std::string& what,
                         bool allow_wildcard);
/// Parses UIDs (`is_group` false) or GIDs: numbers or user/group names
/// (resolved with lookup_account when they exist).
IdList parse_id_list(const std::string& text, const std::string& what,
                     bool is_group);
/// Parses an interface name list (-c, -k): each name 1..15 characters, no '/',
/// whitespace, ':' or '*'.
std::vector<std::string> parse_interface_list(const std::string& text,
                                              const std::string& what);
/// The UID of user `name` (/etc/passwd) or the GID of group `name`
/// (/etc/group; `is_group`), read from the files as istio-iptables does:
/// it is built without cgo, and Go's os/user then reads only these files,
/// never NSS (which here would load libnss_systemd and ask systemd-userdb,
/// a few milliseconds of every `meshcap init`).
std::optional<uint32_t> lookup_account(const std::string& name, bool is_group,
                                       const std::string& file = "");
/// Splits on `sep` (',' as istio's config.Split) and drops empty items.
std::vector<std::string> split_list(const std::string& text, char sep = ',');

/// True when DNS capture is on: --redirect-dns and either --capture-all-dns
/// or at least one DNS server (istio turns DNS capture off, with a warning,
/// otherwise).
bool dns_redirect_active(const CaptureConfig& cfg);

}  // namespace meshcap
