#!/usr/bin/env bash
# Builds the kernel-matrix initramfs: busybox, meshcap, its test binaries,
# the tools they run (iproute2 `ip`, iptables with both backends and their
# extensions, util-linux nsenter/setpriv/mount, haproxy) with every shared
# library ldd names, one kernel's netfilter and veth modules, and
# guest/init as /init.
#
#   build-initramfs.sh KERNEL_ROOT BUILD_DIR OUT
#
# KERNEL_ROOT  a linux-image .deb unpacked with `dpkg-deb -x` (has boot/ and
#              lib/modules/VERSION/)
# BUILD_DIR    meshcap's build tree; its binaries are placed under
#              /opt/meshcap in the guest (agent/, cni/, tests/, bpf/ as in the
#              tree), whatever and wherever BUILD_DIR is; its host path is
#              written to /etc/kmatrix/host-build-dir, where guest/init
#              links it to /opt/meshcap (the tests have meshcap's host path
#              compiled in)
# OUT          the gzip-compressed newc cpio archive to write
#
# Also carries bpftool (this machine's) and kfacts (kfacts.c, compiled here
# with cc and libbpf) for the facts step (run.sh --facts).
#
# Needs busybox (static: it is the guest's shell, and builds the archive and
# modules.dep here), ldd, strip and cc. Writes only OUT and a scratch directory
# beside it, removed on exit.
set -euo pipefail

KROOT=$(realpath "$1")
BUILD=$(realpath "$2")
OUT=$3
HERE=$(cd "$(dirname "$0")" && pwd)

say() { echo "build-initramfs: $*"; }
die() { echo "build-initramfs: $*" >&2; exit 1; }

BUSYBOX=$(command -v busybox) || die "busybox not found (apt-get install busybox-static)"
ldd "$BUSYBOX" >/dev/null 2>&1 && die "$BUSYBOX is dynamically linked; install busybox-static"
[ -x "$BUILD/agent/meshcap" ] || die "$BUILD/agent/meshcap not built"
KVER=$(ls "$KROOT/lib/modules" | head -n 1)
[ -n "$KVER" ] || die "no lib/modules/VERSION under $KROOT"

STAGE=$(mktemp -d "$(dirname "$OUT")/initramfs.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

# --- layout (merged /usr, as on Debian 12) -------------------------------------
mkdir -p "$STAGE"/{usr/bin,usr/sbin,usr/lib,usr/lib64,proc,sys,dev,run,tmp,root,etc/kmatrix,var}
ln -s usr/bin "$STAGE/bin"
ln -s usr/sbin "$STAGE/sbin"
ln -s usr/lib "$STAGE/lib"
ln -s usr/lib64 "$STAGE/lib64"
ln -s ../run "$STAGE/var/run"
chmod 1777 "$STAGE/tmp"

ELFS=()
# copy_file SRC [DEST]: SRC's content (symlinks followed) at DEST (default:
# the same path) in the guest; ELF files are remembered for their libraries.
copy_file() {
  local src=$1 dest=${2:-$1}
  mkdir -p "$STAGE$(dirname "$dest")"
  cp -L "$src" "$STAGE$dest"
  if head -c 4 "$STAGE$dest" | cmp -s - <(printf '\177ELF'); then ELFS+=("$STAGE$dest"); fi
}
# copy_tool NAME...: a host command at its real path, and a link at the path
# PATH finds it by here, so no busybox applet takes either name.
copy_tool() {
  local name path real
  for name in "$@"; do
    path=$(command -v "$name") || die "$name not found on this machine"
    real=$(realpath "$path")
    copy_file "$real"
    if [ "$path" != "$real" ] && [ ! -e "$STAGE$path" ]; then
      mkdir -p "$STAGE$(dirname "$path")"
      ln -s "$real" "$STAGE$path"
    fi
  done
}

# --- meshcap and its tests -----------------------------------------------------
# At a fixed path of the guest's own: the host's may lie under /tmp or /run,
# which the guest mounts tmpfs over.
GUEST_BUILD=/opt/meshcap
# strip_copy SRC REL: SRC at $GUEST_BUILD/REL, stripped of debug info (the
# guest unpacks the archive into RAM).
strip_copy() {
  mkdir -p "$STAGE$GUEST_BUILD/$(dirname "$2")"
  strip --strip-debug -o "$STAGE$GUEST_BUILD/$2" "$1"
  ELFS+=("$STAGE$GUEST_BUILD/$2")
}
strip_copy "$BUILD/agent/meshcap" agent/meshcap
[ -L "$BUILD/agent/istio-iptables" ] && ln -s meshcap "$STAGE$GUEST_BUILD/agent/istio-iptables"
# The CNI plugin (and the part it runs when no agent answers), for
# cni_kernel_tests: at the build's layout, where the agent and tests look.
for cni in meshcap-cni meshcap-cni-local; do
  [ -x "$BUILD/cni/$cni" ] && strip_copy "$BUILD/cni/$cni" "cni/$cni"
done
ntests=0
for t in "$BUILD"/tests/*_tests "$BUILD"/tests/test_pod_selftest; do
  [ -f "$t" ] && [ -x "$t" ] || continue
  case $t in *unit_tests) continue ;; esac  # the unit tier needs no kernel
  strip_copy "$t" "tests/$(basename "$t")"
  ntests=$((ntests + 1))
done
# The BPF object, for the facts step's per-program verifier logs.
if [ -f "$BUILD/bpf/meshcap.bpf.o" ]; then
  mkdir -p "$STAGE$GUEST_BUILD/bpf"
  cp "$BUILD/bpf/meshcap.bpf.o" "$STAGE$GUEST_BUILD/bpf/"
fi
printf '%s\n' "$BUILD" > "$STAGE/etc/kmatrix/host-build-dir"

# --- facts tools: bpftool and kfacts ----------------------------------------------
if command -v bpftool >/dev/null; then copy_tool bpftool; else say "no bpftool here: the facts step will lack its feature probe"; fi
mkdir -p "$STAGE/opt/kmatrix/bin"
if cc -O2 -Wall -o "$STAGE/opt/kmatrix/bin/kfacts" "$HERE/kfacts.c" -lbpf; then
  ELFS+=("$STAGE/opt/kmatrix/bin/kfacts")
else
  say "kfacts did not build (cc, libbpf-dev): the facts step will lack it"
fi

# --- tools -----------------------------------------------------------------------
# timeout and env as well: busybox's would run their own `ip` applet, not
# iproute2's (the tests call `timeout 60 ip netns add`).
copy_tool ip nsenter setpriv mount umount timeout env unshare
if command -v haproxy >/dev/null; then copy_tool haproxy; else say "no haproxy here: e2e tests will skip"; fi
# The DNS e2e tests' resolver and proxy (dnsmasq) and clients (dig, getent).
for t in dnsmasq dig getent; do
  if command -v "$t" >/dev/null; then copy_tool "$t"; else say "no $t here: the DNS e2e tests will skip"; fi
done
# iptables: the two multi-call binaries, and every name meshcap and the tests
# call, linked the way this machine links them (iptables -> its default).
for multi in xtables-nft-multi xtables-legacy-multi; do copy_tool "$multi"; done
for base in iptables ip6tables; do
  for variant in "" -nft -legacy; do
    for suffix in "" -save -restore; do
      name=$base$variant$suffix
      path=$(command -v "$name") || continue
      mkdir -p "$STAGE$(dirname "$path")"
      ln -sf "$(realpath "$path")" "$STAGE$path"
    done
  done
done
# The extensions iptables dlopens (libxt_owner.so, ...): beside libxtables.
xtlib=$(ldd "$(command -v xtables-nft-multi)" | awk '/libxtables/ { print $3 }')
xtdir=$(dirname "$(realpath "$xtlib")")/xtables
[ -d "$xtdir" ] || die "iptables extensions not found at $xtdir"
for so in "$xtdir"/*.so; do copy_file "$so"; done

# --- shared libraries ------------------------------------------------------------
# ldd of everything copied, repeated until no new library appears (the
# extensions pull in libraries the binaries do not).
declare -A seen=()
while [ "${#ELFS[@]}" -gt 0 ]; do
  batch=("${ELFS[@]}")
  ELFS=()
  for elf in "${batch[@]}"; do
    while read -r lib; do
      [ -n "$lib" ] && [ -z "${seen[$lib]:-}" ] || continue
      seen[$lib]=1
      [ -e "$STAGE$lib" ] || copy_file "$lib"
    done < <(ldd "$elf" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
  done
done
say "$ntests test binaries, ${#seen[@]} shared libraries"

# --- busybox: every applet no real tool above provides ---------------------------
cp "$BUSYBOX" "$STAGE/usr/bin/busybox"
for applet in $("$BUSYBOX" --list); do
  for d in usr/bin usr/sbin; do [ -e "$STAGE/$d/$applet" ] && continue 2; done
  ln -s busybox "$STAGE/usr/bin/$applet"
done
# The kernel loads modules on demand through /sbin/modprobe.
[ -e "$STAGE/usr/sbin/modprobe" ] || ln -s ../bin/busybox "$STAGE/usr/sbin/modprobe"

# --- kernel modules ---------------------------------------------------------------
# Everything under netfilter (nft_compat loads xt_* on demand, by name),
# veth, and the socket-diagnostic modules meshcap asks for a namespace's
# listening sockets (inet_diag, tcp_diag), with what they depend on;
# modules.dep comes from busybox depmod, run once over the whole tree and
# once over the subset.
KMOD=$KROOT/lib/modules/$KVER
[ -s "$KMOD/modules.dep" ] || "$BUSYBOX" depmod -b "$KROOT" "$KVER"
declare -A want=()
add_module() {  # add_module REL_PATH: it and its dependencies
  local rel=$1 dep
  [ -n "${want[$rel]:-}" ] && return
  want[$rel]=1
  for dep in $(awk -v m="$rel:" '$1 == m { $1 = ""; print }' "$KMOD/modules.dep"); do add_module "$dep"; done
}
while read -r rel; do add_module "$rel"; done < <(
  cd "$KMOD" && find kernel/net/netfilter kernel/net/ipv4/netfilter kernel/net/ipv6/netfilter \
    -name '*.ko*' 2>/dev/null; find kernel/drivers/net -maxdepth 1 -name 'veth.ko*'
  find kernel/net/ipv4 -maxdepth 1 \( -name 'inet_diag.ko*' -o -name 'tcp_diag.ko*' \))
# Compressed modules (6.12 ships .ko.xz) are unpacked: busybox's modprobe
# hands the file to the kernel as it is.
GMOD=$STAGE/lib/modules/$KVER
for rel in "${!want[@]}"; do
  mkdir -p "$GMOD/$(dirname "$rel")"
  case $rel in
    *.ko.xz) xz -dc "$KMOD/$rel" > "$GMOD/${rel%.xz}" ;;
    *.ko.zst) zstd -qdc "$KMOD/$rel" > "$GMOD/${rel%.zst}" ;;
    *.ko.gz) gzip -dc "$KMOD/$rel" > "$GMOD/${rel%.gz}" ;;
    *) cp "$KMOD/$rel" "$GMOD/$rel" ;;
  esac
done
for f in modules.builtin modules.builtin.modinfo modules.order; do
  [ -e "$KMOD/$f" ] && cp "$KMOD/$f" "$GMOD/"
done
"$BUSYBOX" depmod -b "$STAGE" "$KVER"
say "kernel $KVER: ${#want[@]} modules"

# --- /etc and the guest's scripts --------------------------------------------------
# nobody and dip: dnsmasq's default user and group, which it looks up even
# when it runs unprivileged (the DNS e2e tests' proxy).
printf 'root:x:0:0:root:/root:/bin/sh\nistio-proxy:x:1337:1337::/tmp:/bin/false\nnobody:x:65534:65534::/nonexistent:/bin/false\n' \
  > "$STAGE/etc/passwd"
printf 'root:x:0:\nistio-proxy:x:1337:\nnogroup:x:65534:\ndip:x:30:\n' > "$STAGE/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$STAGE/etc/hosts"
# What glibc's resolver reads (the DNS e2e tests bind their own over them).
printf 'hosts: files dns\n' > "$STAGE/etc/nsswitch.conf"
: > "$STAGE/etc/resolv.conf"
for f in /etc/protocols /etc/services /etc/ethertypes; do [ -e "$f" ] && cp "$f" "$STAGE/etc/"; done
install -m 0755 "$HERE/guest/init" "$STAGE/init"
install -m 0755 "$HERE/guest/capture-check.sh" "$STAGE/etc/kmatrix/capture-check.sh"
install -m 0644 "$HERE/guest/facts.sh" "$STAGE/etc/kmatrix/facts.sh"
grep -v '^#' "$HERE/modules.txt" | grep . > "$STAGE/etc/kmatrix/modules"

# --- archive --------------------------------------------------------------------------
(cd "$STAGE" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null) | gzip -1 > "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
say "$OUT: $(du -sh "$STAGE" | cut -f1) unpacked, $(du -h "$OUT" | cut -f1) compressed"
