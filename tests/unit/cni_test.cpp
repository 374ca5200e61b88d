// meshcap-cni without a kernel: the environment and configuration parsers,
// the CNI error JSON, exclusion, and the conflist installer on files in a
// temporary directory. Every refusal here happens before anything is
// touched, so these run unprivileged.
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "agent_client.h"
#include "agent_socket.h"
#include "cni_config.h"
#include "cni_plugin.h"
#include "cni_conflist.h"
#include "init_handover.h"
#include "pins.h"
#include "pod_state.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace meshcap;
using namespace meshcap::cni;

namespace {

using Vars = std::map<std::string, std::string>;

auto lookup(const Vars& v) {
  return [v](const std::string& k) -> std::optional<std::string> {
    auto it = v.find(k);
    if (it == v.end()) return std::nullopt;
    return it->second;
  };
}

Vars add_env() {
  return {{"CNI_COMMAND", "ADD"}, {"CNI_CONTAINERID", "abc123"}, {"CNI_NETNS", "/var/run/netns/x"},
          {"CNI_IFNAME", "eth0"}, {"CNI_ARGS", "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-1"}};
}

std::string conf(const json& extra = json::object()) {
  json j = {{"cniVersion", "1.0.0"}, {"name", "pods"}, {"type", "meshcap-cni"}};
  j.update(extra);
  return j.dump();
}

int error_code(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const CniError& e) {
    return e.code();
  }
  return 0;
}

}  // namespace

TEST(CniEnv, ReadsTheCommandAndArgs) {
  const CniEnv e = read_env(lookup(add_env()));
  EXPECT_EQ(e.command, "ADD");
  EXPECT_EQ(e.container_id, "abc123");
  EXPECT_EQ(e.args.at("K8S_POD_NAME"), "cart-1");
}

TEST(CniEnv, RefusesWhatACommandNeedsAndLacks) {
  for (const char* missing : {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"}) {
    Vars v = add_env();
    v.erase(missing);
    EXPECT_EQ(error_code([&] { read_env(lookup(v)); }), kInvalidEnv) << missing;
  }
  Vars v = add_env();
  v["CNI_COMMAND"] = "FROB";
  EXPECT_EQ(error_code([&] { read_env(lookup(v)); }), kInvalidEnv);
  v = add_env();
  v["CNI_CONTAINERID"] = "../../etc";
  EXPECT_EQ(error_code([&] { read_env(lookup(v)); }), kInvalidEnv);
  v = add_env();
  v["CNI_ARGS"] = "IgnoreUnknown=1;novalue";
  EXPECT_EQ(error_code([&] { read_env(lookup(v)); }), kInvalidEnv);
}

TEST(CniEnv, DelNeedsNoNamespace) {
  Vars v = add_env();
  v["CNI_COMMAND"] = "DEL";
  v.erase("CNI_NETNS");
  v.erase("CNI_IFNAME");
  EXPECT_NO_THROW(read_env(lookup(v)));
}

TEST(CniConfig, DefaultsAreIstioCnisSidecarPod) {
  const PluginConfig c = parse_config(conf(), read_env(lookup(add_env())));
  const CaptureConfig cfg = FlagSet::resolve(c.flags, [](const std::string&) { return std::nullopt; }).build();
  EXPECT_EQ(cfg.proxy_port, 15001);
  EXPECT_EQ(cfg.inbound_capture_port, 15006);
  EXPECT_EQ(c.mode, Mode::Auto);
}

TEST(CniConfig, KeysAreIstioFlagNamesAndLaterSourcesWin) {
  Vars v = add_env();
  v["CNI_ARGS"] = "MESHCAP_ENVOY_PORT=15111";
  const PluginConfig c = parse_config(
      conf({{"envoy-port", "15101"}, {"inbound-capture-port", 15107}, {"runtimeConfig", {{"meshcap", {{"envoy-port", "15102"}}}}}}),
      read_env(lookup(v)));
  const CaptureConfig cfg = FlagSet::resolve(c.flags, [](const std::string&) { return std::nullopt; }).build();
  EXPECT_EQ(cfg.proxy_port, 15111);  // CNI_ARGS over runtimeConfig over the entry
  EXPECT_EQ(cfg.inbound_capture_port, 15107);
}

TEST(CniConfig, BadInputIsAnErrorWithItsCode) {
  const CniEnv env = read_env(lookup(add_env()));
  EXPECT_EQ(error_code([&] { parse_config("{not json", env); }), kDecodeFailure);
  EXPECT_EQ(error_code([&] { parse_config("[]", env); }), kDecodeFailure);
  EXPECT_EQ(error_code([&] { parse_config(R"({"name":"x"})", env); }), kInvalidConfig);
  EXPECT_EQ(error_code([&] { parse_config(conf({{"cniVersion", "9.9.9"}}), env); }), kIncompatibleVersion);
  EXPECT_EQ(error_code([&] { parse_config(conf({{"type", "bridge"}}), env); }), kInvalidConfig);
  EXPECT_EQ(error_code([&] { parse_config(conf({{"name", {{"interfaces", json::array()}}}}), env); }), kInvalidConfig);
  EXPECT_EQ(error_code([&] { parse_config(conf({{"envoy-prot", "15001"}}), env); }), kInvalidConfig);
  EXPECT_EQ(error_code([&] { parse_config(conf({{"envoy-port", "notaport"}}), env); }), kInvalidConfig);
  EXPECT_EQ(error_code([&] { parse_config(conf({{"istio-service-cidr", "10.0.0.0/33"}}), env); }), kInvalidConfig);
  EXPECT_EQ(error_code([&] { parse_config(conf({{"mode", "fast"}}), env); }), kInvalidConfig);
  EXPECT_EQ(error_code([&] { parse_config(conf({{"log-level", "loud"}}), env); }), kInvalidConfig);
  EXPECT_EQ(error_code([&] { parse_config(conf({{"exclude-pods", "a"}}), env); }), kInvalidConfig);
  EXPECT_EQ(error_code([&] { parse_config(conf({{"network-namespace", "/proc/1/ns/net"}}), env); }), kInvalidConfig);
  EXPECT_EQ(error_code([&] { parse_config(conf({{"envoy-port", json::array()}}), env); }), kInvalidConfig);
}

TEST(CniConfig, DelTakesAConfigurationThatAddWouldRefuse) {
  Vars v = add_env();
  v["CNI_COMMAND"] = "DEL";
  EXPECT_NO_THROW(parse_config(conf({{"envoy-port", "notaport"}}), read_env(lookup(v))));
}

TEST(CniConfig, ExcludesByNamespaceAndPod) {
  const CniEnv env = read_env(lookup(add_env()));
  auto excluded_with = [&](const json& extra) { return excluded(parse_config(conf(extra), env), env); };
  EXPECT_FALSE(excluded_with(json::object()));
  EXPECT_TRUE(excluded_with({{"exclude-namespaces", {"kube-system", "shop"}}}));
  EXPECT_TRUE(excluded_with({{"exclude-pods", {"shop/cart-1"}}}));
  EXPECT_TRUE(excluded_with({{"exclude-pods", {"cart-1"}}}));
  EXPECT_FALSE(excluded_with({{"exclude-pods", {"other/cart-1", "cart"}}}));
}

TEST(CniPlugin, ErrorsAreCniJsonOnStdout) {
  Vars v = add_env();
  const Reply r = run(lookup(v), "{broken");
  EXPECT_NE(r.exit_code, 0);
  const json j = json::parse(r.stdout_text);
  EXPECT_EQ(j["code"], kDecodeFailure);
  EXPECT_TRUE(j.contains("msg"));
  EXPECT_TRUE(j.contains("cniVersion"));
}

TEST(CniPlugin, BytesThatAreNotUtf8NeverBreakTheErrorJson) {
  Vars v = add_env();
  v["CNI_ARGS"] = std::string("K8S_POD_NAME=\xff\xfe;bad\xc3");
  const Reply r = run(lookup(v), conf());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(json::parse(r.stdout_text)["code"], kInvalidEnv);
}

TEST(CniPlugin, VersionListsWhatItSpeaks) {
  const Reply r = run(lookup({{"CNI_COMMAND", "VERSION"}}), R"({"cniVersion":"1.0.0"})");
  EXPECT_EQ(r.exit_code, 0);
  const json j = json::parse(r.stdout_text);
  EXPECT_EQ(j["cniVersion"], "1.0.0");
  EXPECT_NE(std::find(j["supportedVersions"].begin(), j["supportedVersions"].end(), "1.1.0"),
            j["supportedVersions"].end());
}

TEST(CniPlugin, GcRefusesAMalformedAttachmentListBeforeRemovingAnything) {
  const Reply r = run(lookup({{"CNI_COMMAND", "GC"}}),
                      conf({{"cni.dev/valid-attachments", {{{"containerID", 7}}}}}));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(json::parse(r.stdout_text)["code"], kInvalidConfig);
}

TEST(CniSettings, AFileOfEntryKeysIsCheckedAsAnAddWouldParseIt) {
  const fs::path f = fs::temp_directory_path() / ("meshcap-cni-settings-" + std::to_string(getpid()) + ".json");
  auto message = [&](const std::string& text) -> std::string {
    std::ofstream(f, std::ios::trunc) << text;
    try {
      (void)read_plugin_settings(f.string(), "--settings");
    } catch (const UsageError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(message(R"({"envoy-port":"15001","exclude-namespaces":["kube-system"]})"), "");
  EXPECT_NE(message(R"({"envoy-port":"notaport"})").find("--settings: invalid value '" + f.string() + "'"),
            std::string::npos);
  EXPECT_NE(message("[1]").find("not a JSON object"), std::string::npos);
  EXPECT_NE(message(R"({"envoy-prot":"15001"})").find("unknown key"), std::string::npos);
  fs::remove(f);
  EXPECT_NE(message("").find("not a JSON object"), std::string::npos);
  fs::remove(f);
}

class Conflist : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("meshcap-cni-unit-" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "net.d");
    fs::create_directories(dir_ / "bin");
    std::ofstream(dir_ / "bin-src") << "#!/bin/sh\n";
  }
  void TearDown() override { fs::remove_all(dir_); }
  json read(const fs::path& p) { return json::parse(std::ifstream(p)); }
  InstallOptions opts() {
    InstallOptions o;
    o.conf_dir = (dir_ / "net.d").string();
    o.bin_dir = (dir_ / "bin").string();
    o.source_binary = (dir_ / "bin-src").string();
    o.settings = {{"envoy-port", "15001"}};
    return o;
  }
  fs::path dir_;
};

TEST_F(Conflist, AConfBecomesAConflistWithTheEntryLast) {
  std::ofstream(dir_ / "net.d/10-bridge.conf") << R"({"cniVersion":"1.0.0","name":"pods","type":"bridge"})";
  const std::string changed = install_plugin(opts());
  EXPECT_EQ(fs::path(changed).filename(), "10-bridge.conflist");
  EXPECT_FALSE(fs::exists(dir_ / "net.d/10-bridge.conf"));
  const json j = read(changed);
  ASSERT_EQ(j["plugins"].size(), 2u);
  EXPECT_EQ(j["plugins"][0]["type"], "bridge");
  EXPECT_EQ(j["plugins"][1]["type"], "meshcap-cni");
  EXPECT_EQ(j["plugins"][1]["envoy-port"], "15001");
  EXPECT_TRUE(fs::exists(dir_ / "bin/meshcap-cni"));
  EXPECT_EQ(install_plugin(opts()), "");  // idempotent
}

TEST_F(Conflist, PutBackAfterAnotherComponentRewritesTheFile) {
  const fs::path f = dir_ / "net.d/10-pods.conflist";
  std::ofstream(f) << R"({"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"},{"type":"portmap"}]})";
  install_plugin(opts());
  std::ofstream(f, std::ios::trunc) << R"({"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"}]})";
  EXPECT_NE(install_plugin(opts()), "");
  const json j = read(f);
  EXPECT_EQ(j["plugins"].back()["type"], "meshcap-cni");
  EXPECT_TRUE(uninstall_plugin(opts().conf_dir, opts().bin_dir));
  for (const auto& p : read(f)["plugins"]) EXPECT_NE(p["type"], "meshcap-cni");
  EXPECT_FALSE(fs::exists(dir_ / "bin/meshcap-cni"));
}

TEST_F(Conflist, NoConfigurationIsAnError) { EXPECT_THROW(install_plugin(opts()), std::runtime_error); }

TEST_F(Conflist, TheLocalPluginBesideIsCopiedAndRemovedWithIt) {
  std::ofstream(dir_ / "net.d/10-pods.conflist") << R"({"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"}]})";
  std::ofstream(dir_ / "meshcap-cni-local") << "#!/bin/sh\nlocal\n";
  install_plugin(opts());
  EXPECT_TRUE(fs::exists(dir_ / "bin/meshcap-cni"));
  ASSERT_TRUE(fs::exists(dir_ / "bin/meshcap-cni-local"));
  EXPECT_EQ(fs::file_size(dir_ / "bin/meshcap-cni-local"), fs::file_size(dir_ / "meshcap-cni-local"));
  EXPECT_TRUE(uninstall_plugin(opts().conf_dir, opts().bin_dir));
  EXPECT_FALSE(fs::exists(dir_ / "bin/meshcap-cni"));
  EXPECT_FALSE(fs::exists(dir_ / "bin/meshcap-cni-local"));
}

// meshcap-cni's agent socket, both ends in this process: the agent answers
// with the plugin's own `run`, a request for another pin directory goes
// back to the plugin, and with nothing listening the plugin runs alone.
class AgentSocketTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("meshcap-agent-unit-" + std::to_string(getpid()));
    fs::remove_all(dir_);
    for (const char* v : {"MESHCAP_STATE_DIR", "MESHCAP_PIN_DIR"})
      if (const char* was = std::getenv(v)) saved_[v] = was;
    setenv("MESHCAP_STATE_DIR", (dir_ / "state").c_str(), 1);
    setenv("MESHCAP_PIN_DIR", (dir_ / "pins").c_str(), 1);
  }
  void TearDown() override {
    for (const char* v : {"MESHCAP_STATE_DIR", "MESHCAP_PIN_DIR"})
      if (saved_.count(v)) setenv(v, saved_[v].c_str(), 1); else unsetenv(v);
    fs::remove_all(dir_);
  }
  static std::optional<AgentReply> ask(const Vars& vars, const std::string& in, const std::string& pins) {
    const int fd = connect_agent(agent_socket_path(client_state_root()));
    if (fd < 0) throw std::runtime_error("no agent listening");
    return exchange(fd, vars, in, pins);
  }
  fs::path dir_;
  std::map<std::string, std::string> saved_;
};

TEST_F(AgentSocketTest, ThePluginLooksWhereTheAgentListens) {
  EXPECT_EQ(client_state_root(), state_root());
  EXPECT_EQ(client_pin_root(), loader::pin_root());
  EXPECT_EQ(agent_socket_path(client_state_root()), cni::agent_socket_path());
  unsetenv("MESHCAP_STATE_DIR");
  unsetenv("MESHCAP_PIN_DIR");
  EXPECT_EQ(client_state_root(), state_root());
  EXPECT_EQ(client_pin_root(), loader::pin_root());
}

TEST_F(AgentSocketTest, AnswersAsTheLocalRunWouldAndStopsCleanly) {
  AgentSocket agent;
  agent.start(cni::agent_socket_path());
  EXPECT_EQ(fs::status(cni::agent_socket_path()).permissions() & fs::perms::all, fs::perms::owner_all);
  Vars version = {{"CNI_COMMAND", "VERSION"}};
  const std::vector<std::pair<Vars, std::string>> cases = {
      {version, conf()}, {add_env(), "{not json"}, {add_env(), conf({{"envoy-port", "notaport"}})}};
  for (const auto& [vars, in] : cases) {
    const auto got = ask(vars, in, client_pin_root());
    ASSERT_TRUE(got.has_value());
    const Reply want = run(lookup(vars), in);
    EXPECT_EQ(got->exit_code, want.exit_code);
    EXPECT_EQ(got->stdout_text, want.stdout_text);
  }
  EXPECT_NE(ask(cases[1].first, cases[1].second, client_pin_root())->stdout_text.find("\"code\":6"), std::string::npos);
  EXPECT_EQ(agent.served(), 4u);
  EXPECT_FALSE(ask(version, conf(), "/sys/fs/bpf/another-node").has_value());  // run it yourself
  EXPECT_EQ(agent.served(), 4u);
  agent.stop();
  EXPECT_FALSE(fs::exists(cni::agent_socket_path()));
  EXPECT_LT(connect_agent(agent_socket_path(client_state_root())), 0);
}

// The agent answers `meshcap init` in the form the command sends and in the
// JSON form of an older `meshcap`; a request for another pin directory, or
// to an agent without an init handler, is sent back to run locally.
TEST_F(AgentSocketTest, AnswersAHandedOverInitInBothForms) {
  std::vector<InitRequest> seen;
  AgentSocket agent;
  agent.start(cni::agent_socket_path(), [&seen](const InitRequest& r, int peer) {
    seen.push_back(r);
    return InitAnswer{false, 4, "pid " + std::to_string(peer) + "\n", "error " + r.argv.at(1) + "\n"};
  });
  const char* argv[] = {"meshcap", "init", "--netns", "/run/netns/x"};
  const char* envp[] = {"K=v", nullptr};
  const auto hand_over = [&](const std::string& pins) {
    const int fd = connect_init_agent(client_state_root().c_str());
    if (fd < 0) throw std::runtime_error("no agent listening");
    const int out = memfd_create("out", MFD_CLOEXEC);
    const int rc = hand_over_init(fd, 4, argv, envp, pins.c_str(), out, out);
    std::string text(256, '\0');
    text.resize(static_cast<size_t>(std::max<ssize_t>(0, pread(out, text.data(), text.size(), 0))));
    ::close(out);
    return std::pair{rc, text};
  };
  const auto [rc, text] = hand_over(client_pin_root());
  EXPECT_EQ(rc, 4);
  EXPECT_EQ(text, "pid " + std::to_string(getpid()) + "\nerror --netns\n");
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].argv, (std::vector<std::string>{"init", "--netns", "/run/netns/x"}));
  EXPECT_EQ(seen[0].env, (Vars{{"K", "v"}}));
  EXPECT_EQ(hand_over("/sys/fs/bpf/another-node").first, -1);
  EXPECT_EQ(seen.size(), 1u);

  const int fd = connect_agent(agent_socket_path(client_state_root()));
  ASSERT_GE(fd, 0);
  const json old = {{"init", {{"argv", {"init", "--name", "old"}}, {"env", {{"K", "w"}}}}}, {"pin_dir", client_pin_root()}};
  ASSERT_TRUE(write_message(fd, old.dump()));
  ::shutdown(fd, SHUT_WR);
  std::string answer;
  ASSERT_TRUE(read_message(fd, answer, 5000));
  ::close(fd);
  const json got = json::parse(answer);
  EXPECT_EQ(got.at("exit_code"), 4);
  EXPECT_EQ(got.at("stderr"), "error --name\n");
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1].env, (Vars{{"K", "w"}}));
  agent.stop();
  AgentSocket without_init;
  without_init.start(cni::agent_socket_path());
  EXPECT_EQ(hand_over(client_pin_root()).first, -1);
}

// meshcap-cni's own form (cni/init_handover.h, what the plugin sends from
// its entry point): the agent answers it as it answers the JSON form and as
// the plugin's local run would; only the CNI_* variables travel, and the
// configuration whole; a request for another pin directory goes back to the
// plugin; an answer that is cut is a CNI error (11, try again later) on
// stdout, never a second run.
TEST_F(AgentSocketTest, AnswersThePluginsOwnFormAsTheJsonForm) {
  AgentSocket agent;
  agent.start(cni::agent_socket_path());
  struct Run {
    int rc;
    std::string out;
  };
  const auto envp_of = [](const Vars& vars, std::vector<std::string>& keep) {
    keep = {"UNRELATED=1"};
    for (const auto& [k, v] : vars) keep.push_back(k + "=" + v);
    std::vector<const char*> envp;
    for (const auto& e : keep) envp.push_back(e.c_str());
    envp.push_back(nullptr);
    return envp;
  };
  const auto hand_over = [&](int fd, const Vars& vars, const std::string& in, const std::string& pins) {
    std::vector<std::string> keep;
    const auto envp = envp_of(vars, keep);
    const int out = memfd_create("out", MFD_CLOEXEC);
    Run r{hand_over_cni(fd, envp.data(), in.data(), in.size(), pins.c_str(), out), std::string(4096, '\0')};
    r.out.resize(static_cast<size_t>(std::max<ssize_t>(0, pread(out, r.out.data(), r.out.size(), 0))));
    ::close(out);
    return r;
  };
  const auto to_agent = [&](const Vars& vars, const std::string& in, const std::string& pins) {
    const int fd = connect_init_agent(client_state_root().c_str());
    if (fd < 0) throw std::runtime_error("no agent listening");
    return hand_over(fd, vars, in, pins);
  };
  Vars version = {{"CNI_COMMAND", "VERSION"}};
  const std::vector<std::pair<Vars, std::string>> cases = {
      {version, conf()}, {add_env(), "{not json"}, {add_env(), conf({{"envoy-port", "notaport"}})}};
  for (const auto& [vars, in] : cases) {
    const Run got = to_agent(vars, in, client_pin_root());
    const Reply want = run(lookup(vars), in);
    EXPECT_EQ(got.rc, want.exit_code) << in;
    EXPECT_EQ(got.out, want.stdout_text) << in;
    EXPECT_EQ(got.out, ask(vars, in, client_pin_root())->stdout_text) << in;
  }
  EXPECT_EQ(agent.served(), 6u);
  EXPECT_EQ(to_agent(version, conf(), "/sys/fs/bpf/another-node").rc, -1);
  EXPECT_EQ(agent.served(), 6u);
  agent.stop();

  // What travels, and a cut answer, against a stand-in at the other end.
  const std::string big = conf({{"pad", std::string(100'000, 'p')}});
  Vars all = add_env();  // every variable the plugin forwards, and no other
  all["CNI_PATH"] = "/opt/cni/bin";
  ASSERT_EQ(all.size(), std::size(kCniForwarded));
  for (const char* name : kCniForwarded) EXPECT_TRUE(all.count(name)) << name;
  for (const std::string& answer : {std::string(kCniMagic, sizeof kCniMagic) + std::string("exit\0" "0\0" "10\0", 10) + "abc",
                                   std::string(kCniMagic, sizeof kCniMagic) + std::string("exit\0", 5)}) {
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    std::optional<CniRequest> seen;
    std::thread stand_in([&] {
      std::string text;
      read_message(sv[1], text, 5000);
      seen = parse_cni_request(text);
      write_message(sv[1], answer);
      ::close(sv[1]);
    });
    const Run r = hand_over(sv[0], all, big, "/sys/fs/bpf/p");
    stand_in.join();
    EXPECT_EQ(r.rc, 1);
    const json error = json::parse(r.out, nullptr, false);
    ASSERT_TRUE(error.is_object()) << r.out;
    EXPECT_EQ(error.value("code", 0), 11);
    EXPECT_NE(error.value("details", "").find("malformed answer"), std::string::npos) << r.out;  // and nothing else
    ASSERT_TRUE(seen.has_value());
    EXPECT_EQ(seen->env, all);  // UNRELATED stays behind
    EXPECT_EQ(seen->stdin_text, big);
    EXPECT_EQ(seen->pin_dir, "/sys/fs/bpf/p");
  }
}

// `meshcap init`'s hand-over to the agent (agent/forward.h,
// cni/init_handover.h): the request carries the command line and the
// environment byte for byte as the agent reads them (of a name set twice
// the first, entries without '=' left out), and the answer comes back as
// printed, however it is cut; an answer that is not whole is an error.
TEST(InitHandOver, CarriesTheCommandLineAndEnvironmentAndPrintsTheAnswer) {
  const std::string big(100'000, 'v');
  const std::string big_env = "BIG=" + big;
  const char* argv[] = {"/usr/sbin/meshcap", "init", "--name", "a\"b\\c", "", "-i", "10.0.0.0/8,\n", "bad\xff"};
  const int argc = sizeof argv / sizeof *argv;
  const char* envp[] = {"A=1", "B=two=parts", "A=shadowed", "NOEQUALS", "C=", big_env.c_str(), nullptr};
  struct Run {
    int rc;
    std::string out, err;
    std::optional<InitRequest> request;
  };
  const auto hand_over = [&](const std::string& answer) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw std::runtime_error("socketpair");
    Run r;
    std::thread agent([&] {
      std::string text;
      read_message(sv[1], text, 5000);
      r.request = parse_init_request(text);
      write_message(sv[1], answer);
      ::close(sv[1]);
    });
    const int out = memfd_create("out", MFD_CLOEXEC), err = memfd_create("err", MFD_CLOEXEC);
    r.rc = hand_over_init(sv[0], argc, argv, envp, "/sys/fs/bpf/p\"ins", out, err);
    agent.join();
    for (auto [fd, text] : {std::pair{out, &r.out}, std::pair{err, &r.err}}) {
      char buf[65536];
      ssize_t n;
      lseek(fd, 0, SEEK_SET);
      while ((n = ::read(fd, buf, sizeof buf)) > 0) text->append(buf, static_cast<size_t>(n));
      ::close(fd);
    }
    return r;
  };
  const std::string long_err(70'000, 'e');
  auto r = hand_over(init_answer_text({false, 3, "out\n", "error x\n" + long_err}));
  EXPECT_EQ(r.rc, 3);
  EXPECT_EQ(r.out, "out\n");
  EXPECT_EQ(r.err, "error x\n" + long_err);
  ASSERT_TRUE(r.request.has_value());
  EXPECT_EQ(r.request->argv, std::vector<std::string>(argv + 1, argv + argc));
  const Vars want_env = {{"A", "1"}, {"B", "two=parts"}, {"C", ""}, {"BIG", big}};
  EXPECT_EQ(r.request->env, want_env);
  EXPECT_EQ(r.request->pin_dir, "/sys/fs/bpf/p\"ins");

  r = hand_over(init_answer_text(run_locally()));  // run it yourself
  EXPECT_EQ(r.rc, -1);
  EXPECT_EQ(r.out + r.err, "");
  // Taken and not answered in full: an error, never a second run.
  const std::string magic("meshcap-init/1\0", 15);
  const std::vector<std::pair<std::string, std::string>> broken = {
      {"", "(no answer)"},
      {R"({"exit_code":0})", "(malformed answer (not meshcap-init/1))"},
      {magic + "exit", "(malformed answer (it ends in its header))"},
      {magic + std::string("maybe\0", 6), "(malformed answer (neither local nor exit))"},
      {magic + std::string("exit\0x\0" "0\0", 9), "(malformed answer (no exit code and stdout length))"},
      {magic + std::string("exit\0" "256\0" "0\0", 11), "(malformed answer (no exit code and stdout length))"},
      {magic + std::string("exit\0" "0\0" "10\0", 10) + "abc", "(malformed answer (it ends before its stdout))"},
  };
  for (const auto& [answer, why] : broken) {
    r = hand_over(answer);
    EXPECT_EQ(r.rc, 1) << why;
    EXPECT_NE(r.err.find("did not answer " + why), std::string::npos) << r.err;
  }
}

TEST(InitHandOver, TheAgentRefusesARequestThatIsNotWellFormed) {
  const std::string magic("meshcap-init/1\0", 15);
  EXPECT_TRUE(parse_init_request(magic + std::string("/p\0" "0\0", 5)).has_value());
  EXPECT_FALSE(parse_init_request(magic + std::string("/p\0" "0", 4)).has_value());    // unterminated
  EXPECT_FALSE(parse_init_request(magic + std::string("/p\0" "2\0a\0", 7)).has_value());  // fewer args than said
  EXPECT_FALSE(parse_init_request(magic + std::string("/p\0" "-1\0", 6)).has_value());
  EXPECT_FALSE(parse_init_request(std::string("meshcap-init/2\0/p\0" "0\0", 20)).has_value());
  EXPECT_FALSE(parse_init_request("").has_value());
  // meshcap-cni's form: the configuration after the variables, whatever it holds.
  const std::string cni(kCniMagic, sizeof kCniMagic);
  const auto r = parse_cni_request(cni + std::string("/p\0" "1\0" "CNI_COMMAND=ADD\0" "{\0}", 24));
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->env, (Vars{{"CNI_COMMAND", "ADD"}}));
  EXPECT_EQ(r->stdin_text, std::string("{\0}", 3));
  EXPECT_TRUE(parse_cni_request(cni + std::string("/p\0" "0\0", 5)).has_value());  // no configuration
  EXPECT_FALSE(parse_cni_request(cni + std::string("/p\0" "2\0" "CNI_COMMAND=ADD\0", 21)).has_value());  // fewer
  EXPECT_FALSE(parse_cni_request(cni + std::string("/p\0" "1\0" "CNI_COMMAND\0", 17)).has_value());  // no '='
  EXPECT_FALSE(parse_cni_request(cni + std::string("/p\0" "x\0", 5)).has_value());
  EXPECT_FALSE(parse_cni_request(cni + std::string("/p", 2)).has_value());
  EXPECT_FALSE(parse_cni_request(magic + std::string("/p\0" "0\0", 5)).has_value());  // meshcap init's
}
