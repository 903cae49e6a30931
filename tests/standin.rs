//! A stand-in "WordPress" source on loopback for the fault tests: it answers the login, REST
//! nonce and migrator status routes the coordinator calls, and serves a complete migrator export
//! archive whose body can be held midway behind a gate, so a fault (a killed process or
//! container) can land while the agent is reading the import. Also builds such an archive.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Builds a complete migrator export: manifest, one SQL part, wp-content files, completion mark.
pub fn export_archive(site_url: &str, sql: &[u8], files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8], dir: bool| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(if dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_size(data.len() as u64);
        h.set_mode(if dir { 0o755 } else { 0o644 });
        h.set_mtime(1_700_000_000);
        tar.append_data(&mut h, name, data)
            .expect("appending to an in-memory tar");
    };
    let manifest = serde_json::json!({
        "format": "clonepool-migrator-archive",
        "format_version": 1,
        "table_prefix": "wp_",
        "siteurl": site_url,
        "home": site_url,
    });
    add("manifest.json", manifest.to_string().as_bytes(), false);
    add("database", b"", true);
    add("database/000001.sql", sql, false);
    add("wp-content", b"", true);
    let mut dirs = std::collections::BTreeSet::new();
    for (name, _) in files {
        let mut parts: Vec<&str> = name.split('/').collect();
        parts.pop();
        for i in 1..=parts.len() {
            dirs.insert(format!("wp-content/{}", parts[..i].join("/")));
        }
    }
    for dir in dirs {
        add(&dir, b"", true);
    }
    for (name, body) in files {
        add(&format!("wp-content/{name}"), body, false);
    }
    add("export-complete.json", br#"{"complete":true}"#, false);
    tar.into_inner().expect("an in-memory tar")
}

/// The stand-in source; stops when dropped.
pub struct GatedSource {
    /// `http://127.0.0.1:{port}/`
    pub url: String,
    gate: watch::Sender<bool>,
    held: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GatedSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GatedSource {
    /// Serves `archive`; while the gate is closed each export stops after `hold_at` bytes
    /// (clamped into the archive) until it opens.
    pub async fn start(archive: Vec<u8>, hold_at: usize, open: bool) -> GatedSource {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let (gate, gate_rx) = watch::channel(open);
        let held = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let archive = Arc::new(archive);
        let hold_at = hold_at.clamp(1, archive.len().saturating_sub(1).max(1));
        let (h, s) = (held.clone(), served.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let (archive, gate, held, served) =
                    (archive.clone(), gate_rx.clone(), h.clone(), s.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, archive, hold_at, gate, held, served).await;
                });
            }
        });
        GatedSource {
            url,
            gate,
            held,
            served,
            task,
        }
    }

    pub fn open(&self) {
        let _ = self.gate.send(true);
    }

    pub fn close(&self) {
        let _ = self.gate.send(false);
    }

    /// Exports waiting at the closed gate right now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Exports sent completely.
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

fn reply(status: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
}

async fn serve(
    mut conn: tokio::net::TcpStream,
    archive: Arc<Vec<u8>>,
    hold_at: usize,
    mut gate: watch::Receiver<bool>,
    held: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = head.lines().next().unwrap_or("").to_string();
    let out = if line.starts_with("GET /wp-login.php") {
        reply(
            "200 OK",
            "Set-Cookie: wordpress_test_cookie=WP; path=/\r\n",
            "<form><input name=\"log\"></form>",
        )
    } else if line.starts_with("POST /wp-login.php") {
        reply(
            "302 Found",
            "Location: /wp-admin/\r\nSet-Cookie: wordpress_logged_in=x; path=/\r\n",
            "",
        )
    } else if line.starts_with("GET /wp-admin/admin-ajax.php") {
        reply("200 OK", "", "0123456789")
    } else if line.starts_with("GET /wp-admin/") {
        reply("200 OK", "", "Dashboard")
    } else if line.contains("clonepool/v1/status") || line.contains("clonepool%2Fv1%2Fstatus") {
        reply(
            "200 OK",
            "Content-Type: application/json\r\n",
            "{\"plugin\":\"clonepool-migrator\"}",
        )
    } else if line.contains("clonepool/v1/export") || line.contains("clonepool%2Fv1%2Fexport") {
        let mut head = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let first = &archive[..hold_at];
        head.extend_from_slice(format!("{:x}\r\n", first.len()).as_bytes());
        head.extend_from_slice(first);
        head.extend_from_slice(b"\r\n");
        conn.write_all(&head).await?;
        conn.flush().await?;
        if !*gate.borrow() {
            held.fetch_add(1, Ordering::SeqCst);
            let opened = gate.wait_for(|open| *open).await.is_ok();
            held.fetch_sub(1, Ordering::SeqCst);
            if !opened {
                return Ok(());
            }
        }
        let rest = &archive[hold_at..];
        let mut tail = format!("{:x}\r\n", rest.len()).into_bytes();
        tail.extend_from_slice(rest);
        tail.extend_from_slice(b"\r\n0\r\n\r\n");
        conn.write_all(&tail).await?;
        conn.flush().await?;
        served.fetch_add(1, Ordering::SeqCst);
        return Ok(());
    } else {
        reply("404 Not Found", "", "")
    };
    conn.write_all(out.as_bytes()).await?;
    conn.flush().await
}
