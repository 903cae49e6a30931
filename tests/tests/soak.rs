//! Soak: clone → use → delete cycles of the demo site (a real WordPress with the migrator plugin,
//! started by `scripts/demo-site`) against real agent and coordinator processes, with a small
//! WARM pool and 10 clients at once. Every job must complete, and afterwards nothing may have
//! leaked: no container, volume or network beyond the pool's, no file descriptors in either
//! process beyond a small slack, no temporary file (both processes' TMPDIR, the agent's import
//! spools), and the SQLite files stay within a bound. Prints its figures (and merges them into
//! the results file named by CLONEPOOL_BENCH_RESULTS, when set).
//!
//! CLONEPOOL_SOAK_CYCLES sets the cycles (default 30; the full run is 200, see
//! docs/benchmarks.md), CLONEPOOL_SOAK_CONCURRENCY the clients (default 10).

mod migrator_support;

use clonepool_common::api::{ClonePath, JobResult, JobState};
use clonepool_e2e::docker::{network_count, node_containers, volume_count};
use clonepool_e2e::fixture::{request, spool_dirs, Fixture, JOB, SETTLE};
use clonepool_e2e::procs::child_main;
use clonepool_e2e::stack::{no_job_unfinished, ProcStack};
use clonepool_e2e::stats::{Figure, ResultsFile};
use migrator_support::{Site, SiteKind};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const CHILD: &str = "child_process_for_the_soak";
const WARM_TARGET: u32 = 2;
/// Room for every client's clone, the pods being reset or removed after their clone (seconds each
/// on a loaded machine) and the WARM buffer: with 14, a full run at load 17 had claims find no
/// room while pods were still being reset, and those jobs failed "no capacity".
const MAX_PODS: u32 = 24;
/// File descriptors a process may hold beyond its count after the warm-up round (connection
/// pools, lazily opened files).
const FD_SLACK: usize = 16;

/// Not a test on its own: the agent or coordinator process the soak starts.
#[test]
#[ignore = "helper process of the soak (does nothing unless CLONEPOOL_E2E_CHILD is set)"]
fn child_process_for_the_soak() {
    child_main();
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug)]
struct Cycle {
    ok: Result<(), String>,
    path: Option<ClonePath>,
    /// Request → the clone serves the demo's content.
    clone_ms: f64,
    /// The whole cycle: clone, use, delete.
    cycle_ms: f64,
}

/// One clone → use → delete cycle; any failure is reported, not panicked.
async fn cycle(stack: &ProcStack, demo: &Site, name: &str) -> Cycle {
    let started = Instant::now();
    let mut out = Cycle {
        ok: Ok(()),
        path: None,
        clone_ms: 0.0,
        cycle_ms: 0.0,
    };
    let result: Result<(), String> = async {
        let mut req = request(&demo.url, name);
        req.source_username = demo.user.clone();
        req.source_password = demo.password.clone();
        let accepted = stack
            .api()
            .clone_site(&req, None)
            .await
            .map_err(|e| format!("POST: {e}"))?;
        let done = stack.wait_job(&accepted.job.job_id, JOB).await;
        if done.status != JobState::Completed {
            return Err(format!(
                "job {} {}: {:?}",
                done.job_id, done.status, done.error
            ));
        }
        let Some(JobResult::Clone(result)) = &done.result else {
            return Err("no result".into());
        };
        out.path = Some(result.path);
        // Use it: the front page shows the demo's content, the magic link logs in once.
        let browser = stack.edge_client(name);
        let home = browser
            .get(&result.clone_url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        if !home.contains("Welcome to the demo shop") {
            return Err(format!("{name}: the front page lacks the demo's content"));
        }
        out.clone_ms = started.elapsed().as_secs_f64() * 1000.0;
        let magic = result.magic_login_url.as_deref().ok_or("no magic link")?;
        let login = browser.get(magic).send().await.map_err(|e| e.to_string())?;
        let dashboard = browser
            .get(format!("{}/wp-admin/", result.clone_url))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if login.status() != 302 || dashboard.status() != 200 {
            return Err(format!(
                "{name}: magic login {} then wp-admin {}",
                login.status(),
                dashboard.status()
            ));
        }
        stack
            .api()
            .delete(name)
            .await
            .map_err(|e| format!("DELETE: {e}"))?;
        Ok(())
    }
    .await;
    out.ok = result;
    out.cycle_ms = started.elapsed().as_secs_f64() * 1000.0;
    out
}

/// Runs cycles `from..to` with `clients` clients at once.
async fn run_cycles(
    stack: &ProcStack,
    demo: &Site,
    from: usize,
    to: usize,
    clients: usize,
) -> Vec<Cycle> {
    let next = AtomicUsize::new(from);
    let client = |_| async {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            if i >= to {
                return done;
            }
            let result = cycle(stack, demo, &format!("soak-{i}")).await;
            if i % 10 == 9 || result.ok.is_err() {
                eprintln!(
                    "soak: cycle {}/{to}: {:.0} ms {:?}",
                    i + 1,
                    result.cycle_ms,
                    result.ok
                );
            }
            done.push(result);
        }
    };
    futures_util::future::join_all((0..clients).map(client))
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Bytes of a SQLite database with its WAL.
fn db_bytes(db: &Path) -> u64 {
    file_size(db) + file_size(&db.with_extension("sqlite-wal"))
}

struct Snapshot {
    agent_wal: u64,
    coordinator_wal: u64,
    agent_fds: usize,
    coordinator_fds: usize,
    agent_rss: u64,
    coordinator_rss: u64,
    agent_db: u64,
    coordinator_db: u64,
}

fn snapshot(stack: &ProcStack) -> Snapshot {
    let agent = stack.agent.as_ref().expect("the agent runs");
    let coordinator = stack.coordinator.as_ref().expect("the coordinator runs");
    Snapshot {
        agent_wal: file_size(&stack.agent_db().with_extension("sqlite-wal")),
        coordinator_wal: file_size(&stack.coordinator_db().with_extension("sqlite-wal")),
        agent_fds: agent.open_fds().expect("the agent's fds"),
        coordinator_fds: coordinator.open_fds().expect("the coordinator's fds"),
        agent_rss: agent.rss_bytes().unwrap_or(0),
        coordinator_rss: coordinator.rss_bytes().unwrap_or(0),
        agent_db: db_bytes(&stack.agent_db()),
        coordinator_db: db_bytes(&stack.coordinator_db()),
    }
}

/// Waits until every clone has ended and the pool is back at its target.
async fn settle(stack: &ProcStack) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let live = stack.api().clones(false).await.map(|l| l.clones.len());
        if matches!(live, Ok(0)) {
            break;
        }
        assert!(Instant::now() < deadline, "clones still live: {live:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.wait_settled(WARM_TARGET, SETTLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn clone_use_delete_cycles_at_concurrency_10_fail_no_job_and_leak_nothing() {
    let cycles = env_count("CLONEPOOL_SOAK_CYCLES", 30);
    let clients = env_count("CLONEPOOL_SOAK_CONCURRENCY", 10);
    assert!(
        cycles > clients,
        "CLONEPOOL_SOAK_CYCLES must exceed the concurrency"
    );
    let demo = Site::start(SiteKind::Demo);
    let volumes_before = volume_count(false);
    let networks_before = network_count();
    let f = Fixture::start(
        CHILD,
        env!("CARGO_TARGET_TMPDIR"),
        "soak",
        &[
            ("CLONEPOOL_WARM_TARGET", &WARM_TARGET.to_string()),
            ("CLONEPOOL_MAX_PODS", &MAX_PODS.to_string()),
        ],
        &[],
    )
    .await;
    let stack = &f.stack;
    stack.wait_settled(WARM_TARGET, SETTLE).await;

    // A warm-up round (one cycle per client), then the baseline.
    let started = Instant::now();
    let mut results = run_cycles(stack, &demo, 0, clients, clients).await;
    settle(stack).await;
    let before = snapshot(stack);
    results.extend(run_cycles(stack, &demo, clients, cycles, clients).await);
    let elapsed = started.elapsed();
    settle(stack).await;
    let after = snapshot(stack);

    let failed: Vec<&Cycle> = results.iter().filter(|c| c.ok.is_err()).collect();
    let clone_ms: Vec<f64> = results
        .iter()
        .filter(|c| c.ok.is_ok())
        .map(|c| c.clone_ms)
        .collect();
    let cycle_ms: Vec<f64> = results
        .iter()
        .filter(|c| c.ok.is_ok())
        .map(|c| c.cycle_ms)
        .collect();
    let warm = results
        .iter()
        .filter(|c| c.path == Some(ClonePath::Warm))
        .count();
    let containers = node_containers(&stack.opts.node);
    let tmp_files: Vec<String> = std::fs::read_dir(stack.tmp_dir())
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let counts = stack.job_counts();

    let figures = if clone_ms.is_empty() {
        Vec::new()
    } else {
        vec![
            Figure::from_samples(
                &format!(
                    "soak: clone of the demo site, request → content served ({clients} clients)"
                ),
                "ms",
                &clone_ms,
                None,
            ),
            Figure::from_samples(
                &format!("soak: clone → use → delete cycle ({clients} clients)"),
                "ms",
                &cycle_ms,
                None,
            ),
        ]
    };
    eprintln!(
        "\nsoak: {} cycles ({} warm, {} cold, {} failed) with {clients} clients in {:.1} s ({:.1} cycles/min)",
        results.len(),
        warm,
        results.len() - warm - failed.len(),
        failed.len(),
        elapsed.as_secs_f64(),
        results.len() as f64 / elapsed.as_secs_f64() * 60.0
    );
    for figure in &figures {
        eprintln!("{figure}");
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    eprintln!(
        "after warm-up → after the soak: agent fds {} → {}, RSS {:.1} → {:.1} MiB, SQLite with WAL {:.2} → {:.2} MiB (WAL {:.2} → {:.2}); coordinator fds {} → {}, RSS {:.1} → {:.1} MiB, SQLite with WAL {:.2} → {:.2} MiB (WAL {:.2} → {:.2}); jobs {counts:?}",
        before.agent_fds, after.agent_fds, mib(before.agent_rss), mib(after.agent_rss),
        mib(before.agent_db), mib(after.agent_db), mib(before.agent_wal), mib(after.agent_wal),
        before.coordinator_fds, after.coordinator_fds, mib(before.coordinator_rss),
        mib(after.coordinator_rss), mib(before.coordinator_db), mib(after.coordinator_db),
        mib(before.coordinator_wal), mib(after.coordinator_wal),
    );
    if let Ok(path) = std::env::var("CLONEPOOL_BENCH_RESULTS") {
        let path = Path::new(&path);
        let mut file = ResultsFile::load(path).expect("the results file");
        for figure in figures {
            file.merge(figure);
        }
        file.save(path).expect("saving the results file");
    }

    assert!(failed.is_empty(), "failed cycles: {failed:#?}");
    assert_eq!(results.len(), cycles);
    assert!(no_job_unfinished(&counts), "{counts:?}");
    assert_eq!(counts.get("failed"), None, "{counts:?}");
    // Nothing leaked.
    assert_eq!(
        containers.len(),
        2 * WARM_TARGET as usize,
        "containers beyond the WARM pool: {containers:#?}"
    );
    assert!(
        containers.iter().all(|c| c.state == "running"),
        "{containers:#?}"
    );
    assert_eq!(volume_count(false), volumes_before, "volumes leaked");
    assert_eq!(network_count(), networks_before, "networks leaked");
    assert!(
        after.agent_fds <= before.agent_fds + FD_SLACK,
        "agent fds {} → {}",
        before.agent_fds,
        after.agent_fds
    );
    assert!(
        after.coordinator_fds <= before.coordinator_fds + FD_SLACK,
        "coordinator fds {} → {}",
        before.coordinator_fds,
        after.coordinator_fds
    );
    assert_eq!(tmp_files, Vec::<String>::new(), "temporary files left");
    assert_eq!(spool_dirs(&stack.agent_dir()), Vec::<String>::new());
    // SQLite bounded: the agent trims its events; the coordinator keeps a week of jobs (a few KiB
    // each) and its WAL is checkpointed (≤ ~4 MiB).
    let per_cycle = 16 * 1024;
    assert!(
        after.agent_db <= 8 << 20,
        "agent SQLite {:.2} MiB",
        mib(after.agent_db)
    );
    assert!(
        after.coordinator_db <= (8 << 20) + (cycles as u64) * per_cycle,
        "coordinator SQLite {:.2} MiB after {cycles} cycles",
        mib(after.coordinator_db)
    );
}
