//! The Kafka listener (SPEC §9): Kafka's binary protocol on its own port, on the same
//! service layer as REST and WebSocket, so records, offsets and ACLs are shared.
//!
//! One task per connection reads size-prefixed frames, bounded by `kafka.max_request_bytes`
//! before anything is allocated, decodes each with the `kafka-protocol` crate (vendored with
//! its decoders bounding every claimed length by the bytes left; see vendor/README.md), runs
//! it (`api.rs`) and writes the answer. Requests on one connection are answered in order, as
//! Kafka requires; up to five Produces overlap (the next is checked and queued for the writer
//! while the ones before it are stored), any other request waits for those before it. A frame
//! that does not decode closes its connection only; an API or version gregor does not serve
//! is answered with UNSUPPORTED_VERSION.

mod api;
pub(crate) mod errors;
mod gather;
mod groups;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::service::Service;

pub use api::SUPPORTED;

/// Settings of the Kafka listener (`[kafka]`).
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Where to listen; `None` turns the listener off.
    pub listen: Option<SocketAddr>,
    /// The host and port Metadata tells clients to connect to (default: the bound address).
    pub advertised: Option<(String, u16)>,
    /// The largest request frame accepted (Kafka's `socket.request.max.bytes`).
    pub max_request_bytes: usize,
    /// How long an idempotent producer's state outlives its last batch on a partition
    /// (Kafka's `producer.id.expiration.ms`).
    pub producer_id_expiration: std::time::Duration,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            listen: None,
            advertised: None,
            max_request_bytes: 100 * 1024 * 1024,
            producer_id_expiration: std::time::Duration::from_millis(crate::log::DEFAULT_PRODUCER_EXPIRY_MS),
        }
    }
}

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub service: Service,
    /// Host and port advertised in Metadata and FindCoordinator.
    pub host: String,
    pub port: u16,
    pub max_request_bytes: usize,
}

/// Binds the listener.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections until `stop` is cancelled, then waits for open connections to end
/// (each ends at its next request boundary once `stop` is cancelled).
pub async fn serve(listener: TcpListener, service: Service, settings: KafkaSettings, stop: CancellationToken) {
    let bound = listener.local_addr().ok();
    let (host, port) = match (&settings.advertised, bound) {
        (Some((h, p)), _) => (h.clone(), *p),
        (None, Some(a)) => (a.ip().to_string(), a.port()),
        (None, None) => ("127.0.0.1".to_owned(), 9092),
    };
    let shared = Arc::new(Shared { service, host, port, max_request_bytes: settings.max_request_bytes });
    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (shared, stop) = (shared.clone(), stop.clone());
                    tracker.spawn(async move {
                        if let Err(e) = connection(stream, shared, stop).await {
                            tracing::debug!(%peer, error = %e, "kafka connection closed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "kafka listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Why a connection ended (logged at debug level; the client sees a closed socket).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("request of {size} bytes exceeds kafka.max_request_bytes ({max})")]
    TooLarge { size: i64, max: usize },
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("{0:?} request before SASL authentication")]
    Unauthenticated(kafka_protocol::messages::ApiKey),
}

/// Produce requests a connection has queued for the writer and not yet answered. Kafka's
/// broker runs one request per connection at a time; gregor checks and queues the next
/// Produce while the writer stores (and syncs) the ones before it, answering in order. Five is
/// what an idempotent Kafka producer keeps in flight (`max.in.flight.requests.per.connection`).
const PRODUCES_IN_FLIGHT: usize = 5;

/// An answer frame: its response header and its body's parts.
type Reply = (Bytes, Vec<Bytes>);

/// Splits the stream into request frames (the size prefix removed), refusing a size beyond
/// `kafka.max_request_bytes` before anything is allocated for it.
struct Frames {
    max: usize,
}

impl Decoder for Frames {
    type Item = BytesMut;
    type Error = ConnError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, ConnError> {
        let Some(prefix) = src.get(..4) else { return Ok(None) };
        let size = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        if size < 0 || size as usize > self.max {
            return Err(ConnError::TooLarge { size: size.into(), max: self.max });
        }
        let size = size as usize;
        if src.len() < 4 + size {
            src.reserve(4 + size - src.len());
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(src.split_to(size)))
    }
}

async fn connection(stream: TcpStream, shared: Arc<Shared>, stop: CancellationToken) -> Result<(), ConnError> {
    // Anonymous where credentials are not required; otherwise SASL/PLAIN first.
    let anonymous = shared.service.authenticate(&crate::auth::Credentials::None).await.ok();
    let peer = stream.peer_addr().ok();
    let (rd, wr) = stream.into_split();
    let mut frames = FramedRead::new(rd, Frames { max: shared.max_request_bytes });
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    let mut session = api::Session::new(anonymous, peer);
    // Answers to come, in request order (Produces waiting for the writer, and any answer
    // behind them).
    let mut pending: FuturesOrdered<LaterReply> = FuturesOrdered::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return drain(&mut pending, &mut wr).await,
            Some(reply) = pending.next(), if !pending.is_empty() => send(&mut wr, reply?).await?,
            frame = frames.next(), if pending.len() < PRODUCES_IN_FLIGHT => {
                let frame = match frame {
                    None => return drain(&mut pending, &mut wr).await,
                    Some(frame) => frame?.freeze(),
                };
                // Only Produces overlap: any other request sees every earlier one done (a
                // Fetch or ListOffsets after a Produce on the same connection sees its records).
                if frame.get(..2) != Some(&(ApiKey::Produce as i16).to_be_bytes()[..]) {
                    drain(&mut pending, &mut wr).await?;
                }
                match handle_frame(frame, &shared, &mut session).await? {
                    Handled::Now(None) => {}
                    Handled::Now(Some(reply)) if pending.is_empty() => send(&mut wr, Some(reply)).await?,
                    Handled::Now(Some(reply)) => pending.push_back(Box::pin(std::future::ready(Ok(Some(reply))))),
                    Handled::Later(later) => pending.push_back(later),
                }
                if session.closing {
                    return drain(&mut pending, &mut wr).await;
                }
            }
        }
    }
}

/// An answer the connection writes once its request is done.
type LaterReply = Pin<Box<dyn Future<Output = Result<Option<Reply>, ConnError>> + Send>>;

/// Writes one answer (size prefix, header, body) and flushes it.
async fn send(wr: &mut BufWriter<OwnedWriteHalf>, reply: Option<Reply>) -> Result<(), ConnError> {
    let Some((header, body)) = reply else { return Ok(()) };
    let size = header.len() + body.iter().map(Bytes::len).sum::<usize>();
    wr.write_all(&(size as i32).to_be_bytes()).await?;
    wr.write_all(&header).await?;
    // A part larger than the writer's buffer goes to the socket straight from memory.
    for part in &body {
        wr.write_all(part).await?;
    }
    wr.flush().await?;
    Ok(())
}

/// Waits for every pending answer and writes it, in order.
async fn drain(pending: &mut FuturesOrdered<LaterReply>, wr: &mut BufWriter<OwnedWriteHalf>) -> Result<(), ConnError> {
    while let Some(reply) = pending.next().await {
        send(wr, reply?).await?;
    }
    Ok(())
}

/// What [`handle_frame`] made of a request.
pub(crate) enum Handled {
    /// The answer now (`None`: nothing goes back).
    Now(Option<Reply>),
    /// The answer once the writer has stored what the request queued (`None`: nothing goes
    /// back, Produce with `acks=0`).
    Later(LaterReply),
}

/// Decodes one request frame, runs it, and encodes the answer: its response header and its
/// body's parts, without the size prefix (kept apart so a large body is not copied behind the
/// header). A Produce answers [`Handled::Later`], once its batches are queued for the writer.
pub(crate) async fn handle_frame(
    mut frame: Bytes,
    shared: &Shared,
    session: &mut api::Session,
) -> Result<Handled, ConnError> {
    if frame.remaining() < 8 {
        return Err(ConnError::Malformed(format!("a request header needs 8 bytes, got {}", frame.remaining())));
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    Ok(match api::dispatch(api_key, version, &mut frame, shared, session).await? {
        api::Answer::Later(later) => Handled::Later(Box::pin(async move { Ok(framed(correlation_id, later.await?)) })),
        answer => Handled::Now(framed(correlation_id, answer)),
    })
}

/// The response header for an answer, and the answer's body parts.
fn framed(correlation_id: i32, answer: api::Answer) -> Option<Reply> {
    let api::Answer::Body { body, header_version } = answer else { return None };
    let mut header = BytesMut::with_capacity(5);
    header.put_i32(correlation_id);
    if header_version >= 1 {
        header.put_u8(0); // no tagged fields
    }
    Some((header.freeze(), body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_whole_and_sizes_beyond_the_limit_are_refused_before_allocating() {
        let mut frames = Frames { max: 16 };
        let mut buf = BytesMut::new();
        buf.put_i32(5);
        buf.put_slice(b"abc");
        assert!(frames.decode(&mut buf).unwrap().is_none(), "a partial frame waits");
        assert!(buf.capacity() >= 9, "room reserved for the rest of it");
        buf.put_slice(b"de");
        buf.put_i32(0);
        assert_eq!(&frames.decode(&mut buf).unwrap().unwrap()[..], b"abcde");
        assert_eq!(&frames.decode(&mut buf).unwrap().unwrap()[..], b"", "an empty frame");
        assert!(frames.decode(&mut buf).unwrap().is_none());

        for size in [17, i32::MAX, -1, i32::MIN] {
            let mut buf = BytesMut::new();
            buf.put_i32(size);
            let capacity = buf.capacity();
            match frames.decode(&mut buf) {
                Err(ConnError::TooLarge { size: s, max: 16 }) => assert_eq!(s, i64::from(size)),
                other => panic!("size {size}: {other:?}"),
            }
            assert_eq!(buf.capacity(), capacity, "size {size}: nothing reserved");
        }
    }
}
