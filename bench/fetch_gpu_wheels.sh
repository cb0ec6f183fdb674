#!/usr/bin/env bash
# Downloads, into .whl/, the wheels bench/gpu_bench.sh installs on a GPU machine whose Python
# 3.12 already has torch, transformers (with safetensors, tokenizers, huggingface-hub,
# packaging), numpy and an older grpcio, but none of the gateway's other dependencies.
#
#   bench/fetch_gpu_wheels.sh            # then carry .whl/ (git-ignored) to the GPU machine
#
# Versions are pinned to what this project's CPU venv runs and was tested with. grpcio and
# protobuf are carried although the GPU machine has grpcio: the generated *_pb2_grpc.py files
# refuse to import under a grpcio older than the grpcio-tools that made them (1.81), and the
# *_pb2.py files need protobuf >= their gencode (6.x). Nothing transformers already needs
# (safetensors, tokenizers, huggingface-hub, requests/urllib3, packaging) is
# carried, so the GPU machine's torch/transformers stack is never shadowed.
# The carried total must stay under 64 MiB (the device tool's limit): nvidia-pytriton is slimmed
# to Python 3.12 and repacked as a .tar.xz (see below); the script checks the total.
set -euo pipefail

cd "$(dirname "$0")/.."
DEST=.whl
mkdir -p "$DEST"

WHEELS=(
  # the gateway
  grpcio==1.85.3
  protobuf==6.33.6
  grpcio-health-checking==1.81.1
  grpcio-reflection==1.81.1
  grpcio-status==1.85.3
  googleapis-common-protos==1.76.0
  prometheus-client==0.26.0
  pillow==13.0.0
  sentencepiece==0.2.1
  # the Triton client (gateway backend and the benchmark's `direct` mode)
  tritonclient==2.73.0
  python-rapidjson==1.25
  ml-dtypes==0.5.4
  # the embedded Triton: tritonserver 2.51 binary, python-backend stubs for 3.8-3.13.
  # gateway.embedded_triton.distribution only locates the package (importlib find_spec) and never
  # imports it, so pytriton's own Python dependencies (pyzmq, typer, sh, ...) are not needed.
  nvidia-pytriton==0.7.0
)

SLIM="$DEST/nvidia_pytriton-0.7.0-py312-slim.tar.xz"
if [[ -f "$SLIM" ]]; then  # already slimmed by an earlier run: do not fetch 55 MB again
  keep=()
  for w in "${WHEELS[@]}"; do [[ "$w" == nvidia-pytriton* ]] || keep+=("$w"); done
  WHEELS=("${keep[@]}")
fi

PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 \
  --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$DEST" "${WHEELS[@]}"

# nvidia-pytriton's wheel alone is 53 MiB (55 MB): with the rest that is over the 64 MiB the
# device tool carries. Most of it is for other Pythons: a bundled libpython3.13 (32 MB
# unpacked) and the python-backend stubs of 3.8-3.11 and 3.13. Drop those and recompress with
# xz: ~26 MiB. gpu_bench.sh unpacks the archive into its --target directory, next to the
# wheels (the same layout pip would give), so nothing else changes.
PYTRITON_WHL=$(find "$DEST" -maxdepth 1 -name 'nvidia_pytriton-*.whl' | head -1)
if [[ -n "$PYTRITON_WHL" ]]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$PYTHON" -m zipfile -e "$PYTRITON_WHL" "$work"
  rm -f "$work"/nvidia_pytriton.libs/libpython3-*.13.so.*
  find "$work/pytriton/tritonserver/python_backend_stubs" -mindepth 1 -maxdepth 1 \
    ! -name 3.12 -exec rm -rf {} +
  # Python's zipfile drops the executable bits the wheel records.
  chmod +x "$work/pytriton/tritonserver/bin/tritonserver" \
    "$work/pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub"
  XZ_OPT="-6 -T0" tar -C "$work" -cJf "$SLIM" .
  rm -f "$PYTRITON_WHL"
fi

total=$(du -cb "$DEST"/* | tail -1 | cut -f1)
find "$DEST" -maxdepth 1 -type f -printf '%10s  %p\n' | sort -n
echo "total: $((total / 1024 / 1024)) MiB in $(find "$DEST" -maxdepth 1 -type f | wc -l) files"
if (( total >= 64 * 1024 * 1024 )); then
  echo "error: $DEST is over the 64 MiB the device tool carries" >&2
  exit 1
fi
