#include "applier.h"

#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <chrono>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <utility>

#include "files.h"
#include "iptables_error.h"
#include "kernel_tables.h"
#include "saved_ruleset.h"
#include "table_images.h"

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

// What meshcap applied with one backend in one family: istio's payload as
// restored (so the next apply or cleanup can remove exactly that without
// reading -save first) and the nf_tables tables that did not exist before.
struct RecordedBackend {
  Family family = Family::V4;
  std::string binary;
  bool legacy = false;
  RestorePayload payload;
  std::string payload_text;  // as read (payload.text() gives it again, at a cost)
  std::set<std::string> created;
};

struct StateRecord {
  std::vector<RecordedRule> rules;  // as -save printed them (the save-based path's record)
  std::vector<RecordedBackend> backends;
  std::optional<TproxyRoutes> tproxy;
  bool lo_ipv6_added = false;

  const RecordedBackend* backend(Family family, bool legacy) const {
    for (const auto& b : backends) {
      if (b.family == family && b.legacy == legacy) return &b;
    }
    return nullptr;
  }
  bool has_rules_of(Family family, const std::string& binary) const {
    for (const auto& r : rules) {
      if (r.family == family_name(family) && r.binary == binary) return true;
    }
    return false;
  }
};

// Parses restore text as RestorePayload::text() writes it.
RestorePayload parse_payload(const std::string& text) {
  RestorePayload p;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string_view line(text.data() + pos, end - pos);  // no copy but the one kept
    pos = end + 1;
    if (line.substr(0, 2) == "* ") {
      p.tables.push_back(TableSection{std::string(line.substr(2)), {}});
    } else if (line != "COMMIT" && !line.empty() && !p.tables.empty()) {
      p.tables.back().lines.emplace_back(line);
    }
  }
  return p;
}

// Where save_record keeps one backend's payload text.
std::string payload_path(const std::string& record, Family family, bool legacy) {
  return record + "." + std::string(family_name(family)) + (legacy ? "-legacy" : "-nft") + ".payload";
}

// Removes a record and the payload files beside it.
void remove_record(const std::string& path) {
  std::error_code ec;
  fs::remove(path, ec);
  for (Family f : {Family::V4, Family::V6}) {
    for (bool legacy : {false, true}) fs::remove(payload_path(path, f, legacy), ec);
  }
}

StateRecord load_record(const std::string& path) {
  StateRecord rec;
  const auto text = read_whole_file(path);
  if (!text) return rec;
  try {
    // Whole, then parsed: the parser reads a string several times faster than a stream.
    const auto j = nlohmann::json::parse(*text);
    for (const auto& r : j.at("rules")) {
      rec.rules.push_back({r.at("family"), r.at("binary"), r.at("table"), r.at("line")});
    }
    if (j.contains("tproxy") && !j.at("tproxy").is_null()) {
      const auto& t = j.at("tproxy");
      rec.tproxy = TproxyRoutes{t.at("mark"), t.at("table"), t.at("ipv6")};
    }
    if (j.contains("backends")) {
      for (const auto& b : j.at("backends")) {
        RecordedBackend rb;
        rb.family = b.at("family") == "ipv6" ? Family::V6 : Family::V4;
        rb.binary = b.at("binary");
        rb.legacy = b.at("legacy");
        if (b.contains("payload_file")) {
          // The payload's text beside the record (no JSON escaping of 10,000 rules).
          auto payload =
              read_whole_file((fs::path(path).parent_path() / b.at("payload_file").get<std::string>()).string());
          if (!payload) throw std::runtime_error("its payload file is missing");
          rb.payload_text = std::move(*payload);
        } else {
          rb.payload_text = b.at("payload").get<std::string>();
        }
        rb.payload = parse_payload(rb.payload_text);
        for (const auto& t : b.at("created")) rb.created.insert(t.get<std::string>());
        rec.backends.push_back(std::move(rb));
      }
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
  j["version"] = 2;
  j["rules"] = nlohmann::json::array();
  for (const auto& r : rec.rules) {
    j["rules"].push_back({{"family", r.family}, {"binary", r.binary}, {"table", r.table}, {"line", r.line}});
  }
  j["backends"] = nlohmann::json::array();
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  for (const auto& b : rec.backends) {
    // The payload goes beside the record, as text, written before it.
    const std::string file = fs::path(payload_path(path, b.family, b.legacy)).filename().string();
    const std::string text = b.payload_text.empty() ? b.payload.text() : b.payload_text;
    const std::string tmp = payload_path(path, b.family, b.legacy) + ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc | std::ios::binary);
      out.write(text.data(), static_cast<std::streamsize>(text.size()));
      if (!out.flush()) {
        spdlog::warn("cannot write meshcap iptables state {}; a later apply or cleanup will match rules by content",
                     tmp);
        return;
      }
    }
    fs::rename(tmp, payload_path(path, b.family, b.legacy), ec);
    j["backends"].push_back({{"family", std::string(family_name(b.family))},
                             {"binary", b.binary},
                             {"legacy", b.legacy},
                             {"payload_file", file},
                             {"created", b.created}});
  }
  if (rec.tproxy) {
    j["tproxy"] = {{"mark", rec.tproxy->mark}, {"table", rec.tproxy->table}, {"ipv6", rec.tproxy->ipv6}};
  } else {
    j["tproxy"] = nullptr;
  }
  j["lo_ipv6_added"] = rec.lo_ipv6_added;
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
// A save-based step is planned from what -save printed (`before`, `removed`);
// a fast one from the record of what meshcap applied (`previous`) after the
// kernel's tables showed that nothing else istio-like is there.
struct Step {
  Backend backend;
  SavedRuleset before;
  std::vector<RemovedRule> removed;
  RestorePayload payload;
  bool committed = false;
  bool fast = false;
  bool unprobed = false;               // backend chosen without istio's probe rule
  RestorePayload previous;             // fast: what the step removes (the last apply's payload)
  RestorePayload added;                // fast: istio's payload the step adds (empty: removal only)
  bool added_is_payload = false;       // fast: `added` is `payload` itself (not copied)
  std::set<std::string> done_tables;   // a failed restore's tables that were committed before it failed

  std::string name() const { return std::string(family_name(backend.family)) + " " + backend.binary; }
  /// What the step adds (fast steps).
  const RestorePayload& adds() const { return added_is_payload ? payload : added; }
  /// payload.text(), made once (10,000 rules are 140 KB of text).
  const std::string& text() const {
    if (text_.empty() && !payload.empty()) text_ = payload.text();
    return text_;
  }

 private:
  mutable std::string text_;
};

Step make_step(const Backend& backend) {
  Step s;
  s.backend = backend;
  return s;
}

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
  Step s = make_step(backend);
  s.before = std::move(before);
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
// `only`: just those tables (the ones a failed restore committed).
RestorePayload rollback_payload(const Step& s, const SavedRuleset& now, const std::set<std::string>* only) {
  std::map<std::string, std::vector<std::string>> by_table;
  auto skip = [only](const std::string& table) { return only != nullptr && only->count(table) == 0; };
  for (const auto& r : added_by_step(s, now)) {
    if (skip(r.table)) continue;
    add_line(by_table, r.table, "-D " + r.chain + " " + rule_spec_text(r.line, r.chain));
  }
  for (const auto& t : now.tables) {
    if (skip(t.name)) continue;
    for (const auto& c : t.chains) {
      if (is_istio_chain(c.name)) add_line(by_table, t.name, "-F " + c.name);
    }
    for (const auto& c : t.chains) {
      if (is_istio_chain(c.name)) add_line(by_table, t.name, "-X " + c.name);
    }
  }
  for (const auto& t : s.before.tables) {
    if (skip(t.name)) continue;
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
    if (skip(r.table)) continue;
    add_line(by_table, r.table,
             "-I " + r.chain + " " + std::to_string(r.position) + " " + rule_spec_text(r.line, r.chain));
  }
  return to_payload(by_table);
}

// ---------------------------------------------------------------------------
// Fast steps: what a recorded payload put in the kernel, and taking it out.

// The chain of a payload rule line ("-A CHAIN ..." / "-I CHAIN N ...") and
// the text after it (what `-D CHAIN` needs); false for other lines.
bool split_payload_rule(const std::string& line, std::string* chain, std::string* spec) {
  if (line.rfind("-A ", 0) != 0 && line.rfind("-I ", 0) != 0) return false;
  const auto words = split_rule_words(line);
  if (words.size() < 2 || (words[0] != "-A" && words[0] != "-I")) return false;
  *chain = words[1];
  size_t skip = 2;
  if (words[0] == "-I" && words.size() > 2 && !words[2].empty() &&
      std::all_of(words[2].begin(), words[2].end(), [](char c) { return c >= '0' && c <= '9'; })) {
    skip = 3;
  }
  size_t pos = 0;  // payload lines are rendered with single spaces
  for (size_t i = 0; i < skip; ++i) {
    pos = line.find(' ', pos);
    if (pos == std::string::npos) {
      spec->clear();
      return true;
    }
    ++pos;
  }
  *spec = line.substr(pos);
  return true;
}

std::map<std::string, std::set<std::string>> payload_istio_chains(const RestorePayload& p) {
  std::map<std::string, std::set<std::string>> out;
  for (const auto& t : p.tables) {
    for (const auto& line : t.lines) {
      if (line.rfind("-N ", 0) == 0 && is_istio_chain(line.substr(3))) out[t.table].insert(line.substr(3));
    }
  }
  return out;
}

// True for a payload line that adds a rule to an ISTIO_* chain ("-A ISTIO_..."),
// read without splitting the line.
bool in_istio_chain(const std::string& line) {
  return (line.rfind("-A ", 0) == 0 || line.rfind("-I ", 0) == 0) &&
         is_istio_chain(std::string_view(line).substr(3, line.find(' ', 3) - 3));
}

// Rules outside ISTIO_* chains that jump to one.
size_t payload_istio_jumps(const RestorePayload& p) {
  size_t n = 0;
  for (const auto& t : p.tables) {
    for (const auto& line : t.lines) {
      if (in_istio_chain(line)) continue;
      std::string chain, spec;
      if (split_payload_rule(line, &chain, &spec) && !is_istio_chain(chain) && is_istio_chain(rule_target(line))) ++n;
    }
  }
  return n;
}

// The payload's rules outside ISTIO_* chains.
std::vector<Rule> outside_rules(const RestorePayload& p) {
  std::vector<Rule> out;
  for (const auto& t : p.tables) {
    for (const auto& line : t.lines) {
      if (in_istio_chain(line)) continue;
      std::string chain, spec;
      if (split_payload_rule(line, &chain, &spec) && !is_istio_chain(chain)) {
        out.push_back(Rule{t.table, chain, split_rule_words(line)});
      }
    }
  }
  return out;
}

// True when all `p` adds outside its ISTIO_* chains are jumps to them, so
// removing the chains and every jump to them removes exactly what it added.
bool removable_in_one_transaction(const RestorePayload& p) {
  for (const auto& t : p.tables) {
    for (const auto& line : t.lines) {
      if (line.rfind("-N ", 0) == 0 && !is_istio_chain(line.substr(3))) return false;
    }
  }
  return outside_rules(p).size() == payload_istio_jumps(p);
}

// Removes what `p` added, table by table: its rules in other chains (`-D`
// with the same words), then its chains (`-F`, `-X`). `only`: those tables.
void add_removal(std::map<std::string, std::vector<std::string>>& by_table, const RestorePayload& p,
                 const std::set<std::string>* only = nullptr) {
  for (const auto& t : p.tables) {
    if (only != nullptr && only->count(t.table) == 0) continue;
    std::vector<std::string> chains;
    for (const auto& line : t.lines) {
      if (line.rfind("-N ", 0) == 0) {
        chains.push_back(line.substr(3));
        continue;
      }
      std::string chain, spec;
      if (split_payload_rule(line, &chain, &spec) && !is_istio_chain(chain)) {
        add_line(by_table, t.table, "-D " + chain + " " + spec);
      }
    }
    for (const auto& c : chains) add_line(by_table, t.table, "-F " + c);
    for (const auto& c : chains) add_line(by_table, t.table, "-X " + c);
  }
}

void add_all(std::map<std::string, std::vector<std::string>>& by_table, const RestorePayload& p,
             const std::set<std::string>* only = nullptr) {
  for (const auto& t : p.tables) {
    if (only != nullptr && only->count(t.table) == 0) continue;
    for (const auto& line : t.lines) add_line(by_table, t.table, line);
  }
}

// True when `view` holds exactly the ISTIO_* chains and jumps to them that
// `rec` put there (nothing when no record): then the record alone says what
// to remove.
bool matches_record(const TablesView& view, const RecordedBackend* rec) {
  const RestorePayload none;
  const RestorePayload& p = rec != nullptr ? rec->payload : none;
  return view.istio_chains() == payload_istio_chains(p) && view.istio_jumps() == payload_istio_jumps(p);
}

// True when `p`'s tables are non-empty and in strictly ascending order, as
// to_payload makes them.
bool in_table_order(const RestorePayload& p) {
  for (size_t i = 0; i < p.tables.size(); ++i) {
    if (p.tables[i].lines.empty() || (i > 0 && !(p.tables[i - 1].table < p.tables[i].table))) return false;
  }
  return true;
}

// Removes `previous` (what meshcap applied before) and adds `add`.
Step fast_step(const Backend& backend, const RecordedBackend* previous, const RestorePayload* add) {
  Step s = make_step(backend);
  s.fast = true;
  if (previous == nullptr && add != nullptr && in_table_order(*add)) {
    // Nothing to remove: the payload is `add` as it is (what by_table would make of it).
    s.payload = *add;
    s.added_is_payload = true;
    return s;
  }
  std::map<std::string, std::vector<std::string>> by_table;
  if (previous != nullptr) {
    s.previous = previous->payload;
    add_removal(by_table, s.previous);
  }
  if (add != nullptr) {
    s.added = *add;
    add_all(by_table, s.added);
  }
  s.payload = to_payload(by_table);
  return s;
}

// Undoes a fast step: removes what it added, puts back what it removed.
RestorePayload fast_rollback_payload(const Step& s, const std::set<std::string>* only) {
  std::map<std::string, std::vector<std::string>> by_table;
  add_removal(by_table, s.adds(), only);
  add_all(by_table, s.previous, only);
  return to_payload(by_table);
}

// iptables-restore (both backends) commits table by table: the tables of
// `p` whose COMMIT came before the line the error names.
std::set<std::string> committed_before_error(const RestorePayload& p, const std::string& err) {
  static const std::regex kLine(R"(line:? ([0-9]+))");
  std::smatch m;
  if (!std::regex_search(err, m, kLine)) return {};
  const size_t failed = std::stoul(m[1]);
  std::set<std::string> out;
  size_t line = 0;
  for (const auto& t : p.tables) {
    line += t.lines.size() + 2;  // "* table", the lines, "COMMIT"
    if (line >= failed) break;
    out.insert(t.table);
  }
  return out;
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
    last_restore_error_ = r.err;
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
    const RecordedBackend* applied = rec.backend(b.family, b.legacy);
    if (owned.empty() && applied != nullptr && applied->binary == b.binary) {
      // A fast apply records istio's spelling: learn the backend's.
      owned = canonical_lines(b, outside_rules(applied->payload));
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
    bool recorded = rec.has_rules_of(fam, binary);
    for (const auto& b : rec.backends) recorded |= b.family == fam && b.binary == binary;
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

  // Undoes committed steps (and the committed tables of a failed one),
  // newest first; returns a note for the error.
  std::string rollback(std::vector<Step>& steps) {
    std::string note;
    for (auto it = steps.rbegin(); it != steps.rend(); ++it) {
      if (!it->committed && it->done_tables.empty()) continue;
      const std::set<std::string>* only = it->committed ? nullptr : &it->done_tables;
      try {
        const RestorePayload p =
            it->fast ? fast_rollback_payload(*it, only) : rollback_payload(*it, save(it->backend), only);
        if (!p.empty()) restore(it->backend, p.text(), "rollback " + it->name());
        it->committed = false;
        it->done_tables.clear();
        spdlog::warn("rolled back {} to its previous rules", it->name());
      } catch (const IptablesError& e) {
        note += std::string("; rollback failed: ") + e.what();
      }
    }
    return note.empty() ? "; earlier changes were rolled back" : note;
  }

  const std::string& last_restore_error() const { return last_restore_error_; }

  CommandRunner& runner_;
  std::string last_restore_error_;
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

bool IptablesApplier::forget(const std::string& state_dir, const std::string& context_id) {
  const std::string path = (fs::path(state_dir) / (context_id + ".json")).string();
  std::error_code ec;
  const bool had = fs::exists(path, ec);
  remove_record(path);
  return had;
}

std::vector<std::string> IptablesApplier::recorded_contexts(const std::string& state_dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(state_dir, ec)) {
    const std::string file = e.path().filename().string();
    if (file.size() > 5 && file.compare(file.size() - 5, 5, ".json") == 0 && file != "binaries.json")
      out.push_back(file.substr(0, file.size() - 5));
  }
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

// The versions of the iptables binaries, kept in the state directory and
// keyed by the file each name runs, so `--version` runs once per binary and
// machine, not once per pod.
class VersionCache {
 public:
  explicit VersionCache(const std::string& state_dir) : path_((fs::path(state_dir) / "binaries.json").string()) {}

  std::string get(const std::string& binary) const {
    const std::string key = file_key(binary);
    if (key.empty()) return "";
    std::ifstream in(path_);
    if (!in) return "";
    try {
      const auto j = nlohmann::json::parse(in);
      if (j.contains(binary) && j.at(binary).at("file") == key) return j.at(binary).at("version");
    } catch (const std::exception&) {
    }
    return "";
  }

  void put(const std::string& binary, const std::string& version) const {
    const std::string key = file_key(binary);
    if (key.empty()) return;
    nlohmann::json j = nlohmann::json::object();
    {
      std::ifstream in(path_);
      if (in) {
        try {
          j = nlohmann::json::parse(in);
        } catch (const std::exception&) {
          j = nlohmann::json::object();
        }
      }
    }
    j[binary] = {{"file", key}, {"version", version}};
    std::error_code ec;
    fs::create_directories(fs::path(path_).parent_path(), ec);
    const std::string tmp = path_ + ".tmp." + std::to_string(::getpid());
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << j.dump() << "\n";
    }
    fs::rename(tmp, path_, ec);
  }

 private:
  // The resolved file with its inode, size and change time.
  static std::string file_key(const std::string& binary) {
    const std::string path = find_binary(binary);
    if (path.empty()) return "";
    std::error_code ec;
    const fs::path real = fs::canonical(path, ec);
    struct stat st {};
    if (ec || ::stat(real.c_str(), &st) != 0) return "";
    return real.string() + ":" + std::to_string(st.st_ino) + ":" + std::to_string(st.st_size) + ":" +
           std::to_string(st.st_ctim.tv_sec) + "." + std::to_string(st.st_ctim.tv_nsec);
  }

  std::string path_;
};

using Views = std::map<std::pair<Family, bool>, std::optional<TablesView>>;

// What each backend of each family holds now (nullopt: unreadable).
Views read_views(KernelTables* kernel, bool istio_rules = true) {
  if (kernel == nullptr) return {};
  return kernel->read_all(istio_rules);
}

const TablesView* view_in(const Views& views, Family fam, bool legacy) {
  const auto it = views.find({fam, legacy});
  return it != views.end() && it->second ? &*it->second : nullptr;
}

// Removes the nf_tables tables that appeared since `before` (meshcap's
// restores or istio's probe created them) and are empty now, except `keep`.
void remove_new_tables(KernelTables* kernel, const Views& before,
                       const std::set<std::pair<Family, std::string>>& keep = {}) {
  if (kernel == nullptr) return;
  for (Family fam : {Family::V4, Family::V6}) {
    const TablesView* then = view_in(before, fam, false);
    if (then == nullptr) continue;
    const auto now = kernel->read(fam, false);
    if (!now) continue;
    for (const auto& t : now->tables) {
      if (then->find(t.name) != nullptr || keep.count({fam, t.name})) continue;
      if (kernel->remove_if_empty(fam, t.name)) spdlog::debug("removed the empty {} table {} meshcap created", family_name(fam), t.name);
    }
  }
}

// Cleanup's removal of `s` (what the record says meshcap applied), no
// -save: false when its restore failed (the caller then reads -save).
bool remove_recorded(Session& session, const Step& s, const std::string& binary, CleanupResult& res) {
  try {
    if (!s.payload.empty()) {
      session.restore(s.backend, s.text(), "cleanup " + s.name());
      res.backends.push_back(s.name());
      res.restored.push_back(s.text());
    }
  } catch (const IptablesError& e) {
    spdlog::info("removing the recorded rules failed ({}); reading {} instead", e.what(), binary + "-save");
    return false;
  }
  return true;
}

// Removes the TPROXY policy routing of the last apply and of `cfg`, in both
// families; true when an ip rule or route was deleted.
bool remove_tproxy_routes_of(Session& session, const StateRecord& rec, const CaptureConfig* cfg) {
  std::vector<TproxyRoutes> routes;
  if (rec.tproxy) routes.push_back(*rec.tproxy);
  if (cfg != nullptr && needs_tproxy_routes(*cfg)) {
    TproxyRoutes t{cfg->tproxy_mark, cfg->tproxy_route_table, true};
    if (routes.empty() || !(routes[0].mark == t.mark && routes[0].table == t.table)) routes.push_back(t);
  }
  bool removed = false;
  for (auto& t : routes) {
    t.ipv6 = true;  // remove from both families whatever the last apply used
    removed |= session.remove_tproxy_routes(t);
  }
  return removed;
}

std::string join_errors(const std::vector<std::string>& errors) {
  std::string msg;
  for (const auto& e : errors) msg += (msg.empty() ? "" : "; ") + e;
  return msg;
}

}  // namespace

ApplyResult IptablesApplier::apply(const CaptureConfig& cfg, bool ipv6_enabled) {
  const Stopwatch watch("apply");
  return apply_with(cfg, ipv6_enabled, true);
}

Backend IptablesApplier::known_backend(Family family, const std::string& binary, bool legacy) {
  Backend b;
  b.family = family;
  b.binary = binary;
  b.save_binary = binary + "-save";
  b.restore_binary = binary + "-restore";
  b.legacy = legacy;
  const VersionCache cache(options_.state_dir);
  b.version = cache.get(binary);
  if (b.version.empty() && legacy) {
    // Only legacy needs it (its lock flag depends on it).
    read_version(runner_, b);
    b.legacy = legacy;
    cache.put(binary, b.version);
  }
  return b;
}

std::optional<Backend> IptablesApplier::quick_backend(Family family, const std::string& force, const TablesView& nft,
                                                      const TablesView& legacy) {
  bool use_legacy = false;
  if (force == "legacy") {
    use_legacy = true;
  } else if (force.empty()) {
    // istio: a backend that holds rules (legacy first), else nft.
    use_legacy = legacy.holds_rules();
  } else if (force != "nft") {
    return std::nullopt;  // detect_backend says what is wrong with it
  }
  const BinaryNames names = binary_names(family);
  const std::string& binary = use_legacy ? names.legacy : names.nft;
  if (!runner_.has_binary(binary + "-restore")) return std::nullopt;
  Backend b = known_backend(family, binary, use_legacy);
  b.held_rules = (use_legacy ? legacy : nft).holds_rules();
  return b;
}

// One apply_with call, in its order: plan the steps per family and backend,
// run their restores (undoing them on failure), set up TPROXY routing and
// ::6, and record what was applied.
class IptablesApplier::ApplyRun {
 public:
  ApplyRun(IptablesApplier& applier, const CaptureConfig& cfg, bool ipv6_enabled, const RuleBuilder& built,
           ApplyResult& res)
      : applier_(applier),
        cfg_(cfg),
        ipv6_enabled_(ipv6_enabled),
        built_(built),
        res_(res),
        session_(applier.runner_),
        rec_(load_record(applier.state_path())),
        kernel_(applier.runner_.kernel_tables()),
        before_(read_views(kernel_)) {}

  // Per family the chosen backend (remove old state, add new rules), then
  // any other backend that still holds istio state (remove only). A backend
  // whose tables hold exactly what the record says meshcap applied (or,
  // without a record, no ISTIO_* chain) is planned from the record alone;
  // any other from what its -save prints.
  void plan(bool fast) {
    for (Family fam : {Family::V4, Family::V6}) plan_family(fam, fast);
  }

  // One restore per step; on failure undoes the ones already done and
  // throws. False (after undoing) when a backend chosen from the tables
  // fails istio's probe: the caller then applies save-based.
  bool restore_all() {
    for (auto& s : steps_) {
      if (s.payload.empty()) {
        s.committed = true;
        continue;
      }
      if (replayed(s)) {
        s.committed = true;
        res_.replayed.push_back(s.text());
        spdlog::info(
            "applied {} ({} tables, as iptables-restore made them of this payload before)",
            s.name(), s.payload.tables.size());
        continue;
      }
      auto image = image_before(s);
      try {
        session_.restore(s.backend, s.text(), "restore " + s.name());
      } catch (const IptablesError& e) {
        s.done_tables = committed_before_error(s.payload, session_.last_restore_error());
        std::string why;
        if (s.unprobed && !probe_backend(applier_.runner_, s.backend.family, s.backend.binary, &why)) {
          // The backend chosen from the tables does not work here: istio's
          // probe decides, as on the save-based path.
          const std::string note = undo_steps();
          if (!cfg_.force_iptables_binary.empty()) {
            throw IptablesError("detect-backend " + std::string(family_name(s.backend.family)),
                                "forced iptables binary " + s.backend.binary + " is not usable: " + why + note);
          }
          spdlog::info("{} is not usable here ({}); choosing a backend with istio's probes", s.backend.binary, why);
          return false;
        }
        const std::string note = undo_steps();
        throw IptablesError(e.step(), e.detail() + note, e.exit_code());
      }
      s.committed = true;
      res_.restored.push_back(s.text());
      spdlog::info("applied {} ({} tables{})", s.name(), s.payload.tables.size(), s.fast ? "" : ", from -save");
      if (image) learn(s, *image);
    }
    return true;
  }

  // A step images can stand for: only adds (planned from the tables), and
  // the kernel's tables readable here.
  bool imageable(const Step& s) const {
    return kernel_ != nullptr && applier_.options_.images && s.fast && s.previous.empty() && !s.adds().empty();
  }

  // Applies `s` from a kept image of its payload; false when there is none
  // or the tables are not in the state it starts from (nothing changed).
  bool replayed(const Step& s) {
    if (!imageable(s)) return false;
    const auto images = load_images(applier_.options_.state_dir, image_key(s.backend, added_text(s)));
    return images && kernel_->replay(s.backend.family, s.backend.legacy, *images);
  }

  // After `s`'s restore: keeps the image of what it made, if replayable.
  void learn(const Step& s, std::vector<TableImage>& image) {
    if (!kernel_->image_after(s.backend.family, s.backend.legacy, image)) {
      spdlog::debug("{}: no image kept (the tables cannot be replayed)", s.name());
    } else if (!images_match_payload(image, s.backend.legacy, s.adds())) {
      spdlog::debug(
          "{}: no image kept (the tables hold more or less than the payload added)",
          s.name());
    } else {
      save_images(applier_.options_.state_dir, image_key(s.backend, added_text(s)), image);
    }
  }

  // The text of what `s` adds: its payload's, made once, when that is it.
  static std::string added_text(const Step& s) { return s.added_is_payload ? s.text() : s.added.text(); }

  // Before `s`'s restore: the tables' state, when an image can be taken.
  std::optional<std::vector<TableImage>> image_before(const Step& s) {
    if (!imageable(s)) return std::nullopt;
    std::vector<std::string> tables;
    for (const auto& t : s.payload.tables) tables.push_back(t.table);
    return kernel_->image_before(s.backend.family, s.backend.legacy, tables);
  }

  // Policy routing for TPROXY, as istio sets it up after its rules, and
  // ::6 on lo; on failure puts the earlier routing back, undoes the steps
  // and throws. Returns the record to write, with the routing and address.
  StateRecord set_up_routing() {
    StateRecord next;
    next.lo_ipv6_added = rec_.lo_ipv6_added;
    const auto want_routes = tproxy_routes_for(cfg_, ipv6_enabled_);
    const bool same_routes = rec_.tproxy && want_routes && rec_.tproxy->mark == want_routes->mark &&
                             rec_.tproxy->table == want_routes->table;
    const bool routes_changed = rec_.tproxy && !same_routes;
    try {
      if (routes_changed) session_.remove_tproxy_routes(*rec_.tproxy);
      if (want_routes) {
        session_.ensure_tproxy_routes(*want_routes);
        res_.tproxy_routes = true;
      }
      if (ipv6_enabled_) {
        // istio adds ::6 to lo: the source of Envoy's inbound passthrough.
        std::string err;
        const std::optional<int> by_netlink = kernel_ != nullptr ? kernel_->lo_address6(true) : std::nullopt;
        if (by_netlink) {
          if (*by_netlink == 0) {
            next.lo_ipv6_added = true;
          } else if (*by_netlink != EEXIST) {
            throw IptablesError("address ipv6", "adding ::6/128 to lo: " + std::string(std::strerror(*by_netlink)));
          }
        } else if (session_.ip({"-6", "addr", "add", "::6/128", "dev", "lo"}, &err)) {
          next.lo_ipv6_added = true;
        } else if (!is_exists_error(err)) {
          throw IptablesError("address ipv6", "ip -6 addr add ::6/128 dev lo: " + err);
        }
      }
    } catch (const IptablesError& e) {
      if (want_routes && !same_routes) session_.remove_tproxy_routes(*want_routes);
      if (routes_changed) {
        try {
          session_.ensure_tproxy_routes(*rec_.tproxy);
        } catch (const IptablesError&) {
        }
      }
      const std::string note = undo_steps();
      throw IptablesError(e.step(), e.detail() + note, e.exit_code());
    }
    next.tproxy = want_routes;
    return next;
  }

  // Records what meshcap applied with each chosen backend and the nf_tables
  // tables it created (cleanup removes those once empty), removes the empty
  // tables it no longer needs, and writes the state file.
  void record(StateRecord& next) {
    const std::set<std::pair<Family, std::string>> keep = record_backends(next);
    // Tables meshcap created with a backend it no longer uses.
    for (const auto& was : rec_.backends) {
      if (kernel_ == nullptr || was.legacy || (chosen_of_.count(was.family) && !chosen_of_.at(was.family).legacy)) {
        continue;
      }
      for (const auto& t : was.created) kernel_->remove_if_empty(was.family, t);
    }
    if (save_based_) remove_new_tables(kernel_, before_, keep);
    record_saved_rules(next);
    save_record(applier_.state_path(), next);
  }

 private:
  void plan_family(Family fam, bool fast) {
    const TablesView* vn = view_in(before_, fam, false);
    const TablesView* vl = view_in(before_, fam, true);
    const bool fast_family = fast && vn != nullptr && vl != nullptr;
    std::optional<Backend> chosen;
    bool unprobed = false;
    if (fam == Family::V4 || ipv6_enabled_) chosen = choose_backend(fam, fast_family, vn, vl, &unprobed);
    const RestorePayload* add = fam == Family::V4 ? &res_.rules.ipv4 : &res_.rules.ipv6;
    const BinaryNames names = binary_names(fam);
    if (chosen && chosen->binary == names.plain) {
      // The plain binary is a link to one of the others: alone, never beside them.
      steps_.push_back(save_based_step(fam, *chosen, add));
      return;
    }
    for (bool legacy : {false, true}) {
      const std::string& binary = legacy ? names.legacy : names.nft;
      const TablesView* view = legacy ? vl : vn;
      const RecordedBackend* recorded = rec_.backend(fam, legacy);
      const bool fast_ok = fast_family && matches_record(*view, recorded) &&
                           !(recorded == nullptr && rec_.has_rules_of(fam, binary));
      if (chosen && chosen->legacy == legacy) {
        Step s = fast_ok ? fast_step(*chosen, recorded, add) : save_based_step(fam, *chosen, add);
        s.unprobed = unprobed;
        steps_.push_back(std::move(s));
      } else if (fast_ok) {
        if (recorded != nullptr) {
          steps_.push_back(fast_step(applier_.known_backend(fam, recorded->binary, legacy), recorded, nullptr));
        }
      } else {
        plan_removal(fam, binary);
      }
    }
  }

  // The backend a wanted family's rules go to: read from the tables when
  // `fast_family` (then `unprobed`), else chosen by istio's probes.
  Backend choose_backend(Family fam, bool fast_family, const TablesView* vn, const TablesView* vl, bool* unprobed) {
    std::optional<Backend> chosen;
    if (fast_family) chosen = applier_.quick_backend(fam, cfg_.force_iptables_binary, *vn, *vl);
    *unprobed = chosen.has_value();
    if (!chosen) {
      chosen = detect_backend(applier_.runner_, fam, cfg_.force_iptables_binary);
      save_based_ = true;
    }
    (fam == Family::V4 ? res_.ipv4 : res_.ipv6.emplace()) = *chosen;
    chosen_of_[fam] = *chosen;
    spdlog::info("{}: using {} ({}{}{})", family_name(fam), chosen->binary, chosen->kind(),
                 chosen->version.empty() ? "" : " ", chosen->version);
    return *chosen;
  }

  // The step for the chosen backend planned from what its -save prints.
  Step save_based_step(Family fam, const Backend& b, const RestorePayload* add) {
    save_based_ = true;
    SavedRuleset was = session_.save(b);
    LineCounts owned = session_.owned_lines(rec_, b, was, built_.rules(fam));
    return plan_step(b, std::move(was), std::move(owned), add);
  }

  // A backend not chosen that may still hold istio state: remove it.
  void plan_removal(Family fam, const std::string& binary) {
    save_based_ = true;
    std::string why;
    auto s = session_.removal_step(rec_, fam, binary, read_save(applier_.runner_, binary),
                                   [&] { return build_istio_rules(cfg_, true).rules(fam); }, &why);
    if (!why.empty()) spdlog::warn("{} holds istio rules but cannot be used to remove them: {}", binary, why);
    if (s) steps_.push_back(std::move(*s));
  }

  // Rolls the steps back and removes the tables they created; the note for the error.
  std::string undo_steps() {
    const std::string note = session_.rollback(steps_);
    remove_new_tables(kernel_, before_);
    return note;
  }

  // Fills next.backends; returns the nf_tables tables to keep.
  std::set<std::pair<Family, std::string>> record_backends(StateRecord& next) const {
    std::set<std::pair<Family, std::string>> keep;
    for (const auto& [fam, b] : chosen_of_) {
      RecordedBackend rb;
      rb.family = fam;
      rb.binary = b.binary;
      rb.legacy = b.legacy;
      rb.payload = fam == Family::V4 ? res_.rules.ipv4 : res_.rules.ipv6;
      for (const auto& s : steps_)  // its text, when a step made it already
        if (s.added_is_payload && s.backend.family == fam && s.backend.legacy == b.legacy) rb.payload_text = s.text();
      if (!b.legacy) {
        const RecordedBackend* was = rec_.backend(fam, false);
        if (was != nullptr) rb.created = was->created;
        const TablesView* then = view_in(before_, fam, false);
        for (const auto& t : rb.payload.tables) {
          if (then != nullptr && then->find(t.table) == nullptr) rb.created.insert(t.table);
        }
        for (const auto& t : rb.created) keep.insert({fam, t});
        for (const auto& t : rb.payload.tables) keep.insert({fam, t.table});
      }
      next.backends.push_back(std::move(rb));
    }
    return keep;
  }

  // The save-based path also records the rules as the backend prints them.
  void record_saved_rules(StateRecord& next) {
    for (const auto& s : steps_) {
      if (s.fast) continue;
      try {
        std::string text = session_.save_text(s.backend);
        for (const auto& r : added_by_step(s, parse_iptables_save(text))) {
          next.rules.push_back({std::string(family_name(s.backend.family)), s.backend.binary, r.table, r.line});
        }
        res_.saved[s.backend.save_binary] = std::move(text);
      } catch (const IptablesError& e) {
        spdlog::warn("cannot record applied rules: {}", e.what());
      }
    }
  }

  IptablesApplier& applier_;
  const CaptureConfig& cfg_;
  const bool ipv6_enabled_;
  const RuleBuilder& built_;
  ApplyResult& res_;
  Session session_;
  const StateRecord rec_;
  KernelTables* const kernel_;
  const Views before_;
  bool save_based_ = false;  // -save or istio's probe ran somewhere
  std::vector<Step> steps_;
  std::map<Family, Backend> chosen_of_;
};

ApplyResult IptablesApplier::apply_with(const CaptureConfig& cfg, bool ipv6_enabled, bool fast) {
  ApplyResult res;
  const RuleBuilder built = build_istio_rules(cfg, ipv6_enabled);
  res.rules.ipv4 = built.restore_payload(Family::V4);
  res.rules.ipv6 = built.restore_payload(Family::V6);
  res.rules.ipv6_enabled = ipv6_enabled;
  if (cfg.skip_rule_apply) {
    spdlog::info("--skip-rule-apply: not applying iptables rules");
    return res;
  }

  ApplyRun run(*this, cfg, ipv6_enabled, built, res);
  run.plan(fast);
  if (!run.restore_all()) return apply_with(cfg, ipv6_enabled, false);
  StateRecord next = run.set_up_routing();
  run.record(next);
  res.applied = true;
  return res;
}

std::optional<std::vector<std::string>> IptablesApplier::drift() {
  const StateRecord rec = load_record(state_path());
  KernelTables* kernel = runner_.kernel_tables();
  if (kernel == nullptr || rec.backends.empty()) return std::nullopt;
  const Views now = read_views(kernel);
  std::vector<std::string> out;
  for (const auto& b : rec.backends) {
    const TablesView* view = view_in(now, b.family, b.legacy);
    if (view == nullptr) return std::nullopt;
    const std::string where = std::string(family_name(b.family)) + " " + b.binary + ": ";
    if (view->istio_chains() != payload_istio_chains(b.payload)) out.push_back(where + "ISTIO_* chains differ");
    const size_t jumps = payload_istio_jumps(b.payload);
    if (view->istio_jumps() != jumps) {
      out.push_back(where + std::to_string(view->istio_jumps()) + " jumps into ISTIO_* chains, " +
                    std::to_string(jumps) + " applied");
    }
    for (const auto& t : b.payload.tables) {
      std::map<std::string, size_t> rules;
      for (const auto& line : t.lines) {
        std::string chain, spec;
        if (split_payload_rule(line, &chain, &spec) && is_istio_chain(chain)) ++rules[chain];
      }
      const TableView* tv = view->find(t.table);
      for (const auto& [chain, n] : rules) {
        const ChainView* c = tv != nullptr ? tv->find(chain) : nullptr;
        if (c != nullptr && c->rules != n) {
          out.push_back(where + t.table + " " + chain + " holds " + std::to_string(c->rules) + " rules, " +
                        std::to_string(n) + " applied");
        }
      }
    }
  }
  return out;
}

CleanupResult IptablesApplier::cleanup(const CaptureConfig& cfg) {
  return cleanup([&cfg]() -> const CaptureConfig& { return cfg; });
}

CleanupResult IptablesApplier::cleanup(const std::function<const CaptureConfig&()>& config) {
  const Stopwatch watch("cleanup");
  CleanupResult res;
  Session session(runner_);
  const StateRecord rec = load_record(state_path());
  std::optional<RuleBuilder> built_once;  // istio's rules, only where -save must be matched against them
  auto built = [&]() -> const RuleBuilder& {
    if (!built_once) built_once = build_istio_rules(config(), true);
    return *built_once;
  };
  std::vector<std::string> errors;

  KernelTables* kernel = runner_.kernel_tables();
  // Legacy: the tables as they were before, if they hold exactly what the
  // image of the recorded payload says the restore made of them and what the
  // record says meshcap added; read once, under the lock the replay holds.
  std::set<Family> legacy_replayed;
  if (kernel != nullptr && options_.images) {
    for (Family fam : {Family::V4, Family::V6}) {
      const RecordedBackend* recorded = rec.backend(fam, true);
      if (recorded == nullptr) continue;
      const auto images = load_images(
          options_.state_dir, image_key(known_backend(fam, recorded->binary, true), recorded->payload_text));
      auto matches = [&](const TablesView& v) { return matches_record(v, recorded); };
      if (images && kernel->replay_back_if(fam, true, *images, matches)) legacy_replayed.insert(fam);
    }
  }
  // Which chains there are and what jumps to ISTIO_* ones is all cleanup
  // compares with the record: not the chains' own rules.
  const Views now = read_views(kernel, /*istio_rules=*/false);
  // The save-based removal from one binary.
  auto remove_saved = [&](Family fam, const std::string& binary, const std::optional<std::string>& dump) {
    std::string why;
    const auto s = session.removal_step(rec, fam, binary, dump, [&] { return built().rules(fam); }, &why);
    if (!why.empty()) errors.push_back(binary + " holds istio rules but is not usable: " + why);
    if (!s) return;
    try {
      session.restore(s->backend, s->payload.text(), "cleanup " + s->name());
      res.backends.push_back(s->name());
      res.restored.push_back(s->payload.text());
    } catch (const IptablesError& e) {
      errors.push_back(e.what());
    }
  };

  // nf_tables holding exactly what the record says, where all meshcap added
  // outside its chains is jumps to them: both families in one transaction.
  std::set<Family> nft_removed;
  if (kernel != nullptr) {
    std::vector<IstioNftRemoval> removals;
    for (Family fam : {Family::V4, Family::V6}) {
      const TablesView* vn = view_in(now, fam, false);
      const RecordedBackend* recorded = rec.backend(fam, false);
      if (vn == nullptr || view_in(now, fam, true) == nullptr || recorded == nullptr ||
          !matches_record(*vn, recorded) || !removable_in_one_transaction(recorded->payload)) {
        continue;
      }
      removals.push_back({fam, payload_istio_chains(recorded->payload), payload_istio_jumps(recorded->payload),
                          recorded->created, false});
    }
    kernel->remove_istio_nft(removals);
    for (const auto& r : removals) {
      if (r.done) nft_removed.insert(r.family);
    }
  }

  for (Family fam : {Family::V4, Family::V6}) {
    const BinaryNames names = binary_names(fam);
    const TablesView* vn = view_in(now, fam, false);
    const TablesView* vl = view_in(now, fam, true);
    const RecordedBackend* replayed = legacy_replayed.count(fam) ? rec.backend(fam, true) : nullptr;
    const std::string replayed_name = replayed != nullptr ? std::string(family_name(fam)) + " " + replayed->binary : "";
    if (vn == nullptr || vl == nullptr) {
      // Both backends (but legacy, put back already); the plain binary only
      // where neither exists.
      std::vector<std::pair<std::string, std::optional<std::string>>> dumps;
      for (const auto& binary : {names.nft, names.legacy}) {
        if (replayed == nullptr || binary != names.legacy) dumps.emplace_back(binary, read_save(runner_, binary));
      }
      if (replayed == nullptr && !dumps[0].second && !dumps[1].second) {
        dumps = {{names.plain, read_save(runner_, names.plain)}};
      }
      for (const auto& [binary, dump] : dumps) remove_saved(fam, binary, dump);
      if (replayed != nullptr) res.backends.push_back(replayed_name);
      continue;
    }
    for (bool legacy : {false, true}) {
      if (legacy && replayed != nullptr) {
        res.backends.push_back(replayed_name);
        continue;
      }
      const std::string& binary = legacy ? names.legacy : names.nft;
      const RecordedBackend* recorded = rec.backend(fam, legacy);
      bool done = matches_record(legacy ? *vl : *vn, recorded) && !(recorded == nullptr && rec.has_rules_of(fam, binary));
      if (!legacy && nft_removed.count(fam)) {
        // nf_tables: the chains, the jumps to them and the tables meshcap
        // created went in one transaction, no restore.
        res.backends.push_back(std::string(family_name(fam)) + " " + recorded->binary);
        continue;
      }
      if (done && recorded != nullptr) {
        // Exactly what meshcap applied is there: remove that, no -save.
        done = remove_recorded(session, fast_step(known_backend(fam, recorded->binary, legacy), recorded, nullptr),
                               binary, res);
      }
      if (!done) remove_saved(fam, binary, read_save(runner_, binary));
      if (recorded != nullptr && !legacy && kernel != nullptr) {
        for (const auto& t : recorded->created) {
          if (kernel->remove_if_empty(fam, t)) spdlog::debug("removed the {} table {} meshcap created", family_name(fam), t);
        }
      }
    }
  }

  // A record says what routing the last apply set up (the same config's);
  // without one, the config says what to look for.
  res.routes_removed = remove_tproxy_routes_of(session, rec, rec.backends.empty() ? &config() : nullptr);
  if (rec.lo_ipv6_added && !(kernel != nullptr && kernel->lo_address6(false))) {
    session.ip({"-6", "addr", "del", "::6/128", "dev", "lo"});
  }

  if (!errors.empty()) throw IptablesError("cleanup", join_errors(errors));
  remove_record(state_path());
  return res;
}

}  // namespace meshcap::iptables
