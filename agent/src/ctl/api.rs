//! clonepoolctl's coordinator commands: `clone` (with `--wait` and a progress bar), `restore`,
//! `rollback`, `job`, `cancel`, `clones`, `delete`, `extend`, `pool`, sent to the coordinator's v2 API with the
//! connection settings `scripts/up` writes to `.clonepool/env`.

use super::table::{key_values, or_dash, render};
use super::CtlError;
use clap::{Args, Subcommand};
use clonepool_common::api::{
    CloneInfo, CloneRef, CloneRequest, JobResult, JobStatus, RestoreRequest, RestoreSource,
    RollbackRequest, SiteLogin,
};
use clonepool_coordinator::client::{ApiClient, ClientError};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

/// Where the coordinator is. Defaults come from the environment `scripts/up` writes to
/// `.clonepool/env` (`source .clonepool/env`).
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Coordinator API base URL.
    #[arg(
        long,
        global = true,
        env = "CLONEPOOL_URL",
        default_value = "https://localhost:7401"
    )]
    pub url: String,
    /// API token, or the path of a file holding it.
    #[arg(long, global = true, env = "CLONEPOOL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust for the coordinator's HTTPS (standalone: .clonepool/coordinator/ca.pem).
    #[arg(long, global = true, env = "CLONEPOOL_CA")]
    pub ca: Option<std::path::PathBuf>,
}

/// Commands for the coordinator API.
#[derive(Debug, Clone, Subcommand)]
pub enum ApiCommand {
    /// Clone a WordPress site (POST /api/v2/clone); --wait follows the job to its end.
    Clone(CloneArgs),
    /// Push a clone back to a site (POST /api/v2/restore); the site's plugin backs up first.
    Restore(RestoreArgs),
    /// Undo a restore: put the site back from the backup it made (POST /api/v2/rollback).
    Rollback(RollbackArgs),
    /// Show a job (GET /api/v2/job-status/{id}).
    Job {
        job_id: String,
        /// Poll until the job ends, with a progress bar.
        #[arg(long)]
        wait: bool,
    },
    /// Cancel a pending job.
    Cancel { job_id: String },
    /// List live clones, or show one.
    Clones {
        clone_id: Option<String>,
        /// Include ended clones.
        #[arg(long)]
        all: bool,
    },
    /// End a clone now: its pod is reset and returned to the pool.
    Delete { clone_id: String },
    /// Give a clone more time.
    Extend {
        clone_id: String,
        /// Minutes to add.
        #[arg(long, default_value_t = 30)]
        minutes: u32,
    },
    /// Pods per agent and the job queue (GET /api/v2/pool).
    Pool,
}

#[derive(Debug, Clone, Args)]
pub struct CloneArgs {
    /// The site to clone, e.g. https://mysite.com
    #[arg(long)]
    pub source_url: String,
    /// An administrator login of the source site.
    #[arg(long, default_value = "admin")]
    pub source_username: String,
    /// Read the source password from this environment variable's value (safer than argv).
    #[arg(long, env = "CLONEPOOL_SOURCE_PASSWORD", hide_env_values = true)]
    pub source_password: Option<String>,
    /// Read the source password from standard input (first line).
    #[arg(long, conflicts_with = "source_password")]
    pub source_password_stdin: bool,
    /// The clone's name (a DNS label, at most 40 characters); generated when absent.
    #[arg(long)]
    pub customer_id: Option<String>,
    /// Minutes until the clone expires (5–1440; default 30).
    #[arg(long)]
    pub ttl_minutes: Option<u32>,
    /// Makes a retried command answer the same job instead of starting another.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the job until it ends, with a progress bar.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub wait_timeout: u64,
}

/// The site a restore or rollback writes to.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// The site, e.g. https://mysite.com
    #[arg(long)]
    pub target_url: String,
    /// An administrator login of the site.
    #[arg(long, default_value = "admin")]
    pub target_username: String,
    /// Read the site's password from this environment variable's value (safer than argv).
    #[arg(long, env = "CLONEPOOL_TARGET_PASSWORD", hide_env_values = true)]
    pub target_password: Option<String>,
    /// Read the site's password from standard input (first line).
    #[arg(long, conflicts_with = "target_password")]
    pub target_password_stdin: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The clone to push.
    #[arg(long)]
    pub clone_id: String,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Push only the database.
    #[arg(long, conflicts_with = "files_only")]
    pub database_only: bool,
    /// Push only wp-content files.
    #[arg(long)]
    pub files_only: bool,
    /// Push only these tables (comma-separated, with or without the prefix).
    #[arg(long, value_delimiter = ',')]
    pub tables: Option<Vec<String>>,
    /// Also replace the site's users and usermeta (default: production keeps its accounts).
    #[arg(long)]
    pub include_users: bool,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the job until it ends, with a progress bar.
    #[arg(long)]
    pub wait: bool,
    #[arg(long, default_value_t = 1800)]
    pub wait_timeout: u64,
}

#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    /// The backup a restore made (its result's backup_id).
    #[arg(long)]
    pub backup_id: String,
    #[command(flatten)]
    pub target: TargetArgs,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the job until it ends, with a progress bar.
    #[arg(long)]
    pub wait: bool,
    #[arg(long, default_value_t = 1800)]
    pub wait_timeout: u64,
}

fn target_login(target: &TargetArgs) -> Result<SiteLogin, ApiCommandError> {
    let password = match (&target.target_password, target.target_password_stdin) {
        (Some(p), _) => p.clone(),
        (None, true) => first_stdin_line()?,
        (None, false) => String::new(),
    };
    if password.is_empty() {
        return Err(ApiCommandError::NoTargetPassword);
    }
    Ok(SiteLogin {
        url: target.target_url.clone(),
        username: target.target_username.clone(),
        password,
    })
}

fn first_stdin_line() -> Result<String, ApiCommandError> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|source| ApiCommandError::Read {
            what: "standard input".into(),
            source,
        })?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum ApiCommandError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("no API token: set CLONEPOOL_TOKEN or --token (scripts/up writes .clonepool/env; run `source .clonepool/env`)")]
    NoToken,
    #[error("no source password: set CLONEPOOL_SOURCE_PASSWORD or pass --source-password-stdin")]
    NoPassword,
    #[error("no target password: set CLONEPOOL_TARGET_PASSWORD or pass --target-password-stdin")]
    NoTargetPassword,
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        source: std::io::Error,
    },
    #[error("job {job_id} {status}: {error}")]
    JobFailed {
        job_id: String,
        status: String,
        error: String,
    },
}

pub fn run(
    args: &ApiArgs,
    cmd: &ApiCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args, cmd, json, out))
}

fn client(args: &ApiArgs) -> Result<ApiClient, ApiCommandError> {
    let token = args.token.as_deref().ok_or(ApiCommandError::NoToken)?;
    let token = if std::path::Path::new(token).is_file() {
        let text = std::fs::read_to_string(token).map_err(|source| ApiCommandError::Read {
            what: token.to_string(),
            source,
        })?;
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or(ApiCommandError::NoToken)?
            .to_string()
    } else {
        token.to_string()
    };
    let ca = match &args.ca {
        Some(path) => Some(std::fs::read(path).map_err(|source| ApiCommandError::Read {
            what: path.display().to_string(),
            source,
        })?),
        None => None,
    };
    Ok(ApiClient::new(&args.url, &token, ca.as_deref())?)
}

async fn run_async(
    args: &ApiArgs,
    cmd: &ApiCommand,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let api = client(args)?;
    let print_json = |out: &mut dyn Write, value: &dyn erased::Json| -> Result<(), CtlError> {
        writeln!(out, "{}", value.to_pretty()?)?;
        Ok(())
    };
    match cmd {
        ApiCommand::Clone(clone) => {
            let password = source_password(clone)?;
            let request = CloneRequest {
                source_url: clone.source_url.clone(),
                source_username: clone.source_username.clone(),
                source_password: password,
                customer_id: clone.customer_id.clone(),
                ttl_minutes: clone.ttl_minutes,
            };
            let accepted = api
                .clone_site(&request, clone.idempotency_key.as_deref())
                .await
                .map_err(ApiCommandError::from)?;
            submitted(&api, out, accepted, clone.wait, clone.wait_timeout, json).await
        }
        ApiCommand::Restore(restore) => {
            let request = RestoreRequest {
                source: RestoreSource::Clone(CloneRef {
                    clone_id: restore.clone_id.clone(),
                }),
                target: target_login(&restore.target)?,
                database: restore.files_only.then_some(false),
                files: restore.database_only.then_some(false),
                tables: restore.tables.clone(),
                include_users: restore.include_users.then_some(true),
            };
            let accepted = api
                .restore(&request, restore.idempotency_key.as_deref())
                .await
                .map_err(ApiCommandError::from)?;
            submitted(
                &api,
                out,
                accepted,
                restore.wait,
                restore.wait_timeout,
                json,
            )
            .await
        }
        ApiCommand::Rollback(rollback) => {
            let request = RollbackRequest {
                target: target_login(&rollback.target)?,
                backup_id: rollback.backup_id.clone(),
            };
            let accepted = api
                .rollback(&request, rollback.idempotency_key.as_deref())
                .await
                .map_err(ApiCommandError::from)?;
            submitted(
                &api,
                out,
                accepted,
                rollback.wait,
                rollback.wait_timeout,
                json,
            )
            .await
        }
        ApiCommand::Job { job_id, wait: true } => {
            let status = wait(&api, job_id, 600, json).await?;
            finish(out, &status, json)
        }
        ApiCommand::Job {
            job_id,
            wait: false,
        } => {
            let status = api.job(job_id).await.map_err(ApiCommandError::from)?;
            if json {
                print_json(out, &status)
            } else {
                write!(out, "{}", job_text(&status))?;
                Ok(())
            }
        }
        ApiCommand::Cancel { job_id } => {
            let status = api
                .cancel_job(job_id)
                .await
                .map_err(ApiCommandError::from)?;
            if json {
                print_json(out, &status)
            } else {
                write!(out, "{}", job_text(&status))?;
                Ok(())
            }
        }
        ApiCommand::Clones {
            clone_id: Some(id), ..
        } => {
            let info = api.clone_info(id).await.map_err(ApiCommandError::from)?;
            if json {
                print_json(out, &info)
            } else {
                write!(out, "{}", clone_text(&info))?;
                Ok(())
            }
        }
        ApiCommand::Clones {
            clone_id: None,
            all,
        } => {
            let list = api.clones(*all).await.map_err(ApiCommandError::from)?;
            if json {
                return print_json(out, &list);
            }
            if list.clones.is_empty() {
                writeln!(out, "no clones")?;
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .clones
                .iter()
                .map(|c| {
                    vec![
                        c.clone_id.clone(),
                        c.status.as_str().to_string(),
                        c.clone_url.clone(),
                        or_dash(c.node.as_deref()),
                        or_dash(c.path.map(|p| p.as_str())),
                        or_dash(c.expires_at.as_deref()),
                    ]
                })
                .collect();
            write!(
                out,
                "{}",
                render(
                    &["CLONE", "STATUS", "URL", "NODE", "PATH", "EXPIRES"],
                    &rows
                )
            )?;
            Ok(())
        }
        ApiCommand::Delete { clone_id } => {
            let answer = api.delete(clone_id).await.map_err(ApiCommandError::from)?;
            if json {
                print_json(out, &answer)
            } else {
                writeln!(
                    out,
                    "{} {}: {}",
                    answer.clone_id,
                    answer.status.as_str(),
                    answer.message
                )?;
                Ok(())
            }
        }
        ApiCommand::Extend { clone_id, minutes } => {
            let info = api
                .extend(clone_id, *minutes)
                .await
                .map_err(ApiCommandError::from)?;
            if json {
                print_json(out, &info)
            } else {
                write!(out, "{}", clone_text(&info))?;
                Ok(())
            }
        }
        ApiCommand::Pool => {
            let pool = api.pool().await.map_err(ApiCommandError::from)?;
            if json {
                return print_json(out, &pool);
            }
            let rows: Vec<Vec<String>> = pool
                .agents
                .iter()
                .map(|a| {
                    vec![
                        a.agent.clone(),
                        or_dash(a.node.as_deref()),
                        if a.draining {
                            "draining".into()
                        } else if a.up {
                            "up".into()
                        } else {
                            "DOWN".into()
                        },
                        a.warm.to_string(),
                        a.assigned.to_string(),
                        a.ready.to_string(),
                        a.resetting.to_string(),
                        a.quarantined.to_string(),
                        a.max.to_string(),
                    ]
                })
                .collect();
            write!(
                out,
                "{}",
                render(
                    &[
                        "AGENT",
                        "NODE",
                        "STATE",
                        "WARM",
                        "ASSIGNED",
                        "READY",
                        "RESETTING",
                        "QUARANTINED",
                        "MAX"
                    ],
                    &rows
                )
            )?;
            writeln!(
                out,
                "warm in total: {}, jobs queued: {}",
                pool.warm_total, pool.queued_jobs
            )?;
            Ok(())
        }
    }
}

fn source_password(clone: &CloneArgs) -> Result<String, ApiCommandError> {
    if clone.source_password_stdin {
        let line = first_stdin_line()?;
        if line.is_empty() {
            return Err(ApiCommandError::NoPassword);
        }
        return Ok(line);
    }
    clone
        .source_password
        .clone()
        .filter(|p| !p.is_empty())
        .ok_or(ApiCommandError::NoPassword)
}

/// Polls the job, drawing a progress bar on a terminal (plain lines when stderr is not one).
async fn wait(
    api: &ApiClient,
    job_id: &str,
    timeout_secs: u64,
    json: bool,
) -> Result<JobStatus, ApiCommandError> {
    let bar = if !json && std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(100), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] [{bar:30}] {pos:>3}% {msg}",
            )
            .expect("a valid progress template")
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Some(bar)
    } else {
        None
    };
    let mut last_line = String::new();
    let status = api
        .wait_job(
            job_id,
            Duration::from_millis(250),
            Duration::from_secs(timeout_secs),
            |status| {
                if let Some(bar) = &bar {
                    bar.set_position(u64::from(status.progress));
                    bar.set_message(status.message.clone());
                } else if !json {
                    let line = format!("{:>3}% {}", status.progress, status.message);
                    if line != last_line {
                        eprintln!("{line}");
                        last_line = line;
                    }
                }
            },
        )
        .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(status?)
}

/// Prints a submitted job, or follows it to its end with `wait`.
async fn submitted(
    api: &ApiClient,
    out: &mut dyn Write,
    accepted: clonepool_coordinator::client::Accepted,
    wait_for_it: bool,
    wait_timeout: u64,
    json: bool,
) -> Result<(), CtlError> {
    if !wait_for_it {
        if json {
            writeln!(out, "{}", serde_json::to_string_pretty(&accepted.job)?)?;
        } else {
            writeln!(
                out,
                "job {} {}{} — follow it with: clonepoolctl job {} --wait",
                accepted.job.job_id,
                accepted.job.status,
                if accepted.replayed {
                    " (same request as before)"
                } else {
                    ""
                },
                accepted.job.job_id
            )?;
        }
        return Ok(());
    }
    let status = wait(api, &accepted.job.job_id, wait_timeout, json).await?;
    finish(out, &status, json)
}

/// Prints a finished job; a failed or cancelled one is an error (non-zero exit).
fn finish(out: &mut dyn Write, status: &JobStatus, json: bool) -> Result<(), CtlError> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(status)?)?;
    } else {
        write!(out, "{}", job_text(status))?;
    }
    if status.status.is_terminal() && status.status != clonepool_common::api::JobState::Completed {
        return Err(ApiCommandError::JobFailed {
            job_id: status.job_id.clone(),
            status: status.status.to_string(),
            error: status
                .error
                .clone()
                .unwrap_or_else(|| status.message.clone()),
        }
        .into());
    }
    Ok(())
}

fn job_text(status: &JobStatus) -> String {
    let mut pairs = vec![
        ("job", status.job_id.clone()),
        ("type", status.job_type.as_str().to_string()),
        ("status", status.status.to_string()),
        ("progress", format!("{}%", status.progress)),
        ("message", status.message.clone()),
        ("created", status.created_at.clone()),
        ("updated", status.updated_at.clone()),
    ];
    if let Some(error) = &status.error {
        pairs.push(("error", error.clone()));
    }
    if let Some(JobResult::Clone(result)) = &status.result {
        pairs.extend([
            ("clone", result.clone_id.clone()),
            ("url", result.clone_url.clone()),
            ("username", result.username.clone()),
            ("password", result.password.clone()),
            ("magic login", or_dash(result.magic_login_url.as_deref())),
            ("expires", result.expires_at.clone()),
            ("path", result.path.as_str().to_string()),
            ("node", result.node.clone()),
        ]);
    }
    if let Some(JobResult::Restore(result)) = &status.result {
        pairs.extend([
            ("target", result.target_url.clone()),
            ("from clone", result.source_clone_id.clone()),
            ("backup", result.backup_id.clone()),
            ("tables", result.tables_imported.join(", ")),
            (
                "files",
                format!(
                    "{} written ({} new), {} unchanged",
                    result.files_written, result.files_created, result.files_unchanged
                ),
            ),
            ("skipped", result.skipped_count.to_string()),
            (
                "undo with",
                format!(
                    "clonepoolctl rollback --target-url {} --backup-id {}",
                    result.target_url, result.backup_id
                ),
            ),
        ]);
        for warning in &result.warnings {
            pairs.push(("warning", warning.clone()));
        }
    }
    if let Some(JobResult::Rollback(result)) = &status.result {
        pairs.extend([
            ("target", result.target_url.clone()),
            ("backup", result.backup_id.clone()),
            ("tables restored", result.tables_restored.join(", ")),
            ("files restored", result.files_restored.to_string()),
            ("files removed", result.files_removed.to_string()),
        ]);
    }
    key_values(&pairs)
}

fn clone_text(info: &CloneInfo) -> String {
    key_values(&[
        ("clone", info.clone_id.clone()),
        ("status", info.status.as_str().to_string()),
        ("url", info.clone_url.clone()),
        ("source", info.source_url.clone()),
        ("node", or_dash(info.node.as_deref())),
        ("pod", or_dash(info.pod_id.as_deref())),
        ("path", or_dash(info.path.map(|p| p.as_str()))),
        ("ttl", format!("{} min", info.ttl_minutes)),
        ("created", info.created_at.clone()),
        ("ready", or_dash(info.ready_at.as_deref())),
        ("expires", or_dash(info.expires_at.as_deref())),
        ("ended", or_dash(info.ended_at.as_deref())),
        ("end reason", or_dash(info.end_reason.as_deref())),
        ("job", info.job_id.clone()),
    ])
}

/// Pretty JSON of any serializable answer, behind `dyn` so one closure prints them all.
mod erased {
    pub trait Json {
        fn to_pretty(&self) -> Result<String, serde_json::Error>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_pretty(&self) -> Result<String, serde_json::Error> {
            serde_json::to_string_pretty(self)
        }
    }
}
