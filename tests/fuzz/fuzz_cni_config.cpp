// libFuzzer target: meshcap-cni's configuration parser. The first line of
// the input is CNI_ARGS, the rest the network configuration on stdin. The
// parser may refuse input only with a CniError whose code is one the CNI
// spec or meshcap-cni defines, and that error must always turn into JSON
// (whatever bytes the input held); what it accepts must build a capture
// configuration.
#include "cni_config.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace meshcap;
  using namespace meshcap::cni;
  if (size > 4096) return 0;
  const std::string in = fuzz::as_string(data, size);
  const auto nl = in.find('\n');
  const std::string args = nl == std::string::npos ? "" : in.substr(0, nl);
  const std::string config = nl == std::string::npos ? in : in.substr(nl + 1);
  auto getenv = [&args](const std::string& k) -> std::optional<std::string> {
    if (k == "CNI_COMMAND") return "ADD";
    if (k == "CNI_CONTAINERID") return "fuzz";
    if (k == "CNI_NETNS") return "/nonexistent/netns";
    if (k == "CNI_IFNAME") return "eth0";
    if (k == "CNI_ARGS") return args;
    return std::nullopt;
  };
  try {
    const CniEnv env = read_env(getenv);
    const PluginConfig c = parse_config(config, env);
    const CaptureConfig cfg = FlagSet::resolve(c.flags, [](const std::string&) { return std::nullopt; }).build();
    FUZZ_CHECK(cfg.proxy_port != 0 && cfg.inbound_capture_port != 0);
    (void)excluded(c, env);
  } catch (const CniError& e) {
    FUZZ_CHECK(e.code() == kIncompatibleVersion || e.code() == kDecodeFailure || e.code() == kInvalidEnv ||
               e.code() == kInvalidConfig);
    const std::string out = e.to_json("1.0.0").dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    FUZZ_CHECK(!out.empty());
  }
  return 0;
}
