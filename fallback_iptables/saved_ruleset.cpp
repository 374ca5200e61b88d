#include "saved_ruleset.h"

#include "rule_builder.h"

namespace meshcap::iptables {

namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

SavedChain& chain_in(SavedTable& table, const std::string& name) {
  for (auto& c : table.chains) {
    if (c.name == name) return c;
  }
  table.chains.push_back(SavedChain{name, is_builtin_chain_or_target(name), {}});
  return table.chains.back();
}

}  // namespace

bool is_istio_chain(std::string_view chain) { return chain.rfind("ISTIO_", 0) == 0; }

const SavedChain* SavedTable::find(std::string_view chain) const {
  for (const auto& c : chains) {
    if (c.name == chain) return &c;
  }
  return nullptr;
}

const SavedTable* SavedRuleset::find(std::string_view table) const {
  for (const auto& t : tables) {
    if (t.name == table) return &t;
  }
  return nullptr;
}

bool SavedRuleset::holds_rules() const {
  for (const auto& t : tables) {
    for (const auto& c : t.chains) {
      if (!c.builtin || !c.rules.empty()) return true;
    }
  }
  return false;
}

bool SavedRuleset::has_istio_state() const {
  for (const auto& t : tables) {
    for (const auto& c : t.chains) {
      if (is_istio_chain(c.name)) return true;
      for (const auto& r : c.rules) {
        if (is_istio_chain(rule_target(r))) return true;
      }
    }
  }
  return false;
}

SavedRuleset parse_iptables_save(std::string_view text) {
  SavedRuleset out;
  SavedTable* table = nullptr;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = trim(text.substr(pos, end - pos));
    pos = end + 1;
    if (line.empty() || line.front() == '#') continue;
    if (line.front() == '*') {
      out.tables.push_back(SavedTable{std::string(trim(line.substr(1))), {}});
      table = &out.tables.back();
      continue;
    }
    if (line == "COMMIT") {
      table = nullptr;
      continue;
    }
    if (table == nullptr) continue;
    if (line.front() == ':') {
      const auto words = split_rule_words(line.substr(1));
      if (words.empty()) continue;
      SavedChain& c = chain_in(*table, words[0]);
      c.builtin = words.size() > 1 && words[1] != "-";
      continue;
    }
    const auto words = split_rule_words(line);
    if (words.size() >= 2 && (words[0] == "-A" || words[0] == "--append")) {
      chain_in(*table, words[1]).rules.emplace_back(line);
    }
  }
  return out;
}

std::vector<std::string> split_rule_words(std::string_view line) {
  std::vector<std::string> words;
  std::string cur;
  bool in_word = false, quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char ch = line[i];
    if (quoted) {
      if (ch == '\\' && i + 1 < line.size() && (line[i + 1] == '"' || line[i + 1] == '\\')) {
        cur += line[++i];
      } else if (ch == '"') {
        quoted = false;
      } else {
        cur += ch;
      }
      continue;
    }
    if (ch == '"') {
      quoted = true;
      in_word = true;
    } else if (ch == ' ' || ch == '\t') {
      if (in_word) words.push_back(std::move(cur));
      cur.clear();
      in_word = false;
    } else {
      cur += ch;
      in_word = true;
    }
  }
  if (in_word) words.push_back(std::move(cur));
  return words;
}

std::string rule_target(std::string_view line) {
  const auto words = split_rule_words(line);
  for (size_t i = 0; i + 1 < words.size(); ++i) {
    if (words[i] == "-j" || words[i] == "--jump" || words[i] == "-g" || words[i] == "--goto") return words[i + 1];
  }
  return "";
}

std::string rule_spec_text(std::string_view line, std::string_view chain) {
  // "-A" + ' ' + chain + ' ' + spec
  const size_t prefix = 3 + chain.size() + 1;
  if (line.size() <= prefix) return "";
  return std::string(line.substr(prefix));
}

std::optional<uint64_t> rule_packets(std::string_view save_with_counters,
                                     const std::function<bool(std::string_view rule)>& match) {
  std::optional<uint64_t> total;
  size_t start = 0;
  while (start < save_with_counters.size()) {
    size_t eol = save_with_counters.find('\n', start);
    if (eol == std::string_view::npos) eol = save_with_counters.size();
    std::string_view line = save_with_counters.substr(start, eol - start);
    start = eol + 1;
    const size_t close = line.find("] ");
    if (line.empty() || line[0] != '[' || close == std::string_view::npos || !match(line.substr(close + 2))) continue;
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon > close) continue;
    total = total.value_or(0) + std::stoull(std::string(line.substr(1, colon - 1)));
  }
  return total;
}

namespace {

// Whether `chain` of `table` jumps, directly or through other ISTIO_ chains
// (depth-limited), to `goal`, and `goal` holds a rule with target `verdict`.
bool leads_to(const SavedTable& table, std::string_view chain, std::string_view goal, std::string_view verdict,
              int depth = 0) {
  const SavedChain* c = table.find(chain);
  if (c == nullptr || depth > 8) return false;
  if (chain == goal) {
    for (const auto& rule : c->rules)
      if (rule_target(rule) == verdict) return true;
    return false;
  }
  for (const auto& rule : c->rules) {
    const std::string target = rule_target(rule);
    if ((target == goal || is_istio_chain(target)) && leads_to(table, target, goal, verdict, depth + 1)) return true;
  }
  return false;
}

bool reaches(const SavedRuleset& rules, std::string_view table, std::string_view builtin, std::string_view goal,
             std::string_view verdict) {
  const SavedTable* t = rules.find(table);
  return t != nullptr && leads_to(*t, builtin, goal, verdict);
}

}  // namespace

Coverage capture_coverage(const SavedRuleset& rules) {
  Coverage cov;
  // ISTIO_REDIRECT sends to the outbound listener; OUTPUT reaches it for
  // captured connections (ISTIO_IN_REDIRECT, reached from OUTPUT too, is the
  // proxy dialing its own pod).
  cov.outbound = reaches(rules, "nat", "OUTPUT", "ISTIO_REDIRECT", "REDIRECT");
  cov.inbound = reaches(rules, "nat", "PREROUTING", "ISTIO_IN_REDIRECT", "REDIRECT") ||
                reaches(rules, "nat", "PREROUTING", "ISTIO_REDIRECT", "REDIRECT") ||
                reaches(rules, "mangle", "PREROUTING", "ISTIO_TPROXY", "TPROXY");
  return cov;
}

}  // namespace meshcap::iptables
