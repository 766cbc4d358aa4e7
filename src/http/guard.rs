//! Browser safety, always on (SPEC §8): what keeps a web page the user happens to
//! visit from using a gregor on their machine.
//!
//! - A WebSocket upgrade or a state-changing request (POST, PUT, PATCH, DELETE)
//!   whose `Origin` is neither this server's own nor in `http.allowed_origins` gets
//!   `403 origin_not_allowed`. Requests without `Origin` (curl, servers) pass.
//! - A state-changing request with a body must say it is JSON (`application/json`
//!   or `application/*+json`), else `415 unsupported_media_type`: a page cannot
//!   send a `text/plain` or form POST, which browsers send without a CORS preflight.
//! - Bound to a loopback address, a `Host` other than `localhost`, `127.0.0.1` or
//!   `[::1]` (with the bound port), or one listed in `http.allowed_hosts`, gets
//!   `403 host_not_allowed`: DNS rebinding cannot point a foreign name at us.
//!
//! CORS answers (preflight included) are given only for `http.allowed_origins`,
//! by tower-http's `CorsLayer` around this guard. The check runs in `health::edge`,
//! the middleware every request passes.

use std::collections::BTreeSet;

use axum::http::{HeaderMap, HeaderValue, Method, header};

use super::error::ApiError;

/// What the guard accepts; built once from the configuration.
#[derive(Debug, Clone)]
pub struct BrowserGuard {
    /// Normalized origins (`http://host:port`) that may call the API from a page.
    allowed_origins: BTreeSet<String>,
    /// On a loopback address, every `Host` value accepted (`name:port`, and `name`
    /// alone on port 80); `None` when not on loopback (no `Host` check).
    loopback_hosts: Option<Vec<String>>,
    /// The bound port, for the refusal's message.
    port: u16,
    /// `http` or `https`: what this server's own origin starts with.
    scheme: &'static str,
}

impl BrowserGuard {
    /// `allowed_origins` must already be valid (see [`normalize_origin`]).
    pub fn new(
        allowed_origins: &[String],
        allowed_hosts: &[String],
        bound: std::net::SocketAddr,
        scheme: &'static str,
    ) -> BrowserGuard {
        let port = bound.port();
        let loopback_hosts = bound.ip().is_loopback().then(|| {
            let names = ["localhost", "127.0.0.1", "[::1]"].into_iter().chain(allowed_hosts.iter().map(String::as_str));
            let mut accepted = Vec::new();
            for name in names {
                accepted.push(format!("{name}:{port}"));
                if port == 80 {
                    accepted.push(name.to_owned());
                }
            }
            accepted
        });
        BrowserGuard {
            allowed_origins: allowed_origins.iter().filter_map(|o| normalize_origin(o).ok()).collect(),
            loopback_hosts,
            port,
            scheme,
        }
    }

    /// The configured origins, for the CORS layer.
    pub fn cors_origins(&self) -> Vec<HeaderValue> {
        self.allowed_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect()
    }

    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        // One pass over the headers rather than a lookup for each: this runs on every request.
        let (mut host, mut origin, mut upgrade, mut content_type, mut body) = (None, None, false, None, false);
        for (name, value) in headers {
            if name == header::HOST {
                host = value.to_str().ok();
            } else if name == header::CONTENT_LENGTH {
                body |= value.as_bytes().iter().any(|b| (b'1'..=b'9').contains(b));
            } else if name == header::CONTENT_TYPE {
                content_type = Some(value);
            } else if name == header::ORIGIN {
                origin = Some(value.to_str().unwrap_or(""));
            } else if name == header::UPGRADE {
                upgrade = value.as_bytes().eq_ignore_ascii_case(b"websocket");
            } else if name == header::TRANSFER_ENCODING {
                body = true;
            }
        }
        if let (Some(accepted), Some(host)) = (&self.loopback_hosts, host)
            && !accepted.iter().any(|a| a.eq_ignore_ascii_case(host))
        {
            return Err(ApiError::HostNotAllowed(format!(
                "this server listens on a loopback address and answers only to localhost, 127.0.0.1 or [::1] \
                 (port {}), not to Host '{host}'; add the name to http.allowed_hosts to allow it",
                self.port
            )));
        }
        let changes_state = matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
        if (changes_state || upgrade)
            && let Some(origin) = origin
            && !self.origin_allowed(origin, host)
        {
            return Err(ApiError::OriginNotAllowed(format!(
                "requests from pages at origin '{origin}' are not allowed; add it to http.allowed_origins"
            )));
        }
        if changes_state && body && !is_json(content_type) {
            let given = content_type.and_then(|c| c.to_str().ok()).unwrap_or("none");
            return Err(ApiError::UnsupportedMediaType(format!(
                "request bodies are JSON: send Content-Type: application/json (or application/*+json), not '{given}'"
            )));
        }
        Ok(())
    }

    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let Ok(origin) = normalize_origin(origin) else { return false };
        if self.allowed_origins.contains(&origin) {
            return true;
        }
        // Same origin: the page was served by this server, under the Host it used.
        host.and_then(|h| normalize_origin(&format!("{}://{h}", self.scheme)).ok()).is_some_and(|own| own == origin)
    }
}

/// `host[:port]` → (host, port): `None` when absent, `Some(None)` when not a number.
fn split_host_port(host: &str) -> (&str, Option<Option<u16>>) {
    let split = if host.starts_with('[') {
        // [v6]:port
        host.find(']').map(|end| (&host[..=end], host[end + 1..].strip_prefix(':')))
    } else {
        Some(match host.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        })
    };
    match split {
        Some((name, Some(port))) => (name, Some(port.parse().ok())),
        Some((name, None)) => (name, None),
        None => (host, Some(None)),
    }
}

/// An origin as browsers send it (`scheme://host[:port]`), lowercased, with its
/// default port made explicit, so that equal origins compare equal.
pub fn normalize_origin(origin: &str) -> Result<String, String> {
    let bad = || format!("'{origin}' is not an origin such as http://localhost:3000");
    let (scheme, rest) = origin.split_once("://").ok_or_else(bad)?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return Err(bad()),
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(bad());
    }
    let (name, port) = split_host_port(rest);
    let port = match port {
        None => default_port,
        Some(Some(p)) => p,
        Some(None) => return Err(bad()),
    };
    if name.is_empty() {
        return Err(bad());
    }
    Ok(format!("{scheme}://{}:{port}", name.to_ascii_lowercase()))
}

/// `application/json` or `application/<anything>+json`, with any parameters.
/// Compared in place, without allocating: every write passes here.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(ct) = content_type else { return false };
    let bytes = ct.as_bytes();
    let essence = bytes.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
    let Some(sub) = essence.get(..12).filter(|t| t.eq_ignore_ascii_case(b"application/")).and(essence.get(12..)) else {
        return false;
    };
    sub.eq_ignore_ascii_case(b"json") || sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case(b"+json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn json_media_types() {
        let yes =
            ["application/json", "APPLICATION/JSON", "application/json; charset=utf-8", "application/problem+json"];
        for ct in yes {
            assert!(is_json(Some(&HeaderValue::from_static(ct))), "{ct}");
        }
        let no = [
            "text/json",
            "application/jsonx",
            "application/x-json",
            "application/+json",
            "application",
            "",
            "text/plain",
        ];
        for ct in no {
            assert!(!is_json(Some(&HeaderValue::from_static(ct))), "{ct}");
        }
        assert!(!is_json(None));
    }

    #[test]
    fn origins_normalize_and_refuse_what_is_not_an_origin() {
        assert_eq!(normalize_origin("HTTP://LocalHost").unwrap(), "http://localhost:80");
        assert_eq!(normalize_origin("https://a.example:8443").unwrap(), "https://a.example:8443");
        assert_eq!(normalize_origin("http://[::1]:8080").unwrap(), "http://[::1]:8080");
        for bad in ["null", "localhost:3000", "ftp://x", "http://", "http://a/path", "http://a:port", "http://u@a"] {
            assert!(normalize_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_guard_refuses_foreign_origins_hosts_and_media_types() {
        let bound = "127.0.0.1:8080".parse().unwrap();
        let g = BrowserGuard::new(&["http://app.example:3000".into()], &["gregor.test".into()], bound, "http");
        let ok = |m: Method, h: &[(&'static str, &str)]| g.check(&m, &headers(h)).map_err(|e| e.code().as_str());
        let json = ("content-type", "application/json");
        let body = ("content-length", "2");
        let host = ("host", "127.0.0.1:8080");
        assert_eq!(ok(Method::POST, &[host, json, body]), Ok(()), "curl: no Origin");
        assert_eq!(ok(Method::POST, &[host, json, body, ("origin", "http://127.0.0.1:8080")]), Ok(()), "same origin");
        assert_eq!(ok(Method::POST, &[host, json, body, ("origin", "http://app.example:3000")]), Ok(()), "allowed");
        assert_eq!(ok(Method::POST, &[host, json, body, ("origin", "http://evil.example")]), Err("origin_not_allowed"));
        assert_eq!(ok(Method::DELETE, &[host, ("origin", "null")]), Err("origin_not_allowed"));
        assert_eq!(
            ok(Method::GET, &[host, ("upgrade", "websocket"), ("origin", "http://evil.example")]),
            Err("origin_not_allowed")
        );
        assert_eq!(ok(Method::GET, &[host, ("origin", "http://evil.example")]), Ok(()), "reads are not refused");
        assert_eq!(ok(Method::POST, &[host, ("content-type", "text/plain"), body]), Err("unsupported_media_type"));
        assert_eq!(ok(Method::POST, &[host, body]), Err("unsupported_media_type"), "no content type");
        assert_eq!(ok(Method::POST, &[host, ("transfer-encoding", "chunked")]), Err("unsupported_media_type"));
        assert_eq!(ok(Method::POST, &[host]), Ok(()), "no body, no media type needed");
        assert_eq!(
            ok(Method::POST, &[host, body, ("content-type", "application/vnd.schemaregistry.v1+json; charset=utf-8")]),
            Ok(())
        );
        assert_eq!(ok(Method::GET, &[("host", "evil.example:8080")]), Err("host_not_allowed"));
        assert_eq!(ok(Method::GET, &[("host", "localhost:9999")]), Err("host_not_allowed"), "another port");
        assert_eq!(ok(Method::GET, &[("host", "localhost")]), Err("host_not_allowed"), "port 80 implied");
        for fine in ["localhost:8080", "LOCALHOST:8080", "[::1]:8080", "gregor.test:8080"] {
            assert_eq!(ok(Method::GET, &[("host", fine)]), Ok(()), "{fine}");
        }
        let public = BrowserGuard::new(&[], &[], "0.0.0.0:8080".parse().unwrap(), "https");
        assert!(public.check(&Method::GET, &headers(&[("host", "gregor.example.com")])).is_ok(), "not on loopback");
    }
}
