//! Restores and rollbacks end to end, with a real coordinator (HTTPS), a real agent on the real
//! Docker Engine and demo sites from scripts/demo-site: a change made in a clone is pushed back to
//! the demo site (its plugin backs up first), shows there under the site's own URL, and a
//! rollback brings the old state back. Also: the plugin is installed without a browser on a site
//! that lacks it (and the next job logs in with the application password it made), and a site
//! that forbids plugin uploads fails the job with how to install it by hand.

mod coordinator_support;
mod migrator_support;

use clonepool_common::api::{
    CloneRef, CloneRequest, JobResult, JobState, JobStatus, RestoreRequest, RestoreSource,
    RollbackRequest, SiteLogin,
};
use clonepool_common::pod::PodState;
use coordinator_support::*;
use migrator_support::{Site, SiteKind, Wp, SITES};
use std::process::Command;
use std::time::Duration;

fn clone_request(site: &Site, clone: &str) -> CloneRequest {
    CloneRequest {
        source_url: site.url.clone(),
        source_username: site.user.clone(),
        source_password: site.password.clone(),
        customer_id: Some(clone.into()),
        ttl_minutes: Some(30),
    }
}

fn login_of(site: &Site) -> SiteLogin {
    SiteLogin {
        url: site.url.clone(),
        username: site.user.clone(),
        password: site.password.clone(),
    }
}

/// Waits for a job; answers its end and every progress message seen.
async fn follow(stack: &Stack, job_id: &str) -> (JobStatus, Vec<String>) {
    let mut messages: Vec<String> = Vec::new();
    let done = stack
        .api
        .wait_job(
            job_id,
            Duration::from_millis(20),
            Duration::from_secs(240),
            |s| {
                if messages.last() != Some(&s.message) {
                    messages.push(s.message.clone());
                }
            },
        )
        .await
        .unwrap();
    (done, messages)
}

async fn clone_of(stack: &Stack, site: &Site, clone: &str) -> (JobStatus, Vec<String>) {
    let accepted = stack
        .api
        .clone_site(&clone_request(site, clone), None)
        .await
        .unwrap();
    follow(stack, &accepted.job.job_id).await
}

/// The Docker container of `role` (db or web) in the pod serving `clone`.
fn clone_container(stack: &Stack, clone: &str, role: &str) -> String {
    let pod = stack
        .agent_pods()
        .into_iter()
        .find(|p| p.clone_id.as_ref().map(|c| c.as_str()) == Some(clone))
        .expect("the clone's pod");
    format!("clonepool-{}-{role}", pod.pod_id)
}

/// Runs SQL in the clone's database (inside its pod's db container).
fn clone_sql(stack: &Stack, clone: &str, sql: &str) -> String {
    let out = Command::new("docker")
        .args([
            "exec",
            &clone_container(stack, clone, "db"),
            "mariadb",
            "--batch",
            "--skip-column-names",
            "wordpress",
            "-e",
            sql,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn clone_web_sh(stack: &Stack, clone: &str, script: &str) {
    let out = Command::new("docker")
        .args([
            "exec",
            &clone_container(stack, clone, "web"),
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn pods_back_in_pool(stack: &Stack) {
    eventually(
        "every pod back in the pool",
        Duration::from_secs(120),
        || async {
            let pods = stack.agent_pods();
            let busy = pods.iter().any(|p| {
                matches!(
                    p.state,
                    PodState::Assigned | PodState::Ready | PodState::Resetting
                )
            });
            (!busy && pods.iter().any(|p| p.state == PodState::Warm)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn a_change_made_in_a_clone_is_restored_to_the_site_with_a_backup_and_rolled_back() {
    let _docker = docker_lock().await;
    let _sites = SITES.lock().await;
    let demo = Site::start(SiteKind::Demo);
    let stack = stack("restore", &["--warm-target", "1", "--max-pods", "2"], |c| {
        c.source_import = true;
        c.url_allow_hosts = vec!["127.0.0.1".into()];
    })
    .await;
    stack.wait_warm(1, Duration::from_secs(180)).await;
    let (cloned, _) = clone_of(&stack, &demo, "edit").await;
    assert_eq!(cloned.status, JobState::Completed, "{cloned:?}");

    let public_before = demo.wp_php("echo get_option('blog_public');", b"");
    let about_before = demo.page_text("/about/").await;
    assert!(
        about_before.contains("About the demo shop"),
        "{about_before}"
    );

    // The change: a page retitled in the clone's database, a new file in its uploads.
    clone_sql(
        &stack,
        "edit",
        "UPDATE wp_posts SET post_title = 'Edited in the clone' WHERE post_name = 'about' AND post_type = 'page'",
    );
    clone_web_sh(
        &stack,
        "edit",
        "echo 'made in the clone' > /var/lib/wordpress/wp-content/uploads/restored.txt && chown www-data:www-data /var/lib/wordpress/wp-content/uploads/restored.txt",
    );

    // Restore by clone id.
    let request = RestoreRequest {
        source: RestoreSource::Clone(CloneRef {
            clone_id: "edit".into(),
        }),
        target: login_of(&demo),
        database: None,
        files: None,
        tables: None,
        include_users: None,
    };
    let started = std::time::Instant::now();
    let accepted = stack.api.restore(&request, None).await.unwrap();
    let (done, messages) = follow(&stack, &accepted.job.job_id).await;
    eprintln!(
        "restore of the demo clone (request → completed): {:.0} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(done.status, JobState::Completed, "{done:?} {messages:?}");
    // The progress is polled, so only steps that take a while are sure to be seen: the login
    // to the target is one REST call once the clone job has left an application password for
    // this site and user. That the login comes first is checked below with a wrong password.
    for step in ["Exporting the clone edit", "Pushing the"] {
        assert!(
            messages.iter().any(|m| m.contains(step)),
            "progress names {step:?}: {messages:?}"
        );
    }
    let Some(JobResult::Restore(result)) = done.result.clone() else {
        panic!("no restore result: {done:?}")
    };
    assert_eq!(result.target_url, demo.url);
    assert_eq!(result.source_clone_id, "edit");
    assert!(result.tables_imported.iter().any(|t| t == "wp_posts"));
    assert!(
        !result.tables_imported.iter().any(|t| t == "wp_users"),
        "production keeps its accounts unless asked"
    );
    assert!(result.files_created >= 1, "{result:?}");

    // The demo site shows the change, under its own URL, with its own settings.
    let about = demo.page_text("/about/").await;
    assert!(about.contains("Edited in the clone"), "{about}");
    assert!(
        !about.contains("edit.localhost"),
        "no clone URL left on the restored site"
    );
    assert!(about.contains(&demo.url), "links name the site itself");
    let (status, body) = demo.get_page("/wp-content/uploads/restored.txt").await;
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"made in the clone\n"[..])
    );
    assert_eq!(
        demo.wp_php("echo get_option('blog_public');", b""),
        public_before,
        "the clone's blocked search engines stay in the clone"
    );
    let widgets = demo.wp_php(
        "$w = get_option('widget_text'); echo is_array($w) ? 'array' : 'broken'; echo strpos(serialize($w), home_url()) !== false ? ' has-url' : ' no-url';",
        b"",
    );
    assert_eq!(
        widgets, "array has-url",
        "serialized widgets survive the restore"
    );
    // The demo's admin can still log in with the password it had.
    let wp = Wp::login(&demo.url, &demo.user, &demo.password).await;
    let backups = wp.get("backups").await;
    assert_eq!(backups.status, 200);
    assert!(
        backups.json["backups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["backup_id"] == result.backup_id.as_str()),
        "the backup the result names exists: {:?}",
        backups.json
    );

    // Rollback: the old state comes back, the file the restore made goes.
    let rollback_started = std::time::Instant::now();
    let accepted = stack
        .api
        .rollback(
            &RollbackRequest {
                target: login_of(&demo),
                backup_id: result.backup_id.clone(),
            },
            None,
        )
        .await
        .unwrap();
    let (rolled, _) = follow(&stack, &accepted.job.job_id).await;
    eprintln!(
        "rollback of that restore (request → completed): {:.0} ms",
        rollback_started.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(rolled.status, JobState::Completed, "{rolled:?}");
    let Some(JobResult::Rollback(rollback)) = rolled.result else {
        panic!("no rollback result")
    };
    assert_eq!(rollback.backup_id, result.backup_id);
    let about = demo.page_text("/about/").await;
    assert!(
        about.contains("About the demo shop") && !about.contains("Edited in the clone"),
        "{about}"
    );
    let (status, _) = demo.get_page("/wp-content/uploads/restored.txt").await;
    assert_eq!(status, 404, "the file the restore created is gone");

    // A restore into a site whose login is wrong fails before anything is exported.
    let wrong = RestoreRequest {
        target: SiteLogin {
            password: "not-the-password".into(),
            ..login_of(&demo)
        },
        ..request.clone()
    };
    let accepted = stack.api.restore(&wrong, None).await.unwrap();
    let (failed, messages) = follow(&stack, &accepted.job.job_id).await;
    assert_eq!(failed.status, JobState::Failed);
    assert_eq!(failed.error_code.as_deref(), Some("target_bad_credentials"));
    assert!(
        !messages.iter().any(|m| m.contains("Exporting")),
        "the login is checked before the export: {messages:?}"
    );
    let about = demo.page_text("/about/").await;
    assert!(
        about.contains("About the demo shop"),
        "the site is untouched"
    );

    stack.api.delete("edit").await.unwrap();
    pods_back_in_pool(&stack).await;
    stack.shutdown().await;
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn the_plugin_is_installed_without_a_browser_once_and_a_site_that_forbids_it_says_how_by_hand(
) {
    let _docker = docker_lock().await;
    let _sites = SITES.lock().await;
    let bare = Site::start(SiteKind::DemoWithoutPlugin);
    let stack = stack("install", &["--warm-target", "1", "--max-pods", "2"], |c| {
        c.source_import = true;
        c.url_allow_hosts = vec!["127.0.0.1".into()];
    })
    .await;
    let anonymous = Wp::anonymous(&bare.url);
    assert_eq!(
        anonymous.get("status").await.status,
        404,
        "the site starts without the plugin"
    );
    stack.wait_warm(1, Duration::from_secs(180)).await;
    let (first, messages) = clone_of(&stack, &bare, "first").await;
    assert_eq!(first.status, JobState::Completed, "{first:?} {messages:?}");
    assert!(
        messages.iter().any(|m| m.contains("installing it")),
        "the job says it installs the plugin: {messages:?}"
    );
    let wp = Wp::login(&bare.url, &bare.user, &bare.password).await;
    assert_eq!(
        wp.get("status").await.status,
        200,
        "the plugin is active now"
    );
    let home = stack
        .edge_client("first")
        .get(format!(
            "http://first.localhost:{}/",
            stack.coordinator.edge_addr.port()
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(home.contains("Welcome to the demo shop"), "{home}");

    // The second job neither installs nor logs in with the password form: it uses the
    // application password the first one made.
    stack.api.delete("first").await.unwrap();
    pods_back_in_pool(&stack).await;
    let (second, messages) = clone_of(&stack, &bare, "second").await;
    assert_eq!(second.status, JobState::Completed, "{second:?}");
    assert!(
        !messages.iter().any(|m| m.contains("installing it")),
        "{messages:?}"
    );
    let app_passwords = bare.wp_php(
        "$u = get_user_by('login', 'admin'); echo count(WP_Application_Passwords::get_user_application_passwords($u->ID));",
        b"",
    );
    assert_eq!(app_passwords, "1", "one application password, made once");
    stack.api.delete("second").await.unwrap();
    pods_back_in_pool(&stack).await;

    // A site that forbids plugin installs.
    let locked = Site::start(SiteKind::DemoWithoutPlugin);
    let (ok, _) = locked.web_sh(
        "sed -i \"1a define('DISALLOW_FILE_MODS', true);\" /etc/wordpress/config-default.php",
    );
    assert!(ok);
    let (refused, _) = clone_of(&stack, &locked, "locked").await;
    assert_eq!(refused.status, JobState::Failed);
    assert_eq!(
        refused.error_code.as_deref(),
        Some("source_plugin_install_forbidden"),
        "{refused:?}"
    );
    let error = refused.error.unwrap_or_default();
    assert!(
        error.contains("does not allow installing plugins") && error.contains("Upload Plugin"),
        "{error}"
    );
    pods_back_in_pool(&stack).await;
    stack.shutdown().await;
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn a_site_with_another_table_prefix_is_cloned_and_restored_under_that_prefix() {
    let _docker = docker_lock().await;
    let _sites = SITES.lock().await;
    let shop = Site::start(SiteKind::DemoShopPrefix);
    assert_eq!(
        shop.wp_php("global $wpdb; echo $wpdb->prefix;", b""),
        "shop_"
    );
    let stack = stack("prefix", &["--warm-target", "1", "--max-pods", "2"], |c| {
        c.source_import = true;
        c.url_allow_hosts = vec!["127.0.0.1".into()];
    })
    .await;
    stack.wait_warm(1, Duration::from_secs(180)).await;
    let (cloned, messages) = clone_of(&stack, &shop, "prefixed").await;
    assert_eq!(
        cloned.status,
        JobState::Completed,
        "{cloned:?} {messages:?}"
    );
    let Some(JobResult::Clone(result)) = cloned.result.clone() else {
        panic!("no clone result")
    };
    let edge = stack.coordinator.edge_addr.port();
    let home = stack
        .edge_client("prefixed")
        .get(format!("http://prefixed.localhost:{edge}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(home.contains("Welcome to the demo shop"), "{home}");
    assert_eq!(
        clone_sql(&stack, "prefixed", "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'wordpress' AND table_name LIKE 'wp\\_%'"),
        "0",
        "the pod's own wp_ tables are gone"
    );
    // The clone's admin logs in with the answered password (its role lives under shop_).
    let browser = stack.edge_client("prefixed");
    let base = format!("http://prefixed.localhost:{edge}");
    browser
        .get(format!("{base}/wp-login.php"))
        .send()
        .await
        .unwrap();
    let login = browser
        .post(format!("{base}/wp-login.php"))
        .form(&[
            ("log", result.username.as_str()),
            ("pwd", result.password.as_str()),
            ("testcookie", "1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 302, "the login is accepted");
    let admin = browser
        .get(format!("{base}/wp-admin/"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        admin.status(),
        200,
        "an administrator reaches the dashboard"
    );
    clone_sql(
        &stack,
        "prefixed",
        "UPDATE shop_posts SET post_title = 'Prefixed edit' WHERE post_name = 'about' AND post_type = 'page'",
    );
    let accepted = stack
        .api
        .restore(
            &RestoreRequest {
                source: RestoreSource::Clone(CloneRef {
                    clone_id: "prefixed".into(),
                }),
                target: login_of(&shop),
                database: None,
                files: Some(false),
                tables: Some(vec!["posts".into()]),
                include_users: None,
            },
            None,
        )
        .await
        .unwrap();
    let (done, _) = follow(&stack, &accepted.job.job_id).await;
    assert_eq!(done.status, JobState::Completed, "{done:?}");
    let Some(JobResult::Restore(restored)) = done.result else {
        panic!("no restore result")
    };
    assert_eq!(
        restored.tables_imported,
        ["shop_posts"],
        "only the table asked for"
    );
    assert_eq!(restored.files_written, 0, "files: false");
    assert!(shop.page_text("/about/").await.contains("Prefixed edit"));
    stack.api.delete("prefixed").await.unwrap();
    pods_back_in_pool(&stack).await;
    stack.shutdown().await;
}

/// The WordPress version a container's core names.
fn core_version(container: &str) -> String {
    let out = Command::new("docker")
        .args([
            "exec",
            container,
            "sed",
            "-n",
            r"s/^\$wp_version = '\([^']*\)';.*/\1/p",
            "/usr/share/wordpress/wp-includes/version.php",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn a_source_on_another_wordpress_version_runs_its_own_core_in_the_clone_until_the_reset() {
    let _docker = docker_lock().await;
    let _sites = SITES.lock().await;
    let source = Site::start(SiteKind::Demo);
    let image_version = core_version(&source.web);
    assert!(!image_version.is_empty());
    // Make the source's core self-contained (Debian links some files outside it) and another
    // version than the pods'.
    let (ok, out) = source.web_sh(
        "cd /usr/share/wordpress && find wp-admin wp-includes -type l | while read -r l; do t=$(readlink -f \"$l\"); rm \"$l\" && cp -rL \"$t\" \"$l\" || exit 1; done && \
         sed -i \"s/^\\$wp_version = .*/\\$wp_version = '9.9.9-clonepool';/\" wp-includes/version.php && echo done",
    );
    assert!(ok && out.contains("done"), "{out}");
    assert_eq!(core_version(&source.web), "9.9.9-clonepool");
    let stack = stack("core", &["--warm-target", "1", "--max-pods", "2"], |c| {
        c.source_import = true;
        c.url_allow_hosts = vec!["127.0.0.1".into()];
    })
    .await;
    stack.wait_warm(1, Duration::from_secs(180)).await;
    let (cloned, messages) = clone_of(&stack, &source, "newer").await;
    assert_eq!(
        cloned.status,
        JobState::Completed,
        "{cloned:?} {messages:?}"
    );
    // The export step, which lasts as long as the core takes to copy, says so.
    assert!(
        messages
            .iter()
            .any(|m| m.contains("with its WordPress 9.9.9-clonepool core")),
        "{messages:?}"
    );
    let pod = stack
        .agent_pods()
        .into_iter()
        .find(|p| p.clone_id.as_ref().map(|c| c.as_str()) == Some("newer"))
        .expect("the clone's pod");
    let web = format!("clonepool-{}-web", pod.pod_id);
    assert_eq!(
        core_version(&web),
        "9.9.9-clonepool",
        "the clone runs the source's core"
    );
    let edge = stack.coordinator.edge_addr.port();
    let home = stack
        .edge_client("newer")
        .get(format!("http://newer.localhost:{edge}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(home.contains("Welcome to the demo shop"), "{home}");
    assert!(
        home.contains("ver=9.9.9-clonepool"),
        "WordPress itself reports the source's version in its asset links"
    );

    // The reset recreates the web container: the pod runs the image's core again.
    stack.api.delete("newer").await.unwrap();
    pods_back_in_pool(&stack).await;
    let same_pod = stack
        .agent_pods()
        .into_iter()
        .find(|p| p.pod_id == pod.pod_id)
        .expect("the pod was reset, not replaced");
    assert_eq!(same_pod.state, PodState::Warm);
    assert_eq!(core_version(&web), image_version);
    stack.shutdown().await;
}
