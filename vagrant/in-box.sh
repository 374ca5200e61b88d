#!/usr/bin/env bash
# Runs a command where meshcap's binaries work on this Vagrant box: directly
# when it was built natively, else in the Debian 12 container built by
# provision-ubuntu.sh. The container is privileged and shares the box's
# kernel, network namespace, PIDs, cgroups, BPF filesystem and modules, so
# what meshcap probes, attaches and applies is the box's, as for a node agent
# in a pod. The source and build trees keep their paths (the tests have
# meshcap's absolute path compiled in).
#
#   in-box.sh COMMAND [ARGS...]
set -euo pipefail
SRC=${MESHCAP_SRC:-/meshcap}
BUILD=${MESHCAP_BUILD_DIR:-/home/vagrant/build}
mode=$(cat /etc/meshcap-build-mode 2>/dev/null || echo native)
[ "$mode" = container ] || exec "$@"
# meshcap pins under /sys/fs/bpf: the box's, so pins outlive the container.
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
exec docker run --rm -i --privileged --network host --pid host --cgroupns host \
  -v "$SRC:$SRC" -v "$BUILD:$BUILD" -w "$BUILD" \
  -v /sys/fs/cgroup:/sys/fs/cgroup -v /sys/fs/bpf:/sys/fs/bpf:rshared \
  -v /lib/modules:/lib/modules:ro -v /run/meshcap:/run/meshcap \
  meshcap-dev:bookworm "$@"
