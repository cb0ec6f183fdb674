#!/usr/bin/env bash
# GPU variant of the serving benchmark, for a lent H100/H200 machine (one GPU, 16 cores) whose
# Python 3.12 has torch, transformers, numpy and grpcio but not the gateway's other
# dependencies. Prepare here first:  bench/fetch_gpu_wheels.sh  (fills .whl/, ~50 MiB, carried).
#
#   bench/gpu_bench.sh            # JSON, gateway logs and gpu_bench.log in $OUT (./gpu-out)
#
# Steps, ~5-6 minutes; each is bounded by `timeout`, and the benchmark steps by what is left of
# a 7.5-minute budget (BUDGET_S), so the whole stays under 8 minutes. The JSON is rewritten
# after every cell: a step cut short still leaves what it measured.
#   1. install .whl/*.whl and the slimmed pytriton archive into /tmp/site (no index, no deps)
#   2. make the base random-weight checkpoint (google/siglip-base-patch16-256's architecture)
#   3. Embed raw 256x256 images: direct and served at concurrency 64 against the embedded
#      Triton with fp16 towers (SIGLIP_DTYPE=float16), the vision tower compiled with CUDA
#      graphs (compile_mode "reduce-overhead", buckets 8,16,32,64: a copy of model_repository/
#      in /tmp), then the fp16 ceiling, eager and compiled the same way, at Triton's batch
#   4. the eager and compiled ceilings again at batch 64 (the vision model's max_batch_size)
#   5. if time is left: nvJPEG's pixels against exact (bench/decode_fidelity.py --device cuda)
#   6. if time is left: direct and served again with the eager towers (the committed configs)
# The served steps run on copies of model_repository/ without the JPEG-decode models: Embed raw
# does not use them, and a decode model that cannot load (torchvision) would stop Triton.
# If Triton cannot start here (e.g. no libpython3.12.so for the python-backend stub), step 3
# records why in the JSON (meta.remote_error) and still measures the in-process ceilings.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-$PWD/gpu-out}
SITE=${SITE:-/tmp/site}
CKPT=${CKPT:-/tmp/siglip-random-base}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-450}
mkdir -p "$OUT/logs"
exec > >(tee -a "$OUT/gpu_bench.log") 2>&1
step() { echo "== $(date -u +%H:%M:%S) +${SECONDS}s $*"; }
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu: a dry run of this script on a machine without a GPU
# Seconds for a step: its own cap, or what is left of the budget if that is less (at least 1:
# `timeout 0` would mean no limit at all).
left() { local rest=$((BUDGET_S - SECONDS)); rest=$((rest < $1 ? rest : $1)); echo $((rest > 1 ? rest : 1)); }

# Into this log, not files of their own: the device tool brings back at most 8 files from $OUT,
# and the JSONs and the two gateway logs already make 7 with this log.
step "machine"
nvidia-smi 2>&1 || echo "nvidia-smi failed"
"$PY" - <<'EOF'
import os, platform, sys, sysconfig
print("python", sys.version.split()[0], sys.executable, "cores", os.cpu_count())
print("libpython dir", sysconfig.get_config_var("LIBDIR"), "ldlibrary",
      sysconfig.get_config_var("LDLIBRARY"), "glibc", platform.libc_ver())
# What Triton's python-backend stub links (NEEDED libpython3.X.so.1.0): found here or not.
import ctypes.util
ver = "%d.%d" % sys.version_info[:2]
soname = "libpython%s.so.1.0" % ver
libdir = sysconfig.get_config_var("LIBDIR") or ""
print(soname, "in LIBDIR:", os.path.exists(os.path.join(libdir, soname)),
      "ldconfig:", ctypes.util.find_library("python" + ver))
import torch, transformers, numpy
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
print("transformers", transformers.__version__, "numpy", numpy.__version__)
EOF
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  echo "warning: .whl/ holds cp312 wheels; this Python is not 3.12, expect the install to fail"
fi

step "install carried wheels into $SITE"
rm -rf "$SITE" && mkdir -p "$SITE"
if ! ls .whl/*.whl > /dev/null 2>&1; then
  echo "error: no .whl/*.whl: run bench/fetch_gpu_wheels.sh on the preparing machine" >&2
  exit 2
fi
timeout 180 "$PY" -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl \
  || echo "warning: pip install reported errors (continuing; imports will tell)"
for archive in .whl/*-slim.tar.xz; do
  [[ -e "$archive" ]] && timeout 120 tar -C "$SITE" -xJf "$archive"
done
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import grpc, google.protobuf, tritonclient.grpc.aio, PIL, sentencepiece, gateway.server; print("imports ok, grpcio", grpc.__version__)' \
  || echo "warning: the gateway does not import; direct/served will fail, ceilings still run"

step "base random checkpoint -> $CKPT"
if [[ ! -f "$CKPT/config.json" ]]; then
  timeout 300 "$PY" -m gateway make-checkpoint --random --size base --out "$CKPT" || exit 3
fi

export SIGLIP_DTYPE=float16  # read by model_repository/*/1/model.py on GPU instances
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/xdg-cache}

# The vision tower compiled for 4 batch sizes (the committed config lists 9: load time here);
# the text tower stays eager, Embed raw does not use it.
REPO_EAGER=/tmp/model-repository-eager REPO_COMPILED=/tmp/model-repository-compiled
rm -rf "$REPO_EAGER" "$REPO_COMPILED" && cp -r model_repository "$REPO_EAGER"
rm -rf "$REPO_EAGER"/siglip_image_decode "$REPO_EAGER"/siglip_vision_encoded
cp -r "$REPO_EAGER" "$REPO_COMPILED"
"$PY" - "$REPO_COMPILED/siglip_vision/config.pbtxt" <<'PYEOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
for key, value in (("compile_mode", "reduce-overhead"), ("batch_buckets", "8,16,32,64")):
    text, n = re.subn(r'(key: "%s"\s*value: \{ string_value: )"[^"]*"' % key,
                      r'\1"%s"' % value, text)
    assert n == 1, key
open(path, "w").write(text)
PYEOF
grep -A1 -E 'key: "(compile_mode|batch_buckets)"' "$REPO_COMPILED/siglip_vision/config.pbtxt"

step "embed_raw: direct, served (C=64, compiled vision) and fp16 ceilings at Triton's batch"
timeout "$(left 330)" "$PY" bench/serving_bench.py --model "$CKPT" --device "$DEVICE" \
  --workloads embed_raw --modes ceiling,direct,served --compile --compile-mode reduce-overhead \
  --model-repository "$REPO_COMPILED" \
  --concurrency 64 --seconds 12 --warmup 5 --startup-timeout 240 --timeout 60 \
  --json "$OUT/gpu_serving.json" --log-dir "$OUT/logs"
echo "exit $?"

# The model's max_batch_size: what the GPU does when the batches are full. torch.compile
# compiles again for this shape (a minute or two), so only when the budget allows.
modes=ceiling
(( BUDGET_S - SECONDS > 180 )) && modes=ceiling,ceiling_compiled
if (( BUDGET_S - SECONDS > 40 )); then
  step "embed_raw: fp16 $modes at batch 64"
  timeout "$(left 200)" "$PY" bench/serving_bench.py --model "$CKPT" --device "$DEVICE" \
    --workloads embed_raw --modes "$modes" --ceiling-batch 64 --compile-mode reduce-overhead \
    --concurrency 64 --seconds 10 --warmup 5 \
    --json "$OUT/gpu_ceiling_b64.json" --log-dir "$OUT/logs"
  echo "exit $?"
fi
if (( BUDGET_S - SECONDS > 60 )); then
  step "nvJPEG decode fidelity and speed against exact"
  timeout "$(left 60)" "$PY" -m bench.decode_fidelity --device "$DEVICE" --seconds 1 --rounds 2 \
    --json "$OUT/gpu_decode_fidelity.json"
  echo "exit $?"
fi
if (( BUDGET_S - SECONDS > 100 )); then
  step "embed_raw: direct and served with the eager towers"
  timeout "$(left 150)" "$PY" bench/serving_bench.py --model "$CKPT" --device "$DEVICE" \
    --workloads embed_raw --modes direct,served --model-repository "$REPO_EAGER" \
    --concurrency 64 --seconds 10 --warmup 5 --startup-timeout 120 --timeout 60 \
    --json "$OUT/gpu_serving_eager.json" --log-dir "$OUT/logs-eager"
  echo "exit $?"
fi
step "done; results in $OUT"
ls -la "$OUT"
