// meshcap-cni, the binary the container runtime executes. When `meshcap
// node serve` listens on its socket, the command is sent there and its
// answer printed (agent_client.h); this binary links nothing but the C++
// runtime, statically, so a pod's ADD pays little more than a process
// start. Without an agent, and for VERSION and the installer's commands,
// it executes meshcap-cni-local beside it, which does the work itself.
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>

#include "agent_client.h"

namespace {

std::string local_plugin() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  std::string self = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "meshcap-cni";
  const auto slash = self.rfind('/');
  return (slash == std::string::npos ? std::string() : self.substr(0, slash + 1)) + "meshcap-cni-local";
}

// Runs meshcap-cni-local in this process's place, with `stdin_text` as its
// stdin when this process read it already.
[[noreturn]] void run_locally(char** argv, const std::string* stdin_text) {
  if (stdin_text != nullptr) {
    const int fd = memfd_create("meshcap-cni-stdin", 0);
    if (fd < 0 || write(fd, stdin_text->data(), stdin_text->size()) != static_cast<ssize_t>(stdin_text->size()) ||
        lseek(fd, 0, SEEK_SET) != 0 || dup2(fd, 0) != 0) {
      std::perror("meshcap-cni: passing stdin on");
      std::exit(1);
    }
    close(fd);
  }
  const std::string path = local_plugin();
  execv(path.c_str(), argv);
  std::fprintf(stderr, "meshcap-cni: cannot execute %s: %s\n", path.c_str(), std::strerror(errno));
  std::exit(1);
}

// All of stdin (the runtime's configuration), with read(2): without
// iostreams the process never builds their locale facets.
std::string read_stdin() {
  std::string in;
  char buf[16384];
  for (;;) {
    const ssize_t n = read(0, buf, sizeof buf);
    if (n > 0) {
      in.append(buf, static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      return in;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  using namespace meshcap::cni;
  const char* command = std::getenv("CNI_COMMAND");
  if (argc > 1 || command == nullptr || std::strcmp(command, "VERSION") == 0) run_locally(argv, nullptr);
  const int fd = connect_agent(agent_socket_path(client_state_root()));
  if (fd < 0) run_locally(argv, nullptr);
  const std::string in = read_stdin();
  std::map<std::string, std::string> env;
  for (const auto& name : forwarded_variables())
    if (const char* v = std::getenv(name.c_str())) env[name] = v;
  const auto reply = exchange(fd, env, in, client_pin_root());
  if (!reply) run_locally(argv, &in);
  std::fwrite(reply->stdout_text.data(), 1, reply->stdout_text.size(), stdout);
  std::fflush(stdout);
  return reply->exit_code;
}
