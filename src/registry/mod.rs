//! The Schema Registry (SPEC §11), compatible with Confluent's: subjects hold numbered
//! versions of schemas, each schema has a global id, and a subject's compatibility level
//! decides which new versions it accepts.
//!
//! [`schema`] parses and canonicalises AVRO and JSON schemas (with the `apache-avro` and
//! `jsonschema` crates), [`compat`] applies Confluent's compatibility levels, and [`state`]
//! keeps subjects, versions, ids and levels durably with Confluent's rules and error codes.
//! The `/registry` HTTP API and validation on produce build on it (issue 15, in progress).

pub mod compat;
pub mod schema;
pub mod state;

pub use compat::Level;
pub use schema::{ParsedSchema, SchemaError, SchemaType};
pub use state::{Registry, RegistryError, Version, Which};
