//! `POST /v1/import` over HTTP against an in-process agent over FakeRuntime: a good export ends
//! in a READY pod holding the rewritten dump and wp-content; hostile or broken archives are
//! refused with 400 and the pod is released without anything written into it.

mod agent_support;

use agent_support::*;
use clonepool_agent::runtime::fake::{CallKind, RecordedCall};
use clonepool_agent::runtime::FakeRuntime;
use clonepool_common::agent_api::{ClaimResponse, ImportResponse, PodSummary};
use clonepool_common::error::ErrorBody;
use clonepool_common::pod::{ContainerRole, PodState};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn entry(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, body: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    if kind == tar::EntryType::Symlink {
        h.set_link_name("/usr/share/wordpress").unwrap();
    }
    b.append_data(&mut h, name, body).unwrap();
}

/// An export of `http://shop.example` as the migrator plugin writes it; `extra` goes before the
/// completion record, which is left out when `complete` is false.
fn export(extra: &[(&str, tar::EntryType)], complete: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    use tar::EntryType::{Directory as D, Regular as F};
    entry(&mut b, "manifest.json", F, br#"{"format":"clonepool-migrator-archive","format_version":1,"table_prefix":"wp_","siteurl":"http://shop.example","home":"http://shop.example"}"#);
    entry(&mut b, "database/000001.sql", F, b"INSERT INTO wp_options VALUES (7,'widget_text','a:1:{s:4:\\\"text\\\";s:23:\\\"see http://shop.example\\\";}','yes');\n");
    entry(&mut b, "wp-content/", D, b"");
    entry(&mut b, "wp-content/uploads/", D, b"");
    entry(&mut b, "wp-content/uploads/logo.png", F, b"\x89PNG-bytes");
    for (name, kind) in extra {
        entry(&mut b, name, *kind, b"x");
    }
    if complete {
        entry(&mut b, "export-complete.json", F, br#"{"complete":true}"#);
    }
    b.into_inner().unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    fake: FakeRuntime,
    agent: clonepool_agent::app::RunningAgent,
    http: reqwest::Client,
    base: String,
    token: String,
}

async fn setup_with_claim(clone: &str) -> (Setup, ClaimResponse) {
    setup_with_claim_args(clone, &[]).await
}

async fn setup_with_claim_args(clone: &str, extra: &[&str]) -> (Setup, ClaimResponse) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    fake.add_image_dir("/tmp");
    fake.add_image_dir("/var/lib/wordpress/wp-content");
    emulate_image(&fake, Arc::new(PodWorld::default()));
    let mut args = vec!["--warm-target", "1", "--max-pods", "2"];
    args.extend_from_slice(extra);
    let agent = start_agent(&fake, dir.path(), &args).await;
    wait_for("1 WARM pod", WAIT, || warm_count(&agent) == 1).await;
    let s = Setup {
        _dir: dir,
        fake,
        base: format!("http://{}", agent.api_addr),
        token: agent.token.expose().to_string(),
        agent,
        http: reqwest::Client::new(),
    };
    let claim: ClaimResponse = s
        .http
        .post(format!("{}/v1/claim", s.base))
        .bearer_auth(&s.token)
        .json(&serde_json::json!({"clone_id": clone, "clone_host": format!("{clone}.localhost:8080")}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    (s, claim)
}

impl Setup {
    async fn import(&self, clone: &str, body: Vec<u8>) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/import?clone_id={clone}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/x-tar")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn pod(&self, claim: &ClaimResponse) -> PodSummary {
        self.http
            .get(format!("{}/v1/pods/{}", self.base, claim.pod_id))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn writes_into(&self, claim: &ClaimResponse) -> usize {
        self.fake
            .calls_of(CallKind::PutArchive)
            .iter()
            .filter(|c| matches!(c, RecordedCall::PutArchive { pod, .. } if *pod == claim.pod_id))
            .count()
    }
}

#[tokio::test]
async fn a_complete_export_is_imported_rewritten_to_the_clone_url_and_the_pod_becomes_ready() {
    let (s, claim) = setup_with_claim("shop-1").await;
    let resp = s
        .import(
            "shop-1",
            export(
                &[(
                    "wp-content/mu-plugins/clonepool-x.php",
                    tar::EntryType::Regular,
                )],
                true,
            ),
        )
        .await;
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let imported: ImportResponse = resp.json().await.unwrap();
    assert_eq!(imported.admin_username, "siteadmin");
    assert_eq!(imported.site_url, "http://shop-1.localhost:8080");
    assert_eq!(imported.source_url, "http://shop.example");
    assert_eq!(imported.admin_password.len(), 24);
    assert_ne!(imported.admin_password, claim.credentials.admin_password);
    let token = imported
        .magic_login_url
        .strip_prefix("http://shop-1.localhost:8080/?clonepool_login=")
        .expect("magic link on the clone's host");
    assert_eq!(s.pod(&claim).await.state, PodState::Ready);
    // A repeated claim answers the imported site's login.
    let again: ClaimResponse = s
        .http
        .post(format!("{}/v1/claim", s.base))
        .bearer_auth(&s.token)
        .json(&serde_json::json!({"clone_id": "shop-1", "clone_host": "shop-1.localhost:8080"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again.pod_id, claim.pod_id);
    assert_eq!(again.credentials.admin_username, "siteadmin");
    assert_eq!(again.credentials.admin_password, imported.admin_password);

    // The dump the db container got: the clone's URL, serialized length recomputed.
    let sql = s
        .fake
        .file(
            &claim.pod_id,
            ContainerRole::Db,
            "/tmp/clonepool-import.sql",
        )
        .expect("the dump was put into the db container");
    let sql = String::from_utf8(sql).unwrap();
    assert!(
        sql.contains(r#"s:32:\"see http://shop-1.localhost:8080\""#),
        "{sql}"
    );
    assert!(!sql.contains("shop.example"));
    // wp-content: the archive's files, the agent's mu-plugin, not the archive's clonepool-*.
    let wp = "/var/lib/wordpress/wp-content";
    assert_eq!(
        s.fake
            .file(
                &claim.pod_id,
                ContainerRole::Web,
                &format!("{wp}/uploads/logo.png")
            )
            .as_deref(),
        Some(&b"\x89PNG-bytes"[..])
    );
    let mu = s
        .fake
        .file(
            &claim.pod_id,
            ContainerRole::Web,
            &format!("{wp}/mu-plugins/clonepool-clone.php"),
        )
        .unwrap();
    assert!(String::from_utf8_lossy(&mu).contains("clonepool_login"));
    assert!(s
        .fake
        .file(
            &claim.pod_id,
            ContainerRole::Web,
            &format!("{wp}/mu-plugins/clonepool-x.php")
        )
        .is_none());
    // The settings stored the token's hash, never the token.
    let settings = s
        .fake
        .calls_of(CallKind::Exec)
        .into_iter()
        .find_map(|c| match c {
            RecordedCall::Exec { stdin: Some(i), .. }
                if String::from_utf8_lossy(&i.0).contains("clonepool_magic_login") =>
            {
                Some(String::from_utf8_lossy(&i.0).into_owned())
            }
            _ => None,
        })
        .expect("clone settings ran");
    assert!(settings.contains(&hex::encode(Sha256::digest(token.as_bytes()))));
    assert!(!settings.contains(token));
    assert!(settings.contains("'blog_public', '0'"));
    s.agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_hostile_archive_is_refused_with_400_and_the_untouched_pod_is_released_and_reset() {
    let (s, claim) = setup_with_claim("shop-2").await;
    let before = s.writes_into(&claim);
    let resp = s
        .import(
            "shop-2",
            export(&[("wp-content/themes/evil", tar::EntryType::Symlink)], true),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let body: ErrorBody = resp.json().await.unwrap();
    assert!(
        body.error.message.contains("wp-content/themes/evil")
            && body.error.message.contains("symbolic link"),
        "{}",
        body.error.message
    );
    assert_eq!(
        s.writes_into(&claim),
        before,
        "nothing was written into the pod"
    );
    wait_for("the pod reset and WARM again", WAIT, || {
        s.agent
            .pool
            .pod(&claim.pod_id)
            .map(|p| p.state == PodState::Warm && p.clone_id.is_none())
            .unwrap_or(false)
    })
    .await;
    s.agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_export_that_stopped_midway_is_refused_and_the_pod_released() {
    let (s, claim) = setup_with_claim("shop-3").await;
    let resp = s.import("shop-3", export(&[], false)).await;
    assert_eq!(resp.status(), 400);
    let body: ErrorBody = resp.json().await.unwrap();
    assert!(
        body.error.message.contains("stopped midway"),
        "{}",
        body.error.message
    );
    wait_for("the pod WARM again", WAIT, || {
        s.agent
            .pool
            .pod(&claim.pod_id)
            .map(|p| p.state == PodState::Warm)
            .unwrap_or(false)
    })
    .await;
    s.agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_import_for_a_clone_without_a_pod_is_404_and_needs_the_token() {
    let (s, _claim) = setup_with_claim("shop-4").await;
    let resp = s.import("nobody", export(&[], true)).await;
    assert_eq!(resp.status(), 404);
    let resp = s
        .http
        .post(format!("{}/v1/import?clone_id=shop-4", s.base))
        .body(export(&[], true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    s.agent.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_archive_over_the_configured_entry_limit_is_refused_with_413_and_the_pod_released() {
    let (s, claim) = setup_with_claim_args("shop-5", &["--import-max-entries", "10"]).await;
    let many: Vec<(String, tar::EntryType)> = (0..20)
        .map(|i| {
            (
                format!("wp-content/uploads/f{i}.txt"),
                tar::EntryType::Regular,
            )
        })
        .collect();
    let many: Vec<(&str, tar::EntryType)> = many.iter().map(|(n, k)| (n.as_str(), *k)).collect();
    let resp = s.import("shop-5", export(&many, true)).await;
    assert_eq!(resp.status(), 413);
    let body: ErrorBody = resp.json().await.unwrap();
    assert!(
        body.error.message.contains("more than 10 entries"),
        "{}",
        body.error.message
    );
    assert_eq!(s.writes_into(&claim), 0, "nothing was written into the pod");
    wait_for("the pod WARM again", WAIT, || {
        s.agent
            .pool
            .pod(&claim.pod_id)
            .map(|p| p.state == PodState::Warm)
            .unwrap_or(false)
    })
    .await;
    s.agent.shutdown(Duration::from_secs(5)).await;
}
