// What a network namespace's netfilter tables hold, read from the kernel
// without running iptables (nf_tables over netlink, xtables-legacy through
// its getsockopt interface), and the one change made that way: removing an
// nf_tables table meshcap created once it is empty.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "rule_builder.h"
#include "saved_ruleset.h"

namespace meshcap::iptables {

/// One chain as the kernel holds it.
struct ChainView {
  std::string name;
  bool builtin = false;  // a hooked (base) chain: PREROUTING, OUTPUT, ...
  size_t rules = 0;      // rules in it (a legacy policy or chain tail is no rule)
};

/// One table (filter, nat, mangle, raw, security) of one backend and family.
struct TableView {
  std::string name;
  std::vector<ChainView> chains;
  /// Rules outside ISTIO_* chains that jump (or go) to an ISTIO_* chain.
  size_t istio_jumps = 0;

  const ChainView* find(std::string_view chain) const;
};

/// The iptables tables of one backend (nft or legacy) in one family, as
/// `<binary>-save` would list them.
struct TablesView {
  std::vector<TableView> tables;

  const TableView* find(std::string_view table) const;
  std::set<std::string> table_names() const;
  /// As SavedRuleset::holds_rules: a rule or a user-defined chain somewhere.
  bool holds_rules() const;
  /// An ISTIO_* chain exists (a jump to one needs one to exist).
  bool has_istio_state() const;
  /// The ISTIO_* chains, by table.
  std::map<std::string, std::set<std::string>> istio_chains() const;
  /// Rules outside ISTIO_* chains jumping to one, summed over the tables.
  size_t istio_jumps() const;
};

/// The same view computed from `-save` output (for tests and for comparing).
TablesView view_of(const SavedRuleset& saved);

/// Reads the tables of the namespace commands run in. Everything here is
/// best effort: nullopt / false means "could not tell", and the caller then
/// takes the path that runs iptables-save instead.
class KernelTables {
 public:
  virtual ~KernelTables() = default;

  /// The tables of one backend (`legacy` or nf_tables) for `family`.
  virtual std::optional<TablesView> read(Family family, bool legacy) = 0;

  /// Both backends of both families, keyed by (family, legacy).
  virtual std::map<std::pair<Family, bool>, std::optional<TablesView>> read_all();

  /// Deletes nf_tables table `table` of `family` in one transaction if it
  /// holds nothing but base chains without rules (so nothing of anyone else
  /// goes with it); true when it was deleted.
  virtual bool remove_if_empty(Family family, const std::string& table) = 0;

  /// Removes in one nf_tables transaction every ISTIO_* chain of `family`
  /// and every rule outside them that jumps to one, and with them each table
  /// of `drop_if_empty` that then holds nothing. Done only while the tables
  /// hold exactly `chains` (ISTIO_* chains by table) and `jumps` such rules,
  /// and only if nothing changed since they were read (the transaction
  /// carries the ruleset's generation). False: not done, nothing changed.
  virtual bool remove_istio_nft(Family /*family*/, const std::map<std::string, std::set<std::string>>& /*chains*/,
                                size_t /*jumps*/, const std::set<std::string>& /*drop_if_empty*/) {
    return false;
  }
};

/// KernelTables of a network namespace (an fd of /proc/PID/ns/net or
/// /run/netns/NAME; -1: the caller's). Each call runs on a short-lived thread
/// that enters the namespace, so the caller's own namespace never changes.
class NetnsKernelTables : public KernelTables {
 public:
  /// `netns_fd` is borrowed; it must outlive this object.
  explicit NetnsKernelTables(int netns_fd = -1);

  std::optional<TablesView> read(Family family, bool legacy) override;
  /// All four on one thread, through one netlink socket.
  std::map<std::pair<Family, bool>, std::optional<TablesView>> read_all() override;
  bool remove_if_empty(Family family, const std::string& table) override;
  bool remove_istio_nft(Family family, const std::map<std::string, std::set<std::string>>& chains, size_t jumps,
                        const std::set<std::string>& drop_if_empty) override;

 private:
  int netns_fd_;
};

}  // namespace meshcap::iptables
