// libFuzzer target: istio-iptables' whole command line (parse_capture_args),
// one argument per input line, with an empty environment.
#include "fuzz_common.h"
#include "istio_flags.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace meshcap;
  if (size > 4096) return 0;
  std::vector<std::string> args = fuzz::split(fuzz::as_string(data, size), '\n', 64);
  if (args.size() == 1 && args[0].empty()) args.clear();
  EnvLookup no_env = [](const std::string&) -> std::optional<std::string> { return std::nullopt; };
  try {
    CaptureConfig c = parse_capture_args(args, no_env);
    // What the renderers rely on.
    FUZZ_CHECK(c.proxy_port != 0 && c.inbound_capture_port != 0 && c.inbound_tunnel_port != 0);
    FUZZ_CHECK(!c.proxy_uids.empty() && !c.proxy_gids.empty());
    FUZZ_CHECK(c.proxy_uids.tokens.size() == c.proxy_uids.ids.size());
    FUZZ_CHECK(c.force_iptables_binary.empty() || c.force_iptables_binary == "nft" ||
               c.force_iptables_binary == "legacy");
    FUZZ_CHECK(!c.outbound_ranges_exclude.wildcard);
  } catch (const UsageError&) {
  }
  return 0;
}
