#!/usr/bin/env bash
# The core parity tests under transformers 5.x, in a venv of their own (.cache/venv-transformers5):
# the main venv (.venv, scripts/test.sh) runs the whole suite under 4.57, the oldest release
# pyproject.toml allows and the one the container images pin; `pip install .` gives users 5.x.
# Parity: tokenizer, image preprocessing, scoring, checkpoint, the towers' model.py, and the
# towers and the gateway over the wire against a real embedded Triton. Each test builds its
# checkpoint with the transformers under test. Idempotent: re-running reuses the venv.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.cache/venv-transformers5
TESTS=(
  tests/unit/test_text.py tests/unit/test_images.py tests/unit/test_scoring.py tests/tools/test_checkpoint.py
  tests/unit/test_families.py
  tests/unit/test_model_py.py tests/unit/test_cache.py tests/unit/test_engine.py
  tests/real_triton/test_triton_models.py tests/real_triton/test_gateway_e2e.py
)

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q -e '.[dev]' 'transformers>=5,<6'
"$VENV/bin/python" -c 'import transformers; print("transformers", transformers.__version__)'
# This venv first on PATH even when called from test.sh's activated .venv: the embedded
# Triton's stub finds its Python (so the towers' transformers) on PATH.
export VIRTUAL_ENV="$PWD/$VENV" PATH="$PWD/$VENV/bin:$PATH"
# tests/tools/test_checkpoint.py loads this run's checkpoint under 4.57 too, with the main venv.
if [ -x .venv/bin/python ]; then export SIGLIP_TEST_OTHER_PYTHON="$PWD/.venv/bin/python"; fi
python -m pytest "${TESTS[@]}" "$@"
