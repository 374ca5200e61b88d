// libFuzzer target: parse_cidr_list (-i -x) and parse_cidr. The first byte
// chooses whether '*' is allowed. Every prefix accepted must print (str())
// as text that parses back to the same prefix.
#include <sys/socket.h>

#include "fuzz_common.h"

namespace {
void check_cidr(const meshcap::Cidr& c) {
  FUZZ_CHECK(c.family == AF_INET || c.family == AF_INET6);
  FUZZ_CHECK(c.prefix_len <= (c.family == AF_INET ? 32 : 128));
  meshcap::Cidr back = meshcap::parse_cidr(c.str(), "round trip");  // must not throw
  FUZZ_CHECK(back.family == c.family && back.addr == c.addr && back.prefix_len == c.prefix_len);
  (void)c.is_loopback();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace meshcap;
  if (size == 0 || size > 4096) return 0;
  const bool wildcard = data[0] & 1;
  const std::string text = fuzz::as_string(data + 1, size - 1);
  try {
    CidrList l = parse_cidr_list(text, "-i", wildcard);
    FUZZ_CHECK(!l.wildcard || wildcard);
    for (const auto& c : l.v4) {
      FUZZ_CHECK(c.family == AF_INET);
      check_cidr(c);
    }
    for (const auto& c : l.v6) {
      FUZZ_CHECK(c.family == AF_INET6);
      check_cidr(c);
    }
  } catch (const UsageError&) {
  }
  try {
    check_cidr(parse_cidr(text, "-x"));
  } catch (const UsageError&) {
  }
  return 0;
}
