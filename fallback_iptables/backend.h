// Which iptables binaries to use (nft or legacy), chosen as istio-iptables
// chooses them, and the commands that read and restore rules with them.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "command_runner.h"
#include "rule_builder.h"
#include "saved_ruleset.h"

namespace meshcap::iptables {

/// One usable iptables binary set for one family.
struct Backend {
  Family family = Family::V4;
  std::string binary;          // iptables-nft, ip6tables-legacy, iptables, ...
  std::string save_binary;     // binary + "-save"
  std::string restore_binary;  // binary + "-restore"
  bool legacy = false;         // false: nf_tables
  std::string version;         // "1.8.9"; "0.0.0" when unknown; "" when not asked (nft, fast path)
  bool held_rules = false;     // rules existed when it was detected

  /// "nft" or "legacy".
  std::string kind() const { return legacy ? "legacy" : "nft"; }
  /// `--wait=30` for legacy >= 1.6.2 (xtables lock), else nothing; added to
  /// every writing command, as istio does.
  std::vector<std::string> lock_args() const;
};

/// The binary names of a family: {nft, legacy, plain}.
struct BinaryNames {
  std::string nft, legacy, plain;
};
BinaryNames binary_names(Family family);

/// Reads `<binary>-save` output through `runner`; nullopt when the binary is
/// missing or fails.
std::optional<std::string> read_save(CommandRunner& runner, const std::string& binary);

/// Sets `b.version` and `b.legacy` from `<save_binary> --version` (one command).
void read_version(CommandRunner& runner, Backend& b);

/// Checks that `binary` works here: its -save runs, its version is known and
/// a no-op rule can be added to (and removed from) nat/INPUT, as istio checks.
/// nullopt when it cannot be used; `why` then says why. `save_output`, when
/// given, is what `<binary>-save` printed just before (nothing ran on this
/// backend since): it stands for running -save again.
std::optional<Backend> probe_backend(CommandRunner& runner, Family family, const std::string& binary,
                                     std::string* why = nullptr, const std::string* save_output = nullptr);

/// Chooses the backend for `family` like istio-iptables: `force` ("nft" or
/// "legacy") wins; otherwise a backend that already holds rules (legacy
/// checked first), then nft, then legacy, then the plain `iptables` binary.
/// Throws IptablesError (step "detect-backend ipv4|ipv6") when none works.
Backend detect_backend(CommandRunner& runner, Family family, const std::string& force = "");

}  // namespace meshcap::iptables
