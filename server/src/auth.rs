//! SPEC §16 for the data plane and the read-only admin route: client keys, the admin token, and which listen addresses are allowed.
//!
//! - Client keys come from the variable named by `api_keys_env`
//!   (comma-separated). When any is set, `/v1/*` needs
//!   `Authorization: Bearer <key>` or `x-api-key: <key>`, compared in
//!   constant time. The client's credentials are never forwarded upstream:
//!   adapters build their own requests and only `x-request-id` and
//!   `traceparent` travel with the call.
//! - The admin token comes from `admin_token_env`. With a token, admin
//!   routes need `Authorization: Bearer <token>`; without one they answer
//!   only requests whose `Host` is loopback.
//! - [`check_listen`]: a non-loopback listen address needs an admin token,
//!   and client keys unless `allow_open_proxy = true`.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, header};

use crate::config::ServerConfig;

/// Secrets the server checks requests against.
#[derive(Clone, Default)]
pub struct Credentials {
    client_keys: Vec<String>,
    admin_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client_keys", &self.client_keys.len())
            .field("admin_token", &self.admin_token.is_some())
            .finish()
    }
}

/// What an admin request may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminAccess {
    /// Allowed.
    Granted,
    /// A token is configured and the request lacks it (401).
    Unauthorized,
    /// No token is configured and the request's `Host` is not loopback (403).
    NotLoopback,
}

impl Credentials {
    /// Reads the client keys and admin token through `env`. A variable the
    /// config names explicitly must be set; the default names may be unset.
    pub fn resolve(
        server: &ServerConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let read = |(name, explicit): (&str, bool), key: &str| -> Result<Option<String>, String> {
            match env(name).filter(|v| !v.trim().is_empty()) {
                Some(value) => Ok(Some(value)),
                None if explicit => Err(format!(
                    "server.{key} names the environment variable '{name}', which is not set or empty"
                )),
                None => Ok(None),
            }
        };
        let client_keys = read(server.api_keys_var(), "api_keys_env")?
            .map(|keys| {
                keys.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let admin_token =
            read(server.admin_token_var(), "admin_token_env")?.map(|t| t.trim().to_owned());
        Ok(Self {
            client_keys,
            admin_token,
        })
    }

    /// Credentials given directly (for embedding and tests).
    pub fn new(client_keys: Vec<String>, admin_token: Option<String>) -> Self {
        Self {
            client_keys,
            admin_token,
        }
    }

    /// Whether `/v1/*` needs a client key.
    pub fn client_keys_required(&self) -> bool {
        !self.client_keys.is_empty()
    }

    /// Whether an admin token is configured.
    pub fn has_admin_token(&self) -> bool {
        self.admin_token.is_some()
    }

    /// Every secret value, for redaction.
    pub fn secrets(&self) -> impl Iterator<Item = String> + '_ {
        self.client_keys
            .iter()
            .cloned()
            .chain(self.admin_token.iter().cloned())
    }

    /// Whether the request carries a valid client key (always true when none is configured).
    pub fn client_allowed(&self, headers: &HeaderMap) -> bool {
        if self.client_keys.is_empty() {
            return true;
        }
        let presented = [bearer(headers), header_str(headers, "x-api-key")];
        presented.iter().flatten().any(|given| {
            // Check every key, so timing does not reveal which one matched.
            self.client_keys
                .iter()
                .fold(false, |found, key| constant_time_eq(key, given) | found)
        })
    }

    /// The configured client key the request carries (`None` when it
    /// carries none, or when no keys are configured). Every key is compared,
    /// in constant time, whichever matches.
    pub fn client_key(&self, headers: &HeaderMap) -> Option<&str> {
        let presented = [bearer(headers), header_str(headers, "x-api-key")];
        let mut found = None;
        for given in presented.iter().flatten() {
            for key in &self.client_keys {
                if constant_time_eq(key, given) && found.is_none() {
                    found = Some(key.as_str());
                }
            }
        }
        found
    }

    /// Whether an admin request is allowed.
    pub fn admin_access(&self, headers: &HeaderMap) -> AdminAccess {
        match &self.admin_token {
            Some(token) => {
                if bearer(headers).is_some_and(|given| constant_time_eq(token, given)) {
                    AdminAccess::Granted
                } else {
                    AdminAccess::Unauthorized
                }
            }
            None => {
                if header_str(headers, header::HOST.as_str()).is_some_and(is_loopback_host) {
                    AdminAccess::Granted
                } else {
                    AdminAccess::NotLoopback
                }
            }
        }
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = header_str(headers, header::AUTHORIZATION.as_str())?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Compares without an early exit on the first differing byte.
pub fn constant_time_eq(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(!x);
    }
    diff == 0
}

/// Whether a `Host` header names a loopback host (`localhost`, `127.x`, `[::1]`, any port).
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host,
        }
    };
    if name.eq_ignore_ascii_case("localhost") || name.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses a non-loopback listen address without an admin token, or
/// without client keys unless `allow_open_proxy`.
pub fn check_listen(
    addr: SocketAddr,
    server: &ServerConfig,
    credentials: &Credentials,
) -> Result<(), String> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if !credentials.has_admin_token() {
        let (name, _) = server.admin_token_var();
        return Err(format!(
            "refusing to listen on non-loopback address {addr} without an admin token: set {name} (see server.admin_token_env)"
        ));
    }
    if !credentials.client_keys_required() && !server.allow_open_proxy {
        let (name, _) = server.api_keys_var();
        return Err(format!(
            "refusing to listen on non-loopback address {addr} without client API keys: set {name} (see server.api_keys_env), or set server.allow_open_proxy = true"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn client_keys_by_bearer_or_x_api_key() {
        let creds = Credentials::new(vec!["key-one".into(), "key-two".into()], None);
        assert!(creds.client_allowed(&headers(&[("authorization", "Bearer key-two")])));
        assert!(creds.client_allowed(&headers(&[("x-api-key", "key-one")])));
        assert!(!creds.client_allowed(&headers(&[("authorization", "Bearer key-thr")])));
        assert!(!creds.client_allowed(&headers(&[("authorization", "key-one")])));
        assert!(!creds.client_allowed(&HeaderMap::new()));
        assert!(Credentials::default().client_allowed(&HeaderMap::new()));
    }

    #[test]
    fn client_key_names_the_matching_key() {
        let creds = Credentials::new(vec!["key-one".into(), "key-two".into()], None);
        let key = |pairs: &[(&'static str, &str)]| creds.client_key(&headers(pairs));
        assert_eq!(key(&[("authorization", "Bearer key-two")]), Some("key-two"));
        assert_eq!(key(&[("x-api-key", "key-one")]), Some("key-one"));
        assert_eq!(key(&[("authorization", "Bearer nope")]), None);
        assert_eq!(Credentials::default().client_key(&HeaderMap::new()), None);
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
        assert!(!constant_time_eq("ab", "abc"));
        assert!(!constant_time_eq("", "a"));
        assert!(constant_time_eq("", ""));
    }

    #[test]
    fn admin_needs_the_token_or_a_loopback_host() {
        let with = Credentials::new(vec![], Some("admin-secret".into()));
        assert_eq!(
            with.admin_access(&headers(&[("authorization", "Bearer admin-secret")])),
            AdminAccess::Granted
        );
        assert_eq!(
            with.admin_access(&headers(&[("host", "127.0.0.1:8080")])),
            AdminAccess::Unauthorized
        );
        let without = Credentials::default();
        for host in ["127.0.0.1:8080", "localhost", "[::1]:80", "LOCALHOST:1"] {
            assert_eq!(
                without.admin_access(&headers(&[("host", host)])),
                AdminAccess::Granted,
                "{host}"
            );
        }
        for host in ["example.com", "10.0.0.1:8080", "localhost.evil.com"] {
            assert_eq!(
                without.admin_access(&headers(&[("host", host)])),
                AdminAccess::NotLoopback,
                "{host}"
            );
        }
        assert_eq!(
            without.admin_access(&HeaderMap::new()),
            AdminAccess::NotLoopback
        );
    }

    #[test]
    fn resolve_reads_the_named_variables() {
        let env = |name: &str| match name {
            "SWITCHYARD_API_KEYS" => Some(" a-key , b-key ,".to_owned()),
            "SWITCHYARD_ADMIN_TOKEN" => Some("tok".to_owned()),
            _ => None,
        };
        let creds = Credentials::resolve(&ServerConfig::default(), &env).unwrap();
        assert_eq!(creds.client_keys, vec!["a-key", "b-key"]);
        assert_eq!(creds.admin_token.as_deref(), Some("tok"));
        let none = Credentials::resolve(&ServerConfig::default(), &|_| None).unwrap();
        assert!(!none.client_keys_required() && !none.has_admin_token());
        let explicit = ServerConfig {
            api_keys_env: Some("MY_KEYS".into()),
            ..ServerConfig::default()
        };
        let err = Credentials::resolve(&explicit, &|_| None).unwrap_err();
        assert!(
            err.contains("server.api_keys_env") && err.contains("MY_KEYS"),
            "{err}"
        );
        assert!(!format!("{creds:?}").contains("a-key"));
    }

    #[test]
    fn non_loopback_listen_needs_token_and_keys() {
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let server = ServerConfig::default();
        assert!(check_listen(local, &server, &Credentials::default()).is_ok());
        let err = check_listen(public, &server, &Credentials::default()).unwrap_err();
        assert!(err.contains("admin token"), "{err}");
        let token_only = Credentials::new(vec![], Some("t".into()));
        let err = check_listen(public, &server, &token_only).unwrap_err();
        assert!(err.contains("client API keys"), "{err}");
        let open = ServerConfig {
            allow_open_proxy: true,
            ..ServerConfig::default()
        };
        assert!(check_listen(public, &open, &token_only).is_ok());
        let both = Credentials::new(vec!["k".into()], Some("t".into()));
        assert!(check_listen(public, &server, &both).is_ok());
    }
}
