// The test-pod harness in one include: TestPod, namespace threads, socket
// helpers and servers, haproxy, and the gtest skip macros.
#pragma once

#include "support/common.h"
#include "support/gtest_helpers.h"
#include "support/haproxy.h"
#include "support/netns.h"
#include "support/sockets.h"
#include "support/test_pod.h"
