#!/usr/bin/env bash
# Checks meshcap's Kubernetes manifests (deploy/kubernetes) without a cluster.
#
#   scripts/validate-manifests.sh                  render and check every kustomization
#   scripts/validate-manifests.sh DIR...           render and check these (an overlay of your own, say)
#   scripts/validate-manifests.sh --kubectl none   use the built-in renderer even where kubectl is
#   scripts/validate-manifests.sh --install        only install the checker (needs the npm registry)
#
# Every directory under deploy/kubernetes with a kustomization.yaml is
# rendered with `kubectl kustomize` (a small built-in renderer stands in
# where kubectl is missing, and says what it skipped), and each object is
# checked against the JSON schema of its kind generated from Kubernetes'
# OpenAPI document, walked field by field against its kind's TypeScript
# interface so that unknown fields fail too, and held to the API server's
# rules and to meshcap's own (deploy/kubernetes/validate/
# validate.mjs says which). A self-test then plants known mistakes and
# requires each to be caught. The last line reads "N passed, M failed"; the
# exit code is 0 only when nothing failed.
#
# The checker's packages (pinned in deploy/kubernetes/validate/package-lock.json)
# are installed once into build/tools/k8s-validate with `npm ci`; after that
# it runs offline. scripts/install-deps.sh calls --install.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/deploy/kubernetes/validate"
tools="$root/build/tools/k8s-validate"

install_tools() {
  if [ -d "$tools/node_modules" ] && cmp -s "$src/package-lock.json" "$tools/package-lock.json"; then
    return 0
  fi
  if ! command -v npm >/dev/null; then
    echo "validate-manifests: npm is needed to install the checker (Node.js 20 or later)" >&2
    return 1
  fi
  echo "validate-manifests: installing the checker into ${tools#"$root"/}"
  mkdir -p "$tools"
  cp "$src/package.json" "$src/package-lock.json" "$tools/"
  (cd "$tools" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
}

case "${1:-}" in
  --install) install_tools; exit ;;
  -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
esac

install_tools
cp "$src/validate.mjs" "$tools/validate.mjs"
exec node "$tools/validate.mjs" --root "$root" "$@"
