#include "backend.h"

#include <spdlog/spdlog.h>

#include <map>
#include <regex>
#include <sstream>

#include "iptables_error.h"

namespace meshcap::iptables {

namespace {

// The probe rule istio uses: protocol 255 is IANA-reserved, so it never matches.
const std::vector<std::string> kProbeRule = {"-t", "nat", "-A", "INPUT", "-p", "255", "-j", "RETURN"};

std::vector<int> version_parts(const std::string& v) {
  std::vector<int> parts;
  std::stringstream s(v);
  std::string p;
  while (std::getline(s, p, '.')) parts.push_back(std::stoi(p));
  return parts;
}

// legacy iptables takes the xtables lock (and -w) since 1.6.2.
bool at_least_1_6_2(const std::string& version) {
  const auto parts = version_parts(version);
  const std::vector<int> min = {1, 6, 2};
  for (size_t i = 0; i < min.size(); ++i) {
    const int have = i < parts.size() ? parts[i] : 0;
    if (have != min[i]) return have > min[i];
  }
  return true;
}

std::string first_line(const std::string& s) {
  const auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

}  // namespace

std::vector<std::string> Backend::lock_args() const {
  if (legacy && at_least_1_6_2(version)) return {"--wait=30"};
  return {};
}

BinaryNames binary_names(Family family) {
  if (family == Family::V4) return {"iptables-nft", "iptables-legacy", "iptables"};
  return {"ip6tables-nft", "ip6tables-legacy", "ip6tables"};
}

std::optional<std::string> read_save(CommandRunner& runner, const std::string& binary) {
  const CommandResult r = runner.run({binary + "-save"});
  if (!r.ok()) return std::nullopt;
  return r.out;
}

void read_version(CommandRunner& runner, Backend& b) {
  // iptables-save exits 0 on an unknown option, so stderr is checked as well.
  const CommandResult ver = runner.run({b.save_binary, "--version"});
  static const std::regex kVersion(R"(v([0-9]+(\.[0-9]+)+))");
  std::smatch m;
  if (ver.ok() && ver.err.find("unrecognized option") == std::string::npos &&
      std::regex_search(ver.out, m, kVersion)) {
    b.version = m[1];
    b.legacy = ver.out.find("nf_tables") == std::string::npos;
  } else {
    // Very old legacy -save binaries know no --version.
    b.version = "0.0.0";
    b.legacy = true;
  }
}

std::optional<Backend> probe_backend(CommandRunner& runner, Family family, const std::string& binary,
                                     std::string* why, const std::string* save_output) {
  auto fail = [&](const std::string& reason) -> std::optional<Backend> {
    if (why) *why = reason;
    spdlog::debug("iptables binary {} not usable: {}", binary, reason);
    return std::nullopt;
  };
  Backend b;
  b.family = family;
  b.binary = binary;
  b.save_binary = binary + "-save";
  b.restore_binary = binary + "-restore";

  if (save_output) {
    b.held_rules = parse_iptables_save(*save_output).holds_rules();
  } else {
    const CommandResult dump = runner.run({b.save_binary});
    if (!dump.ok()) return fail(b.save_binary + " failed (exit " + std::to_string(dump.exit_code) + "): " +
                                first_line(dump.err));
    b.held_rules = parse_iptables_save(dump.out).holds_rules();
  }

  read_version(runner, b);

  std::vector<std::string> add = {binary};
  add.insert(add.end(), kProbeRule.begin(), kProbeRule.end());
  const auto lock = b.lock_args();
  add.insert(add.end(), lock.begin(), lock.end());
  const CommandResult added = runner.run(add);
  if (!added.ok() || added.err.find("does not exist") != std::string::npos) {
    return fail("no kernel support (exit " + std::to_string(added.exit_code) + "): " + first_line(added.err));
  }
  std::vector<std::string> del = add;
  del[3] = "-D";
  runner.run(del);
  return b;
}

Backend detect_backend(CommandRunner& runner, Family family, const std::string& force) {
  const std::string step = "detect-backend " + std::string(family_name(family));
  const BinaryNames names = binary_names(family);
  std::string why;

  if (!force.empty()) {
    if (force != "nft" && force != "legacy") {
      throw IptablesError(step, "unsupported --force-iptables-binary '" + force + "' (expected nft or legacy)");
    }
    const std::string& binary = force == "nft" ? names.nft : names.legacy;
    if (auto b = probe_backend(runner, family, binary, &why)) return *b;
    throw IptablesError(step, "forced iptables binary " + binary + " is not usable: " + why);
  }

  // A backend that already holds rules in this namespace wins, so meshcap's
  // rules sit beside the existing ones (legacy first, as istio checks it first).
  // The dumps read here serve the probes below too: a probe writes only to
  // its own backend, so a dump stays current until its backend is probed.
  std::map<std::string, std::string> dumps;
  for (const std::string* binary : {&names.legacy, &names.nft}) {
    const auto dump = read_save(runner, *binary);
    if (!dump) continue;
    if (!parse_iptables_save(*dump).holds_rules()) {
      dumps[*binary] = *dump;
      continue;
    }
    if (auto b = probe_backend(runner, family, *binary, &why, &*dump)) {
      spdlog::debug("using {}: it already holds rules", *binary);
      return *b;
    }
  }
  std::string reasons;
  for (const std::string* binary : {&names.nft, &names.legacy, &names.plain}) {
    const auto dump = dumps.find(*binary);
    if (auto b = probe_backend(runner, family, *binary, &why, dump == dumps.end() ? nullptr : &dump->second)) return *b;
    reasons += (reasons.empty() ? "" : "; ") + *binary + ": " + why;
  }
  throw IptablesError(step, "no usable iptables binary (" + reasons + ")");
}

}  // namespace meshcap::iptables
