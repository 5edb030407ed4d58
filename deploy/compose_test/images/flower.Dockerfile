# The compose test's stand-in for mher/flower: the same pip packages (flower, redis) on the
# local Python base, the same user, data folder and command. celery[redis] brings what
# kombu's Redis transport imports (redis, packaging).
ARG PYTHON_IMAGE=local/torchfleet-python:bookworm
FROM ${PYTHON_IMAGE}
ARG PIP_INDEX_URL=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN pip install flower "celery[redis]" \
 && useradd --create-home --uid 1000 --user-group flower \
 && mkdir -p /data && chown flower:flower /data
WORKDIR /data
USER flower
EXPOSE 5555
CMD ["celery", "flower"]
