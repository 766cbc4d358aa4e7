# syntax=docker/dockerfile:1
# Build stage: the same packages and cargo command that scripts/setup and .ci/run use.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev g++ make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, in their own layer: RocksDB's C++ build is cached until Cargo.lock changes.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY src src
COPY static static
COPY openapi openapi
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/gregor gregor \
 && mkdir -p /var/lib/gregor/data && chown -R gregor /var/lib/gregor
COPY --from=build /src/target/release/gregor /usr/local/bin/gregor
USER gregor
ENV GREGOR_LISTEN=0.0.0.0:8080 GREGOR_DATA_DIR=/var/lib/gregor/data
VOLUME /var/lib/gregor/data
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/gregor"]
CMD ["serve"]
