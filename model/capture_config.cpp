#include "capture_config.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <fstream>

namespace meshcap {

namespace {

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}

[[noreturn]] void bad(const std::string& what, const std::string& value, const std::string& why) {
  throw UsageError(what + ": invalid value '" + value + "': " + why);
}

}  // namespace

std::vector<std::string> split_list(const std::string& text, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(sep, start);
    if (comma == std::string::npos) comma = text.size();
    if (comma > start) out.push_back(text.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

uint16_t parse_port(const std::string& text, const std::string& what) {
  if (!all_digits(text)) bad(what, text, "not a port number (1-65535)");
  if (text.size() > 1 && text[0] == '0') bad(what, text, "leading zero in port number");
  if (text.size() > 5 || std::stoul(text) > 65535 || std::stoul(text) == 0)
    bad(what, text, "port out of range (1-65535)");
  return static_cast<uint16_t>(std::stoul(text));
}

PortList parse_port_list(const std::string& text, const std::string& what, bool allow_wildcard) {
  PortList list;
  if (text == "*") {
    if (!allow_wildcard) bad(what, text, "'*' is not allowed here");
    list.wildcard = true;
    return list;
  }
  for (const auto& token : split_list(text)) {
    list.ports.push_back(parse_port(token, what));
    list.tokens.push_back(token);
  }
  // istio takes "," as "ports given" (and emits a jump to an empty chain);
  // a list with nothing in it is a mistake.
  if (!text.empty() && list.ports.empty()) bad(what, text, "no port in the list");
  return list;
}

std::string Cidr::str() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (family == AF_INET) {  // by hand: rule sets print thousands of these
    char* p = buf;
    for (int i = 0; i < 4; i++) {
      const unsigned v = addr[i];
      if (v >= 100) *p++ = static_cast<char>('0' + v / 100);
      if (v >= 10) *p++ = static_cast<char>('0' + v / 10 % 10);
      *p++ = static_cast<char>('0' + v % 10);
      *p++ = i < 3 ? '.' : '/';
    }
    if (prefix_len >= 10) *p++ = static_cast<char>('0' + prefix_len / 10);
    *p++ = static_cast<char>('0' + prefix_len % 10);
    return std::string(buf, p);
  }
  // RFC 5952 as Go's netip prints it: dotted quad only for ::ffff:a.b.c.d
  // (glibc's inet_ntop also uses it for ::a.b.c.d, which Go prints in hex).
  static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (std::memcmp(addr.data(), kMapped, 12) == 0) {
    inet_ntop(AF_INET, addr.data() + 12, buf, sizeof(buf));
    return "::ffff:" + std::string(buf) + "/" + std::to_string(prefix_len);
  }
  uint16_t g[8];
  for (int i = 0; i < 8; i++) g[i] = static_cast<uint16_t>(addr[2 * i] << 8 | addr[2 * i + 1]);
  int best = -1, best_len = 0;
  for (int i = 0; i < 8;) {
    if (g[i] != 0) {
      i++;
      continue;
    }
    int j = i;
    while (j < 8 && g[j] == 0) j++;
    if (j - i > best_len && j - i >= 2) {
      best = i;
      best_len = j - i;
    }
    i = j;
  }
  std::string out;
  char hex[8];
  for (int i = 0; i < 8; i++) {
    if (i == best) {
      out += "::";
      i += best_len - 1;
      continue;
    }
    if (!out.empty() && out.back() != ':') out += ":";
    snprintf(hex, sizeof(hex), "%x", g[i]);
    out += hex;
  }
  return out + "/" + std::to_string(prefix_len);
}

bool Cidr::is_loopback() const {
  if (family == AF_INET) return addr[0] == 127;
  static const std::array<uint8_t, 16> kLoop6 = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  return addr == kLoop6;
}

Cidr parse_cidr(const std::string& text, const std::string& what) {
  auto slash = text.find('/');
  if (slash == std::string::npos) bad(what, text, "not a CIDR (expected ADDRESS/PREFIX)");
  std::string address = text.substr(0, slash);
  std::string bits = text.substr(slash + 1);
  Cidr c;
  if (address.find(':') != std::string::npos) {
    c.family = AF_INET6;
    if (address.find('%') != std::string::npos) bad(what, text, "zones are not allowed in a CIDR");
  } else {
    c.family = AF_INET;
  }
  if (inet_pton(c.family, address.c_str(), c.addr.data()) != 1) bad(what, text, "not a valid IP address");
  const unsigned max_bits = c.family == AF_INET ? 32 : 128;
  const auto bad_prefix = [&] { bad(what, text, "prefix length must be 0-" + std::to_string(max_bits)); };
  if (!all_digits(bits) || bits.size() > 3 || (bits.size() > 1 && bits[0] == '0')) bad_prefix();
  unsigned prefix = 0;  // 1-3 digits: no overflow
  for (char d : bits) prefix = prefix * 10 + static_cast<unsigned>(d - '0');
  if (prefix > max_bits) bad_prefix();
  c.prefix_len = static_cast<uint8_t>(prefix);
  return c;
}

CidrList parse_cidr_list(const std::string& text, const std::string& what, bool allow_wildcard) {
  CidrList list;
  if (text == "*") {
    if (!allow_wildcard) bad(what, text, "'*' is not allowed here");
    list.wildcard = true;
    return list;
  }
  for (const auto& token : split_list(text)) {
    Cidr c = parse_cidr(token, what);
    if (c.family == AF_INET) {
      list.has_loopback_v4 |= c.is_loopback();
      list.v4.push_back(c);
    } else {
      list.has_loopback_v6 |= c.is_loopback();
      list.v6.push_back(c);
    }
  }
  return list;
}

std::optional<uint32_t> lookup_account(const std::string& name, bool is_group, const std::string& file) {
  std::ifstream in(file.empty() ? (is_group ? "/etc/group" : "/etc/passwd") : file);
  std::string line;
  while (std::getline(in, line)) {
    // name:password:ID:... -- the third field is the UID (passwd) or GID
    // (group).
    const size_t c1 = line.find(':');
    if (c1 == std::string::npos || line.compare(0, c1, name) != 0 || c1 != name.size()) continue;
    const size_t c2 = line.find(':', c1 + 1);
    if (c2 == std::string::npos) continue;
    const size_t c3 = line.find(':', c2 + 1);
    const std::string id = line.substr(c2 + 1, c3 == std::string::npos ? std::string::npos : c3 - c2 - 1);
    if (id.empty() || id.size() > 10 || !all_digits(id) || std::stoull(id) > 0xffffffffULL) continue;
    return static_cast<uint32_t>(std::stoull(id));
  }
  return std::nullopt;
}

IdList parse_id_list(const std::string& text, const std::string& what, bool is_group) {
  IdList list;
  for (const auto& token : split_list(text)) {
    std::optional<uint32_t> id;
    if (all_digits(token)) {
      if (token.size() > 10 || std::stoull(token) >= 0xffffffffULL)
        bad(what, token, is_group ? "GID out of range" : "UID out of range");
      id = static_cast<uint32_t>(std::stoull(token));
    } else {
      // A user or group name as useradd takes it: [a-z_][a-z0-9_.-]*, 1-32 chars.
      bool ok = token.size() <= 32 && (std::isalpha(static_cast<unsigned char>(token[0])) || token[0] == '_');
      for (unsigned char ch : token) ok = ok && (std::isalnum(ch) || ch == '_' || ch == '.' || ch == '-');
      if (!ok) bad(what, token, is_group ? "not a GID or group name" : "not a UID or user name");
      id = lookup_account(token, is_group);
    }
    list.tokens.push_back(token);
    list.ids.push_back(id);
  }
  return list;
}

std::vector<std::string> parse_interface_list(const std::string& text, const std::string& what) {
  std::vector<std::string> out;
  for (const auto& name : split_list(text)) {
    if (name.size() > 15) bad(what, name, "interface names are at most 15 characters");
    for (unsigned char ch : name) {
      if (std::isspace(ch) || ch == '/' || ch == ':' || ch == '*' || !std::isprint(ch))
        bad(what, name, "not a valid interface name");
    }
    if (name == "." || name == "..") bad(what, name, "not a valid interface name");
    out.push_back(name);
  }
  return out;
}

bool dns_redirect_active(const CaptureConfig& cfg) {
  return cfg.redirect_dns && (cfg.capture_all_dns || !cfg.dns_servers_v4.empty() || !cfg.dns_servers_v6.empty());
}

}  // namespace meshcap
