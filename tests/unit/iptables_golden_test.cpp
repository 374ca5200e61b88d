// The configurations of tests/golden/istio/CASES.md (istio's own goldens,
// carried in the repository with their NOTICE): each case's arguments are
// read from that table, parsed by the shared parser, rendered, and compared
// byte for byte with istio-iptables' reference output (golden minus the
// *-save lines). The cases come from the files: a golden added to the
// folder with a row in CASES.md is tested without touching this file.
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

// gtest prints this instead of the object's bytes.
void PrintTo(const GoldenCase& c, std::ostream* os) { *os << c.name; }

std::string golden_dir() {
  if (const char* dir = std::getenv("MESHCAP_GOLDEN_DIR"); dir && *dir) return dir;
  return MESHCAP_GOLDEN_DIR;
}

// Words of a shell-like argument text: '...' quotes (possibly empty).
std::vector<std::string> shell_words(const std::string& text) {
  std::vector<std::string> out;
  std::string cur;
  bool in_word = false, quoted = false;
  for (char ch : text) {
    if (quoted) {
      if (ch == '\'') quoted = false;
      else cur += ch;
    } else if (ch == '\'') {
      quoted = in_word = true;
    } else if (ch == ' ') {
      if (in_word) out.push_back(cur);
      cur.clear();
      in_word = false;
    } else {
      cur += ch;
      in_word = true;
    }
  }
  if (in_word) out.push_back(cur);
  return out;
}

// The rows of CASES.md: "| name | `args` |", "| name | env `K=V` |" or
// "| name | (none) |".
std::vector<GoldenCase> golden_cases() {
  std::vector<GoldenCase> out;
  std::ifstream in(golden_dir() + "/CASES.md");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("| ", 0) != 0 || line.find("| ---") == 0 || line.find("| case |") == 0) continue;
    const auto bar = line.find(" | ", 2);
    if (bar == std::string::npos) continue;
    GoldenCase c;
    c.name = line.substr(2, bar - 2);
    std::string rest = line.substr(bar + 3);
    rest = rest.substr(0, rest.rfind(" |"));
    const auto open = rest.find('`'), close = rest.rfind('`');
    const std::string quoted = open == std::string::npos ? "" : rest.substr(open + 1, close - open - 1);
    if (rest.rfind("env ", 0) == 0) {
      const auto eq = quoted.find('=');
      c.env[quoted.substr(0, eq)] = quoted.substr(eq + 1);
    } else {
      c.args = shell_words(quoted);
    }
    out.push_back(c);
  }
  return out;
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
  EXPECT_FALSE(names.empty());
  std::set<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(golden_dir())) {
    if (entry.path().extension() == ".golden") files.insert(entry.path().stem().string());
  }
  EXPECT_EQ(files, names);
}

}  // namespace
