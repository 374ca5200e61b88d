// `meshcap init` answered by the node's agent. With `meshcap node serve`
// running, a pod's enrolment needs no process of its own beyond the one
// that asks: `meshcap init` hands its command line and environment to the
// agent over meshcap-cni's socket (cni/init_handover.h) before it parses
// anything -- on x86-64 before even the C library starts (start.cpp) --
// and prints what the agent answers. The agent runs the same
// run_init, with the node data path's state read and its kernel features
// probed already, and sends back the exit code and the log lines the
// command would have printed.
//
// A command is answered by the agent only when nothing in it depends on
// the caller's process: the network namespace is named by an absolute path
// or a /run/netns name (not the caller's own), no list is read from a file
// or stdin, the caller shares the agent's mount namespace and user, and
// there is no --dry-run, --run-validation, or --cgroup-less per-pod plan
// (no node data path). Anything else runs in the caller's process, as
// before, and so does everything when no agent listens or when
// MESHCAP_NO_AGENT is set.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <spdlog/sinks/sink.h>

#include "commands.h"
#include "init_handover.h"

namespace meshcap {

/// A forwarded command line, parsed as `meshcap init` parses it.
struct ParsedInit {
  InitOptions options;
  std::string log_level = "info";
};
/// Parses `args` (from "init" on); nullopt when they do not parse or ask
/// for help (the caller then runs the command and prints the error).
using InitParser = std::function<std::optional<ParsedInit>(const std::vector<std::string>& args)>;

/// The agent's side: one request from process `peer`. Never throws.
cni::InitAnswer answer_init(const cni::InitRequest& request, pid_t peer, const InitParser& parse);

/// The sink of meshcap's logger: stderr, except on a thread that answers a
/// forwarded init, whose records go to that request's answer instead.
std::shared_ptr<spdlog::sinks::sink> stderr_sink();

}  // namespace meshcap
