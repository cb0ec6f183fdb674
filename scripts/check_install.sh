#!/usr/bin/env bash
# Runs the README's first command as a new user would: in a fresh copy of the checkout, with a
# fresh venv and the pip that venv comes with (never upgraded), under a time bound. Only the
# last step differs: `siglip-gateway serve` becomes `siglip-gateway serve --help`, since
# serving would fetch the checkpoint from the hub. Fails when the install does not resolve
# and finish within INSTALL_TIMEOUT_S.
set -euo pipefail
cd "$(dirname "$0")/.."

INSTALL_TIMEOUT_S=${INSTALL_TIMEOUT_S:-180}
PY=${PYTHON:-python3}

# The command exactly as the README shows it (the line that creates .venv).
command=$(grep -m1 -E '^python3 -m venv \.venv && ' README.md)
case "$command" in
  *"&& siglip-gateway serve") ;;
  *) echo "README's first command does not end in 'siglip-gateway serve': $command" >&2; exit 1 ;;
esac
command="${command/#python3 /$PY }"
command="${command% serve} serve --help"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# What a clone has: tracked files and untracked ones git does not ignore (no .venv, no caches).
git ls-files -z --cached --others --exclude-standard \
  | tar --null --files-from=- -cf - 2>/dev/null | tar -xf - -C "$work"

cd "$work"
echo "running, bounded by ${INSTALL_TIMEOUT_S} s: $command"
start=$(date +%s)
rc=0
timeout --kill-after=10 "$INSTALL_TIMEOUT_S" bash -c "$command" >install.log 2>&1 || rc=$?
if [ "$rc" -ne 0 ]; then
  tail -n 30 install.log >&2
  if [ "$rc" -ge 124 ]; then
    echo "FAILED: the README's install command did not finish within ${INSTALL_TIMEOUT_S} s" >&2
  else
    echo "FAILED: the README's install command exited with $rc" >&2
  fi
  exit 1
fi
grep -q '^usage: siglip-gateway serve' install.log || {
  tail -n 30 install.log >&2; echo "FAILED: 'siglip-gateway serve --help' printed no usage" >&2
  exit 1; }
echo "README install command: ok in $(( $(date +%s) - start )) s with $(.venv/bin/pip --version | cut -d' ' -f1-2)"
