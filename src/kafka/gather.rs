//! Encoding an answer without copying the record sets it carries.
//!
//! A Fetch answer is mostly stored batches, already in memory as [`Bytes`]. The codec crate
//! encodes a message into a buffer it writes to, so it would copy each record set into the
//! answer. [`Gather`] is that buffer with one difference: when the encoder writes a slice that
//! *is* one of the record sets it was given (the same address and length), the record set is
//! kept as a part of the answer by reference and the encoder's output continues after it.
//! The answer goes out as its parts in order, so the bytes on the wire are exactly the
//! encoder's. The crate still writes every length prefix.

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;

/// Record sets shorter than this are copied: a part of their own would cost more.
const SHARE_FROM_BYTES: usize = 16 * 1024;

/// An encoder's buffer that keeps the given record sets by reference (see the module).
pub(crate) struct Gather {
    /// Everything the encoder wrote except the shared record sets.
    head: BytesMut,
    /// The record sets that may be shared, each at least [`SHARE_FROM_BYTES`] long.
    shareable: Vec<Bytes>,
    /// The shared record sets, each with the length of `head` where it belongs.
    shared: Vec<(usize, Bytes)>,
}

impl Gather {
    /// A buffer for a message of `size` bytes that may share the record sets in `shareable`
    /// (room is reserved for the rest of the message).
    pub(crate) fn new(size: usize, shareable: Vec<Bytes>) -> Gather {
        let shareable: Vec<Bytes> = shareable.into_iter().filter(|b| b.len() >= SHARE_FROM_BYTES).collect();
        let capacity = size.saturating_sub(shareable.iter().map(Bytes::len).sum());
        Gather { head: BytesMut::with_capacity(capacity), shareable, shared: Vec::new() }
    }

    /// The encoded message as parts to be written one after another.
    pub(crate) fn into_parts(mut self) -> Vec<Bytes> {
        let mut parts = Vec::with_capacity(2 * self.shared.len() + 1);
        let mut taken = 0;
        for (at, records) in self.shared {
            parts.push(self.head.split_to(at - taken).freeze());
            parts.push(records);
            taken = at;
        }
        parts.push(self.head.freeze());
        parts.retain(|p| !p.is_empty());
        parts
    }
}

// SAFETY: every method hands the call to the `BytesMut` that holds the encoder's bytes,
// whose implementation upholds the trait's contract; `put_slice` either does the same or
// records a shared slice without touching the buffer.
#[allow(unsafe_code)]
unsafe impl BufMut for Gather {
    fn remaining_mut(&self) -> usize {
        self.head.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller's guarantee (`cnt` bytes of `chunk_mut` initialised) is the same
        // one `BytesMut::advance_mut` asks for: `chunk_mut` is the head's.
        unsafe { self.head.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.head.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= SHARE_FROM_BYTES {
            let same = |b: &&Bytes| b.as_ptr() == src.as_ptr() && b.len() == src.len();
            if let Some(records) = self.shareable.iter().find(same) {
                self.shared.push((self.head.len(), records.clone()));
                return;
            }
        }
        self.head.put_slice(src);
    }
}

/// Offsets are positions in the head: the codec's messages (unlike its record encoder) take
/// no gaps, and a gap within the head stays valid around a shared record set.
impl ByteBufMut for Gather {
    fn offset(&self) -> usize {
        self.head.len()
    }

    fn seek(&mut self, offset: usize) {
        self.head.resize(offset, 0);
    }

    fn range(&mut self, r: std::ops::Range<usize>) -> &mut [u8] {
        self.head.range(r)
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::{FetchResponse, fetch_response};
    use kafka_protocol::protocol::Encodable;

    use super::*;

    fn answer(records: &[Bytes]) -> FetchResponse {
        let partitions = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                fetch_response::PartitionData::default()
                    .with_partition_index(i as i32)
                    .with_high_watermark(7)
                    .with_records(Some(r.clone()))
            })
            .collect();
        FetchResponse::default()
            .with_responses(vec![fetch_response::FetchableTopicResponse::default().with_partitions(partitions)])
    }

    /// The parts, written one after another, are the bytes the crate's own encoding gives, for
    /// flexible and older versions; the large record sets are shared, not copied.
    #[test]
    fn the_parts_are_the_encoding_and_large_record_sets_are_shared() {
        let large = |b: u8| Bytes::from(vec![b; SHARE_FROM_BYTES + usize::from(b)]);
        let records = vec![large(1), Bytes::from_static(b"small"), large(2), Bytes::new(), large(3)];
        let message = answer(&records);
        for version in [4, 11, 12] {
            let mut plain = BytesMut::new();
            message.encode(&mut plain, version).unwrap();
            let mut gather = Gather::new(64, records.clone());
            message.encode(&mut gather, version).unwrap();
            let parts = gather.into_parts();
            assert_eq!(parts.concat(), plain.to_vec(), "version {version}");
            let shared = parts.iter().filter(|p| records.iter().any(|r| r.as_ptr() == p.as_ptr())).count();
            assert_eq!(shared, 3, "version {version}: the three large record sets are parts of their own");
        }
    }

    /// A record set equal to a shareable one but elsewhere in memory is copied: only the
    /// address identifies a shared set.
    #[test]
    fn only_the_given_bytes_are_shared() {
        let records = vec![Bytes::from(vec![9u8; SHARE_FROM_BYTES])];
        let copy = vec![Bytes::from(vec![9u8; SHARE_FROM_BYTES])];
        let mut gather = Gather::new(64, copy);
        answer(&records).encode(&mut gather, 12).unwrap();
        assert_eq!(gather.into_parts().len(), 1);
    }
}
