//! `App`: builds a server from a `Config` (opens the store, recovers, binds) and
//! runs it until a shutdown future resolves, then shuts down in order.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Security;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::faults::Faults;
use crate::group::Groups;
use crate::http::guard::BrowserGuard;
use crate::http::serve::{self, Limits};
use crate::http::tls::Tls;
use crate::http::{AppState, router};
use crate::log::{Log, LogSettings};
use crate::metrics::Metrics;
use crate::service::Service;
use crate::store::Store;

/// Why a server could not start (or stop cleanly); each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("data directory {path} is in use by another gregor process (its RocksDB LOCK is held)")]
    DataDirLocked { path: PathBuf },
    #[error("cannot open the store in {path}: {source}")]
    Store { path: PathBuf, source: crate::error::Error },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error("flushing the store at shutdown failed: {0}")]
    Flush(crate::error::Error),
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Tls(String),
    #[error("the Kafka backend: {0}")]
    Cluster(crate::error::Error),
}

/// What serves the log: the embedded store and its groups, or a Kafka cluster.
enum Core {
    Embedded { log: Arc<Log>, groups: Arc<Groups>, registry: Arc<crate::registry::Registry> },
    Kafka { cluster: Arc<Cluster>, faults: Arc<Faults> },
}

/// A bound, recovered server, ready to run.
pub struct App {
    listener: TcpListener,
    /// The Kafka protocol listener, unless turned off.
    kafka: Option<TcpListener>,
    core: Core,
    security: Arc<Security>,
    tls: Option<Arc<Tls>>,
    config: Config,
}

/// Re-reads the security settings (`[auth]`, `[[acl]]`) from the configuration
/// file and swaps them in; what SIGHUP does.
#[derive(Debug, Clone)]
pub struct Reloader {
    security: Arc<Security>,
    tls: Option<Arc<Tls>>,
    file: Option<PathBuf>,
}

impl Reloader {
    /// Also reads the TLS certificates again. On an error nothing changes: the
    /// running settings stay.
    pub fn reload(&self) -> Result<(), AppError> {
        if let Some(tls) = &self.tls {
            tls.reload().map_err(AppError::Tls)?;
            tracing::info!("TLS certificates reloaded");
        }
        let Some(file) = &self.file else {
            tracing::info!("no configuration file to reload");
            return Ok(());
        };
        let settings = crate::config::load_auth(file)?;
        self.security.reload(&settings);
        tracing::info!(
            api_keys = settings.api_keys.len(),
            users = settings.users.len(),
            acls = settings.acls.len(),
            "security settings reloaded"
        );
        Ok(())
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("listen", &self.listener.local_addr().ok()).finish_non_exhaustive()
    }
}

impl App {
    /// Opens the store in `config.data_dir` (creating it), recovers every
    /// partition's offsets, starts the writer and binds `config.listen`.
    pub async fn build(config: Config) -> Result<App, AppError> {
        config.validate()?;
        if let crate::config::Backend::Kafka(settings) = &config.backend {
            let session = config.groups.default_session_timeout_ms;
            let cluster =
                Cluster::open(settings.clone(), config.auto_create_topics, config.default_partitions, session)
                    .map_err(AppError::Cluster)?;
            cluster.set_idempotency_window(config.idempotency_window);
            let listener =
                serve::bind(config.listen).map_err(|source| AppError::Bind { addr: config.listen, source })?;
            let security = Arc::new(Security::new(&config.auth));
            let tls = config.tls.clone().map(Tls::load).transpose().map_err(AppError::Tls)?.map(Arc::new);
            tracing::info!(bootstrap = %cluster.bootstrap(), "backend: Kafka cluster");
            let core = Core::Kafka { cluster, faults: Arc::new(Faults::default()) };
            return Ok(App { listener, kafka: None, core, security, tls, config });
        }
        let path = config.data_dir.clone();
        std::fs::create_dir_all(&path).map_err(|source| AppError::DataDir { path: path.clone(), source })?;
        let path = std::fs::canonicalize(&path).map_err(|source| AppError::DataDir { path: path.clone(), source })?;
        let settings = LogSettings {
            auto_create_topics: config.auto_create_topics,
            default_partitions: config.default_partitions,
            write_queue_bytes: config.write_queue_bytes,
            write_queue_len: config.write_queue_len,
        };
        let p = path.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let store = Arc::new(Store::open(&p)?);
            let registry = Arc::new(crate::registry::Registry::open(store.clone())?);
            Ok::<_, crate::error::Error>((Log::open(store, settings)?, registry))
        })
        .await
        .map_err(|e| AppError::Store { path: path.clone(), source: crate::error::Error::Storage(e.to_string()) })?;
        let (log, registry) = opened.map_err(|source| match &source {
            crate::error::Error::Storage(msg) if msg.contains("LOCK") || msg.contains("lock file") => {
                AppError::DataDirLocked { path: path.clone() }
            }
            _ => AppError::Store { path: path.clone(), source },
        })?;
        log.set_idempotency_window(config.idempotency_window);
        log.set_producer_expiry(config.kafka.producer_id_expiration);
        let mut group_settings = config.groups;
        // The default session timeout must lie within the configured bounds.
        group_settings.default_session_timeout_ms = group_settings
            .default_session_timeout_ms
            .clamp(group_settings.min_session_timeout_ms, group_settings.max_session_timeout_ms);
        let groups = Groups::open(log.clone(), group_settings)
            .await
            .map_err(|source| AppError::Store { path: path.clone(), source })?;
        let listener = serve::bind(config.listen).map_err(|source| AppError::Bind { addr: config.listen, source })?;
        let kafka = match config.kafka.listen {
            Some(addr) => Some(crate::kafka::bind(addr).map_err(|source| AppError::Bind { addr, source })?),
            None => None,
        };
        let config = Config { data_dir: path, ..config };
        let security = Arc::new(Security::new(&config.auth));
        let tls = config.tls.clone().map(Tls::load).transpose().map_err(AppError::Tls)?.map(Arc::new);
        Ok(App { listener, kafka, core: Core::Embedded { log, groups, registry }, security, tls, config })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// The Kafka listener's bound address, if it is on.
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        self.kafka.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// `https` with `[tls]`, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The Kafka backend's bootstrap servers (`None` on the embedded backend).
    pub fn kafka_bootstrap(&self) -> Option<String> {
        match &self.core {
            Core::Embedded { .. } => None,
            Core::Kafka { cluster, .. } => Some(cluster.bootstrap()),
        }
    }

    /// The data directory, made absolute.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// What SIGHUP calls: reloads keys, users and ACLs from the configuration file.
    pub fn reloader(&self) -> Reloader {
        Reloader { security: self.security.clone(), tls: self.tls.clone(), file: self.config.file.clone() }
    }

    /// Fault injection switches (off unless a test turns them on; see [`crate::faults`]).
    pub fn faults(&self) -> Arc<Faults> {
        match &self.core {
            Core::Embedded { log, .. } => log.faults().clone(),
            // Nothing of the Kafka backend reads them.
            Core::Kafka { faults, .. } => faults.clone(),
        }
    }

    /// Serves until `shutdown` resolves, then: stops accepting connections, wakes
    /// long-polls, lets in-flight requests finish (up to `shutdown_timeout`),
    /// stops the retention and session timers, writes everything still queued,
    /// and flushes the store.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), AppError> {
        let App { listener, kafka, core, security, tls, config } = self;
        let (log, groups, registry) = match core {
            Core::Embedded { log, groups, registry } => (log, groups, registry),
            Core::Kafka { cluster, .. } => {
                return run_gateway(listener, cluster, security, tls, config, shutdown).await;
            }
        };
        let stop_timers = CancellationToken::new();
        let retention =
            tokio::spawn(crate::retention::run(log.clone(), config.retention_check_interval, stop_timers.clone()));
        let sessions = tokio::spawn(groups.clone().run_expiry(config.session_check_interval, stop_timers.clone()));

        let connections = TaskTracker::new();
        let metrics = Arc::new(Metrics::new());
        let service = Service::embedded(log.clone(), groups, metrics.clone(), security).with_registry(registry);
        let service_for_kafka = service.clone();
        let history = tokio::spawn(service.clone().run_history(stop_timers.clone()));
        let (app, limits) = http_app(service, &listener, tls, &config, &connections);
        let signalled = log.shutdown_token();
        let stop_serving = CancellationToken::new();
        {
            let (log, stop_serving) = (log.clone(), stop_serving.clone());
            tokio::spawn(async move {
                shutdown.await;
                tracing::info!("shutting down: no new connections, finishing in-flight requests");
                log.begin_shutdown();
                stop_serving.cancel();
            });
        }
        let kafka = kafka.map(|listener| {
            tokio::spawn(crate::kafka::serve(listener, service_for_kafka, config.kafka.clone(), stop_serving.clone()))
        });
        let server = tokio::spawn(serve::serve(listener, app, limits, metrics, stop_serving));
        let served = finish_serving(server, signalled, config.shutdown_timeout).await;

        if let Some(kafka) = kafka
            && tokio::time::timeout(config.shutdown_timeout, kafka).await.is_err()
        {
            tracing::warn!("some Kafka connections did not close within the shutdown timeout");
        }
        close_websockets(&connections, config.shutdown_timeout).await;
        stop_timers.cancel();
        for (name, task) in [("retention", retention), ("session", sessions), ("history", history)] {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "the {name} timer task failed");
            }
        }
        let closed = log.close().await;
        match served {
            Ok(()) => {}
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(AppError::Serve(std::io::Error::other(e.to_string()))),
        }
        closed.map_err(AppError::Flush)?;
        tracing::info!("store flushed; bye");
        Ok(())
    }
}

/// `App::run` on the Kafka backend: no store, no timers; queued produces are delivered
/// (within the shutdown timeout) before it returns.
async fn run_gateway(
    listener: TcpListener,
    cluster: Arc<Cluster>,
    security: Arc<Security>,
    tls: Option<Arc<Tls>>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let connections = TaskTracker::new();
    let metrics = Arc::new(Metrics::new());
    // The Schema Registry follows the cluster's `_schemas` topic on every replica.
    let registry = Arc::new(crate::registry::Registry::in_cluster(cluster.clone()));
    tokio::spawn(crate::cluster::schemas::follow(cluster.clone(), registry.clone()));
    let service = Service::kafka(cluster.clone(), metrics.clone(), security).with_registry(registry);
    let stop_history = CancellationToken::new();
    tokio::spawn(service.clone().run_history(stop_history.clone()));
    let (app, limits) = http_app(service, &listener, tls, &config, &connections);
    let signalled = cluster.shutdown_token();
    let stop_serving = CancellationToken::new();
    {
        let (cluster, stop_serving) = (cluster.clone(), stop_serving.clone());
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections, finishing in-flight requests");
            cluster.begin_shutdown();
            stop_serving.cancel();
        });
    }
    let server = tokio::spawn(serve::serve(listener, app, limits, metrics, stop_serving));
    let served = finish_serving(server, signalled, config.shutdown_timeout).await;
    close_websockets(&connections, config.shutdown_timeout).await;
    stop_history.cancel();
    cluster.close(config.shutdown_timeout).await;
    match served {
        Ok(()) => {}
        Err(e) if e.is_cancelled() => {}
        Err(e) => return Err(AppError::Serve(std::io::Error::other(e.to_string()))),
    }
    tracing::info!("queued records delivered to the cluster; bye");
    Ok(())
}

/// What both backends serve over HTTP: the router over `service` (with the browser guard for
/// the bound address) and the serving limits.
fn http_app(
    service: Service,
    listener: &TcpListener,
    tls: Option<Arc<Tls>>,
    config: &Config,
    connections: &TaskTracker,
) -> (axum::Router, Limits) {
    let bound = listener.local_addr().unwrap_or(config.listen);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let guard = Arc::new(BrowserGuard::new(&config.http.allowed_origins, &config.http.allowed_hosts, bound, scheme));
    let state =
        AppState { service, guard, connections: connections.clone(), ws_ping_interval: config.ws_ping_interval };
    let app = router(state, config.max_request_bytes);
    let limits = Limits {
        header_read_timeout: config.http.header_read_timeout,
        max_connections: config.http.max_connections,
        send_buffer: config.socket_send_buffer_bytes,
        tls,
    };
    (app, limits)
}

/// Waits for the serve loop to end; once shutdown is signalled it gets `timeout` for
/// in-flight requests, then it is aborted.
async fn finish_serving(
    mut server: tokio::task::JoinHandle<()>,
    signalled: CancellationToken,
    timeout: std::time::Duration,
) -> Result<(), tokio::task::JoinError> {
    tokio::select! {
        res = &mut server => res,
        _ = async { signalled.cancelled().await; tokio::time::sleep(timeout).await } => {
            tracing::warn!("in-flight requests did not finish within the shutdown timeout; closing them");
            server.abort();
            Ok(())
        }
    }
}

/// WebSockets saw the shutdown token: they send close frames and end, within `timeout`.
async fn close_websockets(connections: &TaskTracker, timeout: std::time::Duration) {
    connections.close();
    if tokio::time::timeout(timeout, connections.wait()).await.is_err() {
        tracing::warn!("some WebSocket connections did not close within the shutdown timeout");
    }
}
