# syntax=docker/dockerfile:1
# gregor: a Kafka-style commit log over HTTP and WebSocket.
# The build stage runs the same steps as scripts/setup and .ci/run: the same
# system packages for RocksDB's C++ build, and `cargo build --release --locked`.

FROM rust:1.95-bookworm AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev g++ make libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, in their own cached layer: RocksDB's C++ build (the slow
# part) is redone only when Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
# Target flags (x86-64-v2 + PCLMULQDQ, for RocksDB's hardware CRC32C).
COPY .cargo .cargo
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY src src
COPY static static
COPY openapi openapi
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
# curl serves the HEALTHCHECK only; libssl3 is librdkafka's TLS (the Kafka backend).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/gregor gregor \
 && mkdir -p /var/lib/gregor/data \
 && chown -R 10001 /var/lib/gregor
COPY --from=build /src/target/release/gregor /usr/local/bin/gregor
USER 10001
# Listening on all interfaces, gregor refuses to start without credentials: mount
# a configuration with [auth] and [[acl]] and point GREGOR_CONFIG at it
# (README: Securing gregor).
ENV GREGOR_LISTEN=0.0.0.0:8080 \
    GREGOR_DATA_DIR=/var/lib/gregor/data
VOLUME ["/var/lib/gregor/data"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/gregor"]
CMD ["serve"]
