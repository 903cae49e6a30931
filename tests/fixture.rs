//! The fixture of the fault tests and the soak: a [`ProcStack`] of real processes started by
//! re-running the test binary, its node's containers removed at the end; the stand-in source's
//! archive made from a real pod's database; a canary planted in a pod (what one clone could leave
//! for the next) and looked for; and the checks every fault ends with.

use crate::docker::{node_containers, pod_sh, NodeCleanup};
use crate::procs::Launcher;
use crate::stack::{no_job_unfinished, ProcStack, StackOptions};
use crate::standin::{export_archive, GatedSource};
use clonepool_common::api::{CloneRequest, JobResult, JobState, JobStatus};
use clonepool_common::pod::{ContainerRole, PodState};
use std::path::Path;
use std::time::{Duration, Instant};

/// Creating pods on a loaded 2-core machine can take a while.
pub const SETTLE: Duration = Duration::from_secs(180);
pub const JOB: Duration = Duration::from_secs(120);
/// Text the stand-in source's site shows (its blog name), so a clone of it is recognisable.
pub const SOURCE_TITLE: &str = "Fault test source";

/// The workload image under test.
pub fn image() -> String {
    std::env::var("CLONEPOOL_IMAGE").unwrap_or_else(|_| {
        panic!("CLONEPOOL_IMAGE is not set: run these tests through scripts/test (it builds the image and sets it)")
    })
}

/// A stack of real processes (the test binary re-run with `child_test` selected), its node's
/// containers removed at the end, its files in a temporary directory under `tmp_root` (use
/// `env!("CARGO_TARGET_TMPDIR")`: on the target's file system, where `chattr` works).
pub struct Fixture {
    pub stack: ProcStack,
    _cleanup: NodeCleanup,
    dir: Option<tempfile::TempDir>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // A failed test keeps its logs and data (the processes are stopped first).
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                self.stack.kill9_coordinator();
                self.stack.kill9_agent();
                eprintln!(
                    "kept the failed test's logs and data in {}",
                    dir.keep().display()
                );
            }
        }
    }
}

impl Fixture {
    pub async fn start(
        child_test: &str,
        tmp_root: &str,
        what: &str,
        agent: &[(&str, &str)],
        coordinator: &[(&str, &str)],
    ) -> Fixture {
        std::fs::create_dir_all(tmp_root).expect("the temp root");
        let dir = tempfile::tempdir_in(tmp_root).expect("a temp dir");
        let node = format!("test-{what}-{:08x}", rand::random::<u32>());
        let cleanup = NodeCleanup::new(&node);
        let mut stack = ProcStack::new(StackOptions {
            launcher: Launcher::TestBinary {
                test: child_test.into(),
            },
            root: dir.path().to_path_buf(),
            node,
            image: image(),
            pod_labels: vec!["clonepool.test=true".into()],
            fast_loops: true,
        });
        stack.start_agent(agent).await;
        stack.start_coordinator(coordinator).await;
        Fixture {
            stack,
            _cleanup: cleanup,
            dir: Some(dir),
        }
    }
}

/// A clone of `source_url` named `clone` (the stand-in accepts any login).
pub fn request(source_url: &str, clone: &str) -> CloneRequest {
    CloneRequest {
        source_url: source_url.into(),
        source_username: "admin".into(),
        source_password: "stand-in-password".into(),
        customer_id: Some(clone.into()),
        ttl_minutes: Some(30),
    }
}

/// Runs SQL as MariaDB's root in a pod; answers its batch output.
pub fn mariadb(pod: &str, sql: &str) -> String {
    let (code, out) = pod_sh(
        pod,
        ContainerRole::Db,
        &format!("mariadb --batch --skip-column-names -e \"{sql}\""),
    );
    assert_eq!(code, 0, "SQL in pod {pod} failed: {sql}: {out}");
    out.trim().to_string()
}

/// A complete export of a real WordPress: the database of one of the stack's WARM pods (only
/// read) with the blog name set to [`SOURCE_TITLE`], and one upload.
pub async fn source_archive(stack: &ProcStack) -> Vec<u8> {
    let pods = stack.pods().await.expect("the agent lists its pods");
    let pod = pods
        .iter()
        .find(|p| p.state == PodState::Warm)
        .expect("a WARM pod to dump");
    let pod = pod.pod_id.as_str();
    let site = mariadb(
        pod,
        "SELECT option_value FROM wordpress.wp_options WHERE option_name = 'siteurl'",
    );
    let (code, mut sql) = pod_sh(pod, ContainerRole::Db, "mariadb-dump wordpress");
    assert_eq!(code, 0, "mariadb-dump failed: {sql}");
    sql.push_str(&format!(
        "\nUPDATE wp_options SET option_value = '{SOURCE_TITLE}' WHERE option_name = 'blogname';\n"
    ));
    export_archive(
        &site,
        sql.as_bytes(),
        &[("uploads/fault-source.txt", b"uploaded on the source")],
    )
}

/// What an earlier clone (or a half-done import) could leave in a pod: a database, a table, an
/// upload and a file in /tmp.
pub fn plant_canary(pod: &str) {
    mariadb(
        pod,
        "CREATE DATABASE IF NOT EXISTS fault_canary; CREATE TABLE IF NOT EXISTS wordpress.wp_fault_canary (x INT)",
    );
    let (code, out) = pod_sh(
        pod,
        ContainerRole::Web,
        "echo canary > /var/lib/wordpress/wp-content/uploads/fault-canary.txt && echo canary > /tmp/fault-canary",
    );
    assert_eq!(code, 0, "{out}");
}

/// Whether any of [`plant_canary`]'s traces is in the (running) pod.
pub fn has_canary(pod: &str) -> bool {
    let databases = mariadb(pod, "SHOW DATABASES LIKE 'fault_canary'");
    let tables = mariadb(pod, "SHOW TABLES FROM wordpress LIKE 'wp_fault_canary'");
    let (files, _) = pod_sh(
        pod,
        ContainerRole::Web,
        "test -e /var/lib/wordpress/wp-content/uploads/fault-canary.txt -o -e /tmp/fault-canary",
    );
    !databases.is_empty() || !tables.is_empty() || files == 0
}

/// Import spool directories in the agent's data directory.
pub fn spool_dirs(agent_dir: &Path) -> Vec<String> {
    std::fs::read_dir(agent_dir)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("import-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the agent is reading the import of `clone` (its spool directory exists) while at
/// least `held` exports wait at the source's gate; answers the clone's pod.
pub async fn wait_import_held(
    stack: &ProcStack,
    source: &GatedSource,
    clone: &str,
    held: usize,
) -> String {
    let deadline = Instant::now() + JOB;
    loop {
        let pods = stack.pods().await.unwrap_or_default();
        let pod = pods
            .iter()
            .find(|p| p.clone_id.as_ref().is_some_and(|c| c.as_str() == clone))
            .map(|p| p.pod_id.to_string());
        if let Some(pod) = pod {
            if source.held() >= held && !spool_dirs(&stack.agent_dir()).is_empty() {
                return pod;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the import of {clone} never started (held {}, pods {pods:?})",
            source.held()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Failed, with a message and a code.
pub fn failed_clearly(status: &JobStatus) -> bool {
    status.status == JobState::Failed
        && status
            .error
            .as_deref()
            .is_some_and(|e| !e.trim().is_empty())
        && status.error_code.is_some()
}

/// (clone id, clone URL) of a completed clone job.
pub fn clone_of(status: &JobStatus) -> (String, String) {
    match &status.result {
        Some(JobResult::Clone(r)) => (r.clone_id.clone(), r.clone_url.clone()),
        _ => panic!("job {} has no clone result: {status:?}", status.job_id),
    }
}

/// The checks after every fault: the pool settled at `warm` WARM pods, every container of the
/// node running and known to the agent (none left behind), no WARM pod holding a canary, no
/// import spool left, and no job pending or running in the coordinator's database.
pub async fn assert_recovered(stack: &ProcStack, warm: u32) {
    stack.wait_settled(warm, SETTLE).await;
    let pods = stack.pods().await.expect("the agent lists its pods");
    let containers = node_containers(&stack.opts.node);
    assert_eq!(
        containers.len(),
        2 * pods.len(),
        "two containers per pod, no strays: {containers:#?} for {pods:#?}"
    );
    for c in &containers {
        assert_eq!(c.state, "running", "{c:?}");
        assert!(
            pods.iter().any(|p| p.pod_id.as_str() == c.pod),
            "container of an unknown pod: {c:?}"
        );
    }
    for pod in pods.iter().filter(|p| p.state == PodState::Warm) {
        assert!(
            !has_canary(pod.pod_id.as_str()),
            "WARM pod {} holds another clone's data",
            pod.pod_id
        );
    }
    assert_eq!(spool_dirs(&stack.agent_dir()), Vec::<String>::new());
    let counts = stack.job_counts();
    assert!(
        no_job_unfinished(&counts),
        "jobs left unfinished: {counts:?}"
    );
}

/// The completed clone serves the source's site through the edge, and no canary.
pub async fn assert_serves_source(stack: &ProcStack, done: &JobStatus) {
    let (clone, url) = clone_of(done);
    let edge = stack.edge_client(&clone);
    let home = edge.get(&url).send().await.unwrap();
    assert_eq!(home.status(), 200, "{url}");
    let home = home.text().await.unwrap();
    assert!(home.contains(SOURCE_TITLE), "{home}");
    let canary = edge
        .get(format!("{url}/wp-content/uploads/fault-canary.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(canary.status(), 404, "the canary is served by {url}");
}

/// A new clone after a fault completes, serves the source's site and holds no canary; then it
/// is deleted.
pub async fn assert_clones_again(stack: &ProcStack, source: &GatedSource, clone: &str) {
    source.open();
    let job = stack.submit(&request(&source.url, clone)).await;
    let done = stack.wait_job(&job, JOB).await;
    assert_eq!(done.status, JobState::Completed, "{done:?}");
    assert_serves_source(stack, &done).await;
    let info = stack.api().clone_info(clone).await.unwrap();
    assert!(!has_canary(info.pod_id.as_deref().unwrap()));
    stack.api().delete(clone).await.unwrap();
}
