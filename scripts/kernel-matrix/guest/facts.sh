# The facts step of a kernel-matrix boot (run.sh --facts), sourced by
# guest/init in the full boot before the tests: what this kernel offers
# meshcap's design, asked of the kernel itself. Each section is printed
# between "KM: FACTS-BEGIN NAME" and "KM: FACTS-END NAME"; run.sh copies
# them into docs/kernel-facts/<release>.txt (or --facts DIR).
#
#   bpftool        `bpftool feature probe kernel` (this machine's bpftool):
#                  program types, map types, helpers per program type
#   meshcap-probe  `meshcap probe` with istio-init's default flags
#   kfacts         scripts/kernel-matrix/kfacts.c: helpers per program type
#                  with real arguments, attach types, BPF links, context
#                  fields, map types, and each program of meshcap.bpf.o
#                  loaded alone (with the end of the verifier log of any
#                  program that is refused)
#   meshcap-init   `meshcap --log-level debug init --mode ebpf` for a
#                  throwaway pod (netns and cgroup), then `cleanup`: libbpf's
#                  and meshcap's own account of loading the skeleton
#
# Runs as root in the guest; the cgroup and netns it makes are its own and
# are removed again.

facts_section() {  # facts_section NAME CMD...: CMD's output as one section
  name=$1; shift
  say "FACTS-BEGIN $name"
  echo "\$ $*"
  "$@" 2>&1
  echo "(exit $?)"
  say "FACTS-END $name"
}
istio_default_flags() {  # istio-init's defaults, as the facts files name them
  "$@" -p 15001 -z 15006 -u 1337 -g 1337 -m REDIRECT -i '*' -b '*' -d 15090,15021,15020
}

ft0=$(cut -d. -f1 /proc/uptime)
if command -v bpftool >/dev/null; then
  facts_section bpftool bpftool feature probe kernel
else
  say "FACTS-BEGIN bpftool"; echo "bpftool is not in the initramfs"; say "FACTS-END bpftool"
fi
facts_section meshcap-probe istio_default_flags "$MESHCAP" probe

# A throwaway pod for the link rows and meshcap's own load.
FNS=kmfacts FCG=/sys/fs/cgroup/kmfacts
ip netns add "$FNS" && ip -n "$FNS" link set lo up
mkdir -p "$FCG"
kf_args="--cgroup $FCG --netns /run/netns/$FNS"
[ -f "$KM_BUILD_DIR/bpf/meshcap.bpf.o" ] && kf_args="$kf_args --object $KM_BUILD_DIR/bpf/meshcap.bpf.o"
if [ -x /opt/kmatrix/bin/kfacts ]; then
  facts_section kfacts /opt/kmatrix/bin/kfacts $kf_args
else
  say "FACTS-BEGIN kfacts"; echo "kfacts is not in the initramfs"; say "FACTS-END kfacts"
fi
facts_section meshcap-init istio_default_flags "$MESHCAP" --log-level debug init --mode ebpf \
  --name kmfacts --netns "/run/netns/$FNS" --cgroup "$FCG"
facts_section meshcap-cleanup "$MESHCAP" cleanup --name kmfacts
ip netns del "$FNS" 2>/dev/null
rmdir "$FCG" 2>/dev/null
say "INFO facts step took $(( $(cut -d. -f1 /proc/uptime) - ft0 )) s"
