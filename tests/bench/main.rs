//! `clonepool-bench`: the measurements behind `scripts/bench`. Each section measures one thing
//! against the real Docker Engine and workload image, prints median and p95 with the sample count
//! and the budget from DESIGN.md, and merges its figures into a JSON results file. `system`
//! (system.rs) measures the whole system in one run.

mod system;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use clonepool_agent::pod_commands::PodCommands;
use clonepool_agent::provision::{endpoint_for, new_pod_id, pristine_site_url};
use clonepool_agent::runtime::{ContainerLimits, ContainerRuntime, DockerRuntime, PodSpec};
use clonepool_agent::secrets::{Secret, PASSWORD_LEN};
use clonepool_common::ids::NodeName;
use clonepool_e2e::stats::{Figure, ResultsFile};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "clonepool measurements (run through scripts/bench)")]
struct Cli {
    /// Where figures are merged (figures of the same name are replaced).
    #[arg(
        long,
        env = "CLONEPOOL_BENCH_RESULTS",
        default_value = "bench/results.json"
    )]
    results: PathBuf,
    #[command(subcommand)]
    section: Section,
}

/// Sample counts and set-up of `clonepool-bench system` (defaults: the full run).
#[derive(clap::Args)]
pub struct SystemArgs {
    /// Warm clones of the demo site.
    #[arg(long, default_value_t = 20)]
    warm: usize,
    /// Cold clones of the demo site (WARM target 0).
    #[arg(long, default_value_t = 10)]
    cold: usize,
    /// POSTs per client (100 clients), saturating; the paced round sends at least 5.
    #[arg(long, default_value_t = 10)]
    posts: usize,
    /// job-status GETs per client (100 clients), in each round.
    #[arg(long, default_value_t = 50)]
    gets: usize,
    /// Pool fills timed (agent start → WARM target).
    #[arg(long, default_value_t = 3)]
    fills: usize,
    /// The agent's WARM target while warm clones are measured.
    #[arg(long, default_value_t = 2)]
    warm_target: u32,
    #[arg(long, env = "CLONEPOOL_IMAGE")]
    image: String,
    /// Where clonepool-agent and clonepool-coordinator are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// The demo site's env file (scripts/demo-site writes it).
    #[arg(long, default_value = ".clonepool/demo-site.env")]
    demo_env: PathBuf,
    /// Where the run's data and logs go (kept when the run fails).
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// The command line to record with the figures.
    #[arg(long, default_value = "clonepool-bench system")]
    command: String,
}

#[derive(Subcommand)]
enum Section {
    /// The whole system in one run: warm and cold clones of the demo site, resets, API latency
    /// under 100 clients, pool fill, idle RSS (see system.rs).
    System(SystemArgs),
    /// Cold pod start: create → start → DB and WordPress set up → WordPress answers HTTP 200.
    PodStart {
        #[arg(long, default_value_t = 10)]
        runs: usize,
        #[arg(long, env = "CLONEPOOL_IMAGE")]
        image: String,
    },
    /// Records a figure measured outside this binary (e.g. the image build, timed by the script).
    Record {
        name: String,
        unit: String,
        #[arg(required = true)]
        samples: Vec<f64>,
        #[arg(long)]
        budget: Option<String>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut run_info = None;
    let figures = match cli.section {
        Section::System(args) => {
            let (figures, info) = system::run(args).await?;
            run_info = Some(info);
            figures
        }
        Section::PodStart { runs, image } => vec![pod_start(runs, &image).await?],
        Section::Record {
            name,
            unit,
            samples,
            budget,
        } => vec![Figure::from_samples(
            &name,
            &unit,
            &samples,
            budget.as_deref(),
        )],
    };
    let mut results = ResultsFile::load(&cli.results)?;
    if let Some(info) = run_info {
        println!(
            "\nclonepool-bench system, {} ({} cores, {:.0} GiB, load {:.1} → {:.1}, commit {})",
            info.date, info.cores, info.memory_gib, info.load_start, info.load_end, info.git_commit
        );
        results.last_system_run = Some(info);
    }
    for figure in figures {
        println!("{figure}");
        results.merge(figure);
    }
    results.save(&cli.results)?;
    Ok(())
}

async fn pod_start(runs: usize, image: &str) -> Result<Figure> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let runtime: Arc<dyn ContainerRuntime> = Arc::new(DockerRuntime::connect(None).await?);
    if !runtime.image_present(image).await? {
        bail!("image {image} is not present; build it with images/wordpress/build");
    }
    let commands = PodCommands::new(runtime.clone());
    let node: NodeName = "test-bench".parse()?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()?;
    let mut samples = Vec::with_capacity(runs);
    for run in 1..=runs {
        let pod_id = new_pod_id();
        let spec = PodSpec {
            pod_id: pod_id.clone(),
            node: node.clone(),
            image: image.to_string(),
            network: "clonepool".to_string(),
            db_limits: ContainerLimits {
                cpu_millis: 1000,
                memory_bytes: 512 << 20,
            },
            web_limits: ContainerLimits {
                cpu_millis: 1000,
                memory_bytes: 512 << 20,
            },
            labels: BTreeMap::from([("clonepool.test".to_string(), "true".to_string())]),
        };
        let started = Instant::now();
        let outcome = start_until_http_200(&*runtime, &commands, &http, &spec).await;
        let elapsed = started.elapsed();
        runtime
            .remove_pod(&pod_id)
            .await
            .with_context(|| format!("removing bench pod {pod_id}"))?;
        outcome.with_context(|| format!("run {run}: pod {pod_id}"))?;
        eprintln!("pod-start: run {run}/{runs}: {:.0} ms", ms(elapsed));
        samples.push(ms(elapsed));
    }
    Ok(Figure::from_samples(
        "cold pod start (create → WordPress HTTP 200)",
        "ms",
        &samples,
        Some("cold clone p95 < 10 s"),
    ))
}

async fn start_until_http_200(
    runtime: &dyn ContainerRuntime,
    commands: &PodCommands,
    http: &reqwest::Client,
    spec: &PodSpec,
) -> Result<()> {
    runtime.create_pod(spec).await?;
    let info = runtime.start_pod(&spec.pod_id).await?;
    let ip = info.ip.context("pod has no address after start")?;
    let endpoint = endpoint_for(ip);
    let site_url = pristine_site_url(&endpoint);
    let db_password = Secret::generate(PASSWORD_LEN);
    let admin_password = Secret::generate(PASSWORD_LEN);
    let (db, web) = tokio::join!(
        commands.db_setup(&spec.pod_id, &db_password),
        commands.wp_config(&spec.pod_id, &db_password, &site_url)
    );
    db?;
    web?;
    commands
        .wp_install(&spec.pod_id, &site_url, &admin_password)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match http.get(format!("{endpoint}/")).send().await {
            Ok(resp) if resp.status() == reqwest::StatusCode::OK => return Ok(()),
            Ok(resp) if Instant::now() > deadline => bail!("GET / still answers {}", resp.status()),
            Err(e) if Instant::now() > deadline => bail!("GET / still fails: {e}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
