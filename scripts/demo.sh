#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and runs the
# demo on a throwaway pod (removed at the end, also on failure).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cmake --preset default >/dev/null
cmake --build --preset default --target meshcap meshcap-cni meshcap-demo
exec ./build/tests/meshcap-demo
