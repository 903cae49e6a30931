//! `clonepoolctl`'s coordinator commands as an operator runs them: the real binary, with the
//! environment `scripts/up` writes, against a real coordinator (HTTPS, local CA) in front of a
//! real agent on the real Docker Engine.

mod coordinator_support;

use coordinator_support::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

/// `target/<profile>/clonepoolctl`, built by `cargo test --workspace` with the agent package.
fn clonepoolctl() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("clonepoolctl");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p clonepool-agent --bin clonepoolctl` (scripts/test does)",
        path.display()
    );
    path
}

struct Ctl {
    env: Vec<(String, String)>,
}

impl Ctl {
    fn for_stack(stack: &Stack) -> Self {
        let token_file = stack.dir.path().join("api-token");
        std::fs::write(&token_file, format!("{}\n", stack.token)).unwrap();
        Self {
            env: vec![
                ("CLONEPOOL_URL".into(), stack.coordinator.api_url()),
                ("CLONEPOOL_TOKEN".into(), token_file.display().to_string()),
                (
                    "CLONEPOOL_CA".into(),
                    stack
                        .coordinator
                        .tls
                        .ca
                        .as_ref()
                        .unwrap()
                        .display()
                        .to_string(),
                ),
                ("CLONEPOOL_SOURCE_PASSWORD".into(), "source-secret".into()),
            ],
        }
    }

    async fn run(&self, args: &[&str]) -> Output {
        let mut command = tokio::process::Command::new(clonepoolctl());
        command.args(args).env_clear();
        for (key, value) in &self.env {
            command.env(key, value);
        }
        tokio::time::timeout(Duration::from_secs(120), command.output())
            .await
            .expect("clonepoolctl finishes")
            .expect("clonepoolctl starts")
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let output = self.run(&all).await;
        assert!(output.status.success(), "clonepoolctl {args:?}: {output:?}");
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "clonepoolctl {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn clonepoolctl_clones_lists_extends_and_deletes_through_the_api() {
    let _docker = docker_lock().await;
    let stack = stack(
        "ctl-api",
        &["--warm-target", "1", "--max-pods", "2"],
        |_| {},
    )
    .await;
    stack.wait_warm(1, Duration::from_secs(120)).await;
    let ctl = Ctl::for_stack(&stack);

    let done = ctl
        .json(&[
            "clone",
            "--source-url",
            SOURCE_URL,
            "--customer-id",
            "ctl-one",
            "--ttl-minutes",
            "30",
            "--wait",
        ])
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["path"], "warm", "{done}");
    let clone_url = done["result"]["clone_url"].as_str().unwrap().to_string();
    let job_id = done["job_id"].as_str().unwrap().to_string();

    // The clone answers through the edge, as `clonepoolctl clones` says.
    let front = stack
        .edge_client("ctl-one")
        .get(&clone_url)
        .send()
        .await
        .unwrap();
    assert_eq!(front.status(), 200);

    let table = ctl.run(&["clones"]).await;
    assert!(table.status.success(), "{table:?}");
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.starts_with("CLONE"), "{table}");
    assert!(
        table.contains("ctl-one") && table.contains(&clone_url),
        "{table}"
    );

    let job = ctl.json(&["job", &job_id]).await;
    assert_eq!(job["status"], "completed");

    let pool = ctl.json(&["pool"]).await;
    assert_eq!(pool["agents"].as_array().unwrap().len(), 1, "{pool}");

    let before = ctl.json(&["clones", "ctl-one"]).await;
    let extended = ctl.json(&["extend", "ctl-one", "--minutes", "10"]).await;
    assert!(
        extended["expires_at"].as_str().unwrap() > before["expires_at"].as_str().unwrap(),
        "extend moves the expiry: {before} → {extended}"
    );

    let deleted = ctl.run(&["delete", "ctl-one"]).await;
    assert!(deleted.status.success(), "{deleted:?}");
    let after = ctl.json(&["clones"]).await;
    assert!(
        !after.to_string().contains("\"ctl-one\""),
        "a deleted clone is no longer live: {after}"
    );

    stack.shutdown().await;
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn clonepoolctl_reports_api_errors_clearly_and_exits_non_zero() {
    let _docker = docker_lock().await;
    let stack = stack(
        "ctl-errors",
        &["--warm-target", "0", "--max-pods", "1"],
        |_| {},
    )
    .await;
    let mut ctl = Ctl::for_stack(&stack);

    let missing = ctl.run(&["job", "job-does-not-exist"]).await;
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.starts_with("clonepoolctl: 404"), "{stderr}");

    let bad_id = ctl
        .run(&[
            "clone",
            "--source-url",
            SOURCE_URL,
            "--customer-id",
            "Not_A_Label",
        ])
        .await;
    assert!(!bad_id.status.success());
    let stderr = String::from_utf8_lossy(&bad_id.stderr);
    assert!(
        stderr.contains("400") && stderr.contains("customer_id"),
        "{stderr}"
    );

    for (key, value) in &mut ctl.env {
        if key == "CLONEPOOL_TOKEN" {
            *value = "wrong-token".into();
        }
    }
    let unauthorized = ctl.run(&["pool"]).await;
    assert!(!unauthorized.status.success());
    let stderr = String::from_utf8_lossy(&unauthorized.stderr);
    assert!(stderr.contains("401"), "{stderr}");

    stack.shutdown().await;
}
