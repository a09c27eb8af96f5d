//! SPEC §16 rules for provider configs written through the admin API: which key variables and upstream addresses they may use.
//!
//! A provider added (or replaced) at run time must not become a way to
//! read the gateway's environment or reach what sits next to it:
//! - `api_key_env` must be listed in `server.dynamic_key_envs` (an inline
//!   `api_key` is always allowed);
//! - the upstream (`base_url`, else the type's default) must be `https`, or
//!   `http` to a loopback host (`localhost`, `127.0.0.0/8`, `[::1]`);
//! - never a link-local address (`169.254.0.0/16`, `fe80::/10`, IPv4-mapped
//!   forms included) or a cloud metadata endpoint (`169.254.169.254`,
//!   `fd00:ec2::254`, `100.100.100.200`, `metadata.google.internal`, ...),
//!   whether written as a literal (in any of the numeric forms URL parsers
//!   accept: `http://2852039166/` is `169.254.169.254`) or as a host name
//!   that resolves to one (checked once, at write time; a name that does not
//!   resolve then is allowed);
//! - when `server.upstream_allowlist` is set, the host must match one of
//!   its entries (`api.example.com`, or `*.example.com` for subdomains).
//!
//! A replacement (`PUT`) that keeps a provider's type and upstream may keep
//! what it already had: its `api_key_env` (even one not allowlisted: file-
//! defined providers use any variable), its inline key (sent back as
//! `"[redacted]"`) and redacted header values. Changing the upstream needs
//! the key to be given again, so a key can never be pointed at a new host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use switchyard_core::config::REDACTED;
use switchyard_core::{ConfigError, ConfigIssue, ProviderConfig};
use switchyard_providers::factory::{ANTHROPIC_BASE_URL, OPENAI_BASE_URL};
use url::{Host, Url};

/// Host names of cloud metadata services.
const METADATA_HOSTS: [&str; 6] = [
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.com",
];

/// How long the write-time DNS check may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The admin-write rules in force (from the last good `[server]` section).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `server.dynamic_key_envs`.
    pub dynamic_key_envs: Vec<String>,
    /// `server.upstream_allowlist`.
    pub upstream_allowlist: Vec<String>,
}

impl Policy {
    /// The rules of a `[server]` section.
    pub fn from_server(server: &crate::config::ServerConfig) -> Self {
        Self {
            dynamic_key_envs: server.dynamic_key_envs.clone(),
            upstream_allowlist: server.upstream_allowlist.clone(),
        }
    }

    /// Resolves `"[redacted]"` placeholders of `config` from `previous`
    /// (a `PUT` round trip), then checks `config` against the rules.
    /// Issues name `provider.<field>`.
    pub async fn admit(
        &self,
        config: &mut ProviderConfig,
        previous: Option<&ProviderConfig>,
    ) -> Result<(), ConfigError> {
        let same_upstream = previous
            .is_some_and(|p| p.kind == config.kind && effective_url(p) == effective_url(config));
        let mut issues = Vec::new();
        let mut push = |field: &str, message: String| {
            issues.push(ConfigIssue {
                path: format!("provider.{field}"),
                message,
            });
        };
        keep_redacted(config, previous, same_upstream, &mut push);
        if let Some(name) = &config.api_key_env {
            let kept = same_upstream
                && previous.is_some_and(|p| p.api_key_env.as_deref() == Some(name.as_str()));
            if !kept && !self.dynamic_key_envs.iter().any(|n| n == name) {
                let allowed = if self.dynamic_key_envs.is_empty() {
                    "none is allowed: server.dynamic_key_envs is empty".to_owned()
                } else {
                    format!("allowed: {}", self.dynamic_key_envs.join(", "))
                };
                push(
                    "api_key_env",
                    format!(
                        "'{name}' is not in server.dynamic_key_envs ({allowed}); name an allowed variable or send api_key"
                    ),
                );
            }
        }
        if !same_upstream {
            if let Some(url) = effective_url(config) {
                let field = if config.base_url.is_some() {
                    "base_url"
                } else {
                    "type"
                };
                if let Err(message) = self.check_url(&url).await {
                    push(field, message);
                }
            }
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { issues })
        }
    }

    /// Checks one upstream URL against the rules (DNS included).
    pub async fn check_url(&self, url: &str) -> Result<(), String> {
        let (host, port) = self.check_url_static(url)?;
        if let Host::Domain(name) = &host {
            let lookup = tokio::net::lookup_host((name.as_str(), port));
            if let Ok(Ok(addrs)) = tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                for addr in addrs {
                    if let Some(why) = forbidden_ip(addr.ip()) {
                        return Err(format!(
                            "'{url}': host '{name}' resolves to {}, a {why} address",
                            addr.ip()
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The checks that need no DNS: scheme, literal addresses, names, allowlist.
    pub fn check_url_static(&self, url: &str) -> Result<(Host<String>, u16), String> {
        let parsed = Url::parse(url).map_err(|e| format!("'{url}' is not a valid URL: {e}"))?;
        let host = parsed
            .host()
            .map(|h| h.to_owned())
            .ok_or_else(|| format!("'{url}' has no host"))?;
        let port = parsed.port_or_known_default().unwrap_or(443);
        let loopback = match &host {
            Host::Domain(name) => {
                let name = normalize(name);
                if METADATA_HOSTS.contains(&name.as_str()) {
                    return Err(format!(
                        "'{url}' names a cloud metadata service, which is never allowed"
                    ));
                }
                name == "localhost" || name.ends_with(".localhost")
            }
            Host::Ipv4(ip) => check_ip(url, IpAddr::V4(*ip))?,
            Host::Ipv6(ip) => check_ip(url, IpAddr::V6(*ip))?,
        };
        match parsed.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(format!(
                    "'{url}' must use https (plain http is allowed only to a loopback host)"
                ));
            }
            other => return Err(format!("'{url}': scheme '{other}' is not allowed")),
        }
        if !self.upstream_allowlist.is_empty() && !self.allows(&host) {
            return Err(format!(
                "host '{host}' is not in server.upstream_allowlist ({})",
                self.upstream_allowlist.join(", ")
            ));
        }
        Ok((host, port))
    }

    fn allows(&self, host: &Host<String>) -> bool {
        let name = match host {
            Host::Domain(name) => normalize(name),
            Host::Ipv4(ip) => ip.to_string(),
            Host::Ipv6(ip) => ip.to_string(),
        };
        self.upstream_allowlist.iter().any(|entry| {
            let entry = normalize(entry.trim_start_matches('[').trim_end_matches(']'));
            match entry.strip_prefix("*.") {
                Some(suffix) => name
                    .strip_suffix(suffix)
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                None => entry == name || parse_ip(&entry).is_some_and(|ip| ip.to_string() == name),
            }
        })
    }
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    text.parse().ok()
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Checks one entry of `server.upstream_allowlist`: a host name, an IP
/// address, or `*.` and a domain. No scheme, port or path.
pub fn check_allowlist_entry(entry: &str) -> Result<(), String> {
    let bare = entry.trim_start_matches('[').trim_end_matches(']');
    if parse_ip(bare).is_some() {
        return Ok(());
    }
    let name = entry.strip_prefix("*.").unwrap_or(entry);
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "'{entry}' is not a host name, an IP address or '*.' and a domain (no scheme, port or path)"
        ))
    }
}

/// The upstream URL a provider would call: `base_url`, else its type's default.
pub fn effective_url(config: &ProviderConfig) -> Option<String> {
    match (&config.base_url, config.kind.as_str()) {
        (Some(url), _) => Some(url.clone()),
        (None, "openai") => Some(OPENAI_BASE_URL.to_owned()),
        (None, "anthropic") => Some(ANTHROPIC_BASE_URL.to_owned()),
        (None, _) => None,
    }
}

/// `Ok(is_loopback)` for an allowed literal address.
fn check_ip(url: &str, ip: IpAddr) -> Result<bool, String> {
    if let Some(why) = forbidden_ip(ip) {
        return Err(format!(
            "'{url}' is a {why} address, which is never allowed"
        ));
    }
    Ok(ip.is_loopback())
}

/// Why an address may never be an upstream: link-local, cloud metadata, unspecified.
pub fn forbidden_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let segments = v6.segments();
            if segments[..6].iter().all(|s| *s == 0) && !v6.is_loopback() && !v6.is_unspecified() {
                // IPv4-compatible (::a.b.c.d).
                if let Some(v4) = v6.to_ipv4() {
                    if let Some(why) = forbidden_v4(v4) {
                        return Some(why);
                    }
                }
            }
            if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("cloud metadata")
            } else if segments[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("unspecified or multicast")
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(v4: Ipv4Addr) -> Option<&'static str> {
    if v4 == Ipv4Addr::new(169, 254, 169, 254) || v4 == Ipv4Addr::new(100, 100, 100, 200) {
        Some("cloud metadata")
    } else if v4.is_link_local() {
        Some("link-local")
    } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
        Some("unspecified, broadcast or multicast")
    } else {
        None
    }
}

/// Header names whose values are treated as secrets in admin output.
pub fn is_sensitive_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "auth",
        "key",
        "token",
        "secret",
        "password",
        "cookie",
        "signature",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// Replaces `"[redacted]"` in `config` (inline key, sensitive header
/// values) with what `previous` holds, when the upstream is unchanged.
fn keep_redacted(
    config: &mut ProviderConfig,
    previous: Option<&ProviderConfig>,
    same_upstream: bool,
    push: &mut impl FnMut(&str, String),
) {
    if config
        .api_key
        .as_ref()
        .is_some_and(|k| k.expose() == REDACTED)
    {
        match previous.and_then(|p| p.api_key.clone()) {
            Some(key) if same_upstream => config.api_key = Some(key),
            Some(_) => push(
                "api_key",
                format!(
                    "'{REDACTED}' keeps the current key only while type and base_url stay the same; send the key itself"
                ),
            ),
            None => push(
                "api_key",
                format!("'{REDACTED}' keeps the current key, but the provider has no inline key"),
            ),
        }
    }
    let redacted: Vec<String> = config
        .headers
        .iter()
        .filter(|(_, v)| v.as_str() == REDACTED)
        .map(|(k, _)| k.clone())
        .collect();
    for name in redacted {
        let kept = previous
            .and_then(|p| p.headers.get(&name))
            .filter(|_| same_upstream)
            .cloned();
        match kept {
            Some(value) => {
                config.headers.insert(name, value);
            }
            None => push(
                &format!("headers.{name}"),
                format!(
                    "'{REDACTED}' keeps the current value only while type and base_url stay the same and the header exists"
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use switchyard_core::Secret;

    use super::*;

    fn policy(envs: &[&str], hosts: &[&str]) -> Policy {
        Policy {
            dynamic_key_envs: envs.iter().map(|s| (*s).to_owned()).collect(),
            upstream_allowlist: hosts.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn compatible(url: &str) -> ProviderConfig {
        let mut config = ProviderConfig::new("p", "openai_compatible", ["m"]);
        config.base_url = Some(url.to_owned());
        config
    }

    #[test]
    fn urls() {
        let open = policy(&[], &[]);
        for ok in [
            "https://api.openai.com/v1",
            "http://127.0.0.1:8000/v1",
            "http://localhost:1234",
            "http://[::1]:80/v1",
            "https://10.0.0.5/v1",
            "http://127.1/v1",
        ] {
            assert!(open.check_url_static(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("http://169.254.169.254/latest", "metadata"),
            ("https://169.254.169.254/", "metadata"),
            ("http://2852039166/", "metadata"),
            ("https://0xA9FEA9FE/", "metadata"),
            ("https://169.254.10.1/", "link-local"),
            ("https://[fe80::1]/", "link-local"),
            ("https://[::ffff:169.254.169.254]/", "metadata"),
            ("https://[fd00:ec2::254]/", "metadata"),
            (
                "https://metadata.google.internal/computeMetadata",
                "metadata",
            ),
            ("https://METADATA.google.internal./", "metadata"),
            ("http://example.com/v1", "https"),
            ("http://10.0.0.5/v1", "https"),
            ("ftp://example.com/", "scheme"),
            ("https://0.0.0.0/", "unspecified"),
            ("not a url", "valid URL"),
        ] {
            let error = open.check_url_static(bad).unwrap_err();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn the_allowlist_applies_when_set() {
        let listed = policy(&[], &["api.openai.com", "*.example.com", "127.0.0.1"]);
        assert!(listed.check_url_static("https://api.openai.com/v1").is_ok());
        assert!(listed.check_url_static("https://a.example.com/v1").is_ok());
        assert!(
            listed
                .check_url_static("https://b.a.example.com/v1")
                .is_ok()
        );
        assert!(listed.check_url_static("http://127.0.0.1:9/v1").is_ok());
        for bad in [
            "https://example.com/",
            "https://evilexample.com/",
            "https://api.anthropic.com/v1",
            "http://localhost:9/v1",
        ] {
            let error = listed.check_url_static(bad).unwrap_err();
            assert!(error.contains("upstream_allowlist"), "{bad}: {error}");
        }
        assert!(check_allowlist_entry("api.example.com").is_ok());
        assert!(check_allowlist_entry("*.example.com").is_ok());
        assert!(check_allowlist_entry("::1").is_ok());
        assert!(check_allowlist_entry("https://x.com").is_err());
        assert!(check_allowlist_entry("x.com:443").is_err());
        assert!(check_allowlist_entry("").is_err());
    }

    #[tokio::test]
    async fn keys_come_from_allowlisted_variables_or_inline() {
        let rules = policy(&["OK_KEY"], &[]);
        let mut config = compatible("https://api.example.com/v1");
        config.api_key_env = Some("OK_KEY".into());
        assert!(rules.admit(&mut config, None).await.is_ok());
        config.api_key_env = Some("AWS_SECRET_ACCESS_KEY".into());
        let error = rules.admit(&mut config, None).await.unwrap_err();
        assert_eq!(error.issues[0].path, "provider.api_key_env");
        config.api_key_env = None;
        config.api_key = Some(Secret::new("sk-inline-000000"));
        assert!(rules.admit(&mut config, None).await.is_ok());
    }

    #[tokio::test]
    async fn a_replacement_keeps_what_it_had_only_on_the_same_upstream() {
        let rules = policy(&[], &[]);
        let mut previous = compatible("http://10.1.2.3:8000/v1");
        previous.api_key_env = Some("FILE_ONLY_KEY".into());
        previous
            .headers
            .insert("x-api-key".into(), "hdr-secret-123".into());
        let mut same = previous.clone();
        same.enabled = false;
        same.headers.insert("x-api-key".into(), REDACTED.into());
        rules.admit(&mut same, Some(&previous)).await.unwrap();
        assert_eq!(same.headers["x-api-key"], "hdr-secret-123");

        let mut moved = previous.clone();
        moved.base_url = Some("https://attacker.example/v1".into());
        moved.headers.insert("x-api-key".into(), REDACTED.into());
        let error = rules.admit(&mut moved, Some(&previous)).await.unwrap_err();
        let paths: Vec<&str> = error.issues.iter().map(|i| i.path.as_str()).collect();
        assert!(paths.contains(&"provider.api_key_env"), "{paths:?}");
        assert!(paths.contains(&"provider.headers.x-api-key"), "{paths:?}");

        let mut inline = compatible("https://api.example.com/v1");
        inline.api_key = Some(Secret::new("sk-inline-111111"));
        let mut round_trip = inline.clone();
        round_trip.api_key = Some(Secret::new(REDACTED));
        rules.admit(&mut round_trip, Some(&inline)).await.unwrap();
        assert_eq!(round_trip.api_key.unwrap().expose(), "sk-inline-111111");
        let mut elsewhere = inline.clone();
        elsewhere.api_key = Some(Secret::new(REDACTED));
        elsewhere.base_url = Some("https://other.example.com/v1".into());
        let error = rules
            .admit(&mut elsewhere, Some(&inline))
            .await
            .unwrap_err();
        assert_eq!(error.issues[0].path, "provider.api_key");
    }

    #[tokio::test]
    async fn default_urls_are_checked_against_the_allowlist() {
        let rules = policy(&["K"], &["127.0.0.1"]);
        let mut openai = ProviderConfig::new("o", "openai", ["m"]);
        openai.api_key_env = Some("K".into());
        let error = rules.admit(&mut openai, None).await.unwrap_err();
        assert_eq!(error.issues[0].path, "provider.type");
        let mut mock = ProviderConfig::new("m", "mock", ["m"]);
        assert!(rules.admit(&mut mock, None).await.is_ok());
    }

    #[test]
    fn sensitive_headers() {
        for name in ["Authorization", "x-api-key", "X-Goog-Api-Key", "cookie"] {
            assert!(is_sensitive_header(name), "{name}");
        }
        assert!(!is_sensitive_header("OpenAI-Organization"));
    }
}
