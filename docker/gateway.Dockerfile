# syntax=docker/dockerfile:1
# siglip-gateway: the gRPC front end. CPU only, no torch: `pip install .` without the
# [triton] extra. Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t REGISTRY/siglip-gateway:TAG .
#
# Base pinned to a patch release (CPython 3.11, as the project's tests run). Pin the digest
# too when building for production: `docker buildx imagetools inspect python:3.11.13-slim-bookworm`
# prints it; then use `FROM python:3.11.13-slim-bookworm@sha256:<digest>`. It is not pinned here
# because it cannot be resolved (and so not verified) without registry access.
FROM python:3.11.13-slim-bookworm AS base

FROM base AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# A venv copied whole into the runtime stage: no pip, wheel caches or build files there.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY docker/gateway-constraints.txt /tmp/constraints.txt
COPY pyproject.toml README.md ./
COPY siglip ./siglip
COPY gateway ./gateway
# Non-editable install of the package and its pinned dependencies, with the [otel] extra (the
# OpenTelemetry SDK and exporter, used only when OTEL_* settings turn tracing on). No [triton]
# extra: the gateway never imports torch. pip check fails the build on an inconsistent set.
RUN pip install --no-cache-dir -c /tmp/constraints.txt '.[otel]' \
    && pip check \
    && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"
# Triton's model repository beside the installed package, where default_model_repository()
# (gateway/embedded_triton/launcher.py) looks: <site-packages>/model_repository. From it the
# init container of k8s/overlays/gpu-two-models (`python -m gateway.embedded_triton.repository`)
# generates every model's Triton models. Here, not in the Triton image: that one has the
# repository (/models) but not the gateway package, whose pinned dependencies would then have
# to fit beside Triton's; the generator needs no torch. A few hundred KB; cp -a keeps
# siglip_text's relative link to siglip_vision.
COPY model_repository ./model_repository
RUN cp -a model_repository "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/" \
    && python -c "from gateway.embedded_triton.launcher import default_model_repository as d; \
assert (d() / 'siglip_vision' / 'config.pbtxt').is_file(), d()"

FROM base
# checkov:skip=CKV_DOCKER_2:No HEALTHCHECK: Kubernetes ignores it; the pod runs native gRPC probes (k8s/base/gateway/deployment.yaml).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
RUN groupadd --system --gid 10001 siglip \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin siglip
# Owned by root, read-only for the runtime user: the code cannot be modified at run time.
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 8080 9090
ENTRYPOINT ["siglip-gateway"]
CMD ["serve"]
