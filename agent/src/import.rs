//! Importing a source site into a claimed pod: `POST /v1/import` streams the migrator plugin's
//! export archive (tar) in, checks every entry (hostile names, links, devices, limits, a complete
//! export), spools the SQL and wp-content to private temporary files, rewrites the dump's URLs
//! source → clone, loads it into MariaDB, unpacks wp-content, then gives the clone a fresh admin
//! password, blocks search engines, captures mail and stores a one-time magic login.
//!
//! Nothing touches the pod before the whole archive has been checked. Any failure releases the
//! pod, so it is reset and verified before anyone gets it again.

use crate::pod_commands::{CORE_REPLACED_MARKER, MARIADB, WP_CONTENT, WP_CORE};
use crate::pool::{PoolError, WarmPool};
use crate::runtime::{ArchiveStream, ContainerRuntime, ExecRequest, RuntimeError};
use crate::secrets::{Secret, PASSWORD_LEN};
use bytes::Bytes;
use clonepool_common::agent_api::ImportResponse;
use clonepool_common::ids::{CloneId, PodId};
use clonepool_common::pod::ContainerRole;
use clonepool_common::rewrite::{RewriteOptions, UrlRewriter};
use futures_util::{StreamExt, TryStreamExt};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Name of the clone-only mu-plugin (the `clonepool-` prefix keeps it out of every export).
pub const CLONE_MU_PLUGIN: &str = "clonepool-clone.php";
/// The option that holds the magic login: `sha256(token)|expires|host|user id`.
pub const MAGIC_OPTION: &str = "clonepool_magic_login";
/// How long a magic login link works.
pub const MAGIC_TTL: Duration = Duration::from_secs(15 * 60);
/// The option where an import keeps the source's own `blog_public` (a clone always blocks search
/// engines; a restore puts the source's value back).
pub const ORIGINAL_BLOG_PUBLIC_OPTION: &str = "clonepool_source_blog_public";
/// Where the rewritten dump is put in the db container (emptied by every reset).
const DB_SQL_PATH: &str = "/tmp/clonepool-import.sql";
/// Largest JSON entry read (manifest, completion and error records).
const MAX_JSON_ENTRY: u64 = 4 * 1024 * 1024;
const MAX_PATH_BYTES: usize = 4096;
/// `www-data` in the workload image.
const WWW_DATA: u64 = 33;

/// The clone's mu-plugin: mail captured to a file, one-time magic login.
const CLONE_MU_PLUGIN_PHP: &str = include_str!("clone_mu_plugin.php");

/// Limits on one import.
#[derive(Debug, Clone)]
pub struct ImportConfig {
    /// Most archive bytes read (uncompressed tar).
    pub max_bytes: u64,
    /// Most archive entries.
    pub max_entries: u64,
    /// Where the archive's SQL and files are spooled (private temporary directories).
    pub spool_dir: PathBuf,
}

impl ImportConfig {
    pub fn new(spool_dir: impl Into<PathBuf>) -> Self {
        Self {
            max_bytes: 2 * 1024 * 1024 * 1024,
            max_entries: 200_000,
            spool_dir: spool_dir.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// An entry that could write outside wp-content or is not a plain file or directory.
    #[error("hostile archive: {0}")]
    Hostile(String),
    /// Not a (complete, readable) migrator export.
    #[error("bad archive: {0}")]
    BadArchive(String),
    /// The source's export failed and said so.
    #[error("the source's export failed: {0}")]
    ExportFailed(String),
    #[error("the archive is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("the archive has more than {0} entries")]
    TooManyEntries(u64),
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// A step inside the pod failed.
    #[error("{step}: {detail}")]
    Pod { step: &'static str, detail: String },
    #[error("container runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("{0}")]
    Internal(String),
}

/// The part of `manifest.json` the import needs.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub table_prefix: String,
    pub siteurl: String,
    pub home: String,
    /// The source's WordPress version.
    #[serde(default)]
    pub wordpress_version: String,
    #[serde(default)]
    pub contents: ManifestContents,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ManifestContents {
    /// `core/` holds every core file (false when some are links outside the site, as on
    /// Debian's packaged WordPress): a clone must not run an incomplete core.
    #[serde(default)]
    pub core_complete: bool,
}

#[derive(Debug, Deserialize)]
struct Complete {
    complete: bool,
}

/// The archive, checked and spooled.
#[derive(Debug)]
pub struct Spooled {
    dir: tempfile::TempDir,
    pub manifest: Manifest,
    /// The dump's parts, concatenated in order.
    pub sql: PathBuf,
    pub sql_bytes: u64,
    /// wp-content as a tar relative to wp-content (www-data owned, plain modes), plus the
    /// clone's mu-plugin.
    pub files_tar: PathBuf,
    pub files: u64,
    /// WordPress's own files (`core/`), relative to the core directory, root-owned; `None`
    /// when the archive has none.
    pub core_tar: Option<PathBuf>,
    pub core_files: u64,
    pub archive_bytes: u64,
}

/// Counts the bytes read and fails past `max`.
struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
    max: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.count.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
        if total > self.max {
            return Err(std::io::Error::other("archive over the size limit"));
        }
        Ok(n)
    }
}

/// Checks one entry name; answers it normalised (no `.` or empty components, no trailing `/`).
pub fn check_name(raw: &[u8]) -> Result<String, ImportError> {
    let shown = String::from_utf8_lossy(raw);
    let hostile = |why: &str| Err(ImportError::Hostile(format!("entry {shown:?} {why}")));
    if raw.is_empty() {
        return hostile("has an empty name");
    }
    if raw.len() > MAX_PATH_BYTES {
        return hostile("has a name over 4096 bytes");
    }
    if raw[0] == b'/' {
        return hostile("is an absolute path");
    }
    if raw.len() >= 2 && raw[1] == b':' && raw[0].is_ascii_alphabetic() {
        return hostile("is an absolute (drive) path");
    }
    if raw.contains(&b'\\') {
        return hostile("contains a backslash");
    }
    if raw.iter().any(|b| *b < 0x20 || *b == 0x7f) {
        return hostile("contains a control character");
    }
    let Ok(name) = std::str::from_utf8(raw) else {
        return hostile("is not UTF-8");
    };
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return hostile("has a '..' component"),
            p => parts.push(p),
        }
    }
    if parts.is_empty() {
        return hostile("names no file");
    }
    Ok(parts.join("/"))
}

fn read_small(entry: &mut impl Read, what: &str) -> Result<Vec<u8>, ImportError> {
    let mut out = Vec::new();
    entry
        .take(MAX_JSON_ENTRY + 1)
        .read_to_end(&mut out)
        .map_err(|e| ImportError::BadArchive(format!("reading {what}: {e}")))?;
    if out.len() as u64 > MAX_JSON_ENTRY {
        return Err(ImportError::BadArchive(format!(
            "{what} is over {MAX_JSON_ENTRY} bytes"
        )));
    }
    Ok(out)
}

fn is_sql_part(name: &str) -> bool {
    name == "database.sql"
        || name.strip_prefix("database/").is_some_and(|rest| {
            rest.strip_suffix(".sql").is_some_and(|n| {
                !n.is_empty() && n.len() <= 12 && n.bytes().all(|b| b.is_ascii_digit())
            })
        })
}

/// Reads the whole archive from `input`, checks it and spools it into a new private directory
/// under `cfg.spool_dir`. Blocking: run it in `spawn_blocking`.
pub fn spool_archive(input: impl Read, cfg: &ImportConfig) -> Result<Spooled, ImportError> {
    let internal = |what: &str, e: std::io::Error| ImportError::Internal(format!("{what}: {e}"));
    let dir = tempfile::Builder::new()
        .prefix("import-")
        .tempdir_in(&cfg.spool_dir)
        .map_err(|e| internal("creating the import spool directory", e))?;
    let sql_path = dir.path().join("dump.sql");
    let files_path = dir.path().join("wp-content.tar");
    let mut sql = BufWriter::new(
        std::fs::File::create(&sql_path).map_err(|e| internal("creating the SQL spool", e))?,
    );
    let mut files = tar::Builder::new(BufWriter::new(
        std::fs::File::create(&files_path).map_err(|e| internal("creating the file spool", e))?,
    ));
    let core_path = dir.path().join("core.tar");
    let mut core: Option<tar::Builder<BufWriter<std::fs::File>>> = None;
    let mut core_count = 0u64;
    let count = Arc::new(AtomicU64::new(0));
    let mut archive = tar::Archive::new(Counted {
        inner: input,
        count: count.clone(),
        max: cfg.max_bytes,
    });
    let over = |count: &AtomicU64| count.load(Ordering::SeqCst) > cfg.max_bytes;
    let damaged = |e: std::io::Error, count: &AtomicU64| {
        if over(count) {
            ImportError::TooLarge(cfg.max_bytes)
        } else {
            ImportError::BadArchive(format!("the archive is truncated or damaged: {e}"))
        }
    };
    let entries = archive.entries().map_err(|e| damaged(e, &count))?;
    let mut manifest: Option<Manifest> = None;
    let mut complete = false;
    let mut sql_bytes = 0u64;
    let mut sql_parts = 0u64;
    let mut last_part = String::new();
    let mut file_count = 0u64;
    let mut seen = 0u64;
    for entry in entries {
        let mut entry = entry.map_err(|e| damaged(e, &count))?;
        seen += 1;
        if seen > cfg.max_entries {
            return Err(ImportError::TooManyEntries(cfg.max_entries));
        }
        let name = check_name(&entry.path_bytes())?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            return Err(ImportError::Hostile(format!(
                "entry {name:?} is a {}: only files and directories are accepted",
                match kind {
                    tar::EntryType::Symlink => "symbolic link".to_string(),
                    tar::EntryType::Link => "hard link".to_string(),
                    tar::EntryType::Char => "character device".to_string(),
                    tar::EntryType::Block => "block device".to_string(),
                    tar::EntryType::Fifo => "FIFO".to_string(),
                    other => format!("{other:?} entry"),
                }
            )));
        }
        if complete {
            return Err(ImportError::BadArchive(format!(
                "entry {name:?} follows export-complete.json"
            )));
        }
        if manifest.is_none() {
            if name != "manifest.json" || !kind.is_file() {
                return Err(ImportError::BadArchive(format!(
                    "the archive starts with {name:?}, not manifest.json: not a clonepool migrator export"
                )));
            }
            let m: Manifest = serde_json::from_slice(&read_small(&mut entry, "manifest.json")?)
                .map_err(|e| ImportError::BadArchive(format!("manifest.json: {e}")))?;
            if m.format != "clonepool-migrator-archive" || m.format_version != 1 {
                return Err(ImportError::BadArchive(format!(
                    "manifest.json names format {:?} version {}, not clonepool-migrator-archive 1",
                    m.format, m.format_version
                )));
            }
            if !crate::export::valid_prefix(&m.table_prefix) {
                return Err(ImportError::BadArchive(format!(
                    "manifest.json's table prefix {:?} is not 1 to 32 letters, digits or _",
                    m.table_prefix
                )));
            }
            manifest = Some(m);
            continue;
        }
        if kind.is_file() && is_sql_part(&name) {
            if name <= last_part && sql_parts > 0 {
                return Err(ImportError::BadArchive(format!(
                    "SQL part {name:?} comes after {last_part:?}: parts must be in order"
                )));
            }
            last_part = name.clone();
            sql_parts += 1;
            sql_bytes += std::io::copy(&mut entry, &mut sql).map_err(|e| damaged(e, &count))?;
            continue;
        }
        if name == "database" && kind.is_dir() {
            continue;
        }
        if name == "core" {
            continue;
        }
        if let Some(rel) = name.strip_prefix("core/") {
            let top = rel.split('/').next().unwrap_or_default();
            let allowed = top == "wp-admin"
                || top == "wp-includes"
                || (!rel.contains('/') && rel.ends_with(".php") && !rel.starts_with("wp-config"));
            if !allowed {
                return Err(ImportError::Hostile(format!(
                    "core entry {name:?} is not WordPress's own (wp-admin/, wp-includes/ or a root .php file other than wp-config)"
                )));
            }
            if core.is_none() {
                core = Some(tar::Builder::new(BufWriter::new(
                    std::fs::File::create(&core_path)
                        .map_err(|e| internal("creating the core spool", e))?,
                )));
            }
            let builder = core.as_mut().expect("just created");
            let mode = entry.header().mode().unwrap_or(0o644) & 0o755;
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(entry.header().mtime().unwrap_or(0));
            if kind.is_dir() {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(mode | 0o755);
                header.set_size(0);
                builder
                    .append_data(&mut header, format!("{rel}/"), std::io::empty())
                    .map_err(|e| internal("spooling core", e))?;
            } else {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(mode | 0o644);
                header.set_size(entry.size());
                builder
                    .append_data(&mut header, rel, &mut entry)
                    .map_err(|e| damaged(e, &count))?;
                core_count += 1;
            }
            continue;
        }
        if name == "export-error.json" {
            let body = read_small(&mut entry, "export-error.json")?;
            let why = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(500).collect());
            return Err(ImportError::ExportFailed(why));
        }
        if name == "export-complete.json" {
            let c: Complete =
                serde_json::from_slice(&read_small(&mut entry, "export-complete.json")?)
                    .map_err(|e| ImportError::BadArchive(format!("export-complete.json: {e}")))?;
            if !c.complete {
                return Err(ImportError::ExportFailed(
                    "export-complete.json says the export is not complete".into(),
                ));
            }
            complete = true;
            continue;
        }
        if name == "wp-content" && kind.is_dir() {
            continue;
        }
        let Some(rel) = name.strip_prefix("wp-content/") else {
            return Err(ImportError::BadArchive(format!(
                "unexpected entry {name:?} (a migrator export holds manifest.json, database/, wp-content/, core/ and export-complete.json)"
            )));
        };
        if rel.starts_with("mu-plugins/clonepool-") {
            continue; // clonepool's own per-clone helpers are never imported
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let mut header = tar::Header::new_gnu();
        header.set_uid(WWW_DATA);
        header.set_gid(WWW_DATA);
        header.set_mtime(entry.header().mtime().unwrap_or(0));
        if kind.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(mode | 0o700);
            header.set_size(0);
            files
                .append_data(&mut header, format!("{rel}/"), std::io::empty())
                .map_err(|e| internal("spooling wp-content", e))?;
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(mode | 0o600);
            header.set_size(entry.size());
            files
                .append_data(&mut header, rel, &mut entry)
                .map_err(|e| damaged(e, &count))?;
            file_count += 1;
        }
    }
    if over(&count) {
        return Err(ImportError::TooLarge(cfg.max_bytes));
    }
    let Some(manifest) = manifest else {
        return Err(ImportError::BadArchive(
            "the archive is empty: not a clonepool migrator export".into(),
        ));
    };
    if !complete {
        return Err(ImportError::ExportFailed(
            "the archive ends without export-complete.json: the export stopped midway".into(),
        ));
    }
    if sql_parts == 0 {
        return Err(ImportError::BadArchive(
            "the archive holds no database dump".into(),
        ));
    }
    // The clone's own mu-plugin, last, so nothing in the archive can replace it.
    for (path, body, mode, dir) in [
        ("mu-plugins/", &b""[..], 0o755, true),
        (
            "mu-plugins/clonepool-clone.php",
            CLONE_MU_PLUGIN_PHP.as_bytes(),
            0o644,
            false,
        ),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_uid(WWW_DATA);
        header.set_gid(WWW_DATA);
        header.set_mode(mode);
        header.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
        header.set_entry_type(if dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        header.set_size(body.len() as u64);
        files
            .append_data(&mut header, path, body)
            .map_err(|e| internal("spooling the clone's mu-plugin", e))?;
    }
    files
        .into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| internal("spooling wp-content", e))?;
    sql.flush().map_err(|e| internal("spooling the SQL", e))?;
    let core_tar = match core {
        Some(builder) => {
            builder
                .into_inner()
                .and_then(|mut w| w.flush())
                .map_err(|e| internal("spooling core", e))?;
            Some(core_path)
        }
        None => None,
    };
    Ok(Spooled {
        dir,
        manifest,
        sql: sql_path,
        sql_bytes,
        files_tar: files_path,
        files: file_count,
        core_tar,
        core_files: core_count,
        archive_bytes: count.load(Ordering::SeqCst),
    })
}

impl Spooled {
    /// The source's URL: `home` (where visitors see the site), else `siteurl`.
    pub fn source_url(&self) -> &str {
        if self.manifest.home.trim().is_empty() {
            &self.manifest.siteurl
        } else {
            &self.manifest.home
        }
    }

    /// Rewrites the spooled dump source → `to`; answers the rewritten file. Blocking.
    pub fn rewrite_sql(&self, to: &str) -> Result<PathBuf, ImportError> {
        let out_path = self.dir.path().join("dump.rewritten.sql");
        let mut from_urls = vec![self.source_url().to_string()];
        if !self.manifest.siteurl.is_empty() && self.manifest.siteurl != from_urls[0] {
            from_urls.push(self.manifest.siteurl.clone());
        }
        let mut input = self.sql.clone();
        for (i, from) in from_urls.iter().enumerate() {
            let rw = UrlRewriter::new(from, to, RewriteOptions::default()).map_err(|e| {
                ImportError::BadArchive(format!("manifest.json's site URL {from:?}: {e}"))
            })?;
            let output = self.dir.path().join(format!("dump.{i}.sql"));
            let reader = BufReader::new(
                std::fs::File::open(&input)
                    .map_err(|e| ImportError::Internal(format!("reading the SQL spool: {e}")))?,
            );
            let mut writer = BufWriter::new(
                std::fs::File::create(&output)
                    .map_err(|e| ImportError::Internal(format!("writing the SQL spool: {e}")))?,
            );
            rw.rewrite_sql_stream(reader, &mut writer)
                .map_err(|e| ImportError::BadArchive(format!("rewriting the dump's URLs: {e}")))?;
            writer
                .flush()
                .map_err(|e| ImportError::Internal(format!("writing the SQL spool: {e}")))?;
            input = output;
        }
        std::fs::rename(&input, &out_path)
            .map_err(|e| ImportError::Internal(format!("renaming the SQL spool: {e}")))?;
        Ok(out_path)
    }
}

/// A tar stream of one file `name` read from `path` (size taken from the file), streamed.
async fn single_file_tar(path: &Path, name: &str) -> Result<ArchiveStream, ImportError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| ImportError::Internal(format!("opening {}: {e}", path.display())))?;
    let size = file
        .metadata()
        .await
        .map_err(|e| ImportError::Internal(format!("reading {}: {e}", path.display())))?
        .len();
    let mut header = tar::Header::new_gnu();
    header
        .set_path(name)
        .map_err(|e| ImportError::Internal(format!("tar header: {e}")))?;
    header.set_size(size);
    header.set_mode(0o600);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let pad = (512 - (size % 512) as usize) % 512;
    let tail = vec![0u8; pad + 1024];
    let head = futures_util::stream::once(std::future::ready(Ok::<Bytes, std::io::Error>(
        Bytes::copy_from_slice(header.as_bytes()),
    )));
    let body = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
    let end = futures_util::stream::once(std::future::ready(Ok(Bytes::from(tail))));
    Ok(Box::pin(head.chain(body).chain(end)))
}

async fn file_stream(path: &Path) -> Result<ArchiveStream, ImportError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| ImportError::Internal(format!("opening {}: {e}", path.display())))?;
    Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
        file,
        256 * 1024,
    )))
}

async fn run(
    runtime: &dyn ContainerRuntime,
    pod: &PodId,
    role: ContainerRole,
    step: &'static str,
    request: ExecRequest,
    secrets: &[&Secret],
) -> Result<String, ImportError> {
    let out = runtime.exec(pod, role, request).await?;
    if !out.success() {
        let detail = crate::secrets::scrub(
            &format!("{} {}", out.stderr_str().trim(), out.stdout_str().trim()),
            secrets,
        );
        let detail: String = detail.trim().chars().take(800).collect();
        return Err(ImportError::Pod {
            step,
            detail: format!("exit status {}: {detail}", out.exit_code),
        });
    }
    Ok(out.stdout_str())
}

/// Replaces every symbolic link under wp-content by a real copy of its target, so unpacking the
/// archive never writes through a link into the image's WordPress.
fn materialize_links_script() -> Vec<String> {
    let script = format!(
        r#"cd {WP_CONTENT} || exit 3
find . -type l | while IFS= read -r l; do
  t=$(mktemp -d ./.clonepool-link.XXXXXX) || exit 4
  if [ -e "$l" ]; then cp -R -L --preserve=mode "$l" "$t/x" || exit 4; rm -f "$l" || exit 4; mv "$t/x" "$l" || exit 4; else rm -f "$l" || exit 4; fi
  rmdir "$t" || exit 4
done"#
    );
    vec!["sh".into(), "-c".into(), script]
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The settings SQL run after the dump: fresh admin password, sessions ended, site URL, search
/// engines blocked (the source's own setting kept aside for a restore), the magic login stored.
/// Prints the admin's login name.
fn finalize_sql(
    prefix: &str,
    site_url: &str,
    password: &Secret,
    token_hash: &str,
    expires: u64,
    host: &str,
) -> String {
    let magic = format!("{token_hash}|{expires}|{}", host.to_ascii_lowercase());
    format!(
        "USE wordpress;\n\
         SET @uid := (SELECT u.ID FROM {prefix}users u JOIN {prefix}usermeta m ON m.user_id = u.ID\n\
           WHERE m.meta_key = '{prefix}capabilities' AND m.meta_value LIKE '%\"administrator\"%' ORDER BY u.ID LIMIT 1);\n\
         UPDATE {prefix}users SET user_pass = MD5({pw}) WHERE ID = @uid;\n\
         DELETE FROM {prefix}usermeta WHERE meta_key = 'session_tokens';\n\
         UPDATE {prefix}options SET option_value = {url} WHERE option_name IN ('siteurl', 'home');\n\
         SET @public := COALESCE((SELECT option_value FROM {prefix}options WHERE option_name = 'blog_public'), '1');\n\
         DELETE FROM {prefix}options WHERE option_name IN ('blog_public', '{MAGIC_OPTION}', '{ORIGINAL_BLOG_PUBLIC_OPTION}');\n\
         INSERT INTO {prefix}options (option_name, option_value, autoload) VALUES ('blog_public', '0', 'yes');\n\
         INSERT INTO {prefix}options (option_name, option_value, autoload) VALUES ('{ORIGINAL_BLOG_PUBLIC_OPTION}', @public, 'no');\n\
         INSERT INTO {prefix}options (option_name, option_value, autoload) VALUES ('{MAGIC_OPTION}', CONCAT({magic}, '|', @uid), 'no');\n\
         SELECT user_login FROM {prefix}users WHERE ID = @uid;\n",
        pw = sql_literal(password.expose()),
        url = sql_literal(site_url),
        magic = sql_literal(&magic),
    )
}

/// Does the pod side of an import into `pod` (ASSIGNED to the clone at `clone_host`, whose
/// URL is `site_url`).
pub async fn apply(
    runtime: &dyn ContainerRuntime,
    pod: &PodId,
    clone_id: &CloneId,
    clone_host: &str,
    site_url: &str,
    spooled: Spooled,
) -> Result<ImportResponse, ImportError> {
    let site_url = site_url.to_string();
    let started = std::time::Instant::now();
    let spooled = Arc::new(spooled);
    let rewritten = {
        let spooled = spooled.clone();
        let to = site_url.clone();
        tokio::task::spawn_blocking(move || spooled.rewrite_sql(&to))
            .await
            .map_err(|e| ImportError::Internal(format!("URL rewrite task: {e}")))??
    };
    tracing::info!(pod = %pod, clone = %clone_id, ms = started.elapsed().as_millis() as u64, "import: dump rewritten");

    // The database: the rewritten dump into /tmp of the db container, then into MariaDB.
    let tar = single_file_tar(&rewritten, DB_SQL_PATH.trim_start_matches("/tmp/")).await?;
    runtime
        .put_archive(pod, ContainerRole::Db, "/tmp", tar)
        .await?;
    // The pod's own tables go first: the source may use another table prefix.
    let load = format!(
        "echo 'DROP DATABASE wordpress; CREATE DATABASE wordpress CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;' | {m} && {m} wordpress < {DB_SQL_PATH}; rc=$?; rm -f {DB_SQL_PATH}; exit $rc",
        m = MARIADB.join(" ")
    );
    run(
        runtime,
        pod,
        ContainerRole::Db,
        "loading the dump into MariaDB",
        ExecRequest::new(["sh", "-c", load.as_str()]).timeout(Duration::from_secs(900)),
        &[],
    )
    .await?;
    tracing::info!(pod = %pod, clone = %clone_id, ms = started.elapsed().as_millis() as u64, "import: database loaded");
    let prefix = spooled.manifest.table_prefix.clone();
    if prefix != "wp_" {
        // The reset writes a fresh config with the image's prefix again.
        let set = format!(
            "sed -i \"s/^\\$table_prefix = .*/\\$table_prefix = '{prefix}';/\" /etc/wordpress/config-default.php && grep -q \"^\\$table_prefix = '{prefix}';\" /etc/wordpress/config-default.php"
        );
        run(
            runtime,
            pod,
            ContainerRole::Web,
            "setting the table prefix",
            ExecRequest::new(["sh", "-c", set.as_str()]),
            &[],
        )
        .await?;
    }

    // wp-content: links replaced by copies first, then the archive's files.
    run(
        runtime,
        pod,
        ContainerRole::Web,
        "replacing links in wp-content",
        ExecRequest::new(materialize_links_script()).timeout(Duration::from_secs(120)),
        &[],
    )
    .await?;
    runtime
        .put_archive(
            pod,
            ContainerRole::Web,
            WP_CONTENT,
            file_stream(&spooled.files_tar).await?,
        )
        .await?;
    tracing::info!(pod = %pod, clone = %clone_id, ms = started.elapsed().as_millis() as u64, "import: wp-content unpacked");

    // WordPress's own files: the source's, when it runs another version and sent them all.
    let mut warnings = Vec::new();
    let source_version = spooled.manifest.wordpress_version.clone();
    let mut wordpress_version = String::new();
    if !source_version.is_empty() {
        match pod_wordpress_version(runtime, pod).await {
            Ok(version) => wordpress_version = version,
            Err(e) => warnings.push(format!(
                "cannot read the clone's WordPress version ({e}); the source's core (WordPress {source_version}) was not installed"
            )),
        }
    }
    if !wordpress_version.is_empty() && source_version != wordpress_version {
        match &spooled.core_tar {
            Some(core) if spooled.manifest.contents.core_complete => {
                // The marker first: if anything below fails, the reset still recreates the
                // web container from the image.
                run(
                    runtime,
                    pod,
                    ContainerRole::Web,
                    "marking the core replaced",
                    ExecRequest::new(["touch", CORE_REPLACED_MARKER]),
                    &[],
                )
                .await?;
                runtime
                    .put_archive(pod, ContainerRole::Web, WP_CORE, file_stream(core).await?)
                    .await?;
                wordpress_version = pod_wordpress_version(runtime, pod).await?;
                if wordpress_version != source_version {
                    return Err(ImportError::Pod {
                        step: "installing the source's WordPress core",
                        detail: format!(
                            "the clone reports WordPress {wordpress_version} after the source's {source_version} was unpacked"
                        ),
                    });
                }
                tracing::info!(pod = %pod, clone = %clone_id, version = %wordpress_version, files = spooled.core_files, "import: the source's WordPress core installed");
            }
            Some(_) => warnings.push(format!(
                "the source runs WordPress {source_version} but its export's core is incomplete (files linked outside the site, as on Debian's packaged WordPress); the clone runs WordPress {wordpress_version}"
            )),
            None => warnings.push(format!(
                "the source runs WordPress {source_version} and sent no core files; the clone runs WordPress {wordpress_version}"
            )),
        }
    }

    // The clone's settings and the magic login.
    let password = Secret::generate(PASSWORD_LEN);
    let token = Secret::generate(43);
    let token_hash = hex::encode(Sha256::digest(token.expose().as_bytes()));
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + MAGIC_TTL.as_secs();
    let out = run(
        runtime,
        pod,
        ContainerRole::Db,
        "clone settings",
        ExecRequest::new(MARIADB.iter().copied())
            .stdin(finalize_sql(
                &prefix,
                &site_url,
                &password,
                &token_hash,
                expires,
                clone_host,
            ))
            .timeout(Duration::from_secs(60)),
        &[&password],
    )
    .await?;
    let admin_username = out.trim().to_string();
    if admin_username.is_empty() {
        return Err(ImportError::Pod {
            step: "clone settings",
            detail: "the imported site has no administrator (no user with the administrator role in wp_usermeta)".into(),
        });
    }
    tracing::info!(pod = %pod, clone = %clone_id, ms = started.elapsed().as_millis() as u64, "import: done");
    Ok(ImportResponse {
        pod_id: pod.clone(),
        clone_id: clone_id.clone(),
        site_url: site_url.clone(),
        source_url: spooled.source_url().to_string(),
        magic_login_url: format!("{site_url}/?clonepool_login={}", token.expose()),
        admin_username,
        admin_password: password.expose().to_string(),
        sql_bytes: spooled.sql_bytes,
        files: spooled.files,
        archive_bytes: spooled.archive_bytes,
        wordpress_version,
        warnings,
    })
}

/// The WordPress version a pod runs (from its core's `wp-includes/version.php`).
pub async fn pod_wordpress_version(
    runtime: &dyn ContainerRuntime,
    pod: &PodId,
) -> Result<String, ImportError> {
    let out = run(
        runtime,
        pod,
        ContainerRole::Web,
        "reading the WordPress version",
        ExecRequest::new([
            "sed",
            "-n",
            r"s/^\$wp_version = '\([^']*\)';.*/\1/p",
            "/usr/share/wordpress/wp-includes/version.php",
        ]),
        &[],
    )
    .await?;
    let version = out.trim().to_string();
    if version.is_empty() {
        return Err(ImportError::Pod {
            step: "reading the WordPress version",
            detail: "wp-includes/version.php names no $wp_version".into(),
        });
    }
    Ok(version)
}

/// `POST /v1/import`: the whole import for `clone`, from the request body to READY. A failure
/// after the pod was found releases it (reset and verified before it is WARM again).
pub async fn import_clone(
    pool: &WarmPool,
    clone: &CloneId,
    body: axum::body::Body,
    cfg: &ImportConfig,
) -> Result<ImportResponse, ImportError> {
    // Fail fast (before reading the body) when no pod waits for this clone's import.
    pool.assigned_pod(clone)?;
    let result = import_inner(pool, clone, body, cfg).await;
    match result {
        Ok(resp) => {
            pool.mark_ready(clone).await?;
            Ok(resp)
        }
        Err(e) => {
            tracing::warn!(clone = %clone, error = %e, "import failed; releasing the pod");
            if let Err(release) = pool.release(clone).await {
                tracing::error!(clone = %clone, error = %release, "releasing the pod after a failed import failed");
            }
            Err(e)
        }
    }
}

async fn import_inner(
    pool: &WarmPool,
    clone: &CloneId,
    body: axum::body::Body,
    cfg: &ImportConfig,
) -> Result<ImportResponse, ImportError> {
    let stream = body
        .into_data_stream()
        .map_err(|e| std::io::Error::other(format!("reading the request body: {e}")));
    let reader = tokio_util::io::StreamReader::new(stream);
    let bridge = tokio_util::io::SyncIoBridge::new(reader);
    let spool_cfg = cfg.clone();
    let spooled = tokio::task::spawn_blocking(move || spool_archive(bridge, &spool_cfg))
        .await
        .map_err(|e| ImportError::Internal(format!("archive reader task: {e}")))??;
    tracing::info!(clone = %clone, bytes = spooled.archive_bytes, files = spooled.files, sql_bytes = spooled.sql_bytes, "import: archive checked and spooled");
    let runtime = pool.runtime();
    let store = pool.store().clone();
    pool.with_assigned_pod(clone, |rec| async move {
        let host = rec
            .clone_host
            .clone()
            .ok_or_else(|| ImportError::Internal(format!("pod {} has no clone host", rec.id)))?;
        let site_url = rec.clone_scheme.site_url(&host);
        let resp = apply(runtime.as_ref(), &rec.id, clone, &host, &site_url, spooled).await?;
        // A repeated claim must answer the imported site's login, not the claim's.
        store
            .set_clone_credentials(
                &rec.id,
                clone,
                &resp.admin_username,
                &Secret::new(resp.admin_password.clone()),
            )
            .map_err(|e| ImportError::Pool(e.into()))?;
        Ok(resp)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar builder for test archives (raw headers, so hostile entries can be written).
    struct ArchiveBuilder(tar::Builder<Vec<u8>>);

    impl ArchiveBuilder {
        fn new() -> Self {
            Self(tar::Builder::new(Vec::new()))
        }

        fn raw(
            mut self,
            name: &[u8],
            kind: tar::EntryType,
            body: &[u8],
            link: Option<&str>,
        ) -> Self {
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_entry_type(kind);
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            self.0.append(&h, body).unwrap();
            self
        }

        fn file(self, name: &str, body: &[u8]) -> Self {
            self.raw(name.as_bytes(), tar::EntryType::Regular, body, None)
        }

        fn dir(self, name: &str) -> Self {
            self.raw(name.as_bytes(), tar::EntryType::Directory, b"", None)
        }

        fn manifest(self) -> Self {
            self.file(
                "manifest.json",
                br#"{"format":"clonepool-migrator-archive","format_version":1,"table_prefix":"wp_","siteurl":"http://source.example","home":"http://source.example","tables":[]}"#,
            )
        }

        fn complete(self) -> Self {
            self.file(
                "export-complete.json",
                br#"{"complete":true,"database_parts":1}"#,
            )
        }

        fn finish(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    fn cfg(dir: &Path) -> ImportConfig {
        ImportConfig::new(dir)
    }

    fn good() -> ArchiveBuilder {
        ArchiveBuilder::new()
            .manifest()
            .dir("database")
            .file("database/000001.sql", b"INSERT INTO wp_options VALUES (1,'home','http://source.example','yes');\n")
            .file("database/000002.sql", b"INSERT INTO wp_options VALUES (2,'w','a:1:{s:3:\"url\";s:21:\"http://source.example\";}','yes');\n")
            .dir("wp-content")
            .dir("wp-content/uploads")
            .file("wp-content/uploads/a.txt", b"hello")
            .file("wp-content/mu-plugins/clonepool-clone.php", b"<?php evil();")
            .file("core/wp-load.php", b"<?php")
    }

    fn entries_of(tar_path: &Path) -> Vec<(String, Vec<u8>, u64)> {
        let mut out = Vec::new();
        let mut a = tar::Archive::new(std::fs::File::open(tar_path).unwrap());
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let uid = e.header().uid().unwrap();
            let mut body = Vec::new();
            e.read_to_end(&mut body).unwrap();
            out.push((name, body, uid));
        }
        out
    }

    #[test]
    fn a_complete_export_is_spooled_with_its_sql_parts_in_order_and_wp_content_owned_by_www_data() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = good().complete().finish();
        let s = spool_archive(&archive[..], &cfg(tmp.path())).unwrap();
        let sql = std::fs::read_to_string(&s.sql).unwrap();
        assert!(
            sql.starts_with("INSERT INTO wp_options VALUES (1,"),
            "{sql}"
        );
        assert!(sql.contains("(2,'w'"));
        assert_eq!(s.source_url(), "http://source.example");
        assert_eq!(s.files, 1);
        let entries = entries_of(&s.files_tar);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "uploads/",
                "uploads/a.txt",
                "mu-plugins/",
                "mu-plugins/clonepool-clone.php"
            ]
        );
        assert!(entries.iter().all(|e| e.2 == 33));
        let plugin = &entries[3].1;
        assert!(
            String::from_utf8_lossy(plugin).contains("pre_wp_mail"),
            "the archive's clonepool-* mu-plugin must not replace the agent's"
        );
        assert!(s.archive_bytes > 0 && s.archive_bytes as usize <= archive.len());
    }

    #[test]
    fn the_rewritten_dump_names_the_clone_and_keeps_serialized_lengths_right() {
        let tmp = tempfile::tempdir().unwrap();
        let s = spool_archive(&good().complete().finish()[..], &cfg(tmp.path())).unwrap();
        let out =
            std::fs::read_to_string(s.rewrite_sql("http://c1.localhost:8080").unwrap()).unwrap();
        assert!(!out.contains("source.example"), "{out}");
        assert!(
            out.contains("(1,'home','http://c1.localhost:8080','yes')"),
            "{out}"
        );
        assert!(out.contains(r#"s:24:"http://c1.localhost:8080";"#), "{out}");
    }

    fn refused(archive: Vec<u8>) -> ImportError {
        let tmp = tempfile::tempdir().unwrap();
        let err = spool_archive(&archive[..], &cfg(tmp.path())).unwrap_err();
        // The spool directory is gone with the error: nothing is left behind.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
        err
    }

    #[test]
    fn absolute_names_dot_dot_backslashes_and_control_characters_are_refused_as_hostile() {
        for name in [
            &b"/etc/passwd"[..],
            b"wp-content/../../etc/cron.d/x",
            b"wp-content/uploads/..",
            b"wp-content\\x.php",
            b"wp-content/a\nb",
            b"C:/x",
        ] {
            let err = refused(
                good()
                    .raw(name, tar::EntryType::Regular, b"x", None)
                    .complete()
                    .finish(),
            );
            assert!(
                matches!(err, ImportError::Hostile(_)),
                "{:?}: {err}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn links_devices_and_fifos_are_refused_as_hostile() {
        for (kind, what) in [
            (tar::EntryType::Symlink, "symbolic link"),
            (tar::EntryType::Link, "hard link"),
            (tar::EntryType::Char, "character device"),
            (tar::EntryType::Block, "block device"),
            (tar::EntryType::Fifo, "FIFO"),
        ] {
            let err = refused(
                good()
                    .raw(b"wp-content/uploads/x", kind, b"", Some("/etc/passwd"))
                    .complete()
                    .finish(),
            );
            let msg = err.to_string();
            assert!(
                matches!(err, ImportError::Hostile(_))
                    && msg.contains(what)
                    && msg.contains("wp-content/uploads/x"),
                "{msg}"
            );
        }
    }

    #[test]
    fn an_export_that_stops_midway_or_reports_an_error_is_refused() {
        let err = refused(good().finish());
        assert!(err.to_string().contains("stopped midway"), "{err}");
        let mut cut = good().complete().finish();
        cut.truncate(1536 + 100);
        assert!(matches!(
            refused(cut),
            ImportError::BadArchive(_) | ImportError::ExportFailed(_)
        ));
        let err = refused(
            good()
                .file(
                    "export-error.json",
                    br#"{"error":"disk full","at":"wp_posts"}"#,
                )
                .finish(),
        );
        assert!(
            matches!(&err, ImportError::ExportFailed(m) if m == "disk full"),
            "{err}"
        );
    }

    #[test]
    fn archives_without_a_manifest_first_or_with_other_top_level_entries_are_not_migrator_exports()
    {
        let err = refused(
            ArchiveBuilder::new()
                .file("database/000001.sql", b"")
                .manifest()
                .complete()
                .finish(),
        );
        assert!(err.to_string().contains("not manifest.json"), "{err}");
        let err = refused(good().file("etc/x", b"").complete().finish());
        assert!(
            err.to_string().contains("unexpected entry \"etc/x\""),
            "{err}"
        );
        let err = refused(ArchiveBuilder::new().manifest().complete().finish());
        assert!(err.to_string().contains("no database dump"), "{err}");
        let err = refused(good().complete().file("wp-content/late.txt", b"").finish());
        assert!(
            err.to_string().contains("follows export-complete.json"),
            "{err}"
        );
    }

    #[test]
    fn archives_over_the_byte_or_entry_limits_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = good().complete().finish();
        let mut c = cfg(tmp.path());
        c.max_bytes = 3000;
        assert!(matches!(
            spool_archive(&archive[..], &c),
            Err(ImportError::TooLarge(3000))
        ));
        let mut c = cfg(tmp.path());
        c.max_entries = 5;
        assert!(matches!(
            spool_archive(&archive[..], &c),
            Err(ImportError::TooManyEntries(5))
        ));
    }

    #[test]
    fn the_clone_settings_store_only_the_token_hash_bound_to_the_host() {
        let pw = Secret::new("pw-123");
        let sql = finalize_sql(
            "wp_",
            "http://c1.localhost:8080",
            &pw,
            "abcd",
            1700000000,
            "C1.localhost:8080",
        );
        assert!(sql.contains("'abcd|1700000000|c1.localhost:8080'"), "{sql}");
        assert!(sql.contains("'blog_public', '0'"));
        assert!(sql.contains("MD5('pw-123')"));
        assert!(sql.contains("DELETE FROM wp_usermeta WHERE meta_key = 'session_tokens'"));
        assert!(
            sql.contains("'clonepool_source_blog_public', @public"),
            "the source's own setting is kept for a restore: {sql}"
        );
    }

    #[test]
    fn the_clone_settings_use_the_source_table_prefix() {
        let sql = finalize_sql(
            "shop_",
            "http://c1.localhost:8080",
            &Secret::new("pw"),
            "abcd",
            1,
            "c1.localhost:8080",
        );
        assert!(sql.contains("UPDATE shop_users SET user_pass"), "{sql}");
        assert!(sql.contains("m.meta_key = 'shop_capabilities'"), "{sql}");
        assert!(
            sql.contains("UPDATE shop_options SET option_value"),
            "{sql}"
        );
        assert!(
            !sql.contains("wp_"),
            "no table of the image's prefix: {sql}"
        );
    }
}
