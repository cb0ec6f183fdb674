# syntax=docker/dockerfile:1
# NVIDIA Triton with the SigLIP towers (python backend). Build from the repository root:
#   docker build -f docker/triton.Dockerfile -t REGISTRY/siglip-triton:TAG .
#
# 24.10 = Triton 2.51.0, the server release that nvidia-pytriton 0.7 embeds and that the
# project's tests run the same model repository on. Ubuntu 22.04, CPython 3.10, CUDA 12.6.
# Pin the digest too when building for production: `docker buildx imagetools inspect
# nvcr.io/nvidia/tritonserver:24.10-py3` prints it; then use
# `FROM nvcr.io/nvidia/tritonserver:24.10-py3@sha256:<digest>`. It is not pinned here because
# it cannot be resolved (and so not verified) without registry access.
FROM nvcr.io/nvidia/tritonserver:24.10-py3
# checkov:skip=CKV_DOCKER_2:No HEALTHCHECK: Kubernetes ignores it; the pod probes /v2/health/{live,ready} (k8s/base/triton/deployment.yaml).

# The python backend's stub runs model.py with this interpreter: torch and transformers go
# into the system Python, same versions as the project's full test suite (transformers 4.57;
# the towers also pass their tests under 5.x, whose newest releases need Python >= 3.11). torchvision (same index as
# torch, so built for the same CUDA) is siglip_image_decode's nvJPEG decoder: its GPU
# instances do not load without it. torch from PyPI is the Linux CUDA build with its
# CUDA 13 runtime bundled: the node's NVIDIA driver must be >= 580. For
# older drivers take a CUDA 12 build from the PyTorch index:
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126
# (torch and its CUDA libraries then come from that index alone; `torch==2.13.0` in the second
# install is already satisfied by the 2.13.0+cu126 build).
ARG TORCH_INDEX=https://pypi.org/simple
RUN pip install --no-cache-dir --index-url="${TORCH_INDEX}" torch==2.13.0 torchvision==0.28.0 \
    && pip install --no-cache-dir \
        torch==2.13.0 \
        torchvision==0.28.0 \
        transformers==4.57.6 \
        tokenizers==0.22.2 \
        huggingface-hub==0.36.2 \
        sentencepiece==0.2.1 \
        safetensors==0.8.0 \
        numpy==1.26.4

RUN groupadd --gid 10001 siglip \
    && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin siglip
# Owned by root, read-only for the runtime user.
COPY model_repository /models
# Checkpoint, caches and /dev/shm are volumes (k8s); HOME points at the writable /tmp.
# OMP_WAIT_POLICY: idle OpenMP workers of torch's CPU instances sleep instead of spinning
# (libgomp reads it at load, so it must be in the environment; BENCHMARKS.md, CPU threading).
ENV HOME=/tmp \
    OMP_WAIT_POLICY=PASSIVE \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
USER 10001:10001
EXPOSE 8000 8001 8002
# The base image's ENTRYPOINT (NVIDIA's, sets up CUDA compatibility) stays.
CMD ["tritonserver", "--model-repository=/models", "--strict-readiness=true", "--exit-on-error=true", "--log-verbose=0"]
