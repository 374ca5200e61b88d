// meshcap-cni without a kernel: the environment and configuration parsers,
// the CNI error JSON, exclusion, and the conflist installer on files in a
// temporary directory. Every refusal here happens before anything is
// touched, so these run unprivileged.
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

// `meshcap init`'s hand-over to the agent (agent/forward.h): the request
// carries the command line and the environment as the agent reads them
// (strings escaped, of a name set twice the first, entries without '='
// left out), and the answer comes back as printed.
TEST(AgentClient, AnInitRequestCarriesTheCommandLineAndEnvironmentAsTheAgentReadsThem) {
  const std::vector<std::string> args = {"init", "--name", "a\"b\\c", "-i", "10.0.0.0/8,\n", "caf\xc3\xa9", "bad\xff"};
  const char* envp[] = {"A=1", "B=two=parts", "A=shadowed", "NOEQUALS", "C=", "ISTIO_X=\t\"q\"", nullptr};
  const auto exchange_with = [&](const std::string& answer, json* request) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw std::runtime_error("socketpair");
    std::string text;
    std::thread agent([&] {
      read_message(sv[1], text, 5000);
      write_message(sv[1], answer);
      ::close(sv[1]);
    });
    auto reply = exchange_init(sv[0], args, envp, "/sys/fs/bpf/p\"ins");
    agent.join();
    *request = json::parse(text);
    return reply;
  };
  json request;
  const auto reply = exchange_with(R"({"exit_code":3,"stdout":"out","stderr":"error x\n"})", &request);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->exit_code, 3);
  EXPECT_EQ(reply->stdout_text, "out");
  EXPECT_EQ(reply->stderr_text, "error x\n");
  std::vector<std::string> want_args = args;
  want_args.back() = "bad\xef\xbf\xbd";  // not UTF-8: the replacement character, as every JSON the agent sends
  EXPECT_EQ(request.at("init").at("argv").get<std::vector<std::string>>(), want_args);
  const Vars want_env = {{"A", "1"}, {"B", "two=parts"}, {"C", ""}, {"ISTIO_X", "\t\"q\""}};
  EXPECT_EQ(request.at("init").at("env").get<Vars>(), want_env);
  EXPECT_EQ(request.at("pin_dir"), "/sys/fs/bpf/p\"ins");
  EXPECT_EQ(request.size(), 2u);

  EXPECT_FALSE(exchange_with(R"({"local":true})", &request).has_value());  // run it yourself
  const auto broken = exchange_with("{\"exit_code\":", &request);
  ASSERT_TRUE(broken.has_value());  // taken and not answered: an error, never a second run
  EXPECT_EQ(broken->exit_code, 1);
  EXPECT_NE(broken->stderr_text.find("did not answer"), std::string::npos) << broken->stderr_text;
}
