#!/bin/sh
# End-to-end capture check with real traffic, the way a pod is captured:
#
#   capture-check.sh LABEL PRIV EXPECT_OUT EXPECT_IN
#
# LABEL       names the check in the report (KM: CHECK LABEL/...).
# PRIV        root:  `meshcap init --mode auto` from outside the pod, as root,
#                    with --netns (and --cgroup when cgroup v2 is mounted);
#             nobpf: from inside the pod (its cgroup and netns) with only
#                    CAP_NET_ADMIN and CAP_NET_RAW, as istio-init runs.
# EXPECT_OUT  the engine the plan must choose for outbound (ebpf|iptables),
# EXPECT_IN   and for inbound.
#
# A pod is a netns with a veth to a peer netns (10.213.0.2 <-> .1). Stand-ins
# built from `busybox nc` answer with their name: the proxy's outbound (15001)
# and inbound (15006) listeners run as UID 1337 in the pod, an app on 9090 as
# UID 1000 in the pod, an upstream on 8080 in the peer. A captured connection
# is answered by a proxy listener, a direct one by the app or the upstream.
#
# Prints "KM: CHECK ..." lines; exits non-zero when any check failed. Runs in
# the kernel-matrix guest, and on a development machine as root (it only
# touches the namespaces and the cgroup it creates, and removes them).
set -u

LABEL=$1 PRIV=$2 EXPECT_OUT=$3 EXPECT_IN=$4
MESHCAP=${MESHCAP:-meshcap}
S=$$
POD=kmpod-$S PEER=kmpeer-$S NAME=km-$LABEL-$S
POD_NS=/run/netns/$POD PEER_NS=/run/netns/$PEER
POD_IP=10.213.0.2 PEER_IP=10.213.0.1
FAILED=0
PIDS=""
CG=""
CG2=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)

# The real iproute2 and util-linux tools: busybox sh runs its own applets
# (whose ip has no netns, whose setpriv has no --bounding-set) before
# anything on PATH.
IP=$(which ip) NSENTER=$(which nsenter) SETPRIV=$(which setpriv)
ip() { "$IP" "$@"; }
nsenter() { "$NSENTER" "$@"; }

say() { echo "KM: $*"; }
check() {  # check NAME OK(0|1) DETAIL
  if [ "$2" = 0 ]; then say "CHECK $LABEL/$1 PASS $3"; else say "CHECK $LABEL/$1 FAIL $3"; FAILED=1; fi
}

teardown() {
  [ -e "$POD_NS" ] && admin cleanup --name "$NAME" --log-level warn >/dev/null 2>&1
  for p in $PIDS; do kill "$p" 2>/dev/null; done
  if [ -n "$CG" ] && [ -d "$CG" ]; then
    for p in $(cat "$CG/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    sleep 0.2
    rmdir "$CG" 2>/dev/null
  fi
  for ns in "$POD" "$PEER"; do
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
}
trap teardown EXIT
trap 'exit 130' INT TERM

# in_pod UID CMD...: runs CMD in the pod's cgroup (when there is one) and
# netns as UID (root keeps its capabilities).
in_pod() {
  uid=$1; shift
  sh -c 'cg=$1 ns=$2 u=$3 nsenter=$4 setpriv=$5; shift 5
         [ -z "$cg" ] || echo $$ > "$cg/cgroup.procs"
         if [ "$u" = 0 ]; then exec "$nsenter" --net="$ns" "$@"; fi
         exec "$nsenter" --net="$ns" "$setpriv" --reuid="$u" --regid="$u" --clear-groups -- "$@"' \
    km "$CG" "$POD_NS" "$uid" "$NSENTER" "$SETPRIV" "$@"
}
# in_pod_nobpf CMD...: root inside the pod with CAP_NET_ADMIN and CAP_NET_RAW
# only, as istio-init runs.
in_pod_nobpf() {
  in_pod 0 "$SETPRIV" --bounding-set=-all,+net_admin,+net_raw --inh-caps=-all -- "$@"
}
# with_istio_flags CMD...: CMD followed by istio-init's flags for a pod
# (outbound and inbound capture of everything).
with_istio_flags() {
  "$@" -p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020
}
# admin ARGS...: `meshcap ARGS` (status, cleanup) where init ran. An init
# from inside the pod records its netns as /proc/self/ns/net, which names
# the caller's netns in any other process (docs/kernels.md, "Known gaps"),
# so status and cleanup run inside the pod too.
admin() {
  if [ "$PRIV" = nobpf ]; then in_pod 0 "$MESHCAP" "$@"; else "$MESHCAP" "$@"; fi
}
serve() {  # serve PLACE PORT REPLY: a listener answering REPLY to each connection
  case $1 in
    peer) "$NSENTER" --net="$PEER_NS" busybox nc -ll -p "$2" -e /bin/echo "$3" & ;;
    proxy) in_pod 1337 busybox nc -ll -p "$2" -e /bin/echo "$3" & ;;
    app) in_pod 1000 busybox nc -ll -p "$2" -e /bin/echo "$3" & ;;
  esac
  PIDS="$PIDS $!"
}
# The answer a connection gets: from the pod as UID, or from the peer.
from_pod() { in_pod "$1" busybox nc -w 5 "$2" "$3" </dev/null 2>&1; }
from_peer() { nsenter --net="$PEER_NS" busybox nc -w 5 "$1" "$2" </dev/null 2>&1; }
expect_answer() {  # expect_answer CHECK WANT GOT; fails when GOT is not WANT
  [ "$3" = "$2" ]; rc=$?
  check "$1" $rc "(answer '$3', want '$2')"
  return $rc
}
dump_nat() {  # dump_nat WHY: the pod's nat rules, for a failed check
  say "INFO $LABEL $1: the pod's nat table follows"
  for save in iptables-nft-save iptables-legacy-save; do
    nsenter --net="$POD_NS" "$save" -t nat 2>/dev/null | grep -v '^#' | sed "s/^/    $save| /"
  done
}
engine_of() {  # engine_of DIRECTION < meshcap status output
  sed -n "s/^  $1: \([a-z]*\)[ ,].*/\1/p" | head -n 1
}
istio_rules() {
  nsenter --net="$POD_NS" iptables-nft-save 2>/dev/null | grep -c ISTIO
  nsenter --net="$POD_NS" iptables-legacy-save 2>/dev/null | grep -c ISTIO
}

# --- the pod -----------------------------------------------------------------
ip netns add "$POD" && ip netns add "$PEER" || { check setup 1 "ip netns add"; exit 1; }
ip link add "kmp$S" type veth peer name "kmq$S" || { check setup 1 "veth"; exit 1; }
ip link set "kmp$S" netns "$POD" && ip link set "kmq$S" netns "$PEER"
ip -n "$POD" link set lo up && ip -n "$PEER" link set lo up
ip -n "$POD" addr add "$POD_IP/24" dev "kmp$S" && ip -n "$PEER" addr add "$PEER_IP/24" dev "kmq$S"
ip -n "$POD" link set "kmp$S" up && ip -n "$PEER" link set "kmq$S" up
ip -n "$POD" route add default via "$PEER_IP"
if [ -n "$CG2" ]; then
  CG=$CG2/kmpod-$S
  mkdir "$CG" || { check setup 1 "mkdir $CG"; exit 1; }
fi
say "INFO $LABEL pod netns $POD_NS, cgroup ${CG:-none (no cgroup v2 mounted)}, meshcap as $PRIV"

serve peer 8080 upstream-8080
serve app 9090 app-9090
sleep 1
expect_answer direct-before "upstream-8080" "$(from_pod 1000 "$PEER_IP" 8080)"
expect_answer inbound-direct-before "app-9090" "$(from_peer "$POD_IP" 9090)"

# --- capture ---------------------------------------------------------------
# --run-validation while nothing listens on the proxy's ports yet: istio's
# probe (as UID 1337 to 127.0.0.6:15002) must reach 15001/15006 with
# SO_ORIGINAL_DST naming the probe's address.
if [ "$PRIV" = nobpf ]; then
  out=$(with_istio_flags in_pod_nobpf "$MESHCAP" init --mode ebpf --name "$NAME" 2>&1); rc=$?
  [ "$rc" = 1 ]; check ebpf-mode-refused $? "(--mode ebpf without CAP_BPF exits $rc: $(echo "$out" | tail -n 1))"
  # No --run-validation here: meshcap's validator enters the pod's netns with
  # setns(2), which needs CAP_SYS_ADMIN even for the caller's own netns
  # (docs/kernels.md, "Known gaps").
  out=$(with_istio_flags in_pod_nobpf "$MESHCAP" init --mode auto --name "$NAME" 2>&1); rc=$?
elif [ -n "$CG" ]; then
  out=$(with_istio_flags "$MESHCAP" init --mode auto --name "$NAME" --netns "$POD_NS" --cgroup "$CG" \
          --run-validation 2>&1); rc=$?
else
  out=$(with_istio_flags "$MESHCAP" init --mode auto --name "$NAME" --netns "$POD_NS" --run-validation 2>&1); rc=$?
fi
echo "$out" | sed 's/^/    init| /'
validated=", with --run-validation"
[ "$PRIV" = nobpf ] && validated=""
[ "$rc" = 0 ]; check init-auto $? "(exit $rc$validated)"

status=$(admin status --name "$NAME" 2>&1)
echo "$status" | sed 's/^/    status| /'
got_out=$(echo "$status" | engine_of outbound)
got_in=$(echo "$status" | engine_of inbound)
say "PLAN-USED $LABEL outbound=$got_out inbound=$got_in"
[ "$got_out" = "$EXPECT_OUT" ]; check plan-outbound $? "(outbound $got_out, want $EXPECT_OUT)"
[ "$got_in" = "$EXPECT_IN" ]; check plan-inbound $? "(inbound $got_in, want $EXPECT_IN)"
echo "$status" | grep -q '^  drift: none'; check no-drift $? ""

rules=$(istio_rules | awk '{ s += $1 } END { print s + 0 }')
if [ "$EXPECT_OUT" = iptables ]; then
  [ "$rules" -gt 10 ]; check istio-chains-present $? "($rules ISTIO lines)"
fi

# --- traffic ---------------------------------------------------------------
serve proxy 15001 proxy-outbound
serve proxy 15006 proxy-inbound
sleep 1
expect_answer outbound-captured "proxy-outbound" "$(from_pod 1000 "$PEER_IP" 8080)" ||
  dump_nat "outbound not captured"
expect_answer proxy-uid-goes-direct "upstream-8080" "$(from_pod 1337 "$PEER_IP" 8080)"
expect_answer inbound-captured "proxy-inbound" "$(from_peer "$POD_IP" 9090)"

# --- cleanup ---------------------------------------------------------------
out=$(admin cleanup --name "$NAME" 2>&1); rc=$?
[ "$rc" = 0 ]; check cleanup $? "(exit $rc)"
rules=$(istio_rules | awk '{ s += $1 } END { print s + 0 }')
[ "$rules" = 0 ] && [ ! -e "/sys/fs/bpf/meshcap/$NAME" ]; check cleanup-leaves-nothing $? "($rules ISTIO lines)"
expect_answer direct-after-cleanup "upstream-8080" "$(from_pod 1000 "$PEER_IP" 8080)"
expect_answer inbound-direct-after-cleanup "app-9090" "$(from_peer "$POD_IP" 9090)"

exit $FAILED
