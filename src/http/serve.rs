//! The serve loop: accepts TCP connections and serves HTTP/1.1 on each (with
//! WebSocket upgrades), within the serving limits of SPEC §8.
//!
//! - A connection must deliver a request's headers within `header_read_timeout`,
//!   counted from when it starts waiting for a request: a client that dribbles
//!   headers, or keeps an idle keep-alive connection, is closed (hyper's header
//!   timer, which axum's own `serve` leaves off).
//! - At most `max_connections` are open (WebSockets included); beyond that a new
//!   connection gets `503 too_many_connections` and is closed, so the accept loop
//!   never stalls.
//! - Every socket gets `TCP_NODELAY` (Nagle's algorithm held WebSocket frames back
//!   behind unacknowledged ones: the 17 ms p99 of the first latency runs) and
//!   `SO_SNDBUF` (bounds the kernel memory of a client that stops reading).
//! - On shutdown: stop accepting, let each connection finish its request in
//!   flight (hyper's graceful shutdown), wait for them.
//!
//! HTTP/2 is not offered: without TLS (and ALPN) browsers do not use it, and
//! hyper's header timeout, which the limits rest on, is HTTP/1's.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::problem_body;
use super::tls::Tls;
use crate::error::Code;
use crate::metrics::Metrics;

/// The serving limits, and TLS when configured.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    /// `SO_SNDBUF` of each socket; 0 leaves it to the OS.
    pub send_buffer: usize,
    /// Serve HTTPS (and WSS) with these certificates.
    pub tls: Option<Arc<Tls>>,
}

/// The verified client certificate's CN (mTLS), put in each request's
/// extensions for the `Caller` extractor.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub String);

/// Binds `addr` with a listen backlog of at least 4,096 (or the system's
/// `somaxconn`, if larger), so that a burst of connecting clients is queued, not
/// dropped into SYN retries.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(0);
    socket.listen(somaxconn.max(4096))?;
    TcpListener::from_std(socket.into())
}

/// Serves `app` on `listener` until `stop` is cancelled, then shuts down gracefully
/// and returns once every HTTP connection has ended (upgraded WebSockets are the
/// caller's to close).
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, metrics: Arc<Metrics>, stop: CancellationToken) {
    let connections = TaskTracker::new();
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closing_rx) = watch::channel(());
    loop {
        let tcp = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
        };
        tune(&tcp, limits.send_buffer);
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics.http_connections_refused.inc();
            connections.spawn(refuse(tcp, limits.max_connections));
            continue;
        };
        let counted = Counted::new(tcp, permit, metrics.clone());
        let (app, closing, header_timeout) = (app.clone(), closing_rx.clone(), limits.header_read_timeout);
        match limits.tls.clone() {
            None => {
                let service = TowerToHyperService::new(app);
                connections.spawn(serve_http(TokioIo::new(counted), service, header_timeout, closing));
            }
            Some(tls) => {
                connections.spawn(async move {
                    let handshake = tokio::time::timeout(tls.handshake_timeout(), tls.acceptor().accept(counted));
                    let stream = match handshake.await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => return tracing::debug!("TLS handshake timed out"),
                    };
                    let cn = super::tls::client_cn(stream.get_ref().1.peer_certificates()).map(ClientCertificate);
                    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                        if let Some(cn) = &cn {
                            req.extensions_mut().insert(cn.clone());
                        }
                        tower::ServiceExt::oneshot(app.clone(), req)
                    });
                    serve_http(TokioIo::new(stream), service, header_timeout, closing).await;
                });
            }
        }
    }
    drop(listener);
    drop(closing);
    connections.close();
    connections.wait().await;
}

/// Serves HTTP/1.1 (and upgrades) on one connection until it ends or the server
/// closes (then gracefully: the request in flight is answered first).
async fn serve_http<I, S>(io: I, service: S, header_timeout: Duration, mut closing: watch::Receiver<()>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = axum::body::Body> + Send,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let conn = http.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let served = tokio::select! {
        res = conn.as_mut() => res,
        _ = closing.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        // Timeouts, resets and malformed requests are the client's; keep them quiet.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Accept errors are about one connection (it was reset before we took it) or
/// about us (out of file descriptors); for the latter, back off a little
/// instead of spinning.
async fn accept_failed(e: &io::Error) {
    use io::ErrorKind as K;
    if matches!(e.kind(), K::ConnectionAborted | K::ConnectionReset | K::ConnectionRefused | K::Interrupted) {
        return;
    }
    tracing::warn!(error = %e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

fn tune(tcp: &TcpStream, send_buffer: usize) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    if send_buffer > 0
        && let Err(e) = socket2::SockRef::from(tcp).set_send_buffer_size(send_buffer)
    {
        tracing::debug!(error = %e, "cannot set SO_SNDBUF");
    }
}

/// Answers a connection over the cap with a 503 problem and closes it.
async fn refuse(mut tcp: TcpStream, cap: usize) {
    let body = problem_body(
        Code::TooManyConnections,
        &format!("the server has {cap} connections open (http.max_connections); retry shortly"),
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}

/// A connection's socket, holding its place under the cap (and in the
/// `gregor_http_connections` gauge) for as long as it lives, upgraded or not.
struct Counted {
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Counted {
    fn new(tcp: TcpStream, permit: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Self {
        metrics.http_connections.inc();
        Counted { tcp, _permit: permit, metrics }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.metrics.http_connections.dec();
    }
}

impl AsyncRead for Counted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}
