//! Confluent's wire format, and what validation on produce and decoding on read do with it.
//!
//! A framed value is `0x00`, the schema's global id (4 bytes, big-endian), then the payload:
//! Avro binary for an AVRO schema, the JSON text for a JSON schema. That is what Confluent's
//! serializers write and its deserializers read, so REST, WebSocket and Kafka clients share
//! one representation. Validation uses the crates (`jsonschema`, `apache-avro`); the only
//! walk of our own ([`locate`]) names *where* an Avro value stops matching, for the error.

use std::borrow::Cow;

use apache_avro::Schema;
use apache_avro::schema::RecordSchema;
use apache_avro::types::Value as Avro;
use serde_json::Value as Json;

use super::schema::ParsedSchema;

/// The magic byte of Confluent's wire format.
pub const MAGIC: u8 = 0;
/// Magic byte and schema id.
pub const HEADER_LEN: usize = 5;

/// A framed value's schema id and payload, if `bytes` is framed.
pub fn frame(bytes: &[u8]) -> Option<(u32, &[u8])> {
    match bytes {
        [MAGIC, a, b, c, d, payload @ ..] => Some((u32::from_be_bytes([*a, *b, *c, *d]), payload)),
        _ => None,
    }
}

/// Where a value stops matching its schema: the JSON pointer of the first error (`""` for
/// the value itself) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub pointer: String,
    pub reason: String,
}

impl Violation {
    fn at(pointer: impl Into<String>, reason: impl Into<String>) -> Violation {
        Violation { pointer: pointer.into(), reason: reason.into() }
    }
}

/// Encodes values with one schema: built once per request, used for each of its records.
pub struct Encoder<'s> {
    id: u32,
    schema: &'s ParsedSchema,
    avro: Option<(apache_avro::writer::datum::GenericDatumWriter<'s>, Names<'s>)>,
}

impl<'s> Encoder<'s> {
    pub fn new(id: u32, schema: &'s ParsedSchema) -> Result<Encoder<'s>, String> {
        let avro = match schema.avro() {
            Some(s) => {
                // Values are resolved against the schema first, which converts them into its
                // types or fails: validating them again would only repeat that walk.
                let writer = apache_avro::writer::datum::GenericDatumWriter::builder(s)
                    .validate(false)
                    .build()
                    .map_err(|e| e.to_string())?;
                let resolved = apache_avro::schema::ResolvedSchema::try_from(s).map_err(|e| e.to_string())?;
                let names = resolved.get_names().iter().map(|(n, s)| (n.clone(), *s)).collect();
                Some((writer, names))
            }
            None => None,
        };
        Ok(Encoder { id, schema, avro })
    }

    /// The framed bytes of `value`, whose JSON text is `text` (kept as sent on JSON schemas),
    /// or where it breaks the schema.
    pub fn encode(&self, value: Json, text: Cow<'_, [u8]>) -> Result<Vec<u8>, Violation> {
        let mut out = Vec::with_capacity(HEADER_LEN + text.len());
        out.push(MAGIC);
        out.extend_from_slice(&self.id.to_be_bytes());
        if let Some(validator) = self.schema.validator() {
            check_json(validator, &value)?;
            out.extend_from_slice(&text);
            return Ok(out);
        }
        let (Some(schema), Some((writer, names))) = (self.schema.avro(), &self.avro) else {
            return Err(Violation::at("", "the schema has no form to validate with"));
        };
        // Where it went wrong is worked out again from the text, on failure only.
        let bad = || match serde_json::from_slice::<Json>(&text) {
            Ok(value) => locate(schema, names, &value, String::new()),
            Err(e) => Violation::at("", e.to_string()),
        };
        let resolved = Avro::try_from(value).and_then(|v| v.resolve_with_names(schema, names)).map_err(|_| bad())?;
        writer.write_value_ref(&mut out, &resolved).map_err(|_| bad())?;
        Ok(out)
    }

    /// Checks a value a client sent already framed (as bytes): it must carry this encoder's
    /// schema id and a payload that decodes (Avro) or validates (JSON) by it.
    pub fn check_framed(&self, bytes: &[u8]) -> Result<(), Violation> {
        let Some((id, payload)) = frame(bytes) else {
            return Err(Violation::at(
                "",
                "binary values must be in Confluent's wire format (magic byte 0, schema id)",
            ));
        };
        if id != self.id {
            return Err(Violation::at("", format!("framed with schema id {id}, not {}", self.id)));
        }
        match decode(self.schema, payload) {
            Ok(value) => match self.schema.validator() {
                Some(v) => check_json(v, &value),
                None => Ok(()),
            },
            Err(e) => Err(Violation::at("", e)),
        }
    }
}

fn check_json(validator: &jsonschema::Validator, value: &Json) -> Result<(), Violation> {
    if validator.is_valid(value) {
        return Ok(());
    }
    match validator.validate(value) {
        Ok(()) => Ok(()),
        Err(e) => Err(Violation::at(e.instance_path().as_str(), e.to_string())),
    }
}

/// A framed value's payload as JSON, by its writer's schema.
pub fn decode(schema: &ParsedSchema, payload: &[u8]) -> Result<Json, String> {
    match schema.avro() {
        Some(avro) => {
            let reader =
                apache_avro::reader::datum::GenericDatumReader::builder(avro).build().map_err(|e| e.to_string())?;
            let mut rest = payload;
            let value = reader.read_value(&mut rest).map_err(|e| format!("not Avro of its schema: {e}"))?;
            if !rest.is_empty() {
                return Err(format!("{} bytes after the Avro value", rest.len()));
            }
            Json::try_from(value).map_err(|e| e.to_string())
        }
        None => serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}")),
    }
}

/// Named types by name: what resolving a part of a schema needs for its references.
type Names<'s> = std::collections::HashMap<apache_avro::schema::Name, &'s Schema>;

/// Whether `value` resolves against `schema` (apache-avro's rules).
fn resolves(schema: &Schema, names: &Names<'_>, value: &Json) -> bool {
    Avro::try_from(value.clone()).and_then(|v| v.resolve_with_names(schema, names)).is_ok()
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn schema_kind(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => format!("record {}", r.name.fullname(None)),
        Schema::Enum(e) => format!("one of the symbols {:?}", e.symbols),
        Schema::Union(u) => format!("one of {} union branches", u.variants().len()),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_lowercase(),
    }
}

/// Where `value` (at `pointer`) first fails to match `schema`: descends into record fields,
/// array items and map values to the first part that does not resolve.
fn locate(schema: &Schema, names: &Names<'_>, value: &Json, pointer: String) -> Violation {
    let schema = match schema {
        Schema::Ref { name } => names.get(name).copied().unwrap_or(schema),
        s => s,
    };
    match (schema, value) {
        (Schema::Record(RecordSchema { fields, .. }), Json::Object(map)) => {
            for field in fields {
                let at = format!("{pointer}/{}", escape(&field.name));
                match map.get(&field.name) {
                    None if field.default.is_none() => {
                        return Violation::at(at, format!("required field '{}' is missing", field.name));
                    }
                    Some(v) if !resolves(&field.schema, names, v) => return locate(&field.schema, names, v, at),
                    _ => {}
                }
            }
            Violation::at(pointer, format!("does not match {}", schema_kind(schema)))
        }
        (Schema::Array(items), Json::Array(values)) => {
            for (i, v) in values.iter().enumerate() {
                if !resolves(&items.items, names, v) {
                    return locate(&items.items, names, v, format!("{pointer}/{i}"));
                }
            }
            Violation::at(pointer, "does not match the array's schema")
        }
        (Schema::Map(m), Json::Object(map)) => {
            for (k, v) in map {
                if !resolves(&m.types, names, v) {
                    return locate(&m.types, names, v, format!("{pointer}/{}", escape(k)));
                }
            }
            Violation::at(pointer, "does not match the map's schema")
        }
        _ => Violation::at(pointer, format!("expected {}, found {}", schema_kind(schema), json_kind(value))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::SchemaType;
    use serde_json::json;

    fn avro(text: &str) -> ParsedSchema {
        ParsedSchema::parse(SchemaType::Avro, text).unwrap()
    }

    const USER: &str = r#"{"type": "record", "name": "User", "fields": [
        {"name": "id", "type": "long"},
        {"name": "name", "type": "string"},
        {"name": "email", "type": ["null", "string"], "default": null},
        {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []}
    ]}"#;

    fn encode(schema: &ParsedSchema, id: u32, value: Json) -> Result<Vec<u8>, Violation> {
        let text = serde_json::to_vec(&value).unwrap();
        Encoder::new(id, schema).unwrap().encode(value, Cow::Owned(text))
    }

    #[test]
    fn avro_values_round_trip_through_confluents_framing() {
        let schema = avro(USER);
        let value = json!({"id": 7, "name": "ada", "email": "a@b.c", "tags": ["x"]});
        let bytes = encode(&schema, 42, value.clone()).unwrap();
        let (id, payload) = frame(&bytes).unwrap();
        assert_eq!(id, 42);
        // id 7 as a zig-zag varint, then the name's length (3, zig-zag 6) and text.
        assert_eq!(&payload[..5], &[14, 6, b'a', b'd', b'a']);
        assert_eq!(decode(&schema, payload).unwrap(), value);
        Encoder::new(42, &schema).unwrap().check_framed(&bytes).unwrap();
        assert!(Encoder::new(43, &schema).unwrap().check_framed(&bytes).is_err());
        assert!(Encoder::new(42, &schema).unwrap().check_framed(b"plain").is_err());
    }

    #[test]
    fn avro_violations_name_the_first_bad_place() {
        let schema = avro(USER);
        for (value, pointer) in [
            (json!({"name": "ada"}), "/id"),
            (json!({"id": "seven", "name": "ada"}), "/id"),
            (json!({"id": 7, "name": "ada", "tags": ["x", 3]}), "/tags/1"),
            (json!({"id": 7, "name": "ada", "email": 5}), "/email"),
            (json!([1, 2]), ""),
        ] {
            let v = encode(&schema, 1, value.clone()).unwrap_err();
            assert_eq!(v.pointer, pointer, "{value}: {v:?}");
            assert!(!v.reason.is_empty());
        }
        // Defaults fill what is missing.
        let bytes = encode(&schema, 1, json!({"id": 1, "name": "b"})).unwrap();
        assert_eq!(decode(&schema, &bytes[5..]).unwrap(), json!({"id": 1, "name": "b", "email": null, "tags": []}));
    }

    #[test]
    fn json_schema_values_keep_their_text_and_violations_their_pointer() {
        let schema = ParsedSchema::parse(
            SchemaType::Json,
            r#"{"type": "object", "properties": {"n": {"type": "integer", "minimum": 0},
                "items": {"type": "array", "items": {"type": "string"}}}, "required": ["n"]}"#,
        )
        .unwrap();
        let text = br#"{"n": 1,  "items": ["a"]}"#;
        let value: Json = serde_json::from_slice(text).unwrap();
        let bytes = Encoder::new(9, &schema).unwrap().encode(value, Cow::Borrowed(text)).unwrap();
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 9]);
        assert_eq!(&bytes[5..], text);
        let v = encode(&schema, 9, json!({"n": 1, "items": ["a", 2]})).unwrap_err();
        assert_eq!(v.pointer, "/items/1");
        let v = encode(&schema, 9, json!({"n": -1})).unwrap_err();
        assert_eq!(v.pointer, "/n");
        let v = encode(&schema, 9, json!({})).unwrap_err();
        assert_eq!(v.pointer, "");
    }

    #[test]
    fn garbage_payloads_do_not_decode() {
        let schema = avro(USER);
        assert!(decode(&schema, &[0xff, 0xff, 0xff]).is_err());
        assert!(decode(&schema, &[14, 6, b'a', b'd', b'a', 0, 0, 0, 9]).is_err());
        assert_eq!(frame(&[0, 0, 0]), None);
        assert_eq!(frame(&[1, 0, 0, 0, 1]), None);
    }
}
