#include "rule_builder.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <initializer_list>
#include <iterator>
#include <map>
#include <set>
#include <utility>

namespace meshcap::iptables {

namespace {

std::string join(const std::vector<std::string>& words) {
  size_t size = words.size();
  for (const auto& w : words) size += w.size();
  std::string out;
  out.reserve(size);
  for (const auto& w : words) {
    if (!out.empty()) out += ' ';
    out += w;
  }
  return out;
}

bool has_jump(const std::vector<std::string>& spec) {
  return std::find(spec.begin(), spec.end(), "-j") != spec.end();
}

// istio logs (and still accepts) rules without a target in a chain it does not own.
void warn_if_odd(const std::string& chain, const std::vector<std::string>& spec) {
  if (!has_jump(spec) && chain.rfind("ISTIO_", 0) != 0) {
    spdlog::warn("iptables rule without a jump in non-Istio chain {}: {}", chain, join(spec));
  }
}

// `head` (-A CHAIN, -I CHAIN N) followed by the words of `spec`, moved.
std::vector<std::string> command_of(std::initializer_list<std::string> head, std::vector<std::string>&& spec) {
  std::vector<std::string> command;
  command.reserve(head.size() + spec.size());
  command.insert(command.end(), head.begin(), head.end());
  command.insert(command.end(), std::make_move_iterator(spec.begin()), std::make_move_iterator(spec.end()));
  return command;
}

}  // namespace

std::string_view family_name(Family family) { return family == Family::V4 ? "ipv4" : "ipv6"; }

bool is_builtin_chain_or_target(std::string_view name) {
  static constexpr std::array<std::string_view, 8> kBuiltins = {"INPUT",       "OUTPUT", "FORWARD", "PREROUTING",
                                                                "POSTROUTING", "ACCEPT", "RETURN",  "DROP"};
  return std::find(kBuiltins.begin(), kBuiltins.end(), name) != kBuiltins.end();
}

std::vector<std::string> Rule::spec() const {
  const size_t skip = is_insert() ? 3 : 2;
  if (command.size() <= skip) return {};
  return {command.begin() + static_cast<std::ptrdiff_t>(skip), command.end()};
}

bool Rule::is_insert() const { return !command.empty() && command[0] == "-I"; }

std::string_view Rule::trailing_jump() const {
  if (command.size() >= 2 && command[command.size() - 2] == "-j") return command.back();
  return "";
}

std::string Rule::text() const { return join(command); }

const TableSection* RestorePayload::find(std::string_view table) const {
  for (const auto& t : tables) {
    if (t.table == table) return &t;
  }
  return nullptr;
}

std::string RestorePayload::text() const {
  size_t size = 0;
  for (const auto& t : tables) {
    size += t.table.size() + 10;  // "* ", "\n", "COMMIT\n"
    for (const auto& line : t.lines) size += line.size() + 1;
  }
  std::string out;
  out.reserve(size);
  for (const auto& t : tables) {
    out.append("* ").append(t.table).append("\n");
    for (const auto& line : t.lines) out.append(line).push_back('\n');
    out.append("COMMIT\n");
  }
  return out;
}

RuleBuilder::RuleBuilder(bool ipv6_enabled) : ipv6_enabled_(ipv6_enabled) {}

std::vector<Rule>& RuleBuilder::list(Family family) { return family == Family::V4 ? v4_ : v6_; }

void RuleBuilder::reserve(size_t v4, size_t v6) {
  v4_.reserve(v4_.size() + v4);
  if (ipv6_enabled_) v6_.reserve(v6_.size() + v6);
}

const std::vector<Rule>& RuleBuilder::rules(Family family) const { return family == Family::V4 ? v4_ : v6_; }

RuleBuilder& RuleBuilder::append(const std::string& table, const std::string& chain, std::vector<std::string> spec) {
  append_v4(table, chain, spec);
  return append_v6(table, chain, std::move(spec));
}

RuleBuilder& RuleBuilder::append_v4(const std::string& table, const std::string& chain,
                                    std::vector<std::string> spec) {
  warn_if_odd(chain, spec);
  std::vector<std::string> command = command_of({"-A", chain}, std::move(spec));
  v4_.push_back(Rule{table, chain, std::move(command)});
  return *this;
}

RuleBuilder& RuleBuilder::append_v6(const std::string& table, const std::string& chain,
                                    std::vector<std::string> spec) {
  if (!ipv6_enabled_) return *this;
  warn_if_odd(chain, spec);
  std::vector<std::string> command = command_of({"-A", chain}, std::move(spec));
  v6_.push_back(Rule{table, chain, std::move(command)});
  return *this;
}

RuleBuilder& RuleBuilder::append_versioned(const std::string& v4_value, const std::string& v6_value,
                                           const std::string& table, const std::string& chain,
                                           const std::vector<std::string>& spec) {
  auto substitute = [&spec](const std::string& value) {
    std::vector<std::string> out = spec;
    for (auto& arg : out) {
      if (arg == kIpVersionSpecific) arg = value;
    }
    return out;
  };
  append_v4(table, chain, substitute(v4_value));
  return append_v6(table, chain, substitute(v6_value));
}

RuleBuilder& RuleBuilder::insert(const std::string& table, const std::string& chain, int position,
                                 std::vector<std::string> spec) {
  insert_v4(table, chain, position, spec);
  return insert_v6(table, chain, position, std::move(spec));
}

RuleBuilder& RuleBuilder::insert_v4(const std::string& table, const std::string& chain, int position,
                                    std::vector<std::string> spec) {
  warn_if_odd(chain, spec);
  std::vector<std::string> command = command_of({"-I", chain, std::to_string(position)}, std::move(spec));
  v4_.push_back(Rule{table, chain, std::move(command)});
  return *this;
}

RuleBuilder& RuleBuilder::insert_v6(const std::string& table, const std::string& chain, int position,
                                    std::vector<std::string> spec) {
  if (!ipv6_enabled_) return *this;
  warn_if_odd(chain, spec);
  std::vector<std::string> command = command_of({"-I", chain, std::to_string(position)}, std::move(spec));
  v6_.push_back(Rule{table, chain, std::move(command)});
  return *this;
}

RestorePayload RuleBuilder::restore_payload(Family family) const { return render_restore_payload(rules(family)); }

RestorePayload render_restore_payload(const std::vector<Rule>& rules) {
  // std::map iterates tables in byte order, the order istio sorts them in.
  std::map<std::string, std::vector<std::string>> by_table;
  std::set<std::pair<std::string, std::string>> declared;  // (table, chain)

  const Rule* last = nullptr;  // rules come in runs of one chain: the last one declared
  auto declare = [&](const std::string& table, const std::string& chain) {
    if (!declared.emplace(table, chain).second) return;
    if (!is_builtin_chain_or_target(chain)) by_table[table].push_back("-N " + chain);
  };
  // Chains that hold rules, in first-use order...
  for (const auto& r : rules) {
    if (last != nullptr && last->chain == r.chain && last->table == r.table) continue;
    declare(r.table, r.chain);
    last = &r;
  }
  // ...then chains that are only jumped to.
  last = nullptr;  // now: the last rule whose target was declared
  for (const auto& r : rules) {
    const std::string_view target = r.trailing_jump();
    if (!target.empty() && (last == nullptr || last->table != r.table || last->trailing_jump() != target)) {
      declare(r.table, r.command.back());  // what `target` views
      last = &r;
    }
  }
  std::vector<std::string>* lines = nullptr;  // of the table of the rule before
  const std::string* lines_table = nullptr;
  for (const auto& r : rules) {
    if (lines_table == nullptr || *lines_table != r.table) {
      lines = &by_table[r.table];
      lines_table = &r.table;
    }
    lines->push_back(r.text());
  }

  RestorePayload payload;
  for (auto& [table, lines] : by_table) {
    if (!lines.empty()) payload.tables.push_back(TableSection{table, std::move(lines)});
  }
  return payload;
}

}  // namespace meshcap::iptables
