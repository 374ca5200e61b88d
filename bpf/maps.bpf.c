/* Defines the maps and load-time settings every meshcap program shares. */
#define MC_DEFINE_MAPS
#include "common.bpf.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";
