//! The Schema Registry (SPEC §11), compatible with Confluent's: subjects hold numbered
//! versions of schemas, each schema has a global id, and a subject's compatibility level
//! decides which new versions it accepts.
//!
//! [`schema`] parses and canonicalises AVRO and JSON schemas (with the `apache-avro` and
//! `jsonschema` crates), [`compat`] applies Confluent's compatibility levels, and [`state`]
//! keeps subjects, versions, ids and levels durably with Confluent's rules and error codes.
//! [`wire`] is Confluent's framing (magic byte, schema id, payload): validation and encoding
//! on produce, decoding on read. The `/registry` HTTP API is `http::registry`.

pub mod compat;
pub mod schema;
pub mod state;
pub mod wire;

pub use compat::Level;
pub use schema::{ParsedSchema, SchemaError, SchemaType};
pub use state::{Registry, RegistryError, TopicValidation, Version, Which};
