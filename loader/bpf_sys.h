// A small BPF map made with the bare bpf(2) call. libbpf's bpf_map_create()
// first probes the kernel, once per process, with two or three program
// loads (memcg accounting, object names): each a JIT and a patch of kernel
// text, which cost a short command such as `meshcap init` more than its
// whole enrolment.
#pragma once

#include <linux/bpf.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>

namespace meshcap::loader {

/// An array map of `entries` values of `value_size` bytes (u32 keys); -1
/// and errno on failure.
inline int create_plain_array(uint32_t value_size, uint32_t entries) {
  // Kernels before 5.11 charge maps to RLIMIT_MEMLOCK: lift it, as libbpf
  // does there (no privilege to: the create says so).
  static const bool lifted = [] {
    const rlimit r{RLIM_INFINITY, RLIM_INFINITY};
    return setrlimit(RLIMIT_MEMLOCK, &r) == 0;
  }();
  (void)lifted;
  union bpf_attr attr {};
  attr.map_type = BPF_MAP_TYPE_ARRAY;
  attr.key_size = 4;
  attr.value_size = value_size;
  attr.max_entries = entries;
  return static_cast<int>(syscall(__NR_bpf, BPF_MAP_CREATE, &attr, sizeof(attr)));
}

}  // namespace meshcap::loader
