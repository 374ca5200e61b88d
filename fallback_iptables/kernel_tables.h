// What a network namespace's netfilter tables hold, read from the kernel
// without running iptables (nf_tables over netlink, xtables-legacy through
// its getsockopt interface), and the one change made that way: removing an
// nf_tables table meshcap created once it is empty.
#pragma once

#include <cstdint>
#include <functional>
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

/// What iptables-restore made of one payload in one table, kept so that the
/// same payload on a table in the same state is applied again by the kernel
/// calls alone (no process), with the very bytes iptables wrote. Legacy: the
/// table's blob before and after (counters zeroed) and the after blob's
/// header. nf_tables: the table was absent before; the attributes that
/// create the table, its chains and its rules, in order.
struct TableImage {
  std::string table;
  std::string before, after;
  uint32_t valid_hooks = 0, num_entries = 0;  // the after blob's header
  std::vector<uint32_t> hook_entry, underflow;
  uint32_t before_entries = 0;  // the before blob's header (same valid_hooks)
  std::vector<uint32_t> before_hook_entry, before_underflow;
  std::string table_attrs;
  std::vector<std::string> chains, rules;

  bool operator==(const TableImage&) const = default;
};

/// One family's part of KernelTables::remove_istio_nft.
struct IstioNftRemoval {
  Family family = Family::V4;
  std::map<std::string, std::set<std::string>> chains;  // ISTIO_* chains by table
  size_t jumps = 0;                                     // rules outside them jumping to one
  std::set<std::string> drop_if_empty;                  // tables meshcap created
  bool done = false;
};

/// Reads the tables of the namespace commands run in. Everything here is
/// best effort: nullopt / false means "could not tell", and the caller then
/// takes the path that runs iptables-save instead.
class KernelTables {
 public:
  virtual ~KernelTables() = default;

  /// The tables of one backend (`legacy` or nf_tables) for `family`.
  virtual std::optional<TablesView> read(Family family, bool legacy) = 0;

  /// Both backends of both families, keyed by (family, legacy). Without
  /// `istio_rules` the nf_tables views may leave the rules of ISTIO_* chains
  /// unread and uncounted (the chains and the jumps to them are there).
  virtual std::map<std::pair<Family, bool>, std::optional<TablesView>> read_all(bool istio_rules = true);

  /// Deletes nf_tables table `table` of `family` in one transaction if it
  /// holds nothing but base chains without rules (so nothing of anyone else
  /// goes with it); true when it was deleted.
  virtual bool remove_if_empty(Family family, const std::string& table) = 0;

  /// Before iptables-restore changes `tables`: their state, if it is one a
  /// replay can start from (legacy: only policies; nf_tables: absent).
  /// nullopt: no image can be taken.
  virtual std::optional<std::vector<TableImage>> image_before(Family /*family*/, bool /*legacy*/,
                                                              const std::vector<std::string>& /*tables*/) {
    return std::nullopt;
  }
  /// After it: completes `images` with what the tables hold now; false when
  /// they cannot be replayed.
  virtual bool image_after(Family /*family*/, bool /*legacy*/, std::vector<TableImage>& /*images*/) { return false; }
  /// Puts `images`' after state in place if every table is in its before
  /// state (legacy: under the xtables lock; nf_tables: in one transaction);
  /// false, with nothing changed, when not.
  virtual bool replay(Family /*family*/, bool /*legacy*/, const std::vector<TableImage>& /*images*/) { return false; }
  /// The reverse (legacy only): puts the before state back if every table
  /// holds exactly the after state and the tables' view, read in the same
  /// pass, satisfies `check` (each table read once, under the xtables lock
  /// that is held until the replay is done, so the view is what is
  /// replaced); false, with nothing changed, when not.
  virtual bool replay_back_if(Family /*family*/, bool /*legacy*/, const std::vector<TableImage>& /*images*/,
                              const std::function<bool(const TablesView&)>& /*check*/) {
    return false;
  }

  /// Adds (or deletes) istio's ::6/128 on lo over rtnetlink, as
  /// `ip -6 addr add|del ::6/128 dev lo` does: 0, or the kernel's errno
  /// (EEXIST: already there); nullopt when it cannot ask (run `ip` then).
  virtual std::optional<int> lo_address6(bool /*add*/) { return std::nullopt; }

  /// Removes in one nf_tables transaction, for each family of `removals`,
  /// every ISTIO_* chain and every rule outside them that jumps to one, and
  /// with them each table of `drop_if_empty` that then holds nothing. Done
  /// only while the tables hold exactly `chains` and `jumps` such rules, and
  /// only if nothing changed since they were read (the transaction carries
  /// the ruleset's generation); `done` says which families went (all or none).
  virtual void remove_istio_nft(std::vector<IstioNftRemoval>& /*removals*/) {}
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
  std::map<std::pair<Family, bool>, std::optional<TablesView>> read_all(bool istio_rules = true) override;
  bool remove_if_empty(Family family, const std::string& table) override;
  void remove_istio_nft(std::vector<IstioNftRemoval>& removals) override;
  std::optional<std::vector<TableImage>> image_before(Family family, bool legacy,
                                                      const std::vector<std::string>& tables) override;
  bool image_after(Family family, bool legacy, std::vector<TableImage>& images) override;
  bool replay(Family family, bool legacy, const std::vector<TableImage>& images) override;
  bool replay_back_if(Family family, bool legacy, const std::vector<TableImage>& images,
                      const std::function<bool(const TablesView&)>& check) override;
  std::optional<int> lo_address6(bool add) override;

 private:
  int netns_fd_;
};

}  // namespace meshcap::iptables
