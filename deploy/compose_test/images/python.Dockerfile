# The compose test's stand-in for python:3.11-slim, on a Debian base made locally by
# debootstrap (no image registry is reachable where the test runs): Debian bookworm's
# Python 3.11 in a venv that is first on PATH, so `python` and `pip` are the venv's.
ARG BASE_IMAGE=local/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv passwd \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && python3 -m venv /opt/python
ENV PATH=/opt/python/bin:$PATH
CMD ["python3"]
