//! The WebSocket frame protocol: JSON text frames tagged by `type`.
//!
//! Client → server: `commit`, `ack`, `credit`, `produce`.
//! Server → client: `records`, `assignment`, `committed`, `produced`, `error`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codec::{self, Encoding, to_json};
use crate::error::{Code, Error, Result};
use crate::record::StoredRecord;
pub use crate::service::OffsetEntry;
use crate::service::{Acks, RecordMetadata, RecordSink, TopicPartition, View};

/// A frame from the client. Produce frames keep their records unparsed until
/// the produce task handles them.
#[derive(Debug)]
pub enum ClientFrame<'a> {
    /// Commit explicit offsets (next offset to read, per partition).
    Commit { offsets: Vec<OffsetEntry> },
    /// Acknowledge records; the server commits, per partition, the contiguous
    /// acknowledged prefix. Either one record (`topic`, `partition`, `offset`)
    /// or a list in `records`.
    Ack { topic: Option<String>, partition: Option<u32>, offset: Option<u64>, records: Vec<OffsetEntry> },
    /// Allow the server to send this many more records.
    Credit { records: u64 },
    /// Produce records, answered by `produced` (or `error`) with the same `id`.
    Produce {
        id: serde_json::Value,
        topic: Option<String>,
        partition: Option<u32>,
        acks: Option<Acks>,
        /// As REST's `Idempotency-Key`: a retried frame gets the first answer.
        idempotency_key: Option<String>,
        /// As REST's `key_schema_id` / `value_schema_id`.
        schemas: crate::service::SchemaIds,
        records: &'a RawValue,
    },
}

/// Why a client frame was refused: `invalid_json` (not JSON) or `invalid_frame`
/// (JSON, but not a frame this server knows), with what was wrong.
#[derive(Debug)]
pub struct FrameError {
    pub code: Code,
    pub message: String,
    /// The frame's `id`, when it had one (a produce frame's errors echo it).
    pub id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    id: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitFrame {
    #[serde(rename = "type")]
    _kind: String,
    offsets: Vec<OffsetEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AckFrame {
    #[serde(rename = "type")]
    _kind: String,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    partition: Option<u32>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    records: Vec<OffsetEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditFrame {
    #[serde(rename = "type")]
    _kind: String,
    records: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProduceFrame<'a> {
    #[serde(rename = "type")]
    _kind: String,
    id: serde_json::Value,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    partition: Option<u32>,
    #[serde(default)]
    acks: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    key_schema_id: Option<u32>,
    #[serde(default)]
    value_schema_id: Option<u32>,
    #[serde(borrow)]
    records: &'a RawValue,
}

impl<'a> ClientFrame<'a> {
    /// Parses a text frame: first its `type`, then the fields that type takes.
    pub fn parse(text: &'a str) -> Result<Self, FrameError> {
        let tag: Tag<'_> = serde_json::from_str(text).map_err(|e| FrameError {
            code: match e.classify() {
                serde_json::error::Category::Data => Code::InvalidFrame,
                _ => Code::InvalidJson,
            },
            message: e.to_string(),
            id: None,
        })?;
        let id = tag.id.clone();
        let shape =
            |e: serde_json::Error| FrameError { code: Code::InvalidFrame, message: e.to_string(), id: id.clone() };
        match tag.kind.as_deref() {
            Some("commit") => {
                let f: CommitFrame = serde_json::from_str(text).map_err(shape)?;
                Ok(ClientFrame::Commit { offsets: f.offsets })
            }
            Some("ack") => {
                let f: AckFrame = serde_json::from_str(text).map_err(shape)?;
                Ok(ClientFrame::Ack { topic: f.topic, partition: f.partition, offset: f.offset, records: f.records })
            }
            Some("credit") => {
                let f: CreditFrame = serde_json::from_str(text).map_err(shape)?;
                Ok(ClientFrame::Credit { records: f.records })
            }
            Some("produce") => {
                let f: ProduceFrame<'a> = serde_json::from_str(text).map_err(shape)?;
                // One rule for `acks` on every transport (`Acks`'s own parser).
                let acks = match f.acks.as_deref().map(str::parse::<Acks>).transpose() {
                    Ok(acks) => acks,
                    Err(e) => {
                        return Err(FrameError { code: Code::InvalidFrame, message: e.to_string(), id: Some(f.id) });
                    }
                };
                Ok(ClientFrame::Produce {
                    id: f.id,
                    topic: f.topic,
                    partition: f.partition,
                    acks,
                    idempotency_key: f.idempotency_key,
                    schemas: crate::service::SchemaIds { key: f.key_schema_id, value: f.value_schema_id },
                    records: f.records,
                })
            }
            Some(other) => Err(FrameError {
                code: Code::InvalidFrame,
                message: format!("unknown frame type '{other}'; expected commit, ack, credit or produce"),
                id,
            }),
            None => Err(FrameError { code: Code::InvalidFrame, message: "a frame needs a \"type\"".into(), id }),
        }
    }
}

/// A `records` frame being built.
#[derive(Debug)]
pub struct RecordsFrame {
    buf: Vec<u8>,
    count: usize,
    encoding: Encoding,
    /// Decodes schema-framed values (with `Encoding::Auto` and a registry).
    decoder: Option<crate::service::Decoder>,
}

impl RecordsFrame {
    pub fn new(encoding: Encoding, decoder: Option<crate::service::Decoder>) -> Self {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(b"{\"type\":\"records\",\"records\":[");
        let decoder = decoder.filter(|_| encoding == Encoding::Auto);
        RecordsFrame { buf, count: 0, encoding, decoder }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The frame's text. Stored JSON values are copied in verbatim, so a stored
    /// value that is not UTF-8 (corruption) makes the frame fail, not go out broken.
    pub fn finish(mut self) -> Result<String> {
        self.buf.extend_from_slice(b"]}");
        String::from_utf8(self.buf).map_err(|e| Error::Corrupt(format!("a stored JSON value is not UTF-8: {e}")))
    }
}

impl RecordSink for RecordsFrame {
    fn push(&mut self, topic: &str, partition: u32, offset: u64, rec: &StoredRecord<'_>) {
        if self.count > 0 {
            self.buf.push(b',');
        }
        codec::write_record(&mut self.buf, topic, partition, offset, rec, self.encoding, self.decoder.as_mut());
        self.count += 1;
    }

    fn count(&self) -> usize {
        self.count
    }

    fn bytes(&self) -> usize {
        self.buf.len()
    }
}

#[derive(Serialize)]
struct TopicParts<'a> {
    topic: &'a str,
    partitions: Vec<u32>,
}

fn by_topic(tps: &BTreeSet<TopicPartition>) -> Vec<TopicParts<'_>> {
    crate::service::by_topic(tps).into_iter().map(|(topic, partitions)| TopicParts { topic, partitions }).collect()
}

pub fn assignment(member_id: &str, view: &View) -> Result<String> {
    #[derive(Serialize)]
    struct Frame<'a> {
        r#type: &'static str,
        member_id: &'a str,
        generation: u64,
        assignment: Vec<TopicParts<'a>>,
        revoked: Vec<TopicParts<'a>>,
    }
    to_json(&Frame {
        r#type: "assignment",
        member_id,
        generation: view.generation,
        assignment: by_topic(&view.assignment),
        revoked: by_topic(&view.revoked),
    })
}

pub fn committed(offsets: &[OffsetEntry]) -> Result<String> {
    #[derive(Serialize)]
    struct Frame<'a> {
        r#type: &'static str,
        offsets: &'a [OffsetEntry],
    }
    to_json(&Frame { r#type: "committed", offsets })
}

/// The answer to a produce frame: `accepted` records, and where they landed
/// (`offsets`, absent for `acks=none`).
pub fn produced(
    id: &serde_json::Value,
    offsets: Option<&[RecordMetadata]>,
    accepted: usize,
    replayed: bool,
) -> Result<String> {
    let mut out = String::with_capacity(64 + offsets.map_or(0, |o| o.len() * 64));
    out.push_str("{\"type\":\"produced\",\"id\":");
    out.push_str(&to_json(id)?);
    if let Some(offsets) = offsets {
        out.push(',');
        codec::write_offsets(&mut out, offsets);
    }
    out.push_str(",\"accepted\":");
    out.push_str(itoa::Buffer::new().format(accepted));
    if replayed {
        // The first answer to this frame's idempotency key, again.
        out.push_str(",\"replayed\":true");
    }
    out.push('}');
    Ok(out)
}

/// An `error` frame; its `code` comes from the one table of codes.
pub fn error(code: Code, message: &str, id: Option<&serde_json::Value>) -> Result<String> {
    #[derive(Serialize)]
    struct Frame<'a> {
        r#type: &'static str,
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a serde_json::Value>,
    }
    to_json(&Frame { r#type: "error", code: code.as_str(), message, id })
}

/// Per-record acknowledgements → the offsets that can be committed.
///
/// For each partition it tracks the first offset not yet acknowledged (`next`)
/// and the acknowledged offsets beyond it; acknowledging `next` advances it over
/// every contiguous acknowledged offset, and that new `next` is what gets committed.
#[derive(Debug, Default)]
pub struct AckTracker {
    parts: BTreeMap<TopicPartition, PartAcks>,
}

#[derive(Debug)]
struct PartAcks {
    next: u64,
    delivered_end: u64,
    acked: BTreeSet<u64>,
}

/// Why an acknowledgement was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum AckError {
    /// The offset was never delivered on this connection (or belongs to a partition it lost).
    NotDelivered,
}

impl AckTracker {
    /// Records `from..to` of a partition as delivered. A delivery that does not
    /// continue the previous one (an offset reset moved the position) starts over.
    pub fn delivered(&mut self, tp: &TopicPartition, from: u64, to: u64) {
        let e = self.parts.entry(tp.clone()).or_insert(PartAcks {
            next: from,
            delivered_end: from,
            acked: BTreeSet::new(),
        });
        if e.delivered_end != from {
            *e = PartAcks { next: from, delivered_end: from, acked: BTreeSet::new() };
        }
        e.delivered_end = to;
    }

    /// Acknowledges one record; returns the new commit offset when it moved.
    pub fn ack(&mut self, tp: &TopicPartition, offset: u64) -> Result<Option<u64>, AckError> {
        let e = self.parts.get_mut(tp).ok_or(AckError::NotDelivered)?;
        if offset >= e.delivered_end {
            return Err(AckError::NotDelivered);
        }
        if offset < e.next {
            return Ok(None);
        }
        e.acked.insert(offset);
        let before = e.next;
        while e.acked.remove(&e.next) {
            e.next += 1;
        }
        Ok((e.next > before).then_some(e.next))
    }

    /// Forgets a partition the connection no longer owns.
    pub fn forget(&mut self, tp: &TopicPartition) {
        self.parts.remove(tp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_contiguous_prefix_commits() {
        let tp = TopicPartition::new("t", 0);
        let mut a = AckTracker::default();
        a.delivered(&tp, 10, 15);
        assert_eq!(a.ack(&tp, 12), Ok(None));
        assert_eq!(a.ack(&tp, 11), Ok(None));
        assert_eq!(a.ack(&tp, 10), Ok(Some(13)));
        assert_eq!(a.ack(&tp, 14), Ok(None));
        assert_eq!(a.ack(&tp, 13), Ok(Some(15)));
        assert_eq!(a.ack(&tp, 15), Err(AckError::NotDelivered));
        assert_eq!(a.ack(&tp, 10), Ok(None), "acking again is harmless");
        a.delivered(&tp, 15, 20);
        assert_eq!(a.ack(&tp, 15), Ok(Some(16)));
        // A reset moved the position: tracking starts over.
        a.delivered(&tp, 3, 5);
        assert_eq!(a.ack(&tp, 4), Ok(None));
        assert_eq!(a.ack(&tp, 3), Ok(Some(5)));
        assert_eq!(a.ack(&TopicPartition::new("t", 1), 0), Err(AckError::NotDelivered));
    }

    #[test]
    fn client_frames_parse_with_their_fields() {
        let f = ClientFrame::parse(r#"{"type":"credit","records":5}"#).unwrap();
        assert!(matches!(f, ClientFrame::Credit { records: 5 }));
        let f = ClientFrame::parse(r#"{"type":"produce","id":7,"records":[{"value":1}]}"#).unwrap();
        assert!(matches!(f, ClientFrame::Produce { records, .. } if records.get() == r#"[{"value":1}]"#));
        let code = |text: &str| ClientFrame::parse(text).err().map(|e| e.code);
        assert_eq!(code(r#"{"type":"nope"}"#), Some(Code::InvalidFrame));
        assert_eq!(code(r#"{"type":"credit","records":-1}"#), Some(Code::InvalidFrame));
        assert_eq!(code("nope"), Some(Code::InvalidJson));
        let f = ClientFrame::parse(r#"{"type":"produce","id":3,"acks":"1","records":[]}"#).unwrap();
        assert!(matches!(f, ClientFrame::Produce { acks: Some(Acks::Leader), .. }));
        let e = ClientFrame::parse(r#"{"type":"produce","id":3,"acks":"most","records":[]}"#).unwrap_err();
        assert_eq!((e.code, e.id), (Code::InvalidFrame, Some(serde_json::json!(3))), "{}", e.message);
    }

    #[test]
    fn a_frame_with_a_stored_value_that_is_not_utf8_fails_instead_of_going_out_empty() {
        use crate::record::{Blob, Format};
        let rec = StoredRecord {
            timestamp: 1,
            key: None,
            value: Some(Blob::new(Format::Json, vec![b'"', 0xff, b'"'])),
            headers: vec![],
        };
        let mut frame = RecordsFrame::new(Encoding::Auto, None);
        frame.push("t", 0, 0, &rec);
        assert!(matches!(frame.finish(), Err(Error::Corrupt(_))));
        let produced = produced(
            &serde_json::json!("p1"),
            Some(&[RecordMetadata { partition: 1, offset: 2, timestamp: 3 }]),
            1,
            false,
        )
        .unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&produced).unwrap(),
            serde_json::json!({"type":"produced","id":"p1","offsets":[{"partition":1,"offset":2,"timestamp":3}],"accepted":1})
        );
    }
}
