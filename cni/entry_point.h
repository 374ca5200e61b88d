// An executable's own entry point, before the C library's _start (x86-64):
// `meshcap` hands a `meshcap init` to the node's agent there
// (agent/start.cpp), `meshcap-cni` a CNI command (cni/shim_start.cpp). On
// this project's machines a page fault on an executable's text costs 25-35
// us, and the C library's start-up in a static C++ executable touches some
// fifteen such pages (its tunables, the resolvers of every string function
// it picks at start-up, locale and thread set-up) that a process which only
// hands its command over never needs (docs/benchmarks.md, "The hand-over at
// the entry point").
//
// Nothing that runs there may use the C library, thread-local storage
// (errno, the stack protector's canary) or the heap: the hand-overs make
// their system calls themselves (init_handover_client.cpp), and the files
// are compiled with MESHCAP_BEFORE_LIBC_FLAGS (CMakeLists.txt). The
// executable is linked with `-e ENTRY`.
#pragma once

#if defined(__x86_64__)

#include <sys/syscall.h>

// ENTRY: at the entry point the stack holds argc, then argv's pointers and a
// null, then envp's and a null; %rsp is 16-byte aligned and %rdx holds a
// function for atexit (none, for a static executable), which _start reads.
// ENTRY calls TRAMPOLINE(sp) and, when it returns, goes on to _start with
// the stack and %rdx as the kernel gave them.
#define MESHCAP_ENTRY_POINT(ENTRY, TRAMPOLINE) \
  __asm__(".text\n"                             \
          ".globl " #ENTRY "\n"                 \
          ".type " #ENTRY ", @function\n" #ENTRY ":\n" \
          "  endbr64\n"                         \
          "  mov %rsp, %rdi\n"                  \
          "  push %rdx\n"                       \
          "  sub $8, %rsp\n"                    \
          "  call " #TRAMPOLINE "\n"            \
          "  add $8, %rsp\n"                    \
          "  pop %rdx\n"                        \
          "  jmp _start\n"                      \
          ".size " #ENTRY ", .-" #ENTRY "\n")

namespace meshcap::cni {

/// The trampoline's body: `hand_over(argc, argv, envp)`; the process exits
/// with what it gives, or goes on to _start when it gives -1.
inline void hand_over_at_entry(long* sp, int (*hand_over)(int, const char* const*, const char* const*) noexcept) noexcept {
  const int argc = static_cast<int>(sp[0]);
  const char* const* argv = reinterpret_cast<const char* const*>(sp + 1);
  const char* const* envp = argv + argc + 1;
  const int rc = hand_over(argc, argv, envp);
  if (rc < 0) return;
  __asm__ volatile("syscall" : : "a"(SYS_exit_group), "D"(rc) : "rcx", "r11", "memory");
  __builtin_unreachable();
}

}  // namespace meshcap::cni

#endif
