// Number formatting shared by the report, the targets and the plots.
#pragma once

#include <cmath>
#include <cstdio>
#include <string>

#include "results.h"

namespace meshcap::bench {

inline std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

/// Three significant figures or so: 0.123, 12.3, 123.
inline std::string num(double v) {
  if (v == 0) return "0";
  if (std::fabs(v) >= 100) return fmt("%.0f", v);
  if (std::fabs(v) >= 10) return fmt("%.1f", v);
  return fmt("%.2f", v);
}

inline std::string ratio(double a, double b) { return b > 0 && a > 0 ? fmt("%.2fx", a / b) : "-"; }

inline const InitRecord* find_init(const Results& r, const std::string& cap, size_t n) {
  for (const auto& i : r.init)
    if (i.capture == cap && i.exclusions == n) return &i;
  return nullptr;
}

}  // namespace meshcap::bench
