//! The Kafka listener (SPEC §9): Kafka's binary protocol on its own port, on the same
//! service layer as REST and WebSocket, so records, offsets and ACLs are shared.
//!
//! One task per connection reads size-prefixed frames, bounded by `kafka.max_request_bytes`
//! before anything is allocated, decodes each with the `kafka-protocol` crate (vendored with
//! its decoders bounding every claimed length by the bytes left; see vendor/README.md), runs
//! it (`api.rs`) and writes the answer. Requests on one connection are answered in order, as
//! Kafka requires. A frame that does not decode closes its connection only; an API or
//! version gregor does not serve is answered with UNSUPPORTED_VERSION.

mod api;
pub(crate) mod errors;
mod gather;
mod groups;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
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

async fn connection(stream: TcpStream, shared: Arc<Shared>, stop: CancellationToken) -> Result<(), ConnError> {
    // Anonymous where credentials are not required; otherwise SASL/PLAIN first.
    let anonymous = shared.service.authenticate(&crate::auth::Credentials::None).await.ok();
    let peer = stream.peer_addr().ok();
    let (mut rd, wr) = stream.into_split();
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    let mut session = api::Session::new(anonymous, peer);
    loop {
        let mut len = [0u8; 4];
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            read = rd.read_exact(&mut len) => match read {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e.into()),
            },
        }
        let size = i32::from_be_bytes(len);
        if size < 0 || size as usize > shared.max_request_bytes {
            return Err(ConnError::TooLarge { size: size.into(), max: shared.max_request_bytes });
        }
        let mut frame = BytesMut::zeroed(size as usize);
        rd.read_exact(&mut frame).await?;
        let answer = handle_frame(frame.freeze(), &shared, &mut session).await?;
        if let Some((header, body)) = answer {
            let size = header.len() + body.iter().map(Bytes::len).sum::<usize>();
            wr.write_all(&(size as i32).to_be_bytes()).await?;
            wr.write_all(&header).await?;
            // A part larger than the writer's buffer goes to the socket straight from memory.
            for part in &body {
                wr.write_all(part).await?;
            }
            wr.flush().await?;
        }
        if session.closing {
            return Ok(());
        }
    }
}

/// Decodes one request frame, runs it, and encodes the answer: its response header and its
/// body's parts, without the size prefix (kept apart so a large body is not copied behind the
/// header). `None`: nothing is sent back (Produce with `acks=0`).
pub(crate) async fn handle_frame(
    mut frame: Bytes,
    shared: &Shared,
    session: &mut api::Session,
) -> Result<Option<(Bytes, Vec<Bytes>)>, ConnError> {
    if frame.remaining() < 8 {
        return Err(ConnError::Malformed(format!("a request header needs 8 bytes, got {}", frame.remaining())));
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let answer = api::dispatch(api_key, version, &mut frame, shared, session).await;
    let (body, header_version) = match answer {
        Ok(api::Answer::Body { body, header_version }) => (body, header_version),
        Ok(api::Answer::Nothing) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut header = BytesMut::with_capacity(5);
    header.put_i32(correlation_id);
    if header_version >= 1 {
        header.put_u8(0); // no tagged fields
    }
    Ok(Some((header.freeze(), body)))
}
