// Reading iptables-save output: tables, chains and rule lines, as the
// applier needs them to find what meshcap owns.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace meshcap::iptables {

/// One chain of an iptables-save dump.
struct SavedChain {
  std::string name;
  bool builtin = false;             // declared with a policy (":OUTPUT ACCEPT [0:0]")
  std::vector<std::string> rules;   // "-A NAME ..." lines, in order
};

/// One table of an iptables-save dump.
struct SavedTable {
  std::string name;
  std::vector<SavedChain> chains;  // in declaration order

  const SavedChain* find(std::string_view chain) const;
};

/// A parsed iptables-save dump.
struct SavedRuleset {
  std::vector<SavedTable> tables;

  const SavedTable* find(std::string_view table) const;
  /// True when any table holds a rule or a user-defined chain (an empty
  /// table, e.g. one created by a probe, does not count).
  bool holds_rules() const;
  /// True when any ISTIO_* chain exists or any rule jumps to one.
  bool has_istio_state() const;
};

/// Parses iptables-save / ip6tables-save output (comments ignored).
SavedRuleset parse_iptables_save(std::string_view text);

/// Packets counted by the rules of `iptables-save -c` output (lines
/// "[packets:bytes] -A CHAIN ...") whose rule text, after the counters,
/// satisfies `match`; nullopt when no rule matched.
std::optional<uint64_t> rule_packets(std::string_view save_with_counters,
                                     const std::function<bool(std::string_view rule)>& match);

/// Splits a rule line into words as iptables-restore does (double quotes
/// group words; the quotes are kept out of the word).
std::vector<std::string> split_rule_words(std::string_view line);

/// The `-j` / `-g` target of a rule line ("" when none).
std::string rule_target(std::string_view line);

/// The rule's arguments after "-A CHAIN " (the text a `-D`/`-I` needs).
std::string rule_spec_text(std::string_view line, std::string_view chain);

/// True for ISTIO_* chain names.
bool is_istio_chain(std::string_view chain);

/// Which parts of a pod's traffic the rules of a dump really send to the
/// proxy (followed from the built-in chains, not read from names alone):
/// outbound when nat OUTPUT reaches a REDIRECT rule through ISTIO_OUTPUT;
/// inbound when nat PREROUTING reaches a REDIRECT (or mangle PREROUTING a
/// TPROXY) rule through ISTIO_INBOUND.
struct Coverage {
  bool outbound = false;
  bool inbound = false;
};
Coverage capture_coverage(const SavedRuleset& rules);

}  // namespace meshcap::iptables
