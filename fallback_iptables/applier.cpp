#include "applier.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "iptables_error.h"
#include "saved_ruleset.h"

namespace meshcap::iptables {

namespace {

namespace fs = std::filesystem;

// A scratch chain used to learn how the backend prints our rules (see
// canonical_lines). ISTIO_-prefixed so a leftover is removed like any other.
constexpr const char* kCanonChain = "ISTIO_MESHCAP_CANON";
constexpr int kMaxRuleDeletes = 64;

// ---------------------------------------------------------------------------
// The record of what the last apply added outside ISTIO_* chains.

struct RecordedRule {
  std::string family, binary, table, line;
};

struct TproxyRoutes {
  std::string mark, table;
  bool ipv6 = false;
};

struct StateRecord {
  std::vector<RecordedRule> rules;
  std::optional<TproxyRoutes> tproxy;
  bool lo_ipv6_added = false;
};

StateRecord load_record(const std::string& path) {
  StateRecord rec;
  std::ifstream in(path);
  if (!in) return rec;
  try {
    const auto j = nlohmann::json::parse(in);
    for (const auto& r : j.at("rules")) {
      rec.rules.push_back({r.at("family"), r.at("binary"), r.at("table"), r.at("line")});
    }
    if (j.contains("tproxy") && !j.at("tproxy").is_null()) {
      const auto& t = j.at("tproxy");
      rec.tproxy = TproxyRoutes{t.at("mark"), t.at("table"), t.at("ipv6")};
    }
    rec.lo_ipv6_added = j.value("lo_ipv6_added", false);
  } catch (const std::exception& e) {
    spdlog::warn("ignoring unreadable meshcap iptables state {}: {}", path, e.what());
    return StateRecord{};
  }
  return rec;
}

void save_record(const std::string& path, const StateRecord& rec) {
  nlohmann::json j;
  j["version"] = 1;
  j["rules"] = nlohmann::json::array();
  for (const auto& r : rec.rules) {
    j["rules"].push_back({{"family", r.family}, {"binary", r.binary}, {"table", r.table}, {"line", r.line}});
  }
  if (rec.tproxy) {
    j["tproxy"] = {{"mark", rec.tproxy->mark}, {"table", rec.tproxy->table}, {"ipv6", rec.tproxy->ipv6}};
  } else {
    j["tproxy"] = nullptr;
  }
  j["lo_ipv6_added"] = rec.lo_ipv6_added;
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << j.dump(2) << "\n";
    if (!out) {
      spdlog::warn("cannot write meshcap iptables state {}; a later apply or cleanup will match rules by content",
                   tmp);
      return;
    }
  }
  fs::rename(tmp, path, ec);
  if (ec) spdlog::warn("cannot write meshcap iptables state {}: {}", path, ec.message());
}

// ---------------------------------------------------------------------------
// Planning one iptables-restore transaction.

using LineKey = std::pair<std::string, std::string>;  // (table, "-A CHAIN ...")
using LineCounts = std::map<LineKey, int>;

struct RemovedRule {
  std::string table, chain, line;
  int position;  // 1-based, in the chain before the change
};

// One iptables-restore on one backend: remove meshcap's state, add new rules.
struct Step {
  Backend backend;
  SavedRuleset before;
  std::vector<RemovedRule> removed;
  RestorePayload payload;
  bool committed = false;

  std::string name() const { return std::string(family_name(backend.family)) + " " + backend.binary; }
};

void add_line(std::map<std::string, std::vector<std::string>>& by_table, const std::string& table,
              std::string line) {
  by_table[table].push_back(std::move(line));
}

RestorePayload to_payload(std::map<std::string, std::vector<std::string>>& by_table) {
  RestorePayload p;
  for (auto& [table, lines] : by_table) {
    if (!lines.empty()) p.tables.push_back(TableSection{table, std::move(lines)});
  }
  return p;
}

// Removes every ISTIO_* chain, every rule elsewhere that jumps to one, and
// the rules in `owned` (what meshcap added earlier); then adds `add`.
Step plan_step(const Backend& backend, SavedRuleset before, LineCounts owned, const RestorePayload* add) {
  Step s{backend, std::move(before), {}, {}, false};
  std::map<std::string, std::vector<std::string>> by_table;
  for (const auto& t : s.before.tables) {
    std::vector<std::string> istio;
    for (const auto& c : t.chains) {
      if (is_istio_chain(c.name)) {
        istio.push_back(c.name);
        continue;
      }
      for (size_t i = 0; i < c.rules.size(); ++i) {
        const std::string& line = c.rules[i];
        bool ours = is_istio_chain(rule_target(line));
        if (!ours) {
          auto it = owned.find({t.name, line});
          if (it != owned.end() && it->second > 0) {
            --it->second;
            ours = true;
          }
        }
        if (!ours) continue;
        s.removed.push_back({t.name, c.name, line, static_cast<int>(i + 1)});
        add_line(by_table, t.name, "-D " + c.name + " " + rule_spec_text(line, c.name));
      }
    }
    for (const auto& name : istio) add_line(by_table, t.name, "-F " + name);
    for (const auto& name : istio) add_line(by_table, t.name, "-X " + name);
  }
  if (add != nullptr) {
    for (const auto& section : add->tables) {
      for (const auto& line : section.lines) add_line(by_table, section.table, line);
    }
  }
  s.payload = to_payload(by_table);
  return s;
}

// The rules outside ISTIO_* chains in `now` that were not there before the
// step (what the step added), in `now` order.
std::vector<RemovedRule> added_by_step(const Step& s, const SavedRuleset& now) {
  LineCounts baseline;
  for (const auto& t : s.before.tables) {
    for (const auto& c : t.chains) {
      if (is_istio_chain(c.name)) continue;
      for (const auto& line : c.rules) ++baseline[{t.name, line}];
    }
  }
  for (const auto& r : s.removed) --baseline[{r.table, r.line}];
  std::vector<RemovedRule> added;
  for (const auto& t : now.tables) {
    for (const auto& c : t.chains) {
      if (is_istio_chain(c.name)) continue;
      for (size_t i = 0; i < c.rules.size(); ++i) {
        auto it = baseline.find({t.name, c.rules[i]});
        if (it != baseline.end() && it->second > 0) {
          --it->second;
        } else {
          added.push_back({t.name, c.name, c.rules[i], static_cast<int>(i + 1)});
        }
      }
    }
  }
  return added;
}

// Puts a committed step's tables back as they were: removes what it added
// and its ISTIO_* chains, recreates the old ISTIO_* chains and re-inserts
// the removed rules at their old positions.
RestorePayload rollback_payload(const Step& s, const SavedRuleset& now) {
  std::map<std::string, std::vector<std::string>> by_table;
  for (const auto& r : added_by_step(s, now)) {
    add_line(by_table, r.table, "-D " + r.chain + " " + rule_spec_text(r.line, r.chain));
  }
  for (const auto& t : now.tables) {
    for (const auto& c : t.chains) {
      if (is_istio_chain(c.name)) add_line(by_table, t.name, "-F " + c.name);
    }
    for (const auto& c : t.chains) {
      if (is_istio_chain(c.name)) add_line(by_table, t.name, "-X " + c.name);
    }
  }
  for (const auto& t : s.before.tables) {
    for (const auto& c : t.chains) {
      if (is_istio_chain(c.name)) add_line(by_table, t.name, "-N " + c.name);
    }
    for (const auto& c : t.chains) {
      if (!is_istio_chain(c.name)) continue;
      for (const auto& line : c.rules) add_line(by_table, t.name, line);
    }
  }
  // `removed` is in chain order with ascending positions, so inserting each
  // at its old position rebuilds the old order.
  for (const auto& r : s.removed) {
    add_line(by_table, r.table,
             "-I " + r.chain + " " + std::to_string(r.position) + " " + rule_spec_text(r.line, r.chain));
  }
  return to_payload(by_table);
}

// Logs (debug) how long a whole apply or cleanup took, on every exit path.
class Stopwatch {
 public:
  explicit Stopwatch(const char* what) : what_(what), start_(std::chrono::steady_clock::now()) {}
  ~Stopwatch() {
    spdlog::debug("iptables {} took {:.2f} ms", what_,
                  std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count());
  }
  Stopwatch(const Stopwatch&) = delete;
  Stopwatch& operator=(const Stopwatch&) = delete;

 private:
  const char* what_;
  std::chrono::steady_clock::time_point start_;
};

std::string first_lines(const std::string& text, int n = 3) {
  std::string out;
  size_t pos = 0;
  for (int i = 0; i < n && pos < text.size(); ++i) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    if (!out.empty()) out += " | ";
    out += text.substr(pos, end - pos);
    pos = end + 1;
  }
  return out;
}

// ---------------------------------------------------------------------------

class Session {
 public:
  explicit Session(CommandRunner& runner) : runner_(runner) {}

  void restore(const Backend& b, const std::string& payload, const std::string& step) {
    std::vector<std::string> argv = {b.restore_binary, "--noflush"};
    const auto lock = b.lock_args();
    argv.insert(argv.end(), lock.begin(), lock.end());
    spdlog::debug("{} --noflush input:\n{}", b.restore_binary, payload);
    const CommandResult r = runner_.run(argv, payload);
    if (!r.ok()) {
      throw IptablesError(step, b.restore_binary + " failed (exit " + std::to_string(r.exit_code) +
                                    "): " + first_lines(r.err),
                          r.exit_code);
    }
  }

  // What `<binary>-save` prints now.
  std::string save_text(const Backend& b) {
    const CommandResult r = runner_.run({b.save_binary});
    if (!r.ok()) {
      throw IptablesError("read " + std::string(family_name(b.family)) + " " + b.binary,
                          b.save_binary + " failed (exit " + std::to_string(r.exit_code) + "): " + first_lines(r.err),
                          r.exit_code);
    }
    return r.out;
  }

  SavedRuleset save(const Backend& b) { return parse_iptables_save(save_text(b)); }

  // How `backend` prints the given rules (built-in chains, non-ISTIO
  // targets), learned by adding them to an unreferenced scratch chain. Used
  // only when no record says which rules meshcap added.
  LineCounts canonical_lines(const Backend& b, const std::vector<Rule>& rules) {
    std::map<std::string, std::vector<const Rule*>> by_table;
    for (const auto& r : rules) {
      if (is_istio_chain(r.chain) || is_istio_chain(r.trailing_jump())) continue;
      by_table[r.table].push_back(&r);
    }
    if (by_table.empty()) return {};
    std::map<std::string, std::vector<std::string>> add, drop;
    for (const auto& [table, list] : by_table) {
      add[table].push_back(std::string(":") + kCanonChain + " - [0:0]");
      for (const Rule* r : list) {
        std::string line = std::string("-A ") + kCanonChain;
        for (const auto& w : r->spec()) line += " " + w;
        add[table].push_back(line);
      }
      drop[table] = {std::string("-F ") + kCanonChain, std::string("-X ") + kCanonChain};
    }
    LineCounts out;
    try {
      restore(b, to_payload(add).text(), "canonicalize");
      const SavedRuleset saved = save(b);
      restore(b, to_payload(drop).text(), "canonicalize");
      for (const auto& [table, list] : by_table) {
        const SavedTable* t = saved.find(table);
        const SavedChain* c = t ? t->find(kCanonChain) : nullptr;
        if (c == nullptr || c->rules.size() != list.size()) {
          spdlog::warn("cannot tell how {} prints meshcap's {} rules; leaving them", b.binary, table);
          continue;
        }
        for (size_t i = 0; i < list.size(); ++i) {
          ++out[{table, "-A " + list[i]->chain + " " + rule_spec_text(c->rules[i], kCanonChain)}];
        }
      }
    } catch (const IptablesError& e) {
      spdlog::warn("cannot match earlier meshcap rules by content: {}", e.what());
    }
    return out;
  }

  // What meshcap owns outside ISTIO_* chains on this backend: the recorded
  // lines, or (no record for it, but ISTIO_* state present) `cfg_rules` as
  // the backend prints them.
  LineCounts owned_lines(const StateRecord& rec, const Backend& b, const SavedRuleset& before,
                         const std::vector<Rule>& cfg_rules) {
    LineCounts owned;
    const std::string fam(family_name(b.family));
    for (const auto& r : rec.rules) {
      if (r.family == fam && r.binary == b.binary) ++owned[{r.table, r.line}];
    }
    if (owned.empty() && before.has_istio_state()) {
      spdlog::info("no record of meshcap's earlier {} rules on {}; matching them by content", fam, b.binary);
      owned = canonical_lines(b, cfg_rules);
    }
    return owned;
  }

  // The step that removes istio/meshcap state from `binary`, given what its
  // -save printed (`dump`, none when it failed). None when there is nothing
  // to remove; none with `why` set when there is but the backend cannot be
  // used. `cfg_rules` (see owned_lines) is called only for a usable backend.
  std::optional<Step> removal_step(const StateRecord& rec, Family fam, const std::string& binary,
                                   const std::optional<std::string>& dump,
                                   const std::function<std::vector<Rule>()>& cfg_rules, std::string* why) {
    if (!dump) return std::nullopt;
    SavedRuleset before = parse_iptables_save(*dump);
    bool recorded = false;
    for (const auto& r : rec.rules) recorded |= r.binary == binary && r.family == family_name(fam);
    if (!before.has_istio_state() && !recorded) return std::nullopt;
    const auto backend = probe_backend(runner_, fam, binary, why, &*dump);
    if (!backend) return std::nullopt;
    LineCounts owned = owned_lines(rec, *backend, before, cfg_rules());
    Step s = plan_step(*backend, std::move(before), std::move(owned), nullptr);
    if (s.payload.empty()) return std::nullopt;
    return s;
  }

  bool ip(const std::vector<std::string>& args, std::string* err = nullptr) {
    std::vector<std::string> argv = {"ip"};
    argv.insert(argv.end(), args.begin(), args.end());
    const CommandResult r = runner_.run(argv);
    if (err) *err = first_lines(r.err);
    return r.ok();
  }

  // Deletes every `ip rule` fwmark->table pair and the local default route.
  bool remove_tproxy_routes(const TproxyRoutes& t) {
    bool removed = false;
    for (const char* fam : {"-4", "-6"}) {
      if (std::string(fam) == "-6" && !t.ipv6) continue;
      for (int i = 0; i < kMaxRuleDeletes && ip({fam, "rule", "del", "fwmark", t.mark, "lookup", t.table}); ++i) {
        removed = true;
      }
      const char* dst = std::string(fam) == "-4" ? "0.0.0.0/0" : "::/0";
      removed |= ip({fam, "route", "del", "local", dst, "dev", "lo", "table", t.table});
    }
    return removed;
  }

  // Number of `ip rule`s sending `mark` to `table` in one family.
  int count_tproxy_rules(const char* fam, const TproxyRoutes& t) {
    const CommandResult r = runner_.run({"ip", fam, "rule", "show", "fwmark", t.mark, "lookup", t.table});
    if (!r.ok()) return 0;
    int n = 0;
    size_t pos = 0;
    while ((pos = r.out.find("fwmark", pos)) != std::string::npos) {
      ++n;
      ++pos;
    }
    return n;
  }

  // istio's configureTProxyRoutes (marked packets route to lo through the
  // table), made idempotent: exactly one ip rule per family, never zero.
  void ensure_tproxy_routes(const TproxyRoutes& t) {
    for (const char* fam : {"-4", "-6"}) {
      if (std::string(fam) == "-6" && !t.ipv6) continue;
      const std::string step = std::string("route ") + (std::string(fam) == "-4" ? "ipv4" : "ipv6");
      std::string err;
      int n = count_tproxy_rules(fam, t);
      if (n == 0 && !ip({fam, "rule", "add", "fwmark", t.mark, "lookup", t.table}, &err)) {
        throw IptablesError(step, "ip rule add fwmark " + t.mark + " lookup " + t.table + ": " + err);
      }
      for (; n > 1 && ip({fam, "rule", "del", "fwmark", t.mark, "lookup", t.table}); --n) {
      }
      const char* dst = std::string(fam) == "-4" ? "0.0.0.0/0" : "::/0";
      if (!ip({fam, "route", "replace", "local", dst, "dev", "lo", "table", t.table}, &err)) {
        throw IptablesError(step, std::string("ip route replace local ") + dst + " dev lo table " + t.table + ": " +
                                      err);
      }
    }
  }

  // Undoes committed steps, newest first; returns a note for the error.
  std::string rollback(std::vector<Step>& steps) {
    std::string note;
    for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
      if (!it->committed) continue;
      try {
        const RestorePayload p = rollback_payload(*it, save(it->backend));
        if (!p.empty()) restore(it->backend, p.text(), "rollback " + it->name());
        it->committed = false;
        spdlog::warn("rolled back {} to its previous rules", it->name());
      } catch (const IptablesError& e) {
        note += std::string("; rollback failed: ") + e.what();
      }
    }
    return note.empty() ? "; earlier changes were rolled back" : note;
  }

  CommandRunner& runner_;
};

std::optional<TproxyRoutes> tproxy_routes_for(const CaptureConfig& cfg, bool ipv6) {
  if (!needs_tproxy_routes(cfg)) return std::nullopt;
  return TproxyRoutes{cfg.tproxy_mark, cfg.tproxy_route_table, ipv6};
}

bool is_exists_error(const std::string& err) {
  return err.find("File exists") != std::string::npos || err.find("already assigned") != std::string::npos;
}

}  // namespace

IptablesApplier::IptablesApplier(CommandRunner& runner, ApplierOptions options)
    : runner_(runner), options_(std::move(options)) {}

std::string IptablesApplier::state_path() const {
  return (fs::path(options_.state_dir) / (runner_.context_id() + ".json")).string();
}

ApplyResult IptablesApplier::apply(const CaptureConfig& cfg, bool ipv6_enabled) {
  ApplyResult res;
  const RuleBuilder built = build_istio_rules(cfg, ipv6_enabled);
  res.rules.ipv4 = built.restore_payload(Family::V4);
  res.rules.ipv6 = built.restore_payload(Family::V6);
  res.rules.ipv6_enabled = ipv6_enabled;
  const Stopwatch watch("apply");
  if (cfg.skip_rule_apply) {
    spdlog::info("--skip-rule-apply: not applying iptables rules");
    return res;
  }

  Session session(runner_);
  const StateRecord rec = load_record(state_path());

  // Plan: per family the chosen backend (remove old state, add new rules),
  // then any other backend that still holds istio state (remove only).
  std::vector<Step> steps;
  for (Family fam : {Family::V4, Family::V6}) {
    const bool wanted = fam == Family::V4 || ipv6_enabled;
    std::optional<Backend> chosen;
    if (wanted) {
      chosen = detect_backend(runner_, fam, cfg.force_iptables_binary);
      (fam == Family::V4 ? res.ipv4 : res.ipv6.emplace()) = *chosen;
      spdlog::info("{}: using {} ({} {})", family_name(fam), chosen->binary, chosen->kind(), chosen->version);
    }
    const RestorePayload* add = fam == Family::V4 ? &res.rules.ipv4 : &res.rules.ipv6;
    const BinaryNames names = binary_names(fam);
    // The plain binary is a link to one of the others: alone, never beside them.
    std::vector<std::string> binaries = {names.nft, names.legacy};
    if (chosen && chosen->binary == names.plain) binaries = {names.plain};
    for (const auto& binary : binaries) {
      if (chosen && chosen->binary == binary) {
        SavedRuleset before = session.save(*chosen);
        LineCounts owned = session.owned_lines(rec, *chosen, before, built.rules(fam));
        steps.push_back(plan_step(*chosen, std::move(before), std::move(owned), add));
        continue;
      }
      std::string why;
      auto s = session.removal_step(rec, fam, binary, read_save(runner_, binary),
                                    [&] { return build_istio_rules(cfg, true).rules(fam); }, &why);
      if (!why.empty()) spdlog::warn("{} holds istio rules but cannot be used to remove them: {}", binary, why);
      if (s) steps.push_back(std::move(*s));
    }
  }

  // Run: one restore per step; on failure undo the ones already done.
  for (auto& s : steps) {
    try {
      session.restore(s.backend, s.payload.text(), "restore " + s.name());
    } catch (const IptablesError& e) {
      const std::string note = session.rollback(steps);
      throw IptablesError(e.step(), e.detail() + note, e.exit_code());
    }
    s.committed = true;
    res.restored.push_back(s.payload.text());
    spdlog::info("applied {} ({} tables)", s.name(), s.payload.tables.size());
  }

  // Policy routing for TPROXY, as istio sets it up after its rules.
  StateRecord next;
  next.lo_ipv6_added = rec.lo_ipv6_added;
  const auto want_routes = tproxy_routes_for(cfg, ipv6_enabled);
  const bool same_routes = rec.tproxy && want_routes && rec.tproxy->mark == want_routes->mark &&
                           rec.tproxy->table == want_routes->table;
  const bool routes_changed = rec.tproxy && !same_routes;
  try {
    if (routes_changed) session.remove_tproxy_routes(*rec.tproxy);
    if (want_routes) {
      session.ensure_tproxy_routes(*want_routes);
      res.tproxy_routes = true;
    }
    if (ipv6_enabled) {
      // istio adds ::6 to lo: the source of Envoy's inbound passthrough.
      std::string err;
      if (session.ip({"-6", "addr", "add", "::6/128", "dev", "lo"}, &err)) {
        next.lo_ipv6_added = true;
      } else if (!is_exists_error(err)) {
        throw IptablesError("address ipv6", "ip -6 addr add ::6/128 dev lo: " + err);
      }
    }
  } catch (const IptablesError& e) {
    if (want_routes && !same_routes) session.remove_tproxy_routes(*want_routes);
    if (routes_changed) {
      try {
        session.ensure_tproxy_routes(*rec.tproxy);
      } catch (const IptablesError&) {
      }
    }
    const std::string note = session.rollback(steps);
    throw IptablesError(e.step(), e.detail() + note, e.exit_code());
  }
  next.tproxy = want_routes;

  // Record what now sits in built-in chains because of us.
  for (const auto& s : steps) {
    try {
      std::string text = session.save_text(s.backend);
      for (const auto& r : added_by_step(s, parse_iptables_save(text))) {
        next.rules.push_back({std::string(family_name(s.backend.family)), s.backend.binary, r.table, r.line});
      }
      res.saved[s.backend.save_binary] = std::move(text);
    } catch (const IptablesError& e) {
      spdlog::warn("cannot record applied rules: {}", e.what());
    }
  }
  save_record(state_path(), next);
  res.applied = true;
  return res;
}

CleanupResult IptablesApplier::cleanup(const CaptureConfig& cfg) {
  const Stopwatch watch("cleanup");
  CleanupResult res;
  Session session(runner_);
  const StateRecord rec = load_record(state_path());
  const RuleBuilder built = build_istio_rules(cfg, true);
  std::vector<std::string> errors;

  for (Family fam : {Family::V4, Family::V6}) {
    const BinaryNames names = binary_names(fam);
    // Both backends; the plain binary only where neither exists.
    std::vector<std::pair<std::string, std::optional<std::string>>> dumps;
    for (const auto& binary : {names.nft, names.legacy}) dumps.emplace_back(binary, read_save(runner_, binary));
    if (!dumps[0].second && !dumps[1].second) dumps = {{names.plain, read_save(runner_, names.plain)}};
    for (const auto& [binary, dump] : dumps) {
      std::string why;
      const auto s = session.removal_step(rec, fam, binary, dump, [&] { return built.rules(fam); }, &why);
      if (!why.empty()) errors.push_back(binary + " holds istio rules but is not usable: " + why);
      if (!s) continue;
      try {
        session.restore(s->backend, s->payload.text(), "cleanup " + s->name());
        res.backends.push_back(s->name());
        res.restored.push_back(s->payload.text());
      } catch (const IptablesError& e) {
        errors.push_back(e.what());
      }
    }
  }

  std::vector<TproxyRoutes> routes;
  if (rec.tproxy) routes.push_back(*rec.tproxy);
  if (needs_tproxy_routes(cfg)) {
    TproxyRoutes t{cfg.tproxy_mark, cfg.tproxy_route_table, true};
    if (routes.empty() || !(routes[0].mark == t.mark && routes[0].table == t.table)) routes.push_back(t);
  }
  for (auto& t : routes) {
    t.ipv6 = true;  // remove from both families whatever the last apply used
    res.routes_removed |= session.remove_tproxy_routes(t);
  }
  if (rec.lo_ipv6_added) session.ip({"-6", "addr", "del", "::6/128", "dev", "lo"});

  if (!errors.empty()) {
    std::string msg;
    for (const auto& e : errors) msg += (msg.empty() ? "" : "; ") + e;
    throw IptablesError("cleanup", msg);
  }
  std::error_code ec;
  fs::remove(state_path(), ec);
  return res;
}

}  // namespace meshcap::iptables
