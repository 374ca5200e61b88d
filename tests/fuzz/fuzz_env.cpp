// libFuzzer target: build_capture_config with no flags and a fake
// environment read from the input ("NAME=VALUE" per line), as istio-init
// containers get their settings (ISTIO_SERVICE_CIDR, PROXY_UID, ...).
#include <sys/socket.h>

#include <map>

#include "fuzz_common.h"
#include "istio_flags.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace meshcap;
  if (size > 4096) return 0;
  std::map<std::string, std::string> vars;
  for (const auto& line : fuzz::split(fuzz::as_string(data, size), '\n', 64)) {
    auto eq = line.find('=');
    if (eq != std::string::npos) vars[line.substr(0, eq)] = line.substr(eq + 1);
  }
  EnvLookup env = [&vars](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
  try {
    // A resolv.conf that does not exist: DNS servers come from the input
    // or the configuration is refused.
    CaptureConfig c = build_capture_config(IstioFlagValues{}, env, "/nonexistent/meshcap-fuzz/resolv.conf");
    FUZZ_CHECK(c.proxy_port != 0 && c.inbound_capture_port != 0);
    FUZZ_CHECK(c.owner_groups.tokens.size() == c.owner_groups.ids.size());
    FUZZ_CHECK(c.ipv4_loopback_cidr.family == AF_INET && c.ipv4_loopback_cidr.is_loopback());
  } catch (const UsageError&) {
  }
  return 0;
}
