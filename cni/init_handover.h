// `meshcap init` handed to the node's agent over meshcap-cni's socket
// (agent/forward.h says when and why). The caller's side runs before the
// C library of `meshcap` has started (agent/start.cpp), so its wire form
// needs no parser on that side: NUL-terminated fields, as /proc/PID/cmdline
// and /proc/PID/environ are written.
//
//   request: "meshcap-init/1" pin_dir N arg_1 ... arg_N env_1 env_2 ...
//            (each field followed by a NUL; args from "init" on; the
//            caller's NAME=VALUE environment to the end; then the caller
//            shuts its side down)
//   answer:  "meshcap-init/1" "local"            (the caller runs it)
//            "meshcap-init/1" "exit" CODE LEN    (each followed by a NUL)
//            then LEN bytes for stdout and the rest, to the end, for stderr
//
// An agent also answers the earlier JSON form ({"init": {"argv", "env"},
// "pin_dir"}, agent_client.h) for a `meshcap` older than it.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace meshcap::cni {

/// The first field of a request and of an answer (sent with its NUL).
inline constexpr char kInitMagic[] = "meshcap-init/1";
/// The same for a CNI command handed over by `meshcap-cni` (below).
inline constexpr char kCniMagic[] = "meshcap-cni/1";
/// The CNI_* variables a CNI command's request carries.
inline constexpr const char* kCniForwarded[] = {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS",
                                                "CNI_IFNAME",  "CNI_ARGS",        "CNI_PATH"};

/// A handed-over `meshcap init`, as the agent reads it.
struct InitRequest {
  std::vector<std::string> argv;           // from "init" on
  std::map<std::string, std::string> env;  // of a name set twice the first, as getenv() takes it
  std::string pin_dir;                     // the pin directory the caller would use
};

/// The agent's answer: run it yourself (`local`), or what to print and
/// exit with.
struct InitAnswer {
  bool local = false;
  int exit_code = 0;
  std::string stdout_text, stderr_text;
};
/// The answer that sends a command back to its caller.
inline InitAnswer run_locally() { return {true, 0, {}, {}}; }

/// Whether `text` is a request in this form (not JSON).
bool is_init_request(std::string_view text);
/// The request in `text`; nullopt when it is not well formed.
std::optional<InitRequest> parse_init_request(std::string_view text);
/// The wire form of an answer (to a request of form `magic`).
std::string init_answer_text(const InitAnswer& answer, const char* magic = kInitMagic);

// A CNI command handed over by `meshcap-cni` (cni/shim.cpp) in the same
// way, from its entry point on x86-64 (cni/shim_start.cpp):
//
//   request: "meshcap-cni/1" pin_dir N env_1 ... env_N (each followed by a
//            NUL; the variables of kCniForwarded the caller has,
//            NAME=VALUE), then the
//            runtime's configuration (the plugin's stdin) to the end
//   answer:  as meshcap init's, with "meshcap-cni/1" first; stderr is empty

/// A handed-over CNI command, as the agent reads it.
struct CniRequest {
  std::map<std::string, std::string> env;
  std::string stdin_text;
  std::string pin_dir;
};
/// Whether `text` is a request of that form.
bool is_cni_request(std::string_view text);
/// The request in `text`; nullopt when it is not well formed.
std::optional<CniRequest> parse_cni_request(std::string_view text);

// The caller's side (init_handover_client.cpp) makes its system calls
// itself and uses nothing of the C library: on x86-64 it runs at the entry
// point of `meshcap`, before the C library has started (agent/start.cpp).

/// `meshcap init` handed to the agent when this process is one, as
/// `meshcap`'s entry point (or, where there is none of ours, its first
/// initialiser) calls it with the process's arguments and environment:
/// argv[1] is "init", argv[0] is not the istio-iptables personality, none
/// of -h, --help, -n, --dry-run is given, MESHCAP_NO_AGENT and
/// MESHCAP_FAULT_AT are unset, and an agent listens at
/// `$MESHCAP_STATE_DIR/cni.sock` (default /run/meshcap). The exit code when
/// the agent answered (its stdout and stderr printed), -1 to run the
/// command here. Asks at most once per process: later calls give -1.
int hand_over_if_asked(int argc, const char* const* argv, const char* const* envp) noexcept;

/// Connects to `<state_dir>/cni.sock`; -1 when no agent listens there.
int connect_init_agent(const char* state_dir) noexcept;

/// The plugin's side: sends the CNI_* variables of `envp` and the
/// configuration `in` (`in_len` bytes) over `fd` (closed here) and writes
/// the answer's stdout to `out_fd`. The exit code, or -1 when the agent
/// asks the plugin to run the command itself. An agent that took the
/// request and did not answer it in full gives 1 and a CNI error (code 11,
/// try again later) on `out_fd`, never a local re-run.
int hand_over_cni(int fd, const char* const* envp, const char* in, size_t in_len, const char* pin_dir,
                  int out_fd) noexcept;

/// `meshcap-cni` as the runtime executes it, from its entry point: a
/// command (CNI_COMMAND set, not VERSION, no arguments) is handed to the
/// agent listening at `$MESHCAP_STATE_DIR/cni.sock` and the process exits
/// with its answer; one the agent sends back runs in meshcap-cni-local
/// beside this binary, the configuration passed on as its stdin. -1, with
/// stdin untouched, when there is nothing to hand over or no agent listens
/// (the plugin's main() then does what it always did).
int hand_cni_over_if_asked(int argc, const char* const* argv, const char* const* envp) noexcept;

/// Sends `argv[1..argc)` (from "init" on) and `envp` over `fd` (closed
/// here) and writes the answer's stdout to `out_fd` and its stderr to
/// `err_fd` as it arrives. The exit code, or -1 when the agent asks the
/// caller to run the command itself. An agent that took the request and did
/// not answer it in full gives 1 and the reason on `err_fd`, never a second
/// run.
int hand_over_init(int fd, int argc, const char* const* argv, const char* const* envp, const char* pin_dir,
                   int out_fd, int err_fd) noexcept;

}  // namespace meshcap::cni
