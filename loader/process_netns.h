// The processes in a network namespace, found with a BPF task iterator:
// one pass over the kernel's tasks (task_netns.bpf.c) instead of a stat of
// /proc/PID/ns/net per process, about 7 µs each here. Loading it costs a
// verifier pass, so only a process that asks many times (the node agent)
// keeps one; the others walk /proc.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace meshcap::loader {

class ProcessNamespaces {
 public:
  /// Loads and attaches the iterator; throws LoaderError when the kernel
  /// refuses it (no BTF, older than 5.8, no privileges).
  ProcessNamespaces();
  ~ProcessNamespaces();
  ProcessNamespaces(const ProcessNamespaces&) = delete;
  ProcessNamespaces& operator=(const ProcessNamespaces&) = delete;

  /// The processes (thread-group leaders, as /proc lists them) whose
  /// network namespace has inode `netns_ino`; throws LoaderError when the
  /// iterator cannot be read.
  std::vector<pid_t> in_netns(uint64_t netns_ino) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace meshcap::loader
