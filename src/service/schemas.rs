//! Schemas on the record paths (SPEC §11): validation and encoding on produce, the Kafka
//! listener's schema-id check, and decoding on read.
//!
//! A topic opts in with `value_schema_validation` (`key_schema_validation`; on the Kafka backend
//! the setting lives in the registry's `_schemas` log, the cluster having no such config): its
//! subject is `<topic>-value` (`<topic>-key`), Confluent's TopicNameStrategy. A REST or WebSocket value
//! is checked against the subject's latest schema, or the one the request names
//! (`value_schema_id`, which must be a version of the subject, and may be given on any
//! topic), and stored framed: magic byte 0, the schema id, then Avro binary (AVRO) or the JSON
//! text as sent (JSON). A value sent as bytes must already be framed with that id. Null values
//! (tombstones) pass. The first bad record fails the whole request: nothing is written.
//!
//! Reads decode framed values whose id is a version of the topic's subject back to JSON, unless
//! the reader asks for raw bytes; see [`Decoder`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value as Json;

use super::{Backend, Service};
use crate::error::{Error, Result};
use crate::record::{Blob, Format, NewRecord};
use crate::registry::wire::{self, Encoder};
use crate::registry::{ParsedSchema, Registry, RegistryError};

/// The schema ids a produce request names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchemaIds {
    pub key: Option<u32>,
    pub value: Option<u32>,
}

/// Which half of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Key,
    Value,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Key => "key",
            Part::Value => "value",
        }
    }

    fn subject(self, topic: &str) -> String {
        format!("{topic}-{}", self.name())
    }

    fn of<'r, 'a>(self, record: &'r mut NewRecord<'a>) -> &'r mut Option<Blob<'a>> {
        match self {
            Part::Key => &mut record.key,
            Part::Value => &mut record.value,
        }
    }
}

impl Service {
    /// Which parts of `topic`'s records must match a schema (key, value): none on a topic
    /// that does not exist yet (auto-creation makes it without validation); on the Kafka
    /// backend, as the registry's log keeps it.
    fn validated_parts(&self, topic: &str) -> Result<(bool, bool)> {
        match &self.0.backend {
            Backend::Embedded { log, .. } => match log.topic(topic) {
                Ok(t) => {
                    let c = t.config();
                    Ok((c.key_schema_validation, c.value_schema_validation))
                }
                Err(Error::UnknownTopic(_)) => Ok((false, false)),
                Err(e) => Err(e),
            },
            Backend::Kafka { .. } => Ok(self.registry().map_or((false, false), |r| {
                let v = r.topic_validation(topic);
                (v.key, v.value)
            })),
        }
    }

    /// The records as they are stored: as given on a topic without validation; on one with
    /// it, each checked part validated and framed (see the module's comment).
    pub(crate) fn apply_schemas<'r>(
        &self,
        topic: &str,
        records: &'r [NewRecord<'r>],
        ids: SchemaIds,
    ) -> Result<Cow<'r, [NewRecord<'r>]>> {
        let (key_on, value_on) = self.validated_parts(topic)?;
        let key_on = key_on || ids.key.is_some();
        let value_on = value_on || ids.value.is_some();
        if !key_on && !value_on {
            return Ok(Cow::Borrowed(records));
        }
        let registry = self.registry()?;
        let mut out = records.to_vec();
        if key_on {
            encode_part(registry, topic, Part::Key, ids.key, &mut out)?;
        }
        if value_on {
            encode_part(registry, topic, Part::Value, ids.value, &mut out)?;
        }
        Ok(Cow::Owned(out))
    }

    /// What the Kafka listener checks `topic`'s batches with, if it validates a part.
    pub(crate) fn framing_check(&self, topic: &str) -> Result<Option<FramingCheck>> {
        let (key, value) = self.validated_parts(topic)?;
        if !key && !value {
            return Ok(None);
        }
        let parts = [(key, Part::Key), (value, Part::Value)]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, part)| (part, part.subject(topic)))
            .collect();
        Ok(Some(FramingCheck { registry: self.registry()?.clone(), topic: topic.to_owned(), parts }))
    }

    /// What renders schema-framed values of a read as JSON (`None` without a registry).
    pub fn decoder(&self) -> Option<Decoder> {
        self.registry().ok().map(|r| Decoder { registry: r.clone(), known: HashMap::new() })
    }
}

/// The Kafka listener's check of a validated topic's batch: every value (key) is framed with
/// the id of a live version of the topic's subject, as Confluent Server's broker-side
/// validation requires. The payload itself is the producer's serializer's business.
#[derive(Clone)]
pub(crate) struct FramingCheck {
    registry: Arc<Registry>,
    topic: String,
    /// The validated parts and their subjects.
    parts: Vec<(Part, String)>,
}

impl FramingCheck {
    /// `Err` names the first record at fault (answered as INVALID_RECORD).
    pub fn check(&self, batch: &[u8]) -> std::result::Result<(), String> {
        let decoded = crate::record::decode(batch).map_err(|e| e.to_string())?;
        for (i, record) in decoded.iter().enumerate() {
            let (_, record) = record.map_err(|e| e.to_string())?;
            for (part, subject) in &self.parts {
                let blob = match part {
                    Part::Key => &record.key,
                    Part::Value => &record.value,
                };
                let Some(blob) = blob else { continue };
                let Some((id, _)) = wire::frame(&blob.bytes) else {
                    return Err(format!(
                        "record {i}: the {} has no schema id; {} validates them against subject {subject}",
                        part.name(),
                        self.topic
                    ));
                };
                if self.registry.schema_for(subject, Some(id)).is_err() {
                    return Err(format!("record {i}: schema id {id} is not a version of subject {subject}"));
                }
            }
        }
        Ok(())
    }
}

fn encode_part(
    registry: &Registry,
    topic: &str,
    part: Part,
    id: Option<u32>,
    records: &mut [NewRecord<'_>],
) -> Result<()> {
    let subject = part.subject(topic);
    let (id, schema) = registry.schema_for(&subject, id).map_err(|e| {
        let reason = match (e, id) {
            (RegistryError::SubjectNotFound(_), _) => format!(
                "topic {topic} validates its {}s, but subject {subject} has no schema; register one first",
                part.name()
            ),
            (_, Some(id)) => format!("schema {id} is not a version of subject {subject}"),
            (e, None) => e.to_string(),
        };
        Error::SchemaNotFound { subject: subject.clone(), reason }
    })?;
    let encoder = Encoder::new(id, &schema).map_err(|e| Error::Internal(format!("schema {id}: {e}")))?;
    for (index, record) in records.iter_mut().enumerate() {
        let slot = part.of(record);
        let Some(blob) = slot.as_ref() else { continue };
        let violation = |v: wire::Violation| Error::SchemaViolation {
            index,
            field: part.name(),
            schema_id: id,
            pointer: v.pointer,
            reason: v.reason,
        };
        let framed = match blob.format {
            Format::Json => {
                let value: Json = serde_json::from_slice(&blob.bytes).map_err(|e| Error::InvalidRecord {
                    index,
                    field: part.name(),
                    reason: e.to_string(),
                })?;
                encoder.encode(value, Cow::Borrowed(&blob.bytes)).map_err(violation)?
            }
            Format::Text => {
                let value = Json::String(String::from_utf8_lossy(&blob.bytes).into_owned());
                let text = serde_json::to_vec(&value).map_err(|e| Error::Internal(e.to_string()))?;
                encoder.encode(value, Cow::Owned(text)).map_err(violation)?
            }
            Format::Binary => {
                encoder.check_framed(&blob.bytes).map_err(violation)?;
                continue;
            }
        };
        *slot = Some(Blob::new(Format::Binary, framed));
    }
    Ok(())
}

/// A topic's schemas met so far, by (key?, id): `None` for an id that is not its subject's.
type SchemasById = HashMap<(bool, u32), Option<Arc<ParsedSchema>>>;

/// Renders schema-framed keys and values as JSON for one reader: a value framed with an id
/// that is (or was) a version of its topic's subject decodes by that schema; anything else
/// (or a payload that does not decode) is left to the usual rendering.
pub struct Decoder {
    registry: Arc<Registry>,
    /// By topic, then (key?, id): the schema to decode by, if any.
    known: HashMap<String, SchemasById>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").field("known", &self.known.len()).finish_non_exhaustive()
    }
}

impl Decoder {
    /// `bytes` of `topic`'s key (`key`) or value, decoded: (schema id, JSON text).
    pub fn decode(&mut self, topic: &str, key: bool, bytes: &[u8]) -> Option<(u32, Vec<u8>)> {
        let (id, payload) = wire::frame(bytes)?;
        if !self.known.contains_key(topic) {
            self.known.insert(topic.to_owned(), HashMap::new());
        }
        let by_id = self.known.get_mut(topic)?;
        let registry = &self.registry;
        let part = if key { Part::Key } else { Part::Value };
        let schema = by_id.entry((key, id)).or_insert_with(|| registry.schema_of(&part.subject(topic), id)).as_ref()?;
        if schema.avro().is_none() {
            // JSON: the payload is the text; it is shown as is when it is JSON.
            return serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok().then(|| (id, payload.to_vec()));
        }
        let value = wire::decode(schema, payload).ok()?;
        serde_json::to_vec(&value).ok().map(|text| (id, text))
    }
}
