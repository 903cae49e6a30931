//! Talking to a user's WordPress site through the clonepool migrator plugin: log in like a
//! browser (cookie + REST nonce) or with a remembered application password, install and activate
//! the plugin without a browser when it is missing, open its export (clone jobs), push an archive
//! into its import with a backup first (restore jobs) and roll a backup back (rollback jobs).
//! Every connection goes through the SSRF-guarded client. [`SiteClient`] is the seam;
//! [`HttpSiteClient`] the real one.

use crate::url_guard::{Lookup, UrlPolicy};
use async_trait::async_trait;
use bytes::Bytes;
use clonepool_common::api::SkippedItem;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// An archive as a byte stream (an export arriving, or an archive being pushed).
pub type ExportStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// An export started on a source site.
pub struct SourceExport {
    pub stream: ExportStream,
    /// The source's WordPress version when its core files come along (it differs from the
    /// pods'), so the step that reads the stream can say so.
    pub core_version: Option<String>,
}

/// The plugin's files, embedded at build time (see build.rs).
const MIGRATOR_FILES: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/migrator_files.rs"));
/// Logins tried before a site's credentials are called wrong (see `browser_login`).
const LOGIN_ATTEMPTS: u32 = 3;
/// The plugin's directory and main file, as WordPress names it.
const PLUGIN_DIR: &str = "clonepool-migrator";
const PLUGIN_FILE: &str = "clonepool-migrator/clonepool-migrator.php";

/// How to install the plugin by hand.
pub const INSTALL_HINT: &str = "install the clonepool migrator plugin on the site by hand: zip images/wordpress/migrator/clonepool-migrator (with clonepool-migrator/ as the top directory), upload it under Plugins → Add New → Upload Plugin and activate \"clonepool migrator\" (see docs/migrator.md, \"Installing it\")";

/// Which side of a job a site is on; it names the error codes (`source_…`, `target_…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteRole {
    Source,
    Target,
}

impl SiteRole {
    pub fn as_str(self) -> &'static str {
        match self {
            SiteRole::Source => "source",
            SiteRole::Target => "target",
        }
    }
}

/// Why a site could not be used. Every message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteError {
    #[error("cannot reach the site {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{0} is not a WordPress site (no WordPress login page at /wp-login.php)")]
    NotWordPress(String),
    #[error("the site refused the username or password of {0}")]
    BadCredentials(String),
    #[error(
        "the user {0} is not allowed to do this: it needs to be an administrator (manage_options)"
    )]
    NotAdmin(String),
    #[error("the clonepool migrator plugin is not active on the site and installing it failed: {0}; {INSTALL_HINT}")]
    PluginMissing(String),
    #[error("the site does not allow installing plugins ({0}); {INSTALL_HINT}")]
    PluginInstallForbidden(String),
    #[error("the site's export failed: {0}")]
    ExportFailed(String),
    /// The plugin refused the archive before it changed anything.
    #[error("the site refused the archive ({code}): {message}; nothing on the site was changed")]
    ImportRefused { code: String, message: String },
    /// The import failed midway; the plugin put its backup back (or says it could not).
    #[error("{}", import_failed_message(.message, .backup_id, .rolled_back, .rollback_error))]
    ImportFailed {
        message: String,
        backup_id: Option<String>,
        rolled_back: bool,
        rollback_error: Option<String>,
    },
    /// The push broke off: whether the import ran is not known.
    #[error("the connection broke off while the archive was pushed ({0}); the site's plugin either finished the import or put its backup back: check its backups (GET ?rest_route=/clonepool/v1/backups) before trying again")]
    PushInterrupted(String),
    #[error("the rollback failed ({code}): {message}")]
    RollbackFailed { code: String, message: String },
}

fn import_failed_message(
    message: &str,
    backup_id: &Option<String>,
    rolled_back: &bool,
    rollback_error: &Option<String>,
) -> String {
    let backup = backup_id.as_deref().unwrap_or("(none)");
    if *rolled_back {
        format!("the import into the site failed ({message}); the site was put back as it was from its backup {backup}")
    } else {
        format!(
            "the import into the site failed ({message}) and putting the backup {backup} back failed too ({}); roll back by hand with that backup",
            rollback_error.as_deref().unwrap_or("no detail")
        )
    }
}

impl SiteError {
    /// A stable error code, e.g. `source_bad_credentials` or `target_import_failed`.
    pub fn code(&self, role: SiteRole) -> String {
        let what = match self {
            SiteError::Unreachable { .. } => "unreachable",
            SiteError::NotWordPress(_) => "not_wordpress",
            SiteError::BadCredentials(_) => "bad_credentials",
            SiteError::NotAdmin(_) => "not_admin",
            SiteError::PluginMissing(_) => "plugin_missing",
            SiteError::PluginInstallForbidden(_) => "plugin_install_forbidden",
            SiteError::ExportFailed(_) => "export_failed",
            SiteError::ImportRefused { .. } => "import_refused",
            SiteError::ImportFailed { .. } => "import_failed",
            SiteError::PushInterrupted(_) => "push_interrupted",
            SiteError::RollbackFailed { .. } => "rollback_failed",
        };
        format!("{}_{what}", role.as_str())
    }

    /// Nothing changed and nothing will change by trying again with the same input.
    pub fn is_transient(&self) -> bool {
        matches!(self, SiteError::Unreachable { .. })
    }
}

/// A site's URL and an administrator login on it.
#[derive(Clone)]
pub struct WpLogin {
    pub url: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for WpLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WpLogin")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What a push may change on the target (the plugin's import options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOptions {
    pub database: bool,
    pub files: bool,
    pub tables: Option<Vec<String>>,
    pub include_users: bool,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            database: true,
            files: true,
            tables: None,
            include_users: false,
        }
    }
}

/// The plugin's import report (the parts clonepool passes on).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ImportReport {
    pub backup_id: String,
    #[serde(default)]
    pub tables_imported: Vec<String>,
    #[serde(default)]
    pub files_written: u64,
    #[serde(default)]
    pub files_created: u64,
    #[serde(default)]
    pub files_unchanged: u64,
    #[serde(default)]
    pub skipped_count: u64,
    #[serde(default)]
    pub skipped: Vec<SkippedItem>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// The plugin's rollback report.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RollbackReport {
    pub backup_id: String,
    #[serde(default)]
    pub tables_restored: Vec<String>,
    #[serde(default)]
    pub tables_dropped: Vec<String>,
    #[serde(default)]
    pub files_restored: u64,
    #[serde(default)]
    pub files_removed: u64,
}

/// What the plugin's status route says about a site.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SiteInfo {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub wordpress_version: String,
    #[serde(default)]
    pub table_prefix: String,
    #[serde(default)]
    pub siteurl: String,
    #[serde(default)]
    pub home: String,
}

impl SiteInfo {
    /// Where visitors see the site: `home`, else `siteurl`.
    pub fn public_url(&self) -> &str {
        if self.home.trim().is_empty() {
            self.siteurl.trim_end_matches('/')
        } else {
            self.home.trim_end_matches('/')
        }
    }
}

/// Progress notes of a long site operation (login, plugin install, push), for the job's message.
pub type Progress<'a> = &'a (dyn Fn(String) + Send + Sync);

/// Uses WordPress sites through the migrator plugin.
#[async_trait]
pub trait SiteClient: Send + Sync + 'static {
    /// Logs in and makes sure the plugin is active (installing it when missing); answers what
    /// its status route says.
    async fn site_info(
        &self,
        login: &WpLogin,
        progress: Progress<'_>,
    ) -> Result<SiteInfo, SiteError>;

    /// Logs in, makes sure the plugin is active, and starts the export: database and
    /// wp-content, plus WordPress's own files when the site runs another version than
    /// `pod_wordpress_version` (so the clone runs the site's version). The stream fails if the
    /// export breaks off; the agent checks its completeness.
    async fn open_export(
        &self,
        login: &WpLogin,
        pod_wordpress_version: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<SourceExport, SiteError>;

    /// Logs in, makes sure the plugin is active, and pushes `archive` (`len` bytes) into the
    /// plugin's import, which backs up what it replaces first.
    async fn push_import(
        &self,
        login: &WpLogin,
        archive: ExportStream,
        len: Option<u64>,
        options: &PushOptions,
        progress: Progress<'_>,
    ) -> Result<ImportReport, SiteError>;

    /// Logs in and restores backup `backup_id` through the plugin.
    async fn rollback(&self, login: &WpLogin, backup_id: &str)
        -> Result<RollbackReport, SiteError>;
}

/// What clonepool remembers about sites between jobs: an application password per site and
/// user (so later jobs skip the browser login), and that the plugin was found active.
#[async_trait]
pub trait SiteMemory: Send + Sync + 'static {
    /// The application password made when `username` logged in with this same `password`.
    async fn app_password(&self, url: &str, username: &str, password: &str) -> Option<String>;
    async fn remember(&self, url: &str, username: &str, password: &str, app_password: Option<&str>);
    async fn forget_app_password(&self, url: &str, username: &str);
}

#[async_trait]
impl SiteMemory for crate::store::Store {
    async fn app_password(&self, url: &str, username: &str, password: &str) -> Option<String> {
        self.site_app_password(url, username, password)
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "cannot read remembered sites"))
            .ok()
            .flatten()
    }

    async fn remember(
        &self,
        url: &str,
        username: &str,
        password: &str,
        app_password: Option<&str>,
    ) {
        if let Err(e) = self
            .remember_site(
                url,
                username,
                password,
                app_password,
                crate::timestamps::now_ms(),
            )
            .await
        {
            tracing::warn!(error = %e, "cannot remember a site");
        }
    }

    async fn forget_app_password(&self, url: &str, username: &str) {
        if let Err(e) = self.forget_site_password(url, username).await {
            tracing::warn!(error = %e, "cannot forget a site's application password");
        }
    }
}

/// How a session authenticates its REST calls.
#[derive(Clone)]
enum Auth {
    /// Cookies in the client's jar plus this REST nonce.
    Nonce(String),
    /// HTTP Basic with an application password.
    AppPassword { username: String, password: String },
}

/// A logged-in session on one site.
struct Session {
    http: reqwest::Client,
    base: String,
    auth: Auth,
}

impl Session {
    fn rest(&self, method: reqwest::Method, route: &str) -> reqwest::RequestBuilder {
        let builder = self
            .http
            .request(method, format!("{}/?rest_route=/{route}", self.base));
        match &self.auth {
            Auth::Nonce(nonce) => builder.header("X-WP-Nonce", nonce),
            Auth::AppPassword { username, password } => {
                builder.basic_auth(username, Some(password))
            }
        }
    }
}

/// [`SiteClient`] over HTTP(S), every connection checked by the URL policy.
pub struct HttpSiteClient {
    policy: Arc<UrlPolicy>,
    lookup: Arc<dyn Lookup>,
    memory: Option<Arc<dyn SiteMemory>>,
    /// Longest wait for one step of a login.
    step_timeout: Duration,
    /// Longest silence while an export or import runs.
    transfer_timeout: Duration,
}

impl HttpSiteClient {
    pub fn new(policy: Arc<UrlPolicy>, lookup: Arc<dyn Lookup>) -> Self {
        Self {
            policy,
            lookup,
            memory: None,
            step_timeout: Duration::from_secs(60),
            transfer_timeout: Duration::from_secs(900),
        }
    }

    /// Remember application passwords (and skip the browser login next time) in `memory`.
    pub fn with_memory(mut self, memory: Arc<dyn SiteMemory>) -> Self {
        self.memory = Some(memory);
        self
    }

    fn client(&self) -> Result<reqwest::Client, SiteError> {
        self.policy
            .guard_client(
                reqwest::Client::builder()
                    .cookie_store(true)
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(self.transfer_timeout)
                    .user_agent("clonepool"),
                self.lookup.clone(),
            )
            .build()
            .map_err(|e| SiteError::Unreachable {
                url: String::new(),
                detail: format!("cannot build an HTTP client: {e}"),
            })
    }

    fn base(&self, login: &WpLogin) -> Result<String, SiteError> {
        let base = self
            .policy
            .parse("url", &login.url)
            .map_err(|e| SiteError::Unreachable {
                url: login.url.clone(),
                detail: e.to_string(),
            })?
            .to_string();
        Ok(base.trim_end_matches('/').to_string())
    }

    /// A session with the plugin active: a remembered application password when it still
    /// works, else a browser login (installing the plugin when it is missing).
    async fn session(
        &self,
        login: &WpLogin,
        progress: Progress<'_>,
    ) -> Result<(Session, SiteInfo), SiteError> {
        let base = self.base(login)?;
        let remembered = match &self.memory {
            Some(m) => {
                m.app_password(&base, &login.username, &login.password)
                    .await
            }
            None => None,
        };
        if let Some(app_password) = remembered {
            let session = Session {
                http: self.client()?,
                base: base.clone(),
                auth: Auth::AppPassword {
                    username: login.username.clone(),
                    password: app_password,
                },
            };
            match self.plugin_status(&session, login).await {
                Ok(Some(info)) => return Ok((session, info)),
                Ok(None) | Err(SiteError::BadCredentials(_)) | Err(SiteError::NotAdmin(_)) => {
                    // Revoked, or the plugin went away: start over with the browser login.
                    if let Some(m) = &self.memory {
                        m.forget_app_password(&base, &login.username).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let session = self.browser_login(&base, login).await?;
        let info = match self.plugin_status(&session, login).await? {
            Some(info) => info,
            None => {
                progress(format!(
                    "The clonepool migrator plugin is not active on {base}; installing it"
                ));
                self.install_plugin(&session).await?;
                self.plugin_status(&session, login).await?.ok_or_else(|| {
                    SiteError::PluginMissing(
                        "the plugin was uploaded and activated, but its REST routes do not answer"
                            .into(),
                    )
                })?
            }
        };
        let remembered = match &self.memory {
            Some(m) => m
                .app_password(&base, &login.username, &login.password)
                .await
                .is_some(),
            None => true,
        };
        let app_password = if remembered {
            None
        } else {
            self.create_app_password(&session).await
        };
        if let Some(m) = &self.memory {
            m.remember(
                &base,
                &login.username,
                &login.password,
                app_password.as_deref(),
            )
            .await;
        }
        Ok((session, info))
    }

    fn unreachable(base: &str) -> impl Fn(reqwest::Error) -> SiteError + '_ {
        move |e| SiteError::Unreachable {
            url: base.to_string(),
            detail: describe(&e),
        }
    }

    /// Logs in like a browser: the login page (sets the test cookie), the form, the REST nonce.
    ///
    /// WordPress keeps all sessions of a user in one meta row that every login rewrites, so
    /// logins of the same user at the same moment (clones of one site started together) can drop
    /// each other's session: the login is accepted, yet the next request is logged out. Log in
    /// again (fresh cookies, after a short random pause) before calling the password wrong.
    async fn browser_login(&self, base: &str, login: &WpLogin) -> Result<Session, SiteError> {
        let unreachable = Self::unreachable(base);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let http = self.client()?;
            let page = http
                .get(format!("{base}/wp-login.php"))
                .timeout(self.step_timeout)
                .send()
                .await
                .map_err(&unreachable)?;
            let status = page.status();
            let text = page.text().await.unwrap_or_default();
            if !status.is_success() || !text.contains("name=\"log\"") {
                return Err(SiteError::NotWordPress(base.to_string()));
            }
            let posted = http
                .post(format!("{base}/wp-login.php"))
                .form(&[
                    ("log", login.username.as_str()),
                    ("pwd", login.password.as_str()),
                    ("wp-submit", "Log In"),
                    ("testcookie", "1"),
                ])
                .timeout(self.step_timeout)
                .send()
                .await
                .map_err(&unreachable)?;
            // A successful login redirects (followed to wp-admin); a refused one shows the form
            // again with an error. Landing on the form without one: the session was dropped.
            let landed = posted.url().path().to_string();
            let body = posted.text().await.unwrap_or_default();
            if body.contains("id=\"login_error\"") {
                return Err(SiteError::BadCredentials(login.username.clone()));
            }
            let nonce = if landed.ends_with("/wp-login.php") {
                String::new()
            } else {
                http.get(format!("{base}/wp-admin/admin-ajax.php?action=rest-nonce"))
                    .timeout(self.step_timeout)
                    .send()
                    .await
                    .map_err(&unreachable)?
                    .text()
                    .await
                    .unwrap_or_default()
            };
            let nonce = nonce.trim().to_string();
            if nonce.len() == 10 && nonce.chars().all(|c| c.is_ascii_hexdigit()) {
                return Ok(Session {
                    http,
                    base: base.to_string(),
                    auth: Auth::Nonce(nonce),
                });
            }
            if attempt >= LOGIN_ATTEMPTS {
                return Err(SiteError::BadCredentials(login.username.clone()));
            }
            let pause = 100 * u64::from(attempt) + rand::random::<u64>() % 200;
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// What the plugin's status route answers (`Ok(None)`: not installed or not active).
    async fn plugin_status(
        &self,
        session: &Session,
        login: &WpLogin,
    ) -> Result<Option<SiteInfo>, SiteError> {
        let status = session
            .rest(reqwest::Method::GET, "clonepool/v1/status")
            .timeout(self.step_timeout)
            .send()
            .await
            .map_err(Self::unreachable(&session.base))?;
        match status.status().as_u16() {
            200 => Ok(Some(status.json::<SiteInfo>().await.map_err(|e| {
                SiteError::ExportFailed(format!("the plugin's status answer is unreadable: {e}"))
            })?)),
            404 => Ok(None),
            401 => Err(SiteError::BadCredentials(login.username.clone())),
            403 => Err(SiteError::NotAdmin(login.username.clone())),
            other => Err(SiteError::ExportFailed(format!(
                "the plugin's status route answered {other}"
            ))),
        }
    }

    /// Uploads and activates the plugin through wp-admin, as a browser would.
    async fn install_plugin(&self, session: &Session) -> Result<(), SiteError> {
        let base = &session.base;
        let http = &session.http;
        let unreachable = Self::unreachable(base);
        let page = http
            .get(format!("{base}/wp-admin/plugin-install.php?tab=upload"))
            .timeout(self.step_timeout)
            .send()
            .await
            .map_err(&unreachable)?;
        let status = page.status();
        let text = page.text().await.unwrap_or_default();
        if status.as_u16() == 403 || text.contains("not allowed to") {
            return Err(SiteError::PluginInstallForbidden(
                "wp-admin/plugin-install.php says this user may not install plugins; plugin installs may be switched off (DISALLOW_FILE_MODS)".into(),
            ));
        }
        let nonce = form_value(&text, "_wpnonce").ok_or_else(|| {
            SiteError::PluginInstallForbidden(format!(
                "wp-admin/plugin-install.php?tab=upload (HTTP {status}) shows no upload form"
            ))
        })?;
        let zip = plugin_zip().map_err(SiteError::PluginMissing)?;
        let form = reqwest::multipart::Form::new()
            .text("_wpnonce", nonce)
            .text(
                "_wp_http_referer",
                "/wp-admin/plugin-install.php?tab=upload",
            )
            .text("install-plugin-submit", "Install Now")
            .part(
                "pluginzip",
                reqwest::multipart::Part::bytes(zip)
                    .file_name(format!("{PLUGIN_DIR}.zip"))
                    .mime_str("application/zip")
                    .map_err(|e| SiteError::PluginMissing(e.to_string()))?,
            );
        let uploaded = http
            .post(format!("{base}/wp-admin/update.php?action=upload-plugin"))
            .multipart(form)
            .timeout(self.step_timeout)
            .send()
            .await
            .map_err(&unreachable)?;
        let status = uploaded.status();
        let text = uploaded.text().await.unwrap_or_default();
        if status.as_u16() == 403 || text.contains("not allowed to") {
            return Err(SiteError::PluginInstallForbidden(format!(
                "the upload was refused (HTTP {status})"
            )));
        }
        if text.contains("Connection Information") {
            return Err(SiteError::PluginInstallForbidden(
                "WordPress cannot write to its plugins directory and asks for FTP credentials"
                    .into(),
            ));
        }
        let already = text.contains("Destination folder already exists");
        let installed = text.contains("Plugin installed successfully")
            || already
            || text.contains(PLUGIN_FILE.replace('/', "%2F").as_str());
        if !status.is_success() || !installed {
            let detail = strip_tags(&text);
            return Err(SiteError::PluginMissing(format!(
                "the upload answered HTTP {status}: {}",
                detail.chars().take(300).collect::<String>()
            )));
        }
        // The plugins list holds the activation link with its nonce (also when it was there but
        // inactive).
        let list = http
            .get(format!("{base}/wp-admin/plugins.php"))
            .timeout(self.step_timeout)
            .send()
            .await
            .map_err(&unreachable)?
            .text()
            .await
            .unwrap_or_default();
        let Some(link) = activation_link(&list) else {
            if list.contains(&format!(
                "action=deactivate&amp;plugin={}",
                PLUGIN_FILE.replace('/', "%2F")
            )) {
                return Ok(()); // already active
            }
            return Err(SiteError::PluginMissing(
                "the plugin was uploaded but wp-admin/plugins.php shows no link to activate it"
                    .into(),
            ));
        };
        let activated = http
            .get(format!("{base}/wp-admin/{link}"))
            .timeout(self.step_timeout)
            .send()
            .await
            .map_err(&unreachable)?;
        let status = activated.status();
        let text = activated.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(SiteError::PluginMissing(format!(
                "activating it answered HTTP {status}: {}",
                strip_tags(&text).chars().take(300).collect::<String>()
            )));
        }
        tracing::info!(site = %base, "installed and activated the clonepool migrator plugin");
        Ok(())
    }

    /// An application password for later calls, when the site offers them (https, or a local
    /// environment); `None` otherwise.
    async fn create_app_password(&self, session: &Session) -> Option<String> {
        if !matches!(session.auth, Auth::Nonce(_)) {
            return None;
        }
        #[derive(Deserialize)]
        struct Created {
            password: String,
        }
        let answer = session
            .rest(
                reqwest::Method::POST,
                "wp/v2/users/me/application-passwords",
            )
            .form(&[("name", "clonepool")])
            .timeout(self.step_timeout)
            .send()
            .await
            .ok()?;
        if answer.status().as_u16() != 201 {
            tracing::info!(site = %session.base, status = answer.status().as_u16(),
                "the site offers no application password; later jobs log in again");
            return None;
        }
        answer.json::<Created>().await.ok().map(|c| c.password)
    }
}

/// The plugin as a zip with `clonepool-migrator/` as its top directory (stored, not deflated:
/// it is small and WordPress's unzip takes either).
pub fn plugin_zip() -> Result<Vec<u8>, String> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(0o644);
    for (path, data) in MIGRATOR_FILES {
        zip.start_file(format!("{PLUGIN_DIR}/{path}"), options)
            .map_err(|e| format!("building the plugin zip: {e}"))?;
        zip.write_all(data)
            .map_err(|e| format!("building the plugin zip: {e}"))?;
    }
    zip.finish()
        .map(|c| c.into_inner())
        .map_err(|e| format!("building the plugin zip: {e}"))
}

/// The value of a hidden form field `name` in an HTML page.
fn form_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\""))?;
    // The input tag around it.
    let start = html[..at].rfind('<')?;
    let end = at + html[at..].find('>')?;
    let tag = &html[start..end];
    let v = tag.find("value=\"")? + "value=\"".len();
    let rest = &tag[v..];
    Some(rest[..rest.find('"')?].to_string())
}

/// The plugins list's `plugins.php?action=activate&plugin=clonepool-migrator…&_wpnonce=…` link,
/// HTML entities decoded.
fn activation_link(html: &str) -> Option<String> {
    let needle = format!(
        "plugins.php?action=activate&amp;plugin={}",
        PLUGIN_FILE.replace('/', "%2F")
    );
    let at = html.find(&needle)?;
    let rest = &html[at..];
    let end = rest.find('"')?;
    Some(rest[..end].replace("&amp;", "&"))
}

fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
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

/// A WordPress REST error body.
#[derive(Debug, Default, Deserialize)]
struct RestError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    data: RestErrorData,
}

#[derive(Debug, Default, Deserialize)]
struct RestErrorData {
    #[serde(default)]
    changed: Option<bool>,
    #[serde(default)]
    backup_id: Option<String>,
    #[serde(default)]
    rolled_back: Option<bool>,
    #[serde(default)]
    rollback_error: Option<String>,
}

async fn rest_error(resp: reqwest::Response) -> RestError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    serde_json::from_str(&text).unwrap_or_else(|_| RestError {
        code: format!("http_{}", status.as_u16()),
        message: strip_tags(&text).chars().take(300).collect(),
        data: RestErrorData::default(),
    })
}

#[async_trait]
impl SiteClient for HttpSiteClient {
    async fn site_info(
        &self,
        login: &WpLogin,
        progress: Progress<'_>,
    ) -> Result<SiteInfo, SiteError> {
        Ok(self.session(login, progress).await?.1)
    }

    async fn open_export(
        &self,
        login: &WpLogin,
        pod_wordpress_version: Option<&str>,
        progress: Progress<'_>,
    ) -> Result<SourceExport, SiteError> {
        let (session, info) = self.session(login, progress).await?;
        let core = pod_wordpress_version
            .is_some_and(|pod| !info.wordpress_version.is_empty() && info.wordpress_version != pod);
        if core {
            progress(format!(
                "{} runs WordPress {}, the pods {}: exporting its core too",
                session.base,
                info.wordpress_version,
                pod_wordpress_version.unwrap_or_default()
            ));
        }
        let export = session
            .rest(
                reqwest::Method::GET,
                &format!(
                    "clonepool/v1/export&core={}&format=tar",
                    if core { 1 } else { 0 }
                ),
            )
            .send()
            .await
            .map_err(Self::unreachable(&session.base))?;
        if !export.status().is_success() {
            let code = export.status().as_u16();
            let err = rest_error(export).await;
            return Err(SiteError::ExportFailed(format!(
                "{code} {}: {}",
                err.code, err.message
            )));
        }
        let url = session.base.clone();
        let stream = export
            .bytes_stream()
            .map_err(move |e| {
                std::io::Error::other(format!("the export from {url} broke off: {}", describe(&e)))
            })
            .boxed();
        Ok(SourceExport {
            stream,
            core_version: core.then_some(info.wordpress_version),
        })
    }

    async fn push_import(
        &self,
        login: &WpLogin,
        archive: ExportStream,
        len: Option<u64>,
        options: &PushOptions,
        progress: Progress<'_>,
    ) -> Result<ImportReport, SiteError> {
        let (session, _) = self.session(login, progress).await?;
        let flag = |b: bool| if b { "1" } else { "0" };
        let mut route = format!(
            "clonepool/v1/import&database={}&files={}&include_users={}",
            flag(options.database),
            flag(options.files),
            flag(options.include_users)
        );
        if let Some(tables) = &options.tables {
            // Table names are checked at the API: letters, digits, `_` and `$` only.
            route.push_str(&format!("&tables={}", tables.join(",")));
        }
        progress(format!(
            "Pushing the archive{} to {} (the plugin backs up what it replaces first)",
            len.map(|n| format!(" ({n} bytes)")).unwrap_or_default(),
            session.base
        ));
        let mut request = session
            .rest(reqwest::Method::POST, &route)
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .body(reqwest::Body::wrap_stream(archive));
        if let Some(len) = len {
            request = request.header(reqwest::header::CONTENT_LENGTH, len);
        }
        let answer = match request.send().await {
            Ok(answer) => answer,
            Err(e) if e.is_connect() => {
                return Err(SiteError::Unreachable {
                    url: session.base.clone(),
                    detail: describe(&e),
                })
            }
            Err(e) => return Err(SiteError::PushInterrupted(describe(&e))),
        };
        let status = answer.status();
        if status.is_success() {
            let text = answer
                .text()
                .await
                .map_err(|e| SiteError::PushInterrupted(describe(&e)))?;
            return serde_json::from_str::<ImportReport>(&text).map_err(|e| {
                SiteError::PushInterrupted(format!(
                    "the site's answer is not an import report ({e}): {}",
                    text.chars().take(200).collect::<String>()
                ))
            });
        }
        let err = rest_error(answer).await;
        if status.as_u16() == 401 {
            return Err(SiteError::BadCredentials(login.username.clone()));
        }
        if status.as_u16() == 403 {
            return Err(SiteError::NotAdmin(login.username.clone()));
        }
        if err.data.changed == Some(false)
            || status.is_client_error() && err.data.backup_id.is_none()
        {
            return Err(SiteError::ImportRefused {
                code: err.code,
                message: err.message,
            });
        }
        Err(SiteError::ImportFailed {
            message: format!("{}: {}", err.code, err.message),
            backup_id: err.data.backup_id,
            rolled_back: err.data.rolled_back.unwrap_or(false),
            rollback_error: err.data.rollback_error,
        })
    }

    async fn rollback(
        &self,
        login: &WpLogin,
        backup_id: &str,
    ) -> Result<RollbackReport, SiteError> {
        let (session, _) = self.session(login, &|_| {}).await?;
        let answer = session
            .rest(reqwest::Method::POST, "clonepool/v1/rollback")
            .json(&serde_json::json!({ "backup_id": backup_id }))
            .send()
            .await
            .map_err(Self::unreachable(&session.base))?;
        if answer.status().is_success() {
            return answer
                .json::<RollbackReport>()
                .await
                .map_err(|e| SiteError::RollbackFailed {
                    code: "bad_answer".into(),
                    message: format!("the site's answer is not a rollback report: {e}"),
                });
        }
        let err = rest_error(answer).await;
        Err(SiteError::RollbackFailed {
            code: err.code,
            message: err.message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_plugin_zips_under_its_own_directory() {
        let zip = plugin_zip().unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
        let names: Vec<String> = (0..archive.len())
            .map(|i| archive.by_index(i).unwrap().name().to_string())
            .collect();
        assert!(names.contains(&PLUGIN_FILE.to_string()), "{names:?}");
        assert!(names.iter().all(|n| n.starts_with("clonepool-migrator/")));
        let mut main = String::new();
        std::io::Read::read_to_string(&mut archive.by_name(PLUGIN_FILE).unwrap(), &mut main)
            .unwrap();
        assert!(main.contains("Plugin Name:"), "a WordPress plugin header");
    }

    #[test]
    fn the_upload_nonce_and_the_activation_link_are_read_from_wp_admin_pages() {
        let form = r#"<form method="post" enctype="multipart/form-data" class="wp-upload-form" action="https://s.example/wp-admin/update.php?action=upload-plugin"><input type="hidden" id="_wpnonce" name="_wpnonce" value="a1b2c3d4e5" /><input type="hidden" name="_wp_http_referer" value="/wp-admin/plugin-install.php?tab=upload" />"#;
        assert_eq!(form_value(form, "_wpnonce").as_deref(), Some("a1b2c3d4e5"));
        assert_eq!(form_value(form, "missing"), None);
        let list = r#"<span class='activate'><a href="plugins.php?action=activate&amp;plugin=clonepool-migrator%2Fclonepool-migrator.php&amp;plugin_status=all&amp;paged=1&amp;s&amp;_wpnonce=0f1e2d3c4b" id="activate-clonepool-migrator" class="edit">Activate</a>"#;
        assert_eq!(
            activation_link(list).as_deref(),
            Some("plugins.php?action=activate&plugin=clonepool-migrator%2Fclonepool-migrator.php&plugin_status=all&paged=1&s&_wpnonce=0f1e2d3c4b")
        );
        assert_eq!(activation_link("<p>no plugins</p>"), None);
    }

    #[test]
    fn error_codes_name_the_side_of_the_job() {
        let err = SiteError::BadCredentials("admin".into());
        assert_eq!(err.code(SiteRole::Source), "source_bad_credentials");
        assert_eq!(err.code(SiteRole::Target), "target_bad_credentials");
        let failed = SiteError::ImportFailed {
            message: "disk full".into(),
            backup_id: Some("b1".into()),
            rolled_back: true,
            rollback_error: None,
        };
        assert!(failed
            .to_string()
            .contains("put back as it was from its backup b1"));
        let refused = SiteError::ImportRefused {
            code: "clonepool_prefix_mismatch".into(),
            message: "prefix".into(),
        };
        assert!(refused
            .to_string()
            .contains("nothing on the site was changed"));
    }
}

#[cfg(test)]
pub mod fake {
    //! A site for unit tests: a fixed archive, a fixed import report, or a fixed error.

    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct FakeSite {
        pub fail: Mutex<Option<SiteError>>,
        pub opened: Mutex<Vec<String>>,
        /// Archives pushed: (target URL, bytes, options).
        pub pushed: Mutex<Vec<(String, Vec<u8>, PushOptions)>>,
        pub rolled_back: Mutex<Vec<(String, String)>>,
    }

    #[async_trait]
    impl SiteClient for FakeSite {
        async fn site_info(
            &self,
            login: &WpLogin,
            _progress: Progress<'_>,
        ) -> Result<SiteInfo, SiteError> {
            if let Some(err) = self.fail.lock().unwrap().clone() {
                return Err(err);
            }
            Ok(SiteInfo {
                version: "1.0.0".into(),
                wordpress_version: "6.1.9".into(),
                table_prefix: "wp_".into(),
                siteurl: login.url.clone(),
                home: login.url.clone(),
            })
        }

        async fn open_export(
            &self,
            login: &WpLogin,
            _pod_wordpress_version: Option<&str>,
            _progress: Progress<'_>,
        ) -> Result<SourceExport, SiteError> {
            self.opened.lock().unwrap().push(login.url.clone());
            if let Some(err) = self.fail.lock().unwrap().clone() {
                return Err(err);
            }
            Ok(SourceExport {
                stream: futures_util::stream::once(async { Ok(Bytes::from_static(b"archive")) })
                    .boxed(),
                core_version: None,
            })
        }

        async fn push_import(
            &self,
            login: &WpLogin,
            mut archive: ExportStream,
            _len: Option<u64>,
            options: &PushOptions,
            _progress: Progress<'_>,
        ) -> Result<ImportReport, SiteError> {
            if let Some(err) = self.fail.lock().unwrap().clone() {
                return Err(err);
            }
            let mut bytes = Vec::new();
            while let Some(chunk) = archive.next().await {
                bytes.extend_from_slice(
                    &chunk.map_err(|e| SiteError::PushInterrupted(e.to_string()))?,
                );
            }
            self.pushed
                .lock()
                .unwrap()
                .push((login.url.clone(), bytes, options.clone()));
            Ok(ImportReport {
                backup_id: "20261125T000000Z-0123456789abcdef".into(),
                tables_imported: vec!["wp_posts".into()],
                files_written: 1,
                files_created: 1,
                files_unchanged: 0,
                skipped_count: 0,
                skipped: Vec::new(),
                warnings: Vec::new(),
            })
        }

        async fn rollback(
            &self,
            login: &WpLogin,
            backup_id: &str,
        ) -> Result<RollbackReport, SiteError> {
            if let Some(err) = self.fail.lock().unwrap().clone() {
                return Err(err);
            }
            self.rolled_back
                .lock()
                .unwrap()
                .push((login.url.clone(), backup_id.to_string()));
            Ok(RollbackReport {
                backup_id: backup_id.to_string(),
                tables_restored: vec!["wp_posts".into()],
                tables_dropped: Vec::new(),
                files_restored: 1,
                files_removed: 0,
            })
        }
    }
}
