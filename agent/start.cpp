// The entry point of `meshcap` on x86-64 (linked with -e meshcap_start,
// agent/CMakeLists.txt): a `meshcap init` that the node's agent answers is
// handed over here, before the C library starts, and the process exits with
// the agent's answer; every other command, and an init the agent sends back
// or that finds no agent, goes on to the C library's _start
// (cni/entry_point.h says why and what may run here).
#include "entry_point.h"
#include "init_handover.h"

#if defined(__x86_64__)
MESHCAP_ENTRY_POINT(meshcap_start, meshcap_at_start);
extern "C" void meshcap_at_start(long* sp) noexcept { meshcap::cni::hand_over_at_entry(sp, meshcap::cni::hand_over_if_asked); }
#endif
