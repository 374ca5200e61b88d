// The entry point of `meshcap` on x86-64 (linked with -e meshcap_start,
// agent/CMakeLists.txt): a `meshcap init` that the node's agent answers is
// handed over here, before the C library starts, and the process exits with
// the agent's answer; every other command, and an init the agent sends back
// or that finds no agent, goes on to the C library's _start with the stack
// and registers the kernel gave.
//
// Why: on this project's machines a page fault on the executable's text
// costs 25-35 us, and the C library's start-up in an executable of this
// size touches about fifteen such pages (its tunables, the IFUNC resolvers
// of every string function linked in, locale and thread set-up) that a
// process which only hands its command line over never needs
// (docs/benchmarks.md, "The hand-over at the entry point").
//
// Nothing here may use the C library, thread-local storage (errno, the stack
// protector's canary) or the heap: cni::hand_over_if_asked makes its system
// calls itself (cni/init_handover_client.cpp). This file and that one are
// compiled freestanding.
#include "init_handover.h"

#if defined(__x86_64__)

#include <sys/syscall.h>

// At the entry point the stack holds argc, then argv's pointers and a null,
// then envp's and a null; %rsp is 16-byte aligned and %rdx holds a function
// for atexit (none, for a static executable), which _start reads.
__asm__(R"(
  .text
  .globl meshcap_start
  .type meshcap_start, @function
meshcap_start:
  endbr64
  mov %rsp, %rdi
  push %rdx
  sub $8, %rsp
  call meshcap_hand_over_at_start
  add $8, %rsp
  pop %rdx
  jmp _start
  .size meshcap_start, .-meshcap_start
)");

extern "C" void meshcap_hand_over_at_start(long* sp) noexcept {
  const int argc = static_cast<int>(sp[0]);
  const char* const* argv = reinterpret_cast<const char* const*>(sp + 1);
  const char* const* envp = argv + argc + 1;
  const int rc = meshcap::cni::hand_over_if_asked(argc, argv, envp);
  if (rc < 0) return;
  __asm__ volatile("syscall" : : "a"(SYS_exit_group), "D"(rc) : "rcx", "r11", "memory");
  __builtin_unreachable();
}

#endif
