#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine and runs them all:
# lint (ruff, buf), generated-code freshness, Kubernetes manifests, pytest (transformers 4.57),
# then the parity tests again under transformers 5. Idempotent: re-running reuses .venv and .cache.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
BUF_VERSION=1.75.0

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
# The venv's own pip, not upgraded: the install must resolve with whatever pip users have.
# torch is pinned (==2.13.0) in the extras: an open requirement would pull a multi-GB CUDA build.
# transformers: the whole suite runs under 4.57 (the oldest allowed, and what the images pin);
# scripts/test_transformers5.sh runs the parity tests under 5.x after it.
python -m pip install -q -e '.[dev]' 'transformers>=4.57,<5'

echo "== the README's install command in a fresh venv, with that venv's pip"
bash scripts/check_install.sh

echo "== Debian packages the tests run (prometheus, promtool, chromium, curl)"
bash scripts/debian_packages.sh

echo "== ruff"
ruff check .

echo "== protobuf: generated code is up to date"
python scripts/gen_proto.py --check

echo "== buf lint / breaking"
if [ ! -x .cache/buf/node_modules/.bin/buf ]; then
  npm install --silent --no-audit --no-fund --prefix .cache/buf "@bufbuild/buf@${BUF_VERSION}" >/dev/null
fi
BUF=.cache/buf/node_modules/.bin/buf
"$BUF" lint
if git rev-parse -q --verify main >/dev/null && [ "$(git rev-parse HEAD)" != "$(git rev-parse main)" ]; then
  against='.git#branch=main'
elif git rev-parse -q --verify HEAD~1 >/dev/null && git cat-file -e HEAD~1:protos/siglip/v1/siglip.proto 2>/dev/null; then
  against='.git#ref=HEAD~1'
else
  against=''
fi
if [ -n "$against" ]; then "$BUF" breaking --against "$against"; else echo "no earlier proto to compare"; fi

if [ -x .ci/k8s-check.sh ] || [ -f .ci/k8s-check.sh ]; then
  echo "== kubernetes manifests"
  bash .ci/k8s-check.sh
fi

echo "== pytest"
python -m pytest "$@"

if [ "${TRANSFORMERS5_TESTS:-1}" != 0 ]; then
  echo "== parity tests under transformers 5 (TRANSFORMERS5_TESTS=0 skips)"
  bash scripts/test_transformers5.sh
fi
