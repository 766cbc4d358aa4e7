//! Integration tests: a real gregor on an ephemeral port, a real RocksDB in a
//! temporary directory, real HTTP clients. One test binary, one module per area.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

mod architecture;
mod backends;
mod browser;
mod crash;
mod cursors;
mod errors;
mod faults;
mod groups;
mod idempotency;
mod jwt;
mod kafka;
mod metrics;
mod openapi;
mod produce;
mod quotas;
mod read;
mod registry;
mod restart;
mod retention;
mod security;
mod serving;
mod tls;
mod topics;
mod ws;
