# The compose test's stand-in for redis:7: Debian bookworm's redis-server (7.0) on the local
# Debian base. Like the official image it keeps its data in /data and runs as a user; the
# compose file's command (`redis-server --appendonly yes ... --requirepass ...`) runs as is.
ARG BASE_IMAGE=local/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
