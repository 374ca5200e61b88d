// libFuzzer target: parse_id_list (-u -g, owner groups). The first byte
// chooses users or groups.
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace meshcap;
  if (size == 0 || size > 4096) return 0;
  const bool group = data[0] & 1;
  const std::string text = fuzz::as_string(data + 1, size - 1);
  try {
    IdList l = parse_id_list(text, group ? "-g" : "-u", group);
    FUZZ_CHECK(l.tokens.size() == l.ids.size());
    for (size_t i = 0; i < l.tokens.size(); i++) {
      FUZZ_CHECK(!l.tokens[i].empty());
      // A number is always resolved, to itself, and never to 2^32-1 (-1).
      if (l.tokens[i].find_first_not_of("0123456789") == std::string::npos) {
        FUZZ_CHECK(l.ids[i].has_value() && *l.ids[i] != 0xffffffffu);
        FUZZ_CHECK(std::stoull(l.tokens[i]) == *l.ids[i]);
      }
    }
  } catch (const UsageError&) {
  }
  return 0;
}
