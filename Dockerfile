# pgsluice container image (DESIGN §10).
#
#   docker build -t pgsluice .
#   docker run --rm -p 6432:6432 -p 9187:9187 \
#     -v "$PWD/my-pgsluice.yaml:/etc/pgsluice/pgsluice.yaml:ro" -e FEED_DB_PASSWORD=... pgsluice
#
# Two stages on Debian bookworm: the builder has the compilers and the -dev packages; the runtime
# stage has only the shared libraries the binary links against, and runs as a non-root user.
# There is no tini: pgsluice is PID 1, handles SIGTERM itself (drain, then exit) and starts no
# child processes, so there are no zombies to reap.

ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE} AS builder

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates \
      cmake \
      ninja-build \
      g++ \
      pkg-config \
      libboost1.81-dev \
      libboost-program-options1.81-dev \
      libssl-dev \
      libyaml-cpp-dev \
      libspdlog-dev \
      libfmt-dev \
      prometheus-cpp-dev \
      libpg-query-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Only what the build reads, so edits to docs, tests or deploy files do not invalidate the layer.
COPY CMakeLists.txt CMakePresets.json ./
COPY include/ include/
COPY src/ src/

# The release preset, without the unit tests (they need Catch2 and run in CI, not here).
RUN cmake --preset release -DPGSLUICE_TESTS=OFF \
 && cmake --build --preset release --target pgsluice \
 && strip build/release/pgsluice

# ---------------------------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE} AS runtime

# Runtime libraries only: the exact Debian 12 package names of what the builder linked against.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates \
      libboost-program-options1.81.0 \
      libssl3 \
      libyaml-cpp0.7 \
      libprometheus-cpp-core1.0 \
      libprometheus-cpp-pull1.0 \
      libspdlog1.10 \
      libfmt9 \
      libpg-query1504.0 \
 && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 pgsluice \
 && useradd --system --uid 10001 --gid pgsluice --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin pgsluice

COPY --from=builder /src/build/release/pgsluice /usr/local/bin/pgsluice
# Fail the image build, not the first pod start, if a shared library is missing.
RUN ! ldd /usr/local/bin/pgsluice | grep 'not found'

# The documented example; mount your own file over it (ConfigMap, bind mount).
COPY --chown=root:root config/pgsluice.yaml /etc/pgsluice/pgsluice.yaml

USER 10001:10001

# 6432: Postgres clients.  9187: /metrics, /healthz, /readyz.
EXPOSE 6432 9187

# SIGTERM starts a graceful drain bounded by shutdown_timeout; SIGHUP reloads the config.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/pgsluice", "--config", "/etc/pgsluice/pgsluice.yaml"]
# Containers log JSON lines by default; override with e.g. `--log-format text`.
CMD ["--log-format", "json"]
