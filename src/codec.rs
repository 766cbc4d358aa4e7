//! The JSON record codec both transports share: parsing produce requests (a REST
//! body or a WebSocket `produce` frame's `records`) without copying what the client
//! sent, and writing records and produce answers out, with JSON values passed
//! through verbatim.
//!
//! Forms (explicit in the field name, never guessed):
//! - `key` / `value` / header `value`: any JSON. A JSON string is stored as its
//!   UTF-8 text (so `"key":"user-1"` hashes like Kafka's StringSerializer); any
//!   other JSON is stored as the exact text sent and reads back as that JSON.
//! - `key_base64` / `value_base64` / header `value_base64`: arbitrary bytes.
//! - absent or `null`: a null key or value (a null value is Kafka's tombstone).

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::Error;
use crate::log::RecordMetadata;
use crate::record::{Blob, Format, Header, NewRecord, StoredRecord};
use crate::service::{Decoder, SchemaIds};

/// A REST produce body: `{"records": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProduceBody<'a> {
    #[serde(borrow)]
    records: Vec<RecordIn<'a>>,
    #[serde(default)]
    key_schema_id: Option<u32>,
    #[serde(default)]
    value_schema_id: Option<u32>,
}

/// Parses a REST produce body, `{"records": [...]}` (with the schema ids it may name), into
/// records that borrow from it.
pub fn parse_produce_body(body: &[u8]) -> Result<(Vec<NewRecord<'_>>, SchemaIds), Error> {
    let parsed: ProduceBody<'_> = parse_json(body)?;
    let ids = SchemaIds { key: parsed.key_schema_id, value: parsed.value_schema_id };
    Ok((into_records(parsed.records)?, ids))
}

/// Parses the records of a WebSocket `produce` frame: a JSON array of records.
pub fn parse_record_list(json: &str) -> Result<Vec<NewRecord<'_>>, Error> {
    let parsed: Vec<RecordIn<'_>> = parse_json(json.as_bytes())?;
    into_records(parsed)
}

fn into_records(records: Vec<RecordIn<'_>>) -> Result<Vec<NewRecord<'_>>, Error> {
    if records.is_empty() {
        return Err(Error::InvalidRequest("records: give at least one record".into()));
    }
    records.into_iter().enumerate().map(|(i, r)| r.into_record(i)).collect()
}

/// Parses JSON, telling syntax errors (`invalid_json`) from shape errors (`invalid_request`).
pub fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Error::InvalidRequest(e.to_string()),
        _ => Error::InvalidJson(e.to_string()),
    })
}

/// Serializes an answer, or says that it could not (a bug, never the client's fault).
pub fn to_json<T: serde::Serialize>(value: &T) -> Result<String, Error> {
    serde_json::to_string(value).map_err(|e| Error::Internal(format!("an answer did not serialize: {e}")))
}

/// Appends `"offsets":[{"partition","offset","timestamp"},...]`: where each produced
/// record landed, in request order. Written directly: only integers, so nothing
/// needs escaping, and serde's generic path cost about as much as parsing the request.
pub fn write_offsets(out: &mut String, meta: &[RecordMetadata]) {
    let mut num = itoa::Buffer::new();
    out.push_str("\"offsets\":[");
    for (i, m) in meta.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"partition\":");
        out.push_str(num.format(m.partition));
        out.push_str(",\"offset\":");
        out.push_str(num.format(m.offset));
        out.push_str(",\"timestamp\":");
        out.push_str(num.format(m.timestamp));
        out.push('}');
    }
    out.push(']');
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordIn<'a> {
    #[serde(borrow, default)]
    key: Option<&'a RawValue>,
    #[serde(borrow, default)]
    key_base64: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    value_base64: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    headers: Option<Vec<HeaderIn<'a>>>,
    #[serde(default)]
    partition: Option<u32>,
    #[serde(default)]
    timestamp: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderIn<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    value_base64: Option<Cow<'a, str>>,
}

impl<'a> RecordIn<'a> {
    /// Turns the wire form into a record, decoding base64 and splitting JSON
    /// strings from other JSON. `index` names the record in errors.
    fn into_record(self, index: usize) -> Result<NewRecord<'a>, Error> {
        let key = blob(index, "key", self.key, self.key_base64)?;
        let value = blob(index, "value", self.value, self.value_base64)?;
        let headers = self
            .headers
            .unwrap_or_default()
            .into_iter()
            .map(|h| Ok(Header { name: h.name, value: blob(index, "headers", h.value, h.value_base64)? }))
            .collect::<Result<_, Error>>()?;
        Ok(NewRecord { key, value, headers, timestamp: self.timestamp, partition: self.partition })
    }
}

fn blob<'a>(
    index: usize,
    field: &'static str,
    json: Option<&'a RawValue>,
    b64: Option<Cow<'a, str>>,
) -> Result<Option<Blob<'a>>, Error> {
    match (json, b64) {
        (Some(_), Some(_)) => Err(Error::InvalidRecord {
            index,
            field,
            reason: format!("give either {field} or {field}_base64, not both"),
        }),
        (None, None) => Ok(None),
        (None, Some(text)) => {
            let bytes = B64.decode(text.as_bytes()).map_err(|e| Error::InvalidRecord {
                index,
                field,
                reason: format!("{field}_base64 is not valid base64: {e}"),
            })?;
            Ok(Some(Blob::new(Format::Binary, bytes)))
        }
        (Some(raw), None) => {
            let text = raw.get();
            // serde_json has already checked the raw string (UTF-8, no control
            // characters, valid escapes): without a backslash, what lies between
            // the quotes is the value itself, borrowed, with no second parse.
            if let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"'))
                && !inner.contains('\\')
            {
                return Ok(Some(Blob::new(Format::Text, inner.as_bytes())));
            }
            if text.starts_with('"') {
                let s: Cow<'a, str> = serde_json::from_str(text).map_err(|e| Error::InvalidRecord {
                    index,
                    field,
                    reason: e.to_string(),
                })?;
                Ok(Some(Blob::new(Format::Text, cow_bytes(s))))
            } else {
                Ok(Some(Blob::new(Format::Json, text.as_bytes())))
            }
        }
    }
}

fn cow_bytes(s: Cow<'_, str>) -> Cow<'_, [u8]> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(b.as_bytes()),
        Cow::Owned(o) => Cow::Owned(o.into_bytes()),
    }
}

/// How byte strings are written out in read responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Each in the form it was produced in: JSON as JSON, text as a string,
    /// binary as `*_base64`.
    #[default]
    Auto,
    /// Everything as `key_base64` / `value_base64` / header `value_base64`.
    Base64,
}

/// Appends one record as a JSON object to `out`. With a `decoder` (and `Encoding::Auto`), a
/// key or value in Confluent's wire format whose schema is one of the topic's subject is
/// written as its JSON, with `key_schema_id` / `value_schema_id`.
pub fn write_record(
    out: &mut Vec<u8>,
    topic: &str,
    partition: u32,
    offset: u64,
    rec: &StoredRecord<'_>,
    enc: Encoding,
    mut decoder: Option<&mut Decoder>,
) {
    out.extend_from_slice(b"{\"topic\":");
    write_str(out, topic);
    out.extend_from_slice(b",\"partition\":");
    write_u64(out, partition as u64);
    out.extend_from_slice(b",\"offset\":");
    write_u64(out, offset);
    out.extend_from_slice(b",\"timestamp\":");
    write_u64(out, rec.timestamp);
    for (field, blob) in [("key", rec.key.as_ref()), ("value", rec.value.as_ref())] {
        out.push(b',');
        let decoded = match (blob, decoder.as_deref_mut(), enc) {
            (Some(b), Some(d), Encoding::Auto) if b.bytes.first() == Some(&0) => {
                d.decode(topic, field == "key", &b.bytes)
            }
            _ => None,
        };
        match decoded {
            Some((id, json)) => {
                out.push(b'"');
                out.extend_from_slice(field.as_bytes());
                out.extend_from_slice(b"\":");
                out.extend_from_slice(&json);
                out.extend_from_slice(b",\"");
                out.extend_from_slice(field.as_bytes());
                out.extend_from_slice(b"_schema_id\":");
                write_u64(out, u64::from(id));
            }
            None => write_blob(out, field, blob, enc),
        }
    }
    out.extend_from_slice(b",\"headers\":[");
    for (i, h) in rec.headers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        write_str(out, &h.name);
        out.push(b',');
        write_blob(out, "value", h.value.as_ref(), enc);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

fn write_blob(out: &mut Vec<u8>, field: &str, blob: Option<&Blob<'_>>, enc: Encoding) {
    let as_base64 = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.push(b'"');
        let start = out.len();
        out.resize(start + base64::encoded_len(bytes.len(), true).unwrap_or(0), 0);
        let n = B64.encode_slice(bytes, &mut out[start..]).unwrap_or(0);
        out.truncate(start + n);
        out.push(b'"');
    };
    match (blob, enc) {
        (None, Encoding::Auto) => {
            out.push(b'"');
            out.extend_from_slice(field.as_bytes());
            out.extend_from_slice(b"\":null");
        }
        (None, Encoding::Base64) => {
            out.push(b'"');
            out.extend_from_slice(field.as_bytes());
            out.extend_from_slice(b"_base64\":null");
        }
        (Some(b), Encoding::Base64) | (Some(b @ Blob { format: Format::Binary, .. }), Encoding::Auto) => {
            out.push(b'"');
            out.extend_from_slice(field.as_bytes());
            out.extend_from_slice(b"_base64\":");
            as_base64(out, &b.bytes);
        }
        (Some(b), Encoding::Auto) => {
            out.push(b'"');
            out.extend_from_slice(field.as_bytes());
            out.extend_from_slice(b"\":");
            if b.format == Format::Json {
                out.extend_from_slice(&b.bytes);
            } else {
                write_str(out, &String::from_utf8_lossy(&b.bytes));
            }
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<NewRecord<'_>, Error> {
        let r: RecordIn<'_> = serde_json::from_str(json).unwrap();
        r.into_record(0)
    }

    #[test]
    fn strings_are_text_other_json_is_verbatim() {
        let r = parse(r#"{"key":"foobar","value":{"a": [1, 2]}}"#).unwrap();
        assert_eq!(r.key.unwrap(), Blob::new(Format::Text, b"foobar".to_vec()));
        assert_eq!(r.value.unwrap(), Blob::new(Format::Json, br#"{"a": [1, 2]}"#.to_vec()));
        let r = parse(r#"{"value":"caf\u00e9 \"q\""}"#).unwrap();
        assert_eq!(r.value.unwrap().bytes.as_ref(), "café \"q\"".as_bytes());
    }

    proptest::proptest! {
        /// Whichever path a JSON string takes (borrowed as is, or unescaped), the
        /// stored bytes are the string the client meant.
        #[test]
        fn string_values_store_exactly_their_text(text in ".*", escape_all in proptest::bool::ANY) {
            let mut encoded = serde_json::to_string(&text).unwrap();
            if escape_all {
                // The same string with every character as a \u escape.
                encoded = format!("\"{}\"", text.encode_utf16().map(|u| format!("\\u{u:04x}")).collect::<String>());
            }
            let body = format!("{{\"value\":{encoded}}}");
            let value = parse(&body).unwrap().value.unwrap();
            proptest::prop_assert_eq!(value.bytes.as_ref(), text.as_bytes());
        }
    }

    #[test]
    fn written_offsets_are_what_serde_writes() {
        #[derive(serde::Serialize)]
        struct Offset {
            partition: u32,
            offset: u64,
            timestamp: u64,
        }
        #[derive(serde::Serialize)]
        struct Offsets {
            offsets: Vec<Offset>,
        }
        for meta in [
            vec![],
            vec![RecordMetadata { partition: 0, offset: 0, timestamp: 0 }],
            vec![
                RecordMetadata { partition: 3, offset: 41, timestamp: 1_700_000_000_000 },
                RecordMetadata { partition: u32::MAX, offset: u64::MAX, timestamp: i64::MAX as u64 },
            ],
        ] {
            let offsets = meta
                .iter()
                .map(|m| Offset { partition: m.partition, offset: m.offset, timestamp: m.timestamp })
                .collect();
            let expected = serde_json::to_string(&Offsets { offsets }).unwrap();
            let mut out = String::from("{");
            write_offsets(&mut out, &meta);
            out.push('}');
            assert_eq!(out, expected);
        }
    }

    /// An answer that cannot be serialized is an internal error (500
    /// internal_error), never reported as a storage failure.
    #[test]
    fn an_answer_that_does_not_serialize_is_an_internal_error() {
        let map = std::collections::BTreeMap::from([((1u8, 2u8), 3u8)]);
        let e = to_json(&map).unwrap_err();
        assert!(matches!(e, Error::Internal(_)), "{e:?}");
        assert_eq!(e.code().as_str(), "internal_error");
    }

    #[test]
    fn produce_bodies_and_record_lists_share_one_parser() {
        let body = br#"{"records":[{"key":"k","value":{"a":1}}]}"#;
        let list = r#"[{"key":"k","value":{"a":1}}]"#;
        assert_eq!(parse_produce_body(body).unwrap().0, parse_record_list(list).unwrap());
        assert!(matches!(parse_produce_body(b"{\"records\":[]}"), Err(Error::InvalidRequest(_))));
        assert!(matches!(parse_record_list("[]"), Err(Error::InvalidRequest(_))));
        assert!(matches!(parse_produce_body(b"{nope"), Err(Error::InvalidJson(_))));
        assert!(matches!(parse_record_list(r#"[{"valu":1}]"#), Err(Error::InvalidRequest(_))));
        assert!(matches!(parse_record_list(r#"[{"value_base64":"%"}]"#), Err(Error::InvalidRecord { index: 0, .. })));
    }

    #[test]
    fn base64_and_null_forms() {
        let r = parse(r#"{"key_base64":"AP8=","value":null}"#).unwrap();
        assert_eq!(r.key.unwrap(), Blob::new(Format::Binary, vec![0, 255]));
        assert!(r.value.is_none());
        assert!(parse(r#"{"value_base64":"***"}"#).is_err());
        assert!(parse(r#"{"value":1,"value_base64":"AA=="}"#).is_err());
    }

    #[test]
    fn records_write_back_in_their_forms() {
        let rec = StoredRecord {
            timestamp: 7,
            key: Some(Blob::new(Format::Binary, vec![0, 255])),
            value: Some(Blob::new(Format::Json, br#"{"n": 1}"#.to_vec())),
            headers: vec![Header { name: "h".into(), value: Some(Blob::new(Format::Text, b"x\"y".to_vec())) }],
        };
        let mut out = Vec::new();
        write_record(&mut out, "t", 1, 5, &rec, Encoding::Auto, None);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"topic":"t","partition":1,"offset":5,"timestamp":7,"key_base64":"AP8=",
                "value":{"n":1},"headers":[{"name":"h","value":"x\"y"}]})
        );
        let mut out = Vec::new();
        write_record(&mut out, "t", 1, 5, &rec, Encoding::Base64, None);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["value_base64"], "eyJuIjogMX0=");
        assert_eq!(v["headers"][0]["value_base64"], "eCJ5");
    }
}
