#!/usr/bin/env bash
# Installs the Debian 12 packages that meshcap's build, tests and demo need.
# Idempotent: when every package is present it only checks and returns.
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake ninja-build pkg-config clang llvm
  libbpf-dev bpftool libelf-dev zlib1g-dev linux-libc-dev
  libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev
  # run time and tests
  iproute2 iptables util-linux procps haproxy conntrack
  # nft: tests put a set in a table meshcap created (tests/kernel/iptables_apply_test.cpp)
  nftables
  # DNS capture tests (issue #18): dnsmasq as the proxy's DNS listener and upstream, dig
  dnsmasq-base bind9-dnsutils
  # a real container runtime for tests/e2e/cni_podman_test.cpp: podman 4.3
  # with runc (crun refuses hybrid cgroups) and the CNI reference plugins.
  # --no-install-recommends keeps netavark out, so podman uses CNI.
  podman runc catatonit containernetworking-plugins
  # the kernel matrix (scripts/kernel-matrix), part of the test command:
  # Debian 11's 5.10 booted under qemu with a static busybox as its init
  qemu-system-x86 busybox-static
  # benchmark plots (meshcap-bench)
  gnuplot-nox
  # fuzzing (scripts/fuzz.sh): clang's libFuzzer and sanitizer runtimes
  libclang-rt-14-dev
)

"$(dirname "$0")/validate-manifests.sh" --install  # the Kubernetes manifest checker's npm packages, into build/tools/k8s-validate (git-ignored)
missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages (${missing[*]}); run as root" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# haproxy's package starts a system service on install; meshcap runs its own
# instances inside test pods, so keep the system one stopped.
if [ -d /run/systemd/system ] && systemctl is-active -q haproxy 2>/dev/null; then
  systemctl stop haproxy || true
fi
echo "install-deps: done"
