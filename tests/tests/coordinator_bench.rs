//! Coordinator measurements from one run against a real agent on the real Docker Engine:
//! warm vs cold clone times (request → job completed, request → clone URL serving), and the
//! latency of POST /api/v2/clone and GET job-status under 100 concurrent HTTPS clients.
//!
//! For figures worth writing down, run the release build:
//!   CLONEPOOL_IMAGE=$(images/wordpress/build | tail -n 1) \
//!   cargo test --release -p clonepool-e2e --test coordinator_bench -- --ignored --nocapture
//! Sample counts: CLONEPOOL_BENCH_ROUNDS (warm/cold pairs, default 3),
//! CLONEPOOL_BENCH_POSTS (POSTs per client, default 2), CLONEPOOL_BENCH_GETS (job-status GETs
//! per client, default 10). Nothing here asserts a time budget (scripts/bench judges those).

mod coordinator_support;

use clonepool_common::api::{ClonePath, CloneRequest, JobResult, JobState};
use coordinator_support::*;
use std::time::{Duration, Instant};

const CLIENTS: usize = 100;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn clone_request(customer_id: &str) -> CloneRequest {
    CloneRequest {
        source_url: SOURCE_URL.into(),
        source_username: "admin".into(),
        source_password: "source-secret".into(),
        customer_id: Some(customer_id.into()),
        ttl_minutes: Some(30),
    }
}

fn line(what: &str, samples: &[f64], unit: &str) -> String {
    format!(
        "| {what} | {} | {:.1} {unit} | {:.1} {unit} | {:.1} {unit} | {:.1} {unit} |",
        samples.len(),
        quantile(samples, 0.5),
        quantile(samples, 0.95),
        quantile(samples, 0.99),
        samples.iter().cloned().fold(f64::NAN, f64::max),
    )
}

/// Times one clone: (path, ms to job completed, ms to the clone URL answering 200).
async fn timed_clone(stack: &Stack, name: &str) -> (ClonePath, f64, f64) {
    let started = Instant::now();
    let accepted = stack
        .api
        .clone_site(&clone_request(name), None)
        .await
        .unwrap();
    let done = stack
        .api
        .wait_job(
            &accepted.job.job_id,
            Duration::from_millis(10),
            Duration::from_secs(180),
            |_| {},
        )
        .await
        .unwrap();
    let completed_ms = started.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(done.status, JobState::Completed, "{done:?}");
    let Some(JobResult::Clone(result)) = done.result else {
        panic!("no result")
    };
    let client = stack.edge_client(name);
    loop {
        let ok = client
            .get(&result.clone_url)
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false);
        if ok {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{name} never served"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let serving_ms = started.elapsed().as_secs_f64() * 1000.0;
    (result.path, completed_ms, serving_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, needs Docker and the workload image: see the file's header"]
async fn measure_api_latency_and_warm_vs_cold_clone_times() {
    let _docker = docker_lock().await;
    let rounds = env_count("CLONEPOOL_BENCH_ROUNDS", 3);
    let posts_per_client = env_count("CLONEPOOL_BENCH_POSTS", 2);
    let gets_per_client = env_count("CLONEPOOL_BENCH_GETS", 10);
    let stack = stack(
        "coord-bench",
        &["--warm-target", "1", "--max-pods", "3"],
        |c| {
            c.job_max_attempts = 1;
            c.max_queued_jobs = 100_000;
        },
    )
    .await;

    // Warm vs cold: two clones at once with one warm pod, so one of each, each round.
    let (mut warm_done, mut warm_serving, mut cold_done, mut cold_serving) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        stack.wait_warm(1, Duration::from_secs(180)).await;
        eventually("the pool settles", Duration::from_secs(120), || async {
            let pool = stack.api.pool().await.ok()?;
            let agent = pool.agents.first()?;
            let settled = agent.starting == 0
                && agent.resetting == 0
                && agent.quarantined == 0
                && agent.assigned + agent.ready == 0;
            settled.then_some(())
        })
        .await;
        println!(
            "round {round}: pool {:?}",
            stack.api.pool().await.unwrap().agents
        );
        let (a, b) = (format!("bench-{round}-a"), format!("bench-{round}-b"));
        let (x, y) = tokio::join!(timed_clone(&stack, &a), timed_clone(&stack, &b));
        for (path, done, serving) in [x, y] {
            match path {
                ClonePath::Warm => {
                    warm_done.push(done);
                    warm_serving.push(serving);
                }
                ClonePath::Cold => {
                    cold_done.push(done);
                    cold_serving.push(serving);
                }
            }
        }
        stack.api.delete(&a).await.unwrap();
        stack.api.delete(&b).await.unwrap();
    }

    // API latency: 100 clients on their own HTTPS connections, warmed up first.
    let ca = std::fs::read(stack.coordinator.tls.ca.as_ref().unwrap()).unwrap();
    let clients: Vec<reqwest::Client> = (0..CLIENTS).map(|_| https_client(&ca)).collect();
    let warmups = clients.iter().map(|client| {
        client
            .get(stack.url("/api/v2/pool"))
            .bearer_auth(&stack.token)
            .send()
    });
    for response in futures_util::future::join_all(warmups).await {
        assert_eq!(response.unwrap().status(), 200);
    }
    let posts = clients.iter().enumerate().map(|(c, client)| {
        let url = stack.url("/api/v2/clone");
        let token = stack.token.clone();
        async move {
            let mut samples = Vec::new();
            let mut ids = Vec::new();
            for i in 0..posts_per_client {
                let started = Instant::now();
                let response = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&clone_request(&format!("bench-api-{c}-{i}")))
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let body: serde_json::Value = response.json().await.unwrap();
                samples.push(started.elapsed().as_secs_f64() * 1000.0);
                assert_eq!(status, 202, "{body}");
                ids.push(body["job_id"].as_str().unwrap().to_string());
            }
            (samples, ids)
        }
    });
    let started = Instant::now();
    let results = futures_util::future::join_all(posts).await;
    let post_wall = started.elapsed();
    let post_ms: Vec<f64> = results.iter().flat_map(|(s, _)| s.clone()).collect();
    let job_ids: Vec<String> = results.into_iter().flat_map(|(_, ids)| ids).collect();

    let gets = clients.iter().enumerate().map(|(c, client)| {
        let token = stack.token.clone();
        let job_ids = &job_ids;
        let stack = &stack;
        async move {
            let mut samples = Vec::new();
            for i in 0..gets_per_client {
                let id = &job_ids[(c * 7919 + i * 104_729) % job_ids.len()];
                let started = Instant::now();
                let response = client
                    .get(stack.url(&format!("/api/v2/job-status/{id}")))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let _ = response.bytes().await.unwrap();
                samples.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            samples
        }
    });
    let started = Instant::now();
    let get_ms: Vec<f64> = futures_util::future::join_all(gets)
        .await
        .into_iter()
        .flatten()
        .collect();
    let get_wall = started.elapsed();

    // The same, paced: each client sends one request every 100 ms (1000 requests/s in all),
    // which is what 100 concurrent users look like rather than a saturating flood.
    let period = Duration::from_millis(100);
    let paced_posts = clients.iter().enumerate().map(|(c, client)| {
        let url = stack.url("/api/v2/clone");
        let token = stack.token.clone();
        async move {
            tokio::time::sleep(period.mul_f64(c as f64 / CLIENTS as f64)).await;
            let mut samples = Vec::new();
            let mut ids = Vec::new();
            for i in 0..posts_per_client.max(5) {
                let tick = Instant::now();
                let response = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&clone_request(&format!("bench-paced-{c}-{i}")))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
                let body: serde_json::Value = response.json().await.unwrap();
                samples.push(tick.elapsed().as_secs_f64() * 1000.0);
                ids.push(body["job_id"].as_str().unwrap().to_string());
                tokio::time::sleep(period.saturating_sub(tick.elapsed())).await;
            }
            (samples, ids)
        }
    });
    let results = futures_util::future::join_all(paced_posts).await;
    let paced_post_ms: Vec<f64> = results.iter().flat_map(|(s, _)| s.clone()).collect();
    let mut job_ids = job_ids;
    job_ids.extend(results.into_iter().flat_map(|(_, ids)| ids));
    let paced_gets = clients.iter().enumerate().map(|(c, client)| {
        let token = stack.token.clone();
        let job_ids = &job_ids;
        let stack = &stack;
        async move {
            tokio::time::sleep(period.mul_f64(c as f64 / CLIENTS as f64)).await;
            let mut samples = Vec::new();
            for i in 0..gets_per_client {
                let tick = Instant::now();
                let id = &job_ids[(c * 7919 + i * 104_729) % job_ids.len()];
                let response = client
                    .get(stack.url(&format!("/api/v2/job-status/{id}")))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let _ = response.bytes().await.unwrap();
                samples.push(tick.elapsed().as_secs_f64() * 1000.0);
                tokio::time::sleep(period.saturating_sub(tick.elapsed())).await;
            }
            samples
        }
    });
    let paced_get_ms: Vec<f64> = futures_util::future::join_all(paced_gets)
        .await
        .into_iter()
        .flatten()
        .collect();

    // Every API job ends (most fail: 3 pods for hundreds of clones), none is lost.
    for id in &job_ids {
        let status = stack
            .api
            .wait_job(
                id,
                Duration::from_millis(100),
                Duration::from_secs(300),
                |_| {},
            )
            .await
            .unwrap();
        assert!(finished_clearly(&status), "{status:?}");
    }

    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("\ncoordinator measurements ({profile} build, {CLIENTS} concurrent clients)\n");
    println!("| what | n | p50 | p95 | p99 | max |\n|---|---|---|---|---|---|");
    println!(
        "{}",
        line(
            "POST /api/v2/clone, saturating (closed loop)",
            &post_ms,
            "ms"
        )
    );
    println!(
        "{}",
        line("GET /api/v2/job-status/{id}, saturating", &get_ms, "ms")
    );
    println!(
        "{}",
        line(
            "POST /api/v2/clone, paced 10/s per client",
            &paced_post_ms,
            "ms"
        )
    );
    println!(
        "{}",
        line(
            "GET /api/v2/job-status/{id}, paced 10/s per client",
            &paced_get_ms,
            "ms"
        )
    );
    println!(
        "{}",
        line("warm clone: request → job completed", &warm_done, "ms")
    );
    println!(
        "{}",
        line("warm clone: request → URL serving", &warm_serving, "ms")
    );
    println!(
        "{}",
        line("cold clone: request → job completed", &cold_done, "ms")
    );
    println!(
        "{}",
        line("cold clone: request → URL serving", &cold_serving, "ms")
    );
    println!(
        "\nthroughput: {} POSTs in {:.2} s ({:.0}/s); {} GETs in {:.2} s ({:.0}/s); cold/warm (median, serving) = {:.1}×",
        post_ms.len(),
        post_wall.as_secs_f64(),
        post_ms.len() as f64 / post_wall.as_secs_f64(),
        get_ms.len(),
        get_wall.as_secs_f64(),
        get_ms.len() as f64 / get_wall.as_secs_f64(),
        quantile(&cold_serving, 0.5) / quantile(&warm_serving, 0.5),
    );
    assert_eq!(warm_done.len() + cold_done.len(), 2 * rounds);
    for clone in stack.api.clones(false).await.unwrap().clones {
        let _ = stack.api.delete(&clone.clone_id).await;
    }
    stack.shutdown().await;
}
