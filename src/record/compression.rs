//! Inflating the compressed batches Kafka producers send (gregor never compresses: Fetch sends
//! stored bytes, and REST/WebSocket batches are stored plain). Every codec is bounded: a batch
//! that would inflate past the limit is an error, never an allocation of what it claims.

use std::io::Read;

use crate::error::Error;

/// A batch's compression codec (attribute bits 0-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn from_attributes(bits: i16) -> Result<Compression, Error> {
        Ok(match bits {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => return Err(Error::Corrupt(format!("unknown compression codec {other}"))),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// The framing the Java client (xerial snappy-java) puts around snappy blocks.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];

/// Inflates `data` compressed with `codec`, refusing to produce more than `limit` bytes.
pub fn inflate(codec: Compression, data: &[u8], limit: usize) -> Result<Vec<u8>, Error> {
    let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(format!("{} batch does not inflate: {e}", codec.name()));
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => read_bounded(flate2::read::MultiGzDecoder::new(data), limit).map_err(|e| corrupt(&e)),
        Compression::Lz4 => read_bounded(lz4_flex::frame::FrameDecoder::new(data), limit).map_err(|e| corrupt(&e)),
        Compression::Zstd => {
            let decoder = ruzstd::decoding::StreamingDecoder::new(data).map_err(|e| corrupt(&e))?;
            read_bounded(decoder, limit).map_err(|e| corrupt(&e))
        }
        Compression::Snappy => {
            let mut out = Vec::new();
            if let Some(mut rest) = data.strip_prefix(&XERIAL_MAGIC[..]) {
                // Version and compatible-version words, then (length, raw block)*.
                rest = rest.get(8..).ok_or_else(|| corrupt(&"truncated xerial header"))?;
                while !rest.is_empty() {
                    let (len, tail) = rest.split_at_checked(4).ok_or_else(|| corrupt(&"truncated block length"))?;
                    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
                    let (block, tail) = tail.split_at_checked(len).ok_or_else(|| corrupt(&"truncated block"))?;
                    snappy_block(block, &mut out, limit).map_err(|e| corrupt(&e))?;
                    rest = tail;
                }
            } else {
                snappy_block(data, &mut out, limit).map_err(|e| corrupt(&e))?;
            }
            Ok(out)
        }
    }
}

/// Appends one raw snappy block, after checking the length it claims against the limit.
fn snappy_block(block: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), String> {
    let len = snap::raw::decompress_len(block).map_err(|e| e.to_string())?;
    if out.len() + len > limit {
        return Err(format!("inflates past {limit} bytes"));
    }
    let start = out.len();
    out.resize(start + len, 0);
    let n = snap::raw::Decoder::new().decompress(block, &mut out[start..]).map_err(|e| e.to_string())?;
    out.truncate(start + n);
    Ok(())
}

fn read_bounded(reader: impl Read, limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    reader.take(limit as u64 + 1).read_to_end(&mut out).map_err(|e| e.to_string())?;
    if out.len() > limit {
        return Err(format!("inflates past {limit} bytes"));
    }
    Ok(out)
}
