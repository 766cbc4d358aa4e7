//! Records and the batch codec: a stored batch is Kafka's RecordBatch v2, byte for byte
//! what Fetch sends, so the Kafka listener never re-encodes.
//!
//! ```text
//! batch  = baseOffset:i64 batchLength:i32 partitionLeaderEpoch:i32 magic:i8 (=2) crc:u32
//!          attributes:i16 lastOffsetDelta:i32 baseTimestamp:i64 maxTimestamp:i64
//!          producerId:i64 producerEpoch:i16 baseSequence:i32 recordCount:i32 record*
//! record = length:varint attributes:i8 timestampDelta:varlong offsetDelta:varint
//!          keyLength:varint key valueLength:varint value headerCount:varint header*
//! header = keyLength:varint key valueLength:varint value          (length -1: null)
//! ```
//! Integers are big-endian, varints zig-zag; the CRC (CRC-32C) covers `attributes` to the end,
//! so `baseOffset` (set by the writer when it assigns offsets) and `partitionLeaderEpoch` lie
//! outside it, as in Kafka.
//!
//! **Forms.** A REST or WebSocket producer sends each byte string as JSON, text or binary, and
//! reads it back in that form. The form travels in the record's `attributes` byte, which
//! Kafka leaves unused: bits 0-1 the key's form, 4-5 the value's, 6-7 the header values'
//! (when they share one), each 1 binary, 2 text, 3 JSON, and 0 for "not stated". Bits 2-3 stay
//! clear (librdkafka reads bit 3 as log-append time; see `VALUE_FORM_SHIFT`). Records from Kafka clients state nothing; their forms are detected when read
//! ([`detect`]): JSON when the bytes are a JSON document other than a string or `null`,
//! otherwise text when they are UTF-8 without control characters (tab and line breaks
//! allowed), otherwise binary; header values are text or binary, never JSON. Either way the bytes are returned
//! exactly: JSON as the exact text, text as a string, binary as base64.
//!
//! Batches from Kafka producers may be compressed (gzip, snappy, lz4, zstd); they are stored
//! as sent and inflated only when a REST or WebSocket reader needs their records
//! ([`decode`]). gregor's own batches are not compressed.

use std::borrow::Cow;

use crate::error::Error;

mod compression;
pub mod v1;

pub use compression::Compression;

/// The magic byte of RecordBatch v2.
pub const MAGIC: u8 = 2;
/// Bytes before the first record.
pub const HEADER_LEN: usize = 61;
/// The most bytes a compressed batch may inflate to before a reader gives up on it.
pub const MAX_INFLATED_BYTES: usize = 256 * 1024 * 1024;

/// Byte positions of the batch header's fields.
mod at {
    pub const BASE_OFFSET: usize = 0;
    pub const LENGTH: usize = 8;
    pub const LEADER_EPOCH: usize = 12;
    pub const MAGIC: usize = 16;
    pub const CRC: usize = 17;
    pub const ATTRIBUTES: usize = 21;
    pub const LAST_OFFSET_DELTA: usize = 23;
    pub const BASE_TIMESTAMP: usize = 27;
    pub const MAX_TIMESTAMP: usize = 35;
    pub const PRODUCER_ID: usize = 43;
    pub const PRODUCER_EPOCH: usize = 51;
    pub const BASE_SEQUENCE: usize = 53;
    pub const COUNT: usize = 57;
}

/// Where the forms sit in a record's attributes: key in bits 0-1, value in 4-5, header values
/// in 6-7. Bits 2-3 stay clear: librdkafka reads record bit 3 as "log append time" (a v1
/// message attribute) and would then report the batch's largest timestamp for every record.
const VALUE_FORM_SHIFT: u8 = 4;
const HEADER_FORM_SHIFT: u8 = 6;

/// Batch attribute bits (Kafka's).
const ATTR_COMPRESSION: i16 = 0x07;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

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

    fn from_tag(tag: u8, bytes: &[u8]) -> Format {
        match tag {
            1 => Format::Binary,
            2 => Format::Text,
            3 => Format::Json,
            _ => detect(bytes),
        }
    }
}

/// The form of bytes whose producer did not state one (a Kafka client): a JSON document
/// (other than a string or `null`, which would read back as something else) is JSON, other
/// UTF-8 is text, the rest binary. Rendering by this form returns the bytes exactly.
pub fn detect(bytes: &[u8]) -> Format {
    let trimmed = bytes.trim_ascii();
    let json_candidate = matches!(trimmed.first(), Some(b'{' | b'[' | b't' | b'f' | b'-' | b'0'..=b'9'));
    if json_candidate && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
        return Format::Json;
    }
    if is_text(bytes) { Format::Text } else { Format::Binary }
}

/// UTF-8 without control characters other than tab, line feed and carriage return: what reads
/// as text. Other bytes read back as base64, which is what binary data looks like to people.
fn is_text(bytes: &[u8]) -> bool {
    !bytes.iter().any(|&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r') || b == 0x7f)
        && std::str::from_utf8(bytes).is_ok()
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

/// Builds the stored batch for one partition's share of a REST or WebSocket produce request.
#[derive(Debug)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    count: u32,
    base_timestamp: i64,
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
        BatchBuilder { buf, count: 0, base_timestamp: 0, max_timestamp: 0 }
    }

    /// Appends a record; returns its position in the batch.
    /// Callers bound sizes (each below 2^31) and timestamps (below 2^63) beforehand.
    pub fn push(&mut self, record: &NewRecord<'_>, timestamp: u64) -> u32 {
        let timestamp = timestamp.min(i64::MAX as u64) as i64;
        if self.count == 0 {
            self.base_timestamp = timestamp;
        }
        let ts_delta = timestamp.saturating_sub(self.base_timestamp);
        let offset_delta = i64::from(self.count);
        let header_form = uniform_form(&record.headers);
        let attributes = form_bits(record.key.as_ref())
            | (form_bits(record.value.as_ref()) << VALUE_FORM_SHIFT)
            | (header_form << HEADER_FORM_SHIFT);
        let mut body = 1 + varint_len(ts_delta) + varint_len(offset_delta);
        body += blob_len(record.key.as_ref()) + blob_len(record.value.as_ref());
        body += varint_len(record.headers.len() as i64);
        for h in &record.headers {
            body += varint_len(h.name.len() as i64) + h.name.len() + blob_len(h.value.as_ref());
        }
        put_varint(&mut self.buf, body as i64);
        self.buf.push(attributes);
        put_varint(&mut self.buf, ts_delta);
        put_varint(&mut self.buf, offset_delta);
        put_blob(&mut self.buf, record.key.as_ref());
        put_blob(&mut self.buf, record.value.as_ref());
        put_varint(&mut self.buf, record.headers.len() as i64);
        for h in &record.headers {
            put_varint(&mut self.buf, h.name.len() as i64);
            self.buf.extend_from_slice(h.name.as_bytes());
            put_blob(&mut self.buf, h.value.as_ref());
        }
        self.max_timestamp = self.max_timestamp.max(timestamp as u64);
        self.count += 1;
        self.count - 1
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn finish(mut self) -> EncodedBatch {
        let len = self.buf.len();
        let b = &mut self.buf;
        b[at::BASE_OFFSET..at::LENGTH].copy_from_slice(&0i64.to_be_bytes());
        b[at::LENGTH..at::LEADER_EPOCH].copy_from_slice(&((len - 12) as i32).to_be_bytes());
        b[at::LEADER_EPOCH..at::MAGIC].copy_from_slice(&0i32.to_be_bytes());
        b[at::MAGIC] = MAGIC;
        b[at::ATTRIBUTES..at::LAST_OFFSET_DELTA].copy_from_slice(&0i16.to_be_bytes());
        let last_delta = self.count.saturating_sub(1) as i32;
        b[at::LAST_OFFSET_DELTA..at::BASE_TIMESTAMP].copy_from_slice(&last_delta.to_be_bytes());
        b[at::BASE_TIMESTAMP..at::MAX_TIMESTAMP].copy_from_slice(&self.base_timestamp.to_be_bytes());
        b[at::MAX_TIMESTAMP..at::PRODUCER_ID].copy_from_slice(&(self.max_timestamp as i64).to_be_bytes());
        b[at::PRODUCER_ID..at::PRODUCER_EPOCH].copy_from_slice(&(-1i64).to_be_bytes());
        b[at::PRODUCER_EPOCH..at::BASE_SEQUENCE].copy_from_slice(&(-1i16).to_be_bytes());
        b[at::BASE_SEQUENCE..at::COUNT].copy_from_slice(&(-1i32).to_be_bytes());
        b[at::COUNT..HEADER_LEN].copy_from_slice(&(self.count as i32).to_be_bytes());
        let crc = crc32c::crc32c(&b[at::ATTRIBUTES..]);
        b[at::CRC..at::ATTRIBUTES].copy_from_slice(&crc.to_be_bytes());
        EncodedBatch { bytes: self.buf, count: self.count, max_timestamp: self.max_timestamp, producer: None }
    }
}

/// The form bits of one byte string.
fn form_bits(blob: Option<&Blob<'_>>) -> u8 {
    blob.map_or(0, |b| b.format.tag())
}

/// The one form every non-null header value shares, or 0 when they differ (read back detected).
fn uniform_form(headers: &[Header<'_>]) -> u8 {
    let mut forms = headers.iter().filter_map(|h| h.value.as_ref()).map(|b| b.format.tag());
    match forms.next() {
        Some(first) if forms.all(|f| f == first) => first,
        _ => 0,
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn varint_len(v: i64) -> usize {
    let z = zigzag(v);
    (64 - (z | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(buf: &mut Vec<u8>, v: i64) {
    let mut z = zigzag(v);
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

fn blob_len(blob: Option<&Blob<'_>>) -> usize {
    match blob {
        None => 1,
        Some(b) => varint_len(b.bytes.len() as i64) + b.bytes.len(),
    }
}

fn put_blob(buf: &mut Vec<u8>, blob: Option<&Blob<'_>>) {
    match blob {
        None => put_varint(buf, -1),
        Some(b) => {
            put_varint(buf, b.bytes.len() as i64);
            buf.extend_from_slice(&b.bytes);
        }
    }
}

/// Sets the base offset of a stored batch (outside the CRC): the writer does it when it
/// assigns offsets.
pub fn set_base_offset(batch: &mut [u8], base: u64) {
    if let Some(field) = batch.get_mut(at::BASE_OFFSET..at::LENGTH) {
        field.copy_from_slice(&(base as i64).to_be_bytes());
    }
}

/// A finished batch, ready to be stored.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    pub bytes: Vec<u8>,
    pub count: u32,
    pub max_timestamp: u64,
    /// The idempotent producer that sent it and the sequences it spans (Kafka producers only).
    pub producer: Option<ProducerSeq>,
}

/// Who sent an idempotent batch and which sequence numbers its records carry: the writer
/// checks them against the last batches it stored from that producer on that partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerSeq {
    pub id: i64,
    pub epoch: i16,
    /// The first record's sequence number.
    pub first: i32,
    /// The last record's: `first + count - 1`, wrapping past `i32::MAX` to 0 as Kafka's do.
    pub last: i32,
}

impl ProducerSeq {
    /// The sequence number that follows `seq` (Kafka wraps from `i32::MAX` to 0).
    pub fn next(seq: i32) -> i32 {
        if seq == i32::MAX { 0 } else { seq + 1 }
    }
}

/// A record read back from a stored batch, borrowing the batch's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord<'a> {
    pub timestamp: u64,
    pub key: Option<Blob<'a>>,
    pub value: Option<Blob<'a>>,
    pub headers: Vec<Header<'a>>,
}

/// What the writer and the index need of a stored batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// Offsets the batch spans (`lastOffsetDelta + 1`).
    pub count: u32,
    pub max_timestamp: u64,
}

/// The header fields of a v2 batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Reads the header of a batch, checking its length and magic (not its CRC).
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, Error> {
        if bytes.len() < HEADER_LEN {
            return Err(Error::Corrupt(format!("batch of {} bytes is shorter than its header", bytes.len())));
        }
        if bytes[at::MAGIC] != MAGIC {
            return Err(Error::Corrupt(format!("batch magic {} is not 2", bytes[at::MAGIC])));
        }
        let length = be_i32(bytes, at::LENGTH);
        if length < 0 || length as usize != bytes.len() - 12 {
            return Err(Error::Corrupt(format!("batch length {length} does not match its {} bytes", bytes.len())));
        }
        Ok(BatchHeader {
            base_offset: be_i64(bytes, at::BASE_OFFSET),
            attributes: be_i16(bytes, at::ATTRIBUTES),
            last_offset_delta: be_i32(bytes, at::LAST_OFFSET_DELTA),
            base_timestamp: be_i64(bytes, at::BASE_TIMESTAMP),
            max_timestamp: be_i64(bytes, at::MAX_TIMESTAMP),
            producer_id: be_i64(bytes, at::PRODUCER_ID),
            producer_epoch: be_i16(bytes, at::PRODUCER_EPOCH),
            base_sequence: be_i32(bytes, at::BASE_SEQUENCE),
            record_count: be_i32(bytes, at::COUNT),
        })
    }

    pub fn compression(&self) -> Result<Compression, Error> {
        Compression::from_attributes(self.attributes & ATTR_COMPRESSION)
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// Reads the offsets a stored batch spans and its largest timestamp.
pub fn batch_info(bytes: &[u8]) -> Result<BatchInfo, Error> {
    let h = BatchHeader::parse(bytes)?;
    if h.last_offset_delta < 0 {
        return Err(Error::Corrupt(format!("batch lastOffsetDelta {} is negative", h.last_offset_delta)));
    }
    Ok(BatchInfo { count: h.last_offset_delta as u32 + 1, max_timestamp: h.max_timestamp.max(0) as u64 })
}

/// Why a batch sent by a Kafka producer is refused (each maps to one of Kafka's error codes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("corrupt batch: {0}")]
    Corrupt(String),
    #[error("batch of {size} bytes exceeds the topic's max_message_bytes ({max})")]
    TooLarge { size: usize, max: usize },
    #[error("unsupported compression codec {0}")]
    UnsupportedCompression(i16),
    #[error("transactional and control batches are not supported")]
    Transactional,
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    #[error("invalid timestamp {0}")]
    InvalidTimestamp(i64),
    #[error("out of order sequence number: expected {expected}, received {received}")]
    OutOfOrderSequence { expected: i32, received: i32 },
    #[error("producer epoch {received} is older than the current epoch {current}")]
    InvalidProducerEpoch { current: i16, received: i16 },
}

/// A batch a Kafka producer sent, checked and ready to store as sent.
#[derive(Debug, Clone)]
pub struct CheckedBatch {
    pub header: BatchHeader,
    pub batch: EncodedBatch,
}

/// Checks a batch a Kafka producer sent before it is stored as sent: length, magic, CRC,
/// attributes (no transactions or control batches), record count against `lastOffsetDelta`,
/// and every record's framing and offset delta (a compressed batch is inflated to check them,
/// bounded by [`MAX_INFLATED_BYTES`], then stored as sent), so a reader never meets a record
/// it cannot decode.
pub fn check_produced(bytes: Vec<u8>, max_batch_bytes: usize) -> Result<CheckedBatch, BatchError> {
    if bytes.len() > max_batch_bytes {
        return Err(BatchError::TooLarge { size: bytes.len(), max: max_batch_bytes });
    }
    let header = BatchHeader::parse(&bytes).map_err(|e| BatchError::Corrupt(e.to_string()))?;
    let crc = u32::from_be_bytes([bytes[at::CRC], bytes[at::CRC + 1], bytes[at::CRC + 2], bytes[at::CRC + 3]]);
    if crc32c::crc32c(&bytes[at::ATTRIBUTES..]) != crc {
        return Err(BatchError::Corrupt("CRC mismatch".into()));
    }
    if header.is_transactional() || header.is_control() {
        return Err(BatchError::Transactional);
    }
    let compression =
        header.compression().map_err(|_| BatchError::UnsupportedCompression(header.attributes & ATTR_COMPRESSION))?;
    if header.record_count <= 0 || header.last_offset_delta != header.record_count - 1 {
        return Err(BatchError::InvalidRecord(format!(
            "record count {} does not match lastOffsetDelta {}",
            header.record_count, header.last_offset_delta
        )));
    }
    if header.base_timestamp < 0 && header.base_timestamp != -1 {
        return Err(BatchError::InvalidTimestamp(header.base_timestamp));
    }
    // Every record is walked, inflated first when compressed (bounded), as Kafka's broker
    // validates: a batch stored here can always be read back over REST and WebSocket.
    let max_timestamp = match compression {
        Compression::None => check_records(&bytes[HEADER_LEN..], &header)?,
        codec => {
            let inflated = compression::inflate(codec, &bytes[HEADER_LEN..], MAX_INFLATED_BYTES)
                .map_err(|e| BatchError::Corrupt(format!("the compressed records do not inflate: {e}")))?;
            check_records(&inflated, &header)?
        }
    };
    let count = header.record_count as u32;
    let max_timestamp = max_timestamp.max(0) as u64;
    let producer = producer_seq(&header)?;
    Ok(CheckedBatch { header, batch: EncodedBatch { bytes, count, max_timestamp, producer } })
}

/// Walks a batch's records: each one's framing, its offset delta (0, 1, 2, …) and its
/// timestamp; nothing may follow the last. Answers the largest timestamp.
fn check_records(data: &[u8], header: &BatchHeader) -> Result<i64, BatchError> {
    let mut r = Reader { data, pos: 0 };
    let mut max = i64::MIN;
    for i in 0..header.record_count {
        let (delta, ts) = r.skip_record(header.base_timestamp).map_err(|e| BatchError::InvalidRecord(e.to_string()))?;
        if delta != i64::from(i) {
            return Err(BatchError::InvalidRecord(format!("record {i} has offset delta {delta}")));
        }
        if ts < 0 {
            return Err(BatchError::InvalidTimestamp(ts));
        }
        max = max.max(ts);
    }
    if r.pos != r.data.len() {
        return Err(BatchError::InvalidRecord(format!("{} bytes follow the last record", r.data.len() - r.pos)));
    }
    Ok(max)
}

/// The producer fields of a checked batch: none for a plain producer (id -1), a
/// well-formed triple for an idempotent one.
fn producer_seq(h: &BatchHeader) -> Result<Option<ProducerSeq>, BatchError> {
    if h.producer_id < 0 {
        return Ok(None);
    }
    if h.producer_epoch < 0 || h.base_sequence < 0 {
        return Err(BatchError::InvalidRecord(format!(
            "producer id {} with epoch {} and base sequence {}",
            h.producer_id, h.producer_epoch, h.base_sequence
        )));
    }
    // lastOffsetDelta was checked against the record count (at least 1) by the caller.
    let last = (i64::from(h.base_sequence) + i64::from(h.last_offset_delta)) % (i64::from(i32::MAX) + 1);
    Ok(Some(ProducerSeq { id: h.producer_id, epoch: h.producer_epoch, first: h.base_sequence, last: last as i32 }))
}

/// A stored batch opened for reading: its header and its records' bytes (inflated when the
/// batch is compressed).
#[derive(Debug)]
pub struct Decoded<'a> {
    pub header: BatchHeader,
    records: Cow<'a, [u8]>,
}

impl Decoded<'_> {
    /// The records with their offset deltas, in offset order.
    pub fn iter(&self) -> BatchIter<'_> {
        BatchIter::new(&self.header, &self.records)
    }
}

/// A batch's header, its records' bytes as stored, and how they are compressed.
fn open(bytes: &[u8]) -> Result<(BatchHeader, &[u8], Compression), Error> {
    let header = BatchHeader::parse(bytes)?;
    let compression = header.compression()?;
    Ok((header, &bytes[HEADER_LEN..], compression))
}

/// Opens a stored batch (inflating it if it is compressed, up to [`MAX_INFLATED_BYTES`]).
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, Error> {
    let (header, body, codec) = open(bytes)?;
    let records = match codec {
        Compression::None => Cow::Borrowed(body),
        codec => Cow::Owned(compression::inflate(codec, body, MAX_INFLATED_BYTES)?),
    };
    Ok(Decoded { header, records })
}

/// Where a reader keeps a compressed batch's inflated records, so the records it returns can
/// borrow them: [`decode_into`] inflates into it once.
pub type Inflated = std::sync::OnceLock<Result<Vec<u8>, String>>;

/// Opens a stored batch like [`decode`], keeping inflated records in `cell` (which must
/// belong to this batch) so they outlive the call.
pub fn decode_into<'a>(bytes: &'a [u8], cell: &'a Inflated) -> Result<BatchIter<'a>, Error> {
    let (header, body, codec) = open(bytes)?;
    let records = match codec {
        Compression::None => body,
        codec => cell
            .get_or_init(|| compression::inflate(codec, body, MAX_INFLATED_BYTES).map_err(|e| e.to_string()))
            .as_deref()
            .map_err(|e| Error::Corrupt(e.clone()))?,
    };
    Ok(BatchIter::new(&header, records))
}

#[derive(Debug)]
pub struct BatchIter<'a> {
    r: Reader<'a>,
    remaining: u32,
    base_timestamp: i64,
}

impl<'a> BatchIter<'a> {
    fn new(header: &BatchHeader, records: &'a [u8]) -> BatchIter<'a> {
        BatchIter {
            r: Reader { data: records, pos: 0 },
            remaining: header.record_count.max(0) as u32,
            base_timestamp: header.base_timestamp,
        }
    }
}

impl<'a> Iterator for BatchIter<'a> {
    /// (offset delta, record)
    type Item = Result<(u64, StoredRecord<'a>), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let rec = self.r.record(self.base_timestamp);
        if rec.is_err() {
            self.remaining = 0;
        }
        Some(rec)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining as usize))
    }
}

/// A bounds-checked cursor over a batch's bytes (the old format's reader in `v1` shares it).
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
            None => Err(Error::Corrupt(format!(
                "record truncated: wanted {n} bytes at {} of {}",
                self.pos,
                self.data.len()
            ))),
        }
    }

    fn varint(&mut self) -> Result<i64, Error> {
        let mut z: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = self.take(1)?[0];
            z |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(Error::Corrupt("varint longer than 10 bytes".into()))
    }

    /// A length-prefixed byte string: `None` for -1.
    fn bytes(&mut self) -> Result<Option<&'a [u8]>, Error> {
        match self.varint()? {
            -1 => Ok(None),
            n if n >= 0 => Ok(Some(self.take(usize::try_from(n).unwrap_or(usize::MAX))?)),
            n => Err(Error::Corrupt(format!("negative length {n}"))),
        }
    }

    /// One record's frame: its length, and a reader over exactly its body.
    fn frame(&mut self) -> Result<Reader<'a>, Error> {
        let len = self.varint()?;
        if len < 0 {
            return Err(Error::Corrupt(format!("negative record length {len}")));
        }
        let body = self.take(usize::try_from(len).unwrap_or(usize::MAX))?;
        Ok(Reader { data: body, pos: 0 })
    }

    /// Walks one record without building it: returns (offset delta, timestamp).
    fn skip_record(&mut self, base_timestamp: i64) -> Result<(i64, i64), Error> {
        let mut r = self.frame()?;
        r.take(1)?;
        let ts = base_timestamp.saturating_add(r.varint()?);
        let delta = r.varint()?;
        r.bytes()?;
        r.bytes()?;
        let n = r.varint()?;
        if n < 0 {
            return Err(Error::Corrupt(format!("negative header count {n}")));
        }
        for _ in 0..n {
            let name = r.bytes()?.ok_or_else(|| Error::Corrupt("null header name".into()))?;
            std::str::from_utf8(name).map_err(|_| Error::Corrupt("header name is not UTF-8".into()))?;
            r.bytes()?;
        }
        if r.pos != r.data.len() {
            return Err(Error::Corrupt("record length does not match its fields".into()));
        }
        Ok((delta, ts))
    }

    fn record(&mut self, base_timestamp: i64) -> Result<(u64, StoredRecord<'a>), Error> {
        let mut r = self.frame()?;
        let attributes = r.take(1)?[0];
        let timestamp = base_timestamp.saturating_add(r.varint()?).max(0) as u64;
        let delta = r.varint()?;
        let delta = u64::try_from(delta).map_err(|_| Error::Corrupt(format!("negative offset delta {delta}")))?;
        let blob = |bytes: Option<&'a [u8]>, tag: u8| {
            bytes.map(|b| Blob { format: Format::from_tag(tag & 3, b), bytes: Cow::Borrowed(b) })
        };
        let key = blob(r.bytes()?, attributes);
        let value = blob(r.bytes()?, attributes >> VALUE_FORM_SHIFT);
        let n = r.varint()?;
        let n = usize::try_from(n).map_err(|_| Error::Corrupt(format!("negative header count {n}")))?;
        // Each header takes at least two bytes: the claimed count is bounded by what is left.
        let mut headers = Vec::with_capacity(n.min(r.data.len().saturating_sub(r.pos) / 2));
        for _ in 0..n {
            let name = r.bytes()?.ok_or_else(|| Error::Corrupt("null header name".into()))?;
            let name = std::str::from_utf8(name).map_err(|_| Error::Corrupt("header name is not UTF-8".into()))?;
            let value = r.bytes()?;
            let tag = (attributes >> HEADER_FORM_SHIFT) & 3;
            let value = value.map(|b| Blob {
                // Header values are text unless binary: detection never calls them JSON.
                format: match tag {
                    0 if is_text(b) => Format::Text,
                    0 => Format::Binary,
                    t => Format::from_tag(t, b),
                },
                bytes: Cow::Borrowed(b),
            });
            headers.push(Header { name: Cow::Borrowed(name), value });
        }
        if r.pos != r.data.len() {
            return Err(Error::Corrupt("record length does not match its fields".into()));
        }
        Ok((delta, StoredRecord { timestamp, key, value, headers }))
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

    fn records(bytes: &[u8]) -> Vec<(u64, StoredRecord<'static>)> {
        let d = decode(bytes).unwrap();
        d.iter()
            .map(|r| {
                let (delta, r) = r.unwrap();
                let own = |b: Option<Blob<'_>>| b.map(|b| Blob::new(b.format, b.bytes.into_owned()));
                let headers = r
                    .headers
                    .into_iter()
                    .map(|h| Header { name: Cow::Owned(h.name.into_owned()), value: own(h.value) })
                    .collect();
                (delta, StoredRecord { timestamp: r.timestamp, key: own(r.key), value: own(r.value), headers })
            })
            .collect()
    }

    #[test]
    fn round_trip_keeps_bytes_forms_and_order() {
        let mut b = BatchBuilder::new();
        for i in 0..5u8 {
            assert_eq!(b.push(&sample(i), 1000 + i as u64), i as u32);
        }
        let mut enc = b.finish();
        set_base_offset(&mut enc.bytes, 42);
        assert_eq!(enc.count, 5);
        assert_eq!(enc.max_timestamp, 1004);
        assert_eq!(batch_info(&enc.bytes).unwrap(), BatchInfo { count: 5, max_timestamp: 1004 });
        assert_eq!(BatchHeader::parse(&enc.bytes).unwrap().base_offset, 42);
        let recs = records(&enc.bytes);
        assert_eq!(recs.len(), 5);
        for (i, (delta, r)) in recs.iter().enumerate() {
            let want = sample(i as u8);
            assert_eq!(*delta, i as u64);
            assert_eq!(r.timestamp, 1000 + i as u64);
            assert_eq!(r.key, want.key);
            assert_eq!(r.value, want.value);
            assert_eq!(r.headers, want.headers);
        }
        // What gregor stores is what a Kafka producer could have sent: it passes the same check.
        let checked = check_produced(enc.bytes.clone(), 1 << 20).unwrap();
        assert_eq!(checked.batch.count, 5);
        assert_eq!(checked.batch.max_timestamp, 1004);
    }

    #[test]
    fn the_crate_decodes_what_the_builder_encodes() {
        let mut b = BatchBuilder::new();
        for i in 0..3u8 {
            b.push(&sample(i), 7 + i as u64);
        }
        let enc = b.finish();
        let mut buf = bytes::Bytes::from(enc.bytes);
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).unwrap();
        assert_eq!(set.records.len(), 3);
        assert_eq!(set.records[1].offset, 1);
        assert_eq!(set.records[2].timestamp, 9);
        assert_eq!(set.records[0].value.as_deref(), Some(&br#"{"n": 1}"#[..]));
        assert_eq!(set.records[0].key.as_deref(), Some(&[0u8, 255, 0][..]));
    }

    #[test]
    fn forms_leave_the_bits_clients_read_clear() {
        let mut b = BatchBuilder::new();
        let text = |s: &'static str| Some(Blob::new(Format::Json, s.as_bytes()));
        let rec = NewRecord {
            key: text("1"),
            value: text("2"),
            headers: vec![Header { name: "h".into(), value: text("3") }],
            timestamp: None,
            partition: None,
        };
        b.push(&rec, 5);
        let enc = b.finish();
        // The record's attributes byte follows its one-byte length varint.
        let attributes = enc.bytes[HEADER_LEN + 1];
        assert_eq!(attributes & 0x0c, 0, "bits 2-3 clear: {attributes:#010b}");
        assert_eq!(attributes, 0b1111_0011);
    }

    #[test]
    fn undeclared_forms_are_detected_so_bytes_read_back_exactly() {
        assert_eq!(detect(br#"{"a":1}"#), Format::Json);
        assert_eq!(detect(b" [1, 2] "), Format::Json);
        assert_eq!(detect(b"42"), Format::Json);
        assert_eq!(detect(b"true"), Format::Json);
        // A JSON string or null would read back as other bytes: they are text.
        assert_eq!(detect(br#""quoted""#), Format::Text);
        assert_eq!(detect(b"null"), Format::Text);
        assert_eq!(detect(b"hello"), Format::Text);
        assert_eq!(detect(b"{not json"), Format::Text);
        assert_eq!(detect(&[0xff, 0, 1]), Format::Binary);
        assert_eq!(detect(&[0, 1]), Format::Binary, "valid UTF-8, but control characters");
        assert_eq!(detect(b"two\tcolumns\r\n"), Format::Text);
    }

    #[test]
    fn varints_read_back_what_was_written_and_bad_ones_are_errors() {
        let values = [0, 1, -1, 63, -64, 64, -65, 8191, 8192, i64::from(i32::MAX), i64::MIN, i64::MAX, -i64::MAX];
        let mut buf = Vec::new();
        for v in values {
            put_varint(&mut buf, v);
        }
        let mut r = Reader { data: &buf, pos: 0 };
        for v in values {
            assert_eq!(r.varint().unwrap(), v);
        }
        assert_eq!(r.pos, buf.len());
        assert!(r.varint().is_err(), "nothing left");
        // Cut inside the last varint (-i64::MAX: ten bytes).
        let mut r = Reader { data: &buf[..buf.len() - 1], pos: buf.len() - 10 };
        assert!(r.varint().unwrap_err().to_string().contains("truncated"));
        // Eleven continuation bytes.
        let mut r = Reader { data: &[0x80; 11], pos: 0 };
        assert!(r.varint().unwrap_err().to_string().contains("longer than 10 bytes"));
    }

    #[test]
    fn truncated_or_altered_batches_are_errors_not_panics() {
        let mut b = BatchBuilder::new();
        b.push(&sample(0), 1);
        let enc = b.finish();
        for cut in 0..enc.bytes.len() {
            let failed = match decode(&enc.bytes[..cut]) {
                Ok(d) => d.iter().any(|r| r.is_err()),
                Err(_) => true,
            };
            assert!(failed, "cut at {cut} should fail");
            assert!(check_produced(enc.bytes[..cut].to_vec(), 1 << 20).is_err());
        }
        for i in at::ATTRIBUTES..enc.bytes.len() {
            let mut bad = enc.bytes.clone();
            bad[i] ^= 0x40;
            assert_eq!(
                check_produced(bad, 1 << 20).unwrap_err(),
                BatchError::Corrupt("CRC mismatch".into()),
                "flipped byte {i}"
            );
        }
    }

    #[test]
    fn produced_batches_are_bounded_and_non_transactional() {
        let mut b = BatchBuilder::new();
        b.push(&sample(1), 1);
        let enc = b.finish();
        let len = enc.bytes.len();
        assert_eq!(
            check_produced(enc.bytes.clone(), len - 1).unwrap_err(),
            BatchError::TooLarge { size: len, max: len - 1 }
        );
        let mut txn = enc.bytes.clone();
        txn[at::ATTRIBUTES + 1] |= 0x10;
        let crc = crc32c::crc32c(&txn[at::ATTRIBUTES..]);
        txn[at::CRC..at::ATTRIBUTES].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(check_produced(txn, 1 << 20).unwrap_err(), BatchError::Transactional);
    }

    /// A batch whose records are `body` compressed with gzip (attributes bit 0), its length
    /// and CRC made right.
    fn gzipped(enc: &EncodedBatch, body: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(body).unwrap();
        let mut out = enc.bytes[..HEADER_LEN].to_vec();
        out.extend(gz.finish().unwrap());
        out[at::ATTRIBUTES + 1] |= 1;
        let len = (out.len() - 12) as i32;
        out[at::LENGTH..at::LEADER_EPOCH].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&out[at::ATTRIBUTES..]);
        out[at::CRC..at::ATTRIBUTES].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// A compressed batch is inflated and walked before it is stored: a valid CRC over
    /// contents that do not inflate, or inflate to broken records, is refused.
    #[test]
    fn compressed_batches_are_checked_inside() {
        let mut b = BatchBuilder::new();
        b.push(&sample(0), 1);
        b.push(&sample(1), 2);
        let enc = b.finish();
        let records = &enc.bytes[HEADER_LEN..];
        let good = check_produced(gzipped(&enc, records), 1 << 20).unwrap();
        assert_eq!((good.batch.count, good.batch.max_timestamp), (2, 2));
        let mut garbage = gzipped(&enc, records);
        let n = garbage.len();
        garbage[HEADER_LEN..n].fill(0x5a);
        let crc = crc32c::crc32c(&garbage[at::ATTRIBUTES..]);
        garbage[at::CRC..at::ATTRIBUTES].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(check_produced(garbage, 1 << 20).unwrap_err(), BatchError::Corrupt(_)));
        let short = gzipped(&enc, &records[..records.len() - 1]);
        assert!(matches!(check_produced(short, 1 << 20).unwrap_err(), BatchError::InvalidRecord(_)));
        let longer = gzipped(&enc, &[records, &[0u8][..]].concat());
        assert!(matches!(check_produced(longer, 1 << 20).unwrap_err(), BatchError::InvalidRecord(_)));
    }
}
