#!/usr/bin/env bash
# Builds meshcap's libFuzzer targets (tests/fuzz: clang, ASan + UBSan) in a
# separate build directory and runs each for a bounded time on its kept seed
# corpus (tests/fuzz/corpus/<target>). Fails when any target crashes (a
# sanitizer report, an exception other than meshcap::UsageError, a broken
# invariant, a timeout or an out-of-memory).
#
#   FUZZ_SECONDS   seconds per target (default 20)
#   FUZZ_JOBS      targets run at the same time (default: number of CPUs)
#   FUZZ_TARGETS   space-separated subset (default: all)
#   FUZZ_BUILD_DIR build directory (default: <repo>/build-fuzz)
#
# New inputs found while running go to $FUZZ_BUILD_DIR/corpus/<target>, never
# into the kept corpus; crashing inputs to $FUZZ_BUILD_DIR/artifacts/.
# Reproduce one with: build-fuzz/fuzz_<target> <artifact>
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
SECONDS_EACH=${FUZZ_SECONDS:-20}
JOBS=${FUZZ_JOBS:-$(nproc)}
TARGETS=${FUZZ_TARGETS:-"flags env ports cidrs ids interfaces cni_config"}

case "$SECONDS_EACH" in '' | *[!0-9]*) echo "fuzz: FUZZ_SECONDS must be a number of seconds" >&2; exit 2 ;; esac
case "$JOBS" in '' | *[!0-9]* | 0) echo "fuzz: FUZZ_JOBS must be a positive number" >&2; exit 2 ;; esac

CXX_FUZZ=
for c in clang++ clang++-14 clang++-16 clang++-19; do
  if command -v "$c" >/dev/null 2>&1; then CXX_FUZZ=$(command -v "$c"); break; fi
done
if [ -z "$CXX_FUZZ" ]; then
  echo "fuzz: clang++ not found (scripts/install-deps.sh installs clang)" >&2
  exit 1
fi
# libFuzzer's runtime is a separate package on Debian (libclang-rt-14-dev).
if ! echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' |
    "$CXX_FUZZ" -x c++ -fsanitize=fuzzer,address - -o /dev/null 2>/dev/null; then
  echo "fuzz: $CXX_FUZZ cannot link -fsanitize=fuzzer: install libclang-rt-14-dev (scripts/install-deps.sh)" >&2
  exit 1
fi

echo "fuzz: building in $BUILD with $CXX_FUZZ"
GEN=()
if command -v ninja >/dev/null 2>&1; then GEN=(-G Ninja); fi
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$ROOT/tests/fuzz" -B "$BUILD" "${GEN[@]}" -DCMAKE_CXX_COMPILER="$CXX_FUZZ" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$BUILD.configure.log" 2>&1 ||
    { cat "$BUILD.configure.log" >&2; exit 1; }
  rm -f "$BUILD.configure.log"
fi
cmake --build "$BUILD" -- >"$BUILD/build.log" 2>&1 || { tail -50 "$BUILD/build.log" >&2; exit 1; }

mkdir -p "$BUILD/artifacts" "$BUILD/logs"
run_one() {
  local t=$1
  local bin="$BUILD/fuzz_$t" kept="$ROOT/tests/fuzz/corpus/$t" work="$BUILD/corpus/$t"
  local dict=()
  [ -f "$ROOT/tests/fuzz/$t.dict" ] && dict=(-dict="$ROOT/tests/fuzz/$t.dict")
  mkdir -p "$work"
  # The first corpus directory receives new inputs; the kept one is read only.
  "$bin" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
    -print_final_stats=1 -artifact_prefix="$BUILD/artifacts/$t-" "${dict[@]}" \
    "$work" "$kept" >"$BUILD/logs/$t.log" 2>&1
}

failed=()
pids=()
names=()
wait_slot() {
  # Waits for the oldest running target and records its result.
  local pid=${pids[0]} name=${names[0]}
  pids=("${pids[@]:1}")
  names=("${names[@]:1}")
  if wait "$pid"; then
    local runs cov
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$BUILD/logs/$name.log" | grep -o '[0-9]*$' || true)
    cov=$(grep -o 'cov: [0-9]*' "$BUILD/logs/$name.log" | tail -1 || true)
    echo "fuzz: $name ok (${runs:-?} runs, ${cov:-cov: ?})"
  else
    echo "fuzz: $name FAILED; log $BUILD/logs/$name.log, crashing input in $BUILD/artifacts/:" >&2
    tail -40 "$BUILD/logs/$name.log" >&2
    failed+=("$name")
  fi
}

echo "fuzz: ${SECONDS_EACH}s per target, $JOBS at a time: $TARGETS"
for t in $TARGETS; do
  if [ ! -x "$BUILD/fuzz_$t" ]; then echo "fuzz: no target $t" >&2; exit 2; fi
  while [ "${#pids[@]}" -ge "$JOBS" ]; do wait_slot; done
  run_one "$t" &
  pids+=($!)
  names+=("$t")
done
while [ "${#pids[@]}" -gt 0 ]; do wait_slot; done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: no crash"
