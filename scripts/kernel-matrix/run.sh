#!/usr/bin/env bash
# Kernel matrix: boots other kernels under qemu (TCG, no network) with an
# initramfs carrying meshcap, its kernel and e2e tests, iptables and the
# kernel's netfilter modules, and runs `meshcap probe`, the tests and an
# end-to-end capture check inside. docs/kernels.md has the details.
#
#   scripts/kernel-matrix/run.sh [options]
#
#   --kernel [SUITE:]PKG
#                    a Debian linux-image package, concrete or meta; repeat
#                    for several (default: linux-image-cloud-amd64, the
#                    newest cloud kernel of this machine's own suite). With
#                    SUITE (e.g. bullseye:linux-image-5.10.0-32-cloud-amd64)
#                    the package comes from that Debian suite (SUITE,
#                    SUITE-updates, SUITE-security) through a private apt
#                    configuration under build/kernel-matrix/apt/SUITE/;
#                    the system's apt configuration and lists are only read
#   --suite SUITE    the same as --kernel SUITE:linux-image-cloud-amd64 (the
#                    suite's newest cloud kernel)
#   --mirror URL, --security-mirror URL
#                    archives for a SUITE (default: the ones this machine's
#                    apt sources name for its own suite)
#   --refresh        update a SUITE's private package lists even when they
#                    are less than a day old
#   --boots LIST     comma-separated, of: full (cgroup v2, root),
#                    nocgroup2 (no cgroup v2 hierarchy), nobpf (meshcap
#                    without CAP_BPF/CAP_SYS_ADMIN); default all three
#   --tests LIST     test binaries for the full boot, space-separated,
#                    "binary" or "binary=gtest-filter"
#   --quick          fewer tests (~5 minutes instead of ~17 on 2 cores):
#                    the full boot runs the eBPF kernel tests and both e2e
#                    suites (haproxy through eBPF and through iptables), the
#                    nocgroup2 boot only the end-to-end capture check
#   --expect OUT/IN  plan the full boot must choose (default ebpf/ebpf)
#   --timeout SEC    per boot (default 1800); --test-timeout SEC per binary
#   --smp N, --mem MB   guest CPUs (default: up to 2) and memory (1024)
#   --build-dir DIR  meshcap's build tree (default: build/); only read
#   --work-dir DIR   where the kernels, apt state, logs and scratch go
#                    (default: BUILD/kernel-matrix)
#   --no-install     do not apt-get install qemu/busybox-static when missing
#   --guest-cmd CMD  a shell command the guest runs (and prints) before the
#                    tests, for debugging
#   --append ARGS    more on the guest kernel's command line (it boots with
#                    "console=ttyS0 loglevel=5 panic=-1": warnings, and the
#                    stack traces of lockup reports, reach the log)
#   --lockup-retries N
#                    a guest whose kernel reports a soft lockup three times
#                    (a CPU stuck in the kernel for over a minute: it does
#                    not come back) is stopped then, not at --timeout, its
#                    log kept as <kernel>-<boot>.lockupK.log, and booted
#                    again up to N times (default 1); every lockup is named
#                    in the report and the summary
#   --facts DIR      the full boot also records what the kernel offers
#                    (guest/facts.sh: bpftool feature probe, meshcap probe
#                    with istio-init's defaults, kfacts, meshcap's verifier
#                    logs) and run.sh writes it with each boot's report to
#                    DIR/<kernel release>.txt (docs/kernel-facts/)
#
# Everything comes from Debian's archive through apt-get: the kernel .deb is
# fetched with `apt-get download` into build/kernel-matrix/cache/; the
# guest's tools are this machine's own (so install-deps.sh must have run
# and meshcap must be built). The guest finds the build at /opt/meshcap
# whatever the checkout's or the build's path. Logs:
# build/kernel-matrix/logs/.
# Exit: 0 every boot passed, 1 a boot failed, 2 bad usage or setup.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

KERNELS=()
BOOTS=full,nocgroup2,nobpf
FULL_TESTS="ebpf_kernel_tests capture_kernel_tests iptables_kernel_tests capture_e2e_tests ebpf_e2e_tests equivalence_tests"
QUICK_TESTS="ebpf_kernel_tests capture_e2e_tests"
QUICK=0
TESTS_GIVEN=0
EXPECT=ebpf/ebpf
TIMEOUT=1800
TEST_TIMEOUT=1200
SMP=$(( $(nproc) < 2 ? $(nproc) : 2 ))
MEM=1024
BUILD=$REPO/build
INSTALL=1
GUEST_CMD=""
APPEND=""
LOCKUP_RETRIES=1
LOCKUP_REPORTS=3
FACTS_DIR=""
MIRROR=""
SECURITY_MIRROR=""
REFRESH=0
WORK_GIVEN=""

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2; }
die() { echo "kernel-matrix: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --kernel) KERNELS+=("$2"); shift 2 ;;
    --suite) KERNELS+=("$2:linux-image-cloud-amd64"); shift 2 ;;
    --mirror) MIRROR=$2; shift 2 ;;
    --security-mirror) SECURITY_MIRROR=$2; shift 2 ;;
    --refresh) REFRESH=1; shift ;;
    --facts) mkdir -p "$2" && FACTS_DIR=$(realpath "$2"); shift 2 ;;
    --boots) BOOTS=$2; shift 2 ;;
    --tests) FULL_TESTS=$2; TESTS_GIVEN=1; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --expect) EXPECT=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --test-timeout) TEST_TIMEOUT=$2; shift 2 ;;
    --smp) SMP=$2; shift 2 ;;
    --mem) MEM=$2; shift 2 ;;
    --build-dir) BUILD=$(realpath "$2"); shift 2 ;;
    --work-dir) WORK_GIVEN=$(realpath -m "$2"); shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    --guest-cmd) GUEST_CMD=$2; shift 2 ;;
    --append) APPEND=$2; shift 2 ;;
    --lockup-retries) LOCKUP_RETRIES=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "kernel-matrix: unknown option $1" >&2; usage ;;
  esac
done
[ "${#KERNELS[@]}" -gt 0 ] || KERNELS=(linux-image-cloud-amd64)
[ "$QUICK" = 1 ] && [ "$TESTS_GIVEN" = 0 ] && FULL_TESTS=$QUICK_TESTS
for b in ${BOOTS//,/ }; do
  case $b in full|nocgroup2|nobpf) ;; *) die "--boots: unknown boot '$b'" ;; esac
done
case $EXPECT in */*) ;; *) die "--expect: OUT/IN, e.g. ebpf/ebpf" ;; esac
case $LOCKUP_RETRIES in ''|*[!0-9]*) die "--lockup-retries: a number, not '$LOCKUP_RETRIES'" ;; esac

WORK=${WORK_GIVEN:-$BUILD/kernel-matrix}
CACHE=$WORK/cache
LOGS=$WORK/logs
mkdir -p "$CACHE" "$LOGS"
# One run per build tree at a time: boots share the log names (and two TCG
# guests on a small machine slow each other past the tests' timeouts).
exec 9> "$WORK/.lock"
flock -n 9 || die "another run.sh is running on $WORK"
[ -x "$BUILD/agent/meshcap" ] || die "$BUILD/agent/meshcap not built (cmake --preset default && cmake --build build)"

# --- host tools: qemu and a static busybox, only for this script -----------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
{ command -v busybox >/dev/null && ! ldd "$(command -v busybox)" >/dev/null 2>&1; } || need+=(busybox-static)
if [ "${#need[@]}" -gt 0 ]; then
  [ "$INSTALL" = 1 ] && [ "$(id -u)" = 0 ] || die "missing ${need[*]}: apt-get install ${need[*]} (as root)"
  echo "kernel-matrix: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
fi

# --- kernels ---------------------------------------------------------------------
# This machine's suite and the archives its apt sources name for it (read
# from `apt-get indextargets`, nothing written): the default archives for
# another suite.
HOST_SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
host_site() {  # host_site security|main: the archive of this machine's suite
  apt-get indextargets --format '$(SITE) $(RELEASE)' 2>/dev/null | sort -u |
    awk -v want="$1" '{ sec = ($2 ~ /-security$/) } (want == "security") == sec { print $1; exit }'
}

# private_apt SUITE: sets PAPT to apt options for a configuration of SUITE's
# own (sources list, lists, cache and state under $WORK/apt/SUITE), and
# updates its lists when missing or older than a day (or with --refresh).
# The system's apt configuration and lists are never written.
PAPT=()
private_apt() {
  local suite=$1 dir=$WORK/apt/$1 main sec keyring opt=""
  main=${MIRROR:-$(host_site main)}
  sec=${SECURITY_MIRROR:-$(host_site security)}
  [ -n "$main" ] || die "no Debian archive in this machine's apt sources; give --mirror URL"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -r "$keyring" ] && opt=" [signed-by=$keyring]"
  mkdir -p "$dir/etc/sources.list.d" "$dir/etc/preferences.d" "$dir/lists/partial" \
    "$dir/cache/archives/partial" "$dir/state"
  {
    echo "deb$opt $main $suite main"
    echo "deb$opt $main $suite-updates main"
    [ -n "$sec" ] && echo "deb$opt $sec $suite-security main"
  } > "$dir/etc/sources.list"
  PAPT=(-o "Dir::Etc::sourcelist=$dir/etc/sources.list"
        -o "Dir::Etc::sourceparts=$dir/etc/sources.list.d"
        -o "Dir::Etc::preferences=$dir/etc/preferences"
        -o "Dir::Etc::preferencesparts=$dir/etc/preferences.d"
        -o "Dir::State=$dir/state"
        -o "Dir::State::Lists=$dir/lists"
        -o "Dir::State::status=$dir/state/status"
        -o "Dir::Cache=$dir/cache")
  # As root apt would hand the download to _apt, which cannot write here.
  [ "$(id -u)" = 0 ] && PAPT+=(-o APT::Sandbox::User=root)
  touch "$dir/state/status"
  if [ "$REFRESH" = 1 ] || [ -z "$(find "$dir/lists" -maxdepth 1 -name '*_Packages*' -mmin -1440 2>/dev/null)" ]; then
    echo "kernel-matrix: updating the private package lists of $suite ($dir)" >&2
    apt-get -q "${PAPT[@]}" update >&2 || die "apt-get update for $suite failed"
  fi
}

# fetch_kernel [SUITE:]PKG: prints the unpacked tree for PKG (a meta package
# resolves to the image it depends on). Without SUITE, PKG comes from this
# machine's own apt lists (read only); when they lack it, from a private
# configuration of this machine's suite.
fetch_kernel() {
  local spec=$1 suite="" pkg dep deb dir apt
  case $spec in *:*) suite=${spec%%:*}; pkg=${spec#*:} ;; *) pkg=$spec ;; esac
  PAPT=()
  if [ -z "$suite" ] && ! apt-cache show "$pkg" >/dev/null 2>&1; then
    [ -n "$HOST_SUITE" ] || die "$pkg is not in this machine's apt lists; give SUITE:$pkg"
    echo "kernel-matrix: $pkg is not in this machine's apt lists; using a private list of $HOST_SUITE" >&2
    suite=$HOST_SUITE
  fi
  [ -n "$suite" ] && private_apt "$suite"
  dep=$(apt-cache "${PAPT[@]}" depends "$pkg" 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
  [ -n "$dep" ] && pkg=$dep
  pkg=${pkg%-unsigned}
  dir=$CACHE/$pkg
  if [ ! -d "$dir/boot" ]; then
    deb=$(ls "$CACHE/${pkg}"_*.deb 2>/dev/null | head -n 1 || true)
    if [ -z "$deb" ]; then
      echo "kernel-matrix: apt-get download $pkg${suite:+ ($suite)}" >&2
      apt=(apt-get -q "${PAPT[@]}")
      [ "$(id -u)" = 0 ] && [ -z "$suite" ] && apt+=(-o APT::Sandbox::User=root)
      (cd "$CACHE" && "${apt[@]}" download "$pkg" >&2) || die "cannot download $pkg${suite:+ from $suite}"
      deb=$(ls "$CACHE/${pkg}"_*.deb | head -n 1)
    fi
    rm -rf "$dir.tmp"
    dpkg-deb -x "$deb" "$dir.tmp"
    mv "$dir.tmp" "$dir"
  fi
  echo "$dir"
}

# --- boots -----------------------------------------------------------------------
# boot_conf BOOT: the guest's /etc/kmatrix/boot.conf for BOOT.
boot_conf() {
  local tests expect
  case $1 in
    full) tests=$FULL_TESTS expect=$EXPECT ;;
    # No cgroup v2: only what needs none (TestPod needs a cgroup).
    nocgroup2) tests="iptables_kernel_tests" expect=iptables/iptables
               [ "$QUICK" = 1 ] && tests="" ;;
    # Without BPF privilege: the agent test that runs meshcap like istio-init.
    nobpf) tests="ebpf_kernel_tests=Agent.WithoutBpfPrivilege*" expect=iptables/iptables ;;
  esac
  local facts=0
  [ "$1" = full ] && [ -n "$FACTS_DIR" ] && facts=1
  printf 'KM_BOOT=%s\nKM_TESTS="%s"\nKM_EXPECT=%s\nKM_TEST_TIMEOUT=%s\nKM_FACTS=%s\n' \
    "$1" "$tests" "$expect" "$TEST_TIMEOUT" "$facts"
  # Single-quoted for the guest shell.
  printf "KM_GUEST_CMD='%s'\n" "${GUEST_CMD//\'/\'\\\'\'}"
}

# write_facts SPEC KROOT KVER FULL_LOG REPORT: the facts file of one kernel,
# its sections as the full boot printed them (guest/facts.sh), then each
# boot's report.
write_facts() {
  local spec=$1 kroot=$2 kver=$3 log=$4 report=$5 deb
  deb=$(ls "$CACHE/$(basename "$kroot")"_*.deb 2>/dev/null | head -n 1)
  echo "# Kernel facts: $kver"
  echo "#"
  echo "# Recorded by scripts/kernel-matrix/run.sh --facts under qemu (TCG) from"
  echo "# ${deb:+$(basename "$deb"), }asked as '$spec'; $(date -u +%Y-%m-%d)."
  echo "# Host tools carried into the guest: $(bpftool version 2>/dev/null | head -n 1),"
  echo "# meshcap from the build at $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')."
  echo "# Sections: bpftool, meshcap-probe, kfacts, meshcap-init, meshcap-cleanup"
  echo "# (guest/facts.sh says what each is), then the boots' reports."
  echo
  [ -f "$log" ] && tr -d '\r' < "$log" | awk '
    { i = index($0, "KM: FACTS-"); if (i == 0) { if (name != "") print; next } }
    { line = substr($0, i + 4) }
    line ~ /^FACTS-BEGIN / { name = substr(line, 13); print "==== " name " ===="; next }
    line ~ /^FACTS-END /   { name = ""; print ""; next }'
  echo "==== boots ===="
  sed 's|, log .*/\([^/]*\))$|, log \1)|' "$report"
}

SCRATCH=$(mktemp -d "$WORK/run.XXXXXX")
QEMU_PID=""
TAIL_PID=""
# Also on a signal: `wait` below returns at once, so qemu is stopped too.
cleanup() {
  if [ -n "$QEMU_PID" ]; then kill "$QEMU_PID" 2>/dev/null || true; fi
  if [ -n "$TAIL_PID" ]; then kill "$TAIL_PID" 2>/dev/null || true; fi
  rm -rf "$SCRATCH"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

summary=$LOGS/summary.txt
: > "$summary"
overall=0
start_all=$(date +%s)
for pkg in "${KERNELS[@]}"; do
  kroot=$(fetch_kernel "$pkg")
  kver=$(ls "$kroot/lib/modules" | head -n 1)
  vmlinuz=$kroot/boot/vmlinuz-$kver
  [ -f "$vmlinuz" ] || die "no $vmlinuz in $(basename "$kroot")"
  "$HERE/build-initramfs.sh" "$kroot" "$BUILD" "$SCRATCH/initramfs-$kver.gz"
  : > "$SCRATCH/kreport"
  for boot in ${BOOTS//,/ }; do
    log=$LOGS/$kver-$boot.log
    mkdir -p "$SCRATCH/conf/etc/kmatrix"
    boot_conf "$boot" > "$SCRATCH/conf/etc/kmatrix/boot.conf"
    (cd "$SCRATCH/conf" && find . | busybox cpio -o -H newc 2>/dev/null) | gzip -1 > "$SCRATCH/conf.gz"
    cat "$SCRATCH/initramfs-$kver.gz" "$SCRATCH/conf.gz" > "$SCRATCH/boot.img"
    rm -rf "$SCRATCH/conf"
    lockups=""
    attempt=1
    while :; do
      echo "kernel-matrix: booting $kver ($boot), log $log"
      t0=$(date +%s)
      : > "$log"
      rm -f "$SCRATCH/lockup"
      # -nodefaults: no NIC (the guest has no network at all), no disks, no VGA.
      timeout -k 10 "$TIMEOUT" qemu-system-x86_64 \
        -accel tcg,thread=multi -cpu max -smp "$SMP" -m "$MEM" \
        -nodefaults -no-user-config -display none -no-reboot -monitor none -serial stdio \
        -kernel "$vmlinuz" -initrd "$SCRATCH/boot.img" \
        -append "console=ttyS0 loglevel=5 panic=-1${APPEND:+ $APPEND}" </dev/null > "$log" 2>&1 &
      QEMU_PID=$!
      # Progress: the guest's report lines as they come. A kernel that
      # reports a soft lockup again and again has a CPU stuck in the kernel
      # for good: qemu is stopped then rather than at the timeout.
      { tail -n +1 -f --pid="$QEMU_PID" "$log" 2>/dev/null |
          grep --line-buffered -a -e '^KM: \(BEGIN\|PLAN\|TEST \|CHECK \|RESULT\)' -e 'BUG: soft lockup' |
          { seen=0
            while IFS= read -r line; do
              case $line in
                *"BUG: soft lockup"*)
                  seen=$(( seen + 1 ))
                  [ "$seen" = "$LOCKUP_REPORTS" ] && { : > "$SCRATCH/lockup"; kill "$QEMU_PID" 2>/dev/null; } ;;
                *) echo "    ${line%$'\r'}" ;;
              esac
            done; } || true; } &
      TAIL_PID=$!
      rc=0
      wait "$QEMU_PID" || rc=$?
      QEMU_PID=""
      wait "$TAIL_PID" 2>/dev/null || true
      TAIL_PID=""
      [ "$rc" = 124 ] && echo "KM-HOST: qemu killed after ${TIMEOUT}s" >> "$log"
      [ -f "$SCRATCH/lockup" ] || break
      echo "KM-HOST: the guest kernel reported a soft lockup $LOCKUP_REPORTS times; qemu stopped" >> "$log"
      kept=$LOGS/$kver-$boot.lockup$attempt.log
      cp "$log" "$kept"
      lockups="$lockups  the guest kernel locked up on boot $attempt (soft lockup, $(( $(date +%s) - t0 )) s; log $kept)"$'\n'
      echo "kernel-matrix: $kver ($boot): the guest kernel locked up on boot $attempt (log $kept)"
      # Out of retries: the report is this boot's (it did not reach its end).
      [ "$attempt" -le "$LOCKUP_RETRIES" ] || break
      attempt=$(( attempt + 1 ))
    done
    secs=$(( $(date +%s) - t0 ))
    # The probe output, for docs/kernels.md.
    tr -d '\r' < "$log" | sed -n '/^KM: PROBE-BEGIN/,/^KM: PROBE-END/p' | sed '1d;$d' > "$LOGS/$kver-$boot.probe.txt"
    tr -d '\r' < "$log" | sed -n '/^KM: PROBE-JSON-BEGIN/,/^KM: PROBE-JSON-END/p' | sed '1d;$d' > "$LOGS/$kver-$boot.probe.json"
    # The plans for istio-init's defaults (per pod; full boot: node start,
    # node status and the plan into the node).
    tr -d '\r' < "$log" | awk -v b="$boot" '/^KM: PLAN-POD-BEGIN/ { p = 1 } p { print }
      /^KM: PLAN-NODE-END/ || (b != "full" && /^KM: PLAN-POD-END/) { p = 0 }' > "$LOGS/$kver-$boot.plans.txt"
    {
      echo "$kver, boot $boot (${secs} s with qemu's start, log $log)"
      printf '%s' "$lockups"
      "$HERE/parse-log.sh" "$log"
    } > "$SCRATCH/report" || overall=1
    cat "$SCRATCH/report" | tee -a "$summary" "$SCRATCH/kreport"
  done
  if [ -n "$FACTS_DIR" ]; then
    write_facts "$pkg" "$kroot" "$kver" "$LOGS/$kver-full.log" "$SCRATCH/kreport" > "$FACTS_DIR/$kver.txt"
    echo "kernel-matrix: facts in $FACTS_DIR/$kver.txt"
  fi
done
echo "kernel-matrix: $(( $(date +%s) - start_all )) s in all; $([ "$overall" = 0 ] && echo PASS || echo FAIL)" |
  tee -a "$summary"
exit "$overall"
