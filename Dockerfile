# syntax=docker/dockerfile:1
#
# torchfleet images, one Dockerfile for all of them:
#   --target worker   (default)  torch + the worker extra; CPU torch unless TORCH_INDEX_URL says
#                                otherwise. The GPU image is the same target built with
#                                TORCH_INDEX_URL=https://pypi.org/simple (PyPI's Linux wheels are
#                                CUDA builds; the NVIDIA container toolkit supplies the driver) or a
#                                specific line such as https://download.pytorch.org/whl/cu126.
#   --target producer            the light client: no torch, for `torchfleet submit|status|...`.
#
#   docker build -t torchfleet:cpu .
#   docker build -t torchfleet:gpu --build-arg TORCH_INDEX_URL=https://pypi.org/simple .
#   docker build -t torchfleet:producer --target producer .

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A fixed uid, so a named volume created by this image is writable by every service using it.
RUN useradd --create-home --uid 10001 --user-group torchfleet \
 && mkdir -p /data/artifacts /app/deploy \
 && chown -R torchfleet:torchfleet /data
WORKDIR /app

# Build the project's wheel once; the runtime stages install it without the source tree.
FROM base AS wheel
WORKDIR /src
COPY pyproject.toml README* ./
COPY shared ./shared
COPY workers ./workers
COPY producers ./producers
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM base AS producer
COPY --from=wheel /wheels /wheels
RUN pip install /wheels/torchfleet-*.whl && rm -rf /wheels
USER torchfleet
# No ENTRYPOINT: a tools image, `docker compose run --rm producer torchfleet submit ...`.
CMD ["torchfleet", "--help"]

FROM base AS worker
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Extra pip requirements, e.g. "s3fs" for TORCHFLEET_ARTIFACTS=s3://bucket/prefix.
ARG EXTRA_PACKAGES=""
# torch first and on its own: the largest layer, rebuilt only when the index changes.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch torchvision
COPY --from=wheel /wheels /wheels
RUN set -eu; \
    wheel="$(ls /wheels/torchfleet-*.whl)"; \
    pip install "${wheel}[worker]" ${EXTRA_PACKAGES}; \
    rm -rf /wheels; \
    python -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
COPY deploy/healthcheck.py /app/deploy/
USER torchfleet
ENV TORCHFLEET_ARTIFACTS=/data/artifacts
HEALTHCHECK --interval=30s --timeout=20s --start-period=120s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["torchfleet"]
CMD ["worker", "--queues", "train,compress,infer", "--device", "auto"]
