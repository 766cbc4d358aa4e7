//! The batch format before RecordBatch v2 (gregor 0.1's), kept to migrate data directories
//! written by it (`store::migrate`): it is read, never written.
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

use super::{BatchInfo, Blob, Format, Header, Reader, StoredRecord};
use crate::error::Error;

const VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 4 + 8;

/// Whether a stored value is in this format rather than RecordBatch v2: a v1 batch starts with
/// its version, 1; a v2 batch with its base offset, whose top byte is 0 below 2^56. Asked only
/// while a data directory is being migrated (offsets written before it are far below 2^56).
pub fn is_v1(bytes: &[u8]) -> bool {
    bytes.first() == Some(&VERSION)
}

pub fn batch_info(bytes: &[u8]) -> Result<BatchInfo, Error> {
    let mut r = Reader { data: bytes, pos: 0 };
    let version = r.le_u8()?;
    if version != VERSION {
        return Err(Error::Corrupt(format!("unknown batch version {version}")));
    }
    Ok(BatchInfo { count: r.le_u32()?, max_timestamp: r.le_u64()? })
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
        let rec = self.r.v1_record();
        if rec.is_err() {
            self.remaining = 0;
        }
        Some(rec)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining as usize))
    }
}

/// The old format's fields, read with the v2 reader's bounds-checked `take`.
impl<'a> Reader<'a> {
    fn le_u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn le_u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn le_u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn le_u64(&mut self) -> Result<u64, Error> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn v1_blob(&mut self) -> Result<Option<Blob<'a>>, Error> {
        let format = match self.le_u8()? {
            0 => return Ok(None),
            1 => Format::Binary,
            2 => Format::Text,
            3 => Format::Json,
            t => return Err(Error::Corrupt(format!("unknown blob tag {t}"))),
        };
        let len = self.le_u32()? as usize;
        Ok(Some(Blob { format, bytes: Cow::Borrowed(self.take(len)?) }))
    }
    fn v1_record(&mut self) -> Result<StoredRecord<'a>, Error> {
        let timestamp = self.le_u64()?;
        let key = self.v1_blob()?;
        let value = self.v1_blob()?;
        let n = self.le_u16()? as usize;
        let mut headers = Vec::with_capacity(n);
        for _ in 0..n {
            let len = self.le_u16()? as usize;
            let name =
                std::str::from_utf8(self.take(len)?).map_err(|_| Error::Corrupt("header name is not UTF-8".into()))?;
            headers.push(Header { name: Cow::Borrowed(name), value: self.v1_blob()? });
        }
        Ok(StoredRecord { timestamp, key, value, headers })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Encodes records in the old format, as gregor 0.1 wrote them (for migration tests).
    /// (timestamp, key, value, headers)
    type OldRecord<'a> = (u64, Option<Blob<'a>>, Option<Blob<'a>>, Vec<Header<'a>>);

    pub(crate) fn encode(records: &[OldRecord<'_>]) -> Vec<u8> {
        fn put_blob(buf: &mut Vec<u8>, blob: Option<&Blob<'_>>) {
            match blob {
                None => buf.push(0),
                Some(b) => {
                    buf.push(match b.format {
                        Format::Binary => 1,
                        Format::Text => 2,
                        Format::Json => 3,
                    });
                    buf.extend_from_slice(&(b.bytes.len() as u32).to_le_bytes());
                    buf.extend_from_slice(&b.bytes);
                }
            }
        }
        let mut buf = vec![VERSION];
        buf.extend_from_slice(&(records.len() as u32).to_le_bytes());
        let max = records.iter().map(|r| r.0).max().unwrap_or(0);
        buf.extend_from_slice(&max.to_le_bytes());
        for (ts, key, value, headers) in records {
            buf.extend_from_slice(&ts.to_le_bytes());
            put_blob(&mut buf, key.as_ref());
            put_blob(&mut buf, value.as_ref());
            buf.extend_from_slice(&(headers.len() as u16).to_le_bytes());
            for h in headers {
                buf.extend_from_slice(&(h.name.len() as u16).to_le_bytes());
                buf.extend_from_slice(h.name.as_bytes());
                put_blob(&mut buf, h.value.as_ref());
            }
        }
        buf
    }

    #[test]
    fn old_batches_decode_and_truncations_fail() {
        let text = Some(Blob::new(Format::Text, &b"abc"[..]));
        let json = Some(Blob::new(Format::Json, &b"[1]"[..]));
        let h = vec![Header { name: "h".into(), value: text.clone() }, Header { name: "h".into(), value: None }];
        let bytes = encode(&[(5, None, json.clone(), h.clone()), (9, text.clone(), None, vec![])]);
        assert!(is_v1(&bytes));
        assert_eq!(batch_info(&bytes).unwrap(), BatchInfo { count: 2, max_timestamp: 9 });
        let recs: Vec<_> = decode(&bytes).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(recs[0], StoredRecord { timestamp: 5, key: None, value: json, headers: h });
        assert_eq!(recs[1], StoredRecord { timestamp: 9, key: text, value: None, headers: vec![] });
        for cut in 0..bytes.len() {
            let res: Result<Vec<_>, _> = match decode(&bytes[..cut]) {
                Ok(it) => it.collect(),
                Err(e) => Err(e),
            };
            assert!(res.is_err(), "cut at {cut} should fail");
        }
    }
}
