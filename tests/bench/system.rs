//! `clonepool-bench system`: the whole system measured in one run. It brings up its own
//! `clonepool-agent` and `clonepool-coordinator` (the release binaries, production settings, their
//! own ports, node and data; a running `scripts/up` is left alone) and clones the demo site
//! (`scripts/demo-site`), then measures, in this order:
//!
//! 1. pool fill: agent start → the WARM target reached (first sample);
//! 2. idle RSS of both processes (sampled again at the end);
//! 3. warm clones: `POST /api/v2/clone` → job completed → the clone serves the demo's content;
//! 4. resets of the used pods back to WARM (verification included; the agent's own timing);
//! 5. `POST /api/v2/clone` and `GET job-status` with 100 concurrent HTTPS clients, saturating and
//!    paced (10 requests/s each), with the agent stopped so that no pod is created (every job fails
//!    "no capacity" after its retries: the job engine writes as it does under load);
//! 6. more pool fills (the agent started on an empty node and state);
//! 7. cold clones: the agent restarted with a WARM target of 0, so each clone creates its pod.
//!
//! Every figure is printed as median and p95 with its sample count and the DESIGN.md budget, and
//! merged into the results file with the run's date, machine and load.

use crate::SystemArgs;
use anyhow::{bail, Context, Result};
use clonepool_common::api::{ClonePath, CloneRequest, JobResult, JobState};
use clonepool_e2e::docker::NodeCleanup;
use clonepool_e2e::procs::Launcher;
use clonepool_e2e::stack::{ProcStack, StackOptions};
use clonepool_e2e::stats::{Budget, Figure, RunInfo, Stat};
use std::path::Path;
use std::time::{Duration, Instant};

const CLIENTS: usize = 100;
/// What the demo site's front page says (scripts/demo-site).
const DEMO_MARKER: &str = "Welcome to the demo shop";
const SETTLE: Duration = Duration::from_secs(300);

const API_BUDGET: Budget = Budget {
    stat: Stat::P99,
    limit: 10.0,
    text: "p99 < 10 ms with 100 concurrent clients",
};
const WARM_BUDGET: Budget = Budget {
    stat: Stat::P95,
    limit: 2000.0,
    text: "p95 < 2 s",
};
const COLD_BUDGET: Budget = Budget {
    stat: Stat::P95,
    limit: 10_000.0,
    text: "p95 < 10 s",
};
const RESET_BUDGET: Budget = Budget {
    stat: Stat::P95,
    limit: 1000.0,
    text: "p95 < 1 s",
};
const AGENT_RSS_BUDGET: Budget = Budget {
    stat: Stat::P95,
    limit: 40.0,
    text: "< 40 MB when idle",
};
const COORDINATOR_RSS_BUDGET: Budget = Budget {
    stat: Stat::P95,
    limit: 60.0,
    text: "< 60 MB when idle",
};

fn say(what: &str) {
    eprintln!("\n==> {what}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The demo site's URL and admin login, from the env file scripts/demo-site writes.
struct Demo {
    url: String,
    user: String,
    password: String,
}

fn read_demo(env_file: &Path) -> Result<Demo> {
    let text = std::fs::read_to_string(env_file)
        .with_context(|| format!("reading {} (run scripts/demo-site)", env_file.display()))?;
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .with_context(|| format!("{} has no {key}", env_file.display()))
    };
    Ok(Demo {
        url: get("DEMO_URL")?,
        user: get("DEMO_USER")?,
        password: get("DEMO_PASSWORD")?,
    })
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn memory_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map(|kb| kb / 1048576.0)
        .unwrap_or(f64::NAN)
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub async fn run(args: SystemArgs) -> Result<(Vec<Figure>, RunInfo)> {
    let load_start = load_average();
    let date = now_rfc3339();
    let demo = read_demo(&args.demo_env)?;
    let page = reqwest::get(&demo.url)
        .await
        .with_context(|| format!("the demo site {} does not answer", demo.url))?
        .text()
        .await?;
    if !page.contains(DEMO_MARKER) {
        bail!(
            "{} does not show {DEMO_MARKER:?}: not the demo site",
            demo.url
        );
    }
    let root = tempfile::Builder::new()
        .prefix("clonepool-bench.")
        .tempdir_in(&args.work_dir)
        .context("a work directory")?;
    let node = format!("bench-{:08x}", rand::random::<u32>());
    let _cleanup = NodeCleanup::new(&node);
    let mut stack = ProcStack::new(StackOptions {
        launcher: Launcher::Binaries(args.bin_dir.clone()),
        root: root.path().to_path_buf(),
        node,
        image: args.image.clone(),
        pod_labels: vec!["clonepool.bench=true".into()],
        fast_loops: false,
    });
    let outcome = measure(&mut stack, &args, &demo).await;
    if outcome.is_err() {
        stack.kill9_coordinator();
        stack.kill9_agent();
        eprintln!("bench: logs and data kept in {}", root.keep().display());
    } else {
        stack.stop_coordinator(Duration::from_secs(30));
        stack.stop_agent(Duration::from_secs(60));
    }
    let figures = outcome?;
    let info = RunInfo {
        date,
        command: args.command.clone(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_gib: memory_gib(),
        load_start,
        load_end: load_average(),
        git_commit: git_commit(),
    };
    Ok((figures, info))
}

async fn measure(stack: &mut ProcStack, args: &SystemArgs, demo: &Demo) -> Result<Vec<Figure>> {
    let warm_target = args.warm_target.to_string();
    stack
        .start_coordinator(&[
            // The latency section queues thousands of jobs at once.
            ("CLONEPOOL_MAX_QUEUED_JOBS", "100000"),
        ])
        .await;

    say(&format!(
        "pool fill 1/{}: agent start → {warm_target} WARM",
        args.fills
    ));
    let mut fills = vec![fill(stack, &warm_target).await?];
    eprintln!("pool fill: {:.0} ms", fills[0]);
    stack
        .wait_coordinator_sees_warm(args.warm_target, SETTLE)
        .await;

    say("idle RSS (5 samples, 1 s apart)");
    let (mut agent_rss, mut coordinator_rss) = (Vec::new(), Vec::new());
    idle_rss(stack, &mut agent_rss, &mut coordinator_rss).await;

    say(&format!("warm clones of the demo site ({})", args.warm));
    let warm = clones(stack, demo, args.warm, ClonePath::Warm, args.warm_target).await?;
    stack.wait_settled(args.warm_target, SETTLE).await;
    let mut resets = reset_samples(&stack.agent_db());

    say(&format!(
        "API latency: {CLIENTS} clients, {} POSTs and {} job-status GETs each (saturating), then paced at 10/s",
        args.posts, args.gets
    ));
    stack.stop_agent(Duration::from_secs(60));
    let api = api_latency(stack, demo, args.posts, args.gets).await?;

    for i in 2..=args.fills {
        say(&format!(
            "pool fill {i}/{}: empty node and state",
            args.fills
        ));
        clonepool_e2e::docker::remove_node_containers(&stack.opts.node);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", stack.agent_db().display()));
        }
        let sample = fill(stack, &warm_target).await?;
        eprintln!("pool fill: {sample:.0} ms");
        fills.push(sample);
        stack.stop_agent(Duration::from_secs(60));
    }

    say(&format!(
        "cold clones of the demo site ({}), WARM target 0",
        args.cold
    ));
    stack
        .start_agent(&[
            ("CLONEPOOL_WARM_TARGET", "0"),
            ("CLONEPOOL_MAX_PODS", &args.warm_target.max(2).to_string()),
        ])
        .await;
    stack.wait_settled(0, SETTLE).await;
    let cold = clones(stack, demo, args.cold, ClonePath::Cold, 0).await?;
    stack.wait_settled(0, SETTLE).await;
    resets.extend(reset_samples(&stack.agent_db()));

    say("idle RSS again (5 samples, 1 s apart)");
    stack.wait_settled(0, SETTLE).await;
    idle_rss(stack, &mut agent_rss, &mut coordinator_rss).await;

    let mut figures = Vec::new();
    figures.push(Figure::judged(
        "warm clone of the demo site: request → clone serving its content",
        "ms",
        &warm,
        WARM_BUDGET,
    ));
    figures.push(Figure::judged(
        "cold clone of the demo site (WARM target 0): request → content",
        "ms",
        &cold,
        COLD_BUDGET,
    ));
    let ratio = figures[1].median / figures[0].median;
    figures.push(Figure::from_samples(
        "cold/warm ratio (medians, same run)",
        "x",
        &[ratio],
        None,
    ));
    if !resets.is_empty() {
        figures.push(Figure::judged(
            "reset of a used pod back to WARM, verification included",
            "ms",
            &resets,
            RESET_BUDGET,
        ));
    }
    figures.extend(api);
    figures.push(Figure::from_samples(
        &format!("pool fill: agent start → {} WARM pods", args.warm_target),
        "ms",
        &fills,
        None,
    ));
    figures.push(Figure::judged(
        "idle RSS, clonepool-agent (release)",
        "MB",
        &agent_rss,
        AGENT_RSS_BUDGET,
    ));
    figures.push(Figure::judged(
        "idle RSS, clonepool-coordinator (release)",
        "MB",
        &coordinator_rss,
        COORDINATOR_RSS_BUDGET,
    ));
    Ok(figures)
}

/// Starts the agent and times process start → `warm` WARM pods.
async fn fill(stack: &mut ProcStack, warm: &str) -> Result<f64> {
    let target: u32 = warm.parse()?;
    let started = Instant::now();
    stack
        .start_agent(&[
            ("CLONEPOOL_WARM_TARGET", warm),
            ("CLONEPOOL_MAX_PODS", &(target + 2).to_string()),
        ])
        .await;
    stack
        .wait_capacity("the pool filled", SETTLE, |c| c.warm >= target)
        .await;
    Ok(ms(started.elapsed()))
}

async fn idle_rss(stack: &ProcStack, agent: &mut Vec<f64>, coordinator: &mut Vec<f64>) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..5 {
        let mb = |b: Option<u64>| b.map(|b| b as f64 / 1e6);
        if let Some(rss) = mb(stack.agent.as_ref().and_then(|p| p.rss_bytes())) {
            agent.push(rss);
        }
        if let Some(rss) = mb(stack.coordinator.as_ref().and_then(|p| p.rss_bytes())) {
            coordinator.push(rss);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "RSS: agent {:.1} MB, coordinator {:.1} MB",
        agent.last().copied().unwrap_or(f64::NAN),
        coordinator.last().copied().unwrap_or(f64::NAN)
    );
}

fn demo_request(demo: &Demo, clone: &str) -> CloneRequest {
    CloneRequest {
        source_url: demo.url.clone(),
        source_username: demo.user.clone(),
        source_password: demo.password.clone(),
        customer_id: Some(clone.into()),
        ttl_minutes: Some(30),
    }
}

/// `n` clones one at a time, each when the pool is settled at `warm` WARM pods; answers
/// request → content served, in ms. Each clone is deleted afterwards (its pod is reset).
async fn clones(
    stack: &ProcStack,
    demo: &Demo,
    n: usize,
    expect: ClonePath,
    warm: u32,
) -> Result<Vec<f64>> {
    let api = stack.api();
    let mut samples = Vec::new();
    for i in 1..=n {
        stack.wait_settled(warm, SETTLE).await;
        if warm > 0 {
            stack.wait_coordinator_sees_warm(warm, SETTLE).await;
        }
        let clone = format!("bench-{}-{i}", expect.as_str());
        let started = Instant::now();
        let accepted = api.clone_site(&demo_request(demo, &clone), None).await?;
        let done = api
            .wait_job(
                &accepted.job.job_id,
                Duration::from_millis(10),
                Duration::from_secs(300),
                |_| {},
            )
            .await?;
        let job_ms = ms(started.elapsed());
        if done.status != JobState::Completed {
            bail!("clone {clone}: {} {:?}", done.status, done.error);
        }
        let Some(JobResult::Clone(result)) = &done.result else {
            bail!("clone {clone}: no result");
        };
        if result.path != expect {
            bail!(
                "clone {clone} went {} where {} was expected (the pool was not as set up)",
                result.path.as_str(),
                expect.as_str()
            );
        }
        let edge = stack.edge_client(&clone);
        loop {
            let page = edge.get(&result.clone_url).send().await;
            if let Ok(page) = page {
                if page.status() == 200 && page.text().await?.contains(DEMO_MARKER) {
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(300) {
                bail!("clone {clone} never served the demo's content");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let total = ms(started.elapsed());
        eprintln!(
            "{} clone {i}/{n}: {total:.0} ms (job completed after {job_ms:.0} ms)",
            expect.as_str()
        );
        samples.push(total);
        api.delete(&clone).await?;
    }
    Ok(samples)
}

/// The agent's own timings of resets that ended WARM ("reset (…) and verified in N ms").
fn reset_samples(agent_db: &Path) -> Vec<f64> {
    let Ok(conn) = rusqlite::Connection::open(agent_db) else {
        return Vec::new();
    };
    let Ok(mut stmt) =
        conn.prepare("SELECT message FROM events WHERE kind = 'warm' AND message LIKE 'reset %'")
    else {
        return Vec::new();
    };
    let rows = stmt.query_map([], |r| r.get::<_, String>(0));
    let samples: Vec<f64> = rows
        .map(|rows| {
            rows.filter_map(Result::ok)
                .filter_map(|m| {
                    m.split("verified in ")
                        .nth(1)?
                        .trim_end_matches(" ms")
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    eprintln!("resets verified: {samples:?} ms");
    samples
}

/// POST and job-status latency with [`CLIENTS`] clients, each on its own HTTPS connection.
async fn api_latency(
    stack: &ProcStack,
    demo: &Demo,
    posts: usize,
    gets: usize,
) -> Result<Vec<Figure>> {
    let clients: Vec<reqwest::Client> = (0..CLIENTS).map(|_| stack.https_client()).collect();
    let token = stack.token.clone();
    let base = stack.api_url();
    // Warm up every connection (TLS handshakes are not what is measured).
    let warmups = clients.iter().map(|c| {
        c.get(format!("{base}/api/v2/pool"))
            .bearer_auth(&token)
            .send()
    });
    for r in futures_util::future::join_all(warmups).await {
        let r = r?;
        if r.status() != 200 {
            bail!("GET /api/v2/pool answered {}", r.status());
        }
    }
    let request = |c: usize, i: usize, what: &str| CloneRequest {
        source_password: "never-used-no-pod-is-claimed".into(),
        ..demo_request(demo, &format!("api-{what}-{c}-{i}"))
    };
    let post_round = |period: Option<Duration>, n: usize, what: &'static str| {
        let clients = &clients;
        let (token, base) = (&token, &base);
        async move {
            let runs = clients.iter().enumerate().map(|(c, client)| async move {
                if let Some(p) = period {
                    tokio::time::sleep(p.mul_f64(c as f64 / CLIENTS as f64)).await;
                }
                let mut samples = Vec::new();
                let mut ids = Vec::new();
                for i in 0..n {
                    let tick = Instant::now();
                    let response = client
                        .post(format!("{base}/api/v2/clone"))
                        .bearer_auth(token)
                        .json(&request(c, i, what))
                        .send()
                        .await?;
                    let status = response.status();
                    let body: serde_json::Value = response.json().await?;
                    samples.push(ms(tick.elapsed()));
                    if status != 202 {
                        bail!("POST /api/v2/clone answered {status}: {body}");
                    }
                    ids.push(body["job_id"].as_str().unwrap_or_default().to_string());
                    if let Some(p) = period {
                        tokio::time::sleep(p.saturating_sub(tick.elapsed())).await;
                    }
                }
                Ok((samples, ids))
            });
            let mut samples = Vec::new();
            let mut ids = Vec::new();
            for r in futures_util::future::join_all(runs).await {
                let (s, i) = r?;
                samples.extend(s);
                ids.extend(i);
            }
            Ok::<_, anyhow::Error>((samples, ids))
        }
    };
    let get_round = |period: Option<Duration>, n: usize, ids: &[String]| {
        let clients = &clients;
        let (token, base) = (&token, &base);
        let ids = ids.to_vec();
        async move {
            let ids = &ids;
            let runs = clients.iter().enumerate().map(|(c, client)| async move {
                if let Some(p) = period {
                    tokio::time::sleep(p.mul_f64(c as f64 / CLIENTS as f64)).await;
                }
                let mut samples = Vec::new();
                for i in 0..n {
                    let id = &ids[(c * 7919 + i * 104_729) % ids.len()];
                    let tick = Instant::now();
                    let response = client
                        .get(format!("{base}/api/v2/job-status/{id}"))
                        .bearer_auth(token)
                        .send()
                        .await?;
                    let status = response.status();
                    let _ = response.bytes().await?;
                    samples.push(ms(tick.elapsed()));
                    if status != 200 {
                        bail!("GET job-status answered {status}");
                    }
                    if let Some(p) = period {
                        tokio::time::sleep(p.saturating_sub(tick.elapsed())).await;
                    }
                }
                Ok(samples)
            });
            let mut samples = Vec::new();
            for r in futures_util::future::join_all(runs).await {
                samples.extend(r?);
            }
            Ok::<_, anyhow::Error>(samples)
        }
    };
    let period = Duration::from_millis(100);
    let (post_sat, mut ids) = post_round(None, posts, "sat").await?;
    eprintln!("saturating POSTs: {} done", post_sat.len());
    let get_sat = get_round(None, gets, &ids).await?;
    eprintln!("saturating GETs: {} done", get_sat.len());
    let (post_paced, more) = post_round(Some(period), posts.max(5), "paced").await?;
    ids.extend(more);
    eprintln!("paced POSTs: {} done", post_paced.len());
    let get_paced = get_round(Some(period), gets, &ids).await?;
    eprintln!("paced GETs: {} done", get_paced.len());

    // Every job ends (no agent: "no capacity" after its retries); none is lost.
    say(&format!("waiting for the {} API jobs to end", ids.len()));
    let api = stack.api();
    let deadline = Instant::now() + Duration::from_secs(600);
    for id in &ids {
        loop {
            let status = api.job(id).await?;
            if status.status.is_terminal() {
                break;
            }
            if Instant::now() > deadline {
                bail!("job {id} never ended: {status:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(vec![
        Figure::judged(
            "POST /api/v2/clone, 100 clients, saturating (closed loop)",
            "ms",
            &post_sat,
            API_BUDGET,
        ),
        Figure::judged(
            "GET job-status, 100 clients, saturating (closed loop)",
            "ms",
            &get_sat,
            API_BUDGET,
        ),
        Figure::judged(
            "POST /api/v2/clone, 100 clients at 10 req/s each",
            "ms",
            &post_paced,
            API_BUDGET,
        ),
        Figure::judged(
            "GET job-status, 100 clients at 10 req/s each",
            "ms",
            &get_paced,
            API_BUDGET,
        ),
    ])
}
