// Applying istio's rules for real, with both iptables backends, inside
// throwaway network namespaces (`ip netns add`, deleted on every path):
// rules read back with iptables-save, re-apply is idempotent, a new config
// replaces the old one, cleanup leaves only foreign rules, and a failed IPv6
// restore undoes IPv4. Root only; skipped otherwise.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "applier.h"
#include "backend.h"
#include "command_runner.h"
#include "iptables_error.h"
#include "istio_flags.h"
#include "istio_rules.h"
#include "kernel_tables.h"
#include "saved_ruleset.h"

namespace {

using namespace meshcap::iptables;
namespace fs = std::filesystem;

meshcap::CaptureConfig parse(std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
  bool has_uid = std::find(args.begin(), args.end(), "-u") != args.end();
  if (!has_uid) args.insert(args.begin(), {"-u", "1337"});
  return meshcap::parse_capture_args(args, [env](const std::string& name) -> std::optional<std::string> {
    auto it = env.find(name);
    if (it == env.end()) return std::nullopt;
    return it->second;
  });
}

// A network namespace that exists for the lifetime of the object.
class Netns {
 public:
  explicit Netns(const std::string& tag) {
    static std::atomic<int> counter{0};
    name_ = "mc-ipt-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    ProcessRunner host;
    // `timeout`: never hang a test run on someone else's /run/netns lock.
    const auto r = host.run({"timeout", "60", "ip", "netns", "add", name_});
    if (!r.ok()) throw IptablesError("netns", "ip netns add " + name_ + ": " + r.err, r.exit_code);
    created_ = true;
    runner_ = std::make_unique<ProcessRunner>(path());
    run({"ip", "link", "set", "lo", "up"});
  }
  ~Netns() {
    runner_.reset();
    if (created_) ProcessRunner().run({"ip", "netns", "del", name_});
  }
  Netns(const Netns&) = delete;
  Netns& operator=(const Netns&) = delete;

  ProcessRunner& runner() { return *runner_; }
  std::string path() const { return "/var/run/netns/" + name_; }
  CommandResult run(const std::vector<std::string>& argv, const std::string& in = "") { return runner_->run(argv, in); }

 private:
  std::string name_;
  bool created_ = false;
  std::unique_ptr<ProcessRunner> runner_;
};

// Forwards to a real runner but fails the restores of one binary.
class FailingRunner : public CommandRunner {
 public:
  FailingRunner(CommandRunner& inner, std::string fail_binary) : inner_(inner), fail_(std::move(fail_binary)) {}
  CommandResult run(const std::vector<std::string>& argv, const std::string& in) override {
    if (argv[0] == fail_) return {1, "", fail_ + ": injected failure\n"};
    return inner_.run(argv, in);
  }
  std::string context_id() const override { return inner_.context_id(); }

 private:
  CommandRunner& inner_;
  std::string fail_;
};

// Forwards everything (the kernel's tables too) to a real runner, counts the
// commands, and can fail the restores of one binary.
class CountingRunner : public CommandRunner {
 public:
  explicit CountingRunner(CommandRunner& inner, std::string fail_binary = "")
      : inner_(inner), fail_(std::move(fail_binary)) {}
  CommandResult run(const std::vector<std::string>& argv, const std::string& in) override {
    lines_.push_back(RecordingRunner::Call{argv, ""}.line());
    if (!fail_.empty() && argv[0] == fail_) return {1, "", fail_ + ": injected failure\n"};
    return inner_.run(argv, in);
  }
  std::string context_id() const override { return inner_.context_id(); }
  KernelTables* kernel_tables() override { return inner_.kernel_tables(); }

  // The commands whose first word ends with `suffix` ("-restore", "-save"), or all.
  std::vector<std::string> commands(const std::string& suffix = "") const {
    std::vector<std::string> out;
    for (const auto& l : lines_) {
      const std::string first = l.substr(0, l.find(' '));
      if (suffix.empty() || (first.size() >= suffix.size() && first.compare(first.size() - suffix.size(), suffix.size(), suffix) == 0)) {
        out.push_back(l);
      }
    }
    return out;
  }
  void clear() { lines_.clear(); }

 private:
  CommandRunner& inner_;
  std::string fail_;
  std::vector<std::string> lines_;
};

class StateDir {
 public:
  StateDir() {
    std::string tmpl = (fs::temp_directory_path() / "mc-ipt-kernel-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data()) ? tmpl : "";
  }
  ~StateDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The rules of one family as comparable text: tables and chains sorted by
// name, rules in order, counters and comments dropped, and tables that hold
// nothing (only empty built-in chains, e.g. left by a probe) left out.
std::string normalized(Netns& ns, const std::string& binary) {
  const auto r = ns.run({binary + "-save"});
  EXPECT_TRUE(r.ok()) << binary << "-save: " << r.err;
  SavedRuleset s = parse_iptables_save(r.out);
  std::sort(s.tables.begin(), s.tables.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  std::string out;
  for (auto& t : s.tables) {
    if (std::none_of(t.chains.begin(), t.chains.end(), [](const auto& c) { return !c.builtin || !c.rules.empty(); })) {
      continue;
    }
    std::sort(t.chains.begin(), t.chains.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
    out += "*" + t.name + "\n";
    for (const auto& c : t.chains) {
      out += ":" + c.name + (c.builtin ? " builtin\n" : "\n");
      for (const auto& rule : c.rules) out += rule + "\n";
    }
  }
  return out;
}

std::string both_families(Netns& ns, const std::string& kind) {
  return "== ipv4\n" + normalized(ns, "iptables-" + kind) + "== ipv6\n" + normalized(ns, "ip6tables-" + kind);
}

std::string policy_routing(Netns& ns) {
  std::string out;
  for (const char* fam : {"-4", "-6"}) {
    out += ns.run({"ip", fam, "rule", "show"}).out;
    out += ns.run({"ip", fam, "route", "show", "table", "all"}).out;
  }
  out += ns.run({"ip", "-6", "addr", "show", "dev", "lo"}).out;
  return out;
}

int count_lines_with(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t pos = 0; (pos = text.find(needle, pos)) != std::string::npos; ++pos) ++n;
  return n;
}

// Foreign rules a pod may already have, in every table istio uses, one of
// them shaped exactly like istio's exclude-interface rule for eth5.
void add_foreign_rules(Netns& ns, const std::string& kind) {
  for (const std::string& bin : {"iptables-" + kind, "ip6tables-" + kind}) {
    const std::string payload =
        "*nat\n:FOREIGN - [0:0]\n-A FOREIGN -p udp --dport 5353 -j RETURN\n-A OUTPUT -j FOREIGN\n"
        "-A PREROUTING -i eth5 -j RETURN\n-A OUTPUT -p tcp --dport 9999 -j RETURN\nCOMMIT\n"
        "*mangle\n-A OUTPUT -p tcp -o lo -j RETURN\nCOMMIT\n"
        "*raw\n-A PREROUTING -p udp --dport 6000 -j NOTRACK\nCOMMIT\n"
        "*filter\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n";
    const auto r = ns.run({bin + "-restore", "--noflush"}, payload);
    ASSERT_TRUE(r.ok()) << bin << ": " << r.err;
  }
}

// Every rule of `cfg` is present (iptables -C) and every ISTIO_* chain holds
// exactly as many rules as the payload gives it.
void expect_rules_present(Netns& ns, const std::string& kind, const meshcap::CaptureConfig& cfg, bool ipv6) {
  const RuleBuilder rules = build_istio_rules(cfg, ipv6);
  for (Family fam : {Family::V4, Family::V6}) {
    if (fam == Family::V6 && !ipv6) continue;
    const std::string bin = (fam == Family::V4 ? "iptables-" : "ip6tables-") + kind;
    std::map<std::pair<std::string, std::string>, size_t> istio_counts;
    for (const Rule& r : rules.rules(fam)) {
      std::vector<std::string> argv = {bin, "-t", r.table, "-C", r.chain};
      const auto spec = r.spec();
      argv.insert(argv.end(), spec.begin(), spec.end());
      if (kind == "legacy") argv.push_back("--wait=30");
      const auto c = ns.run(argv);
      EXPECT_EQ(c.exit_code, 0) << bin << " -t " << r.table << " missing: " << r.text() << "\n" << c.err;
      if (is_istio_chain(r.chain)) ++istio_counts[{r.table, r.chain}];
    }
    const auto saved = parse_iptables_save(ns.run({bin + "-save"}).out);
    for (const auto& [key, n] : istio_counts) {
      const SavedTable* t = saved.find(key.first);
      const SavedChain* c = t ? t->find(key.second) : nullptr;
      ASSERT_NE(c, nullptr) << bin << " " << key.first << " " << key.second;
      EXPECT_EQ(c->rules.size(), n) << bin << " " << key.first << " " << key.second;
    }
  }
}

// ---------------------------------------------------------------------------

class IptablesApply : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) {
      GTEST_SKIP() << "needs root: creates network namespaces and programs iptables inside them";
    }
    kind_ = GetParam();
    Netns probe("probe");
    for (Family fam : {Family::V4, Family::V6}) {
      const std::string bin = (fam == Family::V4 ? "iptables-" : "ip6tables-") + kind_;
      std::string why;
      if (!probe_backend(probe.runner(), fam, bin, &why)) {
        GTEST_SKIP() << bin << " is not usable on this host: " << why;
      }
    }
  }

  meshcap::CaptureConfig forced(std::vector<std::string> args, std::map<std::string, std::string> env = {}) {
    args.insert(args.end(), {"--force-iptables-binary", kind_});
    return parse(std::move(args), std::move(env));
  }

  std::string kind_;
  StateDir state_;
};

// Configurations covering every rule family istio generates.
std::vector<std::pair<std::vector<std::string>, std::map<std::string, std::string>>> kernel_configs() {
  return {
      {{"-b", "*", "-i", "*"}, {}},
      {{"-m", "TPROXY", "-b", "*", "-x", "1.1.0.0/16", "-i", "9.9.0.0/16", "--redirect-dns", "--dns-servers",
        "127.0.0.53", "-c", "not-istio-nic", "--dual-stack"},
       {}},
      {{"--redirect-dns", "--dns-servers", "127.0.0.53,::127.0.0.53", "-u", "3,4", "-g", "1,2", "--dual-stack"}, {}},
      {{"-b", "4000,5000", "-d", "6000,7000", "-k", "eth0,eth1", "-u", "3,4", "-g", "1,2", "-x", "2001:db8::/32",
        "-i", "2001:db8::/32", "--dual-stack"},
       {}},
      {{"--drop-invalid", "-o", "9000", "-q", "8080", "-k", "veth9", "-i", "10.0.0.0/8", "-b", "32000,31000", "-m",
        "TPROXY"},
       {}},
      {{"--redirect-dns", "--capture-all-dns", "--dual-stack"}, {{"ISTIO_OUTBOUND_OWNER_GROUPS", "1000,2000"}}},
      {{}, {{"ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", "888"}, {"ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", "127.0.0.1/8"}}},
  };
}

TEST_P(IptablesApply, EveryConfigReadsBackAndCleansUp) {
  for (const auto& [args, env] : kernel_configs()) {
    SCOPED_TRACE(::testing::PrintToString(args));
    Netns ns("cfg");
    const auto cfg = forced(args, env);
    IptablesApplier applier(ns.runner(), {state_.path()});
    const ApplyResult res = applier.apply(cfg, cfg.dual_stack);
    EXPECT_EQ(res.ipv4.binary, "iptables-" + kind_);
    EXPECT_EQ(res.ipv4.legacy, kind_ == "legacy");
    expect_rules_present(ns, kind_, cfg, cfg.dual_stack);
    EXPECT_EQ(res.tproxy_routes, needs_tproxy_routes(cfg));
    if (res.tproxy_routes) {
      EXPECT_EQ(count_lines_with(ns.run({"ip", "-4", "rule", "show"}).out, "fwmark 0x539 lookup 133"), 1);
      EXPECT_NE(ns.run({"ip", "-4", "route", "show", "table", "133"}).out.find("local default dev lo"),
                std::string::npos);
    }
    applier.cleanup(cfg);
    const std::string after = both_families(ns, kind_);
    EXPECT_EQ(after.find("ISTIO"), std::string::npos) << after;
    EXPECT_EQ(count_lines_with(ns.run({"ip", "-4", "rule", "show"}).out, "fwmark"), 0);
  }
}

TEST_P(IptablesApply, ApplyingTwiceLeavesOneCopyOfEachRule) {
  Netns ns("twice");
  add_foreign_rules(ns, kind_);
  const auto cfg = forced({"-m", "TPROXY", "-b", "*", "-x", "1.1.0.0/16", "-i", "9.9.0.0/16", "--redirect-dns",
                           "--dns-servers", "127.0.0.53,fd00::53", "-c", "eth5,not-istio-nic", "-k", "veth1",
                           "--dual-stack"});
  IptablesApplier applier(ns.runner(), {state_.path()});
  applier.apply(cfg, true);
  const std::string once = both_families(ns, kind_);
  const std::string routes_once = policy_routing(ns);
  ASSERT_NE(once.find("-A OUTPUT -j ISTIO_OUTPUT"), std::string::npos) << once;
  EXPECT_EQ(count_lines_with(once, "-A OUTPUT -j ISTIO_OUTPUT\n"), 2);  // one per family

  applier.apply(cfg, true);
  EXPECT_EQ(both_families(ns, kind_), once);
  EXPECT_EQ(policy_routing(ns), routes_once);
  expect_rules_present(ns, kind_, cfg, true);

  // Without the record of what was added, rules are matched by content.
  fs::remove(applier.state_path());
  applier.apply(cfg, true);
  EXPECT_EQ(both_families(ns, kind_), once);
  EXPECT_EQ(policy_routing(ns), routes_once);
}

TEST_P(IptablesApply, ApplyingAnotherConfigReplacesTheFirst) {
  const auto first = forced({"-m", "TPROXY", "-b", "*", "--redirect-dns", "--dns-servers", "127.0.0.53", "-c",
                             "eth3", "--drop-invalid", "--dual-stack"});
  const auto second = forced({"-b", "80,443", "-i", "10.0.0.0/8", "-k", "veth2", "--dual-stack"});

  Netns replaced("replaced");
  add_foreign_rules(replaced, kind_);
  IptablesApplier a(replaced.runner(), {state_.path()});
  a.apply(first, true);
  a.apply(second, true);

  Netns fresh("fresh");
  add_foreign_rules(fresh, kind_);
  StateDir other_state;
  IptablesApplier b(fresh.runner(), {other_state.path()});
  b.apply(second, true);

  EXPECT_EQ(both_families(replaced, kind_), both_families(fresh, kind_));
  EXPECT_EQ(count_lines_with(policy_routing(replaced), "fwmark"), 0);
  expect_rules_present(replaced, kind_, second, true);
}

TEST_P(IptablesApply, CleanupLeavesOnlyForeignRules) {
  Netns ns("cleanup");
  add_foreign_rules(ns, kind_);
  // istio adds ::6 to lo; here it already exists, so cleanup must keep it.
  ASSERT_TRUE(ns.run({"ip", "-6", "addr", "add", "::6/128", "dev", "lo"}).ok());
  const std::string before = both_families(ns, kind_);
  const std::string routes_before = policy_routing(ns);

  const auto cfg = forced({"-m", "TPROXY", "-b", "*", "-c", "eth5", "--redirect-dns", "--capture-all-dns",
                           "--drop-invalid", "-k", "veth1", "-i", "*", "--dual-stack"});
  IptablesApplier applier(ns.runner(), {state_.path()});
  applier.apply(cfg, true);
  ASSERT_NE(both_families(ns, kind_), before);
  ASSERT_NE(policy_routing(ns), routes_before);

  const CleanupResult res = applier.cleanup(cfg);
  EXPECT_EQ(res.backends.size(), 2u);
  EXPECT_TRUE(res.routes_removed);
  EXPECT_EQ(both_families(ns, kind_), before);
  EXPECT_EQ(policy_routing(ns), routes_before);
  // The look-alike foreign rule survived; a second cleanup changes nothing.
  EXPECT_EQ(count_lines_with(before, "-A PREROUTING -i eth5 -j RETURN\n"), 2);
  applier.cleanup(cfg);
  EXPECT_EQ(both_families(ns, kind_), before);
}

TEST_P(IptablesApply, FailedIpv6RestoreUndoesIpv4) {
  Netns ns("rollback");
  add_foreign_rules(ns, kind_);
  IptablesApplier good(ns.runner(), {state_.path()});
  good.apply(forced({"-b", "*", "-c", "eth7", "--dual-stack"}), true);
  const std::string previous = both_families(ns, kind_);

  FailingRunner failing(ns.runner(), "ip6tables-" + kind_ + "-restore");
  IptablesApplier bad(failing, {state_.path()});
  try {
    bad.apply(forced({"-m", "TPROXY", "-b", "80", "-i", "*", "--dual-stack"}), true);
    FAIL() << "expected IptablesError";
  } catch (const IptablesError& e) {
    EXPECT_EQ(e.step(), "restore ipv6 ip6tables-" + kind_);
  }
  EXPECT_EQ(both_families(ns, kind_), previous);
  EXPECT_EQ(count_lines_with(policy_routing(ns), "fwmark"), 0);

  // The record still describes the previous apply: cleanup removes it all.
  good.cleanup(forced({"-b", "*", "-c", "eth7"}));
  EXPECT_EQ(both_families(ns, kind_).find("ISTIO"), std::string::npos);
  EXPECT_EQ(count_lines_with(both_families(ns, kind_), "-A PREROUTING -i eth5 -j RETURN\n"), 2);
}

// ---------------------------------------------------------------------------
// The path that reads the kernel's tables instead of running -save: what runs,
// and that no table meshcap created stays behind. (Legacy tables, once a
// namespace has them, cannot be removed: there the checks are on rules.)

// The nf_tables tables of one family in the namespace (none for legacy).
std::set<std::string> nft_tables(Netns& ns, Family fam) {
  const int fd = ::open(ns.path().c_str(), O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0);
  NetnsKernelTables kernel(fd);
  const auto view = kernel.read(fam, false);
  ::close(fd);
  EXPECT_TRUE(view.has_value());
  return view ? view->table_names() : std::set<std::string>{};
}

TEST_P(IptablesApply, FreshNamespaceIsOneRestorePerFamilyAndCleanupLeavesNoTable) {
  Netns ns("fresh");
  CountingRunner counting(ns.runner());
  IptablesApplier applier(counting, {state_.path()});
  const auto cfg = forced({"-b", "*", "-i", "*", "-x", "10.0.0.0/24", "-d", "15090,15021,15020", "--dual-stack"});
  const ApplyResult res = applier.apply(cfg, true);
  expect_rules_present(ns, kind_, cfg, true);
  // One restore per family; no -save, no probe, no --version (a legacy
  // binary's version is asked once per machine: the state dir is new here).
  std::vector<std::string> expected = {"iptables-" + kind_ + "-restore --noflush", "ip6tables-" + kind_ + "-restore --noflush"};
  if (kind_ == "legacy") {
    for (auto& e : expected) e += " --wait=30";
  }
  EXPECT_EQ(counting.commands("-restore"), expected);
  for (const auto& c : counting.commands()) {
    if (c.find("-restore") != std::string::npos || c.find("--version") != std::string::npos) continue;
    ADD_FAILURE() << "unexpected command: " << c;
  }
  // istio's ::6 on lo, added over rtnetlink as `ip -6 addr add` adds it.
  EXPECT_NE(ns.run({"ip", "-6", "addr", "show", "dev", "lo"}).out.find("inet6 ::6/128 scope global"),
            std::string::npos);
  EXPECT_EQ(res.restored, (std::vector<std::string>{res.rules.ipv4.text(), res.rules.ipv6.text()}));
  if (kind_ == "nft") {
    EXPECT_EQ(nft_tables(ns, Family::V4), std::set<std::string>{"nat"});
  }

  // A second pod of the same kind asks no version any more; with the same
  // payload it runs no restore either (the first pod's image is replayed,
  // ImagesReplay...), and without images it is one restore per family.
  {
    Netns other("fresh2");
    CountingRunner again(other.runner());
    const ApplyResult replayed = IptablesApplier(again, {state_.path()}).apply(cfg, true);
    EXPECT_TRUE(again.commands("-restore").empty());
    EXPECT_EQ(replayed.replayed.size(), 2u);
    EXPECT_TRUE(again.commands().empty());  // ::6 on lo goes over rtnetlink
    Netns third("fresh3");
    CountingRunner restoring(third.runner());
    IptablesApplier(restoring, {state_.path(), false}).apply(cfg, true);
    EXPECT_EQ(restoring.commands("-restore").size(), 2u);
    EXPECT_EQ(restoring.commands().size(), 2u);
    EXPECT_EQ(both_families(other, kind_), both_families(third, kind_));
  }

  counting.clear();
  const CleanupResult cleaned = applier.cleanup(cfg);
  // nf_tables: one transaction per family (NftCleanupIsOneTransaction...);
  // legacy: the tables' state before, from the image (ImagesReplay...).
  EXPECT_TRUE(counting.commands("-restore").empty());
  EXPECT_TRUE(counting.commands("-save").empty());
  EXPECT_EQ(cleaned.backends.size(), 2u);
  EXPECT_EQ(both_families(ns, kind_).find("ISTIO"), std::string::npos);
  EXPECT_EQ(ns.run({"ip", "-6", "addr", "show", "dev", "lo"}).out.find("::6/128"), std::string::npos);
  EXPECT_TRUE(nft_tables(ns, Family::V4).empty());
  EXPECT_TRUE(nft_tables(ns, Family::V6).empty());
}

// nf_tables: when all meshcap added outside its ISTIO_* chains is jumps to
// them (istio's REDIRECT capture), cleanup is one netlink transaction per
// family, no restore, no -save; what is not meshcap's stays, and so does a
// table meshcap created that now holds something else (a rule, a set).
TEST_P(IptablesApply, NftCleanupIsOneTransactionAndKeepsWhatIsNotMeshcaps) {
  if (kind_ != "nft") GTEST_SKIP() << "nf_tables only (legacy cleanup: ImagesReplayWhatRestoreMadeOnlyFromTheSameState)";
  const auto cfg = forced({"-b", "*", "-i", "*", "-x", "10.0.0.0/24", "-d", "15090,15021,15020", "--dual-stack"});
  Netns ns("onetx");
  CountingRunner counting(ns.runner());
  IptablesApplier applier(counting, {state_.path()});
  applier.apply(cfg, true);
  ASSERT_EQ(nft_tables(ns, Family::V4), std::set<std::string>{"nat"});
  // Added after capture, into the tables meshcap created.
  ASSERT_TRUE(ns.run({"iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "RETURN"}).ok());
  const auto set = ns.run({"nft", "add", "set", "ip6", "nat", "mcset", "{ type ipv6_addr; }"});
  ASSERT_TRUE(set.ok()) << set.err;

  counting.clear();
  const CleanupResult res = applier.cleanup(cfg);
  EXPECT_TRUE(counting.commands("-restore").empty());
  EXPECT_TRUE(counting.commands("-save").empty());
  EXPECT_EQ(res.backends, (std::vector<std::string>{"ipv4 iptables-nft", "ipv6 ip6tables-nft"}));
  EXPECT_EQ(both_families(ns, kind_).find("ISTIO"), std::string::npos);
  EXPECT_EQ(nft_tables(ns, Family::V4), std::set<std::string>{"nat"});  // the rule keeps it
  EXPECT_EQ(nft_tables(ns, Family::V6), std::set<std::string>{"nat"});  // the set keeps it
  EXPECT_TRUE(ns.run({"nft", "list", "set", "ip6", "nat", "mcset"}).ok());
  Netns fresh("onetx-fresh");
  ASSERT_TRUE(fresh.run({"iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "RETURN"}).ok());
  EXPECT_EQ(both_families(ns, kind_), both_families(fresh, kind_));

  // A second cleanup finds nothing and changes nothing.
  applier.cleanup(cfg);
  EXPECT_EQ(both_families(ns, kind_), both_families(fresh, kind_));

  // Without anything added, the tables meshcap created go with the chains.
  Netns clean("onetx-clean");
  StateDir other_state;
  IptablesApplier other(clean.runner(), {other_state.path()});
  other.apply(cfg, true);
  other.cleanup(cfg);
  EXPECT_TRUE(nft_tables(clean, Family::V4).empty());
  EXPECT_TRUE(nft_tables(clean, Family::V6).empty());
}

// Cleanup reads nf_tables without the rules of ISTIO_* chains (one filtered
// dump per other chain): the chains, the jumps into them and the other
// chains' rules are what a whole dump finds; only ISTIO_* rules go uncounted.
TEST_P(IptablesApply, NftViewWithoutIstioRulesFindsTheSameChainsAndJumps) {
  if (kind_ != "nft") GTEST_SKIP() << "nf_tables only (legacy tables are read whole)";
  const auto cfg = forced({"-b", "*", "-i", "*", "-x", "10.0.0.0/24,10.1.0.0/24,10.2.0.0/24", "--dual-stack"});
  Netns ns("filtered");
  IptablesApplier applier(ns.runner(), {state_.path()});
  applier.apply(cfg, true);
  // Someone else's rules: a second jump into ISTIO_OUTPUT, a rule of their
  // own in another chain of nat, and a filter table meshcap did not create.
  for (const auto& cmd : std::vector<std::vector<std::string>>{
           {"iptables-nft", "-t", "nat", "-A", "OUTPUT", "-o", "lo", "-j", "ISTIO_OUTPUT"},
           {"iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "RETURN"},
           {"iptables-nft", "-t", "filter", "-A", "INPUT", "-i", "lo", "-j", "ACCEPT"}}) {
    const auto r = ns.run(cmd);
    ASSERT_TRUE(r.ok()) << r.err;
  }
  const int fd = ::open(ns.path().c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  NetnsKernelTables kernel(fd);
  const auto whole = kernel.read_all(true);
  const auto filtered = kernel.read_all(false);
  ::close(fd);
  for (Family fam : {Family::V4, Family::V6}) {
    const auto& w = whole.at({fam, false});
    const auto& f = filtered.at({fam, false});
    ASSERT_TRUE(w.has_value() && f.has_value());
    EXPECT_FALSE(w->istio_chains().empty());
    EXPECT_EQ(f->istio_chains(), w->istio_chains());
    EXPECT_EQ(f->istio_jumps(), w->istio_jumps());
    EXPECT_EQ(f->table_names(), w->table_names());
    size_t istio_rules = 0;
    for (const auto& t : w->tables) {
      const TableView* ft = f->find(t.name);
      ASSERT_NE(ft, nullptr) << t.name;
      for (const auto& c : t.chains) {
        const ChainView* fc = ft->find(c.name);
        ASSERT_NE(fc, nullptr) << t.name << " " << c.name;
        if (c.name.rfind("ISTIO", 0) == 0) {
          istio_rules += c.rules;
          EXPECT_EQ(fc->rules, 0u) << c.name;
        } else {
          EXPECT_EQ(fc->rules, c.rules) << t.name << " " << c.name;
        }
      }
    }
    EXPECT_GT(istio_rules, 0u);
  }
  // The foreign jump is counted by both: v4 has one more than istio's own.
  EXPECT_EQ(filtered.at({Family::V4, false})->istio_jumps(), filtered.at({Family::V6, false})->istio_jumps() + 1);
}

// `-save` output without its comment lines (they carry the date).
std::string save_text(Netns& ns, const std::string& binary) {
  std::string out;
  std::istringstream in(ns.run({binary + "-save"}).out);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("#", 0) != 0) out += line + "\n";
  }
  return out;
}

// The next namespace whose tables are in the state an image starts from gets
// a payload applied once before by replaying what iptables-restore made of
// it: no restore, and the same bytes (the whole -save text and, on
// nf_tables, `nft list ruleset` print the same as after a restore). Over
// other rules it is a restore again.
TEST_P(IptablesApply, ImagesReplayWhatRestoreMadeOnlyFromTheSameState) {
  const auto cfg = forced({"-b", "*", "-i", "*", "-x", "10.0.0.0/24,10.1.0.0/16", "-u", "3", "-g", "4",
                           "--redirect-dns", "--capture-all-dns", "--dual-stack"});
  StateDir no_images;
  Netns first("img1");
  IptablesApplier(first.runner(), {state_.path()}).apply(cfg, true);

  Netns second("img2");
  CountingRunner counting(second.runner());
  IptablesApplier applier(counting, {state_.path()});
  const ApplyResult r = applier.apply(cfg, true);
  EXPECT_TRUE(counting.commands("-restore").empty());
  EXPECT_EQ(r.replayed.size(), 2u);
  EXPECT_TRUE(r.restored.empty());
  expect_rules_present(second, kind_, cfg, true);

  Netns reference("img3");
  IptablesApplier(reference.runner(), {no_images.path(), false}).apply(cfg, true);
  for (const auto& bin : {"iptables-" + kind_, "ip6tables-" + kind_}) {
    EXPECT_EQ(save_text(second, bin), save_text(reference, bin)) << bin;
  }
  if (kind_ == "nft") {
    EXPECT_EQ(second.run({"nft", "list", "ruleset"}).out, reference.run({"nft", "list", "ruleset"}).out);
  }

  // Cleanup of the replayed pod runs no restore and leaves what a restore's
  // removal leaves.
  counting.clear();
  applier.cleanup(cfg);
  EXPECT_TRUE(counting.commands("-restore").empty());
  IptablesApplier(reference.runner(), {no_images.path(), false}).cleanup(cfg);
  for (const auto& bin : {"iptables-" + kind_, "ip6tables-" + kind_}) {
    EXPECT_EQ(save_text(second, bin), save_text(reference, bin)) << bin;
    EXPECT_EQ(save_text(second, bin).find("ISTIO"), std::string::npos) << bin;
  }

  // Over foreign rules: a restore, and cleanup gives them back untouched.
  Netns foreign("img4");
  add_foreign_rules(foreign, kind_);
  const std::string before = both_families(foreign, kind_);
  CountingRunner restoring(foreign.runner());
  IptablesApplier over(restoring, {state_.path()});
  const ApplyResult r4 = over.apply(cfg, true);
  EXPECT_TRUE(r4.replayed.empty());
  EXPECT_EQ(restoring.commands("-restore").size(), 2u);
  expect_rules_present(foreign, kind_, cfg, true);
  over.cleanup(cfg);
  EXPECT_EQ(both_families(foreign, kind_), before);

  // TPROXY (mangle and nat; on nf_tables xt TPROXY and multiport, which the
  // kernel checks against the rule's protocol): the same.
  const auto tproxy = forced({"-m", "TPROXY", "-b", "*", "-i", "*", "-d", "15020,15021"});
  Netns t1("img5"), t2("img6"), t3("img7");
  IptablesApplier(t1.runner(), {state_.path()}).apply(tproxy, false);
  const ApplyResult r6 = IptablesApplier(t2.runner(), {state_.path()}).apply(tproxy, false);
  EXPECT_EQ(r6.replayed.size(), 1u);
  IptablesApplier(t3.runner(), {no_images.path(), false}).apply(tproxy, false);
  EXPECT_EQ(save_text(t2, "iptables-" + kind_), save_text(t3, "iptables-" + kind_));
  if (kind_ == "nft") {
    EXPECT_EQ(t2.run({"nft", "list", "ruleset"}).out, t3.run({"nft", "list", "ruleset"}).out);
  }
  expect_rules_present(t2, kind_, tproxy, false);
}

TEST_P(IptablesApply, LegacyCleanupPutsTheImageBackOnlyWhereTheTablesMatchTheRecord) {
  if (kind_ != "legacy") {
    GTEST_SKIP() << "legacy only (nf_tables cleanup: NftCleanupIsOneTransactionAndKeepsWhatIsNotMeshcaps)";
  }
  const auto cfg = forced({"-b", "*", "-i", "*", "-x", "10.0.0.0/24,10.1.0.0/16"});
  Netns first("chk1");
  IptablesApplier(first.runner(), {state_.path()}).apply(cfg, false);
  Netns second("chk2");
  CountingRunner counting(second.runner());
  IptablesApplier applier(counting, {state_.path()});
  ASSERT_EQ(applier.apply(cfg, false).replayed.size(), 1u);
  // nat still holds exactly the image's after state, but another table
  // holds an ISTIO chain the record does not have: no replay, -save read.
  ASSERT_TRUE(second.run({"iptables-legacy", "-t", "filter", "-N", "ISTIO_EXTRA", "--wait=30"}).ok());
  counting.clear();
  const CleanupResult r = applier.cleanup(cfg);
  EXPECT_FALSE(counting.commands("-save").empty());
  EXPECT_FALSE(counting.commands("-restore").empty());
  EXPECT_EQ(r.backends, std::vector<std::string>{"ipv4 iptables-legacy"});
  EXPECT_EQ(save_text(second, "iptables-legacy").find("ISTIO"), std::string::npos);

  // Without it: put back by the image, no command.
  IptablesApplier again(counting, {state_.path()});
  ASSERT_EQ(again.apply(cfg, false).replayed.size(), 1u);
  counting.clear();
  const CleanupResult back = again.cleanup(cfg);
  EXPECT_TRUE(counting.commands("-save").empty());
  EXPECT_TRUE(counting.commands("-restore").empty());
  EXPECT_EQ(back.backends, std::vector<std::string>{"ipv4 iptables-legacy"});
  EXPECT_EQ(save_text(second, "iptables-legacy").find("ISTIO"), std::string::npos);
}

TEST_P(IptablesApply, ReapplyFromTheRecordIsOneRestorePerFamily) {
  const auto first = forced({"-b", "*", "-c", "eth3", "-x", "10.0.0.0/8", "--dual-stack"});
  const auto second = forced({"-b", "80,443", "-i", "10.0.0.0/8", "-k", "veth2", "--dual-stack"});
  Netns ns("reapply");
  add_foreign_rules(ns, kind_);
  CountingRunner counting(ns.runner());
  IptablesApplier applier(counting, {state_.path()});
  applier.apply(first, true);
  counting.clear();
  applier.apply(second, true);
  EXPECT_EQ(counting.commands("-restore").size(), 2u);
  EXPECT_TRUE(counting.commands("-save").empty());

  Netns fresh("reapply-fresh");
  add_foreign_rules(fresh, kind_);
  StateDir other_state;
  IptablesApplier(fresh.runner(), {other_state.path()}).apply(second, true);
  EXPECT_EQ(both_families(ns, kind_), both_families(fresh, kind_));
}

TEST_P(IptablesApply, StateThatDriftedFromTheRecordIsReadWithSave) {
  const auto cfg = forced({"-b", "*", "-c", "eth3"});
  Netns ns("drift");
  CountingRunner counting(ns.runner());
  IptablesApplier applier(counting, {state_.path()});
  applier.apply(cfg, false);
  ASSERT_TRUE(applier.drift().has_value());
  EXPECT_TRUE(applier.drift()->empty());
  // Someone removes the OUTPUT jump and adds an ISTIO chain of their own.
  std::vector<std::string> del = {"iptables-" + kind_, "-t", "nat", "-D", "OUTPUT", "-j", "ISTIO_OUTPUT"};
  std::vector<std::string> add = {"iptables-" + kind_, "-t", "nat", "-N", "ISTIO_EXTRA"};
  if (kind_ == "legacy") {
    del.push_back("--wait=30");
    add.push_back("--wait=30");
  }
  ASSERT_TRUE(ns.run(del).ok());
  ASSERT_TRUE(ns.run(add).ok());
  EXPECT_EQ(applier.drift()->size(), 2u) << ::testing::PrintToString(*applier.drift());
  counting.clear();
  applier.apply(cfg, false);
  EXPECT_FALSE(counting.commands("-save").empty());  // the careful path ran
  expect_rules_present(ns, kind_, cfg, false);
  EXPECT_EQ(normalized(ns, "iptables-" + kind_).find("ISTIO_EXTRA"), std::string::npos);
  EXPECT_TRUE(applier.drift()->empty());
  std::vector<std::string> extra = {"iptables-" + kind_, "-t", "nat", "-A", "ISTIO_OUTPUT", "-j", "RETURN"};
  if (kind_ == "legacy") extra.push_back("--wait=30");
  ASSERT_TRUE(ns.run(extra).ok());
  EXPECT_EQ(applier.drift()->size(), 1u);  // ISTIO_OUTPUT holds one rule more

  // A rule edited in place (same counts) makes the recorded removal fail:
  // cleanup then reads -save and still removes everything.
  std::vector<std::string> replace = {"iptables-" + kind_, "-t", "nat", "-R", "PREROUTING", "1", "-i", "eth4", "-j", "RETURN"};
  if (kind_ == "legacy") replace.push_back("--wait=30");
  ASSERT_TRUE(ns.run(replace).ok()) << "PREROUTING 1 was -i eth3 -j RETURN";
  counting.clear();
  applier.cleanup(cfg);
  EXPECT_FALSE(counting.commands("-save").empty());
  EXPECT_EQ(normalized(ns, "iptables-" + kind_).find("ISTIO"), std::string::npos);
  if (kind_ == "nft") {
    EXPECT_TRUE(nft_tables(ns, Family::V4).count("nat"));  // the edited rule is not meshcap's
  }
}

TEST_P(IptablesApply, FailedApplyInAFreshNamespaceLeavesNothing) {
  Netns ns("failfresh");
  CountingRunner failing(ns.runner(), "ip6tables-" + kind_ + "-restore");
  IptablesApplier applier(failing, {state_.path()});
  try {
    applier.apply(forced({"-m", "TPROXY", "-b", "80", "-i", "*", "--dual-stack"}), true);
    FAIL() << "expected IptablesError";
  } catch (const IptablesError& e) {
    EXPECT_EQ(e.step(), "restore ipv6 ip6tables-" + kind_);
  }
  EXPECT_EQ(normalized(ns, "iptables-" + kind_), "");
  EXPECT_TRUE(nft_tables(ns, Family::V4).empty());
  EXPECT_TRUE(nft_tables(ns, Family::V6).empty());
  EXPECT_FALSE(fs::exists(applier.state_path()));
}

TEST_P(IptablesApply, TablesThatExistedBeforeStay) {
  if (kind_ != "nft") GTEST_SKIP() << "legacy tables cannot be removed at all";
  Netns ns("keep");
  // An empty nat table (as istio's probe leaves one) that meshcap did not create.
  ASSERT_TRUE(ns.run({"iptables-nft", "-t", "nat", "-A", "INPUT", "-p", "255", "-j", "RETURN"}).ok());
  ASSERT_TRUE(ns.run({"iptables-nft", "-t", "nat", "-D", "INPUT", "-p", "255", "-j", "RETURN"}).ok());
  IptablesApplier applier(ns.runner(), {state_.path()});
  const auto cfg = forced({"-b", "*", "-m", "TPROXY"});
  applier.apply(cfg, false);
  EXPECT_EQ(nft_tables(ns, Family::V4), (std::set<std::string>{"mangle", "nat"}));
  applier.cleanup(cfg);
  EXPECT_EQ(nft_tables(ns, Family::V4), std::set<std::string>{"nat"});  // mangle was meshcap's
}

INSTANTIATE_TEST_SUITE_P(Backends, IptablesApply, ::testing::Values("nft", "legacy"),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// Without --force-iptables-binary the backend that holds rules wins.
TEST(IptablesDetect, UsesTheBackendThatHoldsRulesElseNft) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root: creates network namespaces and programs iptables inside them";
  {
    Netns ns("detect-nft");
    std::string why;
    if (!probe_backend(ns.runner(), Family::V4, "iptables-nft", &why)) GTEST_SKIP() << "no nft: " << why;
    EXPECT_EQ(detect_backend(ns.runner(), Family::V4).binary, "iptables-nft");
    // The probe leaves no rule behind.
    EXPECT_EQ(normalized(ns, "iptables-nft"), "");
  }
  {
    Netns ns("detect-legacy");
    std::string why;
    if (!probe_backend(ns.runner(), Family::V4, "iptables-legacy", &why)) GTEST_SKIP() << "no legacy: " << why;
    ASSERT_TRUE(ns.run({"iptables-legacy", "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j",
                        "ACCEPT", "--wait=30"})
                    .ok());
    StateDir state;
    IptablesApplier applier(ns.runner(), {state.path()});
    const auto res = applier.apply(parse({}), false);
    EXPECT_EQ(res.ipv4.binary, "iptables-legacy");
    EXPECT_NE(normalized(ns, "iptables-legacy").find("ISTIO_OUTPUT"), std::string::npos);
    EXPECT_EQ(normalized(ns, "iptables-nft").find("ISTIO"), std::string::npos);
  }
}

// The runner enters the namespace by path or by fd, and only that one.
TEST(ProcessRunnerNetns, FdAndPathEnterTheSameNamespace) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root: creates network namespaces";
  Netns ns("runner");
  const int fd = ::open(ns.path().c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ProcessRunner by_fd(fd);
  ::close(fd);  // the runner keeps its own copy
  EXPECT_EQ(by_fd.context_id(), ns.runner().context_id());
  EXPECT_NE(by_fd.context_id(), ProcessRunner().context_id());
  ASSERT_TRUE(by_fd.run({"ip", "-6", "addr", "add", "::7/128", "dev", "lo"}).ok());
  EXPECT_NE(ns.run({"ip", "-6", "addr", "show", "dev", "lo"}).out.find("::7/128"), std::string::npos);
  EXPECT_EQ(ProcessRunner().run({"ip", "-6", "addr", "show", "dev", "lo"}).out.find("::7/128"), std::string::npos);
}

}  // namespace
