//! Records and the batch codec: how the records of one produce request, for one
//! partition, become one stored value.
//!
//! Every byte string (key, value, header value) is stored with the form it was
//! sent in (binary, UTF-8 text or JSON), so that it reads back in that form by
//! default and never has to be guessed.
//!
//! Layout of a batch (little-endian integers):
//! ```text
//! batch  = version:u8 (=1) count:u32 max_timestamp:u64 record*count
//! record = timestamp:u64 key:blob value:blob header_count:u16 header*
//! header = name_len:u16 name:utf8 value:blob
//! blob   = tag:u8 (0 null, 1 binary, 2 text, 3 json) [len:u32 bytes]   (no len for null)
//! ```
//! A record's offset is not stored: it is the batch's base offset (the store key)
//! plus the record's position in the batch.

use std::borrow::Cow;

use crate::error::Error;

const VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + 8;

/// The form a byte string was produced in, and so is rendered in by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Arbitrary bytes (sent as base64).
    Binary,
    /// UTF-8 text (sent as a JSON string).
    Text,
    /// A JSON document, kept as the exact text the client sent.
    Json,
}

impl Format {
    fn tag(self) -> u8 {
        match self {
            Format::Binary => 1,
            Format::Text => 2,
            Format::Json => 3,
        }
    }
}

/// A byte string and the form it came in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob<'a> {
    pub format: Format,
    pub bytes: Cow<'a, [u8]>,
}

impl<'a> Blob<'a> {
    pub fn new(format: Format, bytes: impl Into<Cow<'a, [u8]>>) -> Self {
        Blob { format, bytes: bytes.into() }
    }
}

/// A record header: Kafka headers are an ordered list, names may repeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: Cow<'a, str>,
    pub value: Option<Blob<'a>>,
}

/// A record on its way into the log (its offset is not known yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecord<'a> {
    pub key: Option<Blob<'a>>,
    pub value: Option<Blob<'a>>,
    pub headers: Vec<Header<'a>>,
    /// Producer-supplied timestamp (ms since the epoch), if any.
    pub timestamp: Option<u64>,
    /// Explicit partition, if the producer named one.
    pub partition: Option<u32>,
}

impl NewRecord<'_> {
    /// The size `max_message_bytes` is checked against: key, value, header names and values.
    pub fn size(&self) -> usize {
        let blob = |b: &Option<Blob<'_>>| b.as_ref().map_or(0, |b| b.bytes.len());
        blob(&self.key) + blob(&self.value) + self.headers.iter().map(|h| h.name.len() + blob(&h.value)).sum::<usize>()
    }
}

/// Builds the stored value for one partition's share of a produce request.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    count: u32,
    max_timestamp: u64,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&[0u8; HEADER_LEN]);
        BatchBuilder { buf, count: 0, max_timestamp: 0 }
    }

    /// Appends a record; returns its position in the batch.
    /// Callers bound header counts and names (u16) and sizes (u32) beforehand.
    pub fn push(&mut self, record: &NewRecord<'_>, timestamp: u64) -> u32 {
        self.buf.extend_from_slice(&timestamp.to_le_bytes());
        put_blob(&mut self.buf, record.key.as_ref());
        put_blob(&mut self.buf, record.value.as_ref());
        self.buf.extend_from_slice(&(record.headers.len() as u16).to_le_bytes());
        for h in &record.headers {
            self.buf.extend_from_slice(&(h.name.len() as u16).to_le_bytes());
            self.buf.extend_from_slice(h.name.as_bytes());
            put_blob(&mut self.buf, h.value.as_ref());
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        self.count += 1;
        self.count - 1
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn finish(mut self) -> EncodedBatch {
        self.buf[0] = VERSION;
        self.buf[1..5].copy_from_slice(&self.count.to_le_bytes());
        self.buf[5..13].copy_from_slice(&self.max_timestamp.to_le_bytes());
        EncodedBatch { bytes: self.buf, count: self.count, max_timestamp: self.max_timestamp }
    }
}

fn put_blob(buf: &mut Vec<u8>, blob: Option<&Blob<'_>>) {
    match blob {
        None => buf.push(0),
        Some(b) => {
            buf.push(b.format.tag());
            buf.extend_from_slice(&(b.bytes.len() as u32).to_le_bytes());
            buf.extend_from_slice(&b.bytes);
        }
    }
}

/// A finished batch, ready to be stored.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    pub bytes: Vec<u8>,
    pub count: u32,
    pub max_timestamp: u64,
}

/// A record read back from a stored batch, borrowing the batch's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord<'a> {
    pub timestamp: u64,
    pub key: Option<Blob<'a>>,
    pub value: Option<Blob<'a>>,
    pub headers: Vec<Header<'a>>,
}

/// The header of a stored batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    pub count: u32,
    pub max_timestamp: u64,
}

/// Reads the count and max timestamp of a stored batch.
pub fn batch_info(bytes: &[u8]) -> Result<BatchInfo, Error> {
    let mut r = Reader { data: bytes, pos: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(Error::Corrupt(format!("unknown batch version {version}")));
    }
    Ok(BatchInfo { count: r.u32()?, max_timestamp: r.u64()? })
}

/// Iterates the records of a stored batch in offset order.
pub fn decode(bytes: &[u8]) -> Result<BatchIter<'_>, Error> {
    let info = batch_info(bytes)?;
    Ok(BatchIter { r: Reader { data: bytes, pos: HEADER_LEN }, remaining: info.count })
}

#[derive(Debug)]
pub struct BatchIter<'a> {
    r: Reader<'a>,
    remaining: u32,
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<StoredRecord<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let rec = self.r.record();
        if rec.is_err() {
            self.remaining = 0;
        }
        Some(rec)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining as usize))
    }
}

#[derive(Debug)]
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => {
                Err(Error::Corrupt(format!("batch truncated: wanted {n} bytes at {} of {}", self.pos, self.data.len())))
            }
        }
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, Error> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn blob(&mut self) -> Result<Option<Blob<'a>>, Error> {
        let format = match self.u8()? {
            0 => return Ok(None),
            1 => Format::Binary,
            2 => Format::Text,
            3 => Format::Json,
            t => return Err(Error::Corrupt(format!("unknown blob tag {t}"))),
        };
        let len = self.u32()? as usize;
        Ok(Some(Blob { format, bytes: Cow::Borrowed(self.take(len)?) }))
    }
    fn record(&mut self) -> Result<StoredRecord<'a>, Error> {
        let timestamp = self.u64()?;
        let key = self.blob()?;
        let value = self.blob()?;
        let n = self.u16()? as usize;
        let mut headers = Vec::with_capacity(n);
        for _ in 0..n {
            let len = self.u16()? as usize;
            let name =
                std::str::from_utf8(self.take(len)?).map_err(|_| Error::Corrupt("header name is not UTF-8".into()))?;
            headers.push(Header { name: Cow::Borrowed(name), value: self.blob()? });
        }
        Ok(StoredRecord { timestamp, key, value, headers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: u8) -> NewRecord<'static> {
        NewRecord {
            key: i.is_multiple_of(2).then(|| Blob::new(Format::Binary, vec![0, 255, i])),
            value: Some(Blob::new(Format::Json, br#"{"n": 1}"#.to_vec())),
            headers: vec![
                Header { name: "trace".into(), value: Some(Blob::new(Format::Text, b"abc".to_vec())) },
                Header { name: "trace".into(), value: None },
            ],
            timestamp: None,
            partition: None,
        }
    }

    #[test]
    fn round_trip_keeps_bytes_forms_and_order() {
        let mut b = BatchBuilder::new();
        for i in 0..5u8 {
            assert_eq!(b.push(&sample(i), 1000 + i as u64), i as u32);
        }
        let enc = b.finish();
        assert_eq!(enc.count, 5);
        assert_eq!(enc.max_timestamp, 1004);
        assert_eq!(batch_info(&enc.bytes).unwrap(), BatchInfo { count: 5, max_timestamp: 1004 });
        let recs: Vec<_> = decode(&enc.bytes).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(recs.len(), 5);
        for (i, r) in recs.iter().enumerate() {
            let want = sample(i as u8);
            assert_eq!(r.timestamp, 1000 + i as u64);
            assert_eq!(r.key, want.key);
            assert_eq!(r.value, want.value);
            assert_eq!(r.headers, want.headers);
        }
    }

    #[test]
    fn truncated_batches_are_errors_not_panics() {
        let mut b = BatchBuilder::new();
        b.push(&sample(0), 1);
        let enc = b.finish();
        for cut in 0..enc.bytes.len() {
            let res: Result<Vec<_>, _> = match decode(&enc.bytes[..cut]) {
                Ok(it) => it.collect(),
                Err(e) => Err(e),
            };
            assert!(res.is_err(), "cut at {cut} should fail");
        }
    }
}
