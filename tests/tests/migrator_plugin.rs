//! End-to-end tests of the migrator plugin (images/wordpress/migrator/) on real WordPress sites
//! started by scripts/demo-site from the workload image: export, import, backups, rollback,
//! hostile archives and permissions.

mod migrator_support;

use clonepool_common::rewrite::{RewriteOptions, UrlRewriter};
use migrator_support::*;
use serde_json::{json, Value};
use std::time::Instant;

/// The SQL of an export: database.sql or the database/*.sql parts in name order.
fn export_sql(entries: &[Entry]) -> Vec<u8> {
    let mut parts: Vec<&Entry> = entries
        .iter()
        .filter(|e| {
            e.name == "database.sql"
                || (e.name.starts_with("database/") && e.name.ends_with(".sql"))
        })
        .collect();
    parts.sort_by(|a, b| a.name.cmp(&b.name));
    parts.iter().flat_map(|e| e.data.clone()).collect()
}

fn json_entry(entries: &[Entry], name: &str) -> Value {
    let e = entries
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("the archive has no {name}"));
    serde_json::from_slice(&e.data).unwrap_or_else(|err| panic!("{name} is not JSON: {err}"))
}

/// What clonepool pushes into a site: the export's manifest, its SQL rewritten from the source's
/// URL to the target's as database.sql, and its wp-content files.
fn import_archive(entries: &[Entry], from: &str, to: &str) -> Vec<u8> {
    let rewriter = UrlRewriter::new(from, to, RewriteOptions::default()).expect("rewriter");
    let (sql, _) = rewriter
        .rewrite_sql(&export_sql(entries))
        .expect("rewrite SQL");
    let mut files = vec![
        (
            "manifest.json".to_string(),
            json_entry(entries, "manifest.json")
                .to_string()
                .into_bytes(),
        ),
        ("database.sql".to_string(), sql),
    ];
    for e in entries {
        if e.name.starts_with("wp-content/") && e.kind == tar::EntryType::Regular {
            files.push((e.name.clone(), e.data.clone()));
        }
    }
    build_tar(&files)
}

async fn backups(wp: &Wp) -> Vec<Value> {
    let answer = wp.get("backups").await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    answer.json["backups"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn export_streams_a_tar_with_manifest_database_and_files() {
    let _guard = SITES.lock().await;
    let demo = Site::start(SiteKind::Demo);
    let wp = Wp::login(&demo.url, &demo.user, &demo.password).await;

    let status = wp.get("status").await;
    assert_eq!(status.status, 200);
    assert_eq!(status.json["plugin"], "clonepool-migrator");
    assert_eq!(status.json["table_prefix"], "wp_");
    assert!(status.json["wordpress_version"]
        .as_str()
        .unwrap()
        .starts_with("6."));

    let started = Instant::now();
    let (code, ctype, body) = wp.export("").await;
    let took = started.elapsed();
    assert_eq!(code, 200);
    assert_eq!(ctype, "application/x-tar");
    eprintln!(
        "export of the demo site (with core): {} bytes in {took:?}",
        body.len()
    );
    let entries = read_tar(&body);
    assert_eq!(entries[0].name, "manifest.json", "the manifest comes first");
    assert_eq!(
        entries.last().unwrap().name,
        "export-complete.json",
        "the completion marker comes last"
    );

    let manifest = json_entry(&entries, "manifest.json");
    assert_eq!(manifest["format"], "clonepool-migrator-archive");
    assert_eq!(manifest["table_prefix"], "wp_");
    assert_eq!(manifest["siteurl"], demo.url.as_str());
    assert_eq!(manifest["home"], demo.url.as_str());
    assert_eq!(manifest["stylesheet"], "clonepool-demo");
    assert!(manifest["php_version"].as_str().unwrap().starts_with("8.2"));
    assert_eq!(
        manifest["wordpress_version"],
        status.json["wordpress_version"]
    );
    assert!(manifest["active_plugins"]
        .as_array()
        .unwrap()
        .contains(&json!("clonepool-migrator/clonepool-migrator.php")));
    assert!(manifest["sizes"]["wp_content_files"].as_u64().unwrap() > 0);

    let sql = String::from_utf8_lossy(&export_sql(&entries)).into_owned();
    assert!(
        sql.contains("CREATE TABLE `wp_posts`"),
        "the dump creates wp_posts"
    );
    assert!(
        sql.contains("Welcome to the demo shop"),
        "the dump holds the demo posts"
    );
    assert!(
        sql.contains("widget_custom_html"),
        "the dump holds the widgets"
    );
    assert!(sql.contains("日本語"), "UTF-8 text survives the dump");

    let png = entries
        .iter()
        .find(|e| {
            e.name.starts_with("wp-content/uploads/") && e.name.ends_with("/clonepool-demo.png")
        })
        .expect("the uploaded image is in the archive");
    assert!(
        png.data.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the image arrives intact"
    );
    for wanted in [
        "wp-content/themes/clonepool-demo/style.css",
        "wp-content/plugins/clonepool-migrator/clonepool-migrator.php",
        // Debian links this theme into /usr/share/wordpress: exported as regular files.
        "wp-content/themes/twentytwentythree/style.css",
        "core/wp-includes/version.php",
        "core/wp-login.php",
    ] {
        let e = entries
            .iter()
            .find(|e| e.name == wanted)
            .unwrap_or_else(|| panic!("{wanted} is missing from the export"));
        assert_eq!(
            e.kind,
            tar::EntryType::Regular,
            "{wanted} is a regular file"
        );
    }
    for e in &entries {
        assert!(
            matches!(e.kind, tar::EntryType::Regular | tar::EntryType::Directory),
            "{} is a link or special file",
            e.name
        );
        assert!(
            !e.name.contains("wp-config"),
            "{} must not be exported",
            e.name
        );
        assert!(
            !e.name.contains("clonepool-backups"),
            "{} must not be exported",
            e.name
        );
    }
    let complete = json_entry(&entries, "export-complete.json");
    assert_eq!(complete["complete"], true);
    let files = entries
        .iter()
        .filter(|e| {
            e.kind == tar::EntryType::Regular
                && (e.name.starts_with("wp-content/") || e.name.starts_with("core/"))
        })
        .count() as u64;
    assert_eq!(
        complete["files"].as_u64().unwrap(),
        files,
        "export-complete.json counts every file"
    );
    assert!(
        complete["tables"]["wp_posts"].as_u64().unwrap() > 0,
        "rows of wp_posts are counted"
    );

    // tar.gz, without core.
    let (code, ctype, gz) = wp.export("format=tar.gz&core=0").await;
    assert_eq!(code, 200);
    assert_eq!(ctype, "application/gzip");
    let entries = read_tar(&gunzip(&gz));
    assert!(entries
        .iter()
        .any(|e| e.name.starts_with("wp-content/uploads/")));
    assert!(
        !entries.iter().any(|e| e.name.starts_with("core/")),
        "core=0 leaves core out"
    );

    // The route clonepool uses after installing the plugin: an application password (the
    // workload image sets WP_ENVIRONMENT_TYPE=local, so plain http is allowed).
    let created = wp
        .http
        .post(format!(
            "{}/wp-json/wp/v2/users/me/application-passwords",
            demo.url
        ))
        .header("X-WP-Nonce", &wp.nonce)
        .form(&[("name", "clonepool-test")])
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let app: Value = created.json().await.unwrap();
    let app_password = app["password"]
        .as_str()
        .expect("application password")
        .to_string();
    let basic = reqwest::Client::new()
        .get(format!("{}/wp-json/clonepool/v1/status", demo.url))
        .basic_auth(&demo.user, Some(&app_password))
        .send()
        .await
        .unwrap();
    assert_eq!(
        basic.status().as_u16(),
        200,
        "an application password authenticates REST calls"
    );
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn import_into_a_blank_site_serves_the_demo_content_and_rollback_restores_it() {
    let _guard = SITES.lock().await;
    let demo = Site::start(SiteKind::Demo);
    let blank = Site::start(SiteKind::Bare);
    let demo_wp = Wp::login(&demo.url, &demo.user, &demo.password).await;
    let wp = Wp::login(&blank.url, &blank.user, &blank.password).await;
    assert!(blank.page_text("/").await.contains("Hello world!"));
    assert!(backups(&wp).await.is_empty());

    let started = Instant::now();
    let (code, _, body) = demo_wp.export("core=0").await;
    assert_eq!(code, 200);
    let export_took = started.elapsed();
    let archive = import_archive(&read_tar(&body), &demo.url, &blank.url);

    let started = Instant::now();
    let report = wp.import("", archive).await;
    let import_took = started.elapsed();
    assert_eq!(report.status, 200, "{:#}", report.json);
    eprintln!(
        "demo site: export {} bytes in {export_took:?}, import in {import_took:?} (plugin's own figures: {})",
        body.len(),
        report.json["seconds"]
    );
    let backup_id = report.json["backup_id"]
        .as_str()
        .expect("backup_id")
        .to_string();
    let tables: Vec<&str> = report.json["tables_imported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(tables.contains(&"wp_posts") && tables.contains(&"wp_options"));
    assert!(
        !tables.contains(&"wp_users") && !tables.contains(&"wp_usermeta"),
        "users stay unless asked"
    );
    assert!(
        report.json["files_created"].as_u64().unwrap() >= 4,
        "theme and image files are created"
    );
    assert_eq!(
        report.json["warnings"],
        json!([]),
        "URLs were rewritten, nothing to warn about"
    );

    // The blank site now serves the demo's content under its own URL.
    let home = blank.page_text("/").await;
    for wanted in [
        "Welcome to the demo shop",
        "A post with an image",
        "Serialized settings explained",
        // the menu in the theme's primary location
        &format!("href=\"{}/about/\">About the demo shop", blank.url),
        // the text widget and the custom HTML widget
        &format!("<a href=\"{0}/contact/\">{0}/contact/</a>", blank.url),
        "class=\"demo-about-link\"",
    ] {
        assert!(
            home.contains(wanted),
            "the imported home page lacks {wanted:?}"
        );
    }
    assert!(!home.contains("Hello world!"));
    assert!(
        !home.contains(&demo.url),
        "no link points back to the demo site"
    );
    assert!(blank
        .page_text("/about/")
        .await
        .contains("We sell imaginary things"));
    let image_url = home
        .split('"')
        .find(|s| s.starts_with(&blank.url) && s.ends_with("/clonepool-demo.png"))
        .expect("the home page shows the uploaded image")
        .to_string();
    let (status, png) = blank.get_page(&image_url[blank.url.len()..]).await;
    assert_eq!(status, 200);
    assert!(png.starts_with(b"\x89PNG"));
    // Serialized widget options still unserialize, with the new URL and fixed lengths.
    let widgets = blank.wp_php(
        "echo wp_json_encode([get_option('widget_text'), get_option('widget_custom_html'), get_option('clonepool_demo_settings')]);",
        b"",
    );
    let widgets: Value = serde_json::from_str(&widgets).expect("widget options as JSON");
    assert!(widgets[0]["2"]["text"]
        .as_str()
        .unwrap()
        .contains(&format!("{}/contact/", blank.url)));
    assert!(widgets[1]["3"]["content"]
        .as_str()
        .unwrap()
        .contains(&format!("{}/about/", blank.url)));
    assert_eq!(widgets[2]["home"], blank.url.as_str());

    // The admin is still logged in (users were not replaced); the backup is listed and private.
    let listed = backups(&wp).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["backup_id"], backup_id.as_str());
    assert_eq!(listed[0]["status"], "imported");
    let (status, _) = blank
        .get_page(&format!(
            "/wp-content/clonepool-backups/{backup_id}/database.sql"
        ))
        .await;
    assert_eq!(status, 403, "backups are never served over HTTP");

    let started = Instant::now();
    let rolled = wp
        .post_json("rollback", &json!({ "backup_id": backup_id }))
        .await;
    eprintln!("rollback in {:?}", started.elapsed());
    assert_eq!(rolled.status, 200, "{:#}", rolled.json);
    assert!(rolled.json["files_removed"].as_u64().unwrap() >= 4);
    let home = blank.page_text("/").await;
    assert!(
        home.contains("Hello world!"),
        "rollback brings the old posts back"
    );
    assert!(!home.contains("Welcome to the demo shop"));
    let (status, _) = blank.get_page(&image_url[blank.url.len()..]).await;
    assert_eq!(status, 404, "files the import created are gone");
    assert_eq!(backups(&wp).await[0]["status"], "rolled_back");

    // Backups are removed only on request.
    let deleted = wp
        .http
        .delete(format!(
            "{}/wp-json/clonepool/v1/backups/{backup_id}",
            blank.url
        ))
        .header("X-WP-Nonce", &wp.nonce)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 200);
    assert!(backups(&wp).await.is_empty());
    let again = wp
        .post_json("rollback", &json!({ "backup_id": backup_id }))
        .await;
    assert_eq!(again.status, 404, "{:#}", again.json);
    assert_eq!(again.code(), "clonepool_no_such_backup");
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn hostile_archives_are_refused_with_a_clear_error_and_change_nothing() {
    let _guard = SITES.lock().await;
    let site = Site::start(SiteKind::Bare);
    let wp = Wp::login(&site.url, &site.user, &site.password).await;
    let before = site.page_text("/").await;
    let listing =
        "find /var/lib/wordpress/wp-content -path '*/clonepool-backups' -prune -o -print | sort";
    let (_, files_before) = site.web_sh(listing);

    let ok = raw_entry("wp-content/uploads/ok.txt", b'0', "", b"fine");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "absolute path",
            raw_tar(&[ok.clone(), raw_entry("/tmp/evil-abs", b'0', "", b"x")]),
            400,
            "clonepool_hostile_archive",
        ),
        (
            "..",
            raw_tar(&[
                ok.clone(),
                raw_entry("wp-content/../../../../tmp/evil-dots", b'0', "", b"x"),
            ]),
            400,
            "clonepool_hostile_archive",
        ),
        (
            "symlink escaping the site",
            raw_tar(&[
                raw_entry("wp-content/uploads/link", b'2', "/etc", b""),
                raw_entry("wp-content/uploads/link/evil-link", b'0', "", b"x"),
            ]),
            400,
            "clonepool_hostile_archive",
        ),
        (
            "hard link",
            raw_tar(&[raw_entry(
                "wp-content/uploads/hard",
                b'1',
                "/etc/passwd",
                b"",
            )]),
            400,
            "clonepool_hostile_archive",
        ),
        (
            "device",
            raw_tar(&[raw_entry("wp-content/uploads/null", b'3', "", b"")]),
            400,
            "clonepool_hostile_archive",
        ),
        (
            "SQL reaching outside the site's tables",
            raw_tar(&[raw_entry(
                "database.sql",
                b'0',
                "",
                b"DROP TABLE IF EXISTS `wp_posts`;\nDROP DATABASE wordpress;\n",
            )]),
            400,
            "clonepool_unsafe_sql",
        ),
        (
            "not a tar",
            b"this is not an archive at all".repeat(40),
            400,
            "clonepool_bad_archive",
        ),
        (
            "truncated",
            raw_entry("wp-content/uploads/cut.txt", b'0', "", &[b'a'; 2000])[..1024].to_vec(),
            400,
            "clonepool_bad_archive",
        ),
        ("empty body", Vec::new(), 400, "clonepool_empty_archive"),
    ];
    for (what, archive, status, code) in cases {
        let answer = wp.import("", archive).await;
        assert_eq!(answer.status, status, "{what}: {:#}", answer.json);
        assert_eq!(answer.code(), code, "{what}: {:#}", answer.json);
        assert!(
            !answer.json["message"].as_str().unwrap_or("").is_empty(),
            "{what}: a message says why"
        );
        assert_eq!(
            answer.json["data"]["changed"], false,
            "{what}: the answer says nothing changed"
        );
    }

    // Size and entry limits (lowered for the test through the clonepool_migrator_limits option).
    site.set_limits(Some(r#"{"max_archive_bytes":1048576,"max_entries":20}"#));
    let big = build_tar(&[(
        "wp-content/uploads/big.bin".to_string(),
        vec![0u8; 2 * 1024 * 1024],
    )]);
    let answer = wp.import("", big).await;
    assert_eq!(answer.status, 413, "{:#}", answer.json);
    assert_eq!(answer.code(), "clonepool_archive_too_large");
    let many: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| (format!("wp-content/uploads/f{i}.txt"), b"x".to_vec()))
        .collect();
    let answer = wp.import("", build_tar(&many)).await;
    assert_eq!(answer.status, 413, "{:#}", answer.json);
    assert_eq!(answer.code(), "clonepool_too_many_entries");
    site.set_limits(None);

    // Nothing changed: no backup, no file anywhere, same content.
    assert!(
        backups(&wp).await.is_empty(),
        "a refused import makes no backup"
    );
    let (_, files_after) = site.web_sh(listing);
    assert_eq!(files_before, files_after, "wp-content is unchanged");
    let (found, _) = site.web_sh("ls /tmp/evil-abs /tmp/evil-dots /etc/evil-link 2>/dev/null");
    assert!(!found, "no file was written outside the site");
    let (leftovers, _) =
        site.web_sh("ls /var/lib/wordpress/wp-content/clonepool-backups/.incoming-* 2>/dev/null");
    assert!(!leftovers, "no spooled upload is left behind");
    assert_eq!(
        site.page_text("/").await,
        before,
        "the site still serves the same page"
    );

    // A valid import with the same wp-content file still works afterwards.
    let answer = wp.import("", raw_tar(&[ok])).await;
    assert_eq!(answer.status, 200, "{:#}", answer.json);
    let (exists, _) = site.web_sh("test -f /var/lib/wordpress/wp-content/uploads/ok.txt");
    assert!(exists);
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn users_without_manage_options_are_refused() {
    let _guard = SITES.lock().await;
    let site = Site::start(SiteKind::Bare);
    let r: u64 = rand::random();
    let editor_password = format!("Ed-{r:016x}");
    site.add_user("editor", "editor", &editor_password);
    let editor = Wp::login(&site.url, "editor", &editor_password).await;

    for route in ["status", "export", "backups"] {
        let answer = editor.get(route).await;
        assert_eq!(answer.status, 403, "{route}: {:#}", answer.json);
        assert_eq!(answer.code(), "rest_forbidden");
    }
    let answer = editor
        .import(
            "",
            raw_tar(&[raw_entry("wp-content/uploads/x.txt", b'0', "", b"x")]),
        )
        .await;
    assert_eq!(answer.status, 403);
    let answer = editor
        .post_json(
            "rollback",
            &json!({"backup_id": "20260101T000000Z-0123456789abcdef"}),
        )
        .await;
    assert_eq!(answer.status, 403);

    let anonymous = Wp::anonymous(&site.url);
    let answer = anonymous.get("status").await;
    assert_eq!(answer.status, 401, "{:#}", answer.json);
    let answer = anonymous
        .import(
            "",
            raw_tar(&[raw_entry("wp-content/uploads/x.txt", b'0', "", b"x")]),
        )
        .await;
    assert_eq!(answer.status, 401);
    let (exists, _) = site.web_sh("test -e /var/lib/wordpress/wp-content/uploads/x.txt");
    assert!(!exists, "a refused caller changed nothing");
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn a_mariadb_dump_imports_and_a_failing_import_rolls_itself_back() {
    let _guard = SITES.lock().await;
    let demo = Site::start(SiteKind::Demo);
    let blank = Site::start(SiteKind::Bare);
    let wp = Wp::login(&blank.url, &blank.user, &blank.password).await;

    let dump = demo.mariadb_dump();
    let first_line = dump.split(|&b| b == b'\n').next().unwrap();
    assert!(
        String::from_utf8_lossy(first_line).contains("enable the sandbox mode"),
        "MariaDB's dump starts with its sandbox line"
    );
    let rewriter = UrlRewriter::new(&demo.url, &blank.url, RewriteOptions::default()).unwrap();
    let (sql, _) = rewriter.rewrite_sql(&dump).unwrap();
    let answer = wp
        .import(
            "files=false",
            build_tar(&[("database.sql".to_string(), sql)]),
        )
        .await;
    assert_eq!(answer.status, 200, "{:#}", answer.json);
    let posts = |site: &Site| {
        let url = site.url.clone();
        async move {
            let body = reqwest::get(format!("{url}/wp-json/wp/v2/posts?per_page=50"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let posts: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            posts
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| p["title"]["rendered"].as_str().unwrap_or("").to_string())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }
    };
    let titles = posts(&blank).await;
    assert!(
        titles.iter().any(|t| t == "Welcome to the demo shop"),
        "posts after the mariadb-dump import: {titles:?}"
    );

    // An import that breaks halfway (the new wp_posts gets a row the server rejects) puts the
    // site back from its backup at once and says so.
    let text = String::from_utf8_lossy(&dump).into_owned();
    let create_start = text
        .find("CREATE TABLE `wp_posts`")
        .expect("wp_posts in the dump");
    let create_end = create_start + text[create_start..].find(";\n").unwrap() + 2;
    let broken = format!(
        "DROP TABLE IF EXISTS `wp_posts`;\n{}INSERT INTO `wp_posts` VALUES (1,'too few columns');\n",
        &text[create_start..create_end]
    );
    let answer = wp
        .import(
            "",
            build_tar(&[("database.sql".to_string(), broken.into_bytes())]),
        )
        .await;
    assert_eq!(answer.status, 500, "{:#}", answer.json);
    assert_eq!(answer.code(), "clonepool_import_failed");
    assert_eq!(answer.json["data"]["rolled_back"], true);
    assert!(
        answer.json["message"]
            .as_str()
            .unwrap()
            .contains("Column count"),
        "the server's error is reported"
    );
    assert_eq!(
        posts(&blank).await,
        titles,
        "the site is as it was before the failed import"
    );
    let listed = backups(&wp).await;
    assert_eq!(listed[0]["status"], "failed_rolled_back");
}
