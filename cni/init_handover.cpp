// The agent's side of `meshcap init`'s hand-over (init_handover.h); the
// caller's side is in init_handover_client.cpp.
#include "init_handover.h"

namespace meshcap::cni {

namespace {

// A decimal of digits only, at most `max`.
bool parse_decimal(std::string_view s, unsigned long max, unsigned long& v) noexcept {
  if (s.empty() || s.size() > 12) return false;
  v = 0;
  for (const char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned long>(c - '0');
  }
  return v <= max;
}

}  // namespace

bool is_init_request(std::string_view text) {
  return text.substr(0, sizeof kInitMagic) == std::string_view(kInitMagic, sizeof kInitMagic);
}

std::optional<InitRequest> parse_init_request(std::string_view text) {
  if (!is_init_request(text) || text.back() != '\0') return std::nullopt;
  std::vector<std::string_view> fields;
  for (size_t at = 0; at < text.size();) {
    const size_t end = text.find('\0', at);
    fields.push_back(text.substr(at, end - at));
    at = end + 1;
  }
  unsigned long n = 0;
  if (fields.size() < 3 || !parse_decimal(fields[2], fields.size() - 3, n)) return std::nullopt;
  InitRequest r;
  r.pin_dir = fields[1];
  r.argv.assign(fields.begin() + 3, fields.begin() + 3 + static_cast<long>(n));
  for (auto it = fields.begin() + 3 + static_cast<long>(n); it != fields.end(); ++it) {
    const size_t eq = it->find('=');
    if (eq != std::string_view::npos) r.env.emplace(it->substr(0, eq), it->substr(eq + 1));  // the first stays
  }
  return r;
}

bool is_cni_request(std::string_view text) {
  return text.substr(0, sizeof kCniMagic) == std::string_view(kCniMagic, sizeof kCniMagic);
}

std::optional<CniRequest> parse_cni_request(std::string_view text) {
  if (!is_cni_request(text)) return std::nullopt;
  // The header's fields: magic, pin_dir, N; then N variables; the rest is stdin.
  size_t at = 0;
  const auto next = [&](std::string_view& field) {
    const size_t end = text.find('\0', at);
    if (end == std::string_view::npos) return false;
    field = text.substr(at, end - at);
    at = end + 1;
    return true;
  };
  std::string_view magic, pin_dir, count;
  unsigned long n = 0;
  if (!next(magic) || !next(pin_dir) || !next(count) || !parse_decimal(count, 64, n)) return std::nullopt;
  CniRequest r;
  r.pin_dir = pin_dir;
  for (unsigned long i = 0; i < n; ++i) {
    std::string_view var;
    if (!next(var)) return std::nullopt;
    const size_t eq = var.find('=');
    if (eq == std::string_view::npos) return std::nullopt;
    r.env.emplace(var.substr(0, eq), var.substr(eq + 1));  // the first stays
  }
  r.stdin_text = text.substr(at);
  return r;
}

std::string init_answer_text(const InitAnswer& a, const char* magic) {
  const std::string_view m(magic);
  std::string out(m.data(), m.size() + 1);
  if (a.local) return out.append("local", sizeof "local");
  out.append("exit", sizeof "exit");
  out += std::to_string(a.exit_code);
  out += '\0';
  out += std::to_string(a.stdout_text.size());
  out += '\0';
  return out.append(a.stdout_text).append(a.stderr_text);
}

}  // namespace meshcap::cni
