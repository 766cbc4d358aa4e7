//! Poll cursors (SPEC §3, "Lost answers lose nothing").
//!
//! A cursor is what a member's poll answer says about where the member is: the
//! answer's generation and, per partition it owns, the offset after the records
//! of that answer. A poll that sends the cursor of the last answer it received
//! reads from those offsets again, so an answer lost on the way is answered
//! again, whole. Nothing but the group's assignment (who owns what since which
//! generation) and its committed offsets is needed to serve such a poll: that is
//! what lets any replica serve it later.
//!
//! The token is opaque to clients and tamper-evident: a version byte, the fields
//! as LEB128 varints, then an HMAC-SHA256 tag (truncated to 128 bits) over the
//! group id, the member id and those bytes, all in unpadded base64url. A cursor
//! forged, altered, or issued to another member or group does not verify.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

use super::assignor::TopicPartition;
use crate::error::{Error, Result};

const VERSION: u8 = 1;
/// Version 1 followed by `extra` (a length and its bytes): the Kafka backend's member state.
const VERSION_EXTRA: u8 = 2;
const TAG_LEN: usize = 16;
/// The longest token accepted: it travels in a URL, whose length hyper limits
/// to 64 KiB. About 3,000 partitions' positions fit.
pub const MAX_TOKEN_LEN: usize = 32 * 1024;

/// Where a member is, as of one poll answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The answer's generation.
    pub generation: u64,
    /// Where the next poll starts its round over the member's partitions, so that
    /// a repeated poll reads them in the same order (and none starves).
    pub rotation: u32,
    /// Positions, sorted by partition.
    pub positions: Vec<Position>,
    /// Opaque state a backend keeps with the client (the Kafka backend: the member's
    /// assignment and join parameters, for clusters whose DescribeGroups does not show them).
    pub extra: Vec<u8>,
}

/// The offset after an answer's records, for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub tp: TopicPartition,
    /// The topic's id: a topic deleted and created again under the same name is another topic.
    pub topic_id: u32,
    /// The partition's offset-reset epoch: an operator's reset supersedes the position.
    pub epoch: u64,
    pub offset: u64,
}

impl Cursor {
    pub fn position(&self, tp: &TopicPartition) -> Option<&Position> {
        self.positions.binary_search_by(|p| p.tp.cmp(tp)).ok().map(|i| &self.positions[i])
    }
}

/// The secret that signs cursors.
pub struct CursorKey(hmac::Key);

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(..)")
    }
}

impl CursorKey {
    pub fn new(secret: &[u8]) -> CursorKey {
        CursorKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    fn tag(&self, group: &str, member: &str, body: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(b"gregor.cursor\0");
        ctx.update(group.as_bytes());
        ctx.update(b"\0");
        ctx.update(member.as_bytes());
        ctx.update(b"\0");
        ctx.update(body);
        ctx.sign()
    }

    /// The token for `cursor`, valid only for `member` of `group`.
    pub fn seal(&self, group: &str, member: &str, cursor: &Cursor) -> String {
        let mut body = vec![if cursor.extra.is_empty() { VERSION } else { VERSION_EXTRA }];
        put(&mut body, cursor.generation);
        put(&mut body, cursor.rotation as u64);
        // Grouped by topic: a topic's name is written once.
        let mut topics: Vec<(&Position, usize)> = Vec::new();
        for p in &cursor.positions {
            match topics.last_mut() {
                Some((first, n)) if first.tp.topic == p.tp.topic && first.topic_id == p.topic_id => *n += 1,
                _ => topics.push((p, 1)),
            }
        }
        put(&mut body, topics.len() as u64);
        let mut rest = cursor.positions.as_slice();
        for (first, n) in topics {
            put(&mut body, first.tp.topic.len() as u64);
            body.extend_from_slice(first.tp.topic.as_bytes());
            put(&mut body, first.topic_id as u64);
            put(&mut body, n as u64);
            for p in &rest[..n] {
                put(&mut body, p.tp.partition as u64);
                put(&mut body, p.epoch);
                put(&mut body, p.offset);
            }
            rest = &rest[n..];
        }
        if !cursor.extra.is_empty() {
            put(&mut body, cursor.extra.len() as u64);
            body.extend_from_slice(&cursor.extra);
        }
        let tag = self.tag(group, member, &body);
        body.extend_from_slice(&tag.as_ref()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(body)
    }

    /// The cursor in `token`, if this key issued it to `member` of `group`.
    pub fn open(&self, group: &str, member: &str, token: &str) -> Result<Cursor> {
        let invalid = |why: &str| Error::InvalidCursor(why.to_owned());
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid("too long"));
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid("not a cursor this server issued"))?;
        if bytes.len() < 1 + TAG_LEN {
            return Err(invalid("not a cursor this server issued"));
        }
        let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let expected = self.tag(group, member, body);
        // Constant time: the tag must not be guessable byte by byte.
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected.as_ref()[..TAG_LEN], tag)) {
            return Err(invalid("not issued to this member of this group by this server"));
        }
        decode(body).ok_or_else(|| invalid("does not decode"))
    }
}

fn decode(body: &[u8]) -> Option<Cursor> {
    let (&version, mut r) = body.split_first()?;
    if version != VERSION && version != VERSION_EXTRA {
        return None;
    }
    let generation = get(&mut r)?;
    let rotation = u32::try_from(get(&mut r)?).ok()?;
    let topics = get(&mut r)?;
    let mut positions = Vec::new();
    for _ in 0..topics {
        let len = usize::try_from(get(&mut r)?).ok()?;
        if len > r.len() {
            return None;
        }
        let (name, rest) = r.split_at(len);
        r = rest;
        let topic = std::str::from_utf8(name).ok()?.to_owned();
        let topic_id = u32::try_from(get(&mut r)?).ok()?;
        let n = get(&mut r)?;
        // Each position takes at least three bytes: a claimed count beyond that is a lie.
        if n > (r.len() / 3) as u64 {
            return None;
        }
        for _ in 0..n {
            let partition = u32::try_from(get(&mut r)?).ok()?;
            let epoch = get(&mut r)?;
            let offset = get(&mut r)?;
            positions.push(Position { tp: TopicPartition::new(topic.clone(), partition), topic_id, epoch, offset });
        }
    }
    let mut extra = Vec::new();
    if version == VERSION_EXTRA {
        let len = usize::try_from(get(&mut r)?).ok()?;
        if len != r.len() {
            return None;
        }
        extra = r.to_vec();
        r = &[];
    }
    if !r.is_empty() {
        return None;
    }
    positions.sort_by(|a, b| a.tp.cmp(&b.tp));
    Some(Cursor { generation, rotation, positions, extra })
}

fn put(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn get(r: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = r.split_first()?;
        *r = rest;
        v |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Cursor {
        let pos = |t: &str, id, p, o| Position { tp: TopicPartition::new(t, p), topic_id: id, epoch: 0, offset: o };
        Cursor {
            generation: 7,
            rotation: 3,
            positions: vec![pos("a", 1, 0, 0), pos("a", 1, 5, 1 << 40), pos("b", 2, 1, 12)],
            extra: Vec::new(),
        }
    }

    /// A cursor with a backend's extra state seals and opens whole; its claimed length must
    /// be exactly what follows.
    #[test]
    fn extra_state_travels_sealed() {
        let key = CursorKey::new(b"secret");
        let with = Cursor { extra: b"{\"a\":1}".to_vec(), ..sample() };
        let token = key.seal("g", "m", &with);
        assert_eq!(key.open("g", "m", &token).unwrap(), with);
        let plain = key.seal("g", "m", &sample());
        assert!(plain.len() < token.len(), "no extra: the version 1 format, unchanged");
        assert_eq!(key.open("g", "m", &plain).unwrap(), sample());
    }

    #[test]
    fn a_sealed_cursor_opens_for_its_member_only() {
        let key = CursorKey::new(b"secret");
        let token = key.seal("g", "m1", &sample());
        assert_eq!(key.open("g", "m1", &token).unwrap(), sample());
        for (g, m) in [("g", "m2"), ("h", "m1"), ("gm", "1")] {
            assert!(matches!(key.open(g, m, &token), Err(Error::InvalidCursor(_))), "{g}/{m}");
        }
        assert!(CursorKey::new(b"other").open("g", "m1", &token).is_err(), "another server's key");
    }

    #[test]
    fn any_change_to_a_token_is_refused() {
        let key = CursorKey::new(b"secret");
        let token = key.seal("g", "m", &sample());
        let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in 0..bytes.len() {
            for bit in [1u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                assert!(key.open("g", "m", &URL_SAFE_NO_PAD.encode(&b)).is_err(), "byte {i} bit {bit}");
            }
        }
        for junk in ["", "x", "!!!", &"A".repeat(MAX_TOKEN_LEN + 1), &token[..token.len() - 1]] {
            assert!(key.open("g", "m", junk).is_err());
        }
    }

    #[test]
    fn decoding_never_trusts_claimed_lengths() {
        // A correctly signed body that claims 2^62 topics or positions ends cleanly.
        let key = CursorKey::new(b"k");
        for body in [
            vec![VERSION, 1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f],
            vec![VERSION, 1, 0, 1, 1, b'a', 1, 0xff, 0xff, 0xff, 0xff, 0x3f],
            vec![VERSION, 1, 0, 1, 0xff, 0xff, 0x03, b'a'],
            vec![VERSION, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        ] {
            let mut token = body.clone();
            token.extend_from_slice(&key.tag("g", "m", &body).as_ref()[..TAG_LEN]);
            assert!(key.open("g", "m", &URL_SAFE_NO_PAD.encode(&token)).is_err(), "{body:?}");
        }
    }

    #[test]
    fn an_empty_cursor_is_short() {
        let key = CursorKey::new(b"k");
        let token = key.seal("g", "m", &Cursor::default());
        assert!(token.len() < 32, "{token}");
        assert_eq!(key.open("g", "m", &token).unwrap(), Cursor::default());
    }
}
