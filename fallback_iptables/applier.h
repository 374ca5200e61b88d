// Applying and removing istio's capture rules in a network namespace:
// one iptables-restore per family, idempotent, all-or-nothing.
#pragma once

#include <map>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "backend.h"
#include "capture_config.h"
#include "command_runner.h"
#include "istio_rules.h"
#include "kernel_tables.h"

namespace meshcap::iptables {

/// Where the applier keeps what it added to built-in chains, so a later apply
/// or cleanup removes exactly that.
struct ApplierOptions {
  std::string state_dir = "/run/meshcap/iptables";
  /// Apply a payload by replaying what iptables-restore made of it in an
  /// earlier namespace whose tables were in the same state (table_images.h).
  bool images = true;
};

/// What apply() did.
struct ApplyResult {
  bool applied = false;               // false when --skip-rule-apply
  Backend ipv4;                       // backend used for IPv4
  std::optional<Backend> ipv6;        // backend used for IPv6, when enabled
  RulePayloads rules;                 // istio's payloads (the dry-run output)
  std::vector<std::string> restored;  // the restore inputs actually run, in order
  std::vector<std::string> replayed;  // the restore inputs applied from a kept image instead
  bool tproxy_routes = false;         // TPROXY policy routing set up
  /// What each backend's `-save` printed right after the apply (save binary
  /// -> output), only where the apply ran -save anyway (a namespace whose
  /// state it could not read from the kernel or that differed from its
  /// record); empty on the fast path. Deprecated: use drift() instead of a
  /// snapshot.
  std::map<std::string, std::string> saved;
};

/// What cleanup() removed.
struct CleanupResult {
  std::vector<std::string> backends;  // "ipv4 iptables-nft", ... that held meshcap state
  std::vector<std::string> restored;  // the restore inputs run
  bool routes_removed = false;        // a TPROXY ip rule or route was deleted
};

/// Applies and removes capture through an injected CommandRunner, which
/// decides where commands run (a ProcessRunner bound to the target netns).
class IptablesApplier {
 public:
  explicit IptablesApplier(CommandRunner& runner, ApplierOptions options = {});

  /// Replaces any istio/meshcap capture in the namespace with the rules for
  /// `cfg`, IPv6 too when `ipv6_enabled`. Per family one
  /// `iptables-restore --noflush` runs that, table by table atomically,
  /// removes the previous ISTIO_* chains and meshcap's rules in built-in
  /// chains and adds the new ones, so capture never lapses. Leftovers in the
  /// other backend (or in IPv6 when disabled) are removed too. Then TPROXY
  /// policy routing (`ip rule` fwmark -> table, local default route) is set up
  /// as istio does. If any step fails, the steps already done are undone and
  /// IptablesError (naming the step) is thrown.
  ApplyResult apply(const CaptureConfig& cfg, bool ipv6_enabled);

  /// Removes every ISTIO_* chain, every rule meshcap added to built-in chains
  /// (in both backends and both families) and the TPROXY policy routing of
  /// `cfg` and of the last apply. Foreign rules are kept. Throws IptablesError
  /// after trying every step if one failed.
  CleanupResult cleanup(const CaptureConfig& cfg);
  /// The same, with the configuration made only where it is needed: where
  /// no record says what the last apply did (its routing, its rules), or
  /// where `-save` must be matched against istio's rules. A pod's flags
  /// can hold 10,000 CIDRs.
  CleanupResult cleanup(const std::function<const CaptureConfig&()>& config);

  /// How the namespace's tables differ from what the last apply recorded
  /// (ISTIO_* chains, their rule counts, jumps into them, per backend and
  /// family), read from the kernel without running a command: empty when
  /// they match. nullopt when nothing is recorded or the tables cannot be read
  /// here (the caller then compares iptables-save output itself).
  std::optional<std::vector<std::string>> drift();

  /// The file that records what the last apply added here.
  std::string state_path() const;
  /// Removes the record kept for context `context_id` (its namespace is
  /// gone, and its rules with it); true when there was one.
  static bool forget(const std::string& state_dir, const std::string& context_id);
  /// The contexts with a record in `state_dir`.
  static std::vector<std::string> recorded_contexts(const std::string& state_dir);

 private:
  class ApplyRun;  // the steps of one apply_with call (applier.cpp)

  ApplyResult apply_with(const CaptureConfig& cfg, bool ipv6_enabled, bool fast);
  std::optional<Backend> quick_backend(Family family, const std::string& force, const TablesView& nft,
                                       const TablesView& legacy);
  Backend known_backend(Family family, const std::string& binary, bool legacy);

  CommandRunner& runner_;
  ApplierOptions options_;
};

}  // namespace meshcap::iptables
