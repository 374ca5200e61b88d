// meshcap-cni, the binary the container runtime executes. When `meshcap
// node serve` listens on its socket, the command is sent there and its
// answer printed (init_handover.h: on x86-64 from the entry point, before
// the C library starts, shim_start.cpp), so a pod's ADD pays little more
// than a process start. Without an agent, and for VERSION and the
// installer's commands, it executes meshcap-cni-local beside it, which does
// the work itself.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "init_handover.h"

namespace {

// Runs meshcap-cni-local, beside this binary, in this process's place.
[[noreturn]] void run_locally(char** argv) {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  const std::string self = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "meshcap-cni";
  const auto slash = self.rfind('/');
  const std::string path = (slash == std::string::npos ? std::string() : self.substr(0, slash + 1)) + "meshcap-cni-local";
  execv(path.c_str(), argv);
  std::fprintf(stderr, "meshcap-cni: cannot execute %s: %s\n", path.c_str(), std::strerror(errno));
  std::exit(1);
}

}  // namespace

int main(int argc, char** argv) {
  // On x86-64 the entry point asked the agent already, and this gives -1 at
  // once: nothing to hand over, or no agent listening. Elsewhere it asks
  // here; a command the agent sends back it runs in meshcap-cni-local itself.
  if (const int rc = meshcap::cni::hand_cni_over_if_asked(argc, argv, environ); rc >= 0) return rc;
  run_locally(argv);
}
