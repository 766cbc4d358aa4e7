//! TLS (SPEC §8) with real clients: reqwest over rustls, a client certificate as
//! the principal (mTLS), the handshake timeout, and certificates reloaded on
//! SIGHUP. Certificates are made in the test with rcgen.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::helpers::{TestApp, spawn_app_with};

/// A CA, and certificates it signs.
pub(crate) struct Ca {
    pub(crate) cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    pub(crate) fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "gregor test CA");
        Ca { cert: params.self_signed(&key).unwrap(), key }
    }

    /// (certificate PEM, key PEM) for `cn`, valid for `names`.
    pub(crate) fn issue(&self, cn: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct Tls {
    app: TestApp,
    ca: Ca,
    dir: tempfile::TempDir,
    https: String,
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn tls_app() -> Tls {
    use gregor::auth::{AclEntry, AclOperation, AuthSettings, Pattern, Permission, ResourceType};
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.issue("gregor", &["localhost", "127.0.0.1"]);
    let settings = gregor::http::tls::TlsSettings {
        cert_file: write(dir.path(), "server.pem", &cert),
        key_file: write(dir.path(), "server.key", &key),
        client_ca_file: Some(write(dir.path(), "ca.pem", &ca.cert.pem())),
        handshake_timeout: Duration::from_millis(500),
    };
    let app = spawn_app_with(move |c| {
        c.tls = Some(settings);
        c.auth = AuthSettings {
            client_certificates: true,
            acls: vec![AclEntry {
                principal: "User:alice".into(),
                resource: ResourceType::Topic,
                name: "*".into(),
                pattern: Pattern::Literal,
                operations: vec![AclOperation::Read, AclOperation::Describe],
                permission: Permission::Allow,
            }],
            ..AuthSettings::default()
        };
    })
    .await;
    let https = app.base.replace("http://127.0.0.1", "https://localhost");
    Tls { app, ca, dir, https }
}

fn client(ca: &Ca, identity: Option<(String, String)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert.pem().as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn https_with_a_client_certificate_as_the_principal() {
    crate::helpers::within(async {
        let t = tls_app().await;
        let anonymous = client(&t.ca, None);
        let res = anonymous.get(format!("{}/healthz", t.https)).send().await.unwrap();
        assert_eq!(res.status(), 200, "HTTPS serves");
        let res = anonymous.get(format!("{}/v1/topics", t.https)).send().await.unwrap();
        assert_eq!(res.status(), 401, "no certificate, no credentials");

        let alice = client(&t.ca, Some(t.ca.issue("alice", &[])));
        let res = alice.post(format!("{}/v1/topics", t.https)).json(&json!({"name": "secure"})).send().await.unwrap();
        assert_eq!(res.status(), 403, "alice may not create topics: she is User:alice");
        let body: serde_json::Value = res.json().await.unwrap();
        assert!(body["detail"].as_str().unwrap().contains("User:alice"), "{body}");
        let res = alice.get(format!("{}/v1/topics", t.https)).send().await.unwrap();
        assert_eq!(res.status(), 200, "User:alice may describe topics");

        let mallory = client(&Ca::new(), None);
        assert!(mallory.get(format!("{}/healthz", t.https)).send().await.is_err(), "a server no client CA vouches for");
        let other_ca = Ca::new();
        let stranger = client(&t.ca, Some(other_ca.issue("alice", &[])));
        assert!(
            stranger.get(format!("{}/v1/topics", t.https)).send().await.is_err(),
            "a client certificate from another CA fails the handshake"
        );
        // Plain HTTP on the TLS port gets nowhere.
        assert!(t.app.client.get(t.app.url("/healthz")).send().await.is_err());
    })
    .await;
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    crate::helpers::within(async {
        let t = tls_app().await;
        let mut tcp = TcpStream::connect(t.app.base.trim_start_matches("http://")).await.unwrap();
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "closed by the 500 ms handshake timeout: {closed:?}");
    })
    .await;
}

/// The certificate the server presents to a new connection.
async fn served_certificate(t: &Tls) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(t.ca.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(t.app.base.trim_start_matches("http://")).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    stream.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
}

#[tokio::test]
async fn certificates_are_reloaded_without_a_restart() {
    crate::helpers::within(async {
        let t = tls_app().await;
        let before = served_certificate(&t).await;
        let (cert, key) = t.ca.issue("gregor-renewed", &["localhost", "127.0.0.1"]);
        write(t.dir.path(), "server.pem", &cert);
        write(t.dir.path(), "server.key", &key);
        t.app.reloader.reload().unwrap();
        let after = served_certificate(&t).await;
        assert_ne!(before, after, "new connections get the new certificate");
        let renewed = rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        assert_eq!(after, renewed.as_ref().to_vec());
        // A broken file is refused and the running certificate stays.
        write(t.dir.path(), "server.key", "not a key");
        assert!(t.app.reloader.reload().is_err());
        assert_eq!(served_certificate(&t).await, after);
    })
    .await;
}
