// Coexistence: meshcap shares the pod's cgroup hooks with another BPF user
// and the pod's netns with foreign iptables rules. Both keep working while
// meshcap captures, and meshcap's cleanup removes only what is meshcap's.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>

#include <algorithm>
#include <set>

#include "reliability_fixture.h"
#include "support/gtest_helpers.h"

#ifndef FOREIGN_BPF_OBJ
#error "FOREIGN_BPF_OBJ must name the compiled tests/reliability/foreign.bpf.c"
#endif

namespace meshcap::test {
namespace {

const Identity kApp = Identity::user(1000, 1000);

/// The program IDs attached to a cgroup at one hook.
std::set<__u32> attached_ids(const std::string& cgroup, bpf_attach_type type) {
  std::set<__u32> out;
  UniqueFd fd(::open(cgroup.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return out;
  __u32 ids[64], count = 64, flags = 0;
  if (bpf_prog_query(fd.get(), type, 0, &flags, ids, &count) == 0) out.insert(ids, ids + count);
  return out;
}

__u32 prog_id(int prog_fd) {
  bpf_prog_info info{};
  __u32 len = sizeof info;
  return bpf_obj_get_info_by_fd(prog_fd, &info, &len) == 0 ? info.id : 0;
}

/// tests/reliability/foreign.bpf.c loaded: counting programs for connect4,
/// connect6, sockops and getsockopt. Attachments go away with the object.
class ForeignBpf {
 public:
  enum Counter { connect4 = 0, connect6 = 1, sockops = 2, getsockopt = 3 };

  ForeignBpf() {
    obj_ = bpf_object__open_file(FOREIGN_BPF_OBJ, nullptr);
    if (!obj_ || libbpf_get_error(obj_)) throw TestSupportError("open " FOREIGN_BPF_OBJ, errno);
    if (bpf_object__load(obj_) != 0) throw TestSupportError("load " FOREIGN_BPF_OBJ, errno);
  }
  ~ForeignBpf() {
    for (auto* l : links_) bpf_link__destroy(l);
    for (const auto& [cg, type, fd] : legacy_) {
      UniqueFd cgfd(::open(cg.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (cgfd) bpf_prog_detach2(fd, cgfd.get(), type);
    }
    bpf_object__close(obj_);
  }
  ForeignBpf(const ForeignBpf&) = delete;
  ForeignBpf& operator=(const ForeignBpf&) = delete;

  bpf_program* prog(const char* name) {
    bpf_program* p = bpf_object__find_program_by_name(obj_, name);
    if (!p) throw TestSupportError(std::string("no program ") + name, ENOENT);
    return p;
  }
  __u32 id(const char* name) { return prog_id(bpf_program__fd(prog(name))); }

  /// bpf_link, as meshcap itself attaches (multi-attach semantics).
  void attach_link(const std::string& cgroup, const char* name) {
    UniqueFd cgfd(::open(cgroup.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    bpf_link* l = bpf_program__attach_cgroup(prog(name), cgfd.get());
    if (!l || libbpf_get_error(l)) throw TestSupportError(std::string("attach ") + name, errno);
    links_.push_back(l);
  }
  /// The older bpf_prog_attach interface; returns 0 or -errno.
  int attach_legacy(const std::string& cgroup, const char* name, bpf_attach_type type, __u32 flags) {
    UniqueFd cgfd(::open(cgroup.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    int fd = bpf_program__fd(prog(name));
    if (bpf_prog_attach(fd, cgfd.get(), type, flags) != 0) return -errno;
    legacy_.emplace_back(cgroup, type, fd);
    return 0;
  }
  uint64_t count(Counter c) {
    bpf_map* m = bpf_object__find_map_by_name(obj_, "foreign_counts");
    __u32 key = c;
    __u64 v = 0;
    if (!m || bpf_map_lookup_elem(bpf_map__fd(m), &key, &v) != 0) return ~0ull;
    return v;
  }

 private:
  bpf_object* obj_ = nullptr;
  std::vector<bpf_link*> links_;
  std::vector<std::tuple<std::string, bpf_attach_type, int>> legacy_;
};

class CoexistBpf : public CaptureTest {
 protected:
  void SetUp() override {
    CaptureTest::SetUp();
    if (IsSkipped()) return;
    out4_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "127.0.0.1", 15001);
    peer4_ = std::make_unique<RecordingListener>(Placement::peer_thread(*pod_), pod_->peer_ipv4(), 8080);
    peer6_ = std::make_unique<RecordingListener>(Placement::peer_thread(*pod_), pod_->peer_ipv6(), 8080);
    foreign_ = std::make_unique<ForeignBpf>();
  }
  void TearDown() override {
    CaptureTest::TearDown();
    foreign_.reset();  // after the pod: the cgroup is gone, the links go with the fds
  }

  /// Attaches the foreign programs: connect4, connect6 and sockops as
  /// bpf_links, getsockopt with bpf_prog_attach(BPF_F_ALLOW_MULTI).
  void attach_foreign() {
    const std::string& cg = pod_->cgroup_path();
    foreign_->attach_link(cg, "foreign_connect4");
    foreign_->attach_link(cg, "foreign_connect6");
    foreign_->attach_link(cg, "foreign_sockops");
    ASSERT_EQ(foreign_->attach_legacy(cg, "foreign_getsockopt", BPF_CGROUP_GETSOCKOPT, BPF_F_ALLOW_MULTI), 0);
  }

  /// The foreign program IDs are attached at their hooks.
  void expect_foreign_attached() {
    const std::string& cg = pod_->cgroup_path();
    EXPECT_TRUE(attached_ids(cg, BPF_CGROUP_INET4_CONNECT).count(foreign_->id("foreign_connect4")));
    EXPECT_TRUE(attached_ids(cg, BPF_CGROUP_INET6_CONNECT).count(foreign_->id("foreign_connect6")));
    EXPECT_TRUE(attached_ids(cg, BPF_CGROUP_SOCK_OPS).count(foreign_->id("foreign_sockops")));
    EXPECT_TRUE(attached_ids(cg, BPF_CGROUP_GETSOCKOPT).count(foreign_->id("foreign_getsockopt")));
  }

  /// One captured IPv4 and one IPv6 round trip from the application, and
  /// what the foreign programs counted meanwhile.
  struct Seen {
    uint64_t connect4, connect6, sockops, getsockopt;
  };
  Seen traffic(bool captured) {
    auto c4 = foreign_->count(ForeignBpf::connect4), c6 = foreign_->count(ForeignBpf::connect6);
    auto so = foreign_->count(ForeignBpf::sockops), gs = foreign_->count(ForeignBpf::getsockopt);
    size_t o4 = out4_->accepted(), p4 = peer4_->accepted();
    RoundTrip rt = app_roundtrip(pod_->peer_ipv4(), 8080, kApp);
    EXPECT_TRUE(rt.ok()) << "errno " << rt.error;
    EXPECT_EQ(rt.peer, endpoint(pod_->peer_ipv4(), 8080));
    RoundTrip rt6 = app_roundtrip(pod_->peer_ipv6(), 8080, kApp);
    // IPv6 goes to [::1]:15001 when captured: no listener there in this
    // test, so only the connect6 count matters.
    (void)rt6;
    if (captured) {
      EXPECT_ACCEPTS(out4_->accepted(), o4 + 1);
      EXPECT_EQ(out4_->records().back().original_dst.address, endpoint(pod_->peer_ipv4(), 8080));
      EXPECT_EQ(peer4_->accepted(), p4);
    } else {
      EXPECT_ACCEPTS(peer4_->accepted(), p4 + 1);
      EXPECT_EQ(out4_->accepted(), o4);
    }
    return Seen{foreign_->count(ForeignBpf::connect4) - c4, foreign_->count(ForeignBpf::connect6) - c6,
                foreign_->count(ForeignBpf::sockops) - so, foreign_->count(ForeignBpf::getsockopt) - gs};
  }

  size_t meshcap_programs() {
    size_t n = 0;
    for (auto type : capture_attach_types()) {
      auto ids = attached_ids(pod_->cgroup_path(), type);
      for (const char* p : {"foreign_connect4", "foreign_connect6", "foreign_sockops", "foreign_getsockopt"})
        ids.erase(foreign_->id(p));
      n += ids.size();
    }
    return n;
  }

  std::unique_ptr<RecordingListener> out4_, peer4_, peer6_;
  std::unique_ptr<ForeignBpf> foreign_;
};

// Foreign programs attached first; meshcap (eBPF) attached on top; both
// run; meshcap's cleanup leaves the foreign ones attached and working.
TEST_F(CoexistBpf, ForeignProgramsAttachedBeforeKeepWorkingAndSurviveCleanup) {
  attach_foreign();
  Seen before = traffic(false);
  EXPECT_EQ(before.connect4, 1u);
  EXPECT_EQ(before.connect6, 1u);
  EXPECT_GT(before.sockops, 0u);

  auto r = init_ebpf({"-i", "*"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(meshcap_programs(), kCapturePrograms);
  expect_foreign_attached();
  Seen during = traffic(true);
  EXPECT_EQ(during.connect4, 1u);
  EXPECT_EQ(during.connect6, 1u);
  EXPECT_GT(during.sockops, 0u);
  EXPECT_GE(during.getsockopt, 1u);  // the proxy's SO_ORIGINAL_DST
  auto c = loader::pinned_counters(name_);
  EXPECT_EQ(c["redirected_outbound"], 2u);
  EXPECT_EQ(c["orig_dst_answered"], 1u);
  auto st = run_command({MESHCAP_BIN, "status", "--name", name_, "--json"});
  EXPECT_EQ(st.exit_code, 0) << st.output;
  EXPECT_EQ(st.output.find("detached"), std::string::npos) << st.output;

  r = meshcap({"cleanup", "--name", name_});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(meshcap_programs(), 0u);
  expect_foreign_attached();
  Seen after = traffic(false);
  EXPECT_EQ(after.connect4, 1u);
  EXPECT_EQ(after.connect6, 1u);
  EXPECT_GT(after.sockops, 0u);
}

// Foreign programs attached while meshcap captures: same result.
TEST_F(CoexistBpf, ForeignProgramsAttachedAfterInitSurviveCleanup) {
  ASSERT_EQ(init_ebpf({"-i", "*"}).exit_code, 0);
  attach_foreign();
  Seen during = traffic(true);
  EXPECT_EQ(during.connect4, 1u);
  EXPECT_GE(during.getsockopt, 1u);
  // A re-init (same name) replaces meshcap's programs only.
  ASSERT_EQ(init_ebpf({"-i", "*"}).exit_code, 0);
  EXPECT_EQ(meshcap_programs(), kCapturePrograms);
  expect_foreign_attached();
  ASSERT_EQ(meshcap({"cleanup", "--name", name_}).exit_code, 0);
  EXPECT_EQ(meshcap_programs(), 0u);
  expect_foreign_attached();
  EXPECT_EQ(traffic(false).connect4, 1u);
}

// A foreign program attached the old exclusive way (bpf_prog_attach with no
// flags) owns its hook: nobody else can attach there. meshcap's eBPF init
// then fails cleanly (nothing of it left, the foreign program untouched).
TEST_F(CoexistBpf, ExclusiveForeignProgramMakesEbpfInitFailCleanly) {
  ASSERT_EQ(foreign_->attach_legacy(pod_->cgroup_path(), "foreign_connect4", BPF_CGROUP_INET4_CONNECT, 0), 0);
  auto r = init_ebpf({"-i", "*"});
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("connect4"), std::string::npos) << r.output;
  EXPECT_EQ(meshcap_programs(), 0u);
  EXPECT_FALSE(loader::pinned_state(name_).present);
  EXPECT_EQ(attached_ids(pod_->cgroup_path(), BPF_CGROUP_INET4_CONNECT),
            std::set<__u32>{foreign_->id("foreign_connect4")});
  // The connection goes direct, counted by the foreign program.
  Seen s = traffic(false);
  EXPECT_EQ(s.connect4, 1u);
}

// ---- foreign iptables rules ----

class CoexistIptables : public ModeTest {
 protected:
  // Parameter: "ebpf", "nft" or "legacy" (iptables mode with that backend).
  void SetUp() override {
    ModeTest::SetUp();
    if (IsSkipped()) return;
    kind_ = GetParam() == "ebpf" ? "nft" : GetParam();
    MESHCAP_REQUIRE_BINARY("iptables-" + kind_ + "-save");
    out4_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "127.0.0.1", 15001);
    peer4_ = std::make_unique<RecordingListener>(Placement::peer_thread(*pod_), pod_->peer_ipv4(), 8080);
  }

  CommandResult ipt(const std::string& family, std::vector<std::string> args) {
    args.insert(args.begin(), family + "-" + kind_);
    return in_pod_netns(args);
  }
  /// All tables of one family, rules only (no comments, no counters).
  /// Tables without any rule are left out: an empty ip6tables nat table
  /// stays behind after meshcap's cleanup, as after istio's (legacy tables
  /// cannot be removed at all once used).
  /// `foreign_only` leaves out every line that mentions ISTIO.
  std::string rules(const std::string& family, bool foreign_only = false) {
    auto r = in_pod_netns({family + "-" + kind_ + "-save"});
    std::string out, table;
    bool has_rules = false;
    std::istringstream in(r.output);
    for (std::string line; std::getline(in, line);) {
      if (line.empty() || line[0] == '#') continue;
      if (line[0] == ':') line = line.substr(0, line.find(' '));  // chain policy counters
      if (foreign_only && line.find("ISTIO") != std::string::npos) continue;
      if (line[0] == '*') {
        table.clear();
        has_rules = false;
      }
      table += line + "\n";
      has_rules |= line.rfind("-A ", 0) == 0;
      if (line == "COMMIT" && has_rules) out += table;
    }
    return out;
  }
  /// Packets counted by the rule printed exactly as `rule` (iptables-save -c).
  int64_t packets(const std::string& table, const std::string& rule) {
    auto r = in_pod_netns({"iptables-" + kind_ + "-save", "-c", "-t", table});
    std::istringstream in(r.output);
    for (std::string line; std::getline(in, line);) {
      auto close = line.find("] ");
      if (line.empty() || line[0] != '[' || close == std::string::npos) continue;
      if (line.substr(close + 2) == rule) return std::stoll(line.substr(1, line.find(':') - 1));
    }
    return -1;
  }

  std::string kind_;
  std::unique_ptr<RecordingListener> out4_, peer4_;
};

TEST_P(CoexistIptables, ForeignRulesSurviveInitAndCleanupAndKeepWorking) {
  const std::string peer = pod_->peer_ipv4();
  // Foreign rules in every table meshcap writes to, and in one it does not.
  const std::vector<std::vector<std::string>> v4 = {
      {"-t", "nat", "-N", "FOREIGN_NAT"},
      {"-t", "nat", "-A", "FOREIGN_NAT", "-d", peer + "/32", "-p", "tcp", "-m", "tcp", "--dport", "7001", "-j", "DNAT",
       "--to-destination", peer + ":8080"},
      {"-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "FOREIGN_NAT"},
      {"-t", "mangle", "-A", "OUTPUT", "-p", "tcp", "-m", "tcp", "--dport", "8080", "-j", "MARK", "--set-xmark",
       "0x77/0xffffffff"},
      {"-t", "filter", "-A", "OUTPUT", "-p", "udp", "-m", "udp", "--dport", "5353", "-j", "ACCEPT"},
      {"-t", "raw", "-A", "OUTPUT", "-p", "udp", "-m", "udp", "--dport", "5354", "-j", "ACCEPT"},
  };
  for (const auto& a : v4) {
    auto r = ipt("iptables", a);
    ASSERT_TRUE(r.ok()) << r.output;
  }
  auto r6 = ipt("ip6tables", {"-t", "filter", "-A", "OUTPUT", "-p", "tcp", "-m", "tcp", "--dport", "7003", "-j",
                              "ACCEPT"});
  ASSERT_TRUE(r6.ok()) << r6.output;
  const std::string before4 = rules("iptables"), before6 = rules("ip6tables");

  std::vector<std::string> flags = capture_all_flags();
  if (GetParam() != "ebpf") flags.insert(flags.end(), {"--force-iptables-binary", kind_});
  auto r = init(flags, GetParam() == "ebpf" ? "ebpf" : "iptables");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  if (GetParam() == "ebpf") {
    EXPECT_EQ(rules("iptables"), before4);  // eBPF mode does not touch iptables
    EXPECT_EQ(rules("ip6tables"), before6);
  } else {
    EXPECT_NE(rules("iptables").find("ISTIO_OUTPUT"), std::string::npos);
    EXPECT_EQ(rules("iptables", true), before4);
    EXPECT_EQ(rules("ip6tables", true), before6);
  }

  // Foreign rules keep working while meshcap captures. The foreign DNAT
  // comes before istio's jump in nat OUTPUT (it was there first), so port
  // 7001 is rewritten to the peer's 8080 by it in iptables mode, and not
  // captured (first match wins, as for any rule placed before istio's). In
  // eBPF mode the connect hook runs first and captures it (original
  // destination: port 7001, the address the application dialed).
  const std::string mark_rule = "-A OUTPUT -p tcp -m tcp --dport 8080 -j MARK --set-xmark 0x77/0xffffffff";
  const std::string dnat_rule = "-A FOREIGN_NAT -d " + peer + "/32 -p tcp -m tcp --dport 7001 -j DNAT --to-destination " +
                                peer + ":8080";
  int64_t marks = packets("mangle", mark_rule), dnats = packets("nat", dnat_rule);
  RoundTrip captured = app_roundtrip(peer, 8080, kApp);
  EXPECT_TRUE(captured.ok()) << "errno " << captured.error;
  EXPECT_ACCEPTS(out4_->accepted(), 1);
  RoundTrip foreign = app_roundtrip(peer, 7001, kApp);
  EXPECT_TRUE(foreign.ok()) << "errno " << foreign.error;
  if (GetParam() == "ebpf") {
    // In eBPF mode the destination is already 127.0.0.1:15001 (rewritten at
    // connect) when the packets reach mangle and nat: neither foreign rule
    // matches. The foreign DNAT turns conntrack on in the pod netns: the
    // proxy still reads the right original destination (see
    // CoexistConntrack below).
    EXPECT_ACCEPTS(out4_->accepted(), 2);
    EXPECT_EQ(out4_->records().back().original_dst.address, endpoint(peer, 7001));
    EXPECT_EQ(peer4_->accepted(), 0u);
    EXPECT_EQ(packets("nat", dnat_rule), dnats);
    EXPECT_EQ(packets("mangle", mark_rule), marks);
  } else {
    EXPECT_ACCEPTS(peer4_->accepted(), 1);  // through the foreign DNAT
    EXPECT_EQ(out4_->accepted(), 1u);
    EXPECT_EQ(packets("nat", dnat_rule), dnats + 1);
    EXPECT_GT(packets("mangle", mark_rule), marks);  // mangle OUTPUT runs before nat
  }

  r = meshcap({"cleanup", "--name", name_});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(rules("iptables"), before4);
  EXPECT_EQ(rules("ip6tables"), before6);
  // And still working after cleanup: 7001 goes through the foreign DNAT.
  size_t p4 = peer4_->accepted();
  EXPECT_TRUE(app_roundtrip(peer, 7001, kApp).ok());
  EXPECT_ACCEPTS(peer4_->accepted(), p4 + 1);
}

// eBPF capture in a pod netns where conntrack is tracking connections
// (any NAT target or conntrack match there turns it on: a foreign rule, or
// meshcap's own iptables part in auto mode, e.g. inbound TPROXY with
// --drop-invalid). The kernel's own SO_ORIGINAL_DST then answers for every
// connection, and for one that conntrack did not NAT (eBPF rewrote it at
// connect) it answers the socket's own local address, 127.0.0.1:15001: the
// proxy would connect to itself. Found here and by the equivalence suite;
// fixed in 9de3c05 (mc_getsockopt answers from meshcap's own connection
// table first). These are its regression tests.
class CoexistConntrack : public CaptureTest {
 protected:
  void SetUp() override {
    CaptureTest::SetUp();
    if (IsSkipped()) return;
    out4_ = std::make_unique<RecordingListener>(Placement::pod_process(*pod_, Identity::proxy()), "127.0.0.1", 15001);
    peer4_ = std::make_unique<RecordingListener>(Placement::peer_thread(*pod_), pod_->peer_ipv4(), 8080);
  }
  OriginalDst captured_original_dst() {
    RoundTrip rt = app_roundtrip(pod_->peer_ipv4(), 8080, kApp);
    EXPECT_TRUE(rt.ok()) << "errno " << rt.error;
    EXPECT_ACCEPTS(out4_->accepted(), 1);
    EXPECT_EQ(peer4_->accepted(), 0u);
    return out4_->records().empty() ? OriginalDst{} : out4_->records().back().original_dst;
  }
  std::unique_ptr<RecordingListener> out4_, peer4_;
};

TEST_F(CoexistConntrack, ForeignConntrackRuleKeepsEbpfOriginalDstRight) {
  auto r = run_command({"nsenter", "--net=" + pod_->pod_netns_path(), "iptables", "-A", "OUTPUT", "-m", "conntrack",
                        "--ctstate", "INVALID", "-j", "DROP"});
  ASSERT_TRUE(r.ok()) << r.output;
  ASSERT_EQ(init_ebpf({"-i", "*"}).exit_code, 0);
  OriginalDst o = captured_original_dst();
  EXPECT_TRUE(o.ok);
  EXPECT_EQ(o.address, endpoint(pod_->peer_ipv4(), 8080));
  EXPECT_EQ(loader::pinned_counters(name_)["orig_dst_answered"], 1u);
}

TEST_F(CoexistConntrack, AutoModeInboundIptablesKeepsEbpfOriginalDstRight) {
  // Outbound by eBPF, inbound by iptables (TPROXY and --drop-invalid are
  // iptables-only): meshcap's own conntrack match turns conntrack on.
  auto r = meshcap({"init", "--mode", "auto", "--name", name_, "--cgroup", pod_->cgroup_path(), "--netns",
                    pod_->pod_netns_path(), "-i", "*", "-b", "*", "-m", "TPROXY", "--drop-invalid"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  OriginalDst o = captured_original_dst();
  EXPECT_TRUE(o.ok);
  EXPECT_EQ(o.address, endpoint(pod_->peer_ipv4(), 8080));
}

// Without conntrack in the pod netns the answer is right (the usual case;
// the same check as tests/kernel/capture_outbound_test.cpp).
TEST_F(CoexistConntrack, WithoutConntrackEbpfOriginalDstIsRight) {
  ASSERT_EQ(init_ebpf({"-i", "*"}).exit_code, 0);
  EXPECT_EQ(captured_original_dst().address, endpoint(pod_->peer_ipv4(), 8080));
}

INSTANTIATE_TEST_SUITE_P(Modes, CoexistIptables, ::testing::Values("ebpf", "nft", "legacy"), mode_name);

}  // namespace
}  // namespace meshcap::test
