//! Security (SPEC §8): who a request is, and what that principal may do.
//!
//! - Credentials → principal: API keys (`Authorization: Bearer`, stored as SHA-256
//!   and compared in constant time) and HTTP Basic passwords (Argon2id hashes; a
//!   verified password is remembered by its SHA-256, so only a principal's first
//!   request pays for Argon2). With no credentials configured, authentication is
//!   off and every request is `User:ANONYMOUS`, allowed everything.
//! - Principal → permissions: Kafka-style ACLs ([`acl`]).
//!
//! Everything here is reloadable (SIGHUP): [`Security::reload`] swaps the whole
//! state at once and tells open streams to check their permissions again.

pub mod acl;
pub mod quota;

use std::collections::HashMap;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{Semaphore, watch};

pub use acl::{AclEntry, AclOperation, Acls, Pattern, Permission, ResourceType};
pub use quota::{PrincipalQuota, QuotaSettings, Quotas, Throttle};

use crate::error::{Error, Result};
use crate::service::{Operation, Principal, Resource};

/// An API key as configured: the principal it stands for and the key's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub principal: String,
    pub sha256: [u8; 32],
}

/// A password user as configured: a name and an Argon2id hash (PHC string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password_hash: String,
}

/// `[auth.jwt]`: bearer tokens signed by a key of a local JWKS file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    /// The `iss` every token must carry.
    pub issuer: String,
    /// An `aud` every token must carry.
    pub audience: String,
    /// The keys, read from `jwks_file` (no key is ever fetched over the network).
    pub jwks: jsonwebtoken::jwk::JwkSet,
    /// The claim holding the principal's name (default `sub`).
    pub principal_claim: String,
}

/// Clock skew allowed on `exp` and `nbf`.
pub const JWT_LEEWAY_SECS: u64 = 30;

/// The `[auth]` section and the `[[acl]]` entries, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthSettings {
    /// With credentials configured: requests without any are `User:ANONYMOUS`
    /// (subject to ACLs) instead of `401`. Without: serving on a non-loopback
    /// address is allowed at all.
    pub allow_anonymous: bool,
    /// Principals (`User:NAME`) allowed everything.
    pub superusers: Vec<String>,
    pub api_keys: Vec<ApiKey>,
    pub users: Vec<User>,
    pub acls: Vec<AclEntry>,
    /// Client certificates identify clients (`[tls] client_ca_file` is set).
    pub client_certificates: bool,
    pub jwt: Option<JwtSettings>,
    /// `[[quotas]]`, per principal.
    pub quotas: Vec<QuotaSettings>,
}

impl AuthSettings {
    /// Authentication is on when any credential is configured.
    pub fn enabled(&self) -> bool {
        !self.api_keys.is_empty() || !self.users.is_empty() || self.client_certificates || self.jwt.is_some()
    }
}

/// Who a request is, and until when (a JWT's `exp`, plus the allowed skew).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub principal: Principal,
    /// Seconds since the epoch after which the credentials no longer hold.
    pub expires_at: Option<u64>,
}

impl Identity {
    fn lasting(principal: Principal) -> Identity {
        Identity { principal, expires_at: None }
    }
}

/// What a request presented.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    None,
    Bearer(String),
    Basic {
        user: String,
        password: String,
    },
    /// A client certificate the TLS handshake verified against the client CA: its CN.
    Certificate(String),
}

impl std::fmt::Debug for Credentials {
    /// Never the secret: credentials must not reach logs or traces.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Credentials::Basic { user, .. } => write!(f, "Basic({user}, <redacted>)"),
            Credentials::Certificate(cn) => write!(f, "Certificate({cn})"),
        }
    }
}

/// How many verified passwords are remembered before the memory is cleared.
const VERIFIED_CACHE: usize = 10_000;

/// Argon2 verifications running at once; more wait. Each takes tens of ms of CPU.
const ARGON2_CONCURRENCY: usize = 2;

struct State {
    enabled: bool,
    client_certificates: bool,
    jwt: Option<JwtSettings>,
    /// Tokens already verified: SHA-256 of the token → its identity.
    tokens: parking_lot::Mutex<HashMap<[u8; 32], Identity>>,
    allow_anonymous: bool,
    keys: Vec<(Principal, [u8; 32])>,
    users: HashMap<String, String>,
    /// Passwords already verified against the current hashes: user → SHA-256 of the password.
    verified: parking_lot::Mutex<HashMap<String, [u8; 32]>>,
    acls: Acls,
    quotas: Quotas,
}

/// The current security state, swapped whole on reload.
pub struct Security {
    state: parking_lot::RwLock<Arc<State>>,
    /// Bumped on every reload: open streams check their permissions again.
    changed: watch::Sender<u64>,
    argon2: Semaphore,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.read();
        f.debug_struct("Security")
            .field("enabled", &s.enabled)
            .field("api_keys", &s.keys.len())
            .field("users", &s.users.len())
            .finish_non_exhaustive()
    }
}

fn build(settings: &AuthSettings) -> State {
    State {
        enabled: settings.enabled(),
        client_certificates: settings.client_certificates,
        jwt: settings.jwt.clone(),
        tokens: parking_lot::Mutex::new(HashMap::new()),
        allow_anonymous: settings.allow_anonymous,
        keys: settings.api_keys.iter().map(|k| (Principal::user(&k.principal), k.sha256)).collect(),
        users: settings.users.iter().map(|u| (u.name.clone(), u.password_hash.clone())).collect(),
        verified: parking_lot::Mutex::new(HashMap::new()),
        acls: Acls::new(&settings.acls, &settings.superusers),
        quotas: Quotas::new(&settings.quotas),
    }
}

impl Security {
    pub fn new(settings: &AuthSettings) -> Security {
        Security {
            state: parking_lot::RwLock::new(Arc::new(build(settings))),
            changed: watch::Sender::new(0),
            argon2: Semaphore::new(ARGON2_CONCURRENCY),
        }
    }

    /// Replaces keys, users and ACLs at once; open streams are told to check again.
    pub fn reload(&self, settings: &AuthSettings) {
        *self.state.write() = Arc::new(build(settings));
        self.changed.send_modify(|v| *v += 1);
    }

    /// Changes on every reload.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn current(&self) -> Arc<State> {
        self.state.read().clone()
    }

    pub fn enabled(&self) -> bool {
        self.current().enabled
    }

    /// Who presented `credentials`: `Unauthenticated` when they are wrong, or
    /// absent while authentication is on and anonymous requests are not allowed.
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<Identity> {
        let state = self.current();
        if !state.enabled {
            return Ok(Identity::lasting(Principal::anonymous()));
        }
        match credentials {
            Credentials::None if state.allow_anonymous => Ok(Identity::lasting(Principal::anonymous())),
            Credentials::None => Err(Error::Unauthenticated("credentials are required".into())),
            Credentials::Bearer(token) if state.jwt.is_some() && token.matches('.').count() == 2 => {
                verify_jwt(&state, token)
            }
            Credentials::Bearer(token) => {
                let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                // Every key is compared, in constant time, whatever matches.
                let mut found = None;
                for (principal, key) in &state.keys {
                    if bool::from(key.ct_eq(&digest)) {
                        found = Some(principal.clone());
                    }
                }
                found
                    .map(Identity::lasting)
                    .ok_or_else(|| Error::Unauthenticated("the bearer token is not a known API key".into()))
            }
            Credentials::Basic { user, password } => {
                self.verify_password(&state, user, password).await.map(Identity::lasting)
            }
            Credentials::Certificate(_) if !state.client_certificates => {
                Err(Error::Unauthenticated("client certificates are not configured".into()))
            }
            Credentials::Certificate(cn) => match crate::topic::check_name("principal", cn) {
                Ok(()) => Ok(Identity::lasting(Principal::user(cn))),
                Err(e) => Err(Error::Unauthenticated(format!("the client certificate's CN: {e}"))),
            },
        }
    }

    async fn verify_password(&self, state: &Arc<State>, user: &str, password: &str) -> Result<Principal> {
        let refused = || Error::Unauthenticated("unknown user or wrong password".into());
        let Some(hash) = state.users.get(user) else { return Err(refused()) };
        let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        if state.verified.lock().get(user).is_some_and(|d| bool::from(d.ct_eq(&digest))) {
            return Ok(Principal::user(user));
        }
        let _slot = self.argon2.acquire().await.map_err(|_| Error::ShuttingDown)?;
        let (hash, password) = (hash.clone(), password.to_owned());
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|parsed| argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
        .map_err(|e| Error::Internal(format!("password verification failed to run: {e}")))?;
        if !ok {
            return Err(refused());
        }
        let mut verified = state.verified.lock();
        if verified.len() >= VERIFIED_CACHE {
            verified.clear();
        }
        verified.insert(user.to_owned(), digest);
        Ok(Principal::user(user))
    }

    /// Whether `principal` may do `op`: `Forbidden` names the first permission missing.
    pub fn check(&self, principal: &Principal, op: Operation<'_>) -> Result<()> {
        let state = self.current();
        if !state.enabled || state.acls.is_superuser(principal.as_str()) {
            return Ok(());
        }
        op.each_requirement(|resource, action| {
            if state.acls.allows(principal.as_str(), resource, action) {
                return Ok(());
            }
            let resource = match resource {
                Resource::Topic(t) => format!("topic '{t}'"),
                Resource::Group(g) => format!("group '{g}'"),
                Resource::Cluster => "the cluster".to_owned(),
            };
            Err(Error::Forbidden { principal: principal.to_string(), operation: action.name(), resource })
        })
    }

    /// The quotas that apply to `principal`, if any. A reload starts every
    /// budget afresh.
    pub fn quota(&self, principal: &Principal) -> Option<Arc<PrincipalQuota>> {
        let state = self.state.read();
        if state.quotas.is_empty() { None } else { state.quotas.of(principal.as_str()) }
    }

    /// Whether `principal` may do `op`, without saying why not.
    pub fn allows(&self, principal: &Principal, op: Operation<'_>) -> bool {
        self.check(principal, op).is_ok()
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Verifies a JWT against the JWKS: signature, `iss`, `aud`, `exp` and `nbf`
/// (with a small skew), the principal from its claim. A verified token is
/// remembered (by its SHA-256) until it expires, so that a client sending the
/// same token on every request pays for the signature once.
fn verify_jwt(state: &State, token: &str) -> Result<Identity> {
    use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
    let refused = |why: String| Error::Unauthenticated(format!("the JWT is not accepted: {why}"));
    let Some(jwt) = &state.jwt else { return Err(refused("JWTs are not configured".into())) };
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let now = now_secs();
    if let Some(known) = state.tokens.lock().get(&digest).cloned() {
        return match known.expires_at {
            Some(exp) if exp < now => Err(refused("it expired".into())),
            _ => Ok(known),
        };
    }
    let header = decode_header(token).map_err(|e| refused(e.to_string()))?;
    let jwk = match &header.kid {
        Some(kid) => jwt.jwks.find(kid),
        None if jwt.jwks.keys.len() == 1 => jwt.jwks.keys.first(),
        None => None,
    }
    .ok_or_else(|| refused("no key of the JWKS matches its kid".into()))?;
    if let Some(alg) = jwk.common.key_algorithm
        && alg.to_string() != format!("{:?}", header.alg)
    {
        return Err(refused(format!("the key is for {alg}, the token says {:?}", header.alg)));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| refused(e.to_string()))?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[&jwt.issuer]);
    validation.set_audience(&[&jwt.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.validate_nbf = true;
    validation.leeway = JWT_LEEWAY_SECS;
    let data = decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)
        .map_err(|e| refused(e.to_string()))?;
    let name = data
        .claims
        .get(&jwt.principal_claim)
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| refused(format!("it has no string claim '{}'", jwt.principal_claim)))?;
    crate::topic::check_name("principal", name).map_err(refused)?;
    let exp = data.claims.get("exp").and_then(serde_json::Value::as_u64).map(|e| e + JWT_LEEWAY_SECS);
    let identity = Identity { principal: Principal::user(name), expires_at: exp };
    let mut tokens = state.tokens.lock();
    if tokens.len() >= VERIFIED_CACHE {
        tokens.retain(|_, id| id.expires_at.is_some_and(|e| e >= now));
        if tokens.len() >= VERIFIED_CACHE {
            tokens.clear();
        }
    }
    tokens.insert(digest, identity.clone());
    Ok(identity)
}

/// The hex SHA-256 of an API key, as `[[auth.api_keys]] sha256` wants it.
pub fn api_key_digest(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// An Argon2id hash (PHC string) of `password`, with a random salt.
pub fn hash_password(password: &str) -> std::result::Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A new random API key (32 bytes, base64url).
pub fn new_api_key() -> String {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    use base64::Engine;
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AuthSettings {
        AuthSettings {
            api_keys: vec![ApiKey { principal: "alice".into(), sha256: Sha256::digest(b"alice-key").into() }],
            users: vec![User { name: "bob".into(), password_hash: hash_password("bob-pw").unwrap() }],
            ..AuthSettings::default()
        }
    }

    #[tokio::test]
    async fn keys_and_passwords_identify_principals() {
        let s = Security::new(&settings());
        assert!(s.enabled());
        let who = |c: Credentials| {
            let s = &s;
            async move { s.authenticate(&c).await.map(|id| id.principal.to_string()) }
        };
        assert_eq!(who(Credentials::Bearer("alice-key".into())).await.unwrap(), "User:alice");
        assert!(matches!(who(Credentials::Bearer("nope".into())).await, Err(Error::Unauthenticated(_))));
        let bob = || Credentials::Basic { user: "bob".into(), password: "bob-pw".into() };
        assert_eq!(who(bob()).await.unwrap(), "User:bob");
        assert_eq!(who(bob()).await.unwrap(), "User:bob", "the second time from the cache");
        let wrong = Credentials::Basic { user: "bob".into(), password: "guess".into() };
        assert!(matches!(who(wrong).await, Err(Error::Unauthenticated(_))), "a cached user with another password");
        let ghost = Credentials::Basic { user: "ghost".into(), password: "bob-pw".into() };
        assert!(matches!(who(ghost).await, Err(Error::Unauthenticated(_))));
        assert!(matches!(who(Credentials::None).await, Err(Error::Unauthenticated(_))));
        s.reload(&AuthSettings { allow_anonymous: true, ..settings() });
        assert_eq!(who(Credentials::None).await.unwrap(), "User:ANONYMOUS");
        s.reload(&AuthSettings::default());
        assert!(!s.enabled());
        assert_eq!(who(Credentials::Bearer("whatever".into())).await.unwrap(), "User:ANONYMOUS", "auth off");
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let c = Credentials::Basic { user: "bob".into(), password: "hunter2".into() };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credentials::Bearer("tok-123".into())).contains("tok-123"));
        assert_eq!(api_key_digest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_ne!(new_api_key(), new_api_key());
    }
}
