#!/usr/bin/env bash
# Vagrant provisioning, step 1 (as root): meshcap's build dependencies and
# the build, on an Ubuntu or a Debian box (the file name predates the
# Debian boxes). See vagrant/Vagrantfile; UNTESTED like it (README.md).
#
#   MESHCAP_BUILD=auto|native|container  (default auto)
#
# native: on Debian 12 and later, scripts/install-deps.sh itself; on Ubuntu,
# the packages it installs under Ubuntu's names, plus bpftool from
# linux-tools (Ubuntu has no bpftool package). Needs CMake >= 3.25 and
# libbpf >= 1.1: Debian 12, Ubuntu 24.04 and later.
# container: a Debian 12 image with scripts/install-deps.sh run in it; the
# build tree is /home/vagrant/build either way, and vagrant/in-box.sh runs
# a command where the binaries work (natively, or in that container).
set -euo pipefail

SRC=/meshcap
BUILD=/home/vagrant/build
MODE=${MESHCAP_BUILD:-auto}
export DEBIAN_FRONTEND=noninteractive

. /etc/os-release
echo "provision: $ID $VERSION_ID, kernel $(uname -r), build mode $MODE"

# version_ge A B: A >= B (dotted versions).
version_ge() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" = "$2" ]; }

# native_ok: this release has CMake >= 3.25 and libbpf >= 1.1.
native_ok() {
  case $ID in
    debian) version_ge "${VERSION_ID:-0}" 12 ;;
    ubuntu) version_ge "$VERSION_ID" 24.04 ;;
    *) return 1 ;;
  esac
}
if [ "$MODE" = auto ]; then
  if native_ok; then MODE=native; else MODE=container; fi
fi
echo "$MODE" > /etc/meshcap-build-mode

apt-get update -qq
# Run time, either way: the tools meshcap and the tests run on the box, and
# the kernel's netfilter modules loaded up front (a container cannot load
# them; iptables-legacy asks for them by name).
apt-get install -y -qq --no-install-recommends iproute2 iptables util-linux procps kmod haproxy busybox >/dev/null
systemctl disable --now haproxy >/dev/null 2>&1 || true
grep -v '^#' "$SRC/scripts/kernel-matrix/modules.txt" | grep . | while read -r m; do
  modprobe "$m" 2>/dev/null || echo "provision: kernel module $m not loadable here"
done
# A cgroup v2 hierarchy: Ubuntu 18.04 and 20.04 mount it at
# /sys/fs/cgroup/unified (systemd's hybrid layout), Ubuntu 22.04, Debian 11
# and later at /sys/fs/cgroup.
grep -q ' cgroup2 ' /proc/self/mountinfo || echo "provision: no cgroup v2 mounted: expect iptables everywhere"

case $MODE in
  native)
    native_ok || { echo "provision: native builds need Debian 12 or Ubuntu 24.04 or later" >&2; exit 1; }
    if [ "$ID" = debian ]; then
      "$SRC/scripts/install-deps.sh"
      sudo -u vagrant cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMESHCAP_BUILD_BENCH=OFF
      sudo -u vagrant cmake --build "$BUILD"
      echo "provision: built $BUILD/agent/meshcap ($MODE)"
      exit 0
    fi
    apt-get install -y -qq --no-install-recommends \
      build-essential cmake ninja-build pkg-config clang llvm \
      libbpf-dev libelf-dev zlib1g-dev linux-libc-dev \
      libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev libgtest-dev libgmock-dev \
      linux-tools-common "linux-tools-$(uname -r)" >/dev/null
    # CMakeLists.txt finds bpftool in /usr/sbin: linux-tools-common's wrapper.
    sudo -u vagrant cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMESHCAP_BUILD_BENCH=OFF
    sudo -u vagrant cmake --build "$BUILD"
    ;;
  container)
    apt-get install -y -qq --no-install-recommends docker.io >/dev/null
    systemctl enable --now docker >/dev/null
    # The image: Debian 12 with what scripts/install-deps.sh installs.
    ctx=$(mktemp -d)
    cp "$SRC/scripts/install-deps.sh" "$ctx/"
    cat > "$ctx/Dockerfile" <<'EOF'
FROM debian:bookworm
COPY install-deps.sh /tmp/install-deps.sh
RUN /tmp/install-deps.sh && apt-get install -y -qq --no-install-recommends kmod busybox && rm -rf /var/lib/apt/lists/*
EOF
    docker build -q -t meshcap-dev:bookworm "$ctx" >/dev/null
    rm -rf "$ctx"
    mkdir -p "$BUILD"
    chown vagrant: "$BUILD"
    "$SRC/vagrant/in-box.sh" cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMESHCAP_BUILD_BENCH=OFF
    "$SRC/vagrant/in-box.sh" cmake --build "$BUILD"
    ;;
  *)
    echo "provision: MESHCAP_BUILD must be auto, native or container" >&2
    exit 2
    ;;
esac
echo "provision: built $BUILD/agent/meshcap ($MODE)"
