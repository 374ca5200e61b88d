// libFuzzer target: parse_interface_list (-c -k).
#include <cctype>

#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace meshcap;
  if (size > 4096) return 0;
  const std::string text = fuzz::as_string(data, size);
  try {
    for (const auto& name : parse_interface_list(text, "-c")) {
      // What the kernel accepts as a name (dev_valid_name), and no '*'.
      FUZZ_CHECK(!name.empty() && name.size() <= 15 && name != "." && name != "..");
      for (unsigned char ch : name) FUZZ_CHECK(ch != '/' && ch != ':' && ch != '*' && !std::isspace(ch) && ch);
    }
  } catch (const UsageError&) {
  }
  return 0;
}
