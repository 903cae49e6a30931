//! Support for the migrator plugin's end-to-end tests: WordPress sites started by
//! `scripts/demo-site` (labelled clonepool.test=true, removed when dropped), a REST client that
//! logs in like a browser (cookie + REST nonce), PHP run inside a site, and tar helpers
//! (reading archives, building normal and deliberately hostile ones).
#![allow(dead_code)]

use serde_json::Value;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The workload image under test.
pub fn image() -> String {
    std::env::var("CLONEPOOL_IMAGE").unwrap_or_else(|_| {
        panic!("CLONEPOOL_IMAGE is not set: run these tests through scripts/test (it builds the image and sets it)")
    })
}

/// One site-starting test at a time: MariaDB + Apache start-ups saturate a small machine.
pub static SITES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// What `scripts/demo-site` should set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteKind {
    /// The demo "production" site: content, theme, menu, widgets, plugin.
    Demo,
    /// A fresh WordPress with the plugin and no content.
    Bare,
    /// The demo site without the migrator plugin (clonepool installs it over HTTP).
    DemoWithoutPlugin,
    /// The demo site with the table prefix `shop_` instead of `wp_`.
    DemoShopPrefix,
}

/// A WordPress site (db + web containers) started by `scripts/demo-site`; removed on drop.
pub struct Site {
    pub name: String,
    pub url: String,
    pub user: String,
    pub password: String,
    pub web: String,
    pub db: String,
    env_dir: tempfile::TempDir,
}

impl Site {
    pub fn start(kind: SiteKind) -> Site {
        let r: u32 = rand::random();
        let name = format!(
            "test-migrator-{}-{r:08x}",
            match kind {
                SiteKind::Demo => "demo",
                SiteKind::Bare => "bare",
                SiteKind::DemoWithoutPlugin => "noplugin",
                SiteKind::DemoShopPrefix => "prefix",
            }
        );
        let env_dir = tempfile::tempdir().expect("temp dir");
        let env_file = env_dir.path().join("site.env");
        let mut cmd = Command::new(repo_root().join("scripts/demo-site"));
        cmd.args([
            "--name",
            &name,
            "--port",
            "auto",
            "--label",
            "clonepool.test=true",
        ])
        .arg("--env-file")
        .arg(&env_file)
        .args(["--image", &image()]);
        match kind {
            SiteKind::Bare => {
                cmd.arg("--bare");
            }
            SiteKind::DemoWithoutPlugin => {
                cmd.arg("--no-plugin");
            }
            SiteKind::DemoShopPrefix => {
                cmd.args(["--table-prefix", "shop_"]);
            }
            SiteKind::Demo => {}
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/demo-site");
        let mut site = Site {
            name,
            url: String::new(),
            user: String::new(),
            password: String::new(),
            web: String::new(),
            db: String::new(),
            env_dir,
        };
        assert!(
            out.status.success(),
            "scripts/demo-site failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = std::fs::read_to_string(&env_file).expect("demo-site writes its env file");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&env_file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the credentials file must be 0600");
        }
        for line in env.lines() {
            let (key, value) = line.split_once('=').expect("KEY=value lines");
            match key {
                "DEMO_URL" => site.url = value.to_string(),
                "DEMO_USER" => site.user = value.to_string(),
                "DEMO_PASSWORD" => site.password = value.to_string(),
                "DEMO_WEB" => site.web = value.to_string(),
                "DEMO_DB" => site.db = value.to_string(),
                _ => {}
            }
        }
        assert!(
            site.url.starts_with("http://127.0.0.1:"),
            "DEMO_URL {}",
            site.url
        );
        assert!(site.password.len() >= 20, "a random admin password");
        site
    }

    /// Runs PHP code as www-data in the web container after loading WordPress; `stdin` is
    /// available to the code as php://stdin. Returns stdout; panics with stderr on failure.
    pub fn wp_php(&self, code: &str, stdin: &[u8]) -> String {
        let program = format!(
            "$_SERVER['HTTP_HOST'] = 'localhost'; require '/usr/share/wordpress/wp-load.php'; {code}"
        );
        let mut child = Command::new("docker")
            .args([
                "exec", "-i", "-u", "www-data", &self.web, "php", "-r", &program,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker exec php");
        {
            use std::io::Write;
            let mut input = child.stdin.take().unwrap();
            input.write_all(stdin).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "php in {} failed: {}",
            self.web,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell command in the web container (as root); returns (success, stdout).
    pub fn web_sh(&self, script: &str) -> (bool, String) {
        let out = Command::new("docker")
            .args(["exec", &self.web, "sh", "-c", script])
            .output()
            .expect("docker exec");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// `mariadb-dump wordpress` from the db container.
    pub fn mariadb_dump(&self) -> Vec<u8> {
        let out = Command::new("docker")
            .args(["exec", &self.db, "mariadb-dump", "wordpress"])
            .output()
            .expect("docker exec mariadb-dump");
        assert!(out.status.success(), "mariadb-dump failed");
        out.stdout
    }

    /// Creates a WordPress user with `role`; the password goes through stdin.
    pub fn add_user(&self, login: &str, role: &str, password: &str) {
        let code = format!(
            "$pw = trim(fgets(fopen('php://stdin', 'r'))); $id = wp_insert_user(['user_login' => '{login}', \
             'user_pass' => $pw, 'user_email' => '{login}@demo.example', 'role' => '{role}']); \
             if (is_wp_error($id)) {{ fwrite(fopen('php://stderr', 'w'), $id->get_error_message()); exit(1); }}"
        );
        self.wp_php(&code, format!("{password}\n").as_bytes());
    }

    /// Sets the migrator's limits (option clonepool_migrator_limits); None removes them.
    pub fn set_limits(&self, limits: Option<&str>) {
        match limits {
            Some(json) => self.wp_php(
                &format!(
                    "update_option('clonepool_migrator_limits', json_decode('{json}', true));"
                ),
                b"",
            ),
            None => self.wp_php("delete_option('clonepool_migrator_limits');", b""),
        };
    }

    pub async fn get_page(&self, path: &str) -> (u16, Vec<u8>) {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let resp = http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.bytes().await.unwrap().to_vec())
    }

    pub async fn page_text(&self, path: &str) -> String {
        let (status, body) = self.get_page(path).await;
        assert_eq!(status, 200, "GET {}{path}", self.url);
        String::from_utf8_lossy(&body).into_owned()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("scripts/demo-site"))
            .args(["--name", &self.name, "--down"])
            .arg("--env-file")
            .arg(self.env_dir.path().join("site.env"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A REST client logged in to a site the way a browser is: wp-login.php sets the auth cookies,
/// admin-ajax.php?action=rest-nonce gives the X-WP-Nonce that cookie-authenticated REST needs.
pub struct Wp {
    pub base: String,
    pub http: reqwest::Client,
    pub nonce: String,
}

/// A REST answer: status and JSON body (Null when the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub json: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.json["code"].as_str().unwrap_or("")
    }
}

impl Wp {
    pub async fn login(base: &str, user: &str, password: &str) -> Wp {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap();
        // The first GET sets WordPress's test cookie; the login POST checks it.
        http.get(format!("{base}/wp-login.php"))
            .send()
            .await
            .expect("GET wp-login.php");
        let resp = http
            .post(format!("{base}/wp-login.php"))
            .form(&[
                ("log", user),
                ("pwd", password),
                ("wp-submit", "Log In"),
                ("testcookie", "1"),
            ])
            .send()
            .await
            .expect("POST wp-login.php");
        assert_eq!(
            resp.status().as_u16(),
            302,
            "login as {user} failed (no redirect)"
        );
        let nonce = http
            .get(format!("{base}/wp-admin/admin-ajax.php?action=rest-nonce"))
            .send()
            .await
            .expect("rest-nonce")
            .text()
            .await
            .unwrap();
        assert!(
            nonce.len() == 10 && nonce.chars().all(|c| c.is_ascii_hexdigit()),
            "unexpected REST nonce answer: {nonce:?}"
        );
        Wp {
            base: base.to_string(),
            http,
            nonce,
        }
    }

    /// A client with no credentials at all.
    pub fn anonymous(base: &str) -> Wp {
        Wp {
            base: base.to_string(),
            http: reqwest::Client::new(),
            nonce: String::new(),
        }
    }

    fn route(&self, route: &str) -> String {
        format!("{}/wp-json/clonepool/v1/{route}", self.base)
    }

    fn with_nonce(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if self.nonce.is_empty() {
            req
        } else {
            req.header("X-WP-Nonce", &self.nonce)
        }
    }

    async fn answer(resp: reqwest::Response) -> Answer {
        let status = resp.status().as_u16();
        let body = resp.bytes().await.expect("response body");
        Answer {
            status,
            json: serde_json::from_slice(&body).unwrap_or(Value::Null),
        }
    }

    pub async fn get(&self, route: &str) -> Answer {
        let req = self.with_nonce(self.http.get(self.route(route)));
        Self::answer(req.send().await.expect("REST GET")).await
    }

    pub async fn post_json(&self, route: &str, body: &Value) -> Answer {
        let req = self.with_nonce(self.http.post(self.route(route)).json(body));
        Self::answer(req.send().await.expect("REST POST")).await
    }

    /// POSTs an archive as the raw request body.
    pub async fn import(&self, query: &str, archive: Vec<u8>) -> Answer {
        let sep = if query.is_empty() { "" } else { "?" };
        let req = self.with_nonce(
            self.http
                .post(format!("{}{sep}{query}", self.route("import")))
                .header("Content-Type", "application/x-tar")
                .body(archive),
        );
        Self::answer(req.send().await.expect("REST import")).await
    }

    /// GET export; returns status, content type and the whole body.
    pub async fn export(&self, query: &str) -> (u16, String, Vec<u8>) {
        let sep = if query.is_empty() { "" } else { "?" };
        let req = self.with_nonce(
            self.http
                .get(format!("{}{sep}{query}", self.route("export"))),
        );
        let resp = req.send().await.expect("REST export");
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (status, ctype, resp.bytes().await.unwrap().to_vec())
    }
}

/// One entry of a tar archive, read completely.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub kind: tar::EntryType,
    pub data: Vec<u8>,
}

/// Reads every entry of a tar archive; panics when it is not a complete, valid archive.
pub fn read_tar(bytes: &[u8]) -> Vec<Entry> {
    let mut archive = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for entry in archive.entries().expect("a tar archive") {
        let mut entry = entry.expect("a valid tar entry");
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("entry data");
        out.push(Entry { name, kind, data });
    }
    out
}

/// Builds a tar from (name, data) pairs of regular files, with normal headers.
pub fn build_tar(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, name, &data[..])
            .expect("append");
    }
    builder.into_inner().expect("finish tar")
}

/// One raw ustar entry written by hand, so tests can produce what tar libraries refuse to write:
/// absolute names, `..`, links and devices. `kind` is the type flag byte.
pub fn raw_entry(name: &str, kind: u8, link: &str, data: &[u8]) -> Vec<u8> {
    assert!(name.len() <= 100 && link.len() <= 100);
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    if kind == b'3' || kind == b'4' {
        h[329..337].copy_from_slice(b"0000001\0");
        h[337..345].copy_from_slice(b"0000003\0");
    }
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// Concatenates raw entries and the end-of-archive marker.
pub fn raw_tar(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = entries.concat();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// `gzip -dc` of `bytes` (the tests need no gzip crate for one check).
pub fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    let mut input = child.stdin.take().unwrap();
    let data = bytes.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().expect("feed gzip");
    assert!(out.status.success(), "gzip -dc failed: not gzip data");
    out.stdout
}
