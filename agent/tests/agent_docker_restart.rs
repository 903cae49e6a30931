//! The real `clonepool-agent` binary over Docker: `kill -9` (even mid-reset) and a restart adopt
//! every pod with no duplicate and no lost clone, and SIGTERM shuts down gracefully leaving the
//! serving pods running. Ignored unless run through scripts/test.

mod agent_docker_support;

use agent_docker_support::*;
use clonepool_common::agent_api::{Capacity, ClaimResponse, PodSummary};
use clonepool_common::pod::{ContainerRole, PodState};
use clonepool_e2e::procs::free_port;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Agent {
    child: Child,
    api: String,
    admin: String,
    token: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_agent(data_dir: &Path, node: &str, api_port: u16, admin_port: u16) -> Agent {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("agent.log"))
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_clonepool-agent"))
        .env("CLONEPOOL_DATA_DIR", data_dir)
        .env("CLONEPOOL_NODE", node)
        .env("CLONEPOOL_IMAGE", image())
        .env("CLONEPOOL_API_LISTEN", format!("127.0.0.1:{api_port}"))
        .env("CLONEPOOL_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
        .env("CLONEPOOL_WARM_TARGET", "2")
        .env("CLONEPOOL_MAX_PODS", "4")
        .env("CLONEPOOL_RECONCILE_INTERVAL_SECS", "2")
        .env("CLONEPOOL_POD_LABELS", "clonepool.test=true")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("clonepool-agent starts");
    let token_file = data_dir.join("token");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !token_file.exists() {
        assert!(Instant::now() < deadline, "no token file written");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(50));
    Agent {
        child,
        api: format!("http://127.0.0.1:{api_port}"),
        admin: format!("http://127.0.0.1:{admin_port}"),
        token: std::fs::read_to_string(token_file)
            .unwrap()
            .trim()
            .to_string(),
    }
}

impl Agent {
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Option<T> {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn wait_capacity(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&Capacity) -> bool,
    ) -> Capacity {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.get::<Capacity>("/v1/capacity").await {
                if f(&c) {
                    return c;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last capacity {:?}",
                self.get::<Capacity>("/v1/capacity").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn kill_9_and_restart_adopt_every_pod_with_no_duplicate_and_no_lost_clone() {
    let node = test_node("restart");
    let _cleanup = PodCleanup::new(&node);
    let dir = tempfile::tempdir().unwrap();
    let (api, admin) = (free_port(), free_port());

    let mut agent = spawn_agent(dir.path(), &node, api, admin);
    agent
        .wait_capacity("2 WARM", Duration::from_secs(90), |c| c.warm == 2)
        .await;
    let keep: ClaimResponse = agent
        .post(
            "/v1/claim",
            serde_json::json!({"clone_id": "keep", "clone_host": "keep.localhost:8080"}),
        )
        .await
        .json()
        .await
        .unwrap();
    agent
        .post("/v1/ready", serde_json::json!({"clone_id": "keep"}))
        .await;
    let dirty: ClaimResponse = agent
        .post(
            "/v1/claim",
            serde_json::json!({"clone_id": "dirty", "clone_host": "dirty.localhost"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let (code, out) = sh(
        &dirty.pod_id,
        ContainerRole::Web,
        "echo clone-data > /tmp/canary && echo x > /var/lib/wordpress/wp-content/uploads/canary",
    );
    assert_eq!(code, 0, "{out}");
    agent
        .wait_capacity(
            "2 WARM on top of 2 assigned",
            Duration::from_secs(90),
            |c| c.warm == 2 && c.starting == 0,
        )
        .await;
    // Release and kill -9 while the reset runs.
    let released = agent
        .post("/v1/release", serde_json::json!({"clone_id": "dirty"}))
        .await;
    assert_eq!(released.status(), 202);
    tokio::time::sleep(Duration::from_millis(120)).await;
    agent.child.kill().unwrap(); // SIGKILL
    agent.child.wait().unwrap();
    let before = pod_labels_of_node(&node);
    drop(agent);

    let agent = spawn_agent(dir.path(), &node, api, admin);
    // WARM exactly at target: a pod reset back to WARM on top of the two others makes a surplus,
    // and the pool trims it (QUARANTINED while its containers go) only after that report.
    let cap = agent
        .wait_capacity("the pool settled", Duration::from_secs(90), |c| {
            c.resetting == 0 && c.starting == 0 && c.quarantined == 0 && c.warm == 2
        })
        .await;
    assert_eq!(cap.assigned + cap.ready, 1, "{cap:?}");
    // The clone still has its pod and its credentials.
    let again: ClaimResponse = agent
        .post(
            "/v1/claim",
            serde_json::json!({"clone_id": "keep", "clone_host": "keep.localhost:8080"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again, keep);
    let pod: PodSummary = agent
        .get(&format!("/v1/pods/{}", keep.pod_id))
        .await
        .unwrap();
    assert_eq!(pod.state, PodState::Ready);
    // No duplicates: every pod has exactly its two containers, and no pod appeared twice.
    let after = pod_labels_of_node(&node);
    let mut ids = after.clone();
    ids.dedup();
    for id in &ids {
        assert_eq!(
            after.iter().filter(|x| *x == id).count(),
            2,
            "{after:?}; the agent's log:\n{}",
            std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
        );
    }
    assert!(after.contains(&keep.pod_id.to_string()), "{after:?}");
    // Nothing was created beyond what the pool needs: the serving pod and the WARM target (a
    // pod is only added when the one killed mid-reset had to be quarantined).
    let new: Vec<&String> = ids.iter().filter(|id| !before.contains(id)).collect();
    assert!(new.len() <= 1, "pods created after the restart: {new:?}");
    let settled = agent
        .wait_capacity("WARM back to target", Duration::from_secs(60), |c| {
            c.warm == 2
        })
        .await;
    assert_eq!(
        settled.warm + settled.assigned + settled.ready,
        3,
        "{settled:?}"
    );
    // The pod killed mid-reset was reset again (clean) or quarantined and removed.
    let dirty_pod: Option<PodSummary> = agent.get(&format!("/v1/pods/{}", dirty.pod_id)).await;
    if let Some(p) = dirty_pod {
        assert_eq!(p.state, PodState::Warm);
        let (_, out) = sh(
            &dirty.pod_id,
            ContainerRole::Web,
            "ls /tmp /var/lib/wordpress/wp-content/uploads",
        );
        assert!(
            !out.contains("canary"),
            "residue after the interrupted reset: {out}"
        );
    }
    let events = Command::new(env!("CARGO_BIN_EXE_clonepoolctl"))
        .args(["events", "--limit", "100"])
        .env("CLONEPOOL_DATA_DIR", dir.path())
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&events.stdout).into_owned();
    let dirty_events: Vec<&str> = events
        .lines()
        .filter(|l| l.contains(dirty.pod_id.as_str()))
        .collect();
    eprintln!(
        "events of the pod killed mid-reset:\n{}",
        dirty_events.join("\n")
    );
    let ready = reqwest::get(format!("{}/readyz", agent.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn sigterm_stops_claims_and_leaves_serving_pods_running() {
    let node = test_node("sigterm");
    let _cleanup = PodCleanup::new(&node);
    let dir = tempfile::tempdir().unwrap();
    let (api, admin) = (free_port(), free_port());
    let mut agent = spawn_agent(dir.path(), &node, api, admin);
    agent
        .wait_capacity("2 WARM", Duration::from_secs(90), |c| c.warm == 2)
        .await;
    let serving: ClaimResponse = agent
        .post(
            "/v1/claim",
            serde_json::json!({"clone_id": "serving", "clone_host": "serving.localhost"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let pid = agent.child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = agent.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "graceful exit: {status:?}");
    let running = docker(&[
        "inspect",
        "-f",
        "{{.State.Running}}",
        &clonepool_agent::runtime::docker::container_name(&serving.pod_id, ContainerRole::Web),
    ]);
    assert_eq!(running, "true", "the serving pod keeps running");
    assert!(!dir.path().join("ctl.sock").exists());
}
