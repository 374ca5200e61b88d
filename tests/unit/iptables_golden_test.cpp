// The 18 configurations of shared/istio-golden/CASES.md: meshcap's flags
// parsed by the shared parser, rendered, and compared byte for byte with
// istio-iptables' reference output (golden minus the *-save lines).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "istio_flags.h"
#include "istio_rules.h"

namespace {

using meshcap::iptables::render_istio_rules;

struct GoldenCase {
  std::string name;
  std::vector<std::string> args;  // after `meshcap init --mode iptables --dry-run`
  std::map<std::string, std::string> env;
};

std::vector<GoldenCase> golden_cases() {
  return {
      {"empty", {}, {}},
      {"ipnets", {"-i", "10.0.0.0/8"}, {}},
      {"inbound-ports-include", {"-b", "32000,31000"}, {}},
      {"inbound-ports-wildcard", {"-b", "*"}, {}},
      {"inbound-ports-tproxy", {"-b", "32000,31000", "-m", "TPROXY"}, {}},
      {"tproxy",
       {"-m", "TPROXY", "-b", "*", "-x", "1.1.0.0/16", "-i", "9.9.0.0/16", "--redirect-dns", "--dns-servers",
        "127.0.0.53", "-u", "1337", "-g", "1337", "-c", "not-istio-nic", "--dual-stack"},
       {}},
      {"outbound-ports-include", {"-q", "32000,31000"}, {}},
      {"kube-virt-interfaces", {"-k", "eth1,eth2", "-i", "*"}, {}},
      {"basic-exclude-nic", {"-c", "not-istio-nic"}, {}},
      {"dns-uid-gid",
       {"--redirect-dns", "--dns-servers", "127.0.0.53,::127.0.0.53", "-u", "3,4", "-g", "1,2", "--dual-stack"},
       {}},
      {"ipv6-uid-gid",
       {"-b", "4000,5000", "-d", "6000,7000", "-k", "eth0,eth1", "-u", "3,4", "-g", "1,2", "-x", "2001:db8::/32", "-i",
        "2001:db8::/32", "--dual-stack"},
       {}},
      {"ipv6-inbound-ports", {"-b", "4000,5000", "--dual-stack"}, {}},
      {"ipv6-empty-inbound-ports", {"-b", "", "--dual-stack"}, {}},
      {"ipv6-virt-interfaces", {"-b", "4000,5000", "-k", "eth0,eth1", "--dual-stack"}, {}},
      {"outbound-owner-groups", {}, {{"ISTIO_OUTBOUND_OWNER_GROUPS", "java,202"}}},
      {"outbound-owner-groups-exclude", {}, {{"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "888,ftp"}}},
      {"drop-invalid", {"--drop-invalid"}, {}},
      {"host-ipv4-loopback-cidr", {}, {{"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/8"}}},
  };
}

std::string golden_dir() {
  if (const char* dir = std::getenv("MESHCAP_GOLDEN_DIR"); dir && *dir) return dir;
  return MESHCAP_GOLDEN_DIR;
}

// The golden file with the `iptables-save` / `ip6tables-save` lines removed,
// each remaining line newline-terminated (the payload iptables-restore reads).
std::string expected_payload(const std::string& name) {
  const std::string path = golden_dir() + "/" + name + ".golden";
  std::ifstream in(path);
  if (!in) {
    ADD_FAILURE() << "cannot read " << path << " (set MESHCAP_GOLDEN_DIR to the istio-golden folder)";
    return "";
  }
  std::string out, line;
  while (std::getline(in, line)) {
    if (line == "iptables-save" || line == "ip6tables-save") continue;
    out += line + "\n";
  }
  return out;
}

meshcap::EnvLookup fake_env(const std::map<std::string, std::string>& vars) {
  return [vars](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

class IstioGolden : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(IstioGolden, DryRunIsByteIdentical) {
  const GoldenCase& c = GetParam();
  const meshcap::CaptureConfig cfg = meshcap::parse_capture_args(c.args, fake_env(c.env));
  const auto payloads = render_istio_rules(cfg, cfg.dual_stack);
  const std::string expected = expected_payload(c.name);
  ASSERT_FALSE(expected.empty());
  EXPECT_EQ(payloads.dry_run_output(), expected);
  // The IPv6 payload exists exactly when the golden holds a second payload.
  EXPECT_EQ(payloads.ipv6.empty(), !cfg.dual_stack);
}

INSTANTIATE_TEST_SUITE_P(CasesMd, IstioGolden, ::testing::ValuesIn(golden_cases()),
                         [](const ::testing::TestParamInfo<GoldenCase>& info) {
                           std::string n = info.param.name;
                           for (auto& ch : n) {
                             if (ch == '-') ch = '_';
                           }
                           return n;
                         });

// Every golden file in the folder is covered by a case above.
TEST(IstioGoldenFiles, EveryCaseHasAGoldenAndViceVersa) {
  std::set<std::string> names;
  for (const auto& c : golden_cases()) names.insert(c.name);
  EXPECT_EQ(names.size(), 18u);
  std::set<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(golden_dir())) {
    if (entry.path().extension() == ".golden") files.insert(entry.path().stem().string());
  }
  EXPECT_EQ(files, names);
}

}  // namespace
