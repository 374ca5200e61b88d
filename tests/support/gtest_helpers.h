// gtest helpers for tests that need root or system tools.
#pragma once

#include <unistd.h>

#include <gtest/gtest.h>

#include "support/common.h"

/// Skips the current test with a clear reason unless running as root
/// (network namespaces, cgroups and BPF need it). CI runs as root.
#define MESHCAP_REQUIRE_ROOT()                                                          \
  do {                                                                                  \
    if (::geteuid() != 0) {                                                             \
      GTEST_SKIP() << "needs root: creates network namespaces and cgroups and loads "   \
                      "BPF programs (euid is "                                          \
                   << ::geteuid() << "); CI runs the kernel and e2e tests as root";     \
    }                                                                                   \
  } while (0)

/// Skips the current test unless the named executable is installed.
#define MESHCAP_REQUIRE_BINARY(name)                                                    \
  do {                                                                                  \
    if (!::meshcap::test::have_binary(name)) {                                          \
      GTEST_SKIP() << "needs `" << (name)                                               \
                   << "`, which is not installed (scripts/install-deps.sh installs it)"; \
    }                                                                                   \
  } while (0)
