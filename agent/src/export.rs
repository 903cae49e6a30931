//! Exporting a READY clone's site for a restore (`POST /v1/export`): the database is dumped with
//! `mariadb-dump` inside the db container and read out through the runtime's archive API,
//! rewritten clone URL → target URL (posts' `guid` untouched), and wp-content is read the same
//! way from the web container. Nothing goes through the clone's HTTP server, so what the clone's
//! PHP does cannot change what is exported. The result is one tar in the migrator plugin's import
//! layout (`manifest.json`, `database.sql`, `wp-content/…`), spooled to a private file so the
//! answer carries a `Content-Length`.
//!
//! What only the clone has stays out: the clone's own mu-plugins (`clonepool-*`), its captured
//! mail, caches and backups, its magic login, and its "discourage search engines" setting (the
//! value the source had before the clone was made is put back).

use crate::import::{check_name, ImportError, MAGIC_OPTION, ORIGINAL_BLOG_PUBLIC_OPTION};
use crate::pod_commands::{MARIADB, WP_CONTENT};
use crate::pool::{PoolError, WarmPool};
use crate::runtime::{ContainerRuntime, ExecRequest, RuntimeError};
use bytes::Bytes;
use clonepool_common::agent_api::ExportRequest;
use clonepool_common::ids::PodId;
use clonepool_common::pod::ContainerRole;
use clonepool_common::rewrite::{RewriteOptions, UrlRewriter};
use futures_util::{StreamExt, TryStreamExt};
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// Where the dump is written in the db container (emptied by every reset).
const DUMP_PATH: &str = "/tmp/clonepool-export.sql";
/// `www-data` in the workload image.
const WWW_DATA: u64 = 33;

/// wp-content paths never exported (relative to wp-content): caches, backups, the clone's own
/// helpers and captured mail. Directory names match the whole directory.
const EXCLUDED: &[&str] = &[
    "cache",
    "upgrade",
    "upgrade-temp-backup",
    "clonepool-backups",
    "clonepool-mail",
    "debug.log",
    "object-cache.php",
    "advanced-cache.php",
    "plugins/clonepool-migrator",
];

/// Limits on one export.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// Most bytes of the archive (uncompressed).
    pub max_bytes: u64,
    /// Where the archive is spooled before it is sent.
    pub spool_dir: PathBuf,
}

impl ExportConfig {
    pub fn new(spool_dir: impl Into<PathBuf>) -> Self {
        Self {
            max_bytes: 2 * 1024 * 1024 * 1024,
            spool_dir: spool_dir.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("{step} failed in the clone's pod: {detail}")]
    Pod { step: &'static str, detail: String },
    #[error("the export is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("export: {0}")]
    Internal(String),
}

/// The spooled archive: removed from disk when dropped.
pub struct ExportedArchive {
    pub file: tempfile::NamedTempFile,
    pub len: u64,
    /// The clone's URL (what the archive was rewritten from).
    pub source_url: String,
    pub sql_bytes: u64,
    pub files: u64,
}

/// `POST /v1/export`: the clone's site as an import archive for `req.target_url`.
pub async fn export_clone(
    pool: &WarmPool,
    req: &ExportRequest,
    cfg: &ExportConfig,
) -> Result<ExportedArchive, ExportError> {
    if !req.database && !req.files {
        return Err(ExportError::BadRequest(
            "nothing to export: database and files are both false".into(),
        ));
    }
    let runtime = pool.runtime();
    pool.with_ready_pod(&req.clone_id, |rec| async move {
        let clone_url = rec
            .site_url()
            .ok_or_else(|| ExportError::Internal(format!("pod {} has no clone host", rec.id)))?;
        let rewriter = UrlRewriter::new(&clone_url, &req.target_url, RewriteOptions::for_restore())
            .map_err(|e| {
                ExportError::BadRequest(format!("target_url {:?}: {e}", req.target_url))
            })?;
        let started = std::time::Instant::now();
        let archive = build(runtime.as_ref(), &rec.id, req, cfg, &clone_url, rewriter).await;
        if req.database {
            // The dump may hold the clone's data: never leave it lying in /tmp.
            let _ = runtime
                .exec(
                    &rec.id,
                    ContainerRole::Db,
                    ExecRequest::new(["rm", "-f", DUMP_PATH]),
                )
                .await;
        }
        if let Ok(a) = &archive {
            tracing::info!(pod = %rec.id, clone = %req.clone_id, bytes = a.len, files = a.files,
                ms = started.elapsed().as_millis() as u64, "export: archive ready");
        }
        archive
    })
    .await?
}

async fn build(
    runtime: &dyn ContainerRuntime,
    pod: &PodId,
    req: &ExportRequest,
    cfg: &ExportConfig,
    clone_url: &str,
    rewriter: UrlRewriter,
) -> Result<ExportedArchive, ExportError> {
    let prefix = table_prefix(runtime, pod).await?;
    let dump = if req.database {
        Some(dump_database(runtime, pod, &prefix).await?)
    } else {
        None
    };
    let files = if req.files {
        Some(
            runtime
                .get_archive(pod, ContainerRole::Web, WP_CONTENT)
                .await?,
        )
    } else {
        None
    };
    let manifest = serde_json::json!({
        "format": "clonepool-migrator-archive",
        "format_version": 1,
        "created_by": "clonepool-agent",
        "table_prefix": prefix,
        "siteurl": clone_url,
        "home": clone_url,
        "contents": {"database": req.database, "wp_content": req.files, "core": false},
    });
    let spool_dir = cfg.spool_dir.clone();
    let max_bytes = cfg.max_bytes;
    let source_url = clone_url.to_string();
    let to_reader = |stream: crate::runtime::ArchiveStream| {
        tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(
            stream.map_err(|e| std::io::Error::other(e.to_string())),
        ))
    };
    let dump = dump.map(|(stream, tail)| (to_reader(stream), tail));
    let files = files.map(to_reader);
    tokio::task::spawn_blocking(move || {
        assemble(
            &spool_dir, max_bytes, &manifest, dump, files, &rewriter, source_url,
        )
    })
    .await
    .map_err(|e| ExportError::Internal(format!("archive writer task: {e}")))?
}

/// The table prefix of the clone's WordPress, read from its config.
async fn table_prefix(runtime: &dyn ContainerRuntime, pod: &PodId) -> Result<String, ExportError> {
    let out = runtime
        .exec(
            pod,
            ContainerRole::Web,
            ExecRequest::new([
                "sed",
                "-n",
                r"s/^\$table_prefix *= *'\([A-Za-z0-9_]*\)'.*/\1/p",
                "/etc/wordpress/config-default.php",
            ]),
        )
        .await?;
    let prefix = out.stdout_str().trim().to_string();
    if !out.success() || !valid_prefix(&prefix) {
        return Err(ExportError::Pod {
            step: "reading the table prefix",
            detail: format!(
                "no $table_prefix in the clone's config (exit {}: {})",
                out.exit_code,
                out.stderr_str().trim()
            ),
        });
    }
    Ok(prefix)
}

pub(crate) fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 32
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Dumps the site's tables into the db container's /tmp and opens the file as a tar stream;
/// answers it with the SQL to append (the source's own search-engine setting).
async fn dump_database(
    runtime: &dyn ContainerRuntime,
    pod: &PodId,
    prefix: &str,
) -> Result<(crate::runtime::ArchiveStream, String), ExportError> {
    let mariadb = MARIADB.join(" ");
    let options = format!("{prefix}options");
    // Rows only the clone has: its magic login, its blocked search engines, the saved value.
    let clone_only = format!(
        "option_name NOT IN ('{MAGIC_OPTION}', 'blog_public', '{ORIGINAL_BLOG_PUBLIC_OPTION}')"
    );
    let script = format!(
        r#"set -e
DUMP="mariadb-dump --no-defaults --socket=/run/mysqld/mysqld.sock --user=root --single-transaction --skip-lock-tables --complete-insert --hex-blob --default-character-set=utf8mb4 --skip-triggers --no-create-db --skip-comments --skip-dump-date"
TABLES=$({mariadb} -e "SELECT table_name FROM information_schema.tables WHERE table_schema = 'wordpress' AND table_type = 'BASE TABLE' AND LEFT(table_name, {len}) = '{prefix}' AND table_name <> '{options}' ORDER BY table_name")
umask 077
: > {DUMP_PATH}
# Without table names mariadb-dump would dump every table.
if [ -n "$TABLES" ]; then $DUMP wordpress $TABLES >> {DUMP_PATH}; fi
$DUMP --where="{clone_only}" wordpress {options} >> {DUMP_PATH}
{mariadb} -e "SELECT COALESCE((SELECT option_value FROM wordpress.{options} WHERE option_name = '{ORIGINAL_BLOG_PUBLIC_OPTION}'), '1')"
"#,
        len = prefix.len(),
    );
    let out = runtime
        .exec(
            pod,
            ContainerRole::Db,
            ExecRequest::new(["sh", "-c", script.as_str()]).timeout(Duration::from_secs(900)),
        )
        .await?;
    if !out.success() {
        let detail: String = out.stderr_str().trim().chars().take(800).collect();
        return Err(ExportError::Pod {
            step: "dumping the database",
            detail: format!("exit status {}: {detail}", out.exit_code),
        });
    }
    let blog_public = match out.stdout_str().trim() {
        "0" => "0",
        _ => "1",
    };
    let tail = format!(
        "\nINSERT INTO `{options}` (`option_name`, `option_value`, `autoload`) VALUES ('blog_public', '{blog_public}', 'yes');\n"
    );
    let stream = runtime
        .get_archive(pod, ContainerRole::Db, DUMP_PATH)
        .await?;
    Ok((stream, tail))
}

/// Counts what passes through a writer, failing past `limit`.
struct Limited<W> {
    inner: W,
    written: u64,
    limit: u64,
}

impl<W: Write> Write for Limited<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            return Err(std::io::Error::other(LimitReached));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Debug)]
struct LimitReached;
impl std::fmt::Display for LimitReached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("size limit reached")
    }
}
impl std::error::Error for LimitReached {}

fn io_error(what: &str, max_bytes: u64) -> impl Fn(std::io::Error) -> ExportError + '_ {
    move |e| {
        if e.get_ref().is_some_and(|inner| inner.is::<LimitReached>()) {
            ExportError::TooLarge(max_bytes)
        } else {
            ExportError::Internal(format!("{what}: {e}"))
        }
    }
}

/// Whether a wp-content path (relative, normalised) stays out of the export.
pub fn excluded(rel: &str) -> bool {
    rel.starts_with("mu-plugins/clonepool-")
        || EXCLUDED
            .iter()
            .any(|ex| rel == *ex || rel.strip_prefix(ex).is_some_and(|r| r.starts_with('/')))
}

/// Writes the archive: manifest, rewritten dump, filtered wp-content. Blocking.
fn assemble(
    spool_dir: &std::path::Path,
    max_bytes: u64,
    manifest: &serde_json::Value,
    dump: Option<(impl Read, String)>,
    files: Option<impl Read>,
    rewriter: &UrlRewriter,
    source_url: String,
) -> Result<ExportedArchive, ExportError> {
    std::fs::create_dir_all(spool_dir)
        .map_err(|e| ExportError::Internal(format!("spool dir {}: {e}", spool_dir.display())))?;
    let err = |what: &'static str| io_error(what, max_bytes);
    let out = tempfile::Builder::new()
        .prefix("export-")
        .suffix(".tar")
        .tempfile_in(spool_dir)
        .map_err(err("creating the spool file"))?;
    let writer = Limited {
        inner: BufWriter::new(out.reopen().map_err(err("opening the spool file"))?),
        written: 0,
        limit: max_bytes,
    };
    let mut tar = tar::Builder::new(writer);
    let append = |tar: &mut tar::Builder<Limited<BufWriter<std::fs::File>>>,
                  name: &str,
                  size: u64,
                  data: &mut dyn Read|
     -> Result<(), ExportError> {
        let mut header = tar::Header::new_gnu();
        header.set_size(size);
        header.set_mode(0o644);
        header.set_uid(WWW_DATA);
        header.set_gid(WWW_DATA);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, data)
            .map_err(err("writing the archive"))
    };
    let manifest = serde_json::to_vec_pretty(manifest)
        .map_err(|e| ExportError::Internal(format!("manifest: {e}")))?;
    append(
        &mut tar,
        "manifest.json",
        manifest.len() as u64,
        &mut manifest.as_slice(),
    )?;

    let mut sql_bytes = 0;
    if let Some((reader, tail)) = dump {
        // The rewritten dump is spooled first: a tar header needs its size up front.
        let mut sql = tempfile::Builder::new()
            .prefix("export-sql-")
            .tempfile_in(spool_dir)
            .map_err(err("creating the SQL spool"))?;
        let mut inner = tar::Archive::new(reader);
        let mut entries = inner.entries().map_err(err("reading the dump"))?;
        let mut entry = entries
            .next()
            .ok_or_else(|| ExportError::Internal("the runtime answered no dump file".into()))?
            .map_err(err("reading the dump"))?;
        {
            let mut w = Limited {
                inner: BufWriter::new(sql.as_file_mut()),
                written: 0,
                limit: max_bytes,
            };
            rewriter
                .rewrite_sql_stream(std::io::BufReader::new(&mut entry), &mut w)
                .map_err(|e| ExportError::Internal(format!("rewriting the dump's URLs: {e}")))?;
            w.write_all(tail.as_bytes())
                .map_err(err("writing the SQL spool"))?;
            w.flush().map_err(err("writing the SQL spool"))?;
            sql_bytes = w.written;
        }
        let mut file = sql.reopen().map_err(err("reading the SQL spool"))?;
        append(&mut tar, "database.sql", sql_bytes, &mut file)?;
    }

    let mut file_count = 0;
    if let Some(reader) = files {
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(err("reading wp-content"))? {
            let mut entry = entry.map_err(err("reading wp-content"))?;
            let name = match check_name(&entry.path_bytes()) {
                Ok(name) => name,
                Err(ImportError::Hostile(why)) => {
                    tracing::warn!(%why, "export: wp-content entry left out");
                    continue;
                }
                Err(e) => return Err(ExportError::Internal(e.to_string())),
            };
            // The runtime names entries after the directory: `wp-content/…`.
            let Some(rel) = name.strip_prefix("wp-content/") else {
                continue;
            };
            if excluded(rel) {
                continue;
            }
            let kind = entry.header().entry_type();
            let mut header = tar::Header::new_gnu();
            header.set_uid(WWW_DATA);
            header.set_gid(WWW_DATA);
            header.set_mode(entry.header().mode().unwrap_or(0o644) & 0o777);
            header.set_mtime(entry.header().mtime().unwrap_or(0));
            let path = format!("wp-content/{rel}");
            if kind.is_dir() {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, &path, std::io::empty())
                    .map_err(err("writing the archive"))?;
            } else if kind.is_file() {
                let size = entry.header().size().map_err(err("reading wp-content"))?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(size);
                tar.append_data(&mut header, &path, &mut entry)
                    .map_err(err("writing the archive"))?;
                file_count += 1;
            }
            // Links, devices and FIFOs never leave the pod: the target's plugin refuses them.
        }
    }
    let mut writer = tar.into_inner().map_err(err("finishing the archive"))?;
    writer.flush().map_err(err("finishing the archive"))?;
    let len = writer.written;
    drop(writer);
    Ok(ExportedArchive {
        file: out,
        len,
        source_url,
        sql_bytes,
        files: file_count,
    })
}

/// The spooled archive as a byte stream; the file is removed when the stream ends or is dropped.
pub async fn into_stream(
    archive: ExportedArchive,
) -> Result<impl futures_util::Stream<Item = Result<Bytes, std::io::Error>>, ExportError> {
    let file = tokio::fs::File::from_std(
        archive
            .file
            .reopen()
            .map_err(|e| ExportError::Internal(format!("opening the spool file: {e}")))?,
    );
    let keep = archive.file;
    Ok(
        tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).map(move |chunk| {
            let _ = &keep;
            chunk
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_only_and_cache_paths_stay_out_of_an_export() {
        for rel in [
            "mu-plugins/clonepool-clone.php",
            "clonepool-mail/mail.jsonl",
            "clonepool-mail",
            "cache/page/index.html",
            "plugins/clonepool-migrator/clonepool-migrator.php",
            "debug.log",
            "object-cache.php",
        ] {
            assert!(excluded(rel), "{rel} should be left out");
        }
        for rel in [
            "uploads/2026/11/photo.png",
            "themes/twentytwentythree/style.css",
            "plugins/akismet/akismet.php",
            "mu-plugins/site-helpers.php",
            "cache.php",
            "caches/x",
        ] {
            assert!(!excluded(rel), "{rel} should be exported");
        }
    }

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn read_entries(path: &std::path::Path) -> Vec<(String, Vec<u8>)> {
        let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (name, data)
            })
            .collect()
    }

    #[test]
    fn the_archive_holds_the_manifest_the_rewritten_dump_and_wp_content_without_clone_only_files() {
        let dir = tempfile::tempdir().unwrap();
        let dump = tar_of(&[(
            "clonepool-export.sql",
            b"INSERT INTO `wp_options` (`option_name`, `option_value`) VALUES ('widget','a:1:{s:3:\\\"url\\\";s:26:\\\"http://c1.localhost:8080/x\\\";}');\n",
        )]);
        let files = tar_of(&[
            ("wp-content/uploads/a.txt", b"see http://c1.localhost:8080/"),
            ("wp-content/mu-plugins/clonepool-clone.php", b"<?php"),
            ("wp-content/clonepool-mail/mail.jsonl", b"{}"),
        ]);
        let rw = UrlRewriter::new(
            "http://c1.localhost:8080",
            "https://shop.example",
            RewriteOptions::for_restore(),
        )
        .unwrap();
        let archive = assemble(
            dir.path(),
            1 << 20,
            &serde_json::json!({"table_prefix": "wp_"}),
            Some((dump.as_slice(), "\nTAIL;\n".to_string())),
            Some(files.as_slice()),
            &rw,
            "http://c1.localhost:8080".into(),
        )
        .unwrap();
        let entries = read_entries(archive.file.path());
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["manifest.json", "database.sql", "wp-content/uploads/a.txt"]
        );
        let sql = String::from_utf8(entries[1].1.clone()).unwrap();
        assert!(
            sql.contains(r#"s:22:\"https://shop.example/x\""#),
            "serialized length fixed: {sql}"
        );
        assert!(sql.ends_with("\nTAIL;\n"));
        // File contents are not rewritten: only the database holds URLs that WordPress uses.
        assert_eq!(entries[2].1, b"see http://c1.localhost:8080/");
        assert_eq!(
            archive.len,
            std::fs::metadata(archive.file.path()).unwrap().len()
        );
        assert_eq!(archive.files, 1);
    }

    #[test]
    fn an_export_over_the_size_limit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![b'x'; 64 * 1024];
        let files = tar_of(&[("wp-content/uploads/big.bin", &big)]);
        let rw = UrlRewriter::new(
            "http://a.localhost",
            "https://b.example",
            Default::default(),
        )
        .unwrap();
        let err = assemble(
            dir.path(),
            32 * 1024,
            &serde_json::json!({}),
            None::<(&[u8], String)>,
            Some(files.as_slice()),
            &rw,
            String::new(),
        )
        .err()
        .expect("refused");
        assert!(matches!(err, ExportError::TooLarge(_)), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no spool file left behind"
        );
    }
}
