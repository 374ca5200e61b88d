#include "process_netns.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "errors.h"
#include "task_netns.skel.h"

namespace meshcap::loader {

struct ProcessNamespaces::Impl {
  meshcap_task_netns* skel = nullptr;
  bpf_link* link = nullptr;
  ~Impl() {
    bpf_link__destroy(link);
    meshcap_task_netns__destroy(skel);
  }
};

ProcessNamespaces::ProcessNamespaces() : impl_(std::make_unique<Impl>()) {
  impl_->skel = meshcap_task_netns__open_and_load();
  if (!impl_->skel) throw LoaderError("load the task iterator", errno);
  impl_->link = bpf_program__attach_iter(impl_->skel->progs.mc_task_netns, nullptr);
  if (!impl_->link) throw LoaderError("attach the task iterator", errno);
}

ProcessNamespaces::~ProcessNamespaces() = default;

std::vector<pid_t> ProcessNamespaces::in_netns(uint64_t netns_ino) const {
  const int fd = bpf_iter_create(bpf_link__fd(impl_->link));
  if (fd < 0) throw LoaderError("read the task iterator", errno);
  std::vector<pid_t> out;
  uint32_t buf[2048];
  size_t have = 0;  // bytes in buf
  for (;;) {
    const ssize_t n = read(fd, reinterpret_cast<char*>(buf) + have, sizeof buf - have);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      close(fd);
      throw LoaderError("read the task iterator", err);
    }
    if (n == 0) break;
    have += static_cast<size_t>(n);
    const size_t records = have / 8;
    for (size_t i = 0; i < records; i++)
      if (buf[2 * i + 1] == netns_ino) out.push_back(static_cast<pid_t>(buf[2 * i]));
    const size_t rest = have % 8;
    if (rest) std::memmove(buf, reinterpret_cast<char*>(buf) + records * 8, rest);
    have = rest;
  }
  close(fd);
  return out;
}

}  // namespace meshcap::loader
