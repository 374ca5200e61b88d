// libFuzzer target: parse_port_list (-b -d -q -o) and parse_port (-p -z -e).
// The first byte chooses whether '*' is allowed.
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace meshcap;
  if (size == 0 || size > 4096) return 0;
  const bool wildcard = data[0] & 1;
  const std::string text = fuzz::as_string(data + 1, size - 1);
  try {
    PortList l = parse_port_list(text, "-b", wildcard);
    FUZZ_CHECK(!l.wildcard || (wildcard && l.ports.empty()));
    FUZZ_CHECK(l.tokens.size() == l.ports.size());
    for (size_t i = 0; i < l.ports.size(); i++) {
      FUZZ_CHECK(l.ports[i] != 0);
      FUZZ_CHECK(std::to_string(l.ports[i]) == l.tokens[i]);  // canonical decimal only
    }
  } catch (const UsageError&) {
  }
  try {
    uint16_t p = parse_port(text, "-p");
    FUZZ_CHECK(p != 0 && std::to_string(p) == text);
  } catch (const UsageError&) {
  }
  return 0;
}
