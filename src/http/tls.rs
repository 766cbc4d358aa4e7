//! TLS for the HTTP listener (SPEC §8): rustls with the ring provider, the
//! certificate and key from PEM files, optional client certificates (mTLS)
//! verified against `client_ca_file`, reloaded on SIGHUP.
//!
//! A client certificate is optional even with a client CA: a client that
//! presents one (and no other credential) is the certificate's CN; one that does
//! not authenticates like any other.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

/// `[tls]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The server's certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CAs whose client certificates identify clients (mTLS); `None`: no client certificates.
    pub client_ca_file: Option<PathBuf>,
    /// How long a client may take to finish the TLS handshake.
    pub handshake_timeout: Duration,
}

/// The running TLS configuration, swapped whole on reload.
pub struct Tls {
    settings: TlsSettings,
    config: parking_lot::RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the files and builds the configuration; an error says which file and why.
    pub fn load(settings: TlsSettings) -> Result<Tls, String> {
        let config = server_config(&settings)?;
        Ok(Tls { settings, config: parking_lot::RwLock::new(Arc::new(config)) })
    }

    /// Reads the files again; on an error the running configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.settings)?;
        *self.config.write() = Arc::new(config);
        Ok(())
    }

    /// An acceptor with the current certificates.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.read().clone())
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.settings.handshake_timeout
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

fn server_config(s: &TlsSettings) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&s.cert_file).map_err(|e| format!("tls.cert_file {e}"))?;
    let key =
        PrivateKeyDer::from_pem_file(&s.key_file).map_err(|e| format!("tls.key_file {}: {e}", s.key_file.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = match &s.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca).map_err(|e| format!("tls.client_ca_file {e}"))? {
                roots.add(cert).map_err(|e| format!("tls.client_ca_file {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("tls.client_ca_file {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls: the certificate and key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The common name of a verified client certificate's subject.
pub fn client_cn(certs: Option<&[CertificateDer<'static>]>) -> Option<String> {
    let leaf = certs?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}
