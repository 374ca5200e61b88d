// Shared by the libFuzzer targets: turning fuzz input into strings, and the
// one rule every target enforces — a parser may reject input only by
// throwing meshcap::UsageError. Anything else (another exception, a crash, a
// sanitizer report, a broken invariant) ends the run with a crash report.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "capture_config.h"

namespace meshcap::fuzz {

/// The whole input as one string (NUL bytes kept).
inline std::string as_string(const uint8_t* data, size_t size) {
  return std::string(reinterpret_cast<const char*>(data), size);
}

/// Splits on `sep`, keeping empty pieces; at most `max` pieces (the rest
/// stays in the last one).
inline std::vector<std::string> split(const std::string& s, char sep, size_t max) {
  std::vector<std::string> out;
  size_t start = 0;
  while (out.size() + 1 < max) {
    size_t p = s.find(sep, start);
    if (p == std::string::npos) break;
    out.push_back(s.substr(start, p - start));
    start = p + 1;
  }
  out.push_back(s.substr(start));
  return out;
}

/// A broken invariant: crash so that libFuzzer keeps the input.
[[noreturn]] inline void invariant_failed() { __builtin_trap(); }
#define FUZZ_CHECK(cond)                                  \
  do {                                                    \
    if (!(cond)) ::meshcap::fuzz::invariant_failed();     \
  } while (0)

}  // namespace meshcap::fuzz
