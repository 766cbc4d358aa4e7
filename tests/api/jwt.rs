//! JWT bearer tokens (SPEC §8) verified against a local JWKS file: signature,
//! `iss`, `aud`, `exp`, `nbf`, the principal claim; a stream is closed with 4401
//! when its token expires. Tokens are signed in the test with an ES256 key.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::helpers::{TestApp, spawn_app_with};

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "gregor";

struct Signer {
    key: EncodingKey,
    kid: &'static str,
}

impl Signer {
    /// A new P-256 key, and its public half as a JWK.
    fn new(kid: &'static str) -> (Signer, Value) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        assert_eq!((raw.len(), raw[0]), (65, 4), "an uncompressed point");
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]), "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
        });
        let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
        (Signer { key, kid }, jwk)
    }

    fn token(&self, claims: Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.to_owned());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn claims(sub: &str, exp_in: i64) -> Value {
    json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + exp_in, "iat": now()})
}

async fn jwt_app(signer_jwk: &Value, principal_claim: Option<&str>) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [signer_jwk]}).to_string()).unwrap();
    let claim = principal_claim.map(|c| format!("principal_claim = \"{c}\"\n")).unwrap_or_default();
    let config = dir.path().join("gregor.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nsuperusers = [\"User:admin\"]\n[auth.jwt]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks_file = \"{}\"\n{claim}\n\
             [[acl]]\nprincipal = \"User:reader\"\nresource = \"topic\"\nname = \"*\"\noperations = [\"read\", \"describe\"]\n",
            jwks.display()
        ),
    )
    .unwrap();
    let auth = gregor::config::load_auth(&config).unwrap();
    let app = spawn_app_with(move |c| c.auth = auth).await;
    (app, dir)
}

async fn status(app: &TestApp, token: &str) -> (u16, Value) {
    let res = app.client.get(app.url("/v1/topics")).bearer_auth(token).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn tokens_are_checked_for_signature_issuer_audience_and_time() {
    crate::helpers::within(async {
        let (signer, jwk) = Signer::new("k1");
        let (app, _dir) = jwt_app(&jwk, None).await;
        assert_eq!(status(&app, &signer.token(claims("reader", 600))).await.0, 200);
        let (code, body) = status(&app, &signer.token(claims("writer", 600))).await;
        assert_eq!(code, 200, "authenticated; the listing is filtered by the ACLs: {body}");

        let mut wrong_aud = claims("reader", 600);
        wrong_aud["aud"] = json!("someone-else");
        let mut wrong_iss = claims("reader", 600);
        wrong_iss["iss"] = json!("https://evil.example");
        let mut not_yet = claims("reader", 1200);
        not_yet["nbf"] = json!(now() + 600);
        let mut no_sub = claims("reader", 600);
        no_sub.as_object_mut().unwrap().remove("sub");
        let (forger, _) = Signer::new("k1");
        let (stranger, _) = Signer::new("k2");
        for (why, token) in [
            ("audience", signer.token(wrong_aud)),
            ("issuer", signer.token(wrong_iss)),
            ("expired", signer.token(claims("reader", -600))),
            ("not yet valid", signer.token(not_yet)),
            ("no principal", signer.token(no_sub)),
            ("another key, same kid", forger.token(claims("reader", 600))),
            ("unknown kid", stranger.token(claims("reader", 600))),
            ("garbage", "a.b.c".to_owned()),
        ] {
            let (code, body) = status(&app, &token).await;
            assert_eq!((code, body["code"].as_str()), (401, Some("unauthenticated")), "{why}: {body}");
        }
        // The ACLs apply to the token's principal.
        let res = app
            .client
            .post(app.url("/v1/topics"))
            .bearer_auth(signer.token(claims("reader", 600)))
            .json(&json!({"name": "nope"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 403);
    })
    .await;
}

#[tokio::test]
async fn the_principal_claim_is_configurable() {
    crate::helpers::within(async {
        let (signer, jwk) = Signer::new("k1");
        let (app, _dir) = jwt_app(&jwk, Some("preferred_username")).await;
        let mut c = claims("someone", 600);
        c["preferred_username"] = json!("reader");
        let res = app
            .client
            .post(app.url("/v1/topics"))
            .bearer_auth(signer.token(c))
            .json(&json!({"name": "nope"}))
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        assert!(body["detail"].as_str().unwrap().contains("User:reader"), "{body}");
    })
    .await;
}

/// A stream authenticated with a token that is about to expire is closed with
/// 4401 when it does (the token is inside the 30 s skew by a second).
#[tokio::test]
async fn a_stream_is_closed_with_4401_when_its_token_expires() {
    crate::helpers::within(async {
        let (signer, jwk) = Signer::new("k1");
        let (app, _dir) = jwt_app(&jwk, None).await;
        let res = app
            .client
            .post(app.url("/v1/topics"))
            .bearer_auth(signer.token(claims("admin", 600)))
            .json(&json!({"name": "t"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let token = signer.token(claims("reader", -29));
        let url = format!("{}/v1/topics/t/stream", app.base.replace("http://", "ws://"));
        let mut req = url.into_client_request().unwrap();
        let offered = format!("gregor.v1, gregor.bearer.{}", URL_SAFE_NO_PAD.encode(&token));
        req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_str(&offered).unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Close(Some(f)) = msg {
                    return Some(u16::from(f.code));
                }
            }
            None
        })
        .await
        .unwrap();
        assert_eq!(closed, Some(4401));
    })
    .await;
}
