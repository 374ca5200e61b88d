// The entry point of `meshcap-cni` on x86-64 (linked with -e
// meshcap_cni_start, cni/CMakeLists.txt): a CNI command is handed to the
// node's agent here, before the C library starts, and the process exits
// with the agent's answer (or runs meshcap-cni-local when the agent sends it
// back); VERSION, the installer's commands and a node with no agent go on
// to the C library's _start and shim.cpp's main() (cni/entry_point.h says
// why and what may run here).
#include "entry_point.h"
#include "init_handover.h"

#if defined(__x86_64__)
MESHCAP_ENTRY_POINT(meshcap_cni_start, meshcap_cni_at_start);
extern "C" void meshcap_cni_at_start(long* sp) noexcept {
  meshcap::cni::hand_over_at_entry(sp, meshcap::cni::hand_cni_over_if_asked);
}
#endif
