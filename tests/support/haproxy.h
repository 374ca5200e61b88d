// A real sidecar proxy for e2e tests: haproxy 2.6 configured as in the
// field notes (outbound 127.0.0.1:15001 recovering SO_ORIGINAL_DST through
// `server orig 0.0.0.0`, inbound 0.0.0.0:15006 from 127.0.0.6), running as
// UID/GID 1337 inside the pod's cgroup and netns.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

#include "support/test_pod.h"

namespace meshcap::test {

struct HaproxyOptions {
  std::string outbound_bind = "127.0.0.1:15001";  ///< IPv4 only: haproxy does
                                                  ///< not ask for the IPv6 original dst
  std::string inbound_bind = "0.0.0.0:15006";     ///< "" = no inbound listener
  std::string inbound_source = "127.0.0.6";
  int maxconn = 4000;  ///< keep <= 4000 as non-root unless the fd limit is raised
  std::chrono::seconds timeout_connect{5};
  std::chrono::seconds timeout_client{30};
  std::chrono::seconds timeout_server{30};
  std::vector<std::string> extra_global;    ///< extra lines for `global`
  std::vector<std::string> extra_defaults;  ///< extra lines for `defaults`
};

/// The configuration text.
std::string haproxy_config_text(const HaproxyOptions& options = {});

/// Writes the configuration to a new file in pod.scratch_dir() (removed with
/// the pod) and returns its path.
std::string haproxy_config(const TestPod& pod, const HaproxyOptions& options = {});

struct HaproxyProcess {
  pid_t pid = -1;
  std::string config_path;
  std::string log_path;  ///< haproxy's stdout and stderr
};

/// Starts `haproxy -db -f cfg_path` in the pod as UID/GID 1337 with no
/// supplementary groups (what `setpriv --reuid=1337 --regid=1337
/// --clear-groups` does) and waits until every `bind` address of the config
/// is listening in the pod's namespace. Throws TestSupportError with the
/// haproxy log if it exits or does not listen in time. The pod kills it.
HaproxyProcess start_haproxy(TestPod& pod, const std::string& cfg_path,
                             std::chrono::milliseconds timeout = std::chrono::milliseconds(10000));

/// True when a TCP socket in pid's network namespace listens on ip:port
/// (from /proc/PID/net/tcp and tcp6; "0.0.0.0" and "::" match only a
/// wildcard listener).
bool is_listening(pid_t pid, const std::string& ip, uint16_t port);

}  // namespace meshcap::test
