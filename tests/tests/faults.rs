//! Faults injected into a running clonepool made of real processes (the agent and the
//! coordinator each run as their own process: this test binary re-run with
//! `child_process_for_the_fault_tests` selected) on the real Docker Engine with the workload image:
//! the agent `kill -9`ed mid-import; a pod's db or web container killed mid-import and while it
//! serves; the coordinator `kill -9`ed with jobs queued and running; the coordinator's and the
//! agent's SQLite files locked and made read-only under a job in flight. After each: no job lost or
//! left pending/running (read from the coordinator's database), no pod handed out dirty (a canary
//! planted in the faulted pod is in no WARM pod and no later clone), and the pool back to its
//! target with no stray container. Clones import from a stand-in source whose export can be held
//! midway (tests/standin.rs), with a real WordPress database dumped from a pod.
//! The Docker Engine restart is in `fault_docker_restart.rs` (its own binary: it stops every
//! container on the machine).

use clonepool_common::api::{CloneStatus, JobState};
use clonepool_common::pod::{ContainerRole, PodState};
use clonepool_e2e::docker::{kill_pod_container, node_containers};
use clonepool_e2e::fixture::*;
use clonepool_e2e::procs::child_main;
use clonepool_e2e::standin::GatedSource;
use std::path::Path;
use std::time::{Duration, Instant};

const CHILD: &str = "child_process_for_the_fault_tests";

/// Not a test on its own: the agent or coordinator process the tests below start.
#[test]
#[ignore = "helper process of the fault tests (does nothing unless CLONEPOOL_E2E_CHILD is set)"]
fn child_process_for_the_fault_tests() {
    child_main();
}

/// One fault test at a time: pods saturate a small machine.
static DOCKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn fixture(what: &str, agent: &[(&str, &str)], coordinator: &[(&str, &str)]) -> Fixture {
    Fixture::start(CHILD, env!("CARGO_TARGET_TMPDIR"), what, agent, coordinator).await
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn the_agent_killed_mid_import_fails_the_job_clearly_and_its_pod_comes_back_clean() {
    let _docker = DOCKER.lock().await;
    let mut f = fixture(
        "fault-agent",
        &[("CLONEPOOL_WARM_TARGET", "2"), ("CLONEPOOL_MAX_PODS", "3")],
        &[],
    )
    .await;
    f.stack.wait_settled(2, SETTLE).await;
    let archive = source_archive(&f.stack).await;
    let source = GatedSource::start(archive.clone(), archive.len() / 2, false).await;

    let job = f.stack.submit(&request(&source.url, "agent-kill")).await;
    let pod = wait_import_held(&f.stack, &source, "agent-kill", 1).await;
    plant_canary(&pod);
    f.stack.kill9_agent();

    // With the agent gone, the job ends (it does not hang or stay running): failed, saying why.
    let done = f.stack.wait_job(&job, JOB).await;
    assert!(failed_clearly(&done), "{done:?}");
    assert_eq!(
        done.error_code.as_deref(),
        Some("import_failed"),
        "{done:?}"
    );

    // Back up: the coordinator releases the failed clone's pod, which is reset (the canary gone)
    // or replaced; the half-read import leaves nothing behind.
    f.stack.restart_agent().await;
    assert_recovered(&f.stack, 2).await;
    let info = f.stack.api().clone_info("agent-kill").await.unwrap();
    assert_eq!(info.status, CloneStatus::Released, "{info:?}");
    assert_clones_again(&f.stack, &source, "after-agent-kill").await;
    assert_recovered(&f.stack, 2).await;
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn a_pods_db_or_web_container_killed_mid_import_fails_the_job_and_the_pod_is_replaced() {
    let _docker = DOCKER.lock().await;
    let f = fixture(
        "fault-import",
        &[("CLONEPOOL_WARM_TARGET", "2"), ("CLONEPOOL_MAX_PODS", "3")],
        &[],
    )
    .await;
    f.stack.wait_settled(2, SETTLE).await;
    let archive = source_archive(&f.stack).await;
    let source = GatedSource::start(archive.clone(), archive.len() / 2, false).await;

    for role in [ContainerRole::Db, ContainerRole::Web] {
        f.stack.wait_settled(2, SETTLE).await;
        source.close();
        let clone = format!("import-{role}-killed");
        let job = f.stack.submit(&request(&source.url, &clone)).await;
        let pod = wait_import_held(&f.stack, &source, &clone, 1).await;
        kill_pod_container(&pod, role);
        // The agent notices at once: the pod is no longer the clone's to import into.
        f.stack
            .wait_capacity(
                &format!("pod {pod} reported lost"),
                Duration::from_secs(30),
                |c| c.assigned == 0 && c.quarantined == 1,
            )
            .await;
        source.open();
        let done = f.stack.wait_job(&job, JOB).await;
        assert!(failed_clearly(&done), "{role} killed: {done:?}");
        assert_recovered(&f.stack, 2).await;
        assert!(
            node_containers(&f.stack.opts.node)
                .iter()
                .all(|c| c.pod != pod),
            "the pod whose {role} container died is gone"
        );
    }
    assert_clones_again(&f.stack, &source, "after-container-kill").await;
    assert_recovered(&f.stack, 2).await;
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn a_serving_clones_web_or_db_container_killed_is_reported_lost_and_its_delete_restores_the_pool(
) {
    let _docker = DOCKER.lock().await;
    let f = fixture(
        "fault-serving",
        &[("CLONEPOOL_WARM_TARGET", "2"), ("CLONEPOOL_MAX_PODS", "3")],
        &[],
    )
    .await;
    f.stack.wait_settled(2, SETTLE).await;
    let source = GatedSource::start(source_archive(&f.stack).await, 1, true).await;

    for role in [ContainerRole::Web, ContainerRole::Db] {
        f.stack.wait_settled(2, SETTLE).await;
        let clone = format!("serving-{role}-killed");
        let job = f.stack.submit(&request(&source.url, &clone)).await;
        let done = f.stack.wait_job(&job, JOB).await;
        assert_eq!(done.status, JobState::Completed, "{done:?}");
        assert_serves_source(&f.stack, &done).await;
        let pod = f
            .stack
            .api()
            .clone_info(&clone)
            .await
            .unwrap()
            .pod_id
            .unwrap();
        plant_canary(&pod); // the clone's own data, which must not reach anyone else
        kill_pod_container(&pod, role);
        // Reported lost; the WARM buffer is kept at its target beside it.
        f.stack
            .wait_capacity(
                &format!("pod {pod} lost and the WARM target kept"),
                SETTLE,
                |c| {
                    c.quarantined == 1
                        && c.ready == 0
                        && c.warm == 2
                        && c.starting == 0
                        && c.resetting == 0
                },
            )
            .await;
        let (_, url) = clone_of(&done);
        let page = f.stack.edge_client(&clone).get(&url).send().await;
        let (status, body) = match page {
            Ok(p) => (p.status().as_u16(), p.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        };
        assert!(
            status != 200 || !body.contains(SOURCE_TITLE),
            "the clone whose {role} died still serves its site: {status} {body}"
        );
        // Ending the clone removes the lost pod instead of resetting it into the pool.
        f.stack.api().delete(&clone).await.unwrap();
        assert_recovered(&f.stack, 2).await;
        assert!(
            node_containers(&f.stack.opts.node)
                .iter()
                .all(|c| c.pod != pod),
            "the lost pod's containers are removed"
        );
        let info = f.stack.api().clone_info(&clone).await.unwrap();
        assert_eq!(info.status, CloneStatus::Released, "{info:?}");
    }
    assert_clones_again(&f.stack, &source, "after-serving-kill").await;
    assert_recovered(&f.stack, 2).await;
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn the_coordinator_killed_with_jobs_queued_and_running_ends_every_job_and_holds_no_pod() {
    let _docker = DOCKER.lock().await;
    let mut f = fixture(
        "fault-coord",
        // Room for the four clones and the WARM buffer.
        &[("CLONEPOOL_WARM_TARGET", "2"), ("CLONEPOOL_MAX_PODS", "6")],
        &[("CLONEPOOL_MAX_CONCURRENT_JOBS", "2")],
    )
    .await;
    f.stack.wait_settled(2, SETTLE).await;
    let archive = source_archive(&f.stack).await;
    let source = GatedSource::start(archive.clone(), archive.len() / 2, false).await;
    f.stack.wait_coordinator_sees_warm(2, SETTLE).await;

    let clones: Vec<String> = (0..4).map(|i| format!("coord-kill-{i}")).collect();
    let mut jobs = Vec::new();
    for clone in &clones {
        jobs.push(f.stack.submit(&request(&source.url, clone)).await);
    }
    // Two imports held midway (running), two jobs waiting for a slot (queued).
    let deadline = Instant::now() + JOB;
    loop {
        let counts = f.stack.job_counts();
        if source.held() == 2
            && counts.get("running") == Some(&2)
            && counts.get("pending") == Some(&2)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never 2 running + 2 queued: {counts:?}, held {}",
            source.held()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let interrupted = running_jobs(&f.stack.coordinator_db());
    assert_eq!(interrupted.len(), 2, "{interrupted:?}");
    f.stack.kill9_coordinator();
    source.open();
    f.stack.restart_coordinator().await;

    // Every job ends. The queued ones run and complete; the interrupted ones are resumed and
    // complete, or fail with a clear error (their agent-side import broke off with the
    // coordinator, so the agent released and is resetting their pods when they are retried).
    let mut pods = std::collections::HashSet::new();
    let mut completed = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let done = f.stack.wait_job(job, JOB).await;
        eprintln!(
            "{}: {} {}",
            clones[i],
            done.status,
            done.error.as_deref().unwrap_or("")
        );
        if interrupted.contains(job) {
            assert!(
                done.status == JobState::Completed || failed_clearly(&done),
                "{done:?}"
            );
        } else {
            assert_eq!(done.status, JobState::Completed, "a queued job: {done:?}");
        }
        if done.status != JobState::Completed {
            continue;
        }
        assert_serves_source(&f.stack, &done).await;
        let (clone, _) = clone_of(&done);
        let info = f.stack.api().clone_info(&clone).await.unwrap();
        let pod = info.pod_id.unwrap();
        assert!(pods.insert(pod.clone()), "pod {pod} handed out twice");
        // The agent's view agrees: the pod is READY for exactly this clone.
        let agent_pods = f.stack.pods().await.unwrap();
        let holder = agent_pods
            .iter()
            .find(|p| p.pod_id.as_str() == pod)
            .expect("the clone's pod on the agent");
        assert_eq!(holder.state, PodState::Ready);
        assert_eq!(
            holder.clone_id.as_ref().map(|c| c.as_str()),
            Some(clone.as_str())
        );
        completed.push(clone);
    }
    // No pod is held for a clone the coordinator does not know as live.
    let agent_pods = f.stack.pods().await.unwrap();
    let held: Vec<_> = agent_pods
        .iter()
        .filter(|p| matches!(p.state, PodState::Assigned | PodState::Ready))
        .collect();
    assert_eq!(held.len(), completed.len(), "{held:#?}");
    for clone in &completed {
        f.stack.api().delete(clone).await.unwrap();
    }
    assert_recovered(&f.stack, 2).await;
}

/// Ids of the jobs `running` in a coordinator database.
fn running_jobs(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).expect("open the database");
    let mut stmt = conn
        .prepare("SELECT id FROM jobs WHERE status = 'running'")
        .expect("the jobs table");
    let ids = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .expect("a query")
        .map(|r| r.expect("a row"))
        .collect();
    ids
}

/// Holds SQLite's write lock on `db` (as another process would) until dropped or `hold` passes.
struct WriteLock(std::thread::JoinHandle<()>);

impl WriteLock {
    fn hold(db: &Path, hold: Duration) -> WriteLock {
        let conn = rusqlite::Connection::open(db).expect("open the database");
        conn.execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        WriteLock(std::thread::spawn(move || {
            std::thread::sleep(hold);
            conn.execute_batch("ROLLBACK").expect("release the lock");
        }))
    }

    fn wait(self) {
        self.0.join().expect("the lock holder");
    }
}

/// Makes the database file and its WAL immutable (writes fail even for root) while it lives.
struct ReadOnly(Vec<std::path::PathBuf>);

impl ReadOnly {
    fn new(db: &Path) -> ReadOnly {
        // Not the -shm file: SQLite maps it into memory, and a write fault there is SIGBUS.
        let files = vec![db.to_path_buf(), db.with_extension("sqlite-wal")];
        for file in &files {
            let out = std::process::Command::new("chattr")
                .arg("+i")
                .arg(file)
                .output()
                .expect("chattr");
            assert!(
                out.status.success(),
                "chattr +i {}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        ReadOnly(files)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        for file in &self.0 {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(file)
                .status();
        }
    }
}

/// While the coordinator's database refuses writes: the held job's outcome cannot be recorded,
/// a new clone request is refused with a clear JSON error (or accepted once writes work again),
/// job-status still answers. Once writes work again, every job ends without a restart.
async fn coordinator_db_fault(f: &Fixture, source: &GatedSource, name: &str, read_only: bool) {
    f.stack.wait_settled(2, SETTLE).await;
    source.close();
    let clone = format!("{name}-held");
    let held_job = f.stack.submit(&request(&source.url, &clone)).await;
    wait_import_held(&f.stack, source, &clone, 1).await;
    let db = f.stack.coordinator_db();
    let started = Instant::now();
    let (lock, immutable) = if read_only {
        (None, Some(ReadOnly::new(&db)))
    } else {
        (Some(WriteLock::hold(&db, Duration::from_secs(8))), None)
    };
    source.open();
    let api = f.stack.api();
    let status = api.job(&held_job).await;
    assert!(
        status.is_ok(),
        "job-status answers from a read-only or locked database: {status:?}"
    );
    let during = api
        .clone_site(&request(&source.url, &format!("{name}-during")), None)
        .await;
    eprintln!(
        "{name}: a clone requested meanwhile: {:?}",
        during.as_ref().map(|a| &a.job.job_id)
    );
    let during_job = match during {
        Ok(accepted) => Some(accepted.job.job_id),
        Err(e) => {
            assert!(
                e.status().is_some_and(|s| s >= 500) && e.code().is_some_and(|c| !c.is_empty()),
                "a clear error while the database refuses writes: {e}"
            );
            None
        }
    };
    match (lock, immutable) {
        (Some(lock), _) => lock.wait(),
        (_, Some(ro)) => {
            tokio::time::sleep(Duration::from_secs(8).saturating_sub(started.elapsed())).await;
            drop(ro);
        }
        _ => unreachable!(),
    }
    // Writes work again: the held job ends (completed or clearly failed), none stays running.
    let done = f.stack.wait_job(&held_job, JOB).await;
    eprintln!(
        "{name}: the job in flight ended {} {}",
        done.status,
        done.error.as_deref().unwrap_or("")
    );
    assert!(
        done.status == JobState::Completed || failed_clearly(&done),
        "{done:?}"
    );
    if let Some(job) = during_job {
        let done = f.stack.wait_job(&job, JOB).await;
        assert!(
            done.status == JobState::Completed || failed_clearly(&done),
            "{done:?}"
        );
    }
    for c in [clone, format!("{name}-during")] {
        let _ = f.stack.api().delete(&c).await;
    }
    assert_recovered(&f.stack, 2).await;
}

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn sqlite_files_locked_or_read_only_fail_requests_clearly_and_strand_no_job() {
    let _docker = DOCKER.lock().await;
    let f = fixture(
        "fault-sqlite",
        &[("CLONEPOOL_WARM_TARGET", "2"), ("CLONEPOOL_MAX_PODS", "4")],
        &[],
    )
    .await;
    f.stack.wait_settled(2, SETTLE).await;
    let archive = source_archive(&f.stack).await;
    let source = GatedSource::start(archive.clone(), archive.len() / 2, false).await;
    f.stack.wait_coordinator_sees_warm(2, SETTLE).await;

    coordinator_db_fault(&f, &source, "locked", false).await;
    coordinator_db_fault(&f, &source, "read-only", true).await;

    // The agent's state file locked while a clone claims a pod: the claim waits or fails and is
    // retried; the clone completes once the lock is gone.
    f.stack.wait_settled(2, SETTLE).await;
    source.open();
    let lock = WriteLock::hold(&f.stack.agent_db(), Duration::from_secs(8));
    let job = f.stack.submit(&request(&source.url, "agent-locked")).await;
    lock.wait();
    let done = f.stack.wait_job(&job, JOB).await;
    assert_eq!(done.status, JobState::Completed, "{done:?}");

    // The agent's state file read-only while that clone is deleted: the release cannot be
    // recorded and is retried; once writes work again the pod is reset (clean) and WARM.
    let pod = f
        .stack
        .api()
        .clone_info("agent-locked")
        .await
        .unwrap()
        .pod_id
        .unwrap();
    plant_canary(&pod);
    {
        let _ro = ReadOnly::new(&f.stack.agent_db());
        f.stack.api().delete("agent-locked").await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    assert_recovered(&f.stack, 2).await;
    let info = f.stack.api().clone_info("agent-locked").await.unwrap();
    assert_eq!(info.status, CloneStatus::Released, "{info:?}");
    assert_clones_again(&f.stack, &source, "after-sqlite").await;
    assert_recovered(&f.stack, 2).await;
}
