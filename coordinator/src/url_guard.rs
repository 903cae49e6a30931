//! Guarding source/target site URLs against server-side request forgery: http(s) only, no
//! credentials in the URL, and no host that resolves to loopback, link-local (cloud metadata),
//! private, shared (CGNAT), multicast, unspecified, documentation/benchmark or other internal
//! ranges (IPv4-mapped and embedded IPv4 in IPv6 included) — unless an operator allow-list names
//! the host. [`UrlPolicy::check`] validates a request's URL after DNS resolution;
//! [`UrlPolicy::guard_client`] makes a reqwest client re-check every connection (its resolver
//! filters addresses) and every redirect.

use async_trait::async_trait;
use reqwest::Url;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// Most redirects a guarded client follows.
pub const MAX_REDIRECTS: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{field} is not a valid URL: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{field} must be an http:// or https:// URL, not {scheme}://")]
    Scheme { field: String, scheme: String },
    #[error("{field} host {host:?} does not resolve: {reason}")]
    Unresolvable {
        field: String,
        host: String,
        reason: String,
    },
    #[error("{field} host {host:?} resolves to {ip} ({range}); internal addresses are refused unless the operator allow-lists the host")]
    Forbidden {
        field: String,
        host: String,
        ip: IpAddr,
        range: &'static str,
    },
}

impl UrlError {
    /// The API error code for this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            UrlError::Forbidden { .. } => clonepool_common::api::codes::FORBIDDEN_URL,
            _ => clonepool_common::api::codes::INVALID_URL,
        }
    }
}

/// Why `ip` may not be contacted, or `None` when it is a public unicast address.
pub fn forbidden_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 8, "unspecified / this network"),
        ([10, 0, 0, 0], 8, "private"),
        ([100, 64, 0, 0], 10, "shared address space (CGNAT)"),
        ([127, 0, 0, 0], 8, "loopback"),
        ([169, 254, 0, 0], 16, "link-local / cloud metadata"),
        ([172, 16, 0, 0], 12, "private"),
        ([192, 0, 0, 0], 24, "IETF protocol assignments"),
        ([192, 0, 2, 0], 24, "documentation"),
        ([192, 88, 99, 0], 24, "6to4 relay anycast"),
        ([192, 168, 0, 0], 16, "private"),
        ([198, 18, 0, 0], 15, "benchmarking"),
        ([198, 51, 100, 0], 24, "documentation"),
        ([203, 0, 113, 0], 24, "documentation"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([240, 0, 0, 0], 4, "reserved / broadcast"),
    ];
    RANGES
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - prefix)
    };
    (u128::from(ip) & mask) == (u128::from(net) & mask)
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    let bits = u128::from(ip);
    // IPv4-mapped (::ffff:a.b.c.d) and the deprecated IPv4-compatible (::a.b.c.d) forms.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4).or(None);
    }
    if bits >> 32 == 0 {
        return forbidden_v4(Ipv4Addr::from(bits as u32)).or(Some("IPv4-compatible IPv6"));
    }
    // IPv4-translated (::ffff:0:a.b.c.d, RFC 2765): judge the embedded IPv4 address too.
    if in_v6(ip, Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0), 96) {
        return forbidden_v4(Ipv4Addr::from(bits as u32));
    }
    // NAT64 well-known prefix: judge the embedded IPv4 address.
    if in_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        return forbidden_v4(Ipv4Addr::from(bits as u32));
    }
    // 6to4: the IPv4 address sits in bits 16..48.
    if in_v6(ip, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        return forbidden_v4(Ipv4Addr::from((bits >> 80) as u32));
    }
    let ranges: &[(Ipv6Addr, u32, &'static str)] = &[
        (
            Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
            48,
            "local-use NAT64",
        ),
        (
            Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
            64,
            "discard-only",
        ),
        (
            Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
            23,
            "IETF special purpose (Teredo, benchmarking)",
        ),
        (
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
            32,
            "documentation",
        ),
        (
            Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
            7,
            "unique local (private)",
        ),
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
        (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, "site-local"),
        (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
    ];
    ranges
        .iter()
        .find(|(net, prefix, _)| in_v6(ip, *net, *prefix))
        .map(|(_, _, why)| *why)
}

/// Name resolution, behind a seam so tests can answer without DNS.
#[async_trait]
pub trait Lookup: Send + Sync + 'static {
    async fn lookup(&self, host: &str) -> std::io::Result<Vec<IpAddr>>;
}

/// The system resolver (getaddrinfo through tokio).
pub struct SystemLookup;

#[async_trait]
impl Lookup for SystemLookup {
    async fn lookup(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        Ok(tokio::net::lookup_host((host, 0))
            .await?
            .map(|addr| addr.ip())
            .collect())
    }
}

/// The operator's allow-list and the checks built on it.
#[derive(Debug, Clone, Default)]
pub struct UrlPolicy {
    exact: Vec<String>,
    suffixes: Vec<String>,
    /// Refuse URLs whose host does not resolve at validation time. Off by default: such a URL
    /// cannot reach anything, and every fetch is re-checked by [`UrlPolicy::guard_client`].
    reject_unresolvable: bool,
}

impl UrlPolicy {
    /// `allow_hosts`: exact host names or IP literals, or `*.suffix` for a domain's subdomains.
    pub fn new(allow_hosts: &[String]) -> Self {
        let mut policy = UrlPolicy::default();
        for host in allow_hosts {
            let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            if host.is_empty() {
                continue;
            }
            match host.strip_prefix("*.") {
                Some(suffix) => policy.suffixes.push(format!(".{suffix}")),
                None => policy.exact.push(host),
            }
        }
        policy
    }

    /// Also refuse hosts that do not resolve (see the field).
    pub fn rejecting_unresolvable(mut self, reject: bool) -> Self {
        self.reject_unresolvable = reject;
        self
    }

    /// True when the operator allow-listed `host`.
    pub fn is_allowed(&self, host: &str) -> bool {
        let host = host
            .trim_end_matches('.')
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.exact.contains(&host) || self.suffixes.iter().any(|s| host.ends_with(s))
    }

    /// Syntax checks: a URL of at most [`MAX_URL_LEN`] characters, http(s), with a host and no
    /// credentials. IP-literal hosts are judged here too (they need no resolution).
    pub fn parse(&self, field: &str, raw: &str) -> Result<Url, UrlError> {
        let invalid = |reason: &str| UrlError::Invalid {
            field: field.to_string(),
            reason: reason.to_string(),
        };
        if raw.len() > MAX_URL_LEN {
            return Err(invalid(&format!("longer than {MAX_URL_LEN} characters")));
        }
        let url = Url::parse(raw.trim()).map_err(|err| invalid(&err.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UrlError::Scheme {
                field: field.to_string(),
                scheme: url.scheme().to_string(),
            });
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "it must not carry credentials; send them in the username/password fields",
            ));
        }
        let host = url.host_str().ok_or_else(|| invalid("it has no host"))?;
        if let Some(ip) = ip_literal(host) {
            self.judge(field, host, &[ip])?;
        }
        Ok(url)
    }

    fn judge(&self, field: &str, host: &str, ips: &[IpAddr]) -> Result<(), UrlError> {
        if self.is_allowed(host) {
            return Ok(());
        }
        for ip in ips {
            if let Some(range) = forbidden_range(*ip) {
                return Err(UrlError::Forbidden {
                    field: field.to_string(),
                    host: host.to_string(),
                    ip: *ip,
                    range,
                });
            }
        }
        Ok(())
    }

    /// Full check: syntax, then (unless allow-listed) resolution within `timeout`, refusing the
    /// URL when *any* resolved address is internal.
    pub async fn check(
        &self,
        field: &str,
        raw: &str,
        lookup: &dyn Lookup,
        timeout: Duration,
    ) -> Result<Url, UrlError> {
        let url = self.parse(field, raw)?;
        let host = url.host_str().unwrap_or_default().to_string();
        if self.is_allowed(&host) || ip_literal(&host).is_some() {
            return Ok(url);
        }
        let unresolvable = |reason: String| UrlError::Unresolvable {
            field: field.to_string(),
            host: host.clone(),
            reason,
        };
        let resolved = match tokio::time::timeout(timeout, lookup.lookup(&host)).await {
            Err(_) => Err(unresolvable(format!(
                "no answer within {} ms",
                timeout.as_millis()
            ))),
            Ok(Err(err)) => Err(unresolvable(err.to_string())),
            Ok(Ok(ips)) if ips.is_empty() => Err(unresolvable("no addresses".into())),
            Ok(Ok(ips)) => Ok(ips),
        };
        let ips = match resolved {
            Ok(ips) => ips,
            Err(err) if self.reject_unresolvable => return Err(err),
            Err(err) => {
                // Nothing to connect to now; a later fetch resolves (and is checked) again.
                tracing::debug!(%err, "accepting a URL whose host does not resolve yet");
                return Ok(url);
            }
        };
        self.judge(field, &host, &ips)?;
        Ok(url)
    }

    /// Makes `builder` safe for fetching user-given URLs: every host name is resolved through
    /// a resolver that drops internal addresses (so DNS rebinding and redirects to internal
    /// names fail to connect), and every redirect is re-checked (scheme, credentials,
    /// IP-literal hosts) and limited to [`MAX_REDIRECTS`]. Callers still [`UrlPolicy::parse`]
    /// the first URL.
    pub fn guard_client(
        self: &Arc<Self>,
        builder: reqwest::ClientBuilder,
        lookup: Arc<dyn Lookup>,
    ) -> reqwest::ClientBuilder {
        let policy = self.clone();
        let redirect_policy = self.clone();
        // No proxy: through one, only the proxy's host would be resolved (and checked).
        builder
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver { policy, lookup }))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
                }
                match redirect_policy.parse("redirect", attempt.url().as_str()) {
                    Ok(_) => attempt.follow(),
                    Err(err) => attempt.error(err),
                }
            }))
    }
}

fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok()
}

/// A reqwest resolver that refuses names resolving to internal addresses.
struct GuardedResolver {
    policy: Arc<UrlPolicy>,
    lookup: Arc<dyn Lookup>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let lookup = self.lookup.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let ips = lookup.lookup(&host).await?;
            policy.judge("url", &host, &ips)?;
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct FakeLookup(HashMap<&'static str, Vec<IpAddr>>);

    #[async_trait]
    impl Lookup for FakeLookup {
        async fn lookup(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
            self.0
                .get(host)
                .cloned()
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such host"))
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_pass() {
        let table: &[(&str, bool)] = &[
            ("127.0.0.1", false),
            ("127.255.0.9", false),
            ("0.0.0.0", false),
            ("10.1.2.3", false),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("192.168.1.1", false),
            ("169.254.169.254", false),
            ("100.64.0.1", false),
            ("100.127.255.254", false),
            ("224.0.0.1", false),
            ("255.255.255.255", false),
            ("198.18.0.1", false),
            ("192.0.2.10", false),
            ("::1", false),
            ("::", false),
            ("fc00::1", false),
            ("fd12:3456::1", false),
            ("fe80::1", false),
            ("ff02::1", false),
            ("::ffff:127.0.0.1", false),
            ("::ffff:169.254.169.254", false),
            ("::ffff:10.0.0.1", false),
            ("::ffff:0:127.0.0.1", false),
            ("::ffff:0:a9fe:a9fe", false),
            ("::127.0.0.1", false),
            ("64:ff9b::a9fe:a9fe", false),
            ("2002:7f00:1::", false),
            ("2001:db8::1", false),
            ("2001:0:4136:e378::1", false),
            // Public unicast.
            ("93.184.215.14", true),
            ("8.8.8.8", true),
            ("172.32.0.1", true),
            ("100.128.0.1", true),
            ("2606:4700::1111", true),
            ("::ffff:8.8.8.8", true),
            ("64:ff9b::808:808", true),
            ("::ffff:0:8.8.8.8", true),
        ];
        for (addr, allowed) in table {
            assert_eq!(
                forbidden_range(ip(addr)).is_none(),
                *allowed,
                "{addr}: {:?}",
                forbidden_range(ip(addr))
            );
        }
    }

    #[test]
    fn url_syntax_table() {
        let policy = UrlPolicy::new(&[]);
        let table: &[(&str, Option<&str>)] = &[
            ("https://example.com/", None),
            ("http://example.com:8080/path?q=1", None),
            ("ftp://example.com/", Some("invalid_url")),
            ("file:///etc/passwd", Some("invalid_url")),
            ("gopher://example.com/", Some("invalid_url")),
            ("javascript:alert(1)", Some("invalid_url")),
            ("not a url", Some("invalid_url")),
            ("https://user:pw@example.com/", Some("invalid_url")),
            ("http://127.0.0.1/", Some("forbidden_url")),
            ("http://2130706433/", Some("forbidden_url")),
            ("http://0x7f.1/", Some("forbidden_url")),
            ("http://0177.0.0.1/", Some("forbidden_url")),
            ("http://[::1]:8080/", Some("forbidden_url")),
            ("http://[::ffff:7f00:1]/", Some("forbidden_url")),
            (
                "http://169.254.169.254/latest/meta-data/",
                Some("forbidden_url"),
            ),
            ("http://0/", Some("forbidden_url")),
        ];
        for (raw, expected) in table {
            let got = policy.parse("source_url", raw).err().map(|e| e.code());
            assert_eq!(got, *expected, "{raw}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(
            policy.parse("source_url", &long).unwrap_err().code(),
            "invalid_url"
        );
    }

    #[tokio::test]
    async fn names_are_judged_by_every_address_they_resolve_to() {
        let policy = UrlPolicy::new(&["intranet.test".into(), "*.corp.test".into()]);
        let lookup = FakeLookup(HashMap::from([
            ("public.test", vec![ip("93.184.215.14")]),
            ("sneaky.test", vec![ip("93.184.215.14"), ip("10.0.0.5")]),
            ("localhost", vec![ip("127.0.0.1"), ip("::1")]),
            ("intranet.test", vec![ip("10.0.0.7")]),
            ("wiki.corp.test", vec![ip("10.0.0.8")]),
            ("corp.test.evil.test", vec![ip("10.0.0.9")]),
            ("empty.test", vec![]),
        ]));
        let t = Duration::from_secs(1);
        let check = |raw: &'static str| {
            let policy = policy.clone();
            let lookup = &lookup;
            async move { policy.check("source_url", raw, lookup, t).await }
        };
        assert!(check("https://public.test/").await.is_ok());
        let err = check("https://sneaky.test/").await.unwrap_err();
        assert!(
            matches!(
                err,
                UrlError::Forbidden {
                    range: "private",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            check("http://localhost:8080/").await.unwrap_err().code(),
            "forbidden_url"
        );
        assert!(check("http://intranet.test/").await.is_ok(), "allow-listed");
        assert!(
            check("http://wiki.corp.test/").await.is_ok(),
            "allow-listed suffix"
        );
        assert!(
            check("http://corp.test.evil.test/").await.is_err(),
            "a suffix entry matches only subdomains"
        );
        // A host that does not resolve cannot be reached now: accepted unless the operator
        // asks for strictness (every fetch is checked again).
        assert!(check("http://nowhere.test/").await.is_ok());
        assert!(check("http://empty.test/").await.is_ok());
        let strict = policy.clone().rejecting_unresolvable(true);
        let err = strict
            .check("source_url", "http://nowhere.test/", &lookup, t)
            .await
            .unwrap_err();
        assert!(matches!(err, UrlError::Unresolvable { .. }), "{err}");
        assert_eq!(err.code(), "invalid_url");
        assert!(strict
            .check("source_url", "http://empty.test/", &lookup, t)
            .await
            .is_err());
    }

    #[test]
    fn allow_listed_ip_literals_pass() {
        let policy = UrlPolicy::new(&["127.0.0.1".into(), "[::1]".into()]);
        assert!(policy.parse("u", "http://127.0.0.1:9/").is_ok());
        assert!(policy.parse("u", "http://[::1]:9/").is_ok());
        assert!(policy.parse("u", "http://127.0.0.2/").is_err());
    }

    /// A guarded client follows a redirect to an allowed host but refuses one to an internal
    /// address, and refuses to connect to names that resolve inside.
    #[tokio::test]
    async fn redirects_and_connections_are_rechecked() {
        use axum::response::Redirect;
        use axum::routing::get;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app =
            axum::Router::new()
                .route("/ok", get(|| async { "fine" }))
                .route(
                    "/to-allowed",
                    get(move || async move {
                        Redirect::temporary(&format!("http://allowed.test:{port}/ok"))
                    }),
                )
                .route(
                    "/to-loopback",
                    get(move || async move {
                        Redirect::temporary(&format!("http://127.0.0.1:{port}/ok"))
                    }),
                )
                .route(
                    "/to-internal-name",
                    get(move || async move {
                        Redirect::temporary(&format!("http://internal.test:{port}/ok"))
                    }),
                );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let policy = Arc::new(UrlPolicy::new(&["allowed.test".into()]));
        let lookup: Arc<dyn Lookup> = Arc::new(FakeLookup(HashMap::from([
            ("allowed.test", vec![ip("127.0.0.1")]),
            ("internal.test", vec![ip("127.0.0.1")]),
        ])));
        let client = policy
            .guard_client(reqwest::Client::builder(), lookup)
            .build()
            .unwrap();
        let base = format!("http://allowed.test:{port}");
        let ok = client
            .get(format!("{base}/to-allowed"))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.text().await.unwrap(), "fine");
        let err = client
            .get(format!("{base}/to-loopback"))
            .send()
            .await
            .unwrap_err();
        assert!(err.is_redirect(), "{err:?}");
        let err = client
            .get(format!("{base}/to-internal-name"))
            .send()
            .await
            .unwrap_err();
        assert!(format!("{err:?}").contains("loopback"), "{err:?}");
    }
}
