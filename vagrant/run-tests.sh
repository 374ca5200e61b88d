#!/usr/bin/env bash
# Vagrant provisioning, step 2 (as root): on this box's kernel, print
# `meshcap probe` with istio-init's flags, run the kernel and e2e tests that
# apply to the plan it makes, and the end-to-end capture check of
# scripts/kernel-matrix; write a report to ~vagrant/kernel-matrix-report.txt.
#
# Env (from the Vagrantfile): MESHCAP_BOX, MESHCAP_EXPECT_KERNEL,
# MESHCAP_EXPECT_PLAN ("outbound/inbound" engines). MESHCAP_SRC and
# MESHCAP_BUILD_DIR override /meshcap and /home/vagrant/build, so the same
# script runs on any machine with a build (as root).
# Exit 0 when the plan is the expected one and every test and check passed.
set -uo pipefail

SRC=${MESHCAP_SRC:-/meshcap}
BUILD=${MESHCAP_BUILD_DIR:-/home/vagrant/build}
REPORT=${MESHCAP_REPORT:-/home/vagrant/kernel-matrix-report.txt}
BOX=${MESHCAP_BOX:-$(hostname)}
export MESHCAP_SRC=$SRC MESHCAP_BUILD_DIR=$BUILD
run() { "$SRC/vagrant/in-box.sh" "$@"; }
ISTIO=(-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x "" -b '*' -d 15090,15021,15020)
failed=0
results=()

main() {
  echo "== meshcap kernel matrix: box $BOX, kernel $(uname -r)" \
       "(expected ${MESHCAP_EXPECT_KERNEL:-?}), build $(cat /etc/meshcap-build-mode 2>/dev/null || echo native)"
  echo "== meshcap probe ${ISTIO[*]}"
  run "$BUILD/agent/meshcap" probe "${ISTIO[@]}" | tee /tmp/meshcap-probe.txt
  echo "== meshcap probe --json"
  run "$BUILD/agent/meshcap" probe --json "${ISTIO[@]}"
  local out in plan
  out=$(sed -n 's/^  outbound: \([a-z]*\) .*/\1/p' /tmp/meshcap-probe.txt)
  in=$(sed -n 's/^  inbound: \([a-z]*\) .*/\1/p' /tmp/meshcap-probe.txt)
  rm -f /tmp/meshcap-probe.txt
  plan=$out/$in
  if [ -n "${MESHCAP_EXPECT_PLAN:-}" ] && [ "$plan" != "$MESHCAP_EXPECT_PLAN" ]; then
    results+=("FAIL plan $plan, docs/kernels.md says $MESHCAP_EXPECT_PLAN for this kernel")
    failed=1
  else
    results+=("PASS plan $plan")
  fi

  # The eBPF tiers only where meshcap would use eBPF; the iptables ones and
  # the harness everywhere.
  local tests=(test_pod_selftest iptables_kernel_tests capture_kernel_tests capture_e2e_tests)
  [ "$out" = ebpf ] && tests+=(ebpf_kernel_tests ebpf_e2e_tests)
  local t rc
  for t in "${tests[@]}"; do
    if [ ! -x "$BUILD/tests/$t" ]; then
      results+=("SKIP $t (not built)")
      continue
    fi
    echo "== $t"
    run "$BUILD/tests/$t" --gtest_color=no > "/tmp/meshcap-$t.out" 2>&1
    rc=$?
    cat "/tmp/meshcap-$t.out"
    if [ "$rc" = 0 ]; then
      results+=("PASS $t: $(grep -a '^\[  PASSED  \]' "/tmp/meshcap-$t.out" | tail -n 1)")
    else
      results+=("FAIL $t (exit $rc): $(grep -a '^\[  FAILED  \] [A-Za-z]' "/tmp/meshcap-$t.out" | sed 's/^\[  FAILED  \] //; s/,.*//' | sort -u | tr '\n' ' ')")
      failed=1
    fi
    rm -f "/tmp/meshcap-$t.out"
  done

  echo "== end-to-end capture check (meshcap init --mode auto, real traffic)"
  if run env MESHCAP="$BUILD/agent/meshcap" sh "$SRC/scripts/kernel-matrix/guest/capture-check.sh" \
       "$BOX" root "$out" "$in"; then
    results+=("PASS capture check: auto mode chose $plan and captured both directions")
  else
    results+=("FAIL capture check (KM: CHECK lines above)")
    failed=1
  fi

  echo "== summary: box $BOX, kernel $(uname -r)"
  printf '  %s\n' "${results[@]}"
  echo "  => $([ "$failed" = 0 ] && echo PASS || echo FAIL)"
  return "$failed"
}

main 2>&1 | tee "$REPORT"
exit "${PIPESTATUS[0]}"
