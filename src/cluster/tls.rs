//! TLS to the cluster for gregor's own protocol client ([`super::wire`]), configured from the
//! same librdkafka properties librdkafka reads (`security.protocol` SSL or SASL_SSL and the
//! `ssl.*` keys), so that one `kafka_config` serves both clients:
//!
//! - `ssl.ca.location` (a PEM file, or a directory of them) or `ssl.ca.pem`: the CAs trusted;
//!   without either, the system's (as librdkafka);
//! - `ssl.certificate.location`/`.pem` with `ssl.key.location`/`.pem`: a client certificate;
//! - `ssl.endpoint.identification.algorithm = none`: the chain is checked, the host name not;
//! - `enable.ssl.certificate.verification = false`: nothing is checked (tests only).
//!
//! What gregor's client cannot honour (a PKCS#12 keystore, an encrypted key) is refused at
//! start with the property's name, rather than half-applied.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Properties gregor's client cannot honour: librdkafka would, so refusing keeps both alike.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("ssl.keystore.location", "a PKCS#12 keystore; give ssl.certificate.location and ssl.key.location (PEM)"),
    ("ssl.key.password", "an encrypted private key; give an unencrypted PEM key"),
    ("ssl.engine.location", "an OpenSSL engine"),
    ("ssl.providers", "OpenSSL providers"),
];

/// The TLS configuration for `kafka_config`, or why it cannot be built.
pub fn client_config(config: &BTreeMap<String, String>) -> Result<Arc<ClientConfig>, String> {
    let get = |k: &str| config.get(k).map(String::as_str).filter(|v| !v.is_empty());
    for (key, what) in UNSUPPORTED {
        if get(key).is_some() {
            return Err(format!("backend.kafka_config.{key}: {what} is not supported"));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS to the cluster: {e}"))?;
    let verify = get("enable.ssl.certificate.verification").is_none_or(|v| !v.eq_ignore_ascii_case("false"));
    let check_name = get("ssl.endpoint.identification.algorithm").is_none_or(|v| !v.eq_ignore_ascii_case("none"));
    let verifier: Arc<dyn ServerCertVerifier> = if verify {
        let roots = roots(get("ssl.ca.location"), get("ssl.ca.pem"))?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("backend.kafka_config: the CA certificates: {e}"))?;
        if check_name { webpki } else { Arc::new(AnyName(webpki)) }
    } else {
        Arc::new(Unverified(provider))
    };
    let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
    let cert = pem_source(config, "ssl.certificate")?;
    let key = pem_source(config, "ssl.key")?;
    let tls = match (cert, key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = match &cert {
                Pem::File(path) => CertificateDer::pem_file_iter(path)
                    .and_then(Iterator::collect)
                    .map_err(|e| format!("backend.kafka_config.ssl.certificate.location {path}: {e}"))?,
                Pem::Inline(text) => CertificateDer::pem_slice_iter(text.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("backend.kafka_config.ssl.certificate.pem: {e}"))?,
            };
            let key = match &key {
                Pem::File(path) => PrivateKeyDer::from_pem_file(path)
                    .map_err(|e| format!("backend.kafka_config.ssl.key.location {path}: {e}"))?,
                Pem::Inline(text) => PrivateKeyDer::from_pem_slice(text.as_bytes())
                    .map_err(|e| format!("backend.kafka_config.ssl.key.pem: {e}"))?,
            };
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("backend.kafka_config: client key: {e}"))?
        }
        _ => {
            return Err("backend.kafka_config: a client certificate needs both ssl.certificate.location (or .pem) \
                        and ssl.key.location (or .pem)"
                .into());
        }
    };
    Ok(Arc::new(tls))
}

enum Pem {
    File(String),
    Inline(String),
}

/// `<prefix>.location` or `<prefix>.pem`, at most one of them.
fn pem_source(config: &BTreeMap<String, String>, prefix: &str) -> Result<Option<Pem>, String> {
    let location = config.get(&format!("{prefix}.location")).filter(|v| !v.is_empty());
    let inline = config.get(&format!("{prefix}.pem")).filter(|v| !v.is_empty());
    match (location, inline) {
        (Some(_), Some(_)) => Err(format!("backend.kafka_config: give {prefix}.location or {prefix}.pem, not both")),
        (Some(path), None) => Ok(Some(Pem::File(path.clone()))),
        (None, Some(text)) => Ok(Some(Pem::Inline(text.clone()))),
        (None, None) => Ok(None),
    }
}

/// The CAs trusted: the configured ones, else the system's.
fn roots(location: Option<&str>, inline: Option<&str>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let mut add = |certs: Vec<CertificateDer<'static>>, from: &str| -> Result<(), String> {
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!("backend.kafka_config: no CA certificate in {from}"));
        }
        Ok(())
    };
    match (location, inline) {
        (Some(_), Some(_)) => return Err("backend.kafka_config: give ssl.ca.location or ssl.ca.pem, not both".into()),
        (Some(loc), None) if loc != "probe" => {
            let path = Path::new(loc);
            let files: Vec<std::path::PathBuf> = if path.is_dir() {
                let entries = std::fs::read_dir(path).map_err(|e| format!("ssl.ca.location {loc}: {e}"))?;
                entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect()
            } else {
                vec![path.to_path_buf()]
            };
            let mut certs = Vec::new();
            for f in &files {
                let found = CertificateDer::pem_file_iter(f)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .map_err(|e| format!("backend.kafka_config.ssl.ca.location {}: {e}", f.display()))?;
                certs.extend(found);
            }
            add(certs, &format!("ssl.ca.location {loc}"))?;
        }
        (None, Some(text)) => {
            let certs = CertificateDer::pem_slice_iter(text.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("backend.kafka_config.ssl.ca.pem: {e}"))?;
            add(certs, "ssl.ca.pem")?;
        }
        _ => {
            let found = rustls_native_certs::load_native_certs();
            if let Some(e) = found.errors.first() {
                tracing::warn!(error = %e, "reading the system's CA certificates");
            }
            add(found.certs, "the system's CA store (set ssl.ca.location)")?;
        }
    }
    Ok(roots)
}

/// Checks the chain but not that it names the broker (`ssl.endpoint.identification.algorithm
/// = none`).
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Checks nothing but the handshake's signatures (`enable.ssl.certificate.verification = false`).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn what_gregor_cannot_honour_is_refused_by_name() {
        let e = client_config(&config(&[("ssl.keystore.location", "/k.p12")])).unwrap_err();
        assert!(e.contains("ssl.keystore.location"), "{e}");
        let e = client_config(&config(&[("ssl.key.password", "x"), ("ssl.ca.pem", "")])).unwrap_err();
        assert!(e.contains("ssl.key.password"), "{e}");
        let e = client_config(&config(&[("ssl.certificate.location", "/c.pem")])).unwrap_err();
        assert!(e.contains("needs both"), "{e}");
        let e = client_config(&config(&[("ssl.ca.location", "/nonexistent/ca.pem")])).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        let e = client_config(&config(&[("ssl.ca.pem", "not a certificate")])).unwrap_err();
        assert!(e.contains("ssl.ca.pem"), "{e}");
    }

    #[test]
    fn a_ca_file_or_no_verification_builds_a_config() {
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["ca".into()]).unwrap().self_signed(&key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.pem()).unwrap();
        assert!(client_config(&config(&[("ssl.ca.location", path.to_str().unwrap())])).is_ok());
        assert!(client_config(&config(&[("ssl.ca.location", dir.path().to_str().unwrap())])).is_ok(), "a directory");
        assert!(client_config(&config(&[("ssl.ca.pem", &ca.pem())])).is_ok());
        assert!(client_config(&config(&[("enable.ssl.certificate.verification", "false")])).is_ok());
    }
}
