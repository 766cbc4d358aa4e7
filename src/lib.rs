//! gregor: a Kafka-style commit log over HTTP and WebSocket, stored in an
//! embedded RocksDB.
//!
//! Module map (see ARCHITECTURE.md for the data flow and invariants):
//! - [`config`]: command line, environment and TOML settings, validated once.
//! - [`app`]: [`App::build`] opens the store and binds; [`App::run`] serves until shutdown.
//! - Domain, no HTTP: [`topic`] (names, configs), [`record`] (records and the batch
//!   codec), [`partitioner`] (Kafka's murmur2), [`log`] (topics, partitions, produce,
//!   read, the single writer thread), [`retention`] (the retention timer), [`group`]
//!   (consumer groups: assignors, the coordinator state machine, polls and commits).
//! - [`store`]: RocksDB column families and key layout; the only module that knows them.
//! - [`auth`]: credentials → principals, and the ACLs that decide what they may do.
//! - [`service`]: every operation, named once, for every transport: authorization,
//!   request bounds, and the seam behind which the backend sits.
//! - [`codec`]: the JSON record codec both transports share.
//! - [`http`]: the serve loop and its limits, browser safety, axum routes,
//!   problem+json errors, the OpenAPI document and Swagger UI.
//! - [`ws`]: a WebSocket connection's loop, its frames and flow control.
//! - [`metrics`]: the Prometheus registry each `App` owns.
//! - [`error`]: the core error enum and the one table of stable error codes.
//! - [`faults`]: failures tests inject at run time (off by default).

pub mod app;
pub mod auth;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod error;
pub mod faults;
pub mod group;
pub mod history;
pub mod http;
pub mod kafka;
pub mod log;
pub mod metrics;
pub mod partitioner;
pub mod record;
pub mod registry;
pub mod retention;
pub mod service;
pub mod store;
pub mod topic;
pub mod ws;

pub use app::{App, AppError};
pub use config::Config;
