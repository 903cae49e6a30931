//! Reading a clone's source site: log in to its WordPress like a browser (cookie + REST nonce)
//! through the SSRF-guarded client, check that the clonepool migrator plugin answers, and open
//! its export as a byte stream. [`SiteSource`] is the seam; [`HttpSiteSource`] the real one.

use crate::url_guard::{Lookup, UrlPolicy};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use std::sync::Arc;
use std::time::Duration;

/// Logins tried before a source's credentials are called wrong (see `open_export`).
const LOGIN_ATTEMPTS: u32 = 3;

/// The export archive as it arrives from the source.
pub type ExportStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// Where the plugin's manual installation is described.
pub const INSTALL_HINT: &str = "install the clonepool migrator plugin on the source site by hand: zip images/wordpress/migrator/clonepool-migrator (with clonepool-migrator/ as the top directory), upload it under Plugins → Add New → Upload Plugin and activate \"clonepool migrator\" (see docs/migrator.md, \"Installing it\")";

/// Why a source site could not be read. Every message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("cannot reach the source site {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error(
        "the source URL {0} is not a WordPress site (no WordPress login page at /wp-login.php)"
    )]
    NotWordPress(String),
    #[error("the source site refused the username or password of {0}")]
    BadCredentials(String),
    #[error(
        "the user {0} may not export the site: it needs to be an administrator (manage_options)"
    )]
    NotAdmin(String),
    #[error("the clonepool migrator plugin is not installed or not active on the source site; {INSTALL_HINT}")]
    PluginMissing,
    #[error("the source site's export failed: {0}")]
    ExportFailed(String),
}

impl SourceError {
    /// A stable error code for the job.
    pub fn code(&self) -> &'static str {
        match self {
            SourceError::Unreachable { .. } => "source_unreachable",
            SourceError::NotWordPress(_) => "source_not_wordpress",
            SourceError::BadCredentials(_) => "source_bad_credentials",
            SourceError::NotAdmin(_) => "source_not_admin",
            SourceError::PluginMissing => "source_plugin_missing",
            SourceError::ExportFailed(_) => "source_export_failed",
        }
    }
}

/// A source site's credentials, as the clone request gave them.
#[derive(Clone)]
pub struct SourceLogin {
    pub url: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for SourceLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceLogin")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Reads source sites.
#[async_trait]
pub trait SiteSource: Send + Sync + 'static {
    /// Logs in, checks the migrator plugin, and starts the export (database and wp-content, no
    /// core). The stream fails if the export breaks off; the agent checks its completeness.
    async fn open_export(&self, login: &SourceLogin) -> Result<ExportStream, SourceError>;
}

/// [`SiteSource`] over HTTP(S), every connection checked by the URL policy.
pub struct HttpSiteSource {
    policy: Arc<UrlPolicy>,
    lookup: Arc<dyn Lookup>,
    timeout: Duration,
}

impl HttpSiteSource {
    pub fn new(policy: Arc<UrlPolicy>, lookup: Arc<dyn Lookup>) -> Self {
        Self {
            policy,
            lookup,
            timeout: Duration::from_secs(60),
        }
    }

    fn client(&self) -> Result<reqwest::Client, SourceError> {
        self.policy
            .guard_client(
                reqwest::Client::builder()
                    .cookie_store(true)
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(self.timeout)
                    .user_agent("clonepool"),
                self.lookup.clone(),
            )
            .build()
            .map_err(|e| SourceError::Unreachable {
                url: String::new(),
                detail: format!("cannot build an HTTP client: {e}"),
            })
    }
}

fn describe(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[async_trait]
impl SiteSource for HttpSiteSource {
    async fn open_export(&self, login: &SourceLogin) -> Result<ExportStream, SourceError> {
        let base = self
            .policy
            .parse("source_url", &login.url)
            .map_err(|e| SourceError::Unreachable {
                url: login.url.clone(),
                detail: e.to_string(),
            })?
            .to_string();
        let base = base.trim_end_matches('/').to_string();
        let unreachable = |e: reqwest::Error| SourceError::Unreachable {
            url: base.clone(),
            detail: describe(&e),
        };
        // WordPress keeps all sessions of a user in one meta row that every login rewrites, so
        // logins of the same user at the same moment (clones of one site started together) can
        // drop each other's session: the login is accepted, yet the next request is logged out.
        // Log in again (fresh cookies, after a short random pause) before calling the password
        // wrong.
        let mut attempt = 0u32;
        let (http, nonce) = loop {
            attempt += 1;
            let http = self.client()?;
            // The login page sets WordPress's test cookie; the POST checks it.
            let page = http
                .get(format!("{base}/wp-login.php"))
                .send()
                .await
                .map_err(unreachable)?;
            let status = page.status();
            let text = page.text().await.unwrap_or_default();
            if !status.is_success() || !text.contains("name=\"log\"") {
                return Err(SourceError::NotWordPress(base.clone()));
            }
            let posted = http
                .post(format!("{base}/wp-login.php"))
                .form(&[
                    ("log", login.username.as_str()),
                    ("pwd", login.password.as_str()),
                    ("wp-submit", "Log In"),
                    ("testcookie", "1"),
                ])
                .send()
                .await
                .map_err(unreachable)?;
            // A successful login redirects (followed to wp-admin); a refused one shows the form
            // again with an error. Landing on the form without one: the session was dropped.
            let landed = posted.url().path().to_string();
            let body = posted.text().await.unwrap_or_default();
            if body.contains("id=\"login_error\"") {
                return Err(SourceError::BadCredentials(login.username.clone()));
            }
            let nonce = if landed.ends_with("/wp-login.php") {
                String::new()
            } else {
                http.get(format!("{base}/wp-admin/admin-ajax.php?action=rest-nonce"))
                    .send()
                    .await
                    .map_err(unreachable)?
                    .text()
                    .await
                    .unwrap_or_default()
            };
            let nonce = nonce.trim().to_string();
            if nonce.len() == 10 && nonce.chars().all(|c| c.is_ascii_hexdigit()) {
                break (http, nonce);
            }
            if attempt >= LOGIN_ATTEMPTS {
                return Err(SourceError::BadCredentials(login.username.clone()));
            }
            let pause = 100 * u64::from(attempt) + rand::random::<u64>() % 200;
            tokio::time::sleep(Duration::from_millis(pause)).await;
        };
        let status = http
            .get(format!("{base}/?rest_route=/clonepool/v1/status"))
            .header("X-WP-Nonce", &nonce)
            .send()
            .await
            .map_err(unreachable)?;
        match status.status().as_u16() {
            200 => {}
            404 => return Err(SourceError::PluginMissing),
            401 | 403 => return Err(SourceError::NotAdmin(login.username.clone())),
            other => {
                return Err(SourceError::ExportFailed(format!(
                    "the plugin's status route answered {other}"
                )))
            }
        }
        let export = http
            .get(format!(
                "{base}/?rest_route=/clonepool/v1/export&core=0&format=tar"
            ))
            .header("X-WP-Nonce", &nonce)
            .send()
            .await
            .map_err(unreachable)?;
        if !export.status().is_success() {
            let code = export.status().as_u16();
            let body: String = export
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            return Err(SourceError::ExportFailed(format!("{code}: {body}")));
        }
        let url = base.clone();
        Ok(export
            .bytes_stream()
            .map_err(move |e| {
                std::io::Error::other(format!("the export from {url} broke off: {}", describe(&e)))
            })
            .boxed())
    }
}

#[cfg(test)]
pub mod fake {
    //! A source for unit tests: a fixed archive, or a fixed error.

    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct FakeSource {
        pub fail: Mutex<Option<SourceError>>,
        pub opened: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl SiteSource for FakeSource {
        async fn open_export(&self, login: &SourceLogin) -> Result<ExportStream, SourceError> {
            self.opened.lock().unwrap().push(login.url.clone());
            if let Some(err) = self.fail.lock().unwrap().clone() {
                return Err(err);
            }
            Ok(futures_util::stream::once(async { Ok(Bytes::from_static(b"archive")) }).boxed())
        }
    }
}
