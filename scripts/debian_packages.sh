#!/usr/bin/env bash
# Installs the Debian packages some tests run for real: Prometheus and promtool (the
# monitoring tests evaluate the manifests' PromQL against real scrapes), Chromium (the web
# page's browser test, driven by Playwright) and curl (the HTTP API's curl test). Skips what
# is already there. Without root or sudo it only says what is missing: those tests then
# skip, except under CI=true, where a missing tool fails them (tests/support/binaries.py).
set -euo pipefail

declare -A package_of=(
  [prometheus]=prometheus [promtool]=prometheus
  [chromium]=chromium
  [curl]=curl
)
missing=()
for tool in "${!package_of[@]}"; do
  command -v "$tool" >/dev/null || missing+=("${package_of[$tool]}")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "all present: ${!package_of[*]}"
  exit 0
fi
mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "not root and no sudo: not installing ${packages[*]} (the tests that need them skip)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
echo "installed: ${packages[*]}"
