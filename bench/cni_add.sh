#!/usr/bin/env bash
# CNI ADD end to end (plugin exec to result), through the one meshcap-cni
# binary: into a running node data path (enrolment) against no node data
# path (istio's iptables payload applied in the pod's namespace), N fresh
# namespaces each, interleaved A B A B. Prints p50, p99 and the ratios.
#
#   bench/cni_add.sh [BUILD_DIR] [N]      (root; default build, 100)
#
# Everything lives in the run's own directories: a node cgroup under the
# cgroup v2 hierarchy (never its root), MESHCAP_PIN_DIR, MESHCAP_STATE_DIR,
# namespaces named mcb-*; all removed on exit, failure and signal.
set -euo pipefail
BUILD=${1:-$(dirname "$0")/../build}
N=${2:-100}
MESHCAP=$BUILD/agent/meshcap
CNI=$BUILD/cni/meshcap-cni
[ "$(id -u)" -eq 0 ] || { echo "cni_add: needs root" >&2; exit 2; }
case "$N" in '' | *[!0-9]* | 0) echo "cni_add: invalid N '$N'" >&2; exit 2 ;; esac
[ -x "$MESHCAP" ] && [ -x "$CNI" ] || { echo "cni_add: build meshcap and meshcap-cni in $BUILD first" >&2; exit 2; }
CG2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
[ -n "$CG2" ] || { echo "cni_add: no cgroup v2 hierarchy" >&2; exit 1; }

S=$$
NODE_CG=$CG2/mcbench-$S
NODE_PINS=/sys/fs/bpf/mcbench-$S
IPT_PINS=/sys/fs/bpf/mcbench-$S-ipt  # never created: no node data path there
NODE_STATE=/run/mcbench-$S-node
IPT_STATE=/run/mcbench-$S-ipt
cleanup() {
  set +e
  for ns in $(ip netns list | awk '{print $1}' | grep "^mcb-$S-"); do ip netns del "$ns"; done
  MESHCAP_PIN_DIR=$NODE_PINS MESHCAP_STATE_DIR=$NODE_STATE "$MESHCAP" node stop --move-to-iptables >/dev/null 2>&1
  rm -rf "$NODE_PINS" "$IPT_PINS" "$NODE_STATE" "$IPT_STATE"
  rmdir "$NODE_CG" 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$NODE_CG" "$NODE_STATE" "$IPT_STATE"
MESHCAP_PIN_DIR=$NODE_PINS MESHCAP_STATE_DIR=$NODE_STATE "$MESHCAP" node start --cgroup "$NODE_CG" --max-pods $((N + 8)) >/dev/null
CONF='{"cniVersion":"1.0.0","name":"pods","type":"meshcap-cni","prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[]}}'

# One ADD; prints its wall time in microseconds.
add() {  # PIN_DIR STATE_DIR NETNS ID
  local t0 t1
  t0=$(date +%s%N)
  MESHCAP_PIN_DIR=$1 MESHCAP_STATE_DIR=$2 CNI_COMMAND=ADD CNI_CONTAINERID=$4 CNI_NETNS=/run/netns/$3 CNI_IFNAME=eth0 \
    CNI_ARGS="K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$4" "$CNI" <<<"$CONF" >/dev/null 2>&1 ||
    { echo "cni_add: ADD $4 failed" >&2; exit 1; }
  t1=$(date +%s%N)
  echo $(((t1 - t0) / 1000))
}

node_t=() ipt_t=()
for i in $(seq 1 "$N"); do
  for side in node ipt; do
    ns=mcb-$S-$side-$i
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    if [ $side = node ]; then node_t+=("$(add "$NODE_PINS" "$NODE_STATE" "$ns" "n$i")")
    else ipt_t+=("$(add "$IPT_PINS" "$IPT_STATE" "$ns" "i$i")"); fi
  done
done

pct() {  # P VALUES...
  local p=$1; shift
  printf '%s\n' "$@" | sort -n | awk -v p="$p" '{ v[NR] = $1 } END { i = int((NR * p + 99) / 100); if (i < 1) i = 1; print v[i] }'
}
n50=$(pct 50 "${node_t[@]}") n99=$(pct 99 "${node_t[@]}")
i50=$(pct 50 "${ipt_t[@]}") i99=$(pct 99 "${ipt_t[@]}")
echo "CNI ADD, $N sequential ADDs each, interleaved, one meshcap-cni binary ($(uname -r), $(nproc) CPUs)"
printf '  %-34s p50 %8.1f ms   p99 %8.1f ms\n' "node data path (enrolment)" "$(echo "$n50/1000" | bc -l)" "$(echo "$n99/1000" | bc -l)"
printf '  %-34s p50 %8.1f ms   p99 %8.1f ms\n' "no node (iptables in the namespace)" "$(echo "$i50/1000" | bc -l)" "$(echo "$i99/1000" | bc -l)"
printf '  ratio node/iptables: p50 %.2f, p99 %.2f (target <= 0.30 at p99)\n' "$(echo "$n50/$i50" | bc -l)" "$(echo "$n99/$i99" | bc -l)"
