// A small model of an iptables rule set and its iptables-restore rendering,
// ordered and spelled the way istio-iptables' rule builder does it, so the
// rendered payload is byte-identical to istio's for the same rules.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace meshcap::iptables {

/// Address family of a rule list: iptables (IPv4) or ip6tables (IPv6).
enum class Family { V4, V6 };

/// "ipv4" / "ipv6".
std::string_view family_name(Family family);

/// Placeholder in the arguments of a versioned rule, replaced by the IPv4 or
/// IPv6 value when the rule is added to each family's list.
inline constexpr std::string_view kIpVersionSpecific = "PLACEHOLDER_IP_VERSION_SPECIFIC";

/// True for the chains and targets istio never creates with `-N`
/// (INPUT, OUTPUT, FORWARD, PREROUTING, POSTROUTING, ACCEPT, RETURN, DROP).
bool is_builtin_chain_or_target(std::string_view name);

/// One rule: the table and chain it lives in and its full command arguments,
/// starting with `-A CHAIN` or `-I CHAIN POSITION`.
struct Rule {
  std::string table;
  std::string chain;
  std::vector<std::string> command;

  /// The rule's match and target arguments, without `-A CHAIN` / `-I CHAIN N`.
  std::vector<std::string> spec() const;
  /// True for `-I` rules.
  bool is_insert() const;
  /// The jump target (`-j X` as the last two arguments), or "" when none;
  /// a view into `command`.
  std::string_view trailing_jump() const;
  /// The command arguments joined with single spaces, as in a restore file.
  std::string text() const;
};

/// One `* table` ... `COMMIT` block of an iptables-restore input.
struct TableSection {
  std::string table;
  std::vector<std::string> lines;  // without the "* table" header and COMMIT
};

/// An iptables-restore input, one section per table in the order printed.
struct RestorePayload {
  std::vector<TableSection> tables;

  bool empty() const { return tables.empty(); }
  /// The section for `table`, or nullptr.
  const TableSection* find(std::string_view table) const;
  /// The restore text: "* table\n<lines>\nCOMMIT\n" per section.
  std::string text() const;
};

/// Collects rules for IPv4 and IPv6 in the order they are added. IPv6 rules
/// are dropped unless IPv6 is enabled, as in istio's builder.
class RuleBuilder {
 public:
  explicit RuleBuilder(bool ipv6_enabled);

  /// Appends a rule to `chain` of `table` for both families.
  RuleBuilder& append(const std::string& table, const std::string& chain, std::vector<std::string> spec);
  /// Appends a rule for IPv4 only.
  RuleBuilder& append_v4(const std::string& table, const std::string& chain, std::vector<std::string> spec);
  /// Appends a rule for IPv6 only (no-op when IPv6 is disabled).
  RuleBuilder& append_v6(const std::string& table, const std::string& chain, std::vector<std::string> spec);
  /// Appends a rule for both families, with each kIpVersionSpecific argument
  /// replaced by `v4_value` in the IPv4 rule and `v6_value` in the IPv6 rule.
  RuleBuilder& append_versioned(const std::string& v4_value, const std::string& v6_value, const std::string& table,
                                const std::string& chain, const std::vector<std::string>& spec);
  /// Inserts a rule at 1-based `position` of `chain` for both families.
  RuleBuilder& insert(const std::string& table, const std::string& chain, int position, std::vector<std::string> spec);
  /// Inserts a rule for IPv4 only.
  RuleBuilder& insert_v4(const std::string& table, const std::string& chain, int position,
                         std::vector<std::string> spec);
  /// Inserts a rule for IPv6 only (no-op when IPv6 is disabled).
  RuleBuilder& insert_v6(const std::string& table, const std::string& chain, int position,
                         std::vector<std::string> spec);

  /// Room for `v4` and `v6` more rules (a long -x list), so the lists are
  /// not moved as they grow.
  void reserve(size_t v4, size_t v6);
  bool ipv6_enabled() const { return ipv6_enabled_; }
  /// The rules of one family, in the order they were added.
  const std::vector<Rule>& rules(Family family) const;
  /// The iptables-restore input for one family: tables in name order, each
  /// with `-N` for the non-built-in chains it uses (chains holding rules
  /// first, then chains only jumped to), then the rules, then COMMIT.
  RestorePayload restore_payload(Family family) const;

 private:
  std::vector<Rule>& list(Family family);

  bool ipv6_enabled_;
  std::vector<Rule> v4_;
  std::vector<Rule> v6_;
};

/// Renders a rule list as istio's builder does (see RuleBuilder::restore_payload).
RestorePayload render_restore_payload(const std::vector<Rule>& rules);

}  // namespace meshcap::iptables
