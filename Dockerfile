# torchfleet images, one Dockerfile for all of them:
#   --target worker   (default)  torch + the worker extra; CPU torch unless TORCH_INDEX_URL says
#                                otherwise. The GPU image is the same target built with
#                                TORCH_INDEX_URL=https://pypi.org/simple (PyPI's Linux wheels are
#                                CUDA builds; the NVIDIA container toolkit supplies the driver) or a
#                                specific line such as https://download.pytorch.org/whl/cu126.
#   --target producer            the light client: no torch, for `torchfleet submit|status|...`;
#                                numpy for `--input batch.npy` (images are sent as their files).
#
#   docker build -t torchfleet:cpu .
#   docker build -t torchfleet:gpu --build-arg TORCH_INDEX_URL=https://pypi.org/simple .
#   docker build -t torchfleet:producer --target producer .
#
# Build arguments: PYTHON_IMAGE (any Debian-like image whose `python` and `pip` are Python
# 3.11+), PIP_INDEX_URL (every package but torch), TORCH_INDEX_URL, EXTRA_PACKAGES. Layers go
# from the least to the most often changed: torch, then the dependencies (from pyproject.toml
# alone), then the project's wheel, so a code change rebuilds a few kilobytes.
# No `# syntax=` line: BuildKit would fetch that frontend from a registry; none is needed.

ARG PYTHON_IMAGE=python:3.11-slim
ARG PIP_INDEX_URL=https://pypi.org/simple

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

# The dependencies of each image, from pyproject.toml alone (cached until it changes).
FROM base AS requirements
WORKDIR /src
COPY pyproject.toml deploy/requirements.py ./
RUN python requirements.py pyproject.toml --extra worker > worker.txt \
 && python requirements.py pyproject.toml --pick numpy --pick pybase64 > producer.txt

# Build the project's wheel once; the runtime stages install it without the source tree.
FROM base AS wheel
ARG PIP_INDEX_URL
WORKDIR /src
COPY pyproject.toml README* ./
COPY shared ./shared
COPY workers ./workers
COPY producers ./producers
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM base AS producer
ARG PIP_INDEX_URL
COPY --from=requirements /src/producer.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY --from=wheel /wheels /wheels
RUN pip install --no-deps /wheels/torchfleet-*.whl && rm -rf /wheels && pip check
USER torchfleet
# No ENTRYPOINT: a tools image, `docker compose run --rm producer torchfleet submit ...`.
CMD ["torchfleet", "--help"]

FROM base AS worker
ARG PIP_INDEX_URL
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Extra pip requirements, e.g. "s3fs" for TORCHFLEET_ARTIFACTS=s3://bucket/prefix.
ARG EXTRA_PACKAGES=""
# torch first and on its own: the largest layer, rebuilt only when the index changes.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch torchvision
# The worker extra, holding torch and torchvision at the versions just installed.
COPY --from=requirements /src/worker.txt /tmp/requirements.txt
RUN set -eu; \
    pip freeze | grep -E '^(torch|torchvision)==' > /tmp/torch.txt; \
    pip install -c /tmp/torch.txt -r /tmp/requirements.txt ${EXTRA_PACKAGES}; \
    rm /tmp/requirements.txt /tmp/torch.txt
COPY deploy/healthcheck.py /app/deploy/
COPY --from=wheel /wheels /wheels
RUN set -eu; \
    pip install --no-deps /wheels/torchfleet-*.whl; \
    rm -rf /wheels; \
    pip check; \
    python -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
USER torchfleet
ENV TORCHFLEET_ARTIFACTS=/data/artifacts
HEALTHCHECK --interval=30s --timeout=20s --start-period=120s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["torchfleet"]
CMD ["worker", "--queues", "train,compress,infer", "--device", "auto"]
