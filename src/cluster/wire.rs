//! A small Kafka protocol client for the requests librdkafka does not expose per request:
//! Fetch at any offset with a long-poll (`max_wait_ms`), ListOffsets, Metadata,
//! IncrementalAlterConfigs, and (for stateless groups) the group coordinator's APIs.
//!
//! Messages are encoded and decoded by the `kafka-protocol` crate (the same vendored copy
//! the listener uses, whose decoders bound every claimed length by the bytes left). Each
//! broker connection negotiates versions with ApiVersions once, authenticates with
//! SASL/PLAIN when configured, then carries one request at a time; idle connections are
//! pooled per broker. A response frame is bounded before it is allocated.

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest response frame read (a Fetch answer is bounded by the request's `max_bytes`).
const MAX_RESPONSE_BYTES: usize = 128 * 1024 * 1024;
/// Idle connections kept per broker.
const MAX_IDLE_PER_BROKER: usize = 32;

/// Why a request to the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The broker could not be reached or the connection broke: worth retrying elsewhere.
    #[error("{addr}: {reason}")]
    Io { addr: String, reason: String },
    /// The broker does not offer a version of the API gregor speaks.
    #[error("{addr} does not support {api:?} versions {min}-{max}")]
    Unsupported { addr: String, api: ApiKey, min: i16, max: i16 },
    /// The broker answered something that does not decode, or refused authentication.
    #[error("{addr}: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("{addr}: no answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
}

/// SASL/PLAIN credentials for every connection.
#[derive(Clone)]
pub struct Plain {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Plain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plain").field("username", &self.username).finish_non_exhaustive()
    }
}

/// A connection's byte stream: TCP, or TLS over TCP.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// One open connection: its negotiated version ranges travel with it.
struct Conn {
    stream: Box<dyn Io>,
    versions: Arc<HashMap<i16, (i16, i16)>>,
}

/// Connections to the cluster's brokers, by address.
pub struct Wire {
    client_id: StrBytes,
    sasl: Option<Plain>,
    tls: Option<tokio_rustls::TlsConnector>,
    connect_timeout: Duration,
    idle: parking_lot::Mutex<HashMap<String, Vec<Conn>>>,
    correlation: AtomicI32,
    /// Where request latencies and failures are counted (set once the server's metrics exist).
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wire").field("sasl", &self.sasl).field("tls", &self.tls.is_some()).finish_non_exhaustive()
    }
}

impl Wire {
    pub fn new(
        client_id: &str,
        sasl: Option<Plain>,
        tls: Option<Arc<rustls::ClientConfig>>,
        connect_timeout: Duration,
    ) -> Wire {
        Wire {
            client_id: StrBytes::from_string(client_id.to_owned()),
            sasl,
            tls: tls.map(tokio_rustls::TlsConnector::from),
            connect_timeout,
            idle: parking_lot::Mutex::new(HashMap::new()),
            correlation: AtomicI32::new(1),
            metrics: std::sync::OnceLock::new(),
        }
    }

    /// Counts requests in `metrics` from now on.
    pub fn set_metrics(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// Counts a failure of `api` outside this client (librdkafka's producers).
    pub fn count_error(&self, api: &'static str) {
        if let Some(m) = self.metrics.get() {
            m.backend_errors.get_or_create(&crate::metrics::BackendLabels { api }).inc();
        }
    }

    /// Sends `req` to `addr` at the highest version both sides speak within `versions`, and
    /// reads its answer within `timeout`. Returns the answer and the version used.
    pub async fn call<R: Request>(
        &self,
        addr: &str,
        versions: RangeInclusive<i16>,
        req: &R,
        timeout: Duration,
    ) -> Result<(R::Response, i16), WireError> {
        let started = std::time::Instant::now();
        let answer = self.call_once(addr, versions, req, timeout).await;
        if let Some(m) = self.metrics.get() {
            let api = ApiKey::try_from(R::KEY).map_or("unknown", api_name);
            let labels = crate::metrics::BackendLabels { api };
            m.backend_requests.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
            if answer.is_err() {
                m.backend_errors.get_or_create(&labels).inc();
            }
        }
        answer
    }

    async fn call_once<R: Request>(
        &self,
        addr: &str,
        versions: RangeInclusive<i16>,
        req: &R,
        timeout: Duration,
    ) -> Result<(R::Response, i16), WireError> {
        let (mut conn, pooled) = match self.take_idle(addr) {
            Some(c) => (c, true),
            None => (self.connect(addr).await?, false),
        };
        let version = pick(addr, &conn, R::KEY, &versions)?;
        let mut answer = tokio::time::timeout(timeout, self.exchange::<R>(&mut conn, addr, version, req)).await;
        if pooled && matches!(answer, Ok(Err(WireError::Io { .. }))) {
            // An idle connection the broker closed meanwhile: once more on a new one.
            self.forget(addr);
            conn = self.connect(addr).await?;
            answer = tokio::time::timeout(timeout, self.exchange::<R>(&mut conn, addr, version, req)).await;
        }
        match answer {
            Ok(Ok(resp)) => {
                self.put_idle(addr, conn);
                Ok((resp, version))
            }
            // The connection is dropped: a late answer would be read as the next request's.
            Ok(Err(e)) => Err(e),
            Err(_) => Err(WireError::Timeout { addr: addr.to_owned(), timeout }),
        }
    }

    /// Whether the broker at `addr` offers some version of `key` (asked with ApiVersions on
    /// connecting): librdkafka's admin client waits its whole timeout for a broker offering
    /// an API none offers, so gregor asks first.
    pub async fn supports(&self, addr: &str, key: ApiKey) -> Result<bool, WireError> {
        let conn = match self.take_idle(addr) {
            Some(c) => c,
            None => self.connect(addr).await?,
        };
        let offered = conn.versions.contains_key(&(key as i16));
        self.put_idle(addr, conn);
        Ok(offered)
    }

    fn take_idle(&self, addr: &str) -> Option<Conn> {
        self.idle.lock().get_mut(addr).and_then(Vec::pop)
    }

    fn put_idle(&self, addr: &str, conn: Conn) {
        let mut idle = self.idle.lock();
        let list = idle.entry(addr.to_owned()).or_default();
        if list.len() < MAX_IDLE_PER_BROKER {
            list.push(conn);
        }
    }

    /// Drops the idle connections to `addr` (after it failed).
    pub fn forget(&self, addr: &str) {
        self.idle.lock().remove(addr);
    }

    async fn connect(&self, addr: &str) -> Result<Conn, WireError> {
        let io = |e: std::io::Error| WireError::Io { addr: addr.to_owned(), reason: e.to_string() };
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| WireError::Timeout { addr: addr.to_owned(), timeout: self.connect_timeout })?
            .map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let stream: Box<dyn Io> = match &self.tls {
            None => Box::new(stream),
            Some(tls) => {
                let name = server_name(addr)
                    .ok_or_else(|| WireError::Protocol { addr: addr.to_owned(), reason: "not HOST:PORT".into() })?;
                let handshake = tokio::time::timeout(self.connect_timeout, tls.connect(name, stream))
                    .await
                    .map_err(|_| WireError::Timeout { addr: addr.to_owned(), timeout: self.connect_timeout })?;
                Box::new(handshake.map_err(|e| WireError::Io { addr: addr.to_owned(), reason: format!("TLS: {e}") })?)
            }
        };
        let mut conn = Conn { stream, versions: Arc::new(HashMap::new()) };
        let setup = async {
            // ApiVersions v0: every broker answers it, whatever it supports.
            let resp: ApiVersionsResponse =
                self.exchange::<ApiVersionsRequest>(&mut conn, addr, 0, &Default::default()).await?;
            if resp.error_code != 0 {
                return Err(WireError::Protocol {
                    addr: addr.to_owned(),
                    reason: format!("ApiVersions answered error {}", resp.error_code),
                });
            }
            conn.versions =
                Arc::new(resp.api_keys.iter().map(|k| (k.api_key, (k.min_version, k.max_version))).collect());
            if let Some(plain) = &self.sasl {
                self.authenticate(&mut conn, addr, plain).await?;
            }
            Ok(())
        };
        tokio::time::timeout(self.connect_timeout, setup)
            .await
            .map_err(|_| WireError::Timeout { addr: addr.to_owned(), timeout: self.connect_timeout })??;
        Ok(conn)
    }

    async fn authenticate(&self, conn: &mut Conn, addr: &str, plain: &Plain) -> Result<(), WireError> {
        let refused = |reason: String| WireError::Protocol { addr: addr.to_owned(), reason };
        let v = pick(addr, conn, SaslHandshakeRequest::KEY, &(1..=1))?;
        let hs = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
        let resp = self.exchange::<SaslHandshakeRequest>(conn, addr, v, &hs).await?;
        if resp.error_code != 0 {
            return Err(refused(format!("SASL mechanism PLAIN refused (error {})", resp.error_code)));
        }
        let v = pick(addr, conn, SaslAuthenticateRequest::KEY, &(0..=1))?;
        let mut token = Vec::with_capacity(plain.username.len() + plain.password.len() + 2);
        token.push(0);
        token.extend_from_slice(plain.username.as_bytes());
        token.push(0);
        token.extend_from_slice(plain.password.as_bytes());
        let auth = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token));
        let resp = self.exchange::<SaslAuthenticateRequest>(conn, addr, v, &auth).await?;
        if resp.error_code != 0 {
            let msg = resp.error_message.as_ref().map(|m| m.to_string()).unwrap_or_default();
            return Err(refused(format!("SASL/PLAIN authentication failed (error {}): {msg}", resp.error_code)));
        }
        Ok(())
    }

    async fn exchange<R: Request>(
        &self,
        conn: &mut Conn,
        addr: &str,
        version: i16,
        req: &R,
    ) -> Result<R::Response, WireError> {
        let bad = |reason: String| WireError::Protocol { addr: addr.to_owned(), reason };
        let io = |e: std::io::Error| WireError::Io { addr: addr.to_owned(), reason: e.to_string() };
        let key = ApiKey::try_from(R::KEY).map_err(|_| bad(format!("unknown API key {}", R::KEY)))?;
        let correlation = self.correlation.fetch_add(1, Ordering::Relaxed) & i32::MAX;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(self.client_id.clone()));
        let header_version = key.request_header_version(version);
        let size = header.compute_size(header_version).map_err(|e| bad(e.to_string()))?
            + req.compute_size(version).map_err(|e| bad(e.to_string()))?;
        let mut frame = BytesMut::with_capacity(4 + size);
        frame.put_i32(size as i32);
        header.encode(&mut frame, header_version).map_err(|e| bad(format!("encoding {key:?}: {e}")))?;
        req.encode(&mut frame, version).map_err(|e| bad(format!("encoding {key:?}: {e}")))?;
        tracing::trace!(api = ?key, version, addr, "request");
        conn.stream.write_all(&frame).await.map_err(io)?;
        // TLS buffers what is written until flushed.
        conn.stream.flush().await.map_err(io)?;
        let len = conn.stream.read_i32().await.map_err(io)?;
        if len < 4 || len as usize > MAX_RESPONSE_BYTES {
            // noida-db ignores Fetch's byte limits and answers a whole backlog at once.
            return Err(bad(format!(
                "answer frame of {len} bytes to {key:?}, beyond the {MAX_RESPONSE_BYTES} bytes gregor reads \
                 (a broker that ignores Fetch's max_bytes?)"
            )));
        }
        let mut body = vec![0u8; len as usize];
        conn.stream.read_exact(&mut body).await.map_err(io)?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, R::Response::header_version(version))
            .map_err(|e| bad(format!("decoding {key:?}'s header: {e}")))?;
        if header.correlation_id != correlation {
            return Err(bad(format!("answer to request {} received for {correlation}", header.correlation_id)));
        }
        let resp = R::Response::decode(&mut body, version).map_err(|e| bad(format!("decoding {key:?}: {e}")))?;
        if body.has_remaining() {
            tracing::debug!(api = ?key, left = body.remaining(), "answer longer than its message");
        }
        Ok(resp)
    }
}

/// A metric label for the APIs gregor's client sends.
fn api_name(key: ApiKey) -> &'static str {
    match key {
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::DeleteGroups => "DeleteGroups",
        _ => "other",
    }
}

/// The name a broker's certificate must carry: the host of `addr` (HOST:PORT, `[v6]:PORT`).
fn server_name(addr: &str) -> Option<rustls::pki_types::ServerName<'static>> {
    let (host, _) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_owned()).ok()
}

/// The highest version of `key` both the broker and gregor speak.
fn pick(addr: &str, conn: &Conn, key: i16, ours: &RangeInclusive<i16>) -> Result<i16, WireError> {
    let api = ApiKey::try_from(key).unwrap_or(ApiKey::ApiVersions);
    let unsupported = || WireError::Unsupported { addr: addr.to_owned(), api, min: *ours.start(), max: *ours.end() };
    if key == ApiVersionsRequest::KEY && conn.versions.is_empty() {
        return Ok(*ours.start());
    }
    let (min, max) = conn.versions.get(&key).copied().ok_or_else(unsupported)?;
    let v = max.min(*ours.end());
    if v < min.max(*ours.start()) {
        return Err(unsupported());
    }
    Ok(v)
}
