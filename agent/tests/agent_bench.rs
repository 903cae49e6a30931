//! Measurement harness: reset p50/p95 per method, claim p50/p95 and pool fill time, against real
//! Docker and the workload image. It fails only when a reset fails verification (timings are
//! printed, never asserted: budgets are checked by scripts/bench). Run it with
//! `CLONEPOOL_IMAGE=… cargo test -p clonepool-agent --test agent_bench -- --ignored --nocapture`
//! (CLONEPOOL_BENCH_RESETS sets the resets per method, default 10; CLONEPOOL_BENCH_METHODS
//! picks methods, default all).

mod agent_docker_support;

use agent_docker_support::*;
use clonepool_agent::config::ResetMethod;
use clonepool_common::agent_api::ClaimRequest;
use clonepool_common::pod::PodState;
use std::time::{Duration, Instant};

const FILL: Duration = Duration::from_secs(120);

#[tokio::test]
#[ignore = "needs Docker and the workload image: run scripts/test"]
async fn bench_reset_claim_and_fill_timings() {
    if std::env::var("CLONEPOOL_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("CLONEPOOL_LOG"))
            .with_writer(std::io::stderr)
            .try_init();
    }
    let n: usize = std::env::var("CLONEPOOL_BENCH_RESETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let methods: Vec<ResetMethod> = match std::env::var("CLONEPOOL_BENCH_METHODS") {
        Ok(list) => list.split(',').map(|m| m.trim().parse().unwrap()).collect(),
        Err(_) => ResetMethod::ALL.to_vec(),
    };
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for method in methods {
        let node = test_node("bench");
        let _cleanup = PodCleanup::new(&node);
        let dir = tempfile::tempdir().unwrap();
        let fill_target = 4;
        let started = Instant::now();
        let agent = start_agent(
            dir.path(),
            &node,
            &[
                "--reset-method",
                method.as_str(),
                "--warm-target",
                "4",
                "--max-pods",
                "4",
            ],
        )
        .await;
        wait_for("the pool filled", FILL, || {
            agent.pool.capacity().unwrap().warm == fill_target
        })
        .await;
        let fill = started.elapsed();

        let mut claims = Vec::new();
        for i in 0..n {
            let clone = format!("bench-{i}");
            wait_for("a WARM pod", FILL, || {
                agent.pool.capacity().unwrap().warm >= 1
            })
            .await;
            let t = Instant::now();
            let resp = agent
                .pool
                .claim(&ClaimRequest {
                    clone_id: clone.parse().unwrap(),
                    clone_host: format!("{clone}.localhost:8080"),
                    clone_scheme: Default::default(),
                    allow_cold: false,
                })
                .await
                .unwrap();
            claims.push(t.elapsed().as_secs_f64() * 1000.0);
            agent.pool.release(&clone.parse().unwrap()).await.unwrap();
            // One reset at a time, as a node with spare capacity would see them.
            wait_for("reset done", FILL, || {
                agent
                    .pool
                    .pod(&resp.pod_id)
                    .map(|p| p.state != PodState::Resetting)
                    .unwrap_or(true)
            })
            .await;
        }
        let events = agent.pool.events(1000).unwrap();
        let resets: Vec<f64> = events
            .iter()
            .filter(|e| e.kind == "warm" && e.message.starts_with("reset"))
            .filter_map(|e| {
                e.message
                    .split("verified in ")
                    .nth(1)
                    .and_then(|r| r.trim_end_matches(" ms").parse::<f64>().ok())
            })
            .collect();
        let failed = events
            .iter()
            .filter(|e| e.kind == "quarantined")
            .map(|e| e.message.clone())
            .collect::<Vec<_>>();
        let line = format!(
            "method {:<13} resets ok {:>3}/{n}  reset p50 {:>6.0} ms  p95 {:>6.0} ms  | claim p50 {:>5.0} ms  p95 {:>5.0} ms | fill {fill_target} pods {:>5.1} s",
            method.as_str(),
            resets.len(),
            quantile_ms(&resets, 0.5),
            quantile_ms(&resets, 0.95),
            quantile_ms(&claims, 0.5),
            quantile_ms(&claims, 0.95),
            fill.as_secs_f64(),
        );
        eprintln!("{line}");
        for f in failed.iter().take(6) {
            eprintln!("  quarantined: {f}");
        }
        report.push(line);
        if resets.len() != n {
            failures.push(format!(
                "{method}: {} of {n} resets verified; {failed:?}",
                resets.len()
            ));
        }
        agent.shutdown(Duration::from_secs(30)).await;
    }
    eprintln!("\n=== agent bench ({} resets per method) ===", n);
    for line in &report {
        eprintln!("{line}");
    }
    // The figures are only worth something if every reset of every method was verified clean.
    assert!(
        failures.is_empty(),
        "resets that failed verification: {failures:?}"
    );
}
