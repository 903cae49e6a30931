//! The Docker Engine restarted under a live pool (real agent and coordinator processes, real
//! pods): dockerd is stopped (SIGTERM: every container on the machine stops) and started again
//! the way `scripts/ensure-docker` starts it. A clone requested while the engine is down ends
//! clearly, the serving clone's dead pod is reported lost and removed when the clone ends, the
//! stopped WARM pods are replaced, and the pool is back at its target with no stray container
//! and no pod handed out dirty. Its own test binary with a single test: cargo runs test binaries
//! one after another, so no other test runs while the engine is down. Containers that ran
//! before and belong to no clonepool node (e.g. the demo site) are started again.

use clonepool_common::api::{CloneStatus, JobState};
use clonepool_e2e::docker::{docker, engine_answers};
use clonepool_e2e::fixture::*;
use clonepool_e2e::procs::child_main;
use clonepool_e2e::standin::GatedSource;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const CHILD: &str = "child_process_for_the_docker_restart_test";

/// Not a test on its own: the agent or coordinator process the test starts.
#[test]
#[ignore = "helper process of the Docker restart test (does nothing unless CLONEPOOL_E2E_CHILD is set)"]
fn child_process_for_the_docker_restart_test() {
    child_main();
}

fn dockerd_pids() -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-x", "dockerd"])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Running containers that belong to no clonepool node.
fn other_running_containers() -> Vec<String> {
    let (_, out, _) = docker(&["ps", "--format", "{{.ID}}\t{{.Label \"clonepool.node\"}}"]);
    out.lines()
        .filter_map(|l| {
            let (id, node) = l.split_once('\t').unwrap_or((l, ""));
            node.is_empty().then(|| id.to_string())
        })
        .collect()
}

/// Stops dockerd with SIGTERM and waits until it is gone.
fn stop_dockerd() {
    let pids = dockerd_pids();
    assert!(!pids.is_empty(), "no dockerd process to restart");
    for pid in &pids {
        let status = Command::new("kill").args(["-TERM", pid]).status().unwrap();
        assert!(status.success(), "kill -TERM {pid}");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !dockerd_pids().is_empty() {
        assert!(Instant::now() < deadline, "dockerd did not stop");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts dockerd the way the project's scripts do, and waits until it answers.
fn start_dockerd() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/ensure-docker");
    let out = Command::new(script)
        .output()
        .expect("scripts/ensure-docker");
    assert!(
        out.status.success(),
        "scripts/ensure-docker: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(engine_answers());
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn restarting_the_docker_engine_under_a_live_pool_loses_no_job_and_the_pool_comes_back() {
    let f = Fixture::start(
        CHILD,
        env!("CARGO_TARGET_TMPDIR"),
        "fault-dockerd",
        &[("CLONEPOOL_WARM_TARGET", "2"), ("CLONEPOOL_MAX_PODS", "4")],
        &[],
    )
    .await;
    f.stack.wait_settled(2, SETTLE).await;
    let source = GatedSource::start(source_archive(&f.stack).await, 1, true).await;

    // A clone serving, with data of its own in its pod.
    let job = f
        .stack
        .submit(&request(&source.url, "before-restart"))
        .await;
    let done = f.stack.wait_job(&job, JOB).await;
    assert_eq!(done.status, JobState::Completed, "{done:?}");
    let pod = f
        .stack
        .api()
        .clone_info("before-restart")
        .await
        .unwrap()
        .pod_id
        .unwrap();
    plant_canary(&pod);

    let others = other_running_containers();
    stop_dockerd();
    // The agent notices the engine is gone.
    f.stack
        .wait_capacity(
            "the agent reports the runtime unreachable",
            Duration::from_secs(60),
            |c| !c.runtime_reachable,
        )
        .await;
    // A clone requested meanwhile is accepted and ends clearly (no pod can be had).
    let during = f
        .stack
        .submit(&request(&source.url, "during-restart"))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    start_dockerd();
    if !others.is_empty() {
        let mut args = vec!["start"];
        args.extend(others.iter().map(String::as_str));
        docker(&args);
    }

    let ended = f.stack.wait_job(&during, JOB).await;
    eprintln!(
        "the clone requested while the engine was down: {} {}",
        ended.status,
        ended.error.as_deref().unwrap_or("")
    );
    assert!(
        ended.status == JobState::Completed || failed_clearly(&ended),
        "{ended:?}"
    );
    if ended.status == JobState::Completed {
        f.stack.api().delete("during-restart").await.unwrap();
    }
    // The serving clone's pod stopped with the engine: lost; the WARM buffer is rebuilt.
    f.stack
        .wait_capacity(
            "the serving pod reported lost and the WARM target rebuilt",
            SETTLE,
            |c| c.runtime_reachable && c.ready == 0 && c.quarantined == 1 && c.warm == 2,
        )
        .await;
    f.stack.api().delete("before-restart").await.unwrap();
    assert_recovered(&f.stack, 2).await;
    let info = f.stack.api().clone_info("before-restart").await.unwrap();
    assert_eq!(info.status, CloneStatus::Released, "{info:?}");
    assert_clones_again(&f.stack, &source, "after-restart").await;
    assert_recovered(&f.stack, 2).await;
}
